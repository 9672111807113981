
/*
 * Copyright (C) nginx-llm-router authors
 */


/* clock_gettime() under -std=c99; nginx's own build needs none of it */
#if !defined _POSIX_C_SOURCE && !defined _GNU_SOURCE
#define _POSIX_C_SOURCE  200809L
#endif

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cjson/cJSON.h>

#include "ngx_http_llm_tokenizer.h"
#include "ngx_http_llm_unicode.h"


/*
 * Counting is tiktoken's encode_ordinary() without the tokens: the text is
 * cut into pieces by the encoding's split pattern, a piece that is itself
 * a token counts 1, any other piece is merged from single bytes, always
 * the adjacent pair whose concatenation has the lowest rank (leftmost on
 * ties), and counts the parts left.
 *
 * The split patterns are matched by hand below, branch by branch in the
 * order a backtracking engine tries them.  The merges use a table from a
 * pair of token ids to the id of their concatenation, built at load time,
 * so the hot path hashes two integers instead of byte strings.
 */


#define NGX_HTTP_LLM_TOK_NONE       0xffffffff
#define NGX_HTTP_LLM_TOK_BAD        0x110000
#define NGX_HTTP_LLM_TOK_MAX_RANK   (1 << 24)

/*
 * entries of the per-workspace cache of pair lookups, a power of 2: 512 KB
 * hold the pairs of a text that mixes languages, code and emoji (8,192
 * entries ran it at 54 MB/s, 32,768 at 74, 131,072 at 77, and slowed
 * one-language texts by a few per cent: bench/tokenizer.sh)
 */
#define NGX_HTTP_LLM_TOK_CACHE      32768

/*
 * pieces of this size or more merge by lists of pairs by rank, in linear
 * time; below it the heap is as fast or faster (the lists' setup, a look
 * at a bit for each rank, costs about a microsecond: 512 random letters
 * took 8.6 us by lists, 8.1 by the heap; 2 KB 27 and 131 us)
 */
#define NGX_HTTP_LLM_TOK_BUCKET_DEF  512

/* the steps of the merge loops, kept inside them */
#define ngx_http_llm_tok_inline  inline __attribute__((always_inline))

/* merge state kept by a workspace between texts, in bytes */
#define NGX_HTTP_LLM_TOK_KEEP  (1024 * 1024)

/* pieces up to this size merge in arrays on the stack */
#define NGX_HTTP_LLM_TOK_SMALL      256
#define NGX_HTTP_LLM_TOK_SMALL_DEF  16

#define NGX_HTTP_LLM_TOK_U                                                    \
    (NGX_HTTP_LLM_UC_LU|NGX_HTTP_LLM_UC_LO|NGX_HTTP_LLM_UC_MARK)
#define NGX_HTTP_LLM_TOK_W                                                    \
    (NGX_HTTP_LLM_UC_LL|NGX_HTTP_LLM_UC_LO|NGX_HTTP_LLM_UC_MARK)


/* the split patterns as the npm package "tiktoken" ships them */
static const char  ngx_http_llm_tok_pat_cl100k[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";

static const char  ngx_http_llm_tok_pat_o200k[] =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*"
    "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+"
    "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";


/*
 * A token's first 8 bytes live in its slot, so most lookups (pieces are
 * short) touch one cache line and not the token pool.
 */

typedef struct {
    uint64_t                  head;
    uint32_t                  rank;
    uint32_t                  len;
} ngx_http_llm_tok_slot_t;


typedef struct {
    uint32_t                  left;
    uint32_t                  right;
    uint32_t                  merged;
} ngx_http_llm_tok_pair_t;


struct ngx_http_llm_vocab_s {
    ngx_http_llm_encoding_e   encoding;
    uint32_t                  ntokens;     /* highest rank + 1 */
    uint32_t                  count;       /* ranks present */
    size_t                    max_len;

    unsigned char            *bytes;       /* all tokens, file order */
    uint32_t                 *start;       /* by rank, into bytes */
    uint16_t                 *length;      /* by rank, 0: no such rank */
    uint32_t                  nranks;      /* room in start and length */

    ngx_http_llm_tok_slot_t  *slots;       /* bytes -> rank */
    uint32_t                  slots_mask;

    ngx_http_llm_tok_pair_t  *pairs;       /* (rank, rank) -> rank */
    uint32_t                  pairs_mask;
    uint32_t                  npairs;

    uint32_t                  byte_rank[256];
    uint32_t                 *pair2;       /* two bytes -> rank */

    uint32_t                  serial;      /* tells vocabularies apart */

    size_t                    memory;
    double                    load_msec;
};


typedef struct {
    uint32_t                  cp;
    uint32_t                  len;
    uint32_t                  cls;
} ngx_http_llm_tok_char_t;


typedef struct {
    const unsigned char      *end;
    unsigned                  bad;         /* invalid UTF-8 was seen */
} ngx_http_llm_tok_text_t;


static void ngx_http_llm_tok_error(char *err, size_t errlen,
    const char *fmt, ...);
static unsigned char *ngx_http_llm_tok_read_file(const char *path,
    size_t *size, char *err, size_t errlen);
static int ngx_http_llm_tok_parse_ranks(ngx_http_llm_vocab_t *vocab,
    const char *s, char *err, size_t errlen);
static int ngx_http_llm_tok_add(ngx_http_llm_vocab_t *vocab,
    uint32_t rank, const char *b64, size_t len, size_t *used, char *err,
    size_t errlen);
static int ngx_http_llm_tok_build(ngx_http_llm_vocab_t *vocab, char *err,
    size_t errlen);
static uint64_t ngx_http_llm_tok_hash(const unsigned char *p, size_t len,
    uint64_t *head);
static uint32_t ngx_http_llm_tok_lookup(const ngx_http_llm_vocab_t *vocab,
    const unsigned char *p, size_t len);
static uint32_t ngx_http_llm_tok_pair(const ngx_http_llm_vocab_t *vocab,
    uint32_t left, uint32_t right);
static void ngx_http_llm_tok_pair_insert(ngx_http_llm_vocab_t *vocab,
    uint32_t left, uint32_t right, uint32_t merged);

static const unsigned char *ngx_http_llm_tok_split_cl100k(
    ngx_http_llm_tok_text_t *t, const unsigned char *p);
static const unsigned char *ngx_http_llm_tok_split_o200k(
    ngx_http_llm_tok_text_t *t, const unsigned char *p);
static const unsigned char *ngx_http_llm_tok_letters_a(
    ngx_http_llm_tok_text_t *t, const unsigned char *p);
static const unsigned char *ngx_http_llm_tok_letters_b(
    ngx_http_llm_tok_text_t *t, const unsigned char *p);
static const unsigned char *ngx_http_llm_tok_tail(
    ngx_http_llm_tok_text_t *t, const unsigned char *p,
    ngx_http_llm_tok_char_t *c, int slash);
static size_t ngx_http_llm_tok_contraction(ngx_http_llm_tok_text_t *t,
    const unsigned char *p);

static size_t ngx_http_llm_tok_piece(const ngx_http_llm_vocab_t *vocab,
    ngx_http_llm_tok_ws_t *ws, ngx_http_llm_tok_text_t *t,
    const unsigned char *p, size_t len);
static size_t ngx_http_llm_tok_merge_small(
    const ngx_http_llm_vocab_t *vocab, ngx_http_llm_tok_ws_t *ws,
    const unsigned char *p, size_t len);
static size_t ngx_http_llm_tok_merge_buckets(
    const ngx_http_llm_vocab_t *vocab, ngx_http_llm_tok_ws_t *ws,
    const unsigned char *p, size_t len);
static int ngx_http_llm_tok_list_add(ngx_http_llm_tok_ws_t *ws, size_t *nb,
    uint32_t r, uint32_t pos);
static int ngx_http_llm_tok_side_push(ngx_http_llm_tok_ws_t *ws,
    size_t *sn, uint64_t key);
static int ngx_http_llm_tok_ws_keep(ngx_http_llm_tok_ws_t *ws, void **buf,
    size_t *size, size_t n, size_t unit);
static void ngx_http_llm_tok_ws_trim(ngx_http_llm_tok_ws_t *ws);
static size_t ngx_http_llm_tok_merge_heap(const ngx_http_llm_vocab_t *vocab,
    ngx_http_llm_tok_ws_t *ws, const unsigned char *p, size_t len);
static int ngx_http_llm_tok_ws_grow(ngx_http_llm_tok_ws_t *ws, void **buf,
    size_t *size, size_t need, size_t unit);


/* load time only: vocabularies are loaded before workers start */
static uint32_t  ngx_http_llm_tok_serial;


static const signed char  ngx_http_llm_tok_b64[256] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62, -1, -1, -1, 63,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -1, -1, -1,
    -1,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, -1, -1, -1, -1, -1,
    -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1
};


