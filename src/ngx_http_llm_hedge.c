
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_charge.h"
#include "ngx_http_llm_hedge.h"
#include "ngx_http_llm_parse.h"
#include "ngx_http_llm_usage.h"
#include "ngx_http_llm_zone.h"


/*
 * llm_hedge: a second attempt when the first is late, the first answer
 * kept, the other cancelled.
 *
 * nginx proxies one upstream connection a request, so a hedged request
 * does not proxy itself: each attempt is a background subrequest that
 * runs the location's own content handler (proxy_pass), with a context
 * of its own that owns the attempt's backend charge.  The main request
 * owns the consumers' charges, as without hedging, and takes the
 * winner's backend when it is settled.
 *
 * The race is to the first token.  For a JSON reply that is its header;
 * a stream's header, and the events before the model's first text (the
 * prompt filter results, the role), may come long before it, so a
 * stream's bytes are held until an event carries text, a tool call or a
 * finish, or the stream ends.  The winner's header and bytes then go to
 * the main request and on to the client through the usual filters; the
 * other attempt is cancelled at once: its connection is closed, never
 * kept alive, and its charge stays in the backend's windows, as Azure
 * counts a request when it arrives.
 *
 * An attempt that fails (a 429 or a 5xx once its own retries are spent,
 * an error) while the other is still running steps aside.  When the last
 * one running fails, llm_route's fallback= pools get an attempt each in
 * turn (a location with fallback= runs its attempts here even without
 * llm_hedge); without them, a backend's error goes to the client as it
 * came, and an error of nginx's own (no room, no backend reachable) is
 * answered by the main request, so that its error_page applies.
 */


/* the first, a hedge, and fallback= pools after failures */
#define NGX_HTTP_LLM_HEDGE_ATTEMPTS  4

/* a stream held longer than this is sent as it is */
#define NGX_HTTP_LLM_HEDGE_HOLD      (64 * 1024)


struct ngx_http_llm_attempt_s {
    ngx_http_request_t          *request;    /* its subrequest */
    ngx_http_llm_ctx_t          *ctx;        /* its backend charge */
    ngx_http_llm_hedge_t        *hedge;
    ngx_buf_t                   *held;       /* a stream before its text */
    ngx_http_posted_request_t    posted;     /* to read on, once drained */
    ngx_uint_t                   status;     /* of the answer set aside */
    ngx_http_llm_scan_t         *scan;
    ngx_msec_t                   start;

    unsigned                     second:1;   /* llm_hedge's, late first */
    unsigned                     sse:1;
    unsigned                     failed:1;   /* stepped aside */
    unsigned                     done:1;     /* finalized or cancelled */
    unsigned                     cancelled:1;
};


struct ngx_http_llm_hedge_s {
    ngx_http_request_t          *request;    /* the main request */
    ngx_http_llm_ctx_t          *ctx;
    ngx_http_handler_pt          handler;    /* the location's own */
    ngx_http_llm_attempt_t       attempt[NGX_HTTP_LLM_HEDGE_ATTEMPTS];
    ngx_uint_t                   n;
    ngx_http_llm_attempt_t      *winner;
    ngx_http_llm_attempt_t      *failed;     /* the last, when none won */
    ngx_http_posted_request_t    posted;
    ngx_event_t                  timer;
    ngx_msec_t                   after;      /* the delay of the second */
    ngx_uint_t                   next_fallback; /* in llm_route's list */
    ngx_uint_t                   status;     /* to answer, when no one can */

    unsigned                     last:1;     /* the winner's end went out */
    unsigned                     cut:1;      /* the winner's end never came */
    unsigned                     finishing:1;
};


static ngx_int_t ngx_http_llm_hedge_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_llm_hedge_handler(ngx_http_request_t *r);
static void ngx_http_llm_hedge_cleanup(void *data);
static ngx_int_t ngx_http_llm_hedge_attempt(ngx_http_llm_hedge_t *hedge,
    ngx_http_llm_pool_t *pool);
static void ngx_http_llm_hedge_ctx(ngx_http_llm_ctx_t *actx,
    ngx_http_llm_hedge_t *hedge, ngx_http_llm_attempt_t *a);
static ngx_int_t ngx_http_llm_hedge_backend(ngx_http_llm_hedge_t *hedge,
    ngx_http_llm_ctx_t *actx, ngx_http_llm_pool_t *pool);
static ngx_uint_t ngx_http_llm_hedge_fallback(ngx_http_llm_attempt_t *a);
static void ngx_http_llm_hedge_run(ngx_http_request_t *sr);
static void ngx_http_llm_hedge_timer(ngx_event_t *ev);
static ngx_int_t ngx_http_llm_hedge_done(ngx_http_request_t *sr,
    void *data, ngx_int_t rc);
static void ngx_http_llm_hedge_end(ngx_http_llm_hedge_t *hedge,
    ngx_uint_t status);
static ngx_uint_t ngx_http_llm_hedge_others(ngx_http_llm_attempt_t *a);
static ngx_int_t ngx_http_llm_hedge_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_hedge_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_int_t ngx_http_llm_hedge_hold(ngx_http_llm_attempt_t *a,
    ngx_chain_t *in, ngx_uint_t *last);
