
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_USAGE_H_INCLUDED_
#define _NGX_HTTP_LLM_USAGE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


void ngx_http_llm_scan(ngx_http_llm_scan_t *s, u_char *p, u_char *last,
    ngx_log_t *log);
ngx_int_t ngx_http_llm_usage_of(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_scan_t *out);
ngx_int_t ngx_http_llm_scan_whole(ngx_http_llm_scan_t *s, u_char *start,
    u_char *last, ngx_log_t *log);


/* the counts of a usage object, where the names are (usage.c) */

typedef enum {
    NGX_HTTP_LLM_U_PROMPT = 0,
    NGX_HTTP_LLM_U_COMPLETION,
    NGX_HTTP_LLM_U_TOTAL,
    NGX_HTTP_LLM_U_INPUT,
    NGX_HTTP_LLM_U_OUTPUT,
    NGX_HTTP_LLM_U_PROMPT_CACHED,
    NGX_HTTP_LLM_U_COMPLETION_REASONING,
    NGX_HTTP_LLM_U_INPUT_CACHED,
    NGX_HTTP_LLM_U_OUTPUT_REASONING,
    NGX_HTTP_LLM_U_LAST
} ngx_http_llm_usage_e;


typedef struct {
    ngx_str_t                    details;   /* empty: a top-level count */
    ngx_str_t                    name;
} ngx_http_llm_usage_name_t;


extern ngx_http_llm_usage_name_t  ngx_http_llm_usage_names[];


#endif /* _NGX_HTTP_LLM_USAGE_H_INCLUDED_ */