ngx_http_llm_vocab_t *
ngx_http_llm_vocab_load(const char *path, char *err, size_t errlen)
{
    size_t                 size;
    cJSON                 *root, *pat, *ranks;
    unsigned char         *data;
    struct timespec        t0, t1;
    ngx_http_llm_vocab_t  *vocab;

    clock_gettime(CLOCK_MONOTONIC, &t0);

    data = ngx_http_llm_tok_read_file(path, &size, err, errlen);
    if (data == NULL) {
        return NULL;
    }

    root = cJSON_ParseWithLength((const char *) data, size);
    free(data);

    if (root == NULL) {
        ngx_http_llm_tok_error(err, errlen, "\"%s\" is not valid JSON", path);
        return NULL;
    }

    vocab = calloc(1, sizeof(ngx_http_llm_vocab_t));
    if (vocab == NULL) {
        cJSON_Delete(root);
        ngx_http_llm_tok_error(err, errlen, "out of memory");
        return NULL;
    }

    vocab->memory = sizeof(ngx_http_llm_vocab_t);
    vocab->serial = ++ngx_http_llm_tok_serial;

    pat = cJSON_GetObjectItemCaseSensitive(root, "pat_str");
    ranks = cJSON_GetObjectItemCaseSensitive(root, "bpe_ranks");

    if (!cJSON_IsString(pat) || !cJSON_IsString(ranks)) {
        ngx_http_llm_tok_error(err, errlen, "\"%s\" has no string \"pat_str\""
                               " and \"bpe_ranks\"", path);
        goto failed;
    }

    /*
     * The hand-written splitters are the two patterns; a vocabulary
     * with any other pattern would be counted wrong, so it is refused.
     */

    if (strcmp(pat->valuestring, ngx_http_llm_tok_pat_o200k) == 0) {
        vocab->encoding = NGX_HTTP_LLM_ENC_O200K;

    } else if (strcmp(pat->valuestring, ngx_http_llm_tok_pat_cl100k) == 0) {
        vocab->encoding = NGX_HTTP_LLM_ENC_CL100K;

    } else {
        ngx_http_llm_tok_error(err, errlen, "\"%s\": unsupported split pattern"
                               " (only o200k_base and cl100k_base)", path);
        goto failed;
    }

    if (ngx_http_llm_tok_parse_ranks(vocab, ranks->valuestring, err, errlen)
        != 0)
    {
        goto failed;
    }

    cJSON_Delete(root);
    root = NULL;

    if (ngx_http_llm_tok_build(vocab, err, errlen) != 0) {
        goto failed;
    }

    clock_gettime(CLOCK_MONOTONIC, &t1);

    vocab->load_msec = (t1.tv_sec - t0.tv_sec) * 1000.0
                       + (t1.tv_nsec - t0.tv_nsec) / 1000000.0;

    return vocab;

failed:

    if (root) {
        cJSON_Delete(root);
    }

    ngx_http_llm_vocab_free(vocab);

    return NULL;
}


void
ngx_http_llm_vocab_free(ngx_http_llm_vocab_t *vocab)
{
    if (vocab == NULL) {
        return;
    }

    free(vocab->bytes);
    free(vocab->start);
    free(vocab->length);
    free(vocab->slots);
    free(vocab->pairs);
    free(vocab->pair2);
    free(vocab);
}


ngx_http_llm_encoding_e
ngx_http_llm_vocab_encoding(const ngx_http_llm_vocab_t *vocab)
{
    return vocab->encoding;
}


const char *
ngx_http_llm_vocab_name(const ngx_http_llm_vocab_t *vocab)
{
    return vocab->encoding == NGX_HTTP_LLM_ENC_O200K ? "o200k_base"
                                                     : "cl100k_base";
}


size_t
ngx_http_llm_vocab_tokens(const ngx_http_llm_vocab_t *vocab)
{
    return vocab->count;
}


size_t
ngx_http_llm_vocab_memory(const ngx_http_llm_vocab_t *vocab)
{
    return vocab->memory;
}


double
ngx_http_llm_vocab_load_msec(const ngx_http_llm_vocab_t *vocab)
{
    return vocab->load_msec;
}


static void
ngx_http_llm_tok_error(char *err, size_t errlen, const char *fmt, ...)
{
    va_list  args;

    if (err == NULL || errlen == 0) {
        return;
    }

    va_start(args, fmt);
    vsnprintf(err, errlen, fmt, args);
    va_end(args);
}


static unsigned char *
ngx_http_llm_tok_read_file(const char *path, size_t *size, char *err,
    size_t errlen)
{
    long            n;
    FILE           *f;
    unsigned char  *data;

    f = fopen(path, "rb");
    if (f == NULL) {
        ngx_http_llm_tok_error(err, errlen, "cannot open \"%s\": %s",
                               path, strerror(errno));
        return NULL;
    }

    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0
        || fseek(f, 0, SEEK_SET) != 0)
    {
        ngx_http_llm_tok_error(err, errlen, "cannot seek \"%s\": %s",
                               path, strerror(errno));
        fclose(f);
        return NULL;
    }

    data = malloc((size_t) n + 1);
    if (data == NULL) {
        ngx_http_llm_tok_error(err, errlen, "out of memory");
        fclose(f);
        return NULL;
    }

    if (fread(data, 1, (size_t) n, f) != (size_t) n) {
        ngx_http_llm_tok_error(err, errlen, "cannot read \"%s\"", path);
        free(data);
        fclose(f);
        return NULL;
    }

    fclose(f);

    data[n] = '\0';
    *size = (size_t) n;

    return data;
}


/*
 * "bpe_ranks" holds lines.  The npm package writes one compact line,
 * "! FIRST TOKEN TOKEN ...", each token base64 and ranked FIRST, FIRST+1
 * and so on; tiktoken's own files have "TOKEN RANK" lines.  Both are read.
 */

static int
ngx_http_llm_tok_parse_ranks(ngx_http_llm_vocab_t *vocab, const char *s,
    char *err, size_t errlen)
{
    char        *last;
    size_t       used, len;
    uint32_t     rank;
    unsigned     compact;
    const char  *p, *eol, *word, *w;

    used = 0;

    /* base64 never decodes longer than its text */
    vocab->bytes = malloc(strlen(s) + 1);
    if (vocab->bytes == NULL) {
        ngx_http_llm_tok_error(err, errlen, "out of memory");
        return -1;
    }

    for (p = s; *p; p = *eol ? eol + 1 : eol) {

        eol = strchr(p, '\n');
        if (eol == NULL) {
            eol = p + strlen(p);
        }

        compact = (p[0] == '!' && p[1] == ' ');
        rank = 0;

        if (compact) {
            errno = 0;
            rank = (uint32_t) strtoul(p + 2, &last, 10);
            if (errno || last == p + 2 || last > eol) {
                ngx_http_llm_tok_error(err, errlen,
                                       "invalid \"bpe_ranks\" line");
                return -1;
            }

            p = last;
        }

        for (word = p; word < eol; word = w) {

            while (word < eol && *word == ' ') {
                word++;
            }

            for (w = word; w < eol && *w != ' '; w++) { /* void */ }

            if (w == word) {
                break;
            }

            len = w - word;

            if (!compact) {
                while (w < eol && *w == ' ') {
                    w++;
                }

                errno = 0;
                rank = (uint32_t) strtoul(w, &last, 10);
                if (errno || last == w || last > eol) {
                    ngx_http_llm_tok_error(err, errlen,
                                           "invalid \"bpe_ranks\" line");
                    return -1;
                }

                w = eol;
            }

            if (ngx_http_llm_tok_add(vocab, rank, word, len, &used,
                                     err, errlen)
                != 0)
            {
                return -1;
            }

            rank++;
        }
    }

    if (vocab->count == 0) {
        ngx_http_llm_tok_error(err, errlen, "\"bpe_ranks\" is empty");
        return -1;
    }

    return 0;
}


