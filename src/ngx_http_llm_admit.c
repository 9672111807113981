
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_admit.h"
#include "ngx_http_llm_charge.h"
#include "ngx_http_llm_consumer.h"
#include "ngx_http_llm_error.h"
#include "ngx_http_llm_identity.h"
#include "ngx_http_llm_price.h"
#include "ngx_http_llm_zone.h"


static void ngx_http_llm_wait_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_wait_again(ngx_http_request_t *r,
    ngx_msec_t delay);
static ngx_msec_t ngx_http_llm_lease_look(ngx_http_llm_ctx_t *ctx,
    ngx_msec_t now);
static ngx_int_t ngx_http_llm_enqueue(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static void ngx_http_llm_dequeue(ngx_http_llm_ctx_t *ctx);
static void ngx_http_llm_wait_cleanup(void *data);
static ngx_int_t ngx_http_llm_throttle_headers(ngx_http_request_t *r,
    ngx_msec_t wait);
static void ngx_http_llm_throttle_message(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *message);
static ngx_int_t ngx_http_llm_consumer_throttled(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_msec_t wait);
static void ngx_http_llm_consumer_message(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *message);
static ngx_http_llm_backend_t *ngx_http_llm_admit_fallback(
    ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_loc_conf_t *llcf, ngx_msec_t *wait);
static ngx_int_t ngx_http_llm_never_fits(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_uint_t need, ngx_uint_t most);
static ngx_int_t ngx_http_llm_send_throttled(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static ngx_msec_t ngx_http_llm_queue(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_loc_conf_t *llcf, ngx_msec_t wait,
    ngx_msec_t now);
static ngx_int_t ngx_http_llm_admit_tokens(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_pool_t *pool, ngx_msec_t now);


/*
 * Admission: the request goes on only if its consumers (llm_limit) and
 * a backend of the pool have room for it now, and they are charged at
 * once, so that concurrent requests in every worker see the charge.
 * Otherwise one 429 in Azure's shape, with the time until room frees.
 */

ngx_int_t
ngx_http_llm_admit(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_int_t                 rc;
    ngx_uint_t                need, most;
    ngx_msec_t                wait, now, delay;
    ngx_http_llm_pool_t      *pool;
    ngx_http_llm_backend_t   *b;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    pool = ngx_http_llm_pool_of(llcf->upstream);
    ctx->pool = pool;
    ctx->request = r;
    now = ngx_current_msec;

    /* whatever admission charges, the request's end settles */

    if (ngx_http_llm_charge_own(r, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* more than any backend's whole window: a 400, never a wait */

    if (!ctx->queued
        && !ngx_http_llm_pool_fits(pool, ctx, llcf->completion_reserve,
                                   &need, &most))
    {
        return ngx_http_llm_never_fits(r, ctx, need, most);
    }

    /* backends of an llm_identity serve only with a valid token */

    if (pool->identities) {
        rc = ngx_http_llm_admit_tokens(r, ctx, pool, now);

        if (rc != NGX_OK) {
            return rc;
        }
    }

    /* first come, first served: only the head of the queue may try */

    if (!ngx_queue_empty(&pool->waiting)
        && (!ctx->queued || ngx_queue_head(&pool->waiting) != &ctx->queue))
    {
        b = NULL;
        wait = ctx->retry_after ? ctx->retry_after : 50;

    } else {

        /* a consumer over its limit is refused before any backend is */

        if (llcf->limits) {
            rc = ngx_http_llm_consumers_charge(r, ctx, &wait);

            if (rc == NGX_ERROR) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            if (rc == NGX_BUSY) {
                return ngx_http_llm_consumer_throttled(r, ctx, wait);
            }

            if (rc == NGX_DECLINED) {
                return ngx_http_llm_never_fits(r, ctx, ctx->tokens_estimate,
                                               0);
            }

            /* a lease asked of Redis: a look again in a millisecond */

            if (rc == NGX_AGAIN) {

                /* once, as the wait starts: a lease asked is not again */

                if (ctx->share_since == (now ? now : 1)) {
                    ngx_http_llm_choose_ahead(pool, ctx,
                                              llcf->completion_reserve);
                }

                return ngx_http_llm_wait_again(r,
                                           ngx_http_llm_lease_look(ctx, now));
            }
        }

        b = ngx_http_llm_choose(pool, ctx, NULL, NULL,
                                llcf->completion_reserve, &wait);

        if (b == NULL && !ctx->lease_wait && llcf->fallbacks) {
            b = ngx_http_llm_admit_fallback(r, ctx, llcf, &wait);
        }
    }

    if (b) {
        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "llm admit: backend \"%V\" of \"%V\", %ui tokens",
                       &b->name, &ctx->pool->name, ctx->charged);

        ngx_http_llm_dequeue(ctx);

        ctx->admitted = 1;
        ctx->backend = b;
        return NGX_DECLINED;
    }

    /* the consumers are charged again when the request tries again */

    ngx_http_llm_consumers_refund(ctx);

    /* a backend's lease asked of Redis: a look again in a millisecond */

    if (ctx->lease_wait) {
        ctx->lease_wait = 0;

        if (ctx->share_since == 0) {
            ctx->share_since = now ? now : 1;
        }

        return ngx_http_llm_wait_again(r, ngx_http_llm_lease_look(ctx, now));
    }

    /*
     * Redis answered what this request waited for, if anything: a wait
     * for it after the queue's is a new one
     */

    ctx->share_since = 0;

    /* llm_wait: queue while room is expected within the time allowed */

    if (llcf->wait && wait != NGX_MAX_INT32_VALUE) {
        delay = ngx_http_llm_queue(r, ctx, llcf, wait, now);

        if (delay) {
            return ngx_http_llm_wait_again(r, delay);
        }
    }

    ctx->admitted = 1;
    ctx->throttle = NGX_HTTP_LLM_THROTTLE_LOCAL;
    ctx->all_throttled = 1;
    ctx->retry_after = (wait == NGX_MAX_INT32_VALUE) ? pool->cooldown : wait;

    ngx_http_llm_pool_count(pool, 0);

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "llm: no backend of \"%V\" has room for %ui tokens, "
                  "retry in %M ms", &pool->name, ctx->tokens_estimate,
                  ctx->retry_after);

    rc = ngx_http_llm_send_throttled(r, ctx);

    ngx_http_finalize_request(r, rc);
    return NGX_DONE;
}


/*
 * llm_route fallback=: when the route's own pool has no room now, the
 * first pool of the chain that has takes the request, before any wait
 * in the first (a reply from a smaller model at once rather than from
 * the first model later); llm_wait queues only when no pool has room.
 * The request is charged to the fallback's backend alone.
 */

static ngx_http_llm_backend_t *
ngx_http_llm_admit_fallback(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_loc_conf_t *llcf, ngx_msec_t *wait)
{
    ngx_msec_t                      w;
    ngx_uint_t                      i, need, most;
    ngx_http_llm_pool_t            *fb;
    ngx_http_llm_backend_t         *b;
    ngx_http_upstream_srv_conf_t  **uscf;

    uscf = llcf->fallbacks->elts;

    for (i = 0; i < llcf->fallbacks->nelts; i++) {
        fb = ngx_http_llm_pool_of(uscf[i]);

        if (!ngx_http_llm_pool_fits(fb, ctx, llcf->completion_reserve,
                                    &need, &most))
        {
            continue;
        }

        b = ngx_http_llm_choose(fb, ctx, NULL, NULL,
                                llcf->completion_reserve, &w);

        if (b) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "llm: no backend of \"%V\" has room for %ui "
                          "tokens, fallback \"%V\" takes the request",
                          &ctx->pool->name, ctx->tokens_estimate,
                          &fb->name);

            ngx_http_llm_pool_count(fb, 1);

            ctx->pool = fb;
            ctx->fallback = 1;
            return b;
        }

        /* a lease asked of Redis: the chain is tried again */

        if (ctx->lease_wait) {
            return NULL;
        }

        *wait = ngx_min(*wait, w);
    }

    return NULL;
}


