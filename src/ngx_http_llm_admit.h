
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_ADMIT_H_INCLUDED_
#define _NGX_HTTP_LLM_ADMIT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


ngx_int_t ngx_http_llm_admit(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx);
ngx_int_t ngx_http_llm_throttled_response(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_buf_t **out);


#endif /* _NGX_HTTP_LLM_ADMIT_H_INCLUDED_ */