static int
ngx_http_llm_tok_add(ngx_http_llm_vocab_t *vocab, uint32_t rank,
    const char *b64, size_t len, size_t *used, char *err, size_t errlen)
{
    int             v;
    size_t          i, n;
    uint16_t       *length;
    uint32_t        acc, bits, *start, nranks;
    unsigned char  *out;

    if (rank >= NGX_HTTP_LLM_TOK_MAX_RANK) {
        ngx_http_llm_tok_error(err, errlen, "rank %u is too large",
                               (unsigned) rank);
        return -1;
    }

    if (rank >= vocab->nranks) {
        nranks = vocab->nranks ? vocab->nranks : 65536;

        while (nranks <= rank) {
            nranks *= 2;
        }

        start = realloc(vocab->start, nranks * sizeof(uint32_t));
        if (start == NULL) {
            ngx_http_llm_tok_error(err, errlen, "out of memory");
            return -1;
        }

        vocab->start = start;

        length = realloc(vocab->length, nranks * sizeof(uint16_t));
        if (length == NULL) {
            ngx_http_llm_tok_error(err, errlen, "out of memory");
            return -1;
        }

        vocab->length = length;

        memset(length + vocab->nranks, 0,
               (nranks - vocab->nranks) * sizeof(uint16_t));
        vocab->nranks = nranks;
    }

    if (vocab->length[rank] != 0) {
        ngx_http_llm_tok_error(err, errlen, "rank %u is duplicate",
                               (unsigned) rank);
        return -1;
    }

    out = vocab->bytes + *used;
    n = 0;
    acc = 0;
    bits = 0;

    for (i = 0; i < len && b64[i] != '='; i++) {
        v = ngx_http_llm_tok_b64[(unsigned char) b64[i]];
        if (v < 0) {
            ngx_http_llm_tok_error(err, errlen, "invalid base64 for rank %u",
                                   (unsigned) rank);
            return -1;
        }

        acc = (acc << 6) | (uint32_t) v;
        bits += 6;

        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char) (acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }

    if (n == 0 || n > 65535) {
        ngx_http_llm_tok_error(err, errlen, "bad token length for rank %u",
                               (unsigned) rank);
        return -1;
    }

    vocab->start[rank] = (uint32_t) *used;
    vocab->length[rank] = (uint16_t) n;
    *used += n;

    if (rank + 1 > vocab->ntokens) {
        vocab->ntokens = rank + 1;
    }

    if (n > vocab->max_len) {
        vocab->max_len = n;
    }

    vocab->count++;

    return 0;
}


static int
ngx_http_llm_tok_build(ngx_http_llm_vocab_t *vocab, char *err,
    size_t errlen)
{
    size_t          k, n, total;
    uint32_t        r, t, left, right, size, npairs;
    uint64_t        h, head;
    unsigned char  *b;

    /* an open-addressing table at most half full */
    for (size = 1024; size < vocab->count * 2; size *= 2) { /* void */ }

    vocab->slots = malloc(size * sizeof(ngx_http_llm_tok_slot_t));
    if (vocab->slots == NULL) {
        ngx_http_llm_tok_error(err, errlen, "out of memory");
        return -1;
    }

    memset(vocab->slots, 0xff, size * sizeof(ngx_http_llm_tok_slot_t));
    vocab->slots_mask = size - 1;

    total = 0;

    for (t = 0; t < vocab->ntokens; t++) {
        n = vocab->length[t];
        if (n == 0) {
            continue;
        }

        b = vocab->bytes + vocab->start[t];
        total += n;

        if (ngx_http_llm_tok_lookup(vocab, b, n) != NGX_HTTP_LLM_TOK_NONE) {
            ngx_http_llm_tok_error(err, errlen, "token of rank %u is duplicate",
                                   (unsigned) t);
            return -1;
        }

        h = ngx_http_llm_tok_hash(b, n, &head);
        r = (uint32_t) h & vocab->slots_mask;

        while (vocab->slots[r].rank != NGX_HTTP_LLM_TOK_NONE) {
            r = (r + 1) & vocab->slots_mask;
        }

        vocab->slots[r].head = head;
        vocab->slots[r].rank = t;
        vocab->slots[r].len = (uint32_t) n;
    }

    for (k = 0; k < 256; k++) {
        unsigned char  c = (unsigned char) k;

        vocab->byte_rank[k] = ngx_http_llm_tok_lookup(vocab, &c, 1);

        /* tiktoken itself requires every byte to be a token */
        if (vocab->byte_rank[k] == NGX_HTTP_LLM_TOK_NONE) {
            ngx_http_llm_tok_error(err, errlen, "byte 0x%02x is not a token",
                                   (unsigned) k);
            return -1;
        }
    }

    /*
     * Every split of a token into two tokens is a possible last merge;
     * BPE parts are always tokens, so these pairs are all it can meet.
     */

    npairs = 0;

    for (t = 0; t < vocab->ntokens; t++) {
        n = vocab->length[t];
        b = vocab->bytes + vocab->start[t];

        for (k = 1; k < n; k++) {
            if (ngx_http_llm_tok_lookup(vocab, b, k) != NGX_HTTP_LLM_TOK_NONE
                && ngx_http_llm_tok_lookup(vocab, b + k, n - k)
                   != NGX_HTTP_LLM_TOK_NONE)
            {
                npairs++;
            }
        }
    }

    for (size = 1024; size < npairs * 2; size *= 2) { /* void */ }

    vocab->pairs = malloc(size * sizeof(ngx_http_llm_tok_pair_t));
    if (vocab->pairs == NULL) {
        ngx_http_llm_tok_error(err, errlen, "out of memory");
        return -1;
    }

    memset(vocab->pairs, 0xff, size * sizeof(ngx_http_llm_tok_pair_t));
    vocab->pairs_mask = size - 1;
    vocab->npairs = npairs;

    for (t = 0; t < vocab->ntokens; t++) {
        n = vocab->length[t];
        b = vocab->bytes + vocab->start[t];

        for (k = 1; k < n; k++) {
            left = ngx_http_llm_tok_lookup(vocab, b, k);
            if (left == NGX_HTTP_LLM_TOK_NONE) {
                continue;
            }

            right = ngx_http_llm_tok_lookup(vocab, b + k, n - k);
            if (right == NGX_HTTP_LLM_TOK_NONE) {
                continue;
            }

            ngx_http_llm_tok_pair_insert(vocab, left, right, t);
        }
    }

    vocab->pair2 = malloc(65536 * sizeof(uint32_t));
    if (vocab->pair2 == NULL) {
        ngx_http_llm_tok_error(err, errlen, "out of memory");
        return -1;
    }

    for (k = 0; k < 65536; k++) {
        vocab->pair2[k] = ngx_http_llm_tok_pair(vocab,
                                                vocab->byte_rank[k >> 8],
                                                vocab->byte_rank[k & 0xff]);
    }

    vocab->memory += total
                     + (size_t) vocab->nranks
                       * (sizeof(uint32_t) + sizeof(uint16_t))
                     + (vocab->slots_mask + 1)
                       * sizeof(ngx_http_llm_tok_slot_t)
                     + (vocab->pairs_mask + 1)
                       * sizeof(ngx_http_llm_tok_pair_t)
                     + 65536 * sizeof(uint32_t);

    /* the base64 text was larger than the bytes it decoded to */
    b = realloc(vocab->bytes, total ? total : 1);
    if (b != NULL) {
        vocab->bytes = b;
    }

    return 0;
}


/*
 * A multiply-xorshift hash over 8-byte words: pieces are short, and
 * byte-at-a-time hashes cost more than the table lookup they serve.
 */

static uint64_t
ngx_http_llm_tok_hash(const unsigned char *p, size_t len, uint64_t *head)
{
    uint64_t  h, w;

    h = 0x9e3779b97f4a7c15ULL ^ (len * 0xc2b2ae3d27d4eb4fULL);

    w = 0;
    memcpy(&w, p, len < 8 ? len : 8);
    *head = w;

    h = (h ^ w) * 0xff51afd7ed558ccdULL;
    h ^= h >> 32;

    if (len <= 8) {
        goto done;
    }

    p += 8;
    len -= 8;

    while (len >= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
        p += 8;
        len -= 8;
    }

    if (len) {
        w = 0;
        memcpy(&w, p, len);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }

done:

    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 29;

    return h;
}


