
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_UPSTREAM_H_INCLUDED_
#define _NGX_HTTP_LLM_UPSTREAM_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


char *ngx_http_llm_balance(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_llm_backend(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_llm_pool_check(ngx_conf_t *cf, ngx_http_llm_pool_t *pool);


#endif /* _NGX_HTTP_LLM_UPSTREAM_H_INCLUDED_ */
