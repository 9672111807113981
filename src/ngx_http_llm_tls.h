
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_TLS_H_INCLUDED_
#define _NGX_HTTP_LLM_TLS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>


ngx_uint_t ngx_http_llm_tls_is_address(ngx_str_t *name);
void ngx_http_llm_tls_close(ngx_connection_t *c);

#if (NGX_SSL)

char *ngx_http_llm_tls_context(ngx_conf_t *cf, ngx_ssl_t **ssl,
    ngx_str_t *certificate, ngx_str_t *key, ngx_str_t *trusted,
    ngx_flag_t verify);
ngx_int_t ngx_http_llm_tls_start(ngx_connection_t *c, ngx_ssl_t *ssl,
    ngx_str_t *name, ngx_uint_t address, ngx_connection_handler_pt done,
    const char **error);
u_char *ngx_http_llm_tls_check(ngx_connection_t *c, ngx_str_t *name,
    ngx_uint_t address, u_char *buf, size_t size);

#endif


#endif /* _NGX_HTTP_LLM_TLS_H_INCLUDED_ */
