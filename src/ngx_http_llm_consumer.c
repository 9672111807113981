
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_consumer.h"
#include "ngx_http_llm_consumer_share.h"
#include "ngx_http_llm_digest.h"
#include "ngx_http_llm_parse.h"
#include "ngx_http_llm_price.h"
#include "ngx_http_llm_usage.h"
#include "ngx_http_llm_window.h"


/*
 * Per-consumer limits (llm_limit).  Each line names a key such as
 * $http_x_app; requests whose key has the same value share a consumer in
 * the shared zone of the pool they are routed to, with a token window
 * and a request window like a backend's.  A consumer is found by the
 * SHA-256 of the line's key text and the key's value, so neither the
 * zone nor the status page holds a raw key, and equal values of two
 * different keys ($http_x_app, $http_x_user) stay two consumers.  When
 * the zone is full the least recently used consumer makes room, as in
 * limit_req.
 */


/* a few evictions make room: consumers are all of one slab size */
#define NGX_HTTP_LLM_EVICT_MAX  16


static ngx_int_t ngx_http_llm_consumers_never(ngx_http_llm_ctx_t *ctx,
    ngx_uint_t need, ngx_uint_t cost);
static ngx_int_t ngx_http_llm_consumers_shared(ngx_http_llm_zone_t *zone,
    ngx_http_llm_ctx_t *ctx, ngx_msec_t now, ngx_uint_t *shared,
    ngx_uint_t *scale);
static ngx_int_t ngx_http_llm_consumers_key(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_array_t *limits);
static ngx_http_llm_consumer_sh_t *ngx_http_llm_consumer_lookup(
    ngx_http_llm_shctx_t *sh, u_char *digest);
static ngx_http_llm_consumer_sh_t *ngx_http_llm_consumer_get(
    ngx_http_llm_zone_t *zone, ngx_http_llm_consumer_t *c, ngx_uint_t n);
static void ngx_http_llm_consumer_update(ngx_http_llm_consumer_sh_t *cs,
    ngx_msec_t window, ngx_msec_t now);
static void ngx_http_llm_consumers_settle(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_scan_t *usage);
static ngx_uint_t ngx_http_llm_limit_period(ngx_str_t *s);
static ngx_msec_t ngx_http_llm_consumer_wait(ngx_http_llm_consumer_sh_t *cs,
    ngx_http_llm_limit_t *limit, ngx_uint_t need, ngx_uint_t cost,
    ngx_uint_t scale, ngx_msec_t now, time_t sec, ngx_uint_t *kind);
static void ngx_http_llm_consumers_add(ngx_http_llm_zone_t *zone,
    ngx_http_llm_ctx_t *ctx, ngx_uint_t need, ngx_uint_t cost,
    ngx_uint_t shared, ngx_msec_t now);
static void ngx_http_llm_quota_period(ngx_http_llm_consumer_sh_t *cs,
    ngx_uint_t period, time_t now);


/*
 * llm_limit key [tpm=number] [rpm=number] [window=time]
 *     [quota=number/day|number/month] [budget=amount/day|amount/month];
 */