static ngx_uint_t ngx_http_llm_hedge_text(ngx_http_llm_attempt_t *a);
static ngx_int_t ngx_http_llm_hedge_win(ngx_http_llm_attempt_t *a,
    ngx_uint_t last);
static void ngx_http_llm_hedge_cancel(ngx_http_llm_attempt_t *a);
static void ngx_http_llm_hedge_adopt(ngx_http_llm_hedge_t *hedge);
static ngx_int_t ngx_http_llm_hedge_forward(ngx_http_llm_hedge_t *hedge,
    ngx_chain_t *in);
static void ngx_http_llm_hedge_writer(ngx_http_request_t *r);
static void ngx_http_llm_hedge_finish(ngx_http_request_t *r);
static void ngx_http_llm_hedge_post(ngx_http_request_t *r,
    ngx_http_posted_request_t *pr);
static void ngx_http_llm_hedge_list(ngx_list_t *dst, ngx_list_t *src);
static void ngx_http_llm_hedge_consume(ngx_chain_t *in);
static void ngx_http_llm_hedge_settle(ngx_http_llm_ctx_t *ctx);


static ngx_http_module_t  ngx_http_llm_hedge_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_llm_hedge_init,               /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_llm_hedge_module = {
    NGX_MODULE_V1,
    &ngx_http_llm_hedge_module_ctx,        /* module context */
    NULL,                                  /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;

static ngx_str_t  ngx_http_llm_hedge_won = ngx_string("won");
static ngx_str_t  ngx_http_llm_hedge_lost = ngx_string("lost");


/* llm_hedge off | after=time|auto [max=percent] */

char *
ngx_http_llm_hedge_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_int_t    n;
    ngx_str_t   *value, s;
    ngx_uint_t   i;

    if (llcf->hedge_after != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "off") == 0) {
        llcf->hedge_after = 0;
        return NGX_CONF_OK;
    }

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strcmp(value[i].data, "after=auto") == 0) {
            llcf->hedge_after = NGX_HTTP_LLM_HEDGE_AUTO;
            continue;
        }

        if (ngx_strncmp(value[i].data, "after=", 6) == 0) {
            s.data = value[i].data + 6;
            s.len = value[i].len - 6;

            n = ngx_parse_time(&s, 0);
            if (n == NGX_ERROR || n == 0) {
                goto invalid;
            }

            llcf->hedge_after = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "max=", 4) == 0
            && value[i].len > 5 && value[i].data[value[i].len - 1] == '%')
        {
            n = ngx_atoi(value[i].data + 4, value[i].len - 5);
            if (n == NGX_ERROR || n == 0 || n > 100) {
                goto invalid;
            }

            llcf->hedge_max = n;
            continue;
        }

        goto invalid;
    }

    if (llcf->hedge_after == NGX_CONF_UNSET_MSEC) {
        return "needs \"after=\"";
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);

    return NGX_CONF_ERROR;
}


/*
 * After admission charged the first backend: a POST to a pool of more
 * than one backend is hedged, by taking the place of the location's
 * content handler, which each attempt then runs
 */

void
ngx_http_llm_hedge_prepare(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_uint_t                      next;
    ngx_msec_t                      after;
    ngx_http_llm_hedge_t           *hedge;
    ngx_http_llm_loc_conf_t        *llcf;
    ngx_http_upstream_srv_conf_t  **uscf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (ctx->hedge
        || ctx->backend == NULL
        || ctx->pool == NULL
        || r->method != NGX_HTTP_POST
        || r->content_handler == NULL
        || r != r->main)
    {
        return;
    }

    after = llcf->hedge_after;

    if (ctx->pool->backends.nelts < 2) {
        after = 0;
    }

    if (after == NGX_HTTP_LLM_HEDGE_AUTO) {

        /* the slow tail of the first backend's own first tokens */

        after = ngx_http_llm_backend_ttft_p95(ctx->backend);
    }

    /* fallback= pools after the one admitted take a request that failed */

    next = 0;

    if (llcf->fallbacks && ctx->fallback) {
        uscf = llcf->fallbacks->elts;

        while (next < llcf->fallbacks->nelts
               && ngx_http_llm_pool_of(uscf[next++]) != ctx->pool)
        {
            /* void */
        }
    }

    if (after == 0
        && (llcf->fallbacks == NULL || next == llcf->fallbacks->nelts))
    {
        return;
    }

    hedge = ngx_pcalloc(r->pool, sizeof(ngx_http_llm_hedge_t));
    if (hedge == NULL) {
        return;
    }

    hedge->after = after;
    hedge->next_fallback = next;
    hedge->request = r;
    hedge->ctx = ctx;
    hedge->handler = r->content_handler;

    ctx->hedge = hedge;
    ctx->settle_attempts = ngx_http_llm_hedge_settle;
    r->content_handler = ngx_http_llm_hedge_handler;

    if (after) {
        (void) ngx_http_llm_pool_hedge(ctx->pool, NGX_HTTP_LLM_HEDGE_EARN,
                                       llcf->hedge_max);
    }
}


