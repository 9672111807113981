
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_THREADS_H_INCLUDED_
#define _NGX_HTTP_LLM_THREADS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


char *ngx_http_llm_count_threads(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_llm_threads_merge(ngx_conf_t *cf,
    ngx_http_llm_loc_conf_t *conf, ngx_http_llm_loc_conf_t *prev);
ngx_int_t ngx_http_llm_thread_run(ngx_http_request_t *r, off_t size,
    ngx_http_llm_thread_pt work, ngx_http_llm_thread_pt done);


#endif /* _NGX_HTTP_LLM_THREADS_H_INCLUDED_ */
