
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_ESTIMATE_H_INCLUDED_
#define _NGX_HTTP_LLM_ESTIMATE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <cjson/cJSON.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_vocab.h"


/*
 * What a body's walk adds up, shared by the two walks that can read a
 * body: of cJSON's tree (ngx_http_llm_inspect()) and of the text itself
 * (ngx_http_llm_walk()).  Both feed the same texts to the same functions
 * and end in ngx_http_llm_sum_done(), so they differ only in what they
 * read, never in how it is counted.
 */


/* the numbers of a body that set the completion reserve and choices */

typedef enum {
    NGX_HTTP_LLM_N_MAX_COMPLETION_TOKENS = 0,
    NGX_HTTP_LLM_N_MAX_TOKENS,
    NGX_HTTP_LLM_N_MAX_OUTPUT_TOKENS,
    NGX_HTTP_LLM_N_N,
    NGX_HTTP_LLM_N_BEST_OF,
    NGX_HTTP_LLM_N_LAST
} ngx_http_llm_number_e;


typedef struct {
    size_t                   chars;
    size_t                   tokens;
    size_t                   weight;     /* of guessed tokens */
    ngx_http_llm_vocab_t    *vocab;      /* NULL: tokens are guessed */
    ngx_http_llm_counter_t  *counter;    /* the thread's, with a vocab */
    ngx_uint_t               cache;      /* llm_count_cache */
    ngx_uint_t               encoding;

    /* images: where to decode headers, the model's prices */
    ngx_pool_t              *pool;
    ngx_uint_t               mini;
    ngx_uint_t               remote_image;

    ngx_uint_t               messages;

    /* a member of a part, a tool or a schema named twice */
    const char              *duplicate;

    /* the members that are JSON numbers: bit i for number[i] */
    ngx_uint_t               numbers;
    double                   number[NGX_HTTP_LLM_N_LAST];
} ngx_http_llm_sum_t;


void ngx_http_llm_sum_init(ngx_http_request_t *r, ngx_str_t *model,
    ngx_http_llm_sum_t *sum);
void ngx_http_llm_sum_text(ngx_http_llm_sum_t *sum, const u_char *p,
    size_t len);
void ngx_http_llm_sum_role(ngx_http_llm_sum_t *sum, const u_char *p,
    size_t len);
void ngx_http_llm_sum_done(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_sum_t *sum);

ngx_int_t ngx_http_llm_walk(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_str_t *body);


ngx_int_t ngx_http_llm_inspect(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    cJSON *root);
void ngx_http_llm_deployment_from_uri(ngx_str_t *uri, ngx_str_t *deployment);
ngx_int_t ngx_http_llm_find_member(ngx_str_t *json, ngx_str_t *name,
    size_t *start, size_t *end);


#endif /* _NGX_HTTP_LLM_ESTIMATE_H_INCLUDED_ */