char *
ngx_http_llm_limit(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_int_t                          n;
    ngx_str_t                         *value, s;
    ngx_uint_t                         i, quota, budget;
    ngx_http_llm_limit_t              *limit;
    ngx_http_compile_complex_value_t   ccv;

    value = cf->args->elts;

    if (llcf->limits == NULL) {
        llcf->limits = ngx_array_create(cf->pool, 2,
                                        sizeof(ngx_http_llm_limit_t));
        if (llcf->limits == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    limit = ngx_array_push(llcf->limits);
    if (limit == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(limit, sizeof(ngx_http_llm_limit_t));

    limit->window = 60000;
    quota = 0;
    budget = 0;

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = &limit->key;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "tpm=", 4) == 0) {
            n = ngx_http_llm_parse_count(value[i].data + 4, value[i].len - 4);
            if (n == NGX_ERROR || n == 0) {
                goto invalid;
            }

            limit->tpm = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "rpm=", 4) == 0) {
            n = ngx_http_llm_parse_count(value[i].data + 4, value[i].len - 4);
            if (n == NGX_ERROR || n == 0) {
                goto invalid;
            }

            limit->rpm = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "window=", 7) == 0) {
            s.data = value[i].data + 7;
            s.len = value[i].len - 7;

            /* a millisecond a slot at least */

            n = ngx_parse_time(&s, 0);
            if (n == NGX_ERROR || n < NGX_HTTP_LLM_CONSUMER_SLOTS) {
                goto invalid;
            }

            limit->window = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "quota=", 6) == 0) {
            s.data = value[i].data + 6;
            s.len = value[i].len - 6;

            quota = ngx_http_llm_limit_period(&s);
            n = ngx_http_llm_parse_count(s.data, s.len);

            if (quota == 0 || n == NGX_ERROR || n == 0) {
                goto invalid;
            }

            limit->quota = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "budget=", 7) == 0) {
            s.data = value[i].data + 7;
            s.len = value[i].len - 7;

            /* in the currency of llm_price, to a millionth */

            budget = ngx_http_llm_limit_period(&s);
            n = ngx_atofp(s.data, s.len, 6);

            if (budget == 0 || n == NGX_ERROR || n == 0) {
                goto invalid;
            }

            limit->budget = (ngx_uint_t) n * 1000;
            continue;
        }

        goto invalid;
    }

    /* a consumer has one period, for its quota and its budget */

    if (limit->quota && limit->budget && quota != budget) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"quota=\" and \"budget=\" of one line need "
                           "the same period");
        return NGX_CONF_ERROR;
    }

    limit->quota_period = limit->quota ? quota : (limit->budget ? budget : 0);

    if (limit->tpm == 0 && limit->rpm == 0 && limit->quota == 0
        && limit->budget == 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"llm_limit\" needs \"tpm=\", \"rpm=\", "
                           "\"quota=\" or \"budget=\"");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);

    return NGX_CONF_ERROR;
}


/* "/day" or "/month" at the end of a quota or budget, cut off; 0: none */

static ngx_uint_t
ngx_http_llm_limit_period(ngx_str_t *s)
{
    if (s->len > 4 && ngx_strncmp(s->data + s->len - 4, "/day", 4) == 0) {
        s->len -= 4;
        return NGX_HTTP_LLM_QUOTA_DAY;
    }

    if (s->len > 6 && ngx_strncmp(s->data + s->len - 6, "/month", 6) == 0) {
        s->len -= 6;
        return NGX_HTTP_LLM_QUOTA_MONTH;
    }

    return 0;
}


/*
 * A request larger than a consumer's whole window, quota or budget:
 * waiting would never help (NGX_DECLINED, with the limit in ctx)
 */

static ngx_int_t
ngx_http_llm_consumers_never(ngx_http_llm_ctx_t *ctx, ngx_uint_t need,
    ngx_uint_t cost)
{
    ngx_uint_t                i;
    ngx_http_llm_limit_t     *limit;
    ngx_http_llm_consumer_t  *c;

    c = ctx->consumers;

    for (i = 0; i < ctx->nconsumers; i++) {
        limit = c[i].limit;

        if (limit->tpm && need > limit->tpm) {
            ctx->over_kind = NGX_HTTP_LLM_OVER_TOKENS;

        } else if (limit->quota && need > limit->quota) {
            ctx->over_kind = NGX_HTTP_LLM_OVER_QUOTA;

        } else if (limit->budget && cost > limit->budget) {
            ctx->over_kind = NGX_HTTP_LLM_OVER_BUDGET;

        } else {
            continue;
        }

        ctx->over = limit;
        ctx->over_consumer = &c[i];
        ctx->cost_estimate = cost;

        return NGX_DECLINED;
    }

    return NGX_OK;
}


/*
 * A zone shared through Redis admits on its leases (*shared); until this
 * worker's connection first answers, a request waits for it
 * (NGX_AGAIN), as long as redis_timeout= at most; without Redis, each
 * limit is the share of it that redis_share= gives this instance
 * (*scale, in percent)
 */

static ngx_int_t
ngx_http_llm_consumers_shared(ngx_http_llm_zone_t *zone,
    ngx_http_llm_ctx_t *ctx, ngx_msec_t now, ngx_uint_t *shared,
    ngx_uint_t *scale)
{
    ngx_uint_t  state;

    *shared = 0;
    *scale = 100;

    if (zone->share && !ctx->share_local) {
        state = ngx_http_llm_share_state(zone->share);

        if (ngx_http_llm_share_gave_up(zone->share, ctx->share_since, now)) {
            ctx->share_local = 1;

        } else if (state == NGX_HTTP_LLM_REDIS_READY) {
            *shared = 1;

        } else if (state == NGX_HTTP_LLM_REDIS_CONNECTING) {
            if (ctx->share_since == 0) {
                ctx->share_since = now ? now : 1;
            }

            return NGX_AGAIN;

        } else {
            ctx->share_local = 1;
        }

        if (ctx->share_local) {
            (void) ngx_atomic_fetch_add(&zone->sh->share.degraded, 1);
        }
    }

    if (ctx->share_local) {
        *scale = zone->share_conf->share;
    }

    return NGX_OK;
}


