/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_PARSE_H_INCLUDED_
#define _NGX_HTTP_LLM_PARSE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


ngx_int_t ngx_http_llm_parse_count(u_char *p, size_t len);
ngx_int_t ngx_http_llm_parse_duration(ngx_str_t *value);
ngx_int_t ngx_http_llm_parse_permille(ngx_str_t *value);


#endif /* _NGX_HTTP_LLM_PARSE_H_INCLUDED_ */
