
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_ACCOUNT_H_INCLUDED_
#define _NGX_HTTP_LLM_ACCOUNT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


void ngx_http_llm_account(ngx_http_llm_ctx_t *ctx, ngx_uint_t status);


#endif /* _NGX_HTTP_LLM_ACCOUNT_H_INCLUDED_ */
