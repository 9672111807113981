
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_consumer_share.h"


/*
 * Shared through Redis (llm_zone redis=): a consumer's token window,
 * request window, token quota and money budget are four budgets, each
 * with a lease.  Under the zone's lock, as everything here but the walk.
 */


static void ngx_http_llm_consumer_budget(ngx_http_llm_zone_t *zone,
    ngx_http_llm_consumer_sh_t *cs, ngx_uint_t k, ngx_http_llm_budget_t *b);
static ngx_int_t ngx_http_llm_consumer_send(ngx_http_llm_zone_t *zone,
    ngx_http_llm_consumer_sh_t *cs, ngx_uint_t k, ngx_http_llm_budget_t *b,
    ngx_msec_t now);


/* a line's limits into its consumer's budgets: the first sets them */

void
ngx_http_llm_consumer_limits(ngx_http_llm_consumer_share_t *share,
    ngx_http_llm_limit_t *limit, ngx_uint_t first)
{
    ngx_uint_t  k;
    int64_t     v[NGX_HTTP_LLM_BUDGETS];

    v[NGX_HTTP_LLM_BUDGET_TOKENS] = limit->tpm;
    v[NGX_HTTP_LLM_BUDGET_REQUESTS] = limit->rpm;
    v[NGX_HTTP_LLM_BUDGET_QUOTA] = limit->quota;
    v[NGX_HTTP_LLM_BUDGET_MONEY] = limit->budget;

    for (k = 0; k < NGX_HTTP_LLM_BUDGETS; k++) {
        if (first) {
            share->limit[k] = v[k];

        } else if (v[k] && (share->limit[k] == 0 || v[k] < share->limit[k]))
        {
            share->limit[k] = v[k];
        }
    }
}


/*
 * Every consumer of the request in a shared zone, on its leases: the
 * number still waiting for one (0: all have room, or one is refused,
 * with *wait and ctx->over set as the local windows would set them)
 */

ngx_uint_t
ngx_http_llm_consumers_lease(ngx_http_llm_zone_t *zone,
    ngx_http_llm_ctx_t *ctx, ngx_uint_t need, ngx_uint_t cost,
    ngx_msec_t now, ngx_msec_t *wait)
{
    ngx_int_t                    rc;
    ngx_uint_t                   i, j, kind, missing;
    ngx_msec_t                   w;
    ngx_http_llm_limit_t        *limit;
    ngx_http_llm_consumer_t     *c;
    ngx_http_llm_consumer_sh_t  *cs;

    static ngx_uint_t  over[] = {
        NGX_HTTP_LLM_OVER_TOKENS, NGX_HTTP_LLM_OVER_REQUESTS,
        NGX_HTTP_LLM_OVER_QUOTA, NGX_HTTP_LLM_OVER_BUDGET
    };

    c = ctx->consumers;
    missing = 0;

    for (i = 0; i < ctx->nconsumers; i++) {
        cs = c[i].node;

        if (cs == NULL || cs->share == NULL || c[i].dup) {
            continue;
        }

        w = 0;
        kind = 0;

        rc = ngx_http_llm_consumer_lease(zone, ctx, cs, need, cost, 0, now,
                                         &w, &kind);

        if (rc == NGX_AGAIN) {
            missing++;
            continue;
        }

        if (rc != NGX_BUSY) {
            continue;
        }

        /* the line that set the budget refused, for the 429's message */

        if (ctx->over == NULL) {
            ctx->over = c[i].limit;
            ctx->over_consumer = &c[i];
            ctx->over_kind = over[kind];

            for (j = i; j < ctx->nconsumers; j++) {
                limit = c[j].limit;

                if (c[j].node == cs
                    && ((kind == NGX_HTTP_LLM_BUDGET_TOKENS && limit->tpm)
                        || (kind == NGX_HTTP_LLM_BUDGET_REQUESTS
                            && limit->rpm)
                        || (kind == NGX_HTTP_LLM_BUDGET_QUOTA
                            && limit->quota)
                        || (kind == NGX_HTTP_LLM_BUDGET_MONEY
                            && limit->budget)))
                {
                    ctx->over = limit;
                    break;
                }
            }
        }

        *wait = ngx_max(*wait, w);
    }

    return *wait ? 0 : missing;
}


/*
 * The request's room in each budget of one consumer: NGX_OK when every
 * lease covers it; NGX_AGAIN when a lease was asked for; NGX_BUSY when
 * Redis said lately that there is no more (*wait, *kind: which, and until
 * when).  renew: after the charge, leases that run low are renewed
 * ahead of the next request, which then need not wait.
 */

