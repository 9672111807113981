
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_DIGEST_H_INCLUDED_
#define _NGX_HTTP_LLM_DIGEST_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


#define NGX_HTTP_LLM_SHA256_LEN  32


void ngx_http_llm_sha256(ngx_str_t *parts, ngx_uint_t n, u_char *out);


#endif /* _NGX_HTTP_LLM_DIGEST_H_INCLUDED_ */
