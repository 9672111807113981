
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_CONSUMER_H_INCLUDED_
#define _NGX_HTTP_LLM_CONSUMER_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


char *ngx_http_llm_limit(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_llm_consumers_charge(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_msec_t *wait);
void ngx_http_llm_consumers_refund(ngx_http_llm_ctx_t *ctx);
void ngx_http_llm_consumers_account(ngx_http_llm_ctx_t *ctx,
    ngx_uint_t status);
ngx_uint_t ngx_http_llm_consumers_top(ngx_shm_zone_t *shm_zone,
    ngx_http_llm_consumer_sh_t *top, ngx_http_llm_consumer_share_t *shares,
    ngx_uint_t n, ngx_uint_t *count, ngx_uint_t *evicted,
    ngx_http_llm_share_sh_t *share);
u_char *ngx_http_llm_consumer_id(u_char *p, u_char *digest);


#endif /* _NGX_HTTP_LLM_CONSUMER_H_INCLUDED_ */