/*
 * Admission, before any backend is charged: every consumer of the
 * request must have room for its estimate in both windows, else none is
 * charged and *wait gets the time until all of them have room.  The
 * estimate is $llm_tokens_estimate, our exact count: a consumer's limit
 * is ours, not Azure's.  A budget is charged what the request may cost
 * at most, corrected to its cost when it ends.
 */

ngx_int_t
ngx_http_llm_consumers_charge(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_msec_t *wait)
{
    time_t                       sec;
    ngx_msec_t                   now, w;
    ngx_uint_t                   i, need, cost, nomem, missing, shared;
    ngx_uint_t                   scale, kind;
    ngx_http_llm_zone_t         *zone;
    ngx_http_llm_limit_t        *limit;
    ngx_http_llm_consumer_t     *c;
    ngx_http_llm_loc_conf_t     *llcf;
    ngx_http_llm_consumer_sh_t  *cs;

    *wait = 0;

    if (!ctx->consumers_keyed) {
        llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

        if (ngx_http_llm_consumers_key(r, ctx, llcf->limits) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (ctx->nconsumers == 0 || ctx->consumers_charged) {
        return NGX_OK;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm consumers: %ui, %ui tokens", ctx->nconsumers,
                   ctx->tokens_estimate);

    zone = ctx->pool->shm_zone->data;
    c = ctx->consumers;
    need = ctx->tokens_estimate;
    cost = ngx_http_llm_cost_estimate(r, ctx);

    if (ngx_http_llm_consumers_never(ctx, need, cost) != NGX_OK) {
        return NGX_DECLINED;
    }

    now = ngx_current_msec;
    sec = ngx_time();
    nomem = 0;
    missing = 0;

    ctx->over = NULL;
    ctx->over_consumer = NULL;

    if (ngx_http_llm_consumers_shared(zone, ctx, now, &shared, &scale)
        == NGX_AGAIN)
    {
        return NGX_AGAIN;
    }

    ngx_shmtx_lock(&zone->shpool->mutex);

    /* a charge refunded before (llm_wait) leaves nothing behind */

    for (i = 0; i < ctx->nconsumers; i++) {
        c[i].node = NULL;
        c[i].charged = 0;
        c[i].cost = 0;
        c[i].charged_at = 0;
        c[i].quota_start = 0;
    }

    for (i = 0; i < ctx->nconsumers; i++) {
        limit = c[i].limit;

        cs = ngx_http_llm_consumer_get(zone, c, i);
        c[i].node = cs;

        if (cs == NULL) {
            /* not even eviction made room: the limit cannot be kept */
            nomem++;
            continue;
        }

        ngx_http_llm_consumer_update(cs, limit->window, now);

        if (limit->quota_period) {
            ngx_http_llm_quota_period(cs, limit->quota_period, sec);
        }

        /*
         * a consumer's budgets in Redis take the limits of all its lines
         * (lines of one key, window and period share it): the lowest
         */

        if (cs->share) {
            ngx_http_llm_consumer_limits(cs->share, limit, !c[i].dup);
            cs->share->touched = now;
        }

        if (shared && cs->share) {
            /* the leases are looked at below, once every line is in */
            continue;
        }

        w = ngx_http_llm_consumer_wait(cs, limit, need, cost, scale, now,
                                       sec, &kind);

        if (w == 0) {
            continue;
        }

        if (ctx->over == NULL) {
            ctx->over = limit;
            ctx->over_consumer = &c[i];
            ctx->over_kind = kind;
        }

        *wait = ngx_max(*wait, w);
    }

    if (shared) {
        missing = ngx_http_llm_consumers_lease(zone, ctx, need, cost, now,
                                               wait);
    }

    if (*wait) {
        cs = ctx->over_consumer->node;
        cs->throttled++;

    } else if (missing) {
        /* leases asked for: the request tries again when they come */

        if (ctx->share_since == 0) {
            ctx->share_since = now ? now : 1;
        }

    } else {
        ngx_http_llm_consumers_add(zone, ctx, need, cost, shared, now);
        ctx->consumers_charged = 1;
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);

    if (missing) {
        return NGX_AGAIN;
    }

    if (nomem) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "llm: no room for %ui consumers in llm_zone \"%V\", "
                      "not limited", nomem, &ctx->pool->shm_zone->shm.name);
    }

    return *wait ? NGX_BUSY : NGX_OK;
}


