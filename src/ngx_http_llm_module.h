
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_MODULE_H_INCLUDED_
#define _NGX_HTTP_LLM_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <cjson/cJSON.h>


/* a sane bound for one request; keeps sums far from overflow */
#define NGX_HTTP_LLM_MAX_TOKENS    100000000
#define NGX_HTTP_LLM_MAX_CHOICES   128


typedef struct {
    ngx_flag_t                   route;
    size_t                       max_body_size;
    ngx_uint_t                   completion_reserve;
} ngx_http_llm_loc_conf_t;


typedef struct {
    /* NGX_DONE while the body is read, then NGX_DECLINED */
    ngx_int_t                    status;

    /* a local error to answer instead of proxying, 0 when none */
    ngx_uint_t                   error;
    const char                  *error_code;
    ngx_str_t                    error_message;

    ngx_str_t                    model;
    ngx_str_t                    deployment;

    ngx_uint_t                   prompt_estimate;
    ngx_uint_t                   reserve;
    ngx_uint_t                   choices;
    ngx_uint_t                   tokens_estimate;

    unsigned                     parsed:1;
    unsigned                     stream:1;
    unsigned                     embeddings:1;
} ngx_http_llm_ctx_t;


ngx_int_t ngx_http_llm_request_handler(ngx_http_request_t *r);

ngx_int_t ngx_http_llm_inspect(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    cJSON *root);
void ngx_http_llm_deployment_from_uri(ngx_str_t *uri, ngx_str_t *deployment);

ngx_int_t ngx_http_llm_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, ngx_str_t *message);

ngx_int_t ngx_http_llm_add_variables(ngx_conf_t *cf);


extern ngx_module_t  ngx_http_llm_module;


#endif /* _NGX_HTTP_LLM_MODULE_H_INCLUDED_ */
