
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_ERROR_H_INCLUDED_
#define _NGX_HTTP_LLM_ERROR_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


ngx_int_t ngx_http_llm_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, ngx_str_t *message);
ngx_int_t ngx_http_llm_error_body(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, ngx_str_t *message, ngx_buf_t **out);


#endif /* _NGX_HTTP_LLM_ERROR_H_INCLUDED_ */
