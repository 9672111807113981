
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_account.h"
#include "ngx_http_llm_backend_share.h"
#include "ngx_http_llm_usage.h"
#include "ngx_http_llm_window.h"
#include "ngx_http_llm_zone.h"


static ngx_uint_t ngx_http_llm_genai_op(ngx_http_llm_ctx_t *ctx);


/*
 * The log phase: the reply's usage into the backend's counters, the
 * time to first token and tokens/s into its moving averages, and a PTU
 * backend's arrival charge corrected to what the request really used
 * (a Standard backend keeps Azure's arrival charge: so does Azure).
 */

void
ngx_http_llm_account(ngx_http_llm_ctx_t *ctx, ngx_uint_t status)
{
    ngx_msec_t                   now, gen, ttft, begin;
    ngx_uint_t                   source, actual, tps, cls;
    ngx_slab_pool_t             *shpool;
    ngx_http_llm_pool_t         *pool;
    ngx_http_llm_zone_t         *zone;
    ngx_http_llm_scan_t          usage;
    ngx_http_llm_backend_t      *b;
    ngx_http_llm_backend_sh_t   *sh;
    ngx_http_llm_genai_sample_t  gs;

    b = ctx->backend;

    if (ctx->accounted || b == NULL) {
        return;
    }

    ctx->accounted = 1;

    pool = b->pool;
    zone = pool->shm_zone->data;
    shpool = zone->shpool;
    sh = b->sh;
    now = ngx_current_msec;

    source = ngx_http_llm_usage_of(ctx, &usage);

    /* the attempt that answered began when it was charged */

    begin = (ctx->final_at && ctx->final_at - ctx->start <= now - ctx->start)
            ? ctx->final_at : ctx->start;

    /*
     * the backend's own first token: from this attempt's start, not the
     * request's; and the time it generated for after it
     */

    ttft = ctx->ttft;

    if (ctx->final_at && ctx->final_at - ctx->start < ttft) {
        ttft -= ctx->final_at - ctx->start;
    }

    gen = now - ctx->start - ctx->ttft;

    /* the answer of the backend itself, when the client got another */

    if (ctx->upstream_status) {
        status = ctx->upstream_status;
    }

    cls = ngx_min(status / 100, 5);

    ngx_shmtx_lock(&shpool->mutex);

    sh->responses[cls]++;

    if (ctx->priced) {
        sh->cost += ctx->cost;
    }

    if (source) {
        sh->prompt_tokens += usage.prompt;
        sh->completion_tokens += usage.completion;
        sh->cached_tokens += usage.cached;
        sh->reasoning_tokens += usage.reasoning;

        if (source == 2) {
            sh->usage_counted++;
        }
    }

    if (b->ptu && source == 1 && ctx->final_at) {
        actual = usage.prompt - ngx_min(usage.cached, usage.prompt)
                 + usage.completion;

        ngx_http_llm_windows_update(pool, sh, now);
        ngx_http_llm_window_remove(sh->tokens, NGX_HTTP_LLM_TOKEN_SLOTS,
                                   pool->token_slot_ms, sh->tokens_last,
                                   &sh->tokens_sum, ctx->final_charge,
                                   ctx->final_at);
        ngx_http_llm_window_add(sh->tokens, NGX_HTTP_LLM_TOKEN_SLOTS,
                                pool->token_slot_ms, sh->tokens_last,
                                &sh->tokens_sum, actual, ctx->final_at);

        if (sh->share && zone->share) {
            ngx_http_llm_backend_spend(zone, pool, sh,
                                       (int64_t) actual
                                       - (int64_t) ctx->final_charge,
                                       0, ctx->final_at, now);
        }
    }

    if (ctx->first_byte) {
        if (now - sh->ewma_time > pool->window) {
            /* forgotten: see ngx_http_llm_latency() */
            sh->ttft_ewma = 0;
            sh->tps_ewma = 0;
            sh->ttft_samples = 0;
        }

        sh->ttft_ewma = sh->ttft_ewma ? (sh->ttft_ewma * 7 + ttft) / 8 : ttft;
        sh->ewma_time = now;

        ngx_http_llm_ttft_add(sh, ttft);

        if (source && usage.completion > 1 && gen > 0) {
            tps = usage.completion * 1000 * 1000 / gen;
            sh->tps_ewma = sh->tps_ewma ? (sh->tps_ewma * 7 + tps) / 8 : tps;
        }
    }

    /* OpenTelemetry's histograms, of the attempts that succeeded */

    if (status >= NGX_HTTP_OK && status < NGX_HTTP_SPECIAL_RESPONSE) {
        ngx_memzero(&gs, sizeof(ngx_http_llm_genai_sample_t));

        gs.op = ngx_http_llm_genai_op(ctx);
        gs.duration = now - begin;

        if (source) {
            gs.usage = 1;
            gs.input = usage.prompt;
            gs.output = usage.completion;
        }

        /* a JSON reply's first byte is its last token: streams only */

        if (ctx->first_byte && ctx->sse) {
            gs.first = 1;
            gs.ttft = ttft;

            if (source && usage.completion > 1 && gen > 0) {
                gs.per_token = 1;
                gs.tpot_us = gen * 1000 / (usage.completion - 1);
            }
        }

        ngx_http_llm_genai_add(&sh->genai, &gs);
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


/*
 * OpenTelemetry's operation: an embedding, a legacy completion, or else
 * a chat (Chat Completions and the Responses API)
 */

static ngx_uint_t
ngx_http_llm_genai_op(ngx_http_llm_ctx_t *ctx)
{
    ngx_str_t  *uri;

    static ngx_str_t  completions = ngx_string("/completions");
    static ngx_str_t  chat = ngx_string("/chat/completions");

    if (ctx->embeddings) {
        return NGX_HTTP_LLM_GENAI_EMBEDDINGS;
    }

    uri = &ctx->request->uri;

    if (uri->len >= completions.len
        && ngx_strncmp(uri->data + uri->len - completions.len,
                       completions.data, completions.len) == 0
        && !(uri->len >= chat.len
             && ngx_strncmp(uri->data + uri->len - chat.len, chat.data,
                            chat.len) == 0))
    {
        return NGX_HTTP_LLM_GENAI_COMPLETION;
    }

    return NGX_HTTP_LLM_GENAI_CHAT;
}