static ngx_int_t
ngx_http_llm_hedge_handler(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t    *cln;
    ngx_http_llm_ctx_t    *ctx;
    ngx_http_llm_hedge_t  *hedge;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);
    hedge = ctx->hedge;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm hedge handler");

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_llm_hedge_cleanup;
    cln->data = hedge;

    if (ngx_http_llm_hedge_attempt(hedge, hedge->ctx->pool) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (hedge->after) {
        hedge->timer.handler = ngx_http_llm_hedge_timer;
        hedge->timer.data = hedge;
        hedge->timer.log = r->connection->log;

        ngx_add_timer(&hedge->timer, hedge->after);
    }

    /* a client gone cancels the attempts; the winner's bytes are sent */

    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_llm_hedge_writer;

    /* the main request lives until the winner's end has gone out */

    r->main->count++;

    return NGX_DONE;
}


static void
ngx_http_llm_hedge_cleanup(void *data)
{
    ngx_http_llm_hedge_t  *hedge = data;

    if (hedge->timer.timer_set) {
        ngx_del_timer(&hedge->timer);
    }
}


/*
 * One more attempt: the first takes admission's charge over from the
 * main request; another is charged to a backend of "pool" with room, not
 * the first attempt's, or not made at all
 */

static ngx_int_t
ngx_http_llm_hedge_attempt(ngx_http_llm_hedge_t *hedge,
    ngx_http_llm_pool_t *pool)
{
    ngx_int_t                    rc;
    ngx_http_request_t          *r, *sr;
    ngx_http_llm_ctx_t          *ctx, *actx;
    ngx_http_llm_attempt_t      *a;
    ngx_http_post_subrequest_t  *ps;

    if (hedge->n == NGX_HTTP_LLM_HEDGE_ATTEMPTS) {
        return NGX_DECLINED;
    }

    r = hedge->request;
    ctx = hedge->ctx;
    a = &hedge->attempt[hedge->n];

    actx = ngx_palloc(r->pool, sizeof(ngx_http_llm_ctx_t));
    if (actx == NULL) {
        return NGX_ERROR;
    }

    ngx_http_llm_hedge_ctx(actx, hedge, a);

    if (hedge->n == 0) {
        ctx->held = 0;
        ctx->in_flight = 0;
        ctx->charged = 0;

    } else {
        rc = ngx_http_llm_hedge_backend(hedge, actx, pool);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    ps = ngx_palloc(r->pool, sizeof(ngx_http_post_subrequest_t));
    if (ps == NULL) {
        goto failed;
    }

    ps->handler = ngx_http_llm_hedge_done;
    ps->data = a;

    rc = ngx_http_subrequest(r, &r->uri, &r->args, &sr, ps,
                             NGX_HTTP_SUBREQUEST_BACKGROUND);
    if (rc != NGX_OK) {
        goto failed;
    }

    /* a subrequest is a GET of its own; this one is the client's */

    sr->method = r->method;
    sr->method_name = r->method_name;
    sr->write_event_handler = ngx_http_llm_hedge_run;

    actx->request = sr;
    ngx_http_set_ctx(sr, actx, ngx_http_llm_module);

    a->request = sr;
    a->ctx = actx;
    a->hedge = hedge;
    a->start = ngx_current_msec;

    hedge->n++;

    /* settled with the main request at the latest */

    if (ngx_http_llm_charge_own(sr, actx) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm hedge: attempt %ui on \"%V\"",
                   hedge->n, &actx->backend->name);

    return NGX_OK;

failed:

    actx->accounted = 1;
    ngx_http_llm_charge_settle(actx, 0);

    return NGX_ERROR;
}


/*
 * An attempt's context: the request as parsed, its consumers for
 * $llm_consumer; the charges are the attempt's own (the consumers' stay
 * the main request's)
 */

static void
ngx_http_llm_hedge_ctx(ngx_http_llm_ctx_t *actx, ngx_http_llm_hedge_t *hedge,
    ngx_http_llm_attempt_t *a)
{
    *actx = *hedge->ctx;

    actx->hedge = NULL;
    actx->settle_attempts = NULL;
    actx->attempt = a;
    actx->scan = NULL;
    actx->strip = NULL;
    actx->throttled_body = NULL;
    actx->over = NULL;
    actx->over_consumer = NULL;
    actx->attempts = 0;
    actx->final_charge = 0;
    actx->final_at = 0;
    actx->upstream_status = 0;
    actx->backend_request_id.len = 0;
    actx->all_throttled = 0;
    actx->throttle = NGX_HTTP_LLM_THROTTLE_NONE;
    actx->replace_body = 0;
    actx->first_byte = 0;
    actx->accounted = 0;
    actx->queued = 0;
    actx->cleanup = 0;
    actx->consumers_keyed = 0;
    actx->consumers_charged = 0;
    actx->owned = 0;
    actx->settled = 0;
}


/*
 * An attempt after the first: charged to a backend of "pool" with room,
 * never the first attempt's, which is late or has failed
 */

static ngx_int_t
ngx_http_llm_hedge_backend(ngx_http_llm_hedge_t *hedge,
    ngx_http_llm_ctx_t *actx, ngx_http_llm_pool_t *pool)
{
    ngx_msec_t                wait;
    ngx_uint_t                words, i;
    uintptr_t                *tried;
    ngx_http_request_t       *r;
    ngx_http_llm_backend_t   *b, *first;
    ngx_http_llm_loc_conf_t  *llcf;

    r = hedge->request;

    actx->backend = NULL;
    actx->charged = 0;
    actx->charged_at = 0;
    actx->held = 0;
    actx->in_flight = 0;

    words = (pool->backends.nelts + 8 * sizeof(uintptr_t) - 1)
            / (8 * sizeof(uintptr_t));

    tried = ngx_pcalloc(r->pool, words * sizeof(uintptr_t));
    if (tried == NULL) {
        return NGX_ERROR;
    }

    first = hedge->attempt[0].ctx->backend;

    if (first && first->pool == pool) {
        i = first - (ngx_http_llm_backend_t *) pool->backends.elts;
        tried[i / (8 * sizeof(uintptr_t))] |=
                             (uintptr_t) 1 << i % (8 * sizeof(uintptr_t));
    }

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    b = ngx_http_llm_choose(pool, actx, tried, NULL,
                            llcf->completion_reserve, &wait);
    if (b == NULL) {
        return NGX_DECLINED;
    }

    actx->backend = b;

    if (pool != hedge->ctx->pool) {
        actx->pool = pool;
        actx->fallback = 1;
    }

    return NGX_OK;
}


/*
 * A posted attempt runs the location's content handler directly, as the
 * main request would have: its rewrites and access checks ran once, for
 * the main request, and the variables they set are shared
 */

static void
ngx_http_llm_hedge_run(ngx_http_request_t *sr)
{
    ngx_http_llm_ctx_t      *actx;
    ngx_http_llm_attempt_t  *a;

    actx = ngx_http_get_module_ctx(sr, ngx_http_llm_module);
    a = actx->attempt;

    sr->loc_conf = a->hedge->request->loc_conf;
    ngx_http_update_location_config(sr);

    sr->write_event_handler = ngx_http_request_empty_handler;

    if (a->cancelled) {
        ngx_http_finalize_request(sr, NGX_DONE);
        return;
    }

    ngx_http_finalize_request(sr, a->hedge->handler(sr));
}


static void
ngx_http_llm_hedge_timer(ngx_event_t *ev)
{
    ngx_int_t              rc;
    ngx_connection_t      *c;
    ngx_http_request_t    *r;
    ngx_http_llm_hedge_t  *hedge;

    hedge = ev->data;
    r = hedge->request;
    c = r->connection;

    if (hedge->winner || hedge->n != 1 || hedge->attempt[0].done) {
        return;
    }

    /* max= of the requests hedge, and only with room for one more charge */

    if (!ngx_http_llm_pool_hedge(hedge->ctx->pool, NGX_HTTP_LLM_HEDGE_SPEND,
                                 0))
    {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                       "llm hedge: max= reached");
        return;
    }

    rc = ngx_http_llm_hedge_attempt(hedge, hedge->ctx->pool);

    if (rc != NGX_OK) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                       "llm hedge: no second attempt: %i", rc);

        (void) ngx_http_llm_pool_hedge(hedge->ctx->pool,
                                       NGX_HTTP_LLM_HEDGE_UNSPEND, 0);
        return;
    }

    hedge->attempt[1].second = 1;

    (void) ngx_http_llm_pool_hedge(hedge->ctx->pool,
                                   NGX_HTTP_LLM_HEDGE_STARTED, 0);

    ngx_log_error(NGX_LOG_INFO, c->log, 0,
                  "llm: no first token from \"%V\" after %M ms, "
                  "hedged on \"%V\"",
                  &hedge->attempt[0].ctx->backend->name, hedge->after,
                  &hedge->attempt[1].ctx->backend->name);

    /* a subrequest made outside the request's own handlers must be run */

    ngx_http_run_posted_requests(c);
}


