
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_IDENTITY_H_INCLUDED_
#define _NGX_HTTP_LLM_IDENTITY_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


char *ngx_http_llm_identity(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_llm_identities_init(ngx_conf_t *cf,
    ngx_http_llm_main_conf_t *lmcf);
ngx_int_t ngx_http_llm_identities_start(ngx_cycle_t *cycle,
    ngx_http_llm_main_conf_t *lmcf);
void ngx_http_llm_identities_stop(ngx_http_llm_main_conf_t *lmcf);
ngx_int_t ngx_http_llm_identity_token(ngx_http_llm_identity_t *id,
    ngx_str_t *value);

size_t ngx_http_llm_identities_size(ngx_http_llm_main_conf_t *lmcf);
u_char *ngx_http_llm_identities_json(u_char *p,
    ngx_http_llm_main_conf_t *lmcf);
u_char *ngx_http_llm_identities_prometheus(u_char *p,
    ngx_http_llm_main_conf_t *lmcf);


#endif /* _NGX_HTTP_LLM_IDENTITY_H_INCLUDED_ */
