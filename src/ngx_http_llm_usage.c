
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * Finds "usage" in a reply as its bytes pass, JSON or SSE alike, without
 * holding or copying the reply: one pass that knows only whether it is
 * inside a string, the name of the last key, and the depth of the usage
 * object it is copying (a few hundred bytes, parsed with cJSON when it
 * closes).  In a stream, "data:" prefixes and [DONE] sit outside any
 * string and are passed over; events split across reads just continue
 * the same state.  A stream's text deltas are counted on the way, for
 * streams that end without usage.
 */


#define NGX_HTTP_LLM_KEY_MAX  24


static void ngx_http_llm_usage_parse(ngx_http_llm_scan_t *s, ngx_log_t *log);
static ngx_uint_t ngx_http_llm_usage_number(cJSON *obj, const char *name,
    const char *details, const char *detail);


void
ngx_http_llm_scan(ngx_http_llm_scan_t *s, u_char *p, u_char *last,
    ngx_log_t *log)
{
    u_char  ch, *q;

    for ( /* void */ ; p < last; p++) {
        ch = *p;

        if (s->depth) {
            /* copying the usage object */

            if (s->len < NGX_HTTP_LLM_USAGE_MAX) {
                s->buf[s->len++] = ch;

            } else {
                s->overflow = 1;
            }

            if (s->in_string) {
                if (s->escaped) {
                    s->escaped = 0;

                } else if (ch == '\\') {
                    s->escaped = 1;

                } else if (ch == '"') {
                    s->in_string = 0;
                }

                continue;
            }

            if (ch == '"') {
                s->in_string = 1;

            } else if (ch == '{' || ch == '[') {
                s->depth++;

            } else if ((ch == '}' || ch == ']') && --s->depth == 0) {
                ngx_http_llm_usage_parse(s, log);
            }

            continue;
        }

        if (s->in_string) {

            /*
             * most of a reply is the text inside strings: run to the
             * next quote or backslash at once, keeping a key's first
             * bytes
             */

            if (!s->escaped && ch != '"' && ch != '\\') {
                for (q = p + 1; q < last && *q != '"' && *q != '\\'; q++) {
                    /* void */
                }

                if (s->klen < NGX_HTTP_LLM_KEY_MAX) {
                    ngx_memcpy(s->key + s->klen, p,
                               ngx_min((size_t) (q - p),
                                       NGX_HTTP_LLM_KEY_MAX - s->klen));
                }

                s->klen += q - p;
                s->value_chars = 1;
                p = q - 1;
                continue;
            }

            if (s->escaped) {
                s->escaped = 0;
                s->value_chars = 1;

            } else if (ch == '\\') {
                s->escaped = 1;

            } else if (ch == '"') {
                s->in_string = 0;
                s->after_string = 1;

                if (s->value_of_text && s->value_chars) {
                    /* a non-empty "content" or "delta" text: one token */
                    s->deltas++;
                }

                s->value_of_text = 0;
            }

            continue;
        }

        switch (ch) {

        case ' ': case '\t': case '\r': case '\n':
            break;

        case '"':
            s->value_of_text = s->after_colon && s->text_key;
            s->in_string = 1;
            s->value_chars = 0;
            s->klen = 0;
            s->after_colon = 0;
            break;

        case ':':
            if (s->after_string) {
                /* the string just closed was a key */
                s->usage_key = (s->klen == 5
                                && ngx_strncmp(s->key, "usage", 5) == 0);
                s->text_key = ((s->klen == 7
                                && ngx_strncmp(s->key, "content", 7) == 0)
                               || (s->klen == 5
                                   && ngx_strncmp(s->key, "delta", 5) == 0));
                s->after_colon = 1;
            }

            s->after_string = 0;
            break;

        case '{':
            if (s->after_colon && s->usage_key) {
                s->depth = 1;
                s->len = 0;
                s->overflow = 0;
                s->buf[s->len++] = ch;
            }

            s->after_colon = 0;
            s->after_string = 0;
            s->usage_key = 0;
            break;

        default:
            s->after_colon = 0;
            s->after_string = 0;
            s->usage_key = 0;
        }
    }
}


