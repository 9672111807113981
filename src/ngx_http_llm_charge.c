
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_account.h"
#include "ngx_http_llm_charge.h"
#include "ngx_http_llm_consumer.h"
#include "ngx_http_llm_price.h"
#include "ngx_http_llm_zone.h"


/*
 * The owner of a request's charges.  Admission charges a backend's token
 * and request windows and one of its in-flight requests, and every
 * consumer window and quota the request falls under; each attempt may
 * charge another backend.  Whatever path the request then takes, all of
 * it is settled exactly once, when the request ends:
 *
 *   - in the log phase, normally, with the status the client got;
 *   - from the request pool's cleanup when the log phase did not see the
 *     context: an internal redirect (error_page, try_files, a named
 *     location) empties the request's module contexts, not its pool;
 *   - when the request, sent elsewhere by such a redirect, comes back to
 *     a routed location: the earlier location's charges are settled
 *     before new ones are made, so one request never holds two.
 *
 * Settling keeps what the backend's own counter keeps, corrects what is
 * corrected to the reply's usage, and gives back what was never spent:
 * a charge no attempt carried (the request ended before proxying), and,
 * from the consumers, a request that got no successful reply or got
 * it from nginx's cache.
 */


static void ngx_http_llm_charge_cleanup(void *data);


ngx_int_t
ngx_http_llm_charge_own(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_pool_cleanup_t  *cln;

    if (ctx->owned) {
        return NGX_OK;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_http_llm_charge_cleanup;
    cln->data = ctx;

    ctx->owned = 1;

    return NGX_OK;
}


/*
 * A routed location met with no context: if the request held charges in
 * a location it left by an internal redirect, they are settled now, with
 * what its last attempt's backend answered.
 */

void
ngx_http_llm_charge_adopt(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t  *cln;
    ngx_http_llm_ctx_t  *ctx;

    for (cln = r->pool->cleanup; cln; cln = cln->next) {

        if (cln->handler != ngx_http_llm_charge_cleanup) {
            continue;
        }

        ctx = cln->data;

        /* a subrequest's charges, in the same pool, are its own */

        if (!ctx->settled && ctx->request == r) {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "llm charge: settled after a redirect");

            ngx_http_llm_charge_settle(ctx, ctx->upstream_status);
        }
    }
}


void
ngx_http_llm_charge_settle(ngx_http_llm_ctx_t *ctx, ngx_uint_t status)
{
    ngx_http_llm_backend_t  *b;

    if (ctx->settled) {
        return;
    }

    ctx->settled = 1;

    /* a hedged request settles its attempts and takes the winner's */

    if (ctx->settle_attempts) {
        ctx->settle_attempts(ctx);
    }

    b = ctx->backend;

    /* what the reply's usage cost, for the backend and the consumers */

    if (ngx_http_llm_cost(ctx->request, ctx, &ctx->cost) == NGX_OK) {
        ctx->priced = 1;
    }

    /* admitted, and no attempt took the charge: nothing was spent */

    if (b) {
        ngx_http_llm_refund(b, ctx);

        if (ctx->in_flight) {
            ngx_http_llm_backend_done(b, ctx, NGX_HTTP_LLM_DONE_OK, 0, NULL);
        }
    }

    if (ctx->attempts) {
        ngx_http_llm_account(ctx, status);
    }

    /* an answer from proxy_cache cost the consumers nothing either */

    ngx_http_llm_consumers_account(ctx, ctx->cached ? 0 : status);
}


/* the log phase: the request is over, with the status the client got */

ngx_int_t
ngx_http_llm_log_handler(ngx_http_request_t *r)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    /* a hedged attempt, logged with log_subrequest: its hedge settles it */

    if (ctx && ctx->attempt == NULL) {

        /*
         * a 2xx whose last buffer never went: nginx ended a reply cut
         * short (the backend closed, timed out), which failed as a 5xx
         * does (a reply that left by an internal redirect, such as
         * X-Accel-Redirect, is settled elsewhere, and did not fail)
         */

        if (r->headers_out.status >= NGX_HTTP_OK
            && r->headers_out.status < NGX_HTTP_SPECIAL_RESPONSE
            && !ctx->reply_ended && !r->header_only)
        {
            ctx->reply_cut = 1;
        }

        ngx_http_llm_charge_settle(ctx, r->headers_out.status);
    }

    return NGX_OK;
}


static void
ngx_http_llm_charge_cleanup(void *data)
{
    ngx_http_llm_ctx_t  *ctx = data;

    ngx_http_llm_charge_settle(ctx, ctx->upstream_status);
}
