
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_IDENTITY_CONF_H_INCLUDED_
#define _NGX_HTTP_LLM_IDENTITY_CONF_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


char *ngx_http_llm_identity(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_llm_identities_init(ngx_conf_t *cf,
    ngx_http_llm_main_conf_t *lmcf);


#endif /* _NGX_HTTP_LLM_IDENTITY_CONF_H_INCLUDED_ */