/*
 * A consumer over its limit: a 429 at once, even with llm_wait, as room
 * comes back only when the consumer's own window moves on.
 */

static ngx_int_t
ngx_http_llm_consumer_throttled(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_msec_t wait)
{
    u_char      id[NGX_HTTP_LLM_CONSUMER_ID_LEN];
    ngx_int_t   rc;

    ngx_http_llm_dequeue(ctx);

    ctx->admitted = 1;
    ctx->throttle = NGX_HTTP_LLM_THROTTLE_CONSUMER;
    ctx->retry_after = wait;

    (void) ngx_http_llm_consumer_id(id, ctx->over_consumer->digest);

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "llm: consumer %*s of \"llm_limit %V\" has no room for "
                  "%ui tokens, retry in %M ms",
                  (size_t) NGX_HTTP_LLM_CONSUMER_ID_LEN, id,
                  &ctx->over->key.value, ctx->tokens_estimate, wait);

    rc = ngx_http_llm_send_throttled(r, ctx);

    ngx_http_finalize_request(r, rc);
    return NGX_DONE;
}


/*
 * A request that needs more than a whole window or quota is refused at
 * once, in Azure's shape, with a 400: a 429 would tell the client to
 * retry what can never pass.  "most" is the largest backend window, 0
 * when a consumer's limit (ctx->over) refused it.
 */