/*
 * An attempt's end, or nginx about to answer an error for it.  Returning
 * an error for an attempt that is not the winner would end the main
 * request too: one that steps aside is finalized as done instead.
 */

static ngx_int_t
ngx_http_llm_hedge_done(ngx_http_request_t *sr, void *data, ngx_int_t rc)
{
    ngx_http_llm_attempt_t *a = data;

    ngx_http_llm_hedge_t  *hedge;

    hedge = a->hedge;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, sr->connection->log, 0,
                   "llm hedge: attempt %ui done: %i",
                   (ngx_uint_t) (a - hedge->attempt) + 1, rc);

    if (hedge->winner == a) {

        /* an error after its header ends the main request too */

        if (rc == NGX_ERROR || rc == NGX_HTTP_CLOSE) {
            return rc;
        }

        a->done = 1;

        /*
         * its end never came through the filter: the reply was cut (the
         * backend closed, a timeout), and the client must not be told
         * it is whole
         */

        if (!hedge->last) {
            hedge->cut = 1;
        }

        ngx_http_llm_hedge_end(hedge, 0);

        return (rc >= NGX_HTTP_SPECIAL_RESPONSE) ? NGX_DONE : rc;
    }

    if (hedge->winner || a->done) {
        return NGX_DONE;
    }

    if (rc == NGX_ERROR || rc >= NGX_HTTP_SPECIAL_RESPONSE
        || rc == NGX_HTTP_CLOSE)
    {
        a->status = (rc >= NGX_HTTP_SPECIAL_RESPONSE && rc != NGX_HTTP_CLOSE)
                    ? (ngx_uint_t) rc : NGX_HTTP_BAD_GATEWAY;
    }

    a->failed = 1;
    a->done = 1;

    if (ngx_http_llm_hedge_others(a) || ngx_http_llm_hedge_fallback(a)) {
        return NGX_DONE;
    }

    /*
     * the last attempt failed with nothing sent: the main request gives
     * its error, as it would have without hedging (error_page applies,
     * no room in the pool becomes a 429)
     */

    hedge->failed = a;
    ngx_http_llm_hedge_end(hedge, a->status ? a->status
                                            : NGX_HTTP_BAD_GATEWAY);

    return NGX_DONE;
}