static uint32_t
ngx_http_llm_tok_lookup(const ngx_http_llm_vocab_t *vocab,
    const unsigned char *p, size_t len)
{
    uint32_t                        r;
    uint64_t                        h, head;
    const ngx_http_llm_tok_slot_t  *slot;

    h = ngx_http_llm_tok_hash(p, len, &head);
    r = (uint32_t) h & vocab->slots_mask;

    for ( ;; ) {
        slot = &vocab->slots[r];

        if (slot->rank == NGX_HTTP_LLM_TOK_NONE) {
            return NGX_HTTP_LLM_TOK_NONE;
        }

        if (slot->head == head
            && slot->len == len
            && (len <= 8
                || memcmp(vocab->bytes + vocab->start[slot->rank] + 8, p + 8,
                          len - 8)
                   == 0))
        {
            return slot->rank;
        }

        r = (r + 1) & vocab->slots_mask;
    }
}


#define ngx_http_llm_tok_pair_hash(left, right)                               \
    ((uint32_t) (((((uint64_t) (left) << 32) | (right))                       \
                 * 0x9e3779b97f4a7c15ULL) >> 32))


static uint32_t
ngx_http_llm_tok_pair(const ngx_http_llm_vocab_t *vocab, uint32_t left,
    uint32_t right)
{
    uint32_t                        r;
    const ngx_http_llm_tok_pair_t  *pair;

    r = ngx_http_llm_tok_pair_hash(left, right) & vocab->pairs_mask;

    for ( ;; ) {
        pair = &vocab->pairs[r];

        if (pair->left == left && pair->right == right) {
            return pair->merged;
        }

        if (pair->left == NGX_HTTP_LLM_TOK_NONE) {
            return NGX_HTTP_LLM_TOK_NONE;
        }

        r = (r + 1) & vocab->pairs_mask;
    }
}


static void
ngx_http_llm_tok_pair_insert(ngx_http_llm_vocab_t *vocab, uint32_t left,
    uint32_t right, uint32_t merged)
{
    uint32_t  r;

    r = ngx_http_llm_tok_pair_hash(left, right) & vocab->pairs_mask;

    while (vocab->pairs[r].left != NGX_HTTP_LLM_TOK_NONE) {
        r = (r + 1) & vocab->pairs_mask;
    }

    vocab->pairs[r].left = left;
    vocab->pairs[r].right = right;
    vocab->pairs[r].merged = merged;
}


/*
 * One character of the text, decoded as a WHATWG decoder does (the one
 * node uses to make a string of a buffer): an invalid sequence yields
 * one U+FFFD for each maximal subpart of a valid sequence, so a count
 * equals tiktoken's on the string node would decode from the same bytes.
 * Never reads at or past t->end.
 */

static inline void
ngx_http_llm_tok_char(ngx_http_llm_tok_text_t *t, const unsigned char *p,
    ngx_http_llm_tok_char_t *c)
{
    size_t    avail;
    uint32_t  b0, lo, hi, need, cp, i;

    if (p >= t->end) {
        c->cp = NGX_HTTP_LLM_TOK_NONE;
        c->len = 0;
        c->cls = 0;
        return;
    }

    b0 = p[0];

    if (b0 < 0x80) {
        c->cp = b0;
        c->len = 1;
        c->cls = ngx_http_llm_unicode_stage2[0][b0];
        return;
    }

    lo = 0x80;
    hi = 0xbf;

    if (b0 >= 0xc2 && b0 <= 0xdf) {
        need = 1;
        cp = b0 & 0x1f;

    } else if (b0 >= 0xe0 && b0 <= 0xef) {
        need = 2;
        cp = b0 & 0x0f;

        if (b0 == 0xe0) {
            lo = 0xa0;

        } else if (b0 == 0xed) {
            hi = 0x9f;
        }

    } else if (b0 >= 0xf0 && b0 <= 0xf4) {
        need = 3;
        cp = b0 & 0x07;

        if (b0 == 0xf0) {
            lo = 0x90;

        } else if (b0 == 0xf4) {
            hi = 0x8f;
        }

    } else {
        goto bad;
    }

    avail = t->end - p - 1;

    for (i = 1; i <= need; i++) {
        if (i > avail || p[i] < lo || p[i] > hi) {
            c->len = i;
            goto bad_len;
        }

        cp = (cp << 6) | (p[i] & 0x3f);
        lo = 0x80;
        hi = 0xbf;
    }

    c->cp = cp;
    c->len = need + 1;
    c->cls = ngx_http_llm_unicode_class(cp);

    return;

bad:

    c->len = 1;

bad_len:

    /* U+FFFD is So: no class bits */
    c->cp = NGX_HTTP_LLM_TOK_BAD;
    c->cls = 0;
    t->bad = 1;
}


#define ngx_http_llm_tok_is_crlf(c)  ((c)->cp == '\r' || (c)->cp == '\n')

/* [^\r\n\p{L}\p{N}] */
#define ngx_http_llm_tok_is_prefix(c)                                         \
    ((c)->len && !ngx_http_llm_tok_is_crlf(c)                                 \
     && !((c)->cls & (NGX_HTTP_LLM_UC_L|NGX_HTTP_LLM_UC_NUM)))

/* [^\s\p{L}\p{N}] */
#define ngx_http_llm_tok_is_other(c)                                          \
    ((c)->len                                                                 \
     && !((c)->cls                                                            \
          & (NGX_HTTP_LLM_UC_L|NGX_HTTP_LLM_UC_NUM|NGX_HTTP_LLM_UC_SPACE)))


/*
 * cl100k_base:
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N}{1,3}
 *   | ' '?[^\s\p{L}\p{N}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+
 */

static const unsigned char *
ngx_http_llm_tok_split_cl100k(ngx_http_llm_tok_text_t *t,
    const unsigned char *p)
{
    size_t                   n;
    const unsigned char     *q;
    ngx_http_llm_tok_char_t  c, d;

    ngx_http_llm_tok_char(t, p, &c);

    if (c.cp == '\'') {
        n = ngx_http_llm_tok_contraction(t, p);
        if (n) {
            return p + n;
        }
    }

    q = NULL;

    if (c.cls & NGX_HTTP_LLM_UC_L) {
        q = p;

    } else if (ngx_http_llm_tok_is_prefix(&c)) {
        ngx_http_llm_tok_char(t, p + c.len, &d);

        if (d.cls & NGX_HTTP_LLM_UC_L) {
            q = p + c.len;
        }
    }

    if (q) {
        for ( ;; ) {
            ngx_http_llm_tok_char(t, q, &d);

            if (!(d.cls & NGX_HTTP_LLM_UC_L)) {
                return q;
            }

            q += d.len;
        }
    }

    return ngx_http_llm_tok_tail(t, p, &c, 0);
}


/*
 * o200k_base, with U = [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}],
 * W = [\p{Ll}\p{Lm}\p{Lo}\p{M}] and C = (?i:'s|'t|'re|'ve|'m|'ll|'d):
 *   [^\r\n\p{L}\p{N}]?U*W+C? | [^\r\n\p{L}\p{N}]?U+W*C? | \p{N}{1,3}
 *   | ' '?[^\s\p{L}\p{N}]+[\r\n/]* | \s*[\r\n]+ | \s+(?!\S) | \s+
 */

static const unsigned char *
ngx_http_llm_tok_split_o200k(ngx_http_llm_tok_text_t *t,
    const unsigned char *p)
{
    unsigned                 prefix;
    const unsigned char     *q;
    ngx_http_llm_tok_char_t  c;

    ngx_http_llm_tok_char(t, p, &c);

    /* the prefix is tried taken first, then left out, as backtracking */
    prefix = ngx_http_llm_tok_is_prefix(&c);

    if (prefix) {
        q = ngx_http_llm_tok_letters_a(t, p + c.len);
        if (q) {
            return q;
        }
    }

    if (c.cls & (NGX_HTTP_LLM_TOK_U|NGX_HTTP_LLM_TOK_W)) {
        q = ngx_http_llm_tok_letters_a(t, p);
        if (q) {
            return q;
        }
    }

    if (prefix) {
        q = ngx_http_llm_tok_letters_b(t, p + c.len);
        if (q) {
            return q;
        }
    }

    if (c.cls & NGX_HTTP_LLM_TOK_U) {
        q = ngx_http_llm_tok_letters_b(t, p);
        if (q) {
            return q;
        }
    }

    return ngx_http_llm_tok_tail(t, p, &c, 1);
}


/*
 * U*W+C? from p.  U* first takes all it can; W+ then needs a W.  After
 * the run of U the next character is W only if it is Ll (W minus U);
 * otherwise backtracking gives back U characters until one of them is
 * also W (Lm, Lo, M), and W+ is that one character.
 */