static ngx_int_t
ngx_http_llm_never_fits(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_uint_t need, ngx_uint_t most)
{
    u_char                *p, *last;
    size_t                 len;
    ngx_int_t              rc;
    ngx_str_t              message;
    ngx_http_llm_limit_t  *limit;

    ngx_http_llm_dequeue(ctx);

    ctx->admitted = 1;

    limit = most ? NULL : ctx->over;

    len = sizeof("This request needs  tokens (its prompt and the completion "
                 "limit times n), more than the deployments of \"\" accept "
                 "in a minute ( at most); lower max_tokens or n, or shorten "
                 "the prompt.")
          + ctx->pool->name.len + 2 * NGX_INT_T_LEN
          + NGX_HTTP_LLM_CONSUMER_ID_LEN
          + (limit ? limit->key.value.len : 0)
          + sizeof(" may cost up to  at its llm_price to spend a month")
          + 2 * NGX_HTTP_LLM_COST_LEN;

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    message.data = p;
    last = p + len;

    if (limit && ctx->over_kind == NGX_HTTP_LLM_OVER_BUDGET) {
        p = ngx_slprintf(p, last, "This request may cost up to ");
        p = ngx_http_llm_cost_print(p, ctx->cost_estimate);
        p = ngx_slprintf(p, last, " (its prompt and the completion limit "
                         "times n at its llm_price), more than \"llm_limit "
                         "%V\" allows consumer ", &limit->key.value);
        p = ngx_http_llm_consumer_id(p, ctx->over_consumer->digest);
        p = ngx_slprintf(p, last, " to spend (");
        p = ngx_http_llm_cost_print(p, limit->budget);
        p = ngx_slprintf(p, last, " a %s)",
                         (limit->quota_period == NGX_HTTP_LLM_QUOTA_DAY)
                         ? "day" : "month");

    } else {
        p = ngx_slprintf(p, last, "This request needs %ui tokens (its "
                         "prompt and the completion limit times n), more "
                         "than ", need);
    }

    if (limit && ctx->over_kind == NGX_HTTP_LLM_OVER_BUDGET) {
        /* void */

    } else if (limit == NULL) {
        p = ngx_slprintf(p, last, "the deployments of \"%V\" accept in a "
                         "minute (%ui at most)", &ctx->pool->name, most);

    } else {
        p = ngx_slprintf(p, last, "\"llm_limit %V\" allows consumer ",
                         &limit->key.value);
        p = ngx_http_llm_consumer_id(p, ctx->over_consumer->digest);
        p = ngx_slprintf(p, last, " (%ui)",
                         (ctx->over_kind == NGX_HTTP_LLM_OVER_TOKENS)
                         ? limit->tpm : limit->quota);
    }

    p = ngx_slprintf(p, last, "; lower max_tokens or n, or shorten the "
                     "prompt.");
    message.len = p - message.data;

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "llm: request of %ui tokens can never be admitted", need);

    rc = ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                 "TokenLimitExceeded", &message);

    ngx_http_finalize_request(r, rc);
    return NGX_DONE;
}


/*
 * llm_wait: a request without room joins the pool's queue in this
 * worker while room is expected within the time allowed and the queue
 * has a place; the delay until its next look, or 0 when it is to be
 * refused now (and is out of the queue)
 */

