
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_backend_share.h"
#include "ngx_http_llm_charge.h"
#include "ngx_http_llm_consumer.h"
#include "ngx_http_llm_consumer_share.h"
#include "ngx_http_llm_hedge.h"
#include "ngx_http_llm_identity.h"
#include "ngx_http_llm_identity_conf.h"
#include "ngx_http_llm_json.h"
#include "ngx_http_llm_price.h"
#include "ngx_http_llm_request.h"
#include "ngx_http_llm_status.h"
#include "ngx_http_llm_threads.h"
#include "ngx_http_llm_upstream.h"
#include "ngx_http_llm_variables.h"
#include "ngx_http_llm_vocab.h"
#include "ngx_http_llm_walk.h"
#include "ngx_http_llm_zone.h"


static ngx_int_t ngx_http_llm_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_llm_init(ngx_conf_t *cf);
static void *ngx_http_llm_create_main_conf(ngx_conf_t *cf);
static ngx_int_t ngx_http_llm_init_process(ngx_cycle_t *cycle);
static void ngx_http_llm_exit_process(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_llm_zone_share(ngx_cycle_t *cycle,
    ngx_http_llm_zone_t *zone);
static void ngx_http_llm_zone_sync(ngx_event_t *ev);
static void *ngx_http_llm_create_srv_conf(ngx_conf_t *cf);
static void *ngx_http_llm_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_llm_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_llm_route(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_http_upstream_srv_conf_t *ngx_http_llm_route_ref(ngx_conf_t *cf,
    ngx_str_t *name);
static char *ngx_http_llm_wait(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


static ngx_conf_enum_t  ngx_http_llm_count_modes[] = {
    { ngx_string("exact"), NGX_HTTP_LLM_COUNT_EXACT },
    { ngx_string("estimate"), NGX_HTTP_LLM_COUNT_ESTIMATE },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_llm_encodings[] = {
    { ngx_string("auto"), NGX_HTTP_LLM_ENC_UNKNOWN },
    { ngx_string("o200k_base"), NGX_HTTP_LLM_ENC_O200K },
    { ngx_string("cl100k_base"), NGX_HTTP_LLM_ENC_CL100K },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_llm_commands[] = {

    { ngx_string("llm_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_llm_zone,
      0,
      0,
      NULL },

    { ngx_string("llm_tokenizer"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE2,
      ngx_http_llm_tokenizer,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_count"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, count),
      &ngx_http_llm_count_modes },

    { ngx_string("llm_encoding"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, encoding),
      &ngx_http_llm_encodings },

    { ngx_string("llm_balance"),
      NGX_HTTP_UPS_CONF|NGX_CONF_1MORE,
      ngx_http_llm_balance,
      NGX_HTTP_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_backend"),
      NGX_HTTP_UPS_CONF|NGX_CONF_2MORE,
      ngx_http_llm_backend,
      NGX_HTTP_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_route"),
      NGX_HTTP_LOC_CONF|NGX_CONF_ANY,
      ngx_http_llm_route,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_image_tokens"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, image_tokens),
      NULL },

    { ngx_string("llm_wait"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_llm_wait,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_2MORE,
      ngx_http_llm_limit,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS|NGX_CONF_TAKE1,
      ngx_http_llm_status,
      0,
      0,
      NULL },

    { ngx_string("llm_count_threads"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_llm_count_threads,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_max_body_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, max_body_size),
      NULL },

    { ngx_string("llm_completion_reserve"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, completion_reserve),
      NULL },

    { ngx_string("llm_count_cache"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, count_cache),
      NULL },

    { ngx_string("llm_body_walk"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, body_walk),
      NULL },

    { ngx_string("llm_price"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_llm_price,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_identity"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_llm_identity,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_hedge"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_llm_hedge_conf,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_stream_usage"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, stream_usage),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_llm_module_ctx = {
    ngx_http_llm_preconfiguration,         /* preconfiguration */
    ngx_http_llm_init,                     /* postconfiguration */

    ngx_http_llm_create_main_conf,         /* create main configuration */
    NULL,                                  /* init main configuration */

    ngx_http_llm_create_srv_conf,          /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_llm_create_loc_conf,          /* create location configuration */
    ngx_http_llm_merge_loc_conf            /* merge location configuration */
};


ngx_module_t  ngx_http_llm_module = {
    NGX_MODULE_V1,
    &ngx_http_llm_module_ctx,              /* module context */
    ngx_http_llm_commands,                 /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_llm_init_process,             /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_llm_exit_process,             /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_llm_preconfiguration(ngx_conf_t *cf)
{
    return ngx_http_llm_add_variables(cf);
}


static ngx_int_t
ngx_http_llm_init(ngx_conf_t *cf)
{
    ngx_uint_t                 i;
    ngx_http_handler_pt       *h;
    ngx_http_llm_pool_t       *pool, **pools;
    ngx_http_llm_route_ref_t  *ref;
    ngx_http_llm_main_conf_t  *lmcf;
    ngx_http_core_main_conf_t *cmcf;

    /* every upstream that llm_route names is now known */

    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);
    ref = lmcf->routes.elts;

    for (i = 0; i < lmcf->routes.nelts; i++) {
        pool = ref[i].upstream->srv_conf
               ? ngx_http_llm_pool_of(ref[i].upstream) : NULL;

        if (pool == NULL || !pool->balance) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"llm_route\" names upstream \"%V\" that has no "
                          "\"llm_balance\" in %s:%ui", &ref[i].name,
                          ref[i].file, ref[i].line);
            return NGX_ERROR;
        }
    }

    pools = lmcf->pools.elts;

    for (i = 0; i < lmcf->pools.nelts; i++) {
        if (ngx_http_llm_pool_check(cf, pools[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (ngx_http_llm_identities_init(cf, lmcf) != NGX_CONF_OK) {
        return NGX_ERROR;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    /*
     * precontent, where the mirror module reads the body: after every
     * access module (deny, auth_basic, auth_request, limit_req, ...)
     * has let the request through, so that a refused client never
     * reads, counts or charges anything; before proxying
     */

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_llm_request_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_llm_log_handler;

    return NGX_OK;
}


static void *
ngx_http_llm_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_llm_main_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_main_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&conf->routes, cf->pool, 4,
                       sizeof(ngx_http_llm_route_ref_t))
        != NGX_OK)
    {
        return NULL;
    }

    if (ngx_array_init(&conf->pools, cf->pool, 4,
                       sizeof(ngx_http_llm_pool_t *))
        != NGX_OK)
    {
        return NULL;
    }

    if (ngx_array_init(&conf->identities, cf->pool, 1,
                       sizeof(ngx_http_llm_identity_t *))
        != NGX_OK)
    {
        return NULL;
    }

    return conf;
}


/*
 * In each worker: cJSON's hooks and the guess's tables, before any
 * thread reads a body; its own repeat cache, only where a vocabulary
 * counts
 */

static ngx_int_t
ngx_http_llm_init_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                  i;
    ngx_http_llm_pool_t       **pools;
    ngx_http_llm_zone_t        *zone;
    ngx_http_llm_main_conf_t   *lmcf;

    lmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_llm_module);

    ngx_http_llm_json_init();
    ngx_http_llm_guess_prepare();
    ngx_http_llm_walk_prepare();

    /* each zone shared through Redis: this worker's connection to it */

    if (lmcf && (ngx_process == NGX_PROCESS_WORKER
                 || ngx_process == NGX_PROCESS_SINGLE))
    {
        /* and the Entra ID tokens its backends need */

        if (ngx_http_llm_identities_start(cycle, lmcf) != NGX_OK) {
            return NGX_ERROR;
        }

        pools = lmcf->pools.elts;

        for (i = 0; i < lmcf->pools.nelts; i++) {
            zone = pools[i]->shm_zone->data;

            /* the zone's backends' state is in use until this one exits */

            ngx_http_llm_zone_enter(zone, cycle->log);

            if (zone->share_conf && zone->share == NULL
                && ngx_http_llm_zone_share(cycle, zone) != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    if (lmcf == NULL
        || (lmcf->vocab[NGX_HTTP_LLM_ENC_O200K] == NULL
            && lmcf->vocab[NGX_HTTP_LLM_ENC_CL100K] == NULL))
    {
        return NGX_OK;
    }

    return ngx_http_llm_count_cache_init(cycle);
}


/* a zone shared through Redis: this worker's link, and its reports */

static ngx_int_t
ngx_http_llm_zone_share(ngx_cycle_t *cycle, ngx_http_llm_zone_t *zone)
{
    ngx_http_llm_share_t  *share;

    share = ngx_pcalloc(cycle->pool, sizeof(ngx_http_llm_share_t));
    if (share == NULL) {
        return NGX_ERROR;
    }

    share->conf = zone->share_conf;
    share->sh = &zone->sh->share;
    share->shpool = zone->shpool;
    share->zone = zone->name;
    share->data = zone;

    zone->share = share;

    return ngx_http_llm_share_init(cycle, share, ngx_http_llm_zone_sync);
}


static void
ngx_http_llm_zone_sync(ngx_event_t *ev)
{
    ngx_http_llm_share_t  *share = ev->data;

    ngx_msec_t            now;
    ngx_http_llm_zone_t  *zone;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ngx_add_timer(ev, share->conf->sync);

    zone = share->data;
    now = ngx_current_msec;

    if (ngx_http_llm_share_state(share) != NGX_HTTP_LLM_REDIS_READY
        || !ngx_http_llm_share_claim(share, now))
    {
        return;
    }

    ngx_http_llm_backends_sync(zone, now, 0);
    ngx_http_llm_consumers_sync(zone, now, 0);
}


/* what Redis has not heard yet of a zone's budgets, before the end */

static void
ngx_http_llm_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                  i, n;
    ngx_http_llm_pool_t       **pools;
    ngx_http_llm_zone_t        *zone;
    ngx_http_llm_main_conf_t   *lmcf;

    lmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_llm_module);

    if (lmcf == NULL) {
        return;
    }

    ngx_http_llm_identities_stop(lmcf);

    pools = lmcf->pools.elts;

    for (i = 0; i < lmcf->pools.nelts; i++) {
        zone = pools[i]->shm_zone->data;

        if (zone->share) {

            /* as many passes as the link needs, each with its replies */

            for (n = 0; n < 64; n++) {
                ngx_time_update();

                if (!ngx_http_llm_backends_sync(zone, ngx_current_msec, 1)
                    && !ngx_http_llm_consumers_sync(zone, ngx_current_msec,
                                                    1))
                {
                    break;
                }

                if (ngx_http_llm_share_flush(zone->share) != NGX_OK) {
                    break;
                }
            }

            ngx_http_llm_share_exit(zone->share);

            /* pools of one zone: once */
            zone->share = NULL;
        }
    }

    /* the reports went: the backends' state is no longer this one's */

    for (i = 0; i < lmcf->pools.nelts; i++) {
        ngx_http_llm_zone_leave(pools[i]->shm_zone->data);
    }
}


/* server blocks get one too, unused; upstream blocks hold a pool in it */

static void *
ngx_http_llm_create_srv_conf(ngx_conf_t *cf)
{
    ngx_http_llm_pool_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_pool_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->shm_zone = NULL;
     *     conf->balance = 0;
     */

    conf->cooldown = NGX_CONF_UNSET_MSEC;
    conf->cooldown_max = NGX_CONF_UNSET_MSEC;
    conf->window = NGX_CONF_UNSET_MSEC;
    conf->keepalive_timeout = NGX_CONF_UNSET_MSEC;
    conf->keepalive_requests = NGX_CONF_UNSET_UINT;

    if (ngx_array_init(&conf->backends, cf->pool, 4,
                       sizeof(ngx_http_llm_backend_t))
        != NGX_OK)
    {
        return NULL;
    }

    return conf;
}


static void *
ngx_http_llm_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_llm_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->route = NGX_CONF_UNSET;
    conf->upstream = NGX_CONF_UNSET_PTR;
    conf->fallbacks = NGX_CONF_UNSET_PTR;
    conf->max_body_size = NGX_CONF_UNSET_SIZE;
    conf->threads = NGX_CONF_UNSET;
    conf->thread_min = NGX_CONF_UNSET_SIZE;
    conf->completion_reserve = NGX_CONF_UNSET_UINT;
    conf->count = NGX_CONF_UNSET_UINT;
    conf->wait = NGX_CONF_UNSET_MSEC;
    conf->wait_queue = NGX_CONF_UNSET_UINT;
    conf->image_tokens = NGX_CONF_UNSET_UINT;
    conf->encoding = NGX_CONF_UNSET_UINT;
    conf->stream_usage = NGX_CONF_UNSET;
    conf->hedge_after = NGX_CONF_UNSET_MSEC;
    conf->hedge_max = NGX_CONF_UNSET_UINT;
    conf->count_cache = NGX_CONF_UNSET;
    conf->body_walk = NGX_CONF_UNSET;
    conf->status_consumers = NGX_CONF_UNSET_UINT;

    /*
     * set by ngx_pcalloc():
     *
     *     conf->limits = NULL;
     */

    return conf;
}


static char *
ngx_http_llm_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_llm_loc_conf_t *prev = parent;
    ngx_http_llm_loc_conf_t *conf = child;

    ngx_conf_merge_value(conf->route, prev->route, 0);
    ngx_conf_merge_ptr_value(conf->upstream, prev->upstream, NULL);
    ngx_conf_merge_ptr_value(conf->fallbacks, prev->fallbacks, NULL);
    ngx_conf_merge_size_value(conf->max_body_size, prev->max_body_size,
                              8 * 1024 * 1024);

    /*
     * Azure charges about 640 tokens of completion when a chat request
     * names no max_tokens (docs/azure.md section 1)
     */

    ngx_conf_merge_uint_value(conf->completion_reserve,
                              prev->completion_reserve, 640);

    ngx_conf_merge_uint_value(conf->count, prev->count,
                              NGX_HTTP_LLM_COUNT_EXACT);
    ngx_conf_merge_value(conf->stream_usage, prev->stream_usage, 0);
    ngx_conf_merge_msec_value(conf->hedge_after, prev->hedge_after, 0);
    ngx_conf_merge_uint_value(conf->hedge_max, prev->hedge_max, 10);
    ngx_conf_merge_value(conf->count_cache, prev->count_cache, 1);
    ngx_conf_merge_value(conf->body_walk, prev->body_walk, 1);
    ngx_conf_merge_msec_value(conf->wait, prev->wait, 0);
    ngx_conf_merge_uint_value(conf->wait_queue, prev->wait_queue, 100);

    /* llm_limit lines of an outer level only where a level has none */

    if (conf->limits == NULL) {
        conf->limits = prev->limits;
    }

    ngx_conf_merge_uint_value(conf->status_consumers,
                              prev->status_consumers, 10);

    /* a 1024 x 1024 image at high detail for gpt-4o: 4 tiles + base */

    ngx_conf_merge_uint_value(conf->image_tokens, prev->image_tokens, 765);
    ngx_conf_merge_uint_value(conf->encoding, prev->encoding,
                              NGX_HTTP_LLM_ENC_UNKNOWN);

    if (ngx_http_llm_threads_merge(cf, conf, prev) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (conf->completion_reserve > NGX_HTTP_LLM_MAX_TOKENS) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"llm_completion_reserve\" must not exceed %d",
                           NGX_HTTP_LLM_MAX_TOKENS);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * llm_route [pool [fallback=pool ...]]; each upstream block may come
 * later in the configuration: ngx_http_llm_init() checks them all
 */

static char *
ngx_http_llm_route(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_str_t                      *value, name;
    ngx_uint_t                      i, j;
    ngx_http_upstream_srv_conf_t  **fb;

    if (llcf->route != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    llcf->route = 1;
    llcf->upstream = NULL;
    llcf->fallbacks = NULL;

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (i == 1) {
            if (ngx_strncmp(value[i].data, "fallback=", 9) == 0) {
                return "needs a pool before \"fallback=\"";
            }

            llcf->upstream = ngx_http_llm_route_ref(cf, &value[i]);
            if (llcf->upstream == NULL) {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (value[i].len <= 9
            || ngx_strncmp(value[i].data, "fallback=", 9) != 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[i]);
            return NGX_CONF_ERROR;
        }

        name.data = value[i].data + 9;
        name.len = value[i].len - 9;

        if (llcf->fallbacks == NULL) {
            llcf->fallbacks = ngx_array_create(cf->pool, 2,
                                     sizeof(ngx_http_upstream_srv_conf_t *));
            if (llcf->fallbacks == NULL) {
                return NGX_CONF_ERROR;
            }
        }

        fb = ngx_array_push(llcf->fallbacks);
        if (fb == NULL) {
            return NGX_CONF_ERROR;
        }

        *fb = ngx_http_llm_route_ref(cf, &name);
        if (*fb == NULL) {
            return NGX_CONF_ERROR;
        }

        /* each pool of the chain once: a loop would try one twice */

        if (*fb == llcf->upstream) {
            return "names its own pool as a fallback";
        }

        for (j = 0; j + 1 < llcf->fallbacks->nelts; j++) {
            if (((ngx_http_upstream_srv_conf_t **)
                 llcf->fallbacks->elts)[j] == *fb)
            {
                return "names a fallback twice";
            }
        }
    }

    return NGX_CONF_OK;
}


static ngx_http_upstream_srv_conf_t *
ngx_http_llm_route_ref(ngx_conf_t *cf, ngx_str_t *name)
{
    ngx_url_t                      u;
    ngx_http_llm_route_ref_t      *ref;
    ngx_http_llm_main_conf_t      *lmcf;
    ngx_http_upstream_srv_conf_t  *uscf;

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = *name;
    u.no_resolve = 1;

    uscf = ngx_http_upstream_add(cf, &u, 0);
    if (uscf == NULL) {
        return NULL;
    }

    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);

    ref = ngx_array_push(&lmcf->routes);
    if (ref == NULL) {
        return NULL;
    }

    ref->upstream = uscf;
    ref->name = *name;
    ref->file = cf->conf_file->file.name.data;
    ref->line = cf->conf_file->line;

    return uscf;
}


/* llm_wait time [queue=number]; */

static char *
ngx_http_llm_wait(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_int_t   n;
    ngx_str_t  *value;

    if (llcf->wait != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;

    llcf->wait = ngx_parse_time(&value[1], 0);
    if (llcf->wait == (ngx_msec_t) NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (cf->args->nelts == 3) {
        if (ngx_strncmp(value[2].data, "queue=", 6) != 0) {
            goto invalid;
        }

        n = ngx_atoi(value[2].data + 6, value[2].len - 6);
        if (n == NGX_ERROR || n == 0) {
            goto invalid;
        }

        llcf->wait_queue = n;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[2]);

    return NGX_CONF_ERROR;
}
