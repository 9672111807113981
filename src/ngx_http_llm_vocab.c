
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


static void ngx_http_llm_vocab_cleanup(void *data);
static void *ngx_http_llm_ws_alloc(void *ctx, size_t size);
static void ngx_http_llm_ws_free(void *ctx, void *p);


/* one per worker: the tokenizer's scratch space, never shared */

static ngx_http_llm_tok_ws_t  ngx_http_llm_ws;
static ngx_uint_t             ngx_http_llm_ws_ready;


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
 * The encoding of a model or deployment name (AOAI_FACTS.md section 7):
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
ngx_http_llm_count(ngx_http_llm_vocab_t *vocab, u_char *text, size_t len)
{
    size_t  n;

    if (!ngx_http_llm_ws_ready) {
        ngx_http_llm_tok_ws_init(&ngx_http_llm_ws, ngx_http_llm_ws_alloc,
                                 ngx_http_llm_ws_free, NULL);
        ngx_http_llm_ws_ready = 1;
    }

    n = ngx_http_llm_count_tokens(vocab, &ngx_http_llm_ws, text, len);

    return (n == NGX_HTTP_LLM_TOKENS_ERROR) ? 0 : n;
}


/*
 * The scratch space grows to the longest piece counted; after a large
 * body it is given back rather than kept for the worker's lifetime.
 */

void
ngx_http_llm_count_done(size_t body_len)
{
    if (ngx_http_llm_ws_ready && body_len > 256 * 1024) {
        ngx_http_llm_tok_ws_cleanup(&ngx_http_llm_ws);
    }
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
