/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_PARSE_H_INCLUDED_
#define _NGX_HTTP_LLM_PARSE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


#define NGX_HTTP_LLM_OPTION_STRING  0   /* ngx_str_t */
#define NGX_HTTP_LLM_OPTION_NUMBER  1   /* ngx_uint_t, digits */
#define NGX_HTTP_LLM_OPTION_COUNT   2   /* ngx_uint_t, "150k", "1m" */
#define NGX_HTTP_LLM_OPTION_MSEC    3   /* ngx_msec_t, "500ms", "5s" */
#define NGX_HTTP_LLM_OPTION_SEC     4   /* time_t, "10s", "1m" */


/* the longest rest a reply header may ask for, in ms: 27 hours */
#define NGX_HTTP_LLM_DELAY_MAX      100000000


/* a table of options ends with an empty name */

typedef struct {
    ngx_str_t                    name;       /* with its "=" */
    ngx_uint_t                   type;
    size_t                       offset;
    ngx_uint_t                   min;
    ngx_uint_t                   max;        /* 0: none */
} ngx_http_llm_option_t;


ngx_int_t ngx_http_llm_parse_option(ngx_str_t *value,
    ngx_http_llm_option_t *options, void *conf);
ngx_int_t ngx_http_llm_parse_count(u_char *p, size_t len);
ngx_int_t ngx_http_llm_parse_duration(ngx_str_t *value);
ngx_int_t ngx_http_llm_parse_delay(ngx_str_t *value, ngx_int_t unit);
ngx_int_t ngx_http_llm_parse_permille(ngx_str_t *value);


#endif /* _NGX_HTTP_LLM_PARSE_H_INCLUDED_ */