/*
 * The main request ends once the attempt's own end is through, from the
 * posted requests: it is then the connection's last holder and can keep
 * it alive
 */

static void
ngx_http_llm_hedge_end(ngx_http_llm_hedge_t *hedge, ngx_uint_t status)
{
    ngx_uint_t           i;
    ngx_http_request_t  *r;

    if (hedge->finishing) {
        return;
    }

    r = hedge->request;

    hedge->finishing = 1;
    hedge->status = status;

    /* attempts that stepped aside may still be reading their error */

    for (i = 0; i < hedge->n; i++) {
        if (!hedge->attempt[i].done) {
            ngx_http_llm_hedge_cancel(&hedge->attempt[i]);
        }
    }

    r->write_event_handler = ngx_http_llm_hedge_finish;
    ngx_http_llm_hedge_post(r, &hedge->posted);
}


/* whether another attempt may still answer */

static ngx_uint_t
ngx_http_llm_hedge_others(ngx_http_llm_attempt_t *a)
{
    ngx_uint_t             i;
    ngx_http_llm_hedge_t  *hedge;

    hedge = a->hedge;

    for (i = 0; i < hedge->n; i++) {
        if (&hedge->attempt[i] != a && !hedge->attempt[i].done
            && !hedge->attempt[i].failed)
        {
            return 1;
        }
    }

    return 0;
}


/*
 * The last attempt running failed (a 429 or a 5xx once its retries were
 * spent, no backend with room, an error): llm_route's fallback= pools
 * after the one that admitted the request are tried in order, and the
 * first with room takes it.  A client's error (a 4xx such as Azure's
 * content filter) never falls back.
 */

static ngx_uint_t
ngx_http_llm_hedge_fallback(ngx_http_llm_attempt_t *a)
{
    ngx_http_request_t             *r;
    ngx_http_llm_pool_t            *fb;
    ngx_http_llm_hedge_t           *hedge;
    ngx_http_llm_loc_conf_t        *llcf;
    ngx_http_upstream_srv_conf_t  **uscf;

    hedge = a->hedge;
    r = hedge->request;

    if (hedge->winner || hedge->finishing) {
        return 0;
    }

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (llcf->fallbacks == NULL) {
        return 0;
    }

    uscf = llcf->fallbacks->elts;

    while (hedge->next_fallback < llcf->fallbacks->nelts) {
        fb = ngx_http_llm_pool_of(uscf[hedge->next_fallback++]);

        if (ngx_http_llm_hedge_attempt(hedge, fb) != NGX_OK) {
            continue;
        }

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "llm: every attempt in \"%V\" failed, fallback "
                      "\"%V\" takes the request",
                      &a->ctx->pool->name, &fb->name);

        ngx_http_llm_pool_count(fb, 1);

        return 1;
    }

    return 0;
}


static ngx_int_t
ngx_http_llm_hedge_header_filter(ngx_http_request_t *r)
{
    ngx_http_llm_ctx_t      *actx;
    ngx_http_llm_hedge_t    *hedge;
    ngx_http_llm_attempt_t  *a;

    actx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (actx == NULL || actx->attempt == NULL || r == r->main) {
        return ngx_http_next_header_filter(r);
    }

    a = actx->attempt;
    hedge = a->hedge;

    /* the bytes go to the client as they come, and a loser can be cut */

    if (r->upstream) {
        r->upstream->buffering = 0;
    }

    if (hedge->winner == a) {
        return ngx_http_llm_hedge_win(a, 0);
    }

    if (hedge->winner || a->done) {
        a->failed = 1;
        return NGX_OK;
    }

    if ((r->headers_out.status == NGX_HTTP_TOO_MANY_REQUESTS
         || r->headers_out.status >= NGX_HTTP_INTERNAL_SERVER_ERROR)
        && (ngx_http_llm_hedge_others(a) || ngx_http_llm_hedge_fallback(a)))
    {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "llm hedge: attempt answered %ui, steps aside",
                       r->headers_out.status);
        a->failed = 1;
        a->status = r->headers_out.status;
        return NGX_OK;
    }

    if (r->headers_out.status == NGX_HTTP_OK
        && r->headers_out.content_type.len >= sizeof("text/event-stream") - 1
        && ngx_strncasecmp(r->headers_out.content_type.data,
                           (u_char *) "text/event-stream",
                           sizeof("text/event-stream") - 1) == 0)
    {
        a->sse = 1;
        return NGX_OK;
    }

    return ngx_http_llm_hedge_win(a, 0);
}


