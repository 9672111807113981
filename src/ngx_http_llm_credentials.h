
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_CREDENTIALS_H_INCLUDED_
#define _NGX_HTTP_LLM_CREDENTIALS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


ngx_int_t ngx_http_llm_credentials(ngx_http_request_t *r,
    ngx_http_llm_backend_t *b);

#if (NGX_HTTP_SSL)
ngx_int_t ngx_http_llm_ssl_server_name(ngx_connection_t *c,
    ngx_http_llm_backend_t *b);
#endif


#endif /* _NGX_HTTP_LLM_CREDENTIALS_H_INCLUDED_ */
