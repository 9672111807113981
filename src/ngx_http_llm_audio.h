
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_AUDIO_H_INCLUDED_
#define _NGX_HTTP_LLM_AUDIO_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"


ngx_uint_t ngx_http_llm_audio_tokens(const char *data);


#endif /* _NGX_HTTP_LLM_AUDIO_H_INCLUDED_ */