ngx_int_t
ngx_http_llm_consumer_lease(ngx_http_llm_zone_t *zone,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_consumer_sh_t *cs,
    ngx_uint_t need, ngx_uint_t cost, ngx_uint_t renew, ngx_msec_t now,
    ngx_msec_t *wait, ngx_uint_t *kind)
{
    int64_t                 n;
    ngx_int_t               rc;
    ngx_uint_t              k;
    ngx_msec_t              sync;
    ngx_http_llm_lease_t   *lease;
    ngx_http_llm_budget_t   b;

    rc = NGX_OK;
    sync = zone->share_conf->sync;

    for (k = 0; k < NGX_HTTP_LLM_BUDGETS; k++) {

        if (cs->share->limit[k] == 0
            || (k == NGX_HTTP_LLM_BUDGET_MONEY && cost == 0 && !renew))
        {
            /* a model without a price is not held back by a budget */
            continue;
        }

        lease = &cs->share->lease[k];
        n = (k == NGX_HTTP_LLM_BUDGET_REQUESTS) ? 1
            : (k == NGX_HTTP_LLM_BUDGET_MONEY) ? (int64_t) cost
            : (int64_t) need;

        if (renew) {
            /* the reports renew for requests of this size too */
            lease->last = n;

        } else if (ngx_http_llm_lease_ok(lease, n, now)) {
            continue;
        }

        if (ngx_http_llm_lease_refused(zone->share_conf, lease, now)) {

            /* the request goes on without Redis, in a moment */

            if (!renew && !ctx->share_local) {
                ctx->share_local = 1;
                (void) ngx_atomic_fetch_add(&zone->sh->share.degraded, 1);
            }

            if (!renew) {
                rc = (rc == NGX_BUSY) ? rc : NGX_AGAIN;
            }

            continue;
        }

        if (ngx_http_llm_consumer_busy(zone, cs, now)
            && lease->busy)
        {
            if (!renew) {
                rc = (rc == NGX_BUSY) ? rc : NGX_AGAIN;
            }

            continue;
        }

        /*
         * Redis had no more a moment ago, or since this request waits:
         * a 429, without asking again for each request
         */

        if (!renew && lease->exhausted
            && ((ngx_msec_int_t) (now - lease->exhausted)
                                                  < (ngx_msec_int_t) sync
                || (ctx->share_since
                    && (ngx_msec_int_t) (lease->exhausted - ctx->share_since)
                       >= 0)))
        {
            ngx_http_llm_consumer_budget(zone, cs, k, &b);

            *kind = k;

            if (b.slot_ms) {
                *wait = b.slot_ms;

            } else if (lease->spent + n > b.limit) {
                /* the period's budget is spent: until it ends */
                *wait = (ngx_msec_t) ngx_max(cs->quota_end - ngx_time(), 1)
                        * 1000;

            } else {
                /*
                 * what is left is held as other instances' leases: it is
                 * spent or comes back within a lease's life
                 */
                *wait = zone->share_conf->ttl;
            }

            rc = NGX_BUSY;
            continue;
        }

        ngx_http_llm_consumer_budget(zone, cs, k, &b);

        if (renew) {
            b.ask = ngx_http_llm_lease_ahead(&b, n, now);

            if (b.ask <= 0) {
                continue;
            }

        } else {
            b.ask = ngx_http_llm_lease_want(&b, n, now);
        }

        if (ngx_http_llm_consumer_send(zone, cs, k, &b, now) != NGX_OK) {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                           "llm share: lease not asked");
        }

        if (!renew) {
            rc = (rc == NGX_BUSY) ? rc : NGX_AGAIN;
        }
    }

    return rc;
}


void
ngx_http_llm_consumer_spend(ngx_http_llm_zone_t *zone,
    ngx_http_llm_consumer_sh_t *cs, ngx_uint_t k, int64_t value,
    ngx_msec_t at, ngx_msec_t now)
{
    ngx_http_llm_budget_t  b;

    if (value == 0) {
        return;
    }

    ngx_http_llm_consumer_budget(zone, cs, k, &b);
    ngx_http_llm_lease_spend(&b, value, at, now);
}


/*
 * A budget's key in Redis: the zone's name, the consumer's hash (never
 * the key's value) and which budget; a quota's and a money budget's name
 * their period
 */

static void
ngx_http_llm_consumer_budget(ngx_http_llm_zone_t *zone,
    ngx_http_llm_consumer_sh_t *cs, ngx_uint_t k, ngx_http_llm_budget_t *b)
{
    ngx_msec_t  ttl;

    ttl = zone->share_conf->ttl;

    b->lease = &cs->share->lease[k];
    b->limit = cs->share->limit[k];
    b->ask = 0;
    b->least = 0;
    b->key_len = 0;

    switch (k) {

    case NGX_HTTP_LLM_BUDGET_TOKENS:
        b->ring = cs->share->tokens;
        b->nslots = NGX_HTTP_LLM_CONSUMER_SLOTS;
        b->slot_ms = ngx_http_llm_tslot(cs->window);
        b->expire = b->slot_ms * (b->nslots + 1) + ttl;
        break;

    case NGX_HTTP_LLM_BUDGET_REQUESTS:
        b->ring = cs->share->requests;
        b->nslots = NGX_HTTP_LLM_CONSUMER_RSLOTS;
        b->slot_ms = ngx_http_llm_rslot(cs->window);
        b->expire = b->slot_ms * (b->nslots + 1) + ttl;
        break;

    default: /* NGX_HTTP_LLM_BUDGET_QUOTA, NGX_HTTP_LLM_BUDGET_MONEY */
        b->ring = (k == NGX_HTTP_LLM_BUDGET_QUOTA) ? cs->share->quota
                                                   : cs->share->money;
        b->nslots = 1;
        b->slot_ms = 0;

        /* kept a day past its period, for a look after the fact */

        b->expire = (ngx_msec_t) (ngx_max(cs->quota_end - ngx_time(), 0)
                                  + 86400) * 1000;
    }
}


