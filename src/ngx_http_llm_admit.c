
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


static ngx_int_t ngx_http_llm_throttle_headers(ngx_http_request_t *r,
    ngx_msec_t wait);
static void ngx_http_llm_throttle_message(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *message);


/*
 * Admission: the request goes on only if a backend of the pool has room
 * for it now, and that backend is charged at once, so that concurrent
 * requests in every worker see the charge.  Otherwise one 429 in Azure's
 * shape, with the time until room frees.
 */

ngx_int_t
ngx_http_llm_admit(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_int_t                 rc;
    ngx_msec_t                wait;
    ngx_http_llm_backend_t   *b;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    ctx->admitted = 1;
    ctx->pool = ngx_http_llm_pool_of(llcf->upstream);

    b = ngx_http_llm_choose(ctx->pool, ctx, NULL, NULL,
                            llcf->completion_reserve, &wait);

    if (b) {
        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "llm admit: backend \"%V\" of \"%V\", %ui tokens",
                       &b->name, &ctx->pool->name, ctx->charged);

        ctx->backend = b;
        return NGX_DECLINED;
    }

    ctx->throttle = NGX_HTTP_LLM_THROTTLE_LOCAL;
    ctx->all_throttled = 1;
    ctx->retry_after = wait;

    ngx_http_llm_count_local_throttle(ctx->pool);

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "llm: no backend of \"%V\" has room for %ui tokens, "
                  "retry in %M ms", &ctx->pool->name, ctx->tokens_estimate,
                  wait);

    rc = ngx_http_llm_send_throttled(r, ctx);

    ngx_http_finalize_request(r, rc);
    return NGX_DONE;
}


ngx_int_t
ngx_http_llm_send_throttled(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_str_t  message;

    if (ngx_http_llm_throttle_headers(r, ctx->retry_after) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_llm_throttle_message(r, ctx, &message);

    return ngx_http_llm_send_error(r, NGX_HTTP_TOO_MANY_REQUESTS, "429",
                                   &message);
}


/*
 * For the header filter: nginx answers 502 when the balancer finds no
 * backend with room on a retry; the client gets the 429 instead.
 */

ngx_int_t
ngx_http_llm_throttled_response(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_buf_t **out)
{
    ngx_str_t  message;

    if (ngx_http_llm_throttle_headers(r, ctx->retry_after) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_http_llm_throttle_message(r, ctx, &message);

    return ngx_http_llm_error_body(r, NGX_HTTP_TOO_MANY_REQUESTS, "429",
                                   &message, out);
}


static ngx_int_t
ngx_http_llm_throttle_headers(ngx_http_request_t *r, ngx_msec_t wait)
{
    u_char           *p;
    ngx_table_elt_t  *h;

    /* Retry-After in whole seconds, never 0: clients busy-loop on 0 */

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    p = ngx_pnalloc(r->pool, 2 * NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Retry-After");
    h->value.data = p;
    h->value.len = ngx_sprintf(p, "%M", ngx_max((wait + 999) / 1000, 1)) - p;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "retry-after-ms");
    h->value.data = p + NGX_INT_T_LEN;
    h->value.len = ngx_sprintf(h->value.data, "%M", ngx_max(wait, 1))
                   - h->value.data;

#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    return NGX_OK;
}


static void
ngx_http_llm_throttle_message(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_str_t *message)
{
    u_char     *p;
    size_t      len;
    ngx_str_t  *name;

    static ngx_str_t  unknown = ngx_string("upstream");

    name = ctx->pool ? &ctx->pool->name : &unknown;

    len = sizeof("Requests to the deployments of \"\" have exceeded their "
                 "token or call rate limits. Please retry after  "
                 "seconds.") + NGX_INT_T_LEN + name->len;

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        ngx_str_set(message, "Rate limit exceeded.");
        return;
    }

    message->data = p;
    message->len = ngx_snprintf(p, len,
                                "Requests to the deployments of \"%V\" have "
                                "exceeded their token or call rate limits. "
                                "Please retry after %M seconds.", name,
                                ngx_max((ctx->retry_after + 999) / 1000, 1))
                   - p;
}
