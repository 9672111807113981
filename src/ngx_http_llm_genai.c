
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_genai.h"


/*
 * The names, units and bucket bounds are those of OpenTelemetry's
 * semantic conventions for generative AI (1.36, the version gateways
 * emit today), as an OpenTelemetry exporter writes them for Prometheus:
 * dots become underscores, a unit of seconds adds "_seconds", and the
 * attributes become labels.  nginx is the client of its backends, so an
 * attempt's tokens and duration are the client's figures; the first
 * token and the time per token are what nginx's own clients see of the
 * backend, the server's figures.  Times are kept in microseconds.
 */

typedef struct {
    const char                  *name;
    const char                  *help;
    ngx_uint_t                   seconds;
    ngx_uint_t                   first;      /* its series */
    ngx_uint_t                   last;
} ngx_http_llm_genai_family_t;


static u_char *ngx_http_llm_genai_series(u_char *p, const char *name,
    ngx_uint_t seconds, ngx_http_llm_histogram_t *h, const uint64_t *bound,
    ngx_uint_t n, ngx_str_t *labels, const char *op, const char *type);
static u_char *ngx_http_llm_genai_value(u_char *p, uint64_t v,
    ngx_uint_t seconds);


static ngx_http_llm_genai_family_t  ngx_http_llm_genai_families[] = {
    { "gen_ai_client_token_usage",
      "Number of input and output tokens used.", 0,
      NGX_HTTP_LLM_GENAI_INPUT, NGX_HTTP_LLM_GENAI_OUTPUT },
    { "gen_ai_client_operation_duration_seconds",
      "GenAI operation duration.", 1,
      NGX_HTTP_LLM_GENAI_DURATION, NGX_HTTP_LLM_GENAI_DURATION },
    { "gen_ai_server_time_to_first_token_seconds",
      "Time to generate first token for successful responses.", 1,
      NGX_HTTP_LLM_GENAI_TTFT, NGX_HTTP_LLM_GENAI_TTFT },
    { "gen_ai_server_time_per_output_token_seconds",
      "Time per output token generated after the first token for "
      "successful responses.", 1,
      NGX_HTTP_LLM_GENAI_TPOT, NGX_HTTP_LLM_GENAI_TPOT }
};


static const uint64_t  ngx_http_llm_genai_tokens[] = {
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
    16777216, 67108864
};

static const uint64_t  ngx_http_llm_genai_duration[] = {
    10000, 20000, 40000, 80000, 160000, 320000, 640000, 1280000, 2560000,
    5120000, 10240000, 20480000, 40960000, 81920000
};

static const uint64_t  ngx_http_llm_genai_ttft[] = {
    1000, 5000, 10000, 20000, 40000, 60000, 80000, 100000, 250000, 500000,
    750000, 1000000, 2500000, 5000000, 7500000, 10000000
};

static const uint64_t  ngx_http_llm_genai_tpot[] = {
    10000, 25000, 50000, 75000, 100000, 150000, 200000, 300000, 400000,
    500000, 750000, 1000000, 2500000
};


static const struct {
    const uint64_t              *bound;
    ngx_uint_t                   n;
} ngx_http_llm_genai_bounds[NGX_HTTP_LLM_GENAI_SERIES] = {
    { ngx_http_llm_genai_tokens, 14 },
    { ngx_http_llm_genai_tokens, 14 },
    { ngx_http_llm_genai_duration, 14 },
    { ngx_http_llm_genai_ttft, 16 },
    { ngx_http_llm_genai_tpot, 13 }
};


static const char  *ngx_http_llm_genai_ops[] = {
    "chat", "text_completion", "embeddings"
};


/* under the zone's lock */

void
ngx_http_llm_genai_add(ngx_http_llm_genai_t *g, ngx_http_llm_genai_sample_t *s)
{
    uint64_t                   v[NGX_HTTP_LLM_GENAI_SERIES];
    ngx_uint_t                 k, i, n, has[NGX_HTTP_LLM_GENAI_SERIES];
    const uint64_t            *bound;
    ngx_http_llm_histogram_t  *h;

    v[NGX_HTTP_LLM_GENAI_INPUT] = s->input;
    v[NGX_HTTP_LLM_GENAI_OUTPUT] = s->output;
    v[NGX_HTTP_LLM_GENAI_DURATION] = (uint64_t) s->duration * 1000;
    v[NGX_HTTP_LLM_GENAI_TTFT] = (uint64_t) s->ttft * 1000;
    v[NGX_HTTP_LLM_GENAI_TPOT] = s->tpot_us;

    /* an embedding has input tokens only, and no first token */

    has[NGX_HTTP_LLM_GENAI_INPUT] = s->usage;
    has[NGX_HTTP_LLM_GENAI_DURATION] = 1;

    if (s->op == NGX_HTTP_LLM_GENAI_EMBEDDINGS) {
        has[NGX_HTTP_LLM_GENAI_OUTPUT] = 0;
        has[NGX_HTTP_LLM_GENAI_TTFT] = 0;
        has[NGX_HTTP_LLM_GENAI_TPOT] = 0;

    } else {
        has[NGX_HTTP_LLM_GENAI_OUTPUT] = s->usage;
        has[NGX_HTTP_LLM_GENAI_TTFT] = s->first;
        has[NGX_HTTP_LLM_GENAI_TPOT] = s->per_token;
    }

    for (k = 0; k < NGX_HTTP_LLM_GENAI_SERIES; k++) {

        if (!has[k]) {
            continue;
        }

        h = &g->series[s->op][k];
        bound = ngx_http_llm_genai_bounds[k].bound;
        n = ngx_http_llm_genai_bounds[k].n;

        /* Prometheus's "le": a value on a bound is in its bucket */

        for (i = 0; i < n && v[k] > bound[i]; i++) { /* void */ }

        h->bucket[i]++;
        h->count++;
        h->sum += v[k];
    }
}


