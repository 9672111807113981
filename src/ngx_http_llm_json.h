
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_JSON_H_INCLUDED_
#define _NGX_HTTP_LLM_JSON_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <cjson/cJSON.h>
#include "ngx_http_llm.h"


void ngx_http_llm_json_init(void);
ngx_int_t ngx_http_llm_json_parse(ngx_str_t *text, cJSON **root,
    size_t *error_at, ngx_log_t *log);
void ngx_http_llm_json_done(size_t len);
ngx_pool_t *ngx_http_llm_json_scratch(ngx_log_t *log);


#endif /* _NGX_HTTP_LLM_JSON_H_INCLUDED_ */