static ngx_msec_t
ngx_http_llm_queue(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_loc_conf_t *llcf, ngx_msec_t wait, ngx_msec_t now)
{
    ngx_msec_t  delay;

    if (!ctx->queued && !ctx->deadline) {
        if (wait <= llcf->wait && ctx->pool->nwaiting < llcf->wait_queue
            && ngx_http_llm_enqueue(r, ctx) == NGX_OK)
        {
            ctx->deadline = now + llcf->wait;
        }
    }

    if (ctx->queued && (ngx_msec_int_t) (ctx->deadline - now) > 0) {
        delay = ngx_min(wait, ctx->deadline - now);
        delay = ngx_max(delay, 10);

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "llm wait: %M ms", delay);

        ctx->retry_after = delay;

        return delay;
    }

    ngx_http_llm_dequeue(ctx);

    return 0;
}


/*
 * A pool whose backends all need an Entra ID token and have none: at
 * start, while the first tokens are on their way, the request waits
 * (10 s at most); otherwise a 503, before anything is charged, and the
 * reason is in the log, from the identity's last attempt
 */

static ngx_int_t
ngx_http_llm_admit_tokens(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_pool_t *pool, ngx_msec_t now)
{
    u_char                  *p, text[NGX_MAX_ERROR_STR];
    ngx_int_t                rc;
    ngx_str_t                token, message;
    ngx_uint_t               i, coming;
    ngx_http_llm_backend_t  *b;

    coming = 0;
    b = pool->backends.elts;

    for (i = 0; i < pool->backends.nelts; i++) {
        if (b[i].identity == NULL) {
            return NGX_OK;
        }

        rc = ngx_http_llm_identity_token(b[i].identity, &token);

        if (rc == NGX_OK) {
            return NGX_OK;
        }

        if (rc == NGX_AGAIN) {
            coming = 1;
        }
    }

    if (coming) {
        if (ctx->token_since == 0) {
            ctx->token_since = now ? now : 1;
        }

        if (now - ctx->token_since < 10000) {
            return ngx_http_llm_wait_again(r, 10);
        }
    }

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "llm: no backend of \"%V\" has a valid Entra ID token "
                  "(the \"llm: identity\" lines say why)", &pool->name);

    p = ngx_slprintf(text, text + sizeof(text),
                     "No backend of \"%V\" has a valid Entra ID token now; "
                     "the gateway's error log says why.", &pool->name);
    message.data = text;
    message.len = p - text;

    ctx->admitted = 1;

    rc = ngx_http_llm_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                 "ServiceUnavailable", &message);

    ngx_http_finalize_request(r, rc);
    return NGX_DONE;
}


/*
 * When a request that waits for Redis looks again: each millisecond at
 * first, a reply being a round trip away on a near Redis; then a tenth
 * of its wait so far, 20 ms at most.  A request may wait seconds behind
 * others' asks on a far one (ngx_http_llm_share_gave_up()), and a look
 * each millisecond for that long is thousands of admission passes.
 */

static ngx_msec_t
ngx_http_llm_lease_look(ngx_http_llm_ctx_t *ctx, ngx_msec_t now)
{
    ngx_msec_t  waited;

    waited = ctx->share_since ? now - ctx->share_since : 0;

    return ngx_max(ngx_min(waited / 10, 20), 1);
}


/* admission again after delay, unless the client goes away meanwhile */

static ngx_int_t
ngx_http_llm_wait_again(ngx_http_request_t *r, ngx_msec_t delay)
{
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_llm_wait_handler;

    r->connection->write->delayed = 1;
    ngx_add_timer(r->connection->write, delay);

    return NGX_AGAIN;
}


/* a waiting request's timer: back to the phases, admission again */

static void
ngx_http_llm_wait_handler(ngx_http_request_t *r)
{
    ngx_event_t  *wev;

    wev = r->connection->write;

    if (wev->delayed) {
        if (ngx_handle_write_event(wev, 0) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        }

        return;
    }

    if (ngx_handle_read_event(r->connection->read, 0) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;

    ngx_http_core_run_phases(r);
}


static ngx_int_t
ngx_http_llm_enqueue(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_pool_cleanup_t  *cln;

    if (!ctx->cleanup) {
        cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cln == NULL) {
            return NGX_ERROR;
        }

        cln->handler = ngx_http_llm_wait_cleanup;
        cln->data = ctx;
        ctx->cleanup = 1;
    }

    ngx_queue_insert_tail(&ctx->pool->waiting, &ctx->queue);
    ctx->pool->nwaiting++;
    ctx->queued = 1;

    return NGX_OK;
}