static const unsigned char *
ngx_http_llm_tok_letters_a(ngx_http_llm_tok_text_t *t,
    const unsigned char *p)
{
    const unsigned char     *q, *w;
    ngx_http_llm_tok_char_t  c;

    w = NULL;

    for (q = p; ; q += c.len) {
        ngx_http_llm_tok_char(t, q, &c);

        if (!(c.cls & NGX_HTTP_LLM_TOK_U)) {
            break;
        }

        if (c.cls & NGX_HTTP_LLM_TOK_W) {
            w = q + c.len;
        }
    }

    if (c.cls & NGX_HTTP_LLM_UC_LL) {

        for (q += c.len; ; q += c.len) {
            ngx_http_llm_tok_char(t, q, &c);

            if (!(c.cls & NGX_HTTP_LLM_TOK_W)) {
                break;
            }
        }

        return q + ngx_http_llm_tok_contraction(t, q);
    }

    if (w) {
        return w + ngx_http_llm_tok_contraction(t, w);
    }

    return NULL;
}


/* U+W*C? from p: greedy runs always succeed, nothing to give back */

static const unsigned char *
ngx_http_llm_tok_letters_b(ngx_http_llm_tok_text_t *t,
    const unsigned char *p)
{
    const unsigned char     *q;
    ngx_http_llm_tok_char_t  c;

    ngx_http_llm_tok_char(t, p, &c);

    if (!(c.cls & NGX_HTTP_LLM_TOK_U)) {
        return NULL;
    }

    for (q = p + c.len; ; q += c.len) {
        ngx_http_llm_tok_char(t, q, &c);

        if (!(c.cls & NGX_HTTP_LLM_TOK_U)) {
            break;
        }
    }

    while (c.cls & NGX_HTTP_LLM_TOK_W) {
        q += c.len;
        ngx_http_llm_tok_char(t, q, &c);
    }

    return q + ngx_http_llm_tok_contraction(t, q);
}


/*
 * The branches both patterns share: \p{N}{1,3},
 * ' '?[^\s\p{L}\p{N}]+ followed by [\r\n]* (cl100k) or [\r\n/]* (o200k),
 * and the three whitespace branches.
 */

static const unsigned char *
ngx_http_llm_tok_tail(ngx_http_llm_tok_text_t *t, const unsigned char *p,
    ngx_http_llm_tok_char_t *c, int slash)
{
    unsigned                 n;
    const unsigned char     *q, *s, *nl, *last;
    ngx_http_llm_tok_char_t  d;

    if (c->cls & NGX_HTTP_LLM_UC_NUM) {
        q = p + c->len;

        for (n = 1; n < 3; n++) {
            ngx_http_llm_tok_char(t, q, &d);

            if (!(d.cls & NGX_HTTP_LLM_UC_NUM)) {
                break;
            }

            q += d.len;
        }

        return q;
    }

    s = NULL;

    if (c->cp == ' ') {
        ngx_http_llm_tok_char(t, p + 1, &d);

        if (ngx_http_llm_tok_is_other(&d)) {
            s = p + 1;
        }

    } else if (ngx_http_llm_tok_is_other(c)) {
        s = p;
    }

    if (s) {
        for (q = s; ; q += d.len) {
            ngx_http_llm_tok_char(t, q, &d);

            if (!ngx_http_llm_tok_is_other(&d)) {
                break;
            }
        }

        while (q < t->end
               && (*q == '\r' || *q == '\n' || (slash && *q == '/')))
        {
            q++;
        }

        return q;
    }

    /* what is left is whitespace */

    nl = NULL;
    last = p;

    for (q = p; ; q += d.len) {
        ngx_http_llm_tok_char(t, q, &d);

        if (!(d.cls & NGX_HTTP_LLM_UC_SPACE)) {
            break;
        }

        if (ngx_http_llm_tok_is_crlf(&d)) {
            nl = q;
        }

        last = q;
    }

    if (q == p) {
        /* cannot happen: every character matches some branch */
        return p + (c->len ? c->len : 1);
    }

    /* \s*[\r\n]+: up to the last CR or LF of the run */
    if (nl) {
        return nl + 1;
    }

    /* \s+(?!\S): all of it at the end, else all but the last character */
    if (q == t->end || last == p) {
        return q;
    }

    return last;
}


/* (?i:'s|'t|'re|'ve|'m|'ll|'d); "s" folds with U+017F, long s */

static size_t
ngx_http_llm_tok_contraction(ngx_http_llm_tok_text_t *t,
    const unsigned char *p)
{
    size_t  avail;

    avail = t->end - p;

    if (avail < 2 || p[0] != '\'') {
        return 0;
    }

    switch (p[1] | 0x20) {

    case 's':
    case 't':
    case 'm':
    case 'd':
        return 2;

    case 'r':
    case 'v':
        return (avail >= 3 && (p[2] | 0x20) == 'e') ? 3 : 0;

    case 'l':
        return (avail >= 3 && (p[2] | 0x20) == 'l') ? 3 : 0;

    default:
        break;
    }

    if (p[1] == 0xc5 && avail >= 3 && p[2] == 0xbf) {
        return 3;
    }

    return 0;
}


void
ngx_http_llm_tok_ws_init(ngx_http_llm_tok_ws_t *ws,
    ngx_http_llm_alloc_pt alloc, ngx_http_llm_free_pt free, void *ctx)
{
    memset(ws, 0, sizeof(ngx_http_llm_tok_ws_t));

    ws->alloc = alloc;
    ws->free = free;
    ws->ctx = ctx;
    ws->small_max = NGX_HTTP_LLM_TOK_SMALL_DEF;
    ws->bucket_min = NGX_HTTP_LLM_TOK_BUCKET_DEF;
}


void
ngx_http_llm_tok_ws_cleanup(ngx_http_llm_tok_ws_t *ws)
{
    void  **buf[8];
    int     i;

    buf[0] = (void **) &ws->text;
    buf[1] = (void **) &ws->nodes;
    buf[2] = (void **) &ws->heap;
    buf[3] = (void **) &ws->cache;
    buf[4] = (void **) &ws->heads;
    buf[5] = (void **) &ws->run;
    buf[6] = (void **) &ws->side;
    buf[7] = (void **) &ws->marks;

    for (i = 0; i < 8; i++) {
        if (*buf[i] == NULL) {
            continue;
        }

        if (ws->free) {
            ws->free(ws->ctx, *buf[i]);

        } else {
            free(*buf[i]);
        }

        *buf[i] = NULL;
    }

    ws->text_size = 0;
    ws->nodes_size = 0;
    ws->heap_size = 0;
    ws->cache_size = 0;
    ws->heads_size = 0;
    ws->run_size = 0;
    ws->side_size = 0;
    ws->marks_size = 0;
}


size_t
ngx_http_llm_count_tokens(const ngx_http_llm_vocab_t *vocab,
    ngx_http_llm_tok_ws_t *ws, const unsigned char *text, size_t len)
{
    size_t                    n, total;
    const unsigned char      *p, *end;
    ngx_http_llm_tok_text_t   t;

    t.end = text + len;
    t.bad = 0;

    if (ws->cache == NULL) {
        /* once per workspace; without it counting is only slower */
        (void) ngx_http_llm_tok_ws_grow(ws, (void **) &ws->cache,
                                        &ws->cache_size,
                                        NGX_HTTP_LLM_TOK_CACHE * 4,
                                        sizeof(uint32_t));
        if (ws->cache) {
            memset(ws->cache, 0xff, ws->cache_size * sizeof(uint32_t));
        }
    }

    total = 0;

    for (p = text; p < t.end; p = end) {

        if (vocab->encoding == NGX_HTTP_LLM_ENC_O200K) {
            end = ngx_http_llm_tok_split_o200k(&t, p);

        } else {
            end = ngx_http_llm_tok_split_cl100k(&t, p);
        }

        n = ngx_http_llm_tok_piece(vocab, ws, &t, p, end - p);
        if (n == NGX_HTTP_LLM_TOKENS_ERROR) {
            total = n;
            break;
        }

        total += n;
    }

    ngx_http_llm_tok_ws_trim(ws);

    return total;
}


