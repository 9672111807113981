
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_CONSUMER_SHARE_H_INCLUDED_
#define _NGX_HTTP_LLM_CONSUMER_SHARE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


ngx_uint_t ngx_http_llm_consumers_sync(ngx_http_llm_zone_t *zone,
    ngx_msec_t now, ngx_uint_t final);
void ngx_http_llm_consumer_limits(ngx_http_llm_consumer_share_t *share,
    ngx_http_llm_limit_t *limit, ngx_uint_t first);
ngx_uint_t ngx_http_llm_consumers_lease(ngx_http_llm_zone_t *zone,
    ngx_http_llm_ctx_t *ctx, ngx_uint_t need, ngx_uint_t cost,
    ngx_msec_t now, ngx_msec_t *wait);
ngx_int_t ngx_http_llm_consumer_lease(ngx_http_llm_zone_t *zone,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_consumer_sh_t *cs,
    ngx_uint_t need, ngx_uint_t cost, ngx_uint_t renew, ngx_msec_t now,
    ngx_msec_t *wait, ngx_uint_t *kind);
void ngx_http_llm_consumer_spend(ngx_http_llm_zone_t *zone,
    ngx_http_llm_consumer_sh_t *cs, ngx_uint_t k, int64_t value,
    ngx_msec_t at, ngx_msec_t now);
ngx_uint_t ngx_http_llm_consumer_busy(ngx_http_llm_zone_t *zone,
    ngx_http_llm_consumer_sh_t *cs, ngx_msec_t now);


#endif /* _NGX_HTTP_LLM_CONSUMER_SHARE_H_INCLUDED_ */