static void
ngx_http_llm_usage_parse(ngx_http_llm_scan_t *s, ngx_log_t *log)
{
    cJSON      *obj;
    size_t      at;
    ngx_str_t   text;

    if (s->overflow) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "llm: usage object longer than %d bytes ignored",
                      NGX_HTTP_LLM_USAGE_MAX);
        return;
    }

    text.data = s->buf;
    text.len = s->len;

    if (ngx_http_llm_json_parse(&text, &obj, &at, log) != NGX_OK) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "llm: malformed usage object in the reply");
        ngx_http_llm_json_done(text.len);
        return;
    }

    /* chat, completions and embeddings; else the Responses API's names */

    s->prompt = ngx_http_llm_usage_number(obj, "prompt_tokens", NULL, NULL);
    s->completion = ngx_http_llm_usage_number(obj, "completion_tokens",
                                              NULL, NULL);

    if (s->prompt == (ngx_uint_t) -1) {
        s->prompt = ngx_http_llm_usage_number(obj, "input_tokens",
                                              NULL, NULL);
        s->completion = ngx_http_llm_usage_number(obj, "output_tokens",
                                                  NULL, NULL);
        s->cached = ngx_http_llm_usage_number(obj, NULL,
                                              "input_tokens_details",
                                              "cached_tokens");
        s->reasoning = ngx_http_llm_usage_number(obj, NULL,
                                                 "output_tokens_details",
                                                 "reasoning_tokens");

    } else {
        s->cached = ngx_http_llm_usage_number(obj, NULL,
                                              "prompt_tokens_details",
                                              "cached_tokens");
        s->reasoning = ngx_http_llm_usage_number(obj, NULL,
                                                 "completion_tokens_details",
                                                 "reasoning_tokens");
    }

    s->total = ngx_http_llm_usage_number(obj, "total_tokens", NULL, NULL);

    ngx_http_llm_json_done(text.len);

    if (s->prompt == (ngx_uint_t) -1) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "llm: usage object without prompt or input tokens");
        return;
    }

    if (s->completion == (ngx_uint_t) -1) {
        /* embeddings */
        s->completion = 0;
    }

    if (s->total == (ngx_uint_t) -1) {
        s->total = s->prompt + s->completion;
    }

    if (s->cached == (ngx_uint_t) -1) {
        s->cached = 0;
    }

    if (s->reasoning == (ngx_uint_t) -1) {
        s->reasoning = 0;
    }

    s->found = 1;
}


static ngx_uint_t
ngx_http_llm_usage_number(cJSON *obj, const char *name, const char *details,
    const char *detail)
{
    cJSON  *item;

    if (details) {
        obj = cJSON_GetObjectItemCaseSensitive(obj, details);
        name = detail;
    }

    item = cJSON_GetObjectItemCaseSensitive(obj, name);

    if (!cJSON_IsNumber(item) || !(item->valuedouble >= 0)
        || item->valuedouble > NGX_HTTP_LLM_MAX_TOKENS)
    {
        return (ngx_uint_t) -1;
    }

    return (ngx_uint_t) item->valuedouble;
}


/* the usage of the reply: 1 reported by the backend, 2 counted, 0 none */

ngx_int_t
ngx_http_llm_usage_of(ngx_http_llm_ctx_t *ctx, ngx_http_llm_scan_t *out)
{
    ngx_http_llm_scan_t  *s;

    s = ctx->scan;

    if (s == NULL) {
        return 0;
    }

    if (s->found) {
        out->prompt = s->prompt;
        out->completion = s->completion;
        out->total = s->total;
        out->cached = s->cached;
        out->reasoning = s->reasoning;
        return 1;
    }

    /*
     * a stream that ended without usage (none asked for, or cut): one
     * token a text delta, as Azure sends them, and our own prompt count
     */

    if (ctx->sse && s->deltas) {
        out->prompt = ctx->prompt_tokens;
        out->completion = s->deltas;
        out->total = out->prompt + out->completion;
        out->cached = 0;
        out->reasoning = 0;
        return 2;
    }

    return 0;
}


ngx_int_t
ngx_http_llm_log_handler(ngx_http_request_t *r)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx) {
        ngx_http_llm_account(r, ctx);
        ngx_http_llm_consumers_account(r, ctx);
    }

    return NGX_OK;
}
