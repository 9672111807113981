
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <openssl/sha.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_backend_share.h"
#include "ngx_http_llm_window.h"
#include "ngx_http_llm_zone.h"


static void ngx_http_llm_consumers_init(ngx_http_llm_shctx_t *sh);
static void ngx_http_llm_consumer_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_int_t ngx_http_llm_init_zone(ngx_shm_zone_t *shm_zone, void *data);
static ngx_int_t ngx_http_llm_zone_new(ngx_shm_zone_t *shm_zone,
    ngx_http_llm_zone_t *zone);
static ngx_http_llm_backend_sh_t *ngx_http_llm_zone_node(
    ngx_shm_zone_t *shm_zone, ngx_http_llm_pool_t *pool,
    ngx_http_llm_backend_t *b, ngx_uint_t gen);
static ngx_uint_t ngx_http_llm_zone_sweep(ngx_http_llm_zone_t *zone,
    ngx_uint_t gen);
static ngx_uint_t ngx_http_llm_zone_oldest(ngx_http_llm_zone_t *zone,
    ngx_uint_t gen);
static void ngx_http_llm_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_http_llm_backend_sh_t *ngx_http_llm_lookup(
    ngx_http_llm_zone_t *zone, ngx_str_t *key, uint32_t hash);
static ngx_int_t ngx_http_llm_choose_shared(ngx_http_llm_zone_t *zone,
    ngx_http_llm_ctx_t *ctx, uintptr_t *tried, ngx_msec_t now,
    ngx_uint_t *shared, ngx_uint_t *scale);
static ngx_msec_t ngx_http_llm_room(ngx_http_llm_pool_t *pool,
    ngx_http_llm_backend_t *b, ngx_uint_t charge, ngx_uint_t leased,
    int64_t credit, ngx_uint_t scale, ngx_msec_t now, ngx_uint_t *room);
static void ngx_http_llm_take(ngx_http_llm_zone_t *zone,
    ngx_http_llm_pool_t *pool, ngx_http_llm_backend_t *b,
    ngx_http_llm_ctx_t *ctx, ngx_uint_t charge, ngx_uint_t shared,
    ngx_msec_t now);
static ngx_uint_t ngx_http_llm_latency(ngx_http_llm_pool_t *pool,
    ngx_http_llm_backend_sh_t *sh, ngx_http_llm_ctx_t *ctx, ngx_msec_t now);


char *
ngx_http_llm_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char                       *rv;
    u_char                     *p;
    ssize_t                     size;
    ngx_str_t                  *value, name, s;
    ngx_uint_t                  i;
    ngx_shm_zone_t             *shm_zone;
    ngx_http_llm_zone_t        *zone;
    ngx_http_llm_share_conf_t  *scf;

    value = cf->args->elts;

    p = (u_char *) ngx_strchr(value[1].data, ':');

    if (p == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone size \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    name.data = value[1].data;
    name.len = p - name.data;

    s.data = p + 1;
    s.len = value[1].data + value[1].len - s.data;

    size = ngx_parse_size(&s);

    if (size == NGX_ERROR || name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone size \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (size < (ssize_t) (8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is too small", &value[1]);
        return NGX_CONF_ERROR;
    }

    shm_zone = ngx_shared_memory_add(cf, &name, size, &ngx_http_llm_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    zone = shm_zone->data;

    if (zone && zone->sh == (void *) 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate zone \"%V\"", &name);
        return NGX_CONF_ERROR;
    }

    if (ngx_http_llm_zone_add_pool(cf, shm_zone, NULL) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    zone = shm_zone->data;

    /* marks the zone as declared until init_zone sets the real pointer */
    zone->sh = (void *) 1;
    zone->name = name;

    /* redis=URL and its options: the zone's budgets shared */

    scf = NULL;

    for (i = 2; i < cf->args->nelts; i++) {
        rv = ngx_http_llm_share_option(cf, &value[i], &scf);

        if (rv == NGX_CONF_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"",
                               ngx_strncmp(value[i].data, "redis=", 6) == 0
                               ? &name : &value[i]);
            return NGX_CONF_ERROR;
        }

        if (rv != NGX_CONF_OK) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_zone \"%V\" %s", &name, rv);
            return NGX_CONF_ERROR;
        }
    }

    /* the name is in every key the zone writes in Redis */

    if (scf && name.len > NGX_HTTP_LLM_SHARE_NAME_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_zone \"%V\" shared through Redis needs a "
                           "name of at most %d bytes", &name,
                           NGX_HTTP_LLM_SHARE_NAME_MAX);
        return NGX_CONF_ERROR;
    }

    if (scf) {
        rv = ngx_http_llm_share_conf_done(cf, scf);

        if (rv != NGX_CONF_OK) {
            if (rv != NGX_CONF_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "llm_zone \"%V\" %s", &name, rv);
            }

            return NGX_CONF_ERROR;
        }
    }

    zone->share_conf = scf;

    return NGX_CONF_OK;
}


/*
 * Pools may name a zone before or after "llm_zone" declares it: the first
 * to see it creates the zone's data, and every pool registers itself so
 * that init_zone can give each backend its shared state.
 */

