
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_VOCAB_H_INCLUDED_
#define _NGX_HTTP_LLM_VOCAB_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


typedef struct ngx_http_llm_counter_s  ngx_http_llm_counter_t;

char *ngx_http_llm_tokenizer(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_uint_t ngx_http_llm_encoding_for(ngx_str_t *model);
ngx_http_llm_counter_t *ngx_http_llm_counter(void);
size_t ngx_http_llm_count(ngx_http_llm_counter_t *c,
    ngx_http_llm_vocab_t *vocab, u_char *text, size_t len, ngx_uint_t cache);
void ngx_http_llm_count_done(ngx_http_llm_counter_t *c, size_t body_len);
ngx_int_t ngx_http_llm_count_cache_init(ngx_cycle_t *cycle);


#endif /* _NGX_HTTP_LLM_VOCAB_H_INCLUDED_ */
