
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_CACHE_KEY_H_INCLUDED_
#define _NGX_HTTP_LLM_CACHE_KEY_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


ngx_int_t ngx_http_llm_cache_key(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *key);


#endif /* _NGX_HTTP_LLM_CACHE_KEY_H_INCLUDED_ */
