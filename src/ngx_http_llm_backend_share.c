
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_backend_share.h"


/*
 * A backend's token and request windows shared through Redis (llm_zone
 * redis=), as a consumer's are (see ngx_http_llm_share.c): each instance
 * admits to a backend only what its lease of the backend's window
 * covers, so that the instances together send no more than the
 * deployment's TPM and RPM.  The backend's own x-ratelimit-remaining-*
 * still bounds the room, and a 429 still cools it down, in each
 * instance.  Under the zone's lock, as everything here but the walk.
 */


static void ngx_http_llm_backend_budget(ngx_http_llm_pool_t *pool,
    ngx_http_llm_backend_sh_t *sh, ngx_uint_t k, ngx_http_llm_budget_t *b,
    ngx_msec_t ttl);
static ngx_int_t ngx_http_llm_backend_send(ngx_http_llm_zone_t *zone,
    ngx_http_llm_backend_sh_t *sh, ngx_uint_t k, ngx_http_llm_budget_t *b,
    ngx_msec_t now);


/*
 * The attempt's room on one backend: NGX_OK when the leases cover it
 * (*credit: the token lease, for the choice by room); NGX_AGAIN when a
 * lease was asked for and the request may wait for it; NGX_BUSY when
 * Redis said a moment ago that the window is full (*wait: a slot);
 * NGX_DECLINED when a retry, which cannot wait, finds no lease: it goes
 * by this instance's own window, and the lease is asked for the next.
 */

ngx_int_t
ngx_http_llm_backend_lease(ngx_http_llm_zone_t *zone,
    ngx_http_llm_pool_t *pool, ngx_http_llm_backend_sh_t *sh,
    ngx_http_llm_ctx_t *ctx, ngx_uint_t charge, ngx_uint_t can_wait,
    ngx_msec_t now, ngx_msec_t *wait, int64_t *credit)
{
    int64_t                 n;
    ngx_int_t               rc;
    ngx_uint_t              k;
    ngx_msec_t              sync, ttl;
    ngx_http_llm_lease_t   *lease;
    ngx_http_llm_budget_t   b;

    rc = NGX_OK;
    sync = zone->share_conf->sync;
    ttl = zone->share_conf->ttl;
    *credit = NGX_HTTP_LLM_UNLIMITED;

    for (k = 0; k < 2; k++) {

        if (sh->share->limit[k] == 0) {
            continue;
        }

        lease = &sh->share->lease[k];
        n = (k == NGX_HTTP_LLM_BUDGET_BACKEND_TOKENS) ? (int64_t) charge : 1;

        if (ngx_http_llm_lease_ok(lease, n, now)) {
            if (k == NGX_HTTP_LLM_BUDGET_BACKEND_TOKENS) {
                *credit = lease->credit;
            }

            continue;
        }

        /* Redis refused its key lately: this instance's own window */

        if (ngx_http_llm_lease_refused(zone->share_conf, lease, now)) {
            rc = (rc == NGX_OK) ? NGX_DECLINED : rc;
            continue;
        }

        ngx_http_llm_backend_budget(pool, sh, k, &b, ttl);

        if (lease->exhausted
            && ((ngx_msec_int_t) (now - lease->exhausted)
                                                  < (ngx_msec_int_t) sync
                || (ctx->share_since
                    && (ngx_msec_int_t) (lease->exhausted - ctx->share_since)
                       >= 0)))
        {
            *wait = ngx_max(*wait, b.slot_ms);
            rc = NGX_BUSY;
            continue;
        }

        if (!ngx_http_llm_lease_busy(zone->share_conf, lease, now)) {
            b.ask = ngx_http_llm_lease_want(&b, n, now);

            if (ngx_http_llm_backend_send(zone, sh, k, &b, now) != NGX_OK) {
                ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                               "llm share: backend lease not asked");
            }
        }

        if (rc == NGX_OK || rc == NGX_DECLINED) {
            rc = can_wait ? NGX_AGAIN : NGX_DECLINED;
        }
    }

    return rc;
}


/*
 * A request that waits for its consumers' leases will spend from this
 * backend's: the reports must not give them back as unused meanwhile,
 * since once given back they are no longer there to spend
 */

void
ngx_http_llm_backend_wanted(ngx_http_llm_backend_sh_t *sh, ngx_msec_t now)
{
    ngx_uint_t  k;

    for (k = 0; k < 2; k++) {
        sh->share->lease[k].used = now;
    }
}


/*
 * A charge (or, negative, a refund or a correction) of the backend's
 * windows, in the slot of "at"; Redis hears of it at the next report
 */

void
ngx_http_llm_backend_spend(ngx_http_llm_zone_t *zone,
    ngx_http_llm_pool_t *pool, ngx_http_llm_backend_sh_t *sh,
    int64_t tokens, int64_t requests, ngx_msec_t at, ngx_msec_t now)
{
    ngx_http_llm_budget_t  b;

    if (tokens && sh->share->limit[NGX_HTTP_LLM_BUDGET_BACKEND_TOKENS]) {
        ngx_http_llm_backend_budget(pool, sh,
                                    NGX_HTTP_LLM_BUDGET_BACKEND_TOKENS, &b,
                                    zone->share_conf->ttl);
        ngx_http_llm_lease_spend(&b, tokens, at, now);
    }

    if (requests && sh->share->limit[NGX_HTTP_LLM_BUDGET_BACKEND_REQUESTS]) {
        ngx_http_llm_backend_budget(pool, sh,
                                    NGX_HTTP_LLM_BUDGET_BACKEND_REQUESTS, &b,
                                    zone->share_conf->ttl);
        ngx_http_llm_lease_spend(&b, requests, at, now);
    }
}