static ngx_int_t
ngx_http_llm_hedge_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_uint_t               last;
    ngx_http_llm_ctx_t      *actx;
    ngx_http_llm_hedge_t    *hedge;
    ngx_http_llm_attempt_t  *a;

    actx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (actx == NULL || actx->attempt == NULL || r == r->main) {
        return ngx_http_next_body_filter(r, in);
    }

    a = actx->attempt;
    hedge = a->hedge;

    if (hedge->winner == a) {
        return ngx_http_llm_hedge_forward(hedge, in);
    }

    if (hedge->winner || a->failed || !a->sse) {
        ngx_http_llm_hedge_consume(in);
        return NGX_OK;
    }

    if (ngx_http_llm_hedge_hold(a, in, &last) != NGX_OK) {
        return NGX_ERROR;
    }

    if (!last && !ngx_http_llm_hedge_text(a)) {
        return NGX_OK;
    }

    return ngx_http_llm_hedge_win(a, last);
}


/* a stream's bytes, copied, until it is known whether it wins */

static ngx_int_t
ngx_http_llm_hedge_hold(ngx_http_llm_attempt_t *a, ngx_chain_t *in,
    ngx_uint_t *last)
{
    size_t        size, n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    *last = 0;
    size = 0;

    for (cl = in; cl; cl = cl->next) {
        if (ngx_buf_in_memory(cl->buf)) {
            size += cl->buf->last - cl->buf->pos;
        }

        if (cl->buf->last_in_chain || cl->buf->last_buf) {
            *last = 1;
        }
    }

    b = a->held;

    if (b == NULL || (size_t) (b->end - b->last) < size) {
        n = ngx_max(4096, 2 * ((b ? b->last - b->pos : 0) + size));

        b = ngx_create_temp_buf(a->request->pool, n);
        if (b == NULL) {
            return NGX_ERROR;
        }

        if (a->held) {
            b->last = ngx_cpymem(b->last, a->held->pos,
                                 a->held->last - a->held->pos);
            (void) ngx_pfree(a->request->pool, a->held->start);
        }

        a->held = b;
    }

    if (a->scan == NULL) {
        a->scan = ngx_pcalloc(a->request->pool, sizeof(ngx_http_llm_scan_t));
        if (a->scan == NULL) {
            return NGX_ERROR;
        }

        a->scan->pool = a->request->pool;
    }

    for (cl = in; cl; cl = cl->next) {
        if (ngx_buf_in_memory(cl->buf)) {
            ngx_http_llm_scan(a->scan, cl->buf->pos, cl->buf->last,
                              a->request->connection->log);
            b->last = ngx_cpymem(b->last, cl->buf->pos,
                                 cl->buf->last - cl->buf->pos);
        }
    }

    ngx_http_llm_hedge_consume(in);

    return NGX_OK;
}


/*
 * Whether a held stream has produced something: a text (the usage
 * scanner's count of non-empty "content" and "delta" strings), a tool
 * call, a finish, or more than is worth holding
 */

static ngx_uint_t
ngx_http_llm_hedge_text(ngx_http_llm_attempt_t *a)
{
    u_char  *p, *last;

    if (a->scan->state.deltas) {
        return 1;
    }

    p = a->held->pos;
    last = a->held->last;

    if ((size_t) (last - p) > NGX_HTTP_LLM_HEDGE_HOLD) {
        return 1;
    }

    return ngx_strlcasestrn(p, last, (u_char *) "\"tool_calls\"",
                            sizeof("\"tool_calls\"") - 2) != NULL
           || ngx_strlcasestrn(p, last, (u_char *) "\"finish_reason\":\"",
                               sizeof("\"finish_reason\":\"") - 2) != NULL
           || ngx_strlcasestrn(p, last, (u_char *) "[DONE]",
                               sizeof("[DONE]") - 2) != NULL;
}


/*
 * The first to answer: the other attempt is cancelled, the main request
 * takes the winner's header and sends it with what was held
 */

