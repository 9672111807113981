
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_KEEPALIVE_H_INCLUDED_
#define _NGX_HTTP_LLM_KEEPALIVE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


ngx_int_t ngx_http_llm_keepalive_init(ngx_conf_t *cf,
    ngx_http_llm_pool_t *pool);
ngx_int_t ngx_http_llm_keepalive_get(ngx_peer_connection_t *pc,
    ngx_http_llm_backend_t *b);
void ngx_http_llm_keepalive_save(ngx_peer_connection_t *pc,
    ngx_http_llm_backend_t *b, ngx_http_upstream_t *u, ngx_uint_t state);


#endif /* _NGX_HTTP_LLM_KEEPALIVE_H_INCLUDED_ */