/*
 * A thread keeps its workspace for good, and a word of megabytes leaves
 * tens of megabytes of merge state in it (some 22 bytes a byte): what
 * grew past NGX_HTTP_LLM_TOK_KEEP is given back once its text is
 * counted.  The buffers sized by the vocabulary (the pair cache, the
 * lists' heads and marks, under a megabyte each) stay.
 */

static void
ngx_http_llm_tok_ws_trim(ngx_http_llm_tok_ws_t *ws)
{
    int       i;
    void    **buf[5];
    size_t   *size[5], unit[5];

    buf[0] = (void **) &ws->text;
    size[0] = &ws->text_size;
    unit[0] = 1;
    buf[1] = (void **) &ws->nodes;
    size[1] = &ws->nodes_size;
    unit[1] = sizeof(ngx_http_llm_tok_node_t);
    buf[2] = (void **) &ws->heap;
    size[2] = &ws->heap_size;
    unit[2] = sizeof(uint64_t);
    buf[3] = (void **) &ws->run;
    size[3] = &ws->run_size;
    unit[3] = sizeof(uint32_t);
    buf[4] = (void **) &ws->side;
    size[4] = &ws->side_size;
    unit[4] = sizeof(uint64_t);

    for (i = 0; i < 5; i++) {
        if (*size[i] * unit[i] <= NGX_HTTP_LLM_TOK_KEEP) {
            continue;
        }

        if (ws->free) {
            ws->free(ws->ctx, *buf[i]);

        } else {
            free(*buf[i]);
        }

        *buf[i] = NULL;
        *size[i] = 0;
    }
}


size_t
ngx_http_llm_tok_ws_memory(const ngx_http_llm_tok_ws_t *ws)
{
    return ws->text_size + ws->nodes_size * sizeof(ngx_http_llm_tok_node_t)
           + (ws->heap_size + ws->side_size + ws->marks_size)
             * sizeof(uint64_t)
           + (ws->run_size + ws->heads_size + ws->cache_size)
             * sizeof(uint32_t);
}


static size_t
ngx_http_llm_tok_piece(const ngx_http_llm_vocab_t *vocab,
    ngx_http_llm_tok_ws_t *ws, ngx_http_llm_tok_text_t *t,
    const unsigned char *p, size_t len)
{
    size_t                    n;
    unsigned                  bad;
    const unsigned char      *q, *end;
    ngx_http_llm_tok_char_t   c;

    if (t->bad) {

        /*
         * Invalid UTF-8 was met somewhere: merge this piece's bytes as
         * the decoded string has them, U+FFFD for each invalid subpart.
         */

        bad = 0;
        end = p + len;

        for (q = p; q < end; q += c.len) {
            ngx_http_llm_tok_char(t, q, &c);
            bad |= (c.cp == NGX_HTTP_LLM_TOK_BAD);
        }

        if (bad) {
            if (ngx_http_llm_tok_ws_grow(ws, (void **) &ws->text,
                                         &ws->text_size, len * 3, 1)
                != 0)
            {
                return NGX_HTTP_LLM_TOKENS_ERROR;
            }

            n = 0;

            for (q = p; q < end; q += c.len) {
                ngx_http_llm_tok_char(t, q, &c);

                if (c.cp == NGX_HTTP_LLM_TOK_BAD) {
                    ws->text[n++] = 0xef;
                    ws->text[n++] = 0xbf;
                    ws->text[n++] = 0xbd;

                } else {
                    memcpy(ws->text + n, q, c.len);
                    n += c.len;
                }
            }

            p = ws->text;
            len = n;
        }
    }

    if (len == 1) {
        return 1;
    }

    if (len <= vocab->max_len
        && ngx_http_llm_tok_lookup(vocab, p, len) != NGX_HTTP_LLM_TOK_NONE)
    {
        return 1;
    }

    if (len <= ws->small_max && len <= NGX_HTTP_LLM_TOK_SMALL) {
        return ngx_http_llm_tok_merge_small(vocab, ws, p, len);
    }

    /*
     * the lists are indexed by rank: a vocabulary whose ranks leave most
     * numbers unused (none of tiktoken's) would have them scan and hold
     * the unused ones for every piece
     */

    if (len >= ws->bucket_min && vocab->ntokens / 2 <= vocab->count) {
        return ngx_http_llm_tok_merge_buckets(vocab, ws, p, len);
    }

    return ngx_http_llm_tok_merge_heap(vocab, ws, p, len);
}


/*
 * tiktoken's own merge loop: find the lowest rank, leftmost on ties,
 * merge, update the two neighbouring ranks.  Quadratic, but for short
 * pieces it beats a heap.
 */

/*
 * The pair table is megabytes and every probe misses the CPU caches; a
 * small direct-mapped cache per workspace keeps the pairs a language uses
 * most (kana, Hangul, common syllables) close.  Entries carry the
 * vocabulary's serial, so one workspace serves several vocabularies.
 */

static inline uint32_t
ngx_http_llm_tok_pair_cached(const ngx_http_llm_vocab_t *vocab,
    ngx_http_llm_tok_ws_t *ws, uint32_t left, uint32_t right)
{
    uint32_t  *e, h;

    if (ws->cache == NULL) {
        return ngx_http_llm_tok_pair(vocab, left, right);
    }

    h = ngx_http_llm_tok_pair_hash(left, right) & (NGX_HTTP_LLM_TOK_CACHE - 1);
    e = &ws->cache[h * 4];

    if (e[0] != left || e[1] != right || e[3] != vocab->serial) {
        e[0] = left;
        e[1] = right;
        e[2] = ngx_http_llm_tok_pair(vocab, left, right);
        e[3] = vocab->serial;
    }

    return e[2];
}


static size_t
ngx_http_llm_tok_merge_small(const ngx_http_llm_vocab_t *vocab,
    ngx_http_llm_tok_ws_t *ws, const unsigned char *p, size_t len)
{
    size_t    i, m, n;
    uint32_t  min, tok[NGX_HTTP_LLM_TOK_SMALL], rank[NGX_HTTP_LLM_TOK_SMALL];

    n = len;

    for (i = 0; i < n; i++) {
        tok[i] = vocab->byte_rank[p[i]];
    }

    for (i = 0; i + 1 < n; i++) {
        rank[i] = vocab->pair2[(p[i] << 8) | p[i + 1]];
    }

    rank[n - 1] = NGX_HTTP_LLM_TOK_NONE;

    for ( ;; ) {
        min = NGX_HTTP_LLM_TOK_NONE;
        m = 0;

        for (i = 0; i + 1 < n; i++) {
            if (rank[i] < min) {
                min = rank[i];
                m = i;
            }
        }

        if (min == NGX_HTTP_LLM_TOK_NONE) {
            return n;
        }

        tok[m] = min;
        n--;

        for (i = m + 1; i < n; i++) {
            tok[i] = tok[i + 1];
            rank[i] = rank[i + 1];
        }

        rank[m] = (m + 1 < n)
                  ? ngx_http_llm_tok_pair_cached(vocab, ws, min, tok[m + 1])
                  : NGX_HTTP_LLM_TOK_NONE;

        if (m > 0) {
            rank[m - 1] = ngx_http_llm_tok_pair_cached(vocab, ws, tok[m - 1],
                                                       min);
        }
    }
}


/*
 * The same merges in O(n log n) for longer pieces, up to a few hundred
 * bytes: parts in a linked list indexed by their first byte, candidate
 * pairs in a min-heap keyed (rank, position), which is exactly "lowest
 * rank, leftmost".  Entries outdated by a merge stay in the heap and are
 * skipped when popped.
 */

#define ngx_http_llm_tok_key(rank, pos)  (((uint64_t) (rank) << 32) | (pos))

/* the key at i moved down the heap of hn keys to where it belongs */

static inline void
ngx_http_llm_tok_sift_down(uint64_t *heap, size_t hn, size_t i)
{
    size_t    j;
    uint64_t  tmp;

    for ( /* void */ ; ; i = j) {
        j = 2 * i + 1;
        if (j >= hn) {
            break;
        }

        if (j + 1 < hn && heap[j + 1] < heap[j]) {
            j++;
        }

        if (heap[i] <= heap[j]) {
            break;
        }

        tmp = heap[i];
        heap[i] = heap[j];
        heap[j] = tmp;
    }
}


/*
 * Merges the part at pos with the next (their pair has rank r) and
 * writes to made[] the parts whose pair changed and is a token: pos,
 * and the part before it; returns how many.
 */

