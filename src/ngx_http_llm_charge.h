
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_CHARGE_H_INCLUDED_
#define _NGX_HTTP_LLM_CHARGE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


ngx_int_t ngx_http_llm_charge_own(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
void ngx_http_llm_charge_adopt(ngx_http_request_t *r);
void ngx_http_llm_charge_settle(ngx_http_llm_ctx_t *ctx, ngx_uint_t status);
ngx_int_t ngx_http_llm_log_handler(ngx_http_request_t *r);


#endif /* _NGX_HTTP_LLM_CHARGE_H_INCLUDED_ */
