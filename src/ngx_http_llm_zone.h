
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_ZONE_H_INCLUDED_
#define _NGX_HTTP_LLM_ZONE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


char *ngx_http_llm_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_llm_zone_add_pool(ngx_conf_t *cf, ngx_shm_zone_t *zone,
    ngx_http_llm_pool_t *pool);
void ngx_http_llm_zone_enter(ngx_http_llm_zone_t *zone, ngx_log_t *log);
void ngx_http_llm_zone_leave(ngx_http_llm_zone_t *zone);
ngx_uint_t ngx_http_llm_pool_fits(ngx_http_llm_pool_t *pool,
    ngx_http_llm_ctx_t *ctx, ngx_uint_t reserve, ngx_uint_t *need,
    ngx_uint_t *most);
ngx_http_llm_backend_t *ngx_http_llm_choose(ngx_http_llm_pool_t *pool,
    ngx_http_llm_ctx_t *ctx, uintptr_t *tried, uintptr_t *down,
    ngx_uint_t reserve, ngx_msec_t *wait);
void ngx_http_llm_choose_ahead(ngx_http_llm_pool_t *pool,
    ngx_http_llm_ctx_t *ctx, ngx_uint_t reserve);
void ngx_http_llm_refund(ngx_http_llm_backend_t *b, ngx_http_llm_ctx_t *ctx);
void ngx_http_llm_backend_done(ngx_http_llm_backend_t *b,
    ngx_http_llm_ctx_t *ctx, ngx_uint_t outcome, ngx_msec_t cooldown,
    ngx_http_llm_signals_t *sig);
void ngx_http_llm_pool_count(ngx_http_llm_pool_t *pool,
    ngx_uint_t fallback);
ngx_uint_t ngx_http_llm_pool_hedge(ngx_http_llm_pool_t *pool,
    ngx_uint_t event, ngx_uint_t n);
void ngx_http_llm_ttft_add(ngx_http_llm_backend_sh_t *sh, ngx_msec_t ms);
void ngx_http_llm_backend_ttft(ngx_http_llm_backend_t *b, ngx_msec_t ms);
ngx_msec_t ngx_http_llm_backend_ttft_p95(ngx_http_llm_backend_t *b);
void ngx_http_llm_windows_update(ngx_http_llm_pool_t *pool,
    ngx_http_llm_backend_sh_t *sh, ngx_msec_t now);


#endif /* _NGX_HTTP_LLM_ZONE_H_INCLUDED_ */
