
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_GENAI_H_INCLUDED_
#define _NGX_HTTP_LLM_GENAI_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/*
 * OpenTelemetry's metrics for generative AI, as histograms per backend
 * and operation, in shared memory: token usage by type, the duration of
 * an attempt, the time to its first token and per output token.
 */

#define NGX_HTTP_LLM_GENAI_CHAT        0
#define NGX_HTTP_LLM_GENAI_COMPLETION  1
#define NGX_HTTP_LLM_GENAI_EMBEDDINGS  2
#define NGX_HTTP_LLM_GENAI_OPS         3

/* the most bounds of a histogram, and one bucket above them all */
#define NGX_HTTP_LLM_GENAI_BUCKETS     17

#define NGX_HTTP_LLM_GENAI_INPUT       0
#define NGX_HTTP_LLM_GENAI_OUTPUT      1
#define NGX_HTTP_LLM_GENAI_DURATION    2
#define NGX_HTTP_LLM_GENAI_TTFT        3
#define NGX_HTTP_LLM_GENAI_TPOT        4
#define NGX_HTTP_LLM_GENAI_SERIES      5

#define NGX_HTTP_LLM_GENAI_METRICS     4


typedef struct {
    ngx_atomic_uint_t            bucket[NGX_HTTP_LLM_GENAI_BUCKETS];
    ngx_atomic_uint_t            count;
    ngx_atomic_uint_t            sum;        /* tokens, or microseconds */
} ngx_http_llm_histogram_t;


typedef struct {
    ngx_http_llm_histogram_t     series[NGX_HTTP_LLM_GENAI_OPS]
                                       [NGX_HTTP_LLM_GENAI_SERIES];
} ngx_http_llm_genai_t;


/* one attempt's figures; 0 where it has none */

typedef struct {
    ngx_uint_t                   op;
    ngx_uint_t                   input;
    ngx_uint_t                   output;
    ngx_msec_t                   duration;
    ngx_msec_t                   ttft;
    ngx_uint_t                   tpot_us;
    unsigned                     usage:1;    /* input and output known */
    unsigned                     first:1;    /* ttft known */
    unsigned                     per_token:1;  /* tpot_us known */
} ngx_http_llm_genai_sample_t;


void ngx_http_llm_genai_add(ngx_http_llm_genai_t *g,
    ngx_http_llm_genai_sample_t *s);
const char *ngx_http_llm_genai_family(ngx_uint_t m, const char **help);
size_t ngx_http_llm_genai_size(ngx_http_llm_genai_t *g, size_t labels);
u_char *ngx_http_llm_genai_prometheus(u_char *p, ngx_uint_t m,
    ngx_http_llm_genai_t *g, ngx_str_t *labels);


#endif /* _NGX_HTTP_LLM_GENAI_H_INCLUDED_ */
