
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <cjson/cJSON.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_json.h"
#include "ngx_http_llm_json_reader.h"


/*
 * cJSON allocates every node and string: from a pool instead of a
 * malloc() and a free() each (a fifth of the parse's cost measured with
 * callgrind).  The pool is the worker's own and outlives the parse: it
 * is reset after each one, its blocks kept for the next request, so a
 * parse costs no malloc() at all in the steady state; after a body of
 * more than 256 KB it is given back instead.  Each thread that counts
 * bodies has its own pool; cJSON's hooks are process-wide and set once,
 * when the worker starts, so that no thread changes them under another.
 */


#define NGX_HTTP_LLM_JSON_POOL  16384          /* a multiple of 16 */
#define NGX_HTTP_LLM_JSON_KEEP  (256 * 1024)


static void *ngx_http_llm_json_alloc(size_t size);
static void *ngx_http_llm_json_palloc(void *data, size_t size);
static void ngx_http_llm_json_free(void *p);


static ngx_http_llm_thread_local ngx_pool_t  *ngx_http_llm_json_pool;


/*
 * NGX_OK and the tree; NGX_DECLINED for text that is not JSON, with the
 * offset where the parse stopped; NGX_ERROR without memory.  Every parse
 * is followed by ngx_http_llm_json_done().  Our own reader builds the
 * tree if it can; what it declines, cJSON reads.
 */

ngx_int_t
ngx_http_llm_json_parse(ngx_str_t *text, cJSON **root, size_t *error_at,
    ngx_log_t *log)
{
    int           rc;
    const char   *end, *last;

    if (ngx_http_llm_json_scratch(log) == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_http_llm_json_read(text->data, text->len, root,
                                ngx_http_llm_json_palloc,
                                ngx_http_llm_json_pool);

    if (rc == NGX_HTTP_LLM_JSON_READ) {
        return NGX_OK;
    }

    if (rc == NGX_HTTP_LLM_JSON_NOMEM) {
        return NGX_ERROR;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, log, 0,
                   "llm json: left to cJSON");

    ngx_reset_pool(ngx_http_llm_json_pool);

    end = NULL;
    *root = cJSON_ParseWithLengthOpts((const char *) text->data, text->len,
                                      &end, 0);

    if (*root == NULL) {
        *error_at = end ? (size_t) (end - (const char *) text->data) : 0;
        return NGX_DECLINED;
    }

    /*
     * only blanks may follow the value: a second object after the first
     * is two values, which the backend would read otherwise, or refuse
     */

    last = (const char *) text->data + text->len;

    while (end < last && ngx_http_llm_json_space(*end)) {
        end++;
    }

    if (end != last) {
        /* the tree goes with the pool, in ngx_http_llm_json_done() */
        *root = NULL;
        *error_at = end - (const char *) text->data;
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/*
 * The worker's pool for reading a body, emptied by
 * ngx_http_llm_json_done(): cJSON's nodes, and the body walk's texts
 */

ngx_pool_t *
ngx_http_llm_json_scratch(ngx_log_t *log)
{
    if (ngx_http_llm_json_pool == NULL) {
        ngx_http_llm_json_pool = ngx_create_pool(NGX_HTTP_LLM_JSON_POOL, log);
        if (ngx_http_llm_json_pool == NULL) {
            return NULL;
        }
    }

    /*
     * the pool outlives the request that made it: its log must be the
     * one of the request reading now, not a closed connection's
     */

    ngx_http_llm_json_pool->log = log;

    return ngx_http_llm_json_pool;
}


/*
 * In each worker, before any request: cJSON's nodes, and what
 * cJSON_PrintUnformatted() makes of the tools, come from the pool of the
 * thread that parses
 */

void
ngx_http_llm_json_init(void)
{
    cJSON_Hooks  hooks;

    hooks.malloc_fn = ngx_http_llm_json_alloc;
    hooks.free_fn = ngx_http_llm_json_free;

    cJSON_InitHooks(&hooks);
}


void
ngx_http_llm_json_done(size_t len)
{
    if (ngx_http_llm_json_pool == NULL) {
        return;
    }

    if (len > NGX_HTTP_LLM_JSON_KEEP) {
        ngx_destroy_pool(ngx_http_llm_json_pool);
        ngx_http_llm_json_pool = NULL;
        return;
    }

    ngx_reset_pool(ngx_http_llm_json_pool);
}


/*
 * Outside a parse of ours (a vocabulary loaded again by a process
 * without a master), cJSON gets malloc() and free() as it would without
 * hooks; the trees of bodies are never freed one node at a time
 */

static void *
ngx_http_llm_json_alloc(size_t size)
{
    if (ngx_http_llm_json_pool == NULL) {
        return malloc(size);
    }

    return ngx_palloc(ngx_http_llm_json_pool, size);
}


static void *
ngx_http_llm_json_palloc(void *data, size_t size)
{
    return ngx_palloc(data, size);
}


static void
ngx_http_llm_json_free(void *p)
{
    /* the pool is reset as a whole */

    if (ngx_http_llm_json_pool == NULL) {
        free(p);
    }
}