/* the key, only for what goes to Redis: most budgets are only spent */

static ngx_int_t
ngx_http_llm_consumer_send(ngx_http_llm_zone_t *zone,
    ngx_http_llm_consumer_sh_t *cs, ngx_uint_t k, ngx_http_llm_budget_t *b,
    ngx_msec_t now)
{
    u_char  *p, *last;

    p = b->key;
    last = b->key + sizeof(b->key);

    p = ngx_slprintf(p, last, "llm:%V:", &zone->name);
    p = ngx_hex_dump(p, cs->digest, NGX_HTTP_LLM_DIGEST_LEN);

    switch (k) {

    case NGX_HTTP_LLM_BUDGET_TOKENS:
        p = ngx_slprintf(p, last, ":t");
        break;

    case NGX_HTTP_LLM_BUDGET_REQUESTS:
        p = ngx_slprintf(p, last, ":r");
        break;

    case NGX_HTTP_LLM_BUDGET_QUOTA:
        p = ngx_slprintf(p, last, ":q:%T", cs->share->quota_start);
        break;

    default: /* NGX_HTTP_LLM_BUDGET_MONEY */
        p = ngx_slprintf(p, last, ":m:%T", cs->share->quota_start);
    }

    b->key_len = p - b->key;

    return ngx_http_llm_lease_send(zone->share, b, now);
}


/* a reply from Redis is awaited for one of the consumer's budgets */

ngx_uint_t
ngx_http_llm_consumer_busy(ngx_http_llm_zone_t *zone,
    ngx_http_llm_consumer_sh_t *cs, ngx_msec_t now)
{
    ngx_uint_t  k, busy;

    busy = 0;

    for (k = 0; k < NGX_HTTP_LLM_BUDGETS; k++) {
        busy |= ngx_http_llm_lease_busy(zone->share_conf,
                                        &cs->share->lease[k], now);
    }

    return busy;
}


/*
 * Every redis_sync= period, one worker of the instance reports what was
 * spent and renews the leases about to lapse, most recently used
 * consumers first; it stops at the first consumer idle for two lease
 * lifetimes with nothing left to say, as all behind it are older.
 * final: a worker's last report as it exits, every ring not yet empty;
 * 1 when the link was full before the end, for another pass.
 */

#define NGX_HTTP_LLM_SYNC_MAX  512

ngx_uint_t
ngx_http_llm_consumers_sync(ngx_http_llm_zone_t *zone, ngx_msec_t now,
    ngx_uint_t final)
{
    ngx_uint_t                     k, sent, idle, full, pending;
    ngx_msec_t                     ttl;
    ngx_queue_t                   *q;
    ngx_http_llm_lease_t          *lease;
    ngx_http_llm_budget_t          b;
    ngx_http_llm_consumer_sh_t    *cs;

    ttl = zone->share_conf->ttl;
    sent = 0;
    full = 0;

    ngx_shmtx_lock(&zone->shpool->mutex);

    for (q = ngx_queue_head(&zone->sh->consumer_lru);
         q != ngx_queue_sentinel(&zone->sh->consumer_lru)
         && (final || sent < NGX_HTTP_LLM_SYNC_MAX);
         q = ngx_queue_next(q))
    {
        cs = ngx_queue_data(q, ngx_http_llm_consumer_sh_t, queue);

        if (cs->share == NULL) {
            continue;
        }

        idle = ((ngx_msec_int_t) (now - cs->share->touched)
                > (ngx_msec_int_t) (2 * ttl));

        (void) ngx_http_llm_consumer_busy(zone, cs, now);

        for (k = 0; k < NGX_HTTP_LLM_BUDGETS; k++) {
            lease = &cs->share->lease[k];

            if (cs->share->limit[k] == 0 || (lease->busy && !final)) {
                continue;
            }

            ngx_http_llm_consumer_budget(zone, cs, k, &b);

            pending = ngx_http_llm_lease_pending(&b);

            if (final) {
                /* the leases stay: the instance's other workers go on */

                if (pending
                    && ngx_http_llm_consumer_send(zone, cs, k, &b, now)
                       == NGX_BUSY)
                {
                    full = 1;
                    goto done;
                }

                continue;
            }

            b.ask = ngx_http_llm_lease_renewal(&b, now, ttl);

            if (!pending && b.ask == 0
                && !ngx_http_llm_lease_lapsing(&b, now, ttl))
            {
                continue;
            }

            idle = 0;

            if (ngx_http_llm_consumer_send(zone, cs, k, &b, now) == NGX_OK) {
                sent++;
            }
        }

        if (idle && !final) {
            break;
        }
    }

done:

    ngx_shmtx_unlock(&zone->shpool->mutex);

    return full;
}