/*
 * How long one line's consumer has no room for the request in its own
 * windows, quota and budget, 0: it has room; *kind: which refused
 */

static ngx_msec_t
ngx_http_llm_consumer_wait(ngx_http_llm_consumer_sh_t *cs,
    ngx_http_llm_limit_t *limit, ngx_uint_t need, ngx_uint_t cost,
    ngx_uint_t scale, ngx_msec_t now, time_t sec, ngx_uint_t *kind)
{
    ngx_msec_t  w, wr, wq, wb;

    w = 0;
    wr = 0;
    wq = 0;
    wb = 0;

    if (limit->tpm) {
        w = ngx_http_llm_window_wait(cs->tokens, NGX_HTTP_LLM_CONSUMER_SLOTS,
                                     ngx_http_llm_tslot(cs->window),
                                     cs->tokens_last, cs->tokens_sum,
                                     ngx_max(limit->tpm * scale / 100, 1),
                                     need, now);
    }

    if (limit->rpm) {
        wr = ngx_http_llm_window_wait(cs->requests_slot,
                                      NGX_HTTP_LLM_CONSUMER_RSLOTS,
                                      ngx_http_llm_rslot(cs->window),
                                      cs->requests_last, cs->requests_sum,
                                      ngx_max(limit->rpm * scale / 100, 1),
                                      1, now);
    }

    /*
     * a quota, as a window, takes a request larger than itself only at
     * the start of a period; room comes back when the period ends
     */

    if (limit->quota && cs->quota_used
        && cs->quota_used + need > limit->quota * scale / 100)
    {
        wq = (ngx_msec_t) (cs->quota_end - sec) * 1000;
    }

    /* a model without a price is not held back by a budget */

    if (limit->budget && cost && cs->spent
        && cs->spent + cost > limit->budget * scale / 100)
    {
        wb = (ngx_msec_t) (cs->quota_end - sec) * 1000;
    }

    if (wq && wq >= w && wq >= wr) {
        *kind = NGX_HTTP_LLM_OVER_QUOTA;

    } else if (wb && wb >= w && wb >= wr) {
        *kind = NGX_HTTP_LLM_OVER_BUDGET;

    } else {
        *kind = (wr > w) ? NGX_HTTP_LLM_OVER_REQUESTS
                         : NGX_HTTP_LLM_OVER_TOKENS;
    }

    return ngx_max(ngx_max(w, wr), ngx_max(wq, wb));
}


/*
 * Every consumer of an admitted request charged its estimate, one
 * request, and toward its period's quota and budget; under the zone's
 * lock
 */

static void
ngx_http_llm_consumers_add(ngx_http_llm_zone_t *zone,
    ngx_http_llm_ctx_t *ctx, ngx_uint_t need, ngx_uint_t cost,
    ngx_uint_t shared, ngx_msec_t now)
{
    int64_t                      n;
    ngx_msec_t                   w;
    ngx_uint_t                   i, k, kind;
    ngx_http_llm_consumer_t     *c;
    ngx_http_llm_consumer_sh_t  *cs;

    c = ctx->consumers;

    for (i = 0; i < ctx->nconsumers; i++) {
        cs = c[i].node;

        if (cs == NULL || c[i].dup) {
            continue;
        }

        ngx_http_llm_window_add(cs->tokens, NGX_HTTP_LLM_CONSUMER_SLOTS,
                                ngx_http_llm_tslot(cs->window),
                                cs->tokens_last, &cs->tokens_sum, need,
                                now);
        ngx_http_llm_window_add(cs->requests_slot,
                                NGX_HTTP_LLM_CONSUMER_RSLOTS,
                                ngx_http_llm_rslot(cs->window),
                                cs->requests_last, &cs->requests_sum, 1,
                                now);
        cs->requests++;

        /* a period's use counts toward both its quota and budget */

        if (c[i].limit->quota_period) {
            cs->quota_used += need;
            cs->spent += cost;
            c[i].quota_start = cs->quota_start;
        }

        c[i].charged = need;
        c[i].cost = cost;
        c[i].charged_at = now;

        /* what Redis is told, and leases renewed ahead of need */

        if (cs->share) {
            for (k = 0; k < NGX_HTTP_LLM_BUDGETS; k++) {
                n = (k == NGX_HTTP_LLM_BUDGET_REQUESTS) ? 1
                    : (k == NGX_HTTP_LLM_BUDGET_MONEY) ? (int64_t) cost
                    : (int64_t) need;

                if (cs->share->limit[k]) {
                    ngx_http_llm_consumer_spend(zone, cs, k, n, now, now);
                }
            }

            if (shared) {
                (void) ngx_http_llm_consumer_lease(zone, ctx, cs, need,
                                                   cost, 1, now, &w,
                                                   &kind);
            }
        }
    }
}


