
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_IMAGE_H_INCLUDED_
#define _NGX_HTTP_LLM_IMAGE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


ngx_uint_t ngx_http_llm_image_tokens(ngx_pool_t *pool, const char *url,
    const char *detail, ngx_uint_t mini, ngx_uint_t remote);
size_t ngx_http_llm_base64_at(u_char *dst, size_t n, ngx_str_t *b64,
    size_t off);


#endif /* _NGX_HTTP_LLM_IMAGE_H_INCLUDED_ */
