/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_WINDOW_H_INCLUDED_
#define _NGX_HTTP_LLM_WINDOW_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


void ngx_http_llm_window_add(uint32_t *slots, ngx_uint_t n,
    ngx_msec_t slot_ms, ngx_msec_t last, ngx_uint_t *sum, ngx_uint_t value,
    ngx_msec_t at);
void ngx_http_llm_window_remove(uint32_t *slots, ngx_uint_t n,
    ngx_msec_t slot_ms, ngx_msec_t last, ngx_uint_t *sum, ngx_uint_t value,
    ngx_msec_t at);
void ngx_http_llm_window_advance(uint32_t *slots, ngx_uint_t n,
    ngx_msec_t slot_ms, ngx_msec_t *last, ngx_uint_t *sum, ngx_msec_t now);
ngx_msec_t ngx_http_llm_window_wait(uint32_t *slots, ngx_uint_t n,
    ngx_msec_t slot_ms, ngx_msec_t last, ngx_uint_t sum, ngx_uint_t limit,
    ngx_uint_t need, ngx_msec_t now);


#endif /* _NGX_HTTP_LLM_WINDOW_H_INCLUDED_ */