static ngx_http_llm_tok_inline unsigned
ngx_http_llm_tok_join(const ngx_http_llm_vocab_t *vocab,
    ngx_http_llm_tok_ws_t *ws, ngx_http_llm_tok_node_t *nodes, size_t len,
    uint32_t pos, uint32_t r, uint32_t made[2])
{
    unsigned  n;
    uint32_t  nx, pv;

    nx = nodes[pos].next;
    nodes[pos].tok = r;
    nodes[nx].rank = NGX_HTTP_LLM_TOK_NONE;
    nx = nodes[nx].next;
    nodes[pos].next = nx;

    n = 0;

    if (nx < len) {
        nodes[nx].prev = pos;
        nodes[pos].rank = ngx_http_llm_tok_pair_cached(vocab, ws, r,
                                                       nodes[nx].tok);
        if (nodes[pos].rank != NGX_HTTP_LLM_TOK_NONE) {
            made[n++] = pos;
        }

    } else {
        nodes[pos].rank = NGX_HTTP_LLM_TOK_NONE;
    }

    pv = nodes[pos].prev;

    if (pv < len) {
        nodes[pv].rank = ngx_http_llm_tok_pair_cached(vocab, ws,
                                                      nodes[pv].tok, r);
        if (nodes[pv].rank != NGX_HTTP_LLM_TOK_NONE) {
            made[n++] = pv;
        }
    }

    return n;
}


/* the parts of a piece in ws->nodes, each byte its own token, no pairs */

static ngx_http_llm_tok_inline int
ngx_http_llm_tok_parts(const ngx_http_llm_vocab_t *vocab,
    ngx_http_llm_tok_ws_t *ws, const unsigned char *p, size_t len)
{
    size_t                    i;
    ngx_http_llm_tok_node_t  *nodes;

    if (len > 0xfffffff0
        || ngx_http_llm_tok_ws_grow(ws, (void **) &ws->nodes,
                                    &ws->nodes_size, len,
                                    sizeof(ngx_http_llm_tok_node_t))
           != 0)
    {
        return -1;
    }

    nodes = ws->nodes;

    for (i = 0; i < len; i++) {
        nodes[i].next = (uint32_t) i + 1;
        nodes[i].prev = (uint32_t) i - 1;
        nodes[i].tok = vocab->byte_rank[p[i]];
        nodes[i].rank = NGX_HTTP_LLM_TOK_NONE;
    }

    return 0;
}


/* the key at j moved up the heap to where it belongs */

static ngx_http_llm_tok_inline void
ngx_http_llm_tok_sift_up(uint64_t *heap, size_t j)
{
    uint64_t  tmp;

    while (j > 0 && heap[(j - 1) / 2] > heap[j]) {
        tmp = heap[j];
        heap[j] = heap[(j - 1) / 2];
        heap[(j - 1) / 2] = tmp;
        j = (j - 1) / 2;
    }
}


static size_t
ngx_http_llm_tok_merge_heap(const ngx_http_llm_vocab_t *vocab,
    ngx_http_llm_tok_ws_t *ws, const unsigned char *p, size_t len)
{
    size_t                    count, hn, i, k;
    uint32_t                  r, pos, nx, pv;
    uint64_t                  key, *heap;
    ngx_http_llm_tok_node_t  *nodes;

    if (ngx_http_llm_tok_parts(vocab, ws, p, len) != 0
        || ngx_http_llm_tok_ws_grow(ws, (void **) &ws->heap, &ws->heap_size,
                                    len * 3, sizeof(uint64_t))
           != 0)
    {
        return NGX_HTTP_LLM_TOKENS_ERROR;
    }

    nodes = ws->nodes;
    heap = ws->heap;
    hn = 0;

    /* the initial pairs arrive in position order: push without sifting */
    for (i = 0; i + 1 < len; i++) {
        r = vocab->pair2[(p[i] << 8) | p[i + 1]];
        nodes[i].rank = r;

        if (r != NGX_HTTP_LLM_TOK_NONE) {
            heap[hn++] = ngx_http_llm_tok_key(r, i);
        }
    }

    for (k = hn / 2; k-- > 0; ) {
        ngx_http_llm_tok_sift_down(heap, hn, k);
    }

    count = len;

    while (hn) {
        key = heap[0];

        heap[0] = heap[--hn];
        ngx_http_llm_tok_sift_down(heap, hn, 0);

        r = (uint32_t) (key >> 32);
        pos = (uint32_t) key;

        if (nodes[pos].rank != r) {
            continue;
        }

        /*
         * merge pos with the next part: the step of
         * ngx_http_llm_tok_join(), written out here, where pieces of a
         * few dozen bytes spend their time (through the function, with
         * its list of new pairs, Japanese prose took 4 % more
         * instructions)
         */

        nx = nodes[pos].next;
        nodes[pos].tok = r;
        nodes[nx].rank = NGX_HTTP_LLM_TOK_NONE;
        nx = nodes[nx].next;
        nodes[pos].next = nx;
        count--;

        if (nx < len) {
            nodes[nx].prev = pos;
            nodes[pos].rank = ngx_http_llm_tok_pair_cached(vocab, ws, r,
                                                           nodes[nx].tok);

        } else {
            nodes[pos].rank = NGX_HTTP_LLM_TOK_NONE;
        }

        pv = nodes[pos].prev;

        for (k = 0; k < 2; k++) {
            if (k == 0) {
                i = pos;

            } else if (pv < len) {
                i = pv;
                nodes[pv].rank = ngx_http_llm_tok_pair_cached(vocab, ws,
                                                              nodes[pv].tok,
                                                              r);

            } else {
                break;
            }

            if (nodes[i].rank == NGX_HTTP_LLM_TOK_NONE) {
                continue;
            }

            heap[hn] = ngx_http_llm_tok_key(nodes[i].rank, i);
            ngx_http_llm_tok_sift_up(heap, hn++);
        }
    }

    return count;
}


/*
 * The same merges in linear time for very long pieces, where the heap's
 * log n misses the CPU caches at every level: candidate pairs in one list
 * per rank (a bucket queue), the ranks taken in order, and within a rank
 * its positions in order, leftmost first.  A merge's new pair has more
 * bytes than the pair merged, so it is not of the rank being taken; it
 * is usually of a higher one and joins its list.  One of a lower rank (a
 * token the vocabulary learnt by another split) must still go first: the
 * few such pairs wait in a heap beside, and the next pair is the lower
 * in (rank, position) of the two, which is the order of tiktoken's loop.
 * Entries outdated by a merge are skipped when taken, as in the heap.
 *
 * A list is a chain of blocks of 30 positions, newest first, in the
 * heap's memory: reading one costs a miss a block, not one a position
 * (blocks of 14 ran a 4 MB word at 24 MB/s, of 30 at 29, of 62 at 29).
 */

#define NGX_HTTP_LLM_TOK_BLOCK  32
#define NGX_HTTP_LLM_TOK_AHEAD  8

