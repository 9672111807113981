
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_HEDGE_H_INCLUDED_
#define _NGX_HTTP_LLM_HEDGE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


char *ngx_http_llm_hedge_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
void ngx_http_llm_hedge_prepare(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_str_t *ngx_http_llm_hedge_outcome(ngx_http_llm_ctx_t *ctx);
ngx_uint_t ngx_http_llm_hedge_attempts(ngx_http_llm_ctx_t *ctx);


#endif /* _NGX_HTTP_LLM_HEDGE_H_INCLUDED_ */