ngx_int_t
ngx_http_llm_zone_add_pool(ngx_conf_t *cf, ngx_shm_zone_t *shm_zone,
    ngx_http_llm_pool_t *pool)
{
    ngx_http_llm_pool_t  **pp;
    ngx_http_llm_zone_t   *zone;

    zone = shm_zone->data;

    if (zone == NULL) {
        zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_zone_t));
        if (zone == NULL) {
            return NGX_ERROR;
        }

        if (ngx_array_init(&zone->pools, cf->pool, 4,
                           sizeof(ngx_http_llm_pool_t *))
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        shm_zone->data = zone;
        shm_zone->init = ngx_http_llm_init_zone;
    }

    if (pool == NULL) {
        return NGX_OK;
    }

    pp = ngx_array_push(&zone->pools);
    if (pp == NULL) {
        return NGX_ERROR;
    }

    *pp = pool;

    return NGX_OK;
}


/*
 * A new zone's consumer tree and queue.  The zone owns both trees; the
 * consumers' policy (consumer.c) finds and evicts its nodes.
 */

static void
ngx_http_llm_consumers_init(ngx_http_llm_shctx_t *sh)
{
    ngx_rbtree_init(&sh->consumers, &sh->consumer_sentinel,
                    ngx_http_llm_consumer_insert_value);
    ngx_queue_init(&sh->consumer_lru);
    sh->nconsumers = 0;
    sh->evicted = 0;
}


static void
ngx_http_llm_consumer_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t           **p;
    ngx_http_llm_consumer_sh_t   *n, *t;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else {
            n = (ngx_http_llm_consumer_sh_t *) node;
            t = (ngx_http_llm_consumer_sh_t *) temp;

            p = (ngx_memcmp(n->digest, t->digest, NGX_HTTP_LLM_DIGEST_LEN)
                 < 0) ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


static ngx_int_t
ngx_http_llm_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_llm_zone_t  *ozone = data;

    ngx_uint_t                  i, j, gen, nfreed;
    ngx_http_llm_pool_t       **pools;
    ngx_http_llm_zone_t        *zone;
    ngx_http_llm_backend_t     *b;
    ngx_http_llm_backend_sh_t  *node;

    zone = shm_zone->data;

    if (ozone) {
        zone->sh = ozone->sh;
        zone->shpool = ozone->shpool;

    } else {
        zone->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

        if (shm_zone->shm.exists) {
            zone->sh = zone->shpool->data;

        } else if (ngx_http_llm_zone_new(shm_zone, zone) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    /*
     * workers of the previous configuration still run while this one
     * starts: everything below is under the zone's lock
     */

    ngx_shmtx_lock(&zone->shpool->mutex);

    gen = ++zone->sh->generation;
    zone->generation = gen;

    /* a full zone evicts consumers: not worth a message each time */

    zone->shpool->log_nomem = 0;

    pools = zone->pools.elts;

    for (i = 0; i < zone->pools.nelts; i++) {
        b = pools[i]->backends.elts;

        for (j = 0; j < pools[i]->backends.nelts; j++) {
            node = ngx_http_llm_zone_node(shm_zone, pools[i], &b[j], gen);
            if (node == NULL) {
                ngx_shmtx_unlock(&zone->shpool->mutex);
                return NGX_ERROR;
            }

            b[j].sh = node;
        }

        /* the pool's own node, "name/", for its counters */

        pools[i]->sh = ngx_http_llm_zone_node(shm_zone, pools[i], NULL, gen);
        if (pools[i]->sh == NULL) {
            ngx_shmtx_unlock(&zone->shpool->mutex);
            return NGX_ERROR;
        }
    }

    nfreed = ngx_http_llm_zone_sweep(zone, gen);

    ngx_shmtx_unlock(&zone->shpool->mutex);

    if (nfreed) {
        ngx_log_error(NGX_LOG_NOTICE, shm_zone->shm.log, 0,
                      "llm_zone \"%V\": freed the state of %ui removed "
                      "backends", &shm_zone->shm.name, nfreed);
    }

    return NGX_OK;
}


/* a new zone: its context, both trees, and its name for slab's errors */

static ngx_int_t
ngx_http_llm_zone_new(ngx_shm_zone_t *shm_zone, ngx_http_llm_zone_t *zone)
{
    size_t  len;

    zone->sh = ngx_slab_alloc(zone->shpool, sizeof(ngx_http_llm_shctx_t));
    if (zone->sh == NULL) {
        return NGX_ERROR;
    }

    zone->shpool->data = zone->sh;

    ngx_rbtree_init(&zone->sh->rbtree, &zone->sh->sentinel,
                    ngx_http_llm_rbtree_insert_value);
    ngx_queue_init(&zone->sh->queue);
    zone->sh->generation = 0;
    ngx_queue_init(&zone->sh->workers);
    zone->sh->untracked = 0;

    ngx_http_llm_consumers_init(zone->sh);

    len = sizeof(" in llm_zone \"\"") + shm_zone->shm.name.len;

    zone->shpool->log_ctx = ngx_slab_alloc(zone->shpool, len);
    if (zone->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(zone->shpool->log_ctx, " in llm_zone \"%V\"%Z",
                &shm_zone->shm.name);

    return NGX_OK;
}


/*
 * A backend's state (b NULL: its pool's), found by "pool/backend" or
 * made, and marked as this configuration's; under the zone's lock.
 * NULL, said in the log, when the zone has no room for it.
 */

static ngx_http_llm_backend_sh_t *
ngx_http_llm_zone_node(ngx_shm_zone_t *shm_zone, ngx_http_llm_pool_t *pool,
    ngx_http_llm_backend_t *b, ngx_uint_t gen)
{
    u_char                      key[512];
    uint32_t                    hash;
    ngx_str_t                   k, *name;
    ngx_http_llm_zone_t        *zone;
    ngx_http_llm_backend_sh_t  *node;

    static ngx_str_t  empty = ngx_null_string;

    zone = shm_zone->data;
    name = b ? &b->name : &empty;

    if (pool->name.len + name->len + 1 > sizeof(key)) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "llm backend name \"%V\" is too long", name);
        return NULL;
    }

    k.data = key;
    k.len = ngx_sprintf(key, "%V/%V", &pool->name, name) - key;

    hash = ngx_crc32_short(k.data, k.len);

    node = ngx_http_llm_lookup(zone, &k, hash);

    if (node == NULL) {
        node = ngx_slab_calloc_locked(zone->shpool,
                                      offsetof(ngx_http_llm_backend_sh_t, name)
                                      + k.len);
        if (node == NULL) {
            goto full;
        }

        node->node.key = hash;
        node->len = (u_short) k.len;
        ngx_memcpy(node->name, k.data, k.len);
        node->remote_tokens = -1;
        node->remote_requests = -1;

        ngx_rbtree_insert(&zone->sh->rbtree, &node->node);
        ngx_queue_insert_head(&zone->sh->queue, &node->queue);
    }

    node->generation = gen;

    if (b == NULL) {
        return node;
    }

    /* a backend's windows shared through Redis, under its name */

    if (zone->share_conf && node->share == NULL) {
        node->share = ngx_slab_calloc_locked(zone->shpool,
                                      sizeof(ngx_http_llm_backend_share_t));
        if (node->share == NULL) {
            goto full;
        }

        SHA256(k.data, k.len, node->share->digest);
    }

    if (node->share) {
        node->share->limit[NGX_HTTP_LLM_BUDGET_BACKEND_TOKENS] = b->tpm;
        node->share->limit[NGX_HTTP_LLM_BUDGET_BACKEND_REQUESTS] =
                                       b->rpm ? ngx_max(b->rpm / 6, 1) : 0;
    }

    return node;

full:

    ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                  "llm_zone \"%V\" is too small for its backends",
                  &shm_zone->shm.name);

    return NULL;
}


