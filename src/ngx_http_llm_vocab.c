
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"

#include <openssl/rand.h>
#include "ngx_http_llm_vocab.h"


static void ngx_http_llm_vocab_cleanup(void *data);
static void *ngx_http_llm_ws_alloc(void *ctx, size_t size);
static void ngx_http_llm_ws_free(void *ctx, void *p);


/*
 * One per thread: the tokenizer's scratch space, never shared, and the
 * repeat cache, which only the worker's own thread has.  A thread's
 * state is looked up once a body (ngx_http_llm_counter()): in a module
 * loaded with dlopen(), each lookup of a thread's variable is a call.
 */

typedef struct ngx_http_llm_cache_entry_s  ngx_http_llm_cache_entry_t;

struct ngx_http_llm_counter_s {
    ngx_http_llm_tok_ws_t         ws;
    ngx_uint_t                    ready;
    ngx_http_llm_cache_entry_t   *cache;
};


static ngx_http_llm_thread_local ngx_http_llm_counter_t
                                                ngx_http_llm_counter_tls;


/*
 * The repeat cache, one per worker: chat clients send the whole history
 * with every turn, so most texts of a body were counted a moment ago.
 * Sets of two entries chosen by a hash of the text, keyed with a
 * per-worker random seed (from OpenSSL's generator) so that a client
 * cannot find texts that meet another's; a hit needs hash, length and
 * vocabulary to agree.  Two ways keep two texts whose hashes meet from
 * pushing each other out on every request.  Short texts are cached too:
 * a role or a name costs a few hundred instructions to count, a dozen to
 * look up.
 */

#define NGX_HTTP_LLM_CACHE_SIZE  16384      /* a power of 2 */

#define ngx_http_llm_cache_hit(e, h, n, v)                                   \
    ((e)->hash == (h) && (e)->len == (n) && (e)->vocab == (v))

struct ngx_http_llm_cache_entry_s {
    uint64_t                  hash;
    ngx_http_llm_vocab_t     *vocab;
    uint32_t                  len;
    uint32_t                  tokens;
};


static uint64_t  ngx_http_llm_cache_seed;


static uint64_t ngx_http_llm_text_hash(u_char *p, size_t len);


/*
 * llm_tokenizer o200k_base|cl100k_base path;
 *
 * Loaded once at configuration time; after fork the workers share the
 * vocabulary's pages read-only.
 */

char *
ngx_http_llm_tokenizer(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_main_conf_t *lmcf = conf;

    char                     err[256];
    ngx_str_t               *value, path;
    ngx_uint_t               enc;
    ngx_pool_cleanup_t      *cln;
    ngx_http_llm_vocab_t    *vocab;

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "o200k_base") == 0) {
        enc = NGX_HTTP_LLM_ENC_O200K;

    } else if (ngx_strcmp(value[1].data, "cl100k_base") == 0) {
        enc = NGX_HTTP_LLM_ENC_CL100K;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "unknown encoding \"%V\": o200k_base or "
                           "cl100k_base expected", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (lmcf->vocab[enc]) {
        return "is duplicate";
    }

    path = value[2];

    if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    err[0] = '\0';

    vocab = ngx_http_llm_vocab_load((char *) path.data, err, sizeof(err));

    if (vocab == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cannot load the \"%V\" vocabulary from \"%V\": %s",
                           &value[1], &path, err);
        return NGX_CONF_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        ngx_http_llm_vocab_free(vocab);
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_llm_vocab_cleanup;
    cln->data = vocab;

    if ((ngx_uint_t) ngx_http_llm_vocab_encoding(vocab) != enc) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" holds the %s vocabulary, not %V",
                           &path, ngx_http_llm_vocab_name(vocab), &value[1]);
        return NGX_CONF_ERROR;
    }

    ngx_conf_log_error(NGX_LOG_INFO, cf, 0,
                       "llm_tokenizer %V: %uz tokens, %uz KB, loaded in "
                       "%.0f ms", &value[1], ngx_http_llm_vocab_tokens(vocab),
                       ngx_http_llm_vocab_memory(vocab) / 1024,
                       ngx_http_llm_vocab_load_msec(vocab));

    lmcf->vocab[enc] = vocab;

    return NGX_CONF_OK;
}


static void
ngx_http_llm_vocab_cleanup(void *data)
{
    ngx_http_llm_vocab_free(data);
}


/*
 * The encoding of a model or deployment name (docs/azure.md section 7):
 * o200k_base for gpt-4o, gpt-4.1, gpt-4.5, gpt-5 and the o-series,
 * cl100k_base for gpt-4, gpt-35-turbo and the embeddings models.  A name
 * that says nothing (a deployment called "prod") gets o200k_base, the
 * encoding of every current model.
 */

