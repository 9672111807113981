
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_cache_key.h"
#include "ngx_http_llm_digest.h"
#include "ngx_http_llm_estimate.h"


/*
 * $llm_cache_key, for nginx's proxy_cache: the SHA-256, in hex, of what
 * determines a completion.  That is the deployment the path names, the
 * query (api-version) and the body as the client sent it, less the value
 * of its "user" member: who asks does not change the answer.  "stream"
 * stays in: a stream and a JSON reply answer one question differently,
 * and one must never be served for the other.  The body counts as bytes:
 * an exact repeat is the same text in the same order, as a client sends
 * it again; a body that differs only in spacing or the order of its
 * members gets a key of its own, and is merely not served from the cache.
 */

static void ngx_http_llm_cache_key_cut(ngx_str_t *body, size_t *start,
    size_t *end);


ngx_int_t
ngx_http_llm_cache_key(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_str_t *key)
{
    size_t       start, end;
    u_char       digest[NGX_HTTP_LLM_SHA256_LEN];
    ngx_str_t    parts[7];
    ngx_uint_t   n;

    static ngx_str_t  user = ngx_string("user");

    /* a new recipe, a new version: no key of the old one is met again */

    ngx_str_set(&parts[0], "llm cache key 1\n");
    parts[1] = ctx->deployment;
    ngx_str_set(&parts[2], "\n");
    parts[3] = r->args;
    ngx_str_set(&parts[4], "\n");

    n = 5;

    if (ngx_http_llm_find_member(&ctx->body, &user, &start, &end) == NGX_OK)
    {
        ngx_http_llm_cache_key_cut(&ctx->body, &start, &end);

        parts[n].data = ctx->body.data;
        parts[n++].len = start;
        parts[n].data = ctx->body.data + end;
        parts[n++].len = ctx->body.len - end;

    } else {
        parts[n++] = ctx->body;
    }

    ngx_http_llm_sha256(parts, n, digest);

    key->data = ngx_pnalloc(r->pool, 2 * NGX_HTTP_LLM_SHA256_LEN);
    if (key->data == NULL) {
        return NGX_ERROR;
    }

    key->len = ngx_hex_dump(key->data, digest, NGX_HTTP_LLM_SHA256_LEN)
               - key->data;

    return NGX_OK;
}


/*
 * From the "user" value found to the whole member and one comma beside
 * it, so that a body with a "user" and the same body without one are
 * one request
 */

#define ngx_http_llm_space(c)                                              \
    ((c) == ' ' || (c) == '\t' || (c) == '\r' || (c) == '\n')

static void
ngx_http_llm_cache_key_cut(ngx_str_t *body, size_t *start, size_t *end)
{
    size_t   s, e;
    u_char  *p;

    p = body->data;
    s = *start;
    e = *end;

    while (s > 0 && ngx_http_llm_space(p[s - 1])) {
        s--;
    }

    if (s == 0 || p[s - 1] != ':') {
        return;
    }

    s--;

    while (s > 0 && ngx_http_llm_space(p[s - 1])) {
        s--;
    }

    if (s < sizeof("\"user\"") - 1
        || ngx_strncmp(p + s - 6, "\"user\"", 6) != 0)
    {
        return;
    }

    s -= 6;

    /* the comma after it, or else the one before it */

    while (e < body->len && ngx_http_llm_space(p[e])) {
        e++;
    }

    if (e < body->len && p[e] == ',') {
        e++;

    } else {
        while (s > 0 && ngx_http_llm_space(p[s - 1])) {
            s--;
        }

        if (s > 0 && p[s - 1] == ',') {
            s--;
        }
    }

    *start = s;
    *end = e;
}
