
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_STREAM_H_INCLUDED_
#define _NGX_HTTP_LLM_STREAM_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


ngx_int_t ngx_http_llm_inject_usage(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_chain_t *ngx_http_llm_body_chain(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *model, off_t *len);
ngx_int_t ngx_http_llm_strip(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_chain_t *in, ngx_chain_t **out);


#endif /* _NGX_HTTP_LLM_STREAM_H_INCLUDED_ */