/*
 * The request's consumers: the SHA-256 of each line's key text, a zero
 * byte and the key's value.  An empty value: the line does not apply.
 */

static ngx_int_t
ngx_http_llm_consumers_key(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_array_t *limits)
{
    uint64_t                  mix;
    ngx_str_t                 value, parts[3];
    ngx_uint_t                i, j, n;
    ngx_http_llm_limit_t     *limit;
    ngx_http_llm_consumer_t  *c;

    ctx->consumers_keyed = 1;

    ngx_str_set(&parts[1], "\0");

    limit = limits->elts;

    c = ngx_pcalloc(r->pool, limits->nelts * sizeof(ngx_http_llm_consumer_t));
    if (c == NULL) {
        return NGX_ERROR;
    }

    n = 0;

    for (i = 0; i < limits->nelts; i++) {

        if (ngx_http_complex_value(r, &limit[i].key, &value) != NGX_OK) {
            return NGX_ERROR;
        }

        if (value.len == 0) {
            continue;
        }

        parts[0] = limit[i].key.value;
        parts[2] = value;

        ngx_http_llm_sha256(parts, 3, c[n].digest);

        /*
         * a consumer keeps one window length and one quota period: lines
         * of one key that differ in them are consumers of their own (the
         * last bytes of the digest tell them apart; $llm_consumer, its
         * first ones, stays the hash of the key)
         */

        mix = ((uint64_t) limit[i].window << 2) | limit[i].quota_period;

        for (j = 0; j < 8; j++) {
            c[n].digest[NGX_HTTP_LLM_DIGEST_LEN - 1 - j] ^=
                                                  (u_char) (mix >> (8 * j));
        }

        c[n].limit = &limit[i];

        /* two lines of one key share a consumer, charged once */

        for (j = 0; j < n; j++) {
            if (ngx_memcmp(c[j].digest, c[n].digest, NGX_HTTP_LLM_DIGEST_LEN)
                == 0)
            {
                c[n].dup = 1;
                break;
            }
        }

        n++;
    }

    ctx->consumers = c;
    ctx->nconsumers = n;

    return NGX_OK;
}