static ngx_int_t
ngx_http_llm_hedge_win(ngx_http_llm_attempt_t *a, ngx_uint_t last)
{
    ngx_int_t              rc;
    ngx_uint_t             i;
    ngx_chain_t            out;
    ngx_http_request_t    *r, *sr;
    ngx_http_llm_hedge_t  *hedge;

    hedge = a->hedge;
    r = hedge->request;
    sr = a->request;

    if (hedge->winner == NULL) {
        hedge->winner = a;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm hedge: attempt %ui wins",
                   (ngx_uint_t) (a - hedge->attempt) + 1);

    if (hedge->timer.timer_set) {
        ngx_del_timer(&hedge->timer);
    }

    for (i = 0; i < hedge->n; i++) {
        if (&hedge->attempt[i] != a && !hedge->attempt[i].done) {
            ngx_http_llm_hedge_cancel(&hedge->attempt[i]);
        }
    }

    if (a->second) {
        (void) ngx_http_llm_pool_hedge(hedge->ctx->pool,
                                       NGX_HTTP_LLM_HEDGE_WON, 0);
    }

    ngx_http_llm_hedge_adopt(hedge);

#if (NGX_HTTP_CACHE)

    /* answered from proxy_cache: no backend's answer, no one's usage */

    if (sr->upstream
        && (sr->upstream->cache_status == NGX_HTTP_CACHE_HIT
            || sr->upstream->cache_status == NGX_HTTP_CACHE_STALE
            || sr->upstream->cache_status == NGX_HTTP_CACHE_UPDATING))
    {
        hedge->ctx->cached = 1;
    }

#endif

    /*
     * the winner's header as the main request's: a list's first part is
     * in the structure itself, so the copy's must be its own to grow
     * (add_header and the filters add to it)
     */

    r->headers_out = sr->headers_out;
    ngx_http_llm_hedge_list(&r->headers_out.headers,
                            &sr->headers_out.headers);
    ngx_http_llm_hedge_list(&r->headers_out.trailers,
                            &sr->headers_out.trailers);
    r->upstream_states = sr->upstream_states;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    if (a->held && a->held->last > a->held->pos) {
        a->held->flush = 1;
        out.buf = a->held;
        out.next = NULL;

        rc = ngx_http_output_filter(r, &out);
        if (rc == NGX_ERROR) {
            return rc;
        }
    }

    if (last) {
        hedge->last = 1;
        rc = ngx_http_send_special(r, NGX_HTTP_LAST);
    }

    return rc;
}


/*
 * The slower attempt: its connection closed at once (the backend stops
 * generating), its charge kept as Azure keeps it, counted as the price
 * of the hedge
 */

static void
ngx_http_llm_hedge_cancel(ngx_http_llm_attempt_t *a)
{
    ngx_uint_t             extra, racing;
    ngx_http_request_t    *sr;
    ngx_http_upstream_t   *u;
    ngx_http_llm_ctx_t    *actx;

    sr = a->request;
    u = sr->upstream;
    actx = a->ctx;

    racing = !a->failed;

    a->cancelled = 1;
    a->done = 1;

    extra = (racing && u && u->request_sent && actx->held)
            ? actx->charged : 0;

    /* no first token yet: the least its first token would have taken */

    if (racing && u && u->request_sent && actx->backend) {
        ngx_http_llm_backend_ttft(actx->backend, ngx_current_msec - a->start);
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, sr->connection->log, 0,
                   "llm hedge: cancel attempt %ui, %ui tokens kept",
                   (ngx_uint_t) (a - a->hedge->attempt) + 1, extra);

    if (u && u->cleanup) {
        (*u->cleanup)(sr);
    }

    /* its backend's in-flight count and charge are done with */

    actx->accounted = 1;
    ngx_http_llm_charge_settle(actx, 0);

    if (racing) {
        (void) ngx_http_llm_pool_hedge(a->hedge->ctx->pool,
                                       NGX_HTTP_LLM_HEDGE_CANCELLED, extra);
    }
}


/*
 * What the main request shows and settles: the winner's backend, every
 * attempt made.  The winner's charge itself becomes the main request's
 * when it is settled, after the attempt's end.
 */

static void
ngx_http_llm_hedge_adopt(ngx_http_llm_hedge_t *hedge)
{
    ngx_uint_t               i;
    ngx_http_llm_ctx_t      *ctx, *actx;
    ngx_http_llm_attempt_t  *a;

    ctx = hedge->ctx;
    ctx->attempts = ngx_http_llm_hedge_attempts(ctx);

    for (i = 0; i < hedge->n; i++) {
        actx = hedge->attempt[i].ctx;

        if (actx->backend_request_id.len) {
            ctx->backend_request_id = actx->backend_request_id;
        }
    }

    a = hedge->winner ? hedge->winner : hedge->failed;

    if (a == NULL) {
        return;
    }

    actx = a->ctx;

    ctx->backend = actx->backend;
    ctx->pool = actx->pool;
    ctx->fallback = actx->fallback;
    ctx->all_throttled = actx->all_throttled;
    ctx->retry_after = actx->retry_after;

    if (actx->throttle != NGX_HTTP_LLM_THROTTLE_NONE) {
        ctx->throttle = actx->throttle;
    }
}


static void
ngx_http_llm_hedge_settle(ngx_http_llm_ctx_t *ctx)
{
    ngx_uint_t               i;
    ngx_http_llm_ctx_t      *actx;
    ngx_http_llm_hedge_t    *hedge;
    ngx_http_llm_attempt_t  *a;

    hedge = ctx->hedge;

    ngx_http_llm_hedge_adopt(hedge);

    for (i = 0; i < hedge->n; i++) {
        a = &hedge->attempt[i];
        actx = a->ctx;

        if (actx->settled) {
            continue;
        }

        if (a != hedge->winner && a != hedge->failed) {
            actx->accounted = 1;
            ngx_http_llm_charge_settle(actx, 0);
            continue;
        }

        /* the winner's charge, ended or not, is the main request's now */

        ctx->charged = actx->charged;
        ctx->charged_at = actx->charged_at;
        ctx->held = actx->held;
        ctx->in_flight = actx->in_flight;
        ctx->final_charge = actx->final_charge;
        ctx->final_at = actx->final_at;
        ctx->upstream_status = actx->upstream_status;

        actx->settled = 1;
    }
}


