
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_WALK_H_INCLUDED_
#define _NGX_HTTP_LLM_WALK_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


void ngx_http_llm_walk_prepare(void);
u_char *ngx_http_llm_walk_usage(u_char *p, u_char *end, ngx_uint_t *n);


#endif /* _NGX_HTTP_LLM_WALK_H_INCLUDED_ */
