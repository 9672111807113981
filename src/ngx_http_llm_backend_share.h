
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_BACKEND_SHARE_H_INCLUDED_
#define _NGX_HTTP_LLM_BACKEND_SHARE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


ngx_uint_t ngx_http_llm_backends_sync(ngx_http_llm_zone_t *zone,
    ngx_msec_t now, ngx_uint_t final);
ngx_int_t ngx_http_llm_backend_lease(ngx_http_llm_zone_t *zone,
    ngx_http_llm_pool_t *pool, ngx_http_llm_backend_sh_t *sh,
    ngx_http_llm_ctx_t *ctx, ngx_uint_t charge, ngx_uint_t can_wait,
    ngx_msec_t now, ngx_msec_t *wait, int64_t *credit);
void ngx_http_llm_backend_wanted(ngx_http_llm_backend_sh_t *sh,
    ngx_msec_t now);
void ngx_http_llm_backend_spend(ngx_http_llm_zone_t *zone,
    ngx_http_llm_pool_t *pool, ngx_http_llm_backend_sh_t *sh,
    int64_t tokens, int64_t requests, ngx_msec_t at, ngx_msec_t now);
void ngx_http_llm_backend_renew(ngx_http_llm_zone_t *zone,
    ngx_http_llm_pool_t *pool, ngx_http_llm_backend_sh_t *sh,
    ngx_uint_t charge, ngx_msec_t now);


#endif /* _NGX_HTTP_LLM_BACKEND_SHARE_H_INCLUDED_ */