ngx_str_t *
ngx_http_llm_hedge_outcome(ngx_http_llm_ctx_t *ctx)
{
    ngx_http_llm_hedge_t  *hedge;

    hedge = ctx->hedge;

    if (hedge == NULL || hedge->n < 2 || !hedge->attempt[1].second
        || hedge->winner == NULL)
    {
        return NULL;
    }

    return hedge->winner->second ? &ngx_http_llm_hedge_won
                                 : &ngx_http_llm_hedge_lost;
}


/* every attempt's, the winner's retries and the loser's */

ngx_uint_t
ngx_http_llm_hedge_attempts(ngx_http_llm_ctx_t *ctx)
{
    ngx_uint_t             i, n;
    ngx_http_llm_hedge_t  *hedge;

    hedge = ctx->hedge;
    n = 0;

    for (i = 0; i < hedge->n; i++) {
        n += hedge->attempt[i].ctx->attempts;
    }

    return n;
}


/* the winner's bytes, as they come, go out as the main request's */

static ngx_int_t
ngx_http_llm_hedge_forward(ngx_http_llm_hedge_t *hedge, ngx_chain_t *in)
{
    ngx_int_t     rc;
    ngx_uint_t    last;
    ngx_chain_t  *cl;

    last = 0;

    for (cl = in; cl; cl = cl->next) {
        if (cl->buf->last_in_chain) {
            last = 1;
        }
    }

    rc = ngx_http_output_filter(hedge->request, in);

    if (rc == NGX_ERROR || !last || hedge->last) {
        return rc;
    }

    hedge->last = 1;

    return ngx_http_send_special(hedge->request, NGX_HTTP_LAST);
}


/*
 * The client's connection is writable again: what the main request holds
 * goes out, and the winner, whose upstream waits for its buffers to be
 * sent, reads on
 */

static void
ngx_http_llm_hedge_writer(ngx_http_request_t *r)
{
    ngx_event_t               *wev;
    ngx_connection_t          *c;
    ngx_http_llm_ctx_t        *ctx;
    ngx_http_llm_hedge_t      *hedge;
    ngx_http_core_loc_conf_t  *clcf;

    c = r->connection;
    wev = c->write;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);
    hedge = ctx->hedge;

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "client timed out");
        c->timedout = 1;
        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }

    if (hedge->winner == NULL) {
        return;
    }

    if (ngx_http_output_filter(r, NULL) == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (r->buffered || c->buffered) {
        if (!wev->delayed) {
            ngx_add_timer(wev, clcf->send_timeout);
        }

        if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_ERROR);
            return;
        }

    } else if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    if (!hedge->winner->done) {
        ngx_http_llm_hedge_post(hedge->winner->request,
                                &hedge->winner->posted);
    }
}


/* every attempt has ended: the main request ends as any other */

static void
ngx_http_llm_hedge_finish(ngx_http_request_t *r)
{
    ngx_http_llm_ctx_t    *ctx;
    ngx_http_llm_hedge_t  *hedge;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);
    hedge = ctx->hedge;

    r->write_event_handler = ngx_http_request_empty_handler;

    if (hedge->cut) {
        /* as nginx ends a reply cut short: the connection closed */
        r->keepalive = 0;
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }

    if (hedge->status) {
        ngx_http_llm_hedge_adopt(hedge);

        if (hedge->failed) {
            r->upstream_states = hedge->failed->request->upstream_states;
        }

        ngx_http_finalize_request(r, hedge->status);
        return;
    }

    if (!hedge->last) {
        hedge->last = 1;
        ngx_http_finalize_request(r, ngx_http_send_special(r, NGX_HTTP_LAST));
        return;
    }

    ngx_http_finalize_request(r, ngx_http_output_filter(r, NULL));
}


/*
 * A request posted with a structure of its own, not one allocated from
 * the pool each time a slow client drains; once only while it waits
 */

static void
ngx_http_llm_hedge_post(ngx_http_request_t *r, ngx_http_posted_request_t *pr)
{
    ngx_http_posted_request_t  *p;

    for (p = r->main->posted_requests; p; p = p->next) {
        if (p == pr) {
            return;
        }
    }

    (void) ngx_http_post_request(r, pr);
}


static void
ngx_http_llm_hedge_list(ngx_list_t *dst, ngx_list_t *src)
{
    if (src->last == &src->part) {
        dst->last = &dst->part;
    }
}


static void
ngx_http_llm_hedge_consume(ngx_chain_t *in)
{
    for ( /* void */ ; in; in = in->next) {
        in->buf->pos = in->buf->last;

        if (in->buf->in_file) {
            in->buf->file_pos = in->buf->file_last;
        }
    }
}


static ngx_int_t
ngx_http_llm_hedge_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_llm_hedge_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_llm_hedge_body_filter;

    return NGX_OK;
}