/* family m's name and help, NULL after the last */

const char *
ngx_http_llm_genai_family(ngx_uint_t m, const char **help)
{
    if (m >= NGX_HTTP_LLM_GENAI_METRICS) {
        return NULL;
    }

    *help = ngx_http_llm_genai_families[m].help;

    return ngx_http_llm_genai_families[m].name;
}


/* room for one backend's samples, labels its label text's length */

size_t
ngx_http_llm_genai_size(ngx_http_llm_genai_t *g, size_t labels)
{
    size_t      size;
    ngx_uint_t  op, k;

    size = 0;

    for (op = 0; op < NGX_HTTP_LLM_GENAI_OPS; op++) {
        for (k = 0; k < NGX_HTTP_LLM_GENAI_SERIES; k++) {
            if (g->series[op][k].count) {
                size += (ngx_http_llm_genai_bounds[k].n + 3)
                        * (labels + 160 + NGX_ATOMIC_T_LEN);
            }
        }
    }

    return size;
}


/* family m's samples of one backend, each operation it served */

u_char *
ngx_http_llm_genai_prometheus(u_char *p, ngx_uint_t m,
    ngx_http_llm_genai_t *g, ngx_str_t *labels)
{
    ngx_uint_t                    op, k;
    ngx_http_llm_genai_family_t  *f;

    static const char  *types[] = { "input", "output" };

    f = &ngx_http_llm_genai_families[m];

    for (op = 0; op < NGX_HTTP_LLM_GENAI_OPS; op++) {
        for (k = f->first; k <= f->last; k++) {

            if (g->series[op][k].count == 0) {
                continue;
            }

            p = ngx_http_llm_genai_series(p, f->name, f->seconds,
                                          &g->series[op][k],
                                          ngx_http_llm_genai_bounds[k].bound,
                                          ngx_http_llm_genai_bounds[k].n,
                                          labels, ngx_http_llm_genai_ops[op],
                                          f->first == f->last
                                          ? NULL : types[k - f->first]);
        }
    }

    return p;
}


static u_char *
ngx_http_llm_genai_series(u_char *p, const char *name, ngx_uint_t seconds,
    ngx_http_llm_histogram_t *h, const uint64_t *bound, ngx_uint_t n,
    ngx_str_t *labels, const char *op, const char *type)
{
    ngx_uint_t  i;
    uint64_t    cumulative;

    cumulative = 0;

    for (i = 0; i <= n; i++) {
        cumulative += h->bucket[i];

        p = ngx_sprintf(p, "%s_bucket{%V,gen_ai_operation_name=\"%s\",",
                        name, labels, op);

        if (type) {
            p = ngx_sprintf(p, "gen_ai_token_type=\"%s\",", type);
        }

        if (i < n) {
            p = ngx_sprintf(p, "le=\"");
            p = ngx_http_llm_genai_value(p, bound[i], seconds);
            p = ngx_sprintf(p, "\"} %uL\n", cumulative);

        } else {
            p = ngx_sprintf(p, "le=\"+Inf\"} %uL\n", cumulative);
        }
    }

    p = ngx_sprintf(p, "%s_sum{%V,gen_ai_operation_name=\"%s\"", name,
                    labels, op);

    if (type) {
        p = ngx_sprintf(p, ",gen_ai_token_type=\"%s\"", type);
    }

    *p++ = '}';
    *p++ = ' ';
    p = ngx_http_llm_genai_value(p, h->sum, seconds);

    p = ngx_sprintf(p, "\n%s_count{%V,gen_ai_operation_name=\"%s\"", name,
                    labels, op);

    if (type) {
        p = ngx_sprintf(p, ",gen_ai_token_type=\"%s\"", type);
    }

    return ngx_sprintf(p, "} %uA\n", h->count);
}


/* tokens as they are; microseconds as seconds, without trailing zeros */

static u_char *
ngx_http_llm_genai_value(u_char *p, uint64_t v, ngx_uint_t seconds)
{
    u_char  *last;

    if (!seconds) {
        return ngx_sprintf(p, "%uL", v);
    }

    p = ngx_sprintf(p, "%uL", v / 1000000);

    if (v % 1000000 == 0) {
        return p;
    }

    last = ngx_sprintf(p, ".%06uL", v % 1000000);

    while (last[-1] == '0') {
        last--;
    }

    return last;
}