/*
 * The state of backends gone from the configuration is freed once no
 * worker of a configuration that had them is left: an old worker serves
 * its requests to their end, a stream maybe minutes long, through any
 * number of reloads, and settles each in its backend's state.  So the
 * state goes at the first reload after the last such worker exited.
 */

static ngx_uint_t
ngx_http_llm_zone_sweep(ngx_http_llm_zone_t *zone, ngx_uint_t gen)
{
    ngx_uint_t                  nfreed, oldest;
    ngx_queue_t                *q, *next;
    ngx_http_llm_backend_sh_t  *node;

    nfreed = 0;
    oldest = ngx_http_llm_zone_oldest(zone, gen);

    for (q = ngx_queue_head(&zone->sh->queue);
         q != ngx_queue_sentinel(&zone->sh->queue);
         q = next)
    {
        next = ngx_queue_next(q);
        node = ngx_queue_data(q, ngx_http_llm_backend_sh_t, queue);

        if (node->generation + 1 < gen && node->generation < oldest) {
            ngx_queue_remove(q);
            ngx_rbtree_delete(&zone->sh->rbtree, &node->node);

            if (node->share) {
                ngx_slab_free_locked(zone->shpool, node->share);
            }

            ngx_slab_free_locked(zone->shpool, node);
            nfreed++;
        }
    }

    return nfreed;
}


/*
 * The oldest generation a worker still runs, gen when none; under the
 * zone's lock, in the master.  A record whose process is gone (a worker
 * that crashed never leaves) is dropped on the way.  While a worker runs
 * without a record (the zone was full when it started), nothing is old
 * enough.
 */

static ngx_uint_t
ngx_http_llm_zone_oldest(ngx_http_llm_zone_t *zone, ngx_uint_t gen)
{
    ngx_uint_t                 oldest;
    ngx_queue_t               *q, *next;
    ngx_http_llm_worker_sh_t  *w;

    if (zone->sh->untracked) {
        return 0;
    }

    oldest = gen;

    for (q = ngx_queue_head(&zone->sh->workers);
         q != ngx_queue_sentinel(&zone->sh->workers);
         q = next)
    {
        next = ngx_queue_next(q);
        w = ngx_queue_data(q, ngx_http_llm_worker_sh_t, queue);

        if (kill(w->pid, 0) == -1 && ngx_errno == NGX_ESRCH) {
            ngx_queue_remove(q);
            ngx_slab_free_locked(zone->shpool, w);
            continue;
        }

        oldest = ngx_min(oldest, w->generation);
    }

    return oldest;
}


/*
 * A worker starts: its record in the zone, under its configuration's
 * generation, for the sweep to see.  A zone without room for it keeps
 * removed backends' state for good rather than free it under the worker.
 */

