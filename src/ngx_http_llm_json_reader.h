
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_JSON_READER_H_INCLUDED_
#define _NGX_HTTP_LLM_JSON_READER_H_INCLUDED_


/*
 * A reader of the JSON that clients and backends actually send, building
 * the very tree cJSON would build, several times faster.  It declines
 * whatever it is not sure to read as cJSON does (numbers outside JSON's
 * grammar, unusual escapes, a byte order mark, deep nesting, any error):
 * the caller then parses with cJSON itself, so the tree and the errors
 * are always cJSON's.  Plain C99 without nginx headers, so that a fuzzer
 * can compare it with cJSON (t/json/fuzz_json.c).
 */


#include <stddef.h>
#include <cjson/cJSON.h>


#define NGX_HTTP_LLM_JSON_READ      0
#define NGX_HTTP_LLM_JSON_DECLINED  1
#define NGX_HTTP_LLM_JSON_NOMEM     2


typedef void *(*ngx_http_llm_json_alloc_pt)(void *data, size_t size);


int ngx_http_llm_json_read(const unsigned char *text, size_t len,
    cJSON **root, ngx_http_llm_json_alloc_pt alloc, void *data);

/* the first '"' or '\\' from p on, or end; the reply scanner's too */
const unsigned char *ngx_http_llm_json_special(const unsigned char *p,
    const unsigned char *end);


#endif /* _NGX_HTTP_LLM_JSON_READER_H_INCLUDED_ */
