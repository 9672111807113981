
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_TOKENIZER_H_INCLUDED_
#define _NGX_HTTP_LLM_TOKENIZER_H_INCLUDED_


/*
 * Exact token counts for the tiktoken encodings o200k_base and
 * cl100k_base.  Plain C99 without nginx headers: the same files build
 * into the module and into tools/llm-count.
 *
 * A vocabulary is loaded once (at configuration time in nginx) with
 * malloc() and is read-only afterwards, so workers share it after fork.
 * Counting needs a workspace: per-thread (per-worker) scratch memory that
 * grows to the largest piece seen and is then reused, so the counting path
 * does not allocate in the steady state.
 */


#include <stddef.h>
#include <stdint.h>


#define NGX_HTTP_LLM_TOKENS_ERROR  ((size_t) -1)


typedef enum {
    NGX_HTTP_LLM_ENC_UNKNOWN = 0,
    NGX_HTTP_LLM_ENC_CL100K,
    NGX_HTTP_LLM_ENC_O200K
} ngx_http_llm_encoding_e;


typedef struct ngx_http_llm_vocab_s  ngx_http_llm_vocab_t;

typedef void *(*ngx_http_llm_alloc_pt)(void *ctx, size_t size);
typedef void (*ngx_http_llm_free_pt)(void *ctx, void *p);


/* the fields of these two are private to ngx_http_llm_tokenizer.c */
typedef struct {
    uint32_t                  next;
    uint32_t                  prev;
    uint32_t                  tok;
    uint32_t                  rank;
} ngx_http_llm_tok_node_t;


typedef struct {
    ngx_http_llm_alloc_pt     alloc;
    ngx_http_llm_free_pt      free;
    void                     *ctx;

    /* a piece with invalid UTF-8, its bytes replaced by U+FFFD */
    unsigned char            *text;
    size_t                    text_size;

    /*
     * merge state of a long piece: linked list and heap; for a very long
     * one the heap holds the lists of pairs by rank, with their heads, a
     * bit for each list that is not empty, the positions of one rank,
     * and a heap beside
     */
    ngx_http_llm_tok_node_t  *nodes;
    uint64_t                 *heap;
    size_t                    nodes_size;
    size_t                    heap_size;
    uint32_t                 *heads;
    size_t                    heads_size;
    uint64_t                 *marks;
    size_t                    marks_size;
    uint32_t                 *run;
    size_t                    run_size;
    uint64_t                 *side;
    size_t                    side_size;

    /* recent pair lookups, allocated on the first count */
    uint32_t                 *cache;
    size_t                    cache_size;

    /*
     * pieces longer than small_max bytes take the heap, those of
     * bucket_min bytes or more the lists by rank; tests lower them
     */
    size_t                    small_max;
    size_t                    bucket_min;
} ngx_http_llm_tok_ws_t;


/*
 * Loads a vocabulary file of the npm package "tiktoken"
 * (encoders/o200k_base.json, encoders/cl100k_base.json).  The encoding is
 * recognized by the file's split pattern; an unknown pattern is refused.
 * On error returns NULL with the reason in err.
 */
ngx_http_llm_vocab_t *ngx_http_llm_vocab_load(const char *path, char *err,
    size_t errlen);
void ngx_http_llm_vocab_free(ngx_http_llm_vocab_t *vocab);

ngx_http_llm_encoding_e ngx_http_llm_vocab_encoding(
    const ngx_http_llm_vocab_t *vocab);
const char *ngx_http_llm_vocab_name(const ngx_http_llm_vocab_t *vocab);
size_t ngx_http_llm_vocab_tokens(const ngx_http_llm_vocab_t *vocab);
/* bytes allocated for the vocabulary, and the time its load took */
size_t ngx_http_llm_vocab_memory(const ngx_http_llm_vocab_t *vocab);
double ngx_http_llm_vocab_load_msec(const ngx_http_llm_vocab_t *vocab);

/* alloc and free may be NULL: malloc() and free() are used then */
void ngx_http_llm_tok_ws_init(ngx_http_llm_tok_ws_t *ws,
    ngx_http_llm_alloc_pt alloc, ngx_http_llm_free_pt free, void *ctx);
void ngx_http_llm_tok_ws_cleanup(ngx_http_llm_tok_ws_t *ws);
/* the bytes a workspace holds between counts */
size_t ngx_http_llm_tok_ws_memory(const ngx_http_llm_tok_ws_t *ws);

/*
 * The number of tokens tiktoken's encode_ordinary() returns for the text:
 * special tokens such as "<|endoftext|>" count as plain text.  Invalid
 * UTF-8 counts as the string a WHATWG decoder (node's Buffer.toString)
 * makes of it, each maximal invalid subpart replaced by U+FFFD.
 * Returns NGX_HTTP_LLM_TOKENS_ERROR only if the workspace cannot grow.
 */
size_t ngx_http_llm_count_tokens(const ngx_http_llm_vocab_t *vocab,
    ngx_http_llm_tok_ws_t *ws, const unsigned char *text, size_t len);

#define NGX_HTTP_LLM_WEIGHT_UNIT  20

/*
 * The "estimate" count: tokens guessed from the text's scripts, a few
 * instructions a byte, no vocabulary.  Returns the tokens' weight in
 * units of 1/NGX_HTTP_LLM_WEIGHT_UNIT token; chars, if not NULL, gets the
 * number of characters (bytes that do not continue a UTF-8 sequence).
 */
size_t ngx_http_llm_estimate_weight(ngx_http_llm_encoding_e enc,
    const unsigned char *text, size_t len, size_t *chars);

/*
 * The same guess added up over the texts of JSON strings, each weighed
 * on the way to its end: ngx_http_llm_guess_json() reads from p (after
 * the opening quote) up to the first '"', '\\' or NUL byte, or end, and
 * returns where it stopped.  Weights add up byte by byte, so a string
 * with an escape can be weighed in two pieces: the text before the
 * escape here, the rest once it is decoded.
 */
typedef struct {
    size_t                weight;     /* of bytes the table weighed */
    size_t                chars;
    size_t                ascii;      /* bytes counted by classes */
    size_t                letters;
    size_t                digits;
    size_t                spaces;
    size_t                lines;
    const uint64_t       *table;
    const void           *class_weight;
} ngx_http_llm_guess_t;

void ngx_http_llm_guess_prepare(void);
void ngx_http_llm_guess_init(ngx_http_llm_guess_t *g,
    ngx_http_llm_encoding_e enc);
const unsigned char *ngx_http_llm_guess_json(ngx_http_llm_guess_t *g,
    const unsigned char *p, const unsigned char *end);
size_t ngx_http_llm_guess_done(ngx_http_llm_guess_t *g, size_t *chars);

#endif /* _NGX_HTTP_LLM_TOKENIZER_H_INCLUDED_ */