void
ngx_http_llm_zone_enter(ngx_http_llm_zone_t *zone, ngx_log_t *log)
{
    ngx_http_llm_worker_sh_t  *w;

    if (zone->entered) {
        return;
    }

    zone->entered = 1;

    ngx_shmtx_lock(&zone->shpool->mutex);

    w = ngx_slab_alloc_locked(zone->shpool, sizeof(ngx_http_llm_worker_sh_t));

    if (w == NULL) {
        zone->sh->untracked++;
        ngx_shmtx_unlock(&zone->shpool->mutex);

        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "llm_zone \"%V\" is full: the state of backends "
                      "removed from the configuration is kept",
                      &zone->name);
        return;
    }

    w->pid = ngx_pid;
    w->generation = zone->generation;
    ngx_queue_insert_tail(&zone->sh->workers, &w->queue);

    zone->worker = w;

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


/* a worker exits, its requests served and its reports sent */

void
ngx_http_llm_zone_leave(ngx_http_llm_zone_t *zone)
{
    if (!zone->entered) {
        return;
    }

    zone->entered = 0;

    ngx_shmtx_lock(&zone->shpool->mutex);

    if (zone->worker) {
        ngx_queue_remove(&zone->worker->queue);
        ngx_slab_free_locked(zone->shpool, zone->worker);
        zone->worker = NULL;

    } else {
        zone->sh->untracked--;
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


static void
ngx_http_llm_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t          **p;
    ngx_http_llm_backend_sh_t   *n, *t;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else {
            n = (ngx_http_llm_backend_sh_t *) node;
            t = (ngx_http_llm_backend_sh_t *) temp;

            p = (ngx_memn2cmp(n->name, t->name, n->len, t->len) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


static ngx_http_llm_backend_sh_t *
ngx_http_llm_lookup(ngx_http_llm_zone_t *zone, ngx_str_t *key, uint32_t hash)
{
    ngx_int_t                   rc;
    ngx_rbtree_node_t          *node, *sentinel;
    ngx_http_llm_backend_sh_t  *b;

    node = zone->sh->rbtree.root;
    sentinel = zone->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        b = (ngx_http_llm_backend_sh_t *) node;

        rc = ngx_memn2cmp(key->data, b->name, key->len, b->len);

        if (rc == 0) {
            return b;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


/*
 * What a backend's own limiter charges this request (README.md, "What
 * each backend is charged"): the prompt estimate plus the completion
 * reserve for every choice.  The reserve is the body's own limit, else
 * the backend's, else the location's.
 */

static ngx_uint_t
ngx_http_llm_charge_for(ngx_http_llm_ctx_t *ctx, ngx_http_llm_backend_t *b,
    ngx_uint_t location_reserve)
{
    ngx_uint_t  reserve;

    if (ctx == NULL || !ctx->parsed) {
        return 0;
    }

    if (ctx->embeddings) {
        reserve = 0;

    } else if (ctx->has_reserve) {
        reserve = ctx->explicit_reserve;

    } else if (b->reserve != NGX_CONF_UNSET_UINT) {
        reserve = b->reserve;

    } else {
        reserve = location_reserve;
    }

    /*
     * a Standard deployment charges its own character estimate; a PTU
     * one the real prompt tokens (or, without a vocabulary, our guess)
     */

    /* each part is bounded: the product cannot wrap, the sum is capped */

    return (ngx_uint_t)
           ngx_min((uint64_t) (b->ptu ? ctx->prompt_tokens
                                      : ctx->prompt_estimate)
                   + (uint64_t) ngx_min(reserve, NGX_HTTP_LLM_MAX_TOKENS)
                     * ctx->choices,
                   NGX_HTTP_LLM_MAX_CHARGE);
}


/*
 * The largest window of the pool for this request, and what the request
 * needs there: a request that needs more than every backend's whole
 * token window can never be admitted.  Returns 0 then.
 */

ngx_uint_t
ngx_http_llm_pool_fits(ngx_http_llm_pool_t *pool, ngx_http_llm_ctx_t *ctx,
    ngx_uint_t reserve, ngx_uint_t *need, ngx_uint_t *most)
{
    ngx_uint_t               i, charge;
    ngx_http_llm_backend_t  *b;

    b = pool->backends.elts;
    *need = 0;
    *most = 0;

    for (i = 0; i < pool->backends.nelts; i++) {

        if (b[i].tpm == 0) {
            return 1;
        }

        charge = ngx_http_llm_charge_for(ctx, &b[i], reserve);

        if (charge <= b[i].tpm) {
            return 1;
        }

        if (b[i].tpm > *most) {
            *most = b[i].tpm;
            *need = charge;
        }
    }

    return pool->backends.nelts == 0;
}


/*
 * With "llm_balance ... latency", backends of one priority are chosen by
 * room x weight / the reply's expected time: the backend's TTFT EWMA
 * plus the request's completion reserve at its tokens/s EWMA.  A backend
 * without samples, or whose last one is older than the window, is
 * expected at 0 ms: it is tried first, so a slow backend that recovered
 * is seen again.  Room still bounds everything: the fastest backend
 * takes the traffic until its windows fill.
 */

static ngx_uint_t
ngx_http_llm_latency(ngx_http_llm_pool_t *pool,
    ngx_http_llm_backend_sh_t *sh, ngx_http_llm_ctx_t *ctx, ngx_msec_t now)
{
    ngx_uint_t  ms;

    if (sh->ttft_ewma == 0 || now - sh->ewma_time > pool->window) {
        return 0;
    }

    ms = sh->ttft_ewma;

    if (sh->tps_ewma) {
        /* tps_ewma is tokens/s x 1000 */
        ms += ngx_min(ctx->reserve, NGX_HTTP_LLM_MAX_TOKENS) * 1000000
              / sh->tps_ewma;
    }

    return ms;
}


/*
 * The backend for a new attempt, charged atomically: lowest priority
 * number first; among equals the one with the most room left times its
 * weight.  Backends already tried, in cool-down, without room in either
 * window or without a usable address ("down") are passed over; *wait
 * gets the earliest time one of them (not the down ones) has room, or
 * NGX_MAX_INT32_VALUE when none is just waiting for room.
 */

ngx_http_llm_backend_t *
ngx_http_llm_choose(ngx_http_llm_pool_t *pool, ngx_http_llm_ctx_t *ctx,
    uintptr_t *tried, uintptr_t *down, ngx_uint_t reserve, ngx_msec_t *wait)
{
    int64_t                     credit;
    ngx_int_t                   lease;
    ngx_msec_t                  now, w;
    ngx_uint_t                  i, charge, best_charge, room, score,
                                best_score, word, bit, was_tried, shared,
                                missing, scale;
    ngx_slab_pool_t            *shpool;
    ngx_http_llm_zone_t        *zone;
    ngx_http_llm_backend_t     *b, *best;
    ngx_http_llm_backend_sh_t  *sh;

    zone = pool->shm_zone->data;
    shpool = zone->shpool;

    now = ngx_current_msec;
    best = NULL;
    best_score = 0;
    best_charge = 0;
    *wait = NGX_MAX_INT32_VALUE;

    b = pool->backends.elts;

    missing = 0;

    if (ngx_http_llm_choose_shared(zone, ctx, tried, now, &shared, &scale)
        == NGX_AGAIN)
    {
        *wait = 1;
        return NULL;
    }

    ngx_shmtx_lock(&shpool->mutex);

    for (i = 0; i < pool->backends.nelts; i++) {

        word = i / (8 * sizeof(uintptr_t));
        bit = i % (8 * sizeof(uintptr_t));

        /* a backend with no usable address tells nothing of room */

        if (down && (down[word] & ((uintptr_t) 1 << bit))) {
            continue;
        }

        was_tried = tried && (tried[word] & ((uintptr_t) 1 << bit));

        if (best && (was_tried || b[i].priority > best->priority)) {
            continue;
        }

        sh = b[i].sh;
        charge = ngx_http_llm_charge_for(ctx, &b[i], reserve);

        /*
         * a charge larger than the whole window never fits: Azure would
         * refuse it for ever, and waiting for room would not help
         */

        if (b[i].tpm && charge > b[i].tpm) {
            continue;
        }

        if ((ngx_msec_int_t) (sh->cooldown_until - now) > 0) {
            w = sh->cooldown_until - now;
            *wait = ngx_min(*wait, w);
            continue;
        }

        ngx_http_llm_windows_update(pool, sh, now);

        lease = NGX_DECLINED;
        credit = 0;
        w = 0;

        if (shared && sh->share) {
            lease = ngx_http_llm_backend_lease(zone, pool, sh, ctx, charge,
                                               tried == NULL, now, &w,
                                               &credit);

            if (lease == NGX_AGAIN) {
                missing = 1;
                continue;
            }

            if (lease == NGX_BUSY) {
                *wait = ngx_min(*wait, w);
                continue;
            }
        }

        w = ngx_http_llm_room(pool, &b[i], charge, lease == NGX_OK, credit,
                              scale, now, &room);

        if (w) {
            *wait = ngx_min(*wait, w);
            continue;
        }

        /* tried once already: only its cool-down or window counts */

        if (was_tried) {
            continue;
        }

        score = room * b[i].weight;

        if (pool->latency) {
            score = score * 1024 / (ngx_http_llm_latency(pool, sh, ctx, now)
                                    + 1);
        }

        if (best == NULL || b[i].priority < best->priority
            || score > best_score)
        {
            best = &b[i];
            best_score = score;
            best_charge = charge;
        }
    }

    if (best) {
        ngx_http_llm_take(zone, pool, best, ctx, best_charge, shared, now);

    } else if (missing && tried == NULL) {
        /* leases asked for: admission looks again in a moment */

        ctx->lease_wait = 1;
        *wait = 1;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return best;
}


/*
 * While a request waits for its consumers' leases, the backends' that it
 * will need are asked for too, so that a first request after a pause
 * waits one round trip to Redis, not two in turn.  It will need those of
 * the first priority it may go to: a lower one (a spill-over) only when
 * Redis said that all of the first are full.
 */

void
ngx_http_llm_choose_ahead(ngx_http_llm_pool_t *pool, ngx_http_llm_ctx_t *ctx,
    ngx_uint_t reserve)
{
    int64_t                     credit;
    ngx_int_t                   rc;
    ngx_msec_t                  now, w;
    ngx_uint_t                  i, charge, prio, next, done;
    ngx_http_llm_zone_t        *zone;
    ngx_http_llm_backend_t     *b;
    ngx_http_llm_backend_sh_t  *sh;

    zone = pool->shm_zone->data;

    if (zone->share == NULL || ctx->share_local
        || ngx_http_llm_share_state(zone->share) != NGX_HTTP_LLM_REDIS_READY)
    {
        return;
    }

    now = ngx_current_msec;
    b = pool->backends.elts;
    prio = 0;
    done = 0;

    ngx_shmtx_lock(&zone->shpool->mutex);

    /* the priorities in order, each pass its backends and the next one */

    do {
        next = NGX_MAX_UINT32_VALUE;

        for (i = 0; i < pool->backends.nelts; i++) {
            sh = b[i].sh;
            charge = ngx_http_llm_charge_for(ctx, &b[i], reserve);

            if (sh->share == NULL
                || b[i].priority < prio
                || (b[i].tpm && charge > b[i].tpm)
                || (ngx_msec_int_t) (sh->cooldown_until - now) > 0)
            {
                continue;
            }

            if (b[i].priority > prio) {
                next = ngx_min(next, b[i].priority);
                continue;
            }

            w = 0;

            rc = ngx_http_llm_backend_lease(zone, pool, sh, ctx, charge, 1,
                                            now, &w, &credit);

            if (rc == NGX_OK) {
                ngx_http_llm_backend_wanted(sh, now);
            }

            done |= (rc != NGX_BUSY);
        }

        prio = next;

    } while (!done && next != NGX_MAX_UINT32_VALUE);

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


/*
 * A zone shared through Redis admits on the backends' leases (see
 * ngx_http_llm_backend_share.c): *shared.  Admission (not a retry)
 * waits for the link while it connects, redis_timeout= at most
 * (NGX_AGAIN); without the link, each backend's limit is redis_share=
 * of itself: *scale, in percent.
 */

static ngx_int_t
ngx_http_llm_choose_shared(ngx_http_llm_zone_t *zone,
    ngx_http_llm_ctx_t *ctx, uintptr_t *tried, ngx_msec_t now,
    ngx_uint_t *shared, ngx_uint_t *scale)
{
    *shared = 0;
    *scale = 100;
    ctx->lease_wait = 0;

    if (zone->share == NULL) {
        return NGX_OK;
    }

    if (ngx_http_llm_share_gave_up(zone->share, ctx->share_since, now)) {
        ctx->share_local = 1;
    }

    if (!ctx->share_local) {
        switch (ngx_http_llm_share_state(zone->share)) {

        case NGX_HTTP_LLM_REDIS_READY:
            *shared = 1;
            break;

        case NGX_HTTP_LLM_REDIS_CONNECTING:
            if (tried == NULL) {
                ctx->lease_wait = 1;
                return NGX_AGAIN;
            }

            /* fall through */

        default:
            ctx->share_local = 1;
            (void) ngx_atomic_fetch_add(&zone->sh->share.degraded, 1);
        }
    }

    if (ctx->share_local) {
        *scale = zone->share_conf->share;
    }

    return NGX_OK;
}


/*
 * A backend's room for a charge, under the zone's lock: *room, and the
 * time until the charge fits (0: now) in its token window (or its
 * Redis lease, when it holds one), its request window, and what it said
 * of itself
 */

static ngx_msec_t
ngx_http_llm_room(ngx_http_llm_pool_t *pool, ngx_http_llm_backend_t *b,
    ngx_uint_t charge, ngx_uint_t leased, int64_t credit, ngx_uint_t scale,
    ngx_msec_t now, ngx_uint_t *room)
{
    ngx_msec_t                  w, wr;
    ngx_uint_t                  tpm, remote, per10s;
    ngx_http_llm_backend_sh_t  *sh;

    sh = b->sh;
    tpm = b->tpm ? ngx_max(b->tpm * scale / 100, 1) : 0;

    if (leased) {
        w = 0;
        *room = (credit > 0) ? (ngx_uint_t) credit : 0;

    } else if (tpm) {
        w = ngx_http_llm_window_wait(sh->tokens, NGX_HTTP_LLM_TOKEN_SLOTS,
                                     pool->token_slot_ms, sh->tokens_last,
                                     sh->tokens_sum, tpm, charge, now);
        *room = (sh->tokens_sum < tpm) ? tpm - sh->tokens_sum : 0;

    } else {
        w = 0;
        *room = NGX_HTTP_LLM_UNLIMITED;
    }

    /*
     * remote truth wins: what the backend said it had left a moment
     * ago, less what we charged it since, bounds our own view; other
     * nginx instances' traffic shows up only there
     */

    if (sh->remote_tokens > 0 && now - sh->remote_time < pool->remote_fresh)
    {
        remote = ((ngx_uint_t) sh->remote_tokens > sh->remote_charged)
                 ? sh->remote_tokens - sh->remote_charged : 0;

        if (charge > remote) {
            w = ngx_max(w, sh->remote_time + pool->remote_fresh - now);
        }

        *room = ngx_min(*room, remote);
    }

    if (b->rpm && !leased) {
        per10s = ngx_max(b->rpm * scale / 100 / 6, 1);
        wr = ngx_http_llm_window_wait(sh->requests_slot,
                                      NGX_HTTP_LLM_REQ_SLOTS,
                                      pool->request_slot_ms,
                                      sh->requests_last, sh->requests_sum,
                                      per10s, 1, now);
        w = ngx_max(w, wr);
    }

    return w;
}


/*
 * The chosen backend charged, under the zone's lock: both windows, its
 * counters, and the request's context, which owns the charge and the
 * in-flight count until its attempt ends
 */

static void
ngx_http_llm_take(ngx_http_llm_zone_t *zone, ngx_http_llm_pool_t *pool,
    ngx_http_llm_backend_t *b, ngx_http_llm_ctx_t *ctx, ngx_uint_t charge,
    ngx_uint_t shared, ngx_msec_t now)
{
    ngx_http_llm_backend_sh_t  *sh;

    sh = b->sh;

    ngx_http_llm_window_add(sh->tokens, NGX_HTTP_LLM_TOKEN_SLOTS,
                            pool->token_slot_ms, sh->tokens_last,
                            &sh->tokens_sum, charge, now);
    ngx_http_llm_window_add(sh->requests_slot, NGX_HTTP_LLM_REQ_SLOTS,
                            pool->request_slot_ms, sh->requests_last,
                            &sh->requests_sum, 1, now);
    sh->in_flight++;
    sh->requests++;
    sh->tokens_charged += charge;
    sh->remote_charged += charge;

    ctx->charged = charge;
    ctx->charged_at = now;
    ctx->held = 1;
    ctx->in_flight = 1;

    /* Redis hears of it with the next report, with or without it */

    if (sh->share && zone->share) {
        ngx_http_llm_backend_spend(zone, pool, sh, charge, 1, now, now);

        if (shared) {
            ngx_http_llm_backend_renew(zone, pool, sh, charge, now);
        }
    }
}


/* gives back a charge the backend did not make (a 429, a failed connect) */

void
ngx_http_llm_refund(ngx_http_llm_backend_t *b, ngx_http_llm_ctx_t *ctx)
{
    ngx_slab_pool_t            *shpool;
    ngx_http_llm_pool_t        *pool;
    ngx_http_llm_zone_t        *zone;
    ngx_http_llm_backend_sh_t  *sh;

    /* a charge is given back once: the request slot has no amount */

    if (!ctx->held) {
        return;
    }

    ctx->held = 0;

    pool = b->pool;
    zone = pool->shm_zone->data;
    shpool = zone->shpool;
    sh = b->sh;

    ngx_shmtx_lock(&shpool->mutex);

    ngx_http_llm_windows_update(pool, sh, ngx_current_msec);

    ngx_http_llm_window_remove(sh->tokens, NGX_HTTP_LLM_TOKEN_SLOTS,
                               pool->token_slot_ms, sh->tokens_last,
                               &sh->tokens_sum, ctx->charged,
                               ctx->charged_at);
    ngx_http_llm_window_remove(sh->requests_slot, NGX_HTTP_LLM_REQ_SLOTS,
                               pool->request_slot_ms, sh->requests_last,
                               &sh->requests_sum, 1, ctx->charged_at);

    sh->tokens_charged -= ngx_min(sh->tokens_charged, ctx->charged);

    if (sh->share && zone->share) {
        ngx_http_llm_backend_spend(zone, pool, sh, -(int64_t) ctx->charged,
                                   -1, ctx->charged_at, ngx_current_msec);
    }

    ngx_shmtx_unlock(&shpool->mutex);

    ctx->charged = 0;
}


/* the end of an attempt: cool-down, counters, the backend's own view */

void
ngx_http_llm_backend_done(ngx_http_llm_backend_t *b, ngx_http_llm_ctx_t *ctx,
    ngx_uint_t outcome, ngx_msec_t cooldown, ngx_http_llm_signals_t *sig)
{
    ngx_msec_t                  now;
    ngx_slab_pool_t            *shpool;
    ngx_http_llm_zone_t        *zone;
    ngx_http_llm_backend_sh_t  *sh;

    zone = b->pool->shm_zone->data;
    shpool = zone->shpool;
    sh = b->sh;
    now = ngx_current_msec;

    ngx_shmtx_lock(&shpool->mutex);

    if (ctx->in_flight) {
        ctx->in_flight = 0;

        if (sh->in_flight) {
            sh->in_flight--;
        }
    }

    switch (outcome) {

    case NGX_HTTP_LLM_DONE_THROTTLED:
        sh->backend_throttled++;

        if ((ngx_msec_int_t) (now + cooldown - sh->cooldown_until) > 0) {
            sh->cooldown_until = now + cooldown;
        }

        break;

    case NGX_HTTP_LLM_DONE_FAILED:
        sh->failures++;
        break;

    default:
        break;
    }

    if (sig && (sig->remote_tokens >= 0 || sig->remote_requests >= 0)) {
        sh->remote_tokens = sig->remote_tokens;
        sh->remote_requests = sig->remote_requests;
        sh->remote_time = now;
        sh->remote_charged = 0;
    }

    if (sig && sig->utilization >= 0) {
        sh->utilization = sig->utilization + 1;
        sh->utilization_time = now;
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


/* under the zone's lock */

void
ngx_http_llm_windows_update(ngx_http_llm_pool_t *pool,
    ngx_http_llm_backend_sh_t *sh, ngx_msec_t now)
{
    ngx_http_llm_window_advance(sh->tokens, NGX_HTTP_LLM_TOKEN_SLOTS,
                                pool->token_slot_ms, &sh->tokens_last,
                                &sh->tokens_sum, now);
    ngx_http_llm_window_advance(sh->requests_slot, NGX_HTTP_LLM_REQ_SLOTS,
                                pool->request_slot_ms, &sh->requests_last,
                                &sh->requests_sum, now);
}


void
ngx_http_llm_pool_count(ngx_http_llm_pool_t *pool, ngx_uint_t fallback)
{
    ngx_http_llm_zone_t  *zone;

    zone = pool->shm_zone->data;

    ngx_shmtx_lock(&zone->shpool->mutex);

    if (fallback) {
        pool->sh->fallbacks++;

    } else {
        pool->sh->local_throttled++;
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


/*
 * llm_hedge's counters and its max=: every request of a hedging location
 * earns "max" hundredths of a hedge and a hedge spends a whole one, with
 * at most ten saved, so that a quiet hour does not pay for a burst
 */

ngx_uint_t
ngx_http_llm_pool_hedge(ngx_http_llm_pool_t *pool, ngx_uint_t event,
    ngx_uint_t n)
{
    ngx_uint_t                  ok;
    ngx_http_llm_zone_t        *zone;
    ngx_http_llm_backend_sh_t  *sh;

    zone = pool->shm_zone->data;
    sh = pool->sh;
    ok = 0;

    ngx_shmtx_lock(&zone->shpool->mutex);

    switch (event) {

    case NGX_HTTP_LLM_HEDGE_EARN:
        sh->hedge_credit = ngx_min(sh->hedge_credit + n, 1000);
        break;

    case NGX_HTTP_LLM_HEDGE_SPEND:
        if (sh->hedge_credit >= 100) {
            sh->hedge_credit -= 100;
            ok = 1;
        }

        break;

    case NGX_HTTP_LLM_HEDGE_UNSPEND:
        sh->hedge_credit = ngx_min(sh->hedge_credit + 100, 1000);
        break;

    case NGX_HTTP_LLM_HEDGE_STARTED:
        sh->hedges++;
        break;

    case NGX_HTTP_LLM_HEDGE_WON:
        sh->hedges_won++;
        break;

    default: /* NGX_HTTP_LLM_HEDGE_CANCELLED */
        sh->hedges_cancelled++;
        sh->hedge_tokens += n;
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);

    return ok;
}


/* under the zone's lock */

void
ngx_http_llm_ttft_add(ngx_http_llm_backend_sh_t *sh, ngx_msec_t ms)
{
    sh->ttft_recent[sh->ttft_samples++ % NGX_HTTP_LLM_TTFT_RECENT] =
                                               (uint16_t) ngx_min(ms, 65535);
}


/*
 * An attempt cancelled before its first token: its time so far is the
 * least its first token would have taken, and leaving it out would make
 * the backend look faster than it is
 */

void
ngx_http_llm_backend_ttft(ngx_http_llm_backend_t *b, ngx_msec_t ms)
{
    ngx_http_llm_zone_t        *zone;
    ngx_http_llm_backend_sh_t  *sh;

    zone = b->pool->shm_zone->data;
    sh = b->sh;

    ngx_shmtx_lock(&zone->shpool->mutex);

    ngx_http_llm_ttft_add(sh, ms);

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


/*
 * llm_hedge after=auto: the 95th percentile of the backend's recent
 * first-token times, the fourth longest of the last 64; 0 until it has
 * 16, and again after a window without any
 */

ngx_msec_t
ngx_http_llm_backend_ttft_p95(ngx_http_llm_backend_t *b)
{
    ngx_uint_t                  i, j, n, k;
    ngx_msec_t                  now;
    uint16_t                    recent[NGX_HTTP_LLM_TTFT_RECENT], top[4], v;
    ngx_http_llm_zone_t        *zone;
    ngx_http_llm_backend_sh_t  *sh;

    zone = b->pool->shm_zone->data;
    sh = b->sh;
    now = ngx_current_msec;

    ngx_shmtx_lock(&zone->shpool->mutex);

    n = (now - sh->ewma_time > b->pool->window) ? 0 : sh->ttft_samples;
    n = ngx_min(n, NGX_HTTP_LLM_TTFT_RECENT);

    ngx_memcpy(recent, sh->ttft_recent, n * sizeof(uint16_t));

    ngx_shmtx_unlock(&zone->shpool->mutex);

    if (n < 16) {
        return 0;
    }

    /* the k longest, longest first: 5 % of the samples lie above */

    k = n / 20 + 1;

    for (j = 0; j < k; j++) {
        top[j] = 0;
    }

    for (i = 0; i < n; i++) {
        v = recent[i];

        for (j = k; j > 0 && top[j - 1] < v; j--) {
            if (j < k) {
                top[j] = top[j - 1];
            }
        }

        if (j < k) {
            top[j] = v;
        }
    }

    return top[k - 1];
}
