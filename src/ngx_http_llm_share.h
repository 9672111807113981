
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_SHARE_H_INCLUDED_
#define _NGX_HTTP_LLM_SHARE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_redis.h"


/*
 * A budget shared by every nginx instance through Redis: see
 * ngx_http_llm_share.c.  It lives in the shared zone, next to the
 * budget's local window, with a ring of what this instance spent and has
 * not told Redis yet, one entry per slot of the window.
 */

/* a report whose reply was lost: its worker's link and its number */

typedef struct {
    uint64_t                     link;
    uint64_t                     seq;        /* 0: none */
} ngx_http_llm_doubt_t;


#define NGX_HTTP_LLM_DOUBTS  4

/*
 * a shared zone's name, at most: a budget's key, "llm:" name ":" 64 hex
 * digits ":q:" and a time, fits the budget's key[160]
 */
#define NGX_HTTP_LLM_SHARE_NAME_MAX  64

/* a request's wait for a link that answers, in redis_timeout= periods */
#define NGX_HTTP_LLM_SHARE_PATIENCE  10


typedef struct {
    int64_t                      credit;     /* may be spent here */
    ngx_msec_t                   expires;    /* when the credit lapses */
    ngx_msec_t                   used;       /* last spent from */
    int64_t                      last;       /* and how much */
    ngx_msec_t                   busy;       /* a reply awaited since */
    ngx_msec_t                   exhausted;  /* a reply gave less */
    ngx_msec_t                   refused;    /* an error of its key's */
    ngx_msec_t                   synced;     /* the last reply */
    int64_t                      spent;      /* by all, at that reply */
    int64_t                      leased;     /* held by all, idem */
    ngx_msec_t                   pending_last;  /* newest slot */
    ngx_http_llm_doubt_t         doubt[NGX_HTTP_LLM_DOUBTS];  /* newest 1st */
} ngx_http_llm_lease_t;


/* one zone's link to Redis, as the llm_zone line sets it */

typedef struct {
    ngx_http_llm_redis_conf_t    redis;
    ngx_msec_t                   sync;
    ngx_msec_t                   ttl;        /* of a lease in Redis */
    ngx_uint_t                   share;      /* percent, Redis away */
} ngx_http_llm_share_conf_t;


/* what every worker of the instance sees of it, in the zone */

typedef struct {
    uint64_t                     instance;
    ngx_msec_t                   next_sync;
    ngx_atomic_uint_t            replies;
    ngx_atomic_uint_t            errors;
    ngx_atomic_uint_t            lost;       /* reports without a reply */
    ngx_atomic_uint_t            degraded;   /* admissions without it */
    time_t                       last_ok;
    time_t                       last_error;
    ngx_msec_t                   lag;        /* of the last reply */
    u_char                       error[128];
} ngx_http_llm_share_sh_t;


/* a worker's side of one zone's link */

typedef struct {
    ngx_http_llm_share_conf_t   *conf;
    ngx_http_llm_share_sh_t     *sh;
    ngx_slab_pool_t             *shpool;
    ngx_str_t                    zone;       /* its name, in the keys */
    ngx_http_llm_redis_t        *redis;
    ngx_event_t                  timer;
    void                        *data;       /* the zone */
    uint64_t                     link;       /* this worker's, in Redis */
    uint64_t                     seq;        /* of its last report */
} ngx_http_llm_share_t;


/* the budget one request of a lease carries */

typedef struct {
    ngx_http_llm_lease_t        *lease;
    int64_t                     *ring;
    ngx_uint_t                   nslots;
    ngx_msec_t                   slot_ms;    /* 0: one period */
    int64_t                      limit;
    int64_t                      ask;        /* < 0: gives back */
    int64_t                      least;      /* a grant below: none */
    ngx_msec_t                   expire;     /* of the key, from now */
    u_char                       key[160];
    size_t                       key_len;
} ngx_http_llm_budget_t;


char *ngx_http_llm_share_option(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_llm_share_conf_t **scfp);
char *ngx_http_llm_share_conf_done(ngx_conf_t *cf,
    ngx_http_llm_share_conf_t *scf);
ngx_int_t ngx_http_llm_share_init(ngx_cycle_t *cycle,
    ngx_http_llm_share_t *share, ngx_event_handler_pt sync);
ngx_int_t ngx_http_llm_share_flush(ngx_http_llm_share_t *share);
void ngx_http_llm_share_exit(ngx_http_llm_share_t *share);
ngx_uint_t ngx_http_llm_share_state(ngx_http_llm_share_t *share);
ngx_uint_t ngx_http_llm_share_gave_up(ngx_http_llm_share_t *share,
    ngx_msec_t since, ngx_msec_t now);

ngx_uint_t ngx_http_llm_lease_ok(ngx_http_llm_lease_t *lease, int64_t need,
    ngx_msec_t now);
ngx_uint_t ngx_http_llm_lease_busy(ngx_http_llm_share_conf_t *scf,
    ngx_http_llm_lease_t *lease, ngx_msec_t now);
ngx_uint_t ngx_http_llm_lease_refused(ngx_http_llm_share_conf_t *scf,
    ngx_http_llm_lease_t *lease, ngx_msec_t now);
ngx_uint_t ngx_http_llm_lease_pending(ngx_http_llm_budget_t *b);
void ngx_http_llm_lease_spend(ngx_http_llm_budget_t *b, int64_t value,
    ngx_msec_t at, ngx_msec_t now);
int64_t ngx_http_llm_lease_want(ngx_http_llm_budget_t *b, int64_t need,
    ngx_msec_t now);
int64_t ngx_http_llm_lease_ahead(ngx_http_llm_budget_t *b, int64_t need,
    ngx_msec_t now);
int64_t ngx_http_llm_lease_renewal(ngx_http_llm_budget_t *b, ngx_msec_t now,
    ngx_msec_t ttl);
ngx_uint_t ngx_http_llm_lease_lapsing(ngx_http_llm_budget_t *b,
    ngx_msec_t now, ngx_msec_t ttl);
ngx_uint_t ngx_http_llm_share_claim(ngx_http_llm_share_t *share,
    ngx_msec_t now);
ngx_int_t ngx_http_llm_lease_send(ngx_http_llm_share_t *share,
    ngx_http_llm_budget_t *b, ngx_msec_t now);


#endif /* _NGX_HTTP_LLM_SHARE_H_INCLUDED_ */