ngx_uint_t
ngx_http_llm_encoding_for(ngx_str_t *model)
{
    u_char  *p, *last;

    if (model->len < 2) {
        return NGX_HTTP_LLM_ENC_O200K;
    }

    p = model->data;
    last = p + model->len;

    /* the names most bodies give, as they are spelt, without a search */

    if ((model->len >= 6 && ngx_strncmp(p, "gpt-4o", 6) == 0)
        || (model->len >= 5 && ngx_strncmp(p, "gpt-5", 5) == 0))
    {
        return NGX_HTTP_LLM_ENC_O200K;
    }

    if (ngx_strlcasestrn(p, last, (u_char *) "4o", 2 - 1)
        || ngx_strlcasestrn(p, last, (u_char *) "gpt-4.", 6 - 1)
        || ngx_strlcasestrn(p, last, (u_char *) "gpt-5", 5 - 1)
        || (model->len >= 2 && (p[0] | 0x20) == 'o'
            && p[1] >= '1' && p[1] <= '9'))
    {
        return NGX_HTTP_LLM_ENC_O200K;
    }

    if (ngx_strlcasestrn(p, last, (u_char *) "gpt-4", 5 - 1)
        || ngx_strlcasestrn(p, last, (u_char *) "gpt4", 4 - 1)
        || ngx_strlcasestrn(p, last, (u_char *) "35-turbo", 8 - 1)
        || ngx_strlcasestrn(p, last, (u_char *) "3.5-turbo", 9 - 1)
        || ngx_strlcasestrn(p, last, (u_char *) "embedding", 9 - 1))
    {
        return NGX_HTTP_LLM_ENC_CL100K;
    }

    return NGX_HTTP_LLM_ENC_O200K;
}


size_t
ngx_http_llm_count(ngx_http_llm_counter_t *c, ngx_http_llm_vocab_t *vocab,
    u_char *text, size_t len, ngx_uint_t cache)
{
    size_t                       n;
    uint64_t                     hash;
    ngx_http_llm_cache_entry_t  *set, hit;

    if (!c->ready) {
        ngx_http_llm_tok_ws_init(&c->ws, ngx_http_llm_ws_alloc,
                                 ngx_http_llm_ws_free, NULL);
        c->ready = 1;
    }

    set = NULL;
    hash = 0;

    if (cache && c->cache && len <= NGX_MAX_UINT32_VALUE) {
        hash = ngx_http_llm_text_hash(text, len);
        set = &c->cache[hash & (NGX_HTTP_LLM_CACHE_SIZE - 2)];

        if (ngx_http_llm_cache_hit(&set[0], hash, len, vocab)) {
            return set[0].tokens;
        }

        if (ngx_http_llm_cache_hit(&set[1], hash, len, vocab)) {
            /* the older of the two ways goes first: it was used now */
            hit = set[1];
            set[1] = set[0];
            set[0] = hit;
            return hit.tokens;
        }
    }

    n = ngx_http_llm_count_tokens(vocab, &c->ws, text, len);

    if (n == NGX_HTTP_LLM_TOKENS_ERROR) {
        return 0;
    }

    if (set && n <= NGX_MAX_UINT32_VALUE) {
        /* the newest in the first way, the older one kept in the second */
        set[1] = set[0];
        set[0].hash = hash;
        set[0].vocab = vocab;
        set[0].len = (uint32_t) len;
        set[0].tokens = (uint32_t) n;
    }

    return n;
}


/* made in each worker at its start: 16384 entries, 384 KB */

ngx_int_t
ngx_http_llm_count_cache_init(ngx_cycle_t *cycle)
{
    ngx_http_llm_counter_t  *c;

    c = &ngx_http_llm_counter_tls;

    c->cache = ngx_calloc(NGX_HTTP_LLM_CACHE_SIZE
                          * sizeof(ngx_http_llm_cache_entry_t), cycle->log);
    if (c->cache == NULL) {
        /* counting works without it, only slower */
        return NGX_OK;
    }

    if (RAND_bytes((u_char *) &ngx_http_llm_cache_seed,
                   sizeof(ngx_http_llm_cache_seed))
        != 1)
    {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "RAND_bytes() failed, llm_count_cache disabled");
        ngx_free(c->cache);
        c->cache = NULL;
    }

    return NGX_OK;
}


/*
 * 8 bytes a step: xor into the state, multiply by an odd constant, fold
 * the high bits down; a few instructions for 8 bytes, against about a
 * hundred a byte for counting
 */

static uint64_t
ngx_http_llm_text_hash(u_char *p, size_t len)
{
    size_t    i;
    uint64_t  h, w;

    h = ngx_http_llm_cache_seed ^ (len * 0x9e3779b97f4a7c15ULL);

    for (i = 0; i + 8 <= len; i += 8) {
        ngx_memcpy(&w, p + i, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }

    w = 0;
    ngx_memcpy(&w, p + i, len - i);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 29;

    return h;
}


/*
 * The scratch space grows to the longest piece counted; after a large
 * body it is given back rather than kept for the worker's lifetime.
 */

void
ngx_http_llm_count_done(ngx_http_llm_counter_t *c, size_t body_len)
{
    if (c->ready && body_len > 256 * 1024) {
        ngx_http_llm_tok_ws_cleanup(&c->ws);
    }
}


/* the calling thread's tokenizer state */

ngx_http_llm_counter_t *
ngx_http_llm_counter(void)
{
    return &ngx_http_llm_counter_tls;
}


static void *
ngx_http_llm_ws_alloc(void *ctx, size_t size)
{
    return ngx_alloc(size, ngx_cycle->log);
}


static void
ngx_http_llm_ws_free(void *ctx, void *p)
{
    ngx_free(p);
}