static size_t
ngx_http_llm_tok_merge_buckets(const ngx_http_llm_vocab_t *vocab,
    ngx_http_llm_tok_ws_t *ws, const unsigned char *p, size_t len)
{
    size_t                    count, nb, rn, ri, sn, i, k, c, w, nw;
    uint32_t                  r, q, cur, pos, e, made[2], *heads, *run, *b;
    uint64_t                  key, bits, *side, *marks;
    ngx_http_llm_tok_node_t  *nodes;

    nw = (vocab->ntokens + 63) / 64;

    /*
     * a position holds each rank at most once (its pair only grows), so
     * a rank's list has fewer than len live or outdated entries; all of
     * them hold 3 len at most (the first pairs, two for each merge), and
     * the blocks, len / 8 at first, grow when partly filled ones leave
     * too little room
     */

    if (ngx_http_llm_tok_parts(vocab, ws, p, len) != 0
        || ngx_http_llm_tok_ws_grow(ws, (void **) &ws->heap, &ws->heap_size,
                                    (len / 8 + 1024)
                                    * (NGX_HTTP_LLM_TOK_BLOCK / 2),
                                    sizeof(uint64_t))
           != 0
        || ngx_http_llm_tok_ws_grow(ws, (void **) &ws->run, &ws->run_size,
                                    len, sizeof(uint32_t))
           != 0)
    {
        return NGX_HTTP_LLM_TOKENS_ERROR;
    }

    /*
     * every list is taken by the end, so the heads and marks are left
     * empty for the next piece: only new ones are cleared
     */

    if (ws->heads_size < vocab->ntokens) {
        if (ngx_http_llm_tok_ws_grow(ws, (void **) &ws->heads,
                                     &ws->heads_size, vocab->ntokens,
                                     sizeof(uint32_t))
            != 0)
        {
            return NGX_HTTP_LLM_TOKENS_ERROR;
        }

        memset(ws->heads, 0xff, ws->heads_size * sizeof(uint32_t));
    }

    if (ws->marks_size < nw) {
        if (ngx_http_llm_tok_ws_grow(ws, (void **) &ws->marks,
                                     &ws->marks_size, nw, sizeof(uint64_t))
            != 0)
        {
            return NGX_HTTP_LLM_TOKENS_ERROR;
        }

        memset(ws->marks, 0, ws->marks_size * sizeof(uint64_t));
    }

    nodes = ws->nodes;
    heads = ws->heads;
    marks = ws->marks;
    run = ws->run;

    nb = 0;

    for (i = 0; i + 1 < len; i++) {
        r = vocab->pair2[(p[i] << 8) | p[i + 1]];
        nodes[i].rank = r;

        if (r != NGX_HTTP_LLM_TOK_NONE
            && ngx_http_llm_tok_list_add(ws, &nb, r, (uint32_t) i) != 0)
        {
            goto failed;
        }
    }

    count = len;
    cur = 0;
    rn = 0;
    ri = 0;
    sn = 0;

    for ( ;; ) {

        if (ri == rn) {
            /* the rank taken is done: the next one with pairs */

            w = cur / 64;
            bits = (w < nw) ? marks[w] & (~0ULL << (cur % 64)) : 0;

            while (bits == 0 && ++w < nw) {
                bits = marks[w];
            }

            cur = bits ? (uint32_t) (w * 64 + __builtin_ctzll(bits))
                       : vocab->ntokens;

            rn = 0;
            ri = 0;

            if (cur < vocab->ntokens) {
                marks[w] &= bits - 1;

                /* newest block first, each read backwards; then turned */

                for (e = heads[cur]; e != NGX_HTTP_LLM_TOK_NONE; e = b[0]) {
                    b = (uint32_t *) ws->heap
                        + (size_t) e * NGX_HTTP_LLM_TOK_BLOCK;

                    for (c = b[1]; c-- > 0; ) {
                        run[rn++] = b[2 + c];
                    }
                }

                heads[cur] = NGX_HTTP_LLM_TOK_NONE;

                for (i = 0; i < rn / 2; i++) {
                    pos = run[i];
                    run[i] = run[rn - 1 - i];
                    run[rn - 1 - i] = pos;
                }

                /*
                 * in the order added, which is the order of position: the
                 * first pairs are added from the left, and a pair of this
                 * rank made by merges is made by the same merges wherever
                 * it is, the leftmost first; sorted by insertion, should
                 * a vocabulary ever break that
                 */

                for (i = 1; i < rn; i++) {
                    pos = run[i];

                    for (c = i; c > 0 && run[c - 1] > pos; c--) {
                        run[c] = run[c - 1];
                    }

                    run[c] = pos;
                }
            }
        }

        side = ws->side;

        if (ri < rn
            && (sn == 0 || ngx_http_llm_tok_key(cur, run[ri]) < side[0]))
        {
            r = cur;
            pos = run[ri++];

            /*
             * a rank's positions are far apart in a long piece: the part
             * a few ahead is asked for now, so its miss overlaps the work
             */

            if (ri + 2 * NGX_HTTP_LLM_TOK_AHEAD < rn) {
                __builtin_prefetch(
                    &nodes[run[ri + 2 * NGX_HTTP_LLM_TOK_AHEAD]]);

                /* and the part after one asked for before, now at hand */
                __builtin_prefetch(
                    &nodes[nodes[run[ri + NGX_HTTP_LLM_TOK_AHEAD]].next]);
            }

        } else if (sn) {
            key = side[0];
            side[0] = side[--sn];
            ngx_http_llm_tok_sift_down(side, sn, 0);

            r = (uint32_t) (key >> 32);
            pos = (uint32_t) key;

        } else {
            break;
        }

        if (nodes[pos].rank != r) {
            continue;
        }

        /*
         * merge pos with the next part; the part before goes first, so
         * that a list keeps the order of position
         */

        count--;

        for (k = ngx_http_llm_tok_join(vocab, ws, nodes, len, pos, r, made);
             k-- > 0;
             /* void */)
        {
            i = made[k];
            q = nodes[i].rank;

            if (q > cur && cur < vocab->ntokens) {
                if (ngx_http_llm_tok_list_add(ws, &nb, q, (uint32_t) i)
                    != 0)
                {
                    goto failed;
                }

                continue;
            }

            if (ngx_http_llm_tok_side_push(ws, &sn,
                                           ngx_http_llm_tok_key(q, i))
                != 0)
            {
                goto failed;
            }
        }
    }

    return count;

failed:

    memset(heads, 0xff, ws->heads_size * sizeof(uint32_t));
    memset(marks, 0, ws->marks_size * sizeof(uint64_t));

    return NGX_HTTP_LLM_TOKENS_ERROR;
}


/* a position at the end of rank r's list; nb blocks are taken */

static int
ngx_http_llm_tok_list_add(ngx_http_llm_tok_ws_t *ws, size_t *nb, uint32_t r,
    uint32_t pos)
{
    uint32_t  *b, e;

    e = ws->heads[r];

    if (e != NGX_HTTP_LLM_TOK_NONE) {
        b = (uint32_t *) ws->heap + (size_t) e * NGX_HTTP_LLM_TOK_BLOCK;

        if (b[1] < NGX_HTTP_LLM_TOK_BLOCK - 2) {
            b[2 + b[1]++] = pos;
            return 0;
        }

    } else {
        ws->marks[r / 64] |= 1ULL << (r % 64);
    }

    if ((*nb + 1) * (NGX_HTTP_LLM_TOK_BLOCK / 2) > ws->heap_size
        && ngx_http_llm_tok_ws_keep(ws, (void **) &ws->heap, &ws->heap_size,
                                    ws->heap_size * 2, sizeof(uint64_t))
           != 0)
    {
        return -1;
    }

    b = (uint32_t *) ws->heap + *nb * NGX_HTTP_LLM_TOK_BLOCK;
    b[0] = e;
    b[1] = 1;
    b[2] = pos;

    ws->heads[r] = (uint32_t) (*nb)++;

    return 0;
}


/* a pair of a rank already taken or being taken, into the heap beside */

static int
ngx_http_llm_tok_side_push(ngx_http_llm_tok_ws_t *ws, size_t *sn,
    uint64_t key)
{
    if (*sn == ws->side_size
        && ngx_http_llm_tok_ws_keep(ws, (void **) &ws->side, &ws->side_size,
                                    ws->side_size ? ws->side_size * 2 : 1024,
                                    sizeof(uint64_t))
           != 0)
    {
        return -1;
    }

    ws->side[*sn] = key;
    ngx_http_llm_tok_sift_up(ws->side, (*sn)++);

    return 0;
}


/* a buffer grown to n units, keeping the size units it holds */

static int
ngx_http_llm_tok_ws_keep(ngx_http_llm_tok_ws_t *ws, void **buf,
    size_t *size, size_t n, size_t unit)
{
    void    *old, *p;
    size_t   had;

    old = *buf;
    had = *size;

    p = NULL;
    *size = 0;

    if (ngx_http_llm_tok_ws_grow(ws, &p, size, n, unit) != 0) {
        *size = had;
        return -1;
    }

    if (old) {
        memcpy(p, old, had * unit);

        if (ws->free) {
            ws->free(ws->ctx, old);

        } else {
            free(old);
        }
    }

    *buf = p;

    return 0;
}

static int
ngx_http_llm_tok_ws_grow(ngx_http_llm_tok_ws_t *ws, void **buf,
    size_t *size, size_t need, size_t unit)
{
    void    *p;
    size_t   n;

    if (need <= *size) {
        return 0;
    }

    /* grow by half again so a series of larger pieces stays linear */
    n = need + need / 2;

    if (n > ((size_t) -1) / unit) {
        return -1;
    }

    p = ws->alloc ? ws->alloc(ws->ctx, n * unit) : malloc(n * unit);
    if (p == NULL) {
        return -1;
    }

    if (*buf) {
        if (ws->free) {
            ws->free(ws->ctx, *buf);

        } else {
            free(*buf);
        }
    }

    *buf = p;
    *size = n;

    return 0;
}
