
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_PRICE_H_INCLUDED_
#define _NGX_HTTP_LLM_PRICE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


/* room for a cost printed: 20 digits, a point and 9 decimals */
#define NGX_HTTP_LLM_COST_LEN  (NGX_ATOMIC_T_LEN + 10)


char *ngx_http_llm_price(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_llm_cost(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_uint_t *nano);
ngx_uint_t ngx_http_llm_cost_estimate(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
u_char *ngx_http_llm_cost_print(u_char *p, ngx_uint_t nano);


#endif /* _NGX_HTTP_LLM_PRICE_H_INCLUDED_ */
