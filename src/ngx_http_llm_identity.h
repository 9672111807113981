
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_IDENTITY_H_INCLUDED_
#define _NGX_HTTP_LLM_IDENTITY_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_fetch.h"


#define NGX_HTTP_LLM_IDENTITY_IMDS         0
#define NGX_HTTP_LLM_IDENTITY_APP_SERVICE  1
#define NGX_HTTP_LLM_IDENTITY_WORKLOAD     2

#define NGX_HTTP_LLM_TOKEN_MAX             16384
#define NGX_HTTP_LLM_IDENTITY_BACKOFF      30000   /* the longest, in ms */
#define NGX_HTTP_LLM_IDENTITY_LIFE_MAX     86400   /* a token's, in s */
#define NGX_HTTP_LLM_IDENTITY_ERROR        160


/* one identity's token, in the zone; the zone's lock guards it */

typedef struct {
    uint32_t                     hash;       /* of the identity's lines */
    ngx_uint_t                   version;    /* changes with the token */
    time_t                       expires;
    time_t                       refresh;    /* fetch again from then */
    ngx_msec_t                   lease;      /* a worker fetches until */
    ngx_msec_t                   next;       /* no attempt before */
    ngx_uint_t                   failures;   /* in a row */
    ngx_uint_t                   fetched;
    ngx_uint_t                   failed;
    ngx_uint_t                   tried;      /* an attempt ended */
    size_t                       len;
    u_char                       error[NGX_HTTP_LLM_IDENTITY_ERROR];
    u_char                       token[NGX_HTTP_LLM_TOKEN_MAX];
} ngx_http_llm_identity_sh_t;


struct ngx_http_llm_identity_s {
    ngx_str_t                    name;
    ngx_uint_t                   source;
    ngx_str_t                    client_id;
    ngx_str_t                    resource;
    ngx_str_t                    tenant;
    ngx_str_t                    header;     /* App Service's secret */
    ngx_str_t                    endpoint;
    ngx_str_t                    trusted;
    ngx_http_llm_secret_t        assertion;  /* workload identity's file */
    ngx_url_t                    url;
    ngx_str_t                    request;    /* or its head, with a form */
    ngx_str_t                    form;       /* before the assertion */
    ngx_msec_t                   timeout;
    uint32_t                     hash;
    ngx_uint_t                   used;       /* a backend names it */

    ngx_http_llm_identity_sh_t  *sh;
    ngx_slab_pool_t             *shpool;

    /* this worker's */
    ngx_event_t                  tick;
    ngx_http_llm_fetch_t         fetch;
    ngx_uint_t                   fetching;
    ngx_uint_t                   version;
    ngx_str_t                    value;      /* "Bearer <token>" */
    time_t                       expires;
};


extern ngx_str_t  ngx_http_llm_identity_sources[];


ngx_int_t ngx_http_llm_identity_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
u_char *ngx_http_llm_identity_encode(u_char *p, ngx_str_t *s);
size_t ngx_http_llm_identity_encoded(ngx_str_t *s);
ngx_int_t ngx_http_llm_identities_start(ngx_cycle_t *cycle,
    ngx_http_llm_main_conf_t *lmcf);
void ngx_http_llm_identities_stop(ngx_http_llm_main_conf_t *lmcf);
ngx_int_t ngx_http_llm_identity_token(ngx_http_llm_identity_t *id,
    ngx_str_t *value);

size_t ngx_http_llm_identities_size(ngx_http_llm_main_conf_t *lmcf);
u_char *ngx_http_llm_identities_json(u_char *p,
    ngx_http_llm_main_conf_t *lmcf);
u_char *ngx_http_llm_identities_prometheus(u_char *p,
    ngx_http_llm_main_conf_t *lmcf);


#endif /* _NGX_HTTP_LLM_IDENTITY_H_INCLUDED_ */