/*
 * Leaving the queue, admitted, refused or gone: the next in line tries
 * at once instead of at the end of its own timer
 */

static void
ngx_http_llm_dequeue(ngx_http_llm_ctx_t *ctx)
{
    ngx_uint_t           head;
    ngx_event_t         *wev;
    ngx_http_llm_ctx_t  *next;

    if (!ctx->queued) {
        return;
    }

    head = (ngx_queue_head(&ctx->pool->waiting) == &ctx->queue);

    ngx_queue_remove(&ctx->queue);
    ctx->pool->nwaiting--;
    ctx->queued = 0;

    if (!head || ngx_queue_empty(&ctx->pool->waiting)) {
        return;
    }

    next = ngx_queue_data(ngx_queue_head(&ctx->pool->waiting),
                          ngx_http_llm_ctx_t, queue);
    wev = next->request->connection->write;

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    wev->delayed = 0;
    ngx_post_event(wev, &ngx_posted_events);
}


static void
ngx_http_llm_wait_cleanup(void *data)
{
    ngx_http_llm_ctx_t  *ctx = data;

    ngx_http_llm_dequeue(ctx);
}


static ngx_int_t
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

    if (ctx->throttle == NGX_HTTP_LLM_THROTTLE_CONSUMER && ctx->over) {
        ngx_http_llm_consumer_message(r, ctx, message);
        return;
    }

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


/*
 * Azure's wording ("token rate limit", "call rate limit"), naming the
 * consumer limit and the hashed consumer, never the raw key
 */

static void
ngx_http_llm_consumer_message(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_str_t *message)
{
    u_char                *p, *last;
    size_t                 len;
    ngx_http_llm_limit_t  *limit;

    limit = ctx->over;

    len = sizeof("Requests of consumer  have exceeded the spending budget "
                 "of \"llm_limit \" ( requests per  ms). Please retry "
                 "after  seconds.")
          + NGX_HTTP_LLM_CONSUMER_ID_LEN + limit->key.value.len
          + 3 * NGX_INT_T_LEN + NGX_HTTP_LLM_COST_LEN;

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        ngx_str_set(message, "Rate limit exceeded.");
        return;
    }

    message->data = p;
    last = p + len;

    p = ngx_slprintf(p, last, "Requests of consumer ");
    p = ngx_http_llm_consumer_id(p, ctx->over_consumer->digest);

    switch (ctx->over_kind) {

    case NGX_HTTP_LLM_OVER_QUOTA:
        p = ngx_slprintf(p, last, " have exceeded the token quota of "
                         "\"llm_limit %V\" (%ui tokens a %s",
                         &limit->key.value, limit->quota,
                         (limit->quota_period == NGX_HTTP_LLM_QUOTA_DAY)
                         ? "day" : "month");
        break;

    case NGX_HTTP_LLM_OVER_BUDGET:
        p = ngx_slprintf(p, last, " have exceeded the spending budget of "
                         "\"llm_limit %V\" (", &limit->key.value);
        p = ngx_http_llm_cost_print(p, limit->budget);
        p = ngx_slprintf(p, last, " a %s",
                         (limit->quota_period == NGX_HTTP_LLM_QUOTA_DAY)
                         ? "day" : "month");
        break;

    case NGX_HTTP_LLM_OVER_REQUESTS:
        p = ngx_slprintf(p, last, " have exceeded the call rate limit of "
                         "\"llm_limit %V\" (%ui requests per ",
                         &limit->key.value, limit->rpm);
        break;

    default: /* NGX_HTTP_LLM_OVER_TOKENS */
        p = ngx_slprintf(p, last, " have exceeded the token rate limit of "
                         "\"llm_limit %V\" (%ui tokens per ",
                         &limit->key.value, limit->tpm);
    }

    if (ctx->over_kind == NGX_HTTP_LLM_OVER_QUOTA
        || ctx->over_kind == NGX_HTTP_LLM_OVER_BUDGET)
    {
        /* void */

    } else if (limit->window == 60000) {
        p = ngx_slprintf(p, last, "minute");

    } else {
        p = ngx_slprintf(p, last, "%M ms", limit->window);
    }

    p = ngx_slprintf(p, last, "). Please retry after %M seconds.",
                     ngx_max((ctx->retry_after + 999) / 1000, 1));

    message->len = p - message->data;
}