/* after a charge: leases that run low are renewed before they run out */

void
ngx_http_llm_backend_renew(ngx_http_llm_zone_t *zone,
    ngx_http_llm_pool_t *pool, ngx_http_llm_backend_sh_t *sh,
    ngx_uint_t charge, ngx_msec_t now)
{
    int64_t                 n;
    ngx_uint_t              k;
    ngx_http_llm_budget_t   b;

    for (k = 0; k < 2; k++) {

        if (sh->share->limit[k] == 0) {
            continue;
        }

        /* the reports renew for requests of this size too */

        n = (k == NGX_HTTP_LLM_BUDGET_BACKEND_TOKENS) ? (int64_t) charge : 1;
        sh->share->lease[k].last = n;

        if (ngx_http_llm_lease_busy(zone->share_conf, &sh->share->lease[k],
                                    now))
        {
            continue;
        }

        ngx_http_llm_backend_budget(pool, sh, k, &b, zone->share_conf->ttl);

        b.ask = ngx_http_llm_lease_ahead(&b, n, now);

        if (b.ask > 0) {
            (void) ngx_http_llm_backend_send(zone, sh, k, &b, now);
        }
    }
}


/*
 * Every redis_sync= period (see ngx_http_llm_module.c), or as a worker
 * exits (final): what each backend's windows spent, and its leases
 * renewed or, idle, given back; 1 when the link was full before the end
 */

ngx_uint_t
ngx_http_llm_backends_sync(ngx_http_llm_zone_t *zone, ngx_msec_t now,
    ngx_uint_t final)
{
    ngx_uint_t                   i, j, k, full, pending;
    ngx_msec_t                   ttl;
    ngx_http_llm_pool_t        **pools;
    ngx_http_llm_budget_t        b;
    ngx_http_llm_lease_t        *lease;
    ngx_http_llm_backend_t      *backend;
    ngx_http_llm_backend_sh_t   *sh;

    ttl = zone->share_conf->ttl;
    pools = zone->pools.elts;
    full = 0;

    ngx_shmtx_lock(&zone->shpool->mutex);

    for (i = 0; i < zone->pools.nelts; i++) {
        backend = pools[i]->backends.elts;

        for (j = 0; j < pools[i]->backends.nelts; j++) {
            sh = backend[j].sh;

            if (sh == NULL || sh->share == NULL) {
                continue;
            }

            for (k = 0; k < 2; k++) {
                lease = &sh->share->lease[k];

                if (sh->share->limit[k] == 0
                    || (!final
                        && ngx_http_llm_lease_busy(zone->share_conf, lease,
                                                   now)))
                {
                    continue;
                }

                ngx_http_llm_backend_budget(pools[i], sh, k, &b, ttl);

                pending = ngx_http_llm_lease_pending(&b);

                if (final) {
                    if (pending
                        && ngx_http_llm_backend_send(zone, sh, k, &b, now)
                           == NGX_BUSY)
                    {
                        full = 1;
                        goto done;
                    }

                    continue;
                }

                b.ask = ngx_http_llm_lease_renewal(&b, now, ttl);

                if (pending || b.ask
                    || ngx_http_llm_lease_lapsing(&b, now, ttl))
                {
                    (void) ngx_http_llm_backend_send(zone, sh, k, &b, now);
                }
            }
        }
    }

done:

    ngx_shmtx_unlock(&zone->shpool->mutex);

    return full;
}


static void
ngx_http_llm_backend_budget(ngx_http_llm_pool_t *pool,
    ngx_http_llm_backend_sh_t *sh, ngx_uint_t k, ngx_http_llm_budget_t *b,
    ngx_msec_t ttl)
{
    b->lease = &sh->share->lease[k];
    b->limit = sh->share->limit[k];
    b->ask = 0;
    b->least = 0;
    b->key_len = 0;

    if (k == NGX_HTTP_LLM_BUDGET_BACKEND_TOKENS) {
        b->ring = sh->share->tokens;
        b->nslots = NGX_HTTP_LLM_TOKEN_SLOTS;
        b->slot_ms = pool->token_slot_ms;

    } else {
        b->ring = sh->share->requests;
        b->nslots = NGX_HTTP_LLM_REQ_SLOTS;
        b->slot_ms = pool->request_slot_ms;
    }

    b->expire = b->slot_ms * (b->nslots + 1) + ttl;
}


/* the key names the zone and the SHA-256 of "pool/backend" */

static ngx_int_t
ngx_http_llm_backend_send(ngx_http_llm_zone_t *zone,
    ngx_http_llm_backend_sh_t *sh, ngx_uint_t k, ngx_http_llm_budget_t *b,
    ngx_msec_t now)
{
    u_char  *p, *last;

    p = b->key;
    last = b->key + sizeof(b->key);

    p = ngx_slprintf(p, last, "llm:%V:b:", &zone->name);
    p = ngx_hex_dump(p, sh->share->digest, sizeof(sh->share->digest));
    p = ngx_slprintf(p, last, (k == NGX_HTTP_LLM_BUDGET_BACKEND_TOKENS)
                              ? ":t" : ":r");

    b->key_len = p - b->key;

    return ngx_http_llm_lease_send(zone->share, b, now);
}