static ngx_http_llm_consumer_sh_t *
ngx_http_llm_consumer_lookup(ngx_http_llm_shctx_t *sh, u_char *digest)
{
    ngx_int_t                    rc;
    ngx_rbtree_key_t             key;
    ngx_rbtree_node_t           *node, *sentinel;
    ngx_http_llm_consumer_sh_t  *cs;

    ngx_memcpy(&key, digest, sizeof(ngx_rbtree_key_t));

    node = sh->consumers.root;
    sentinel = sh->consumers.sentinel;

    while (node != sentinel) {

        if (key < node->key) {
            node = node->left;
            continue;
        }

        if (key > node->key) {
            node = node->right;
            continue;
        }

        cs = (ngx_http_llm_consumer_sh_t *) node;

        rc = ngx_memcmp(digest, cs->digest, NGX_HTTP_LLM_DIGEST_LEN);

        if (rc == 0) {
            return cs;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


/*
 * The consumer c[n], found or made, moved to the head of the queue.  A
 * full zone frees the least recently used consumers, never one this
 * request already holds.  Under the zone's lock.
 */

static ngx_http_llm_consumer_sh_t *
ngx_http_llm_consumer_get(ngx_http_llm_zone_t *zone,
    ngx_http_llm_consumer_t *c, ngx_uint_t n)
{
    ngx_uint_t                   j, k;
    ngx_queue_t                 *q;
    ngx_http_llm_shctx_t        *sh;
    ngx_http_llm_consumer_sh_t  *cs, *old;

    sh = zone->sh;

    cs = ngx_http_llm_consumer_lookup(sh, c[n].digest);

    if (cs) {
        ngx_queue_remove(&cs->queue);
        ngx_queue_insert_head(&sh->consumer_lru, &cs->queue);

        /* the zone became shared at a reload: its consumers become so */

        if (zone->share_conf && cs->share == NULL) {
            cs->share = ngx_slab_calloc_locked(zone->shpool,
                                     sizeof(ngx_http_llm_consumer_share_t));
        }

        return cs;
    }

    for (k = 0; /* void */ ; k++) {
        cs = ngx_slab_calloc_locked(zone->shpool,
                                    sizeof(ngx_http_llm_consumer_sh_t));
        if (cs) {
            break;
        }

        if (k == NGX_HTTP_LLM_EVICT_MAX || ngx_queue_empty(&sh->consumer_lru))
        {
            return NULL;
        }

        q = ngx_queue_last(&sh->consumer_lru);
        old = ngx_queue_data(q, ngx_http_llm_consumer_sh_t, queue);

        for (j = 0; j < n; j++) {
            if (c[j].node == old) {
                return NULL;
            }
        }

        /* a reply from Redis still to come writes into it */

        if (old->share
            && ngx_http_llm_consumer_busy(zone, old, ngx_current_msec))
        {
            return NULL;
        }

        ngx_queue_remove(q);
        ngx_rbtree_delete(&sh->consumers, &old->node);

        if (old->share) {
            ngx_slab_free_locked(zone->shpool, old->share);
        }

        ngx_slab_free_locked(zone->shpool, old);

        sh->nconsumers--;
        sh->evicted++;
    }

    if (zone->share_conf) {
        cs->share = ngx_slab_calloc_locked(zone->shpool,
                                     sizeof(ngx_http_llm_consumer_share_t));
        if (cs->share == NULL) {
            ngx_slab_free_locked(zone->shpool, cs);
            return NULL;
        }
    }

    ngx_memcpy(&cs->node.key, c[n].digest, sizeof(ngx_rbtree_key_t));
    ngx_memcpy(cs->digest, c[n].digest, NGX_HTTP_LLM_DIGEST_LEN);
    cs->window = c[n].limit->window;

    ngx_rbtree_insert(&sh->consumers, &cs->node);
    ngx_queue_insert_head(&sh->consumer_lru, &cs->queue);
    sh->nconsumers++;

    return cs;
}


/*
 * Windows brought to "now"; a consumer whose lines now say another
 * window= starts afresh, as its slots meant other lengths.  Under the
 * zone's lock.
 */

static void
ngx_http_llm_consumer_update(ngx_http_llm_consumer_sh_t *cs,
    ngx_msec_t window, ngx_msec_t now)
{
    if (cs->window != window) {
        ngx_memzero(cs->tokens, sizeof(cs->tokens));
        ngx_memzero(cs->requests_slot, sizeof(cs->requests_slot));
        cs->tokens_sum = 0;
        cs->requests_sum = 0;
        cs->tokens_last = 0;
        cs->requests_last = 0;
        cs->window = window;
    }

    ngx_http_llm_window_advance(cs->tokens, NGX_HTTP_LLM_CONSUMER_SLOTS,
                                ngx_http_llm_tslot(window),
                                &cs->tokens_last, &cs->tokens_sum, now);
    ngx_http_llm_window_advance(cs->requests_slot,
                                NGX_HTTP_LLM_CONSUMER_RSLOTS,
                                ngx_http_llm_rslot(window),
                                &cs->requests_last, &cs->requests_sum, now);
}


/* admission went no further (no backend with room, a wait): all back */

void
ngx_http_llm_consumers_refund(ngx_http_llm_ctx_t *ctx)
{
    if (ctx->consumers_charged) {
        ngx_http_llm_consumers_settle(ctx, NULL);
    }
}


/*
 * The log phase: a reply with usage corrects the consumers' windows to
 * it; a request that was not served (a 429 of every backend, an error,
 * no reply, a reply cut short) costs its consumers nothing; a success
 * without usage keeps the estimate.
 */

void
ngx_http_llm_consumers_account(ngx_http_llm_ctx_t *ctx, ngx_uint_t status)
{
    ngx_http_llm_scan_t  usage;

    if (!ctx->consumers_charged) {
        return;
    }

    if (ngx_http_llm_usage_of(ctx, &usage)) {
        ngx_http_llm_consumers_settle(ctx, &usage);
        return;
    }

    /* a 2xx cut short after its header failed, as a 5xx does */

    if (status >= NGX_HTTP_OK && status < NGX_HTTP_SPECIAL_RESPONSE
        && !ctx->reply_cut)
    {
        ctx->consumers_charged = 0;
        return;
    }

    ngx_http_llm_consumers_settle(ctx, NULL);
}


/*
 * The charge leaves the slot it went to; the usage, if any, takes its
 * place there, so it leaves the window when the charge would have.  A
 * consumer evicted meanwhile is passed over.
 */

static void
ngx_http_llm_consumers_settle(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_scan_t *usage)
{
    int64_t                      diff;
    ngx_msec_t                   now, tslot, rslot;
    ngx_uint_t                   i, actual, cost;
    ngx_http_llm_zone_t         *zone;
    ngx_http_llm_consumer_t     *c;
    ngx_http_llm_consumer_sh_t  *cs;

    ctx->consumers_charged = 0;

    zone = ctx->pool->shm_zone->data;
    c = ctx->consumers;
    now = ngx_current_msec;
    actual = usage ? usage->prompt + usage->completion : 0;

    /* a reply without a price for its model or deployment costs nothing */

    cost = (usage && ctx->priced) ? ctx->cost : 0;

    ngx_shmtx_lock(&zone->shpool->mutex);

    for (i = 0; i < ctx->nconsumers; i++) {

        if (c[i].dup || c[i].charged_at == 0) {
            continue;
        }

        cs = ngx_http_llm_consumer_lookup(zone->sh, c[i].digest);

        if (cs == NULL) {
            continue;
        }

        ngx_http_llm_consumer_update(cs, c[i].limit->window, now);

        tslot = ngx_http_llm_tslot(cs->window);
        rslot = ngx_http_llm_rslot(cs->window);

        ngx_http_llm_window_remove(cs->tokens, NGX_HTTP_LLM_CONSUMER_SLOTS,
                                   tslot, cs->tokens_last, &cs->tokens_sum,
                                   c[i].charged, c[i].charged_at);

        /* a quota is corrected only within the period that was charged */

        if (c[i].quota_start && c[i].quota_start == cs->quota_start) {
            cs->quota_used -= ngx_min(cs->quota_used, c[i].charged);
            cs->quota_used += actual;
            cs->spent -= ngx_min(cs->spent, c[i].cost);
            cs->spent += cost;
        }

        if (usage) {
            ngx_http_llm_window_add(cs->tokens, NGX_HTTP_LLM_CONSUMER_SLOTS,
                                    tslot, cs->tokens_last, &cs->tokens_sum,
                                    actual, c[i].charged_at);

            cs->prompt_tokens += usage->prompt;
            cs->completion_tokens += usage->completion;

            if (ctx->priced) {
                cs->cost += ctx->cost;
            }

        } else {
            ngx_http_llm_window_remove(cs->requests_slot,
                                       NGX_HTTP_LLM_CONSUMER_RSLOTS, rslot,
                                       cs->requests_last, &cs->requests_sum,
                                       1, c[i].charged_at);

            cs->requests -= ngx_min(cs->requests, 1);
        }

        /* Redis hears the same correction, in the slot of the charge */

        if (cs->share) {
            diff = (int64_t) actual - (int64_t) c[i].charged;

            if (cs->share->limit[NGX_HTTP_LLM_BUDGET_TOKENS]) {
                ngx_http_llm_consumer_spend(zone, cs,
                                            NGX_HTTP_LLM_BUDGET_TOKENS, diff,
                                            c[i].charged_at, now);
            }

            if (!usage && cs->share->limit[NGX_HTTP_LLM_BUDGET_REQUESTS]) {
                ngx_http_llm_consumer_spend(zone, cs,
                                            NGX_HTTP_LLM_BUDGET_REQUESTS, -1,
                                            c[i].charged_at, now);
            }

            if (c[i].quota_start && c[i].quota_start == cs->quota_start
                && cs->share->limit[NGX_HTTP_LLM_BUDGET_QUOTA])
            {
                ngx_http_llm_consumer_spend(zone, cs,
                                            NGX_HTTP_LLM_BUDGET_QUOTA, diff,
                                            c[i].charged_at, now);
            }

            if (c[i].quota_start && c[i].quota_start == cs->quota_start
                && cs->share->limit[NGX_HTTP_LLM_BUDGET_MONEY])
            {
                ngx_http_llm_consumer_spend(zone, cs,
                                            NGX_HTTP_LLM_BUDGET_MONEY,
                                            (int64_t) cost
                                            - (int64_t) c[i].cost,
                                            c[i].charged_at, now);
            }
        }

        c[i].charged = usage ? actual : 0;
        c[i].cost = cost;
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


/*
 * The consumer's quota period, calendar-aligned in UTC: a new period
 * starts with nothing used.  Under the zone's lock.
 */

static void
ngx_http_llm_quota_period(ngx_http_llm_consumer_sh_t *cs, ngx_uint_t period,
    time_t now)
{
    time_t      start, end;
    ngx_tm_t    tm;
    ngx_uint_t  k, days;

    if (now >= cs->quota_start && now < cs->quota_end) {
        return;
    }

    if (period == NGX_HTTP_LLM_QUOTA_DAY) {
        start = now - now % 86400;
        end = start + 86400;

    } else {
        ngx_gmtime(now, &tm);

        start = now - now % 86400 - (tm.ngx_tm_mday - 1) * 86400;

        /* days in this month: ngx_tm_mon is 1 to 12 here */

        switch (tm.ngx_tm_mon) {

        case 2:
            days = (tm.ngx_tm_year % 4 == 0
                    && (tm.ngx_tm_year % 100 != 0
                        || tm.ngx_tm_year % 400 == 0)) ? 29 : 28;
            break;

        case 4: case 6: case 9: case 11:
            days = 30;
            break;

        default:
            days = 31;
        }

        end = start + days * 86400;
    }

    cs->quota_start = start;
    cs->quota_end = end;
    cs->quota_used = 0;
    cs->spent = 0;

    /* a period's budgets are new ones in Redis: nothing held of them yet */

    if (cs->share && cs->share->quota_start != start) {
        cs->share->quota_start = start;
        cs->share->quota[0] = 0;
        cs->share->money[0] = 0;

        for (k = NGX_HTTP_LLM_BUDGET_QUOTA; k <= NGX_HTTP_LLM_BUDGET_MONEY;
             k++)
        {
            cs->share->lease[k].credit = 0;
            cs->share->lease[k].expires = 0;
            cs->share->lease[k].exhausted = 0;
        }
    }
}


/*
 * For the status page: the n consumers with the most tokens in their
 * window, copied under the lock, most first; the zone's consumer count
 * and evictions.  One pass over all consumers: a status request is rare.
 */

ngx_uint_t
ngx_http_llm_consumers_top(ngx_shm_zone_t *shm_zone,
    ngx_http_llm_consumer_sh_t *top, ngx_http_llm_consumer_share_t *shares,
    ngx_uint_t n, ngx_uint_t *count, ngx_uint_t *evicted,
    ngx_http_llm_share_sh_t *share)
{
    ngx_msec_t                   now;
    ngx_uint_t                   k, pos;
    ngx_queue_t                 *q;
    ngx_http_llm_zone_t         *zone;
    ngx_http_llm_consumer_sh_t  *cs;

    zone = shm_zone->data;
    now = ngx_current_msec;
    k = 0;

    ngx_shmtx_lock(&zone->shpool->mutex);

    for (q = ngx_queue_head(&zone->sh->consumer_lru);
         n && q != ngx_queue_sentinel(&zone->sh->consumer_lru);
         q = ngx_queue_next(q))
    {
        cs = ngx_queue_data(q, ngx_http_llm_consumer_sh_t, queue);

        ngx_http_llm_consumer_update(cs, cs->window, now);

        if (cs->quota_end && ngx_time() >= cs->quota_end) {
            /* the period is over: nothing used in the current one yet */
            cs->quota_used = 0;
            cs->spent = 0;
        }

        if (k < n) {
            pos = k++;

        } else if (cs->tokens_sum > top[n - 1].tokens_sum) {
            pos = n - 1;

        } else {
            continue;
        }

        while (pos > 0 && top[pos - 1].tokens_sum < cs->tokens_sum) {
            top[pos] = top[pos - 1];

            if (shares) {
                shares[pos] = shares[pos - 1];
            }

            pos--;
        }

        top[pos] = *cs;

        /* the shared figures are copied too: the node may go after */

        if (shares && cs->share) {
            shares[pos] = *cs->share;
        }
    }

    /* top[].share points to the copies */

    for (pos = 0; pos < k; pos++) {
        if (top[pos].share) {
            top[pos].share = shares ? &shares[pos] : NULL;
        }
    }

    *count = zone->sh->nconsumers;
    *evicted = zone->sh->evicted;
    *share = zone->sh->share;

    ngx_shmtx_unlock(&zone->shpool->mutex);

    return k;
}


/* the consumer as $llm_consumer and the status page show it */

u_char *
ngx_http_llm_consumer_id(u_char *p, u_char *digest)
{
    return ngx_hex_dump(p, digest, NGX_HTTP_LLM_CONSUMER_ID_LEN / 2);
}
