
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * The first estimate of a request's cost: prompt characters / 4 (what an
 * Azure Standard deployment charges at arrival, AOAI_FACTS.md section 1)
 * plus 3 tokens of framing per message and 3 for the reply, and the
 * completion reserve times the number of choices.  The exact tokenizer
 * replaces the prompt part; the shape of the walk stays.
 */


#define ngx_http_llm_is_string(item)                                         \
    (cJSON_IsString(item) && (item)->valuestring != NULL)


static size_t ngx_http_llm_utf8_chars(const char *s);
static size_t ngx_http_llm_content_chars(cJSON *content);
static size_t ngx_http_llm_input_chars(cJSON *input, ngx_uint_t *items);
static ngx_int_t ngx_http_llm_number(cJSON *root, const char *name,
    ngx_uint_t max, ngx_uint_t *value);
static ngx_int_t ngx_http_llm_copy_string(ngx_pool_t *pool, cJSON *item,
    ngx_str_t *dst);


ngx_int_t
ngx_http_llm_inspect(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    cJSON *root)
{
    size_t                    chars;
    cJSON                    *item, *msg;
    ngx_uint_t                messages, value;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    item = cJSON_GetObjectItemCaseSensitive(root, "model");

    if (ngx_http_llm_is_string(item) && item->valuestring[0] != '\0') {
        if (ngx_http_llm_copy_string(r->pool, item, &ctx->model) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    item = cJSON_GetObjectItemCaseSensitive(root, "stream");
    ctx->stream = cJSON_IsTrue(item) ? 1 : 0;

    chars = 0;
    messages = 0;

    /* chat completions */

    item = cJSON_GetObjectItemCaseSensitive(root, "messages");

    cJSON_ArrayForEach(msg, item) {
        messages++;

        chars += ngx_http_llm_content_chars(
                     cJSON_GetObjectItemCaseSensitive(msg, "role"));
        chars += ngx_http_llm_content_chars(
                     cJSON_GetObjectItemCaseSensitive(msg, "content"));

        if (cJSON_GetObjectItemCaseSensitive(msg, "name")) {
            chars += ngx_http_llm_content_chars(
                         cJSON_GetObjectItemCaseSensitive(msg, "name"));
        }
    }

    /* legacy completions, embeddings and the Responses API */

    chars += ngx_http_llm_input_chars(
                 cJSON_GetObjectItemCaseSensitive(root, "prompt"), &messages);
    chars += ngx_http_llm_input_chars(
                 cJSON_GetObjectItemCaseSensitive(root, "input"), &messages);
    chars += ngx_http_llm_content_chars(
                 cJSON_GetObjectItemCaseSensitive(root, "instructions"));

    ctx->prompt_estimate = (chars + 3) / 4;

    if (messages) {
        ctx->prompt_estimate += 3 * messages + 3;
    }

    /* the completion reserve: the most specific limit the body names */

    ctx->embeddings = (r->uri.len >= sizeof("/embeddings") - 1
                       && ngx_strncmp(r->uri.data + r->uri.len
                                      - (sizeof("/embeddings") - 1),
                                      "/embeddings",
                                      sizeof("/embeddings") - 1)
                          == 0);

    if (ngx_http_llm_number(root, "max_completion_tokens",
                            NGX_HTTP_LLM_MAX_TOKENS, &value)
        == NGX_OK
        || ngx_http_llm_number(root, "max_tokens",
                               NGX_HTTP_LLM_MAX_TOKENS, &value)
           == NGX_OK
        || ngx_http_llm_number(root, "max_output_tokens",
                               NGX_HTTP_LLM_MAX_TOKENS, &value)
           == NGX_OK)
    {
        ctx->has_reserve = 1;
        ctx->explicit_reserve = value;
    }

    if (ctx->embeddings) {
        ctx->reserve = 0;

    } else if (ctx->has_reserve) {
        ctx->reserve = ctx->explicit_reserve;

    } else {
        ctx->reserve = llcf->completion_reserve;
    }

    ctx->choices = 1;

    if (ngx_http_llm_number(root, "n", NGX_HTTP_LLM_MAX_CHOICES, &value)
        == NGX_OK && value > 1)
    {
        ctx->choices = value;
    }

    if (ngx_http_llm_number(root, "best_of", NGX_HTTP_LLM_MAX_CHOICES, &value)
        == NGX_OK && value > ctx->choices)
    {
        ctx->choices = value;
    }

    if (ctx->prompt_estimate > NGX_HTTP_LLM_MAX_TOKENS) {
        ctx->prompt_estimate = NGX_HTTP_LLM_MAX_TOKENS;
    }

    ctx->tokens_estimate = ctx->prompt_estimate
                           + ctx->reserve * ctx->choices;

    return NGX_OK;
}


/*
 * "/openai/deployments/{name}/..." names the deployment; the v1 API
 * names it in the body's "model" instead
 */

void
ngx_http_llm_deployment_from_uri(ngx_str_t *uri, ngx_str_t *deployment)
{
    u_char  *p, *last, *start;

    static u_char  prefix[] = "/deployments/";

    deployment->len = 0;
    deployment->data = NULL;

    last = uri->data + uri->len;

    p = ngx_strlcasestrn(uri->data, last, prefix, sizeof(prefix) - 2);
    if (p == NULL) {
        return;
    }

    start = p + sizeof(prefix) - 1;

    for (p = start; p < last && *p != '/'; p++) {
        /* void */
    }

    deployment->data = start;
    deployment->len = p - start;
}


static size_t
ngx_http_llm_utf8_chars(const char *s)
{
    size_t         n;
    const u_char  *p;

    n = 0;

    for (p = (const u_char *) s; *p; p++) {
        /* count every byte that does not continue a character */
        n += ((*p & 0xc0) != 0x80);
    }

    return n;
}


/*
 * A message's content: a string, or an array of parts of which only
 * text is characters; images and audio are not text and are counted by
 * their own rules later
 */

static size_t
ngx_http_llm_content_chars(cJSON *content)
{
    size_t   chars;
    cJSON   *part, *text;

    if (ngx_http_llm_is_string(content)) {
        return ngx_http_llm_utf8_chars(content->valuestring);
    }

    if (!cJSON_IsArray(content)) {
        return 0;
    }

    chars = 0;

    cJSON_ArrayForEach(part, content) {

        if (ngx_http_llm_is_string(part)) {
            chars += ngx_http_llm_utf8_chars(part->valuestring);
            continue;
        }

        text = cJSON_GetObjectItemCaseSensitive(part, "text");

        if (ngx_http_llm_is_string(text)) {
            chars += ngx_http_llm_utf8_chars(text->valuestring);
        }
    }

    return chars;
}


/*
 * "prompt" and "input": a string, an array of strings, or (Responses
 * API) an array of items with a role and content; arrays of token ids
 * count as one character each, which is close enough for an estimate
 */

static size_t
ngx_http_llm_input_chars(cJSON *input, ngx_uint_t *items)
{
    size_t   chars;
    cJSON   *item, *content;

    if (input == NULL) {
        return 0;
    }

    if (!cJSON_IsArray(input)) {
        return ngx_http_llm_content_chars(input);
    }

    chars = 0;

    cJSON_ArrayForEach(item, input) {

        if (cJSON_IsNumber(item)) {
            chars++;
            continue;
        }

        if (!cJSON_IsObject(item)) {
            chars += ngx_http_llm_content_chars(item);
            continue;
        }

        content = cJSON_GetObjectItemCaseSensitive(item, "content");

        if (content) {
            (*items)++;
            chars += ngx_http_llm_content_chars(
                         cJSON_GetObjectItemCaseSensitive(item, "role"));
            chars += ngx_http_llm_content_chars(content);
            continue;
        }

        chars += ngx_http_llm_content_chars(item);
    }

    return chars;
}


/* a non-negative integer member, clamped to max; NGX_DECLINED if absent */

static ngx_int_t
ngx_http_llm_number(cJSON *root, const char *name, ngx_uint_t max,
    ngx_uint_t *value)
{
    double  d;
    cJSON  *item;

    item = cJSON_GetObjectItemCaseSensitive(root, name);

    if (!cJSON_IsNumber(item)) {
        return NGX_DECLINED;
    }

    d = item->valuedouble;

    if (!(d >= 0)) {
        return NGX_DECLINED;
    }

    *value = (d >= (double) max) ? max : (ngx_uint_t) d;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_copy_string(ngx_pool_t *pool, cJSON *item, ngx_str_t *dst)
{
    size_t  len;

    len = ngx_strlen(item->valuestring);

    dst->data = ngx_pnalloc(pool, len);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(dst->data, item->valuestring, len);
    dst->len = len;

    return NGX_OK;
}


/*
 * The bytes of a top-level string member's value, quotes included, in
 * the raw body: the v1 API names the deployment in "model", which each
 * backend needs replaced by its own.  cJSON gives no positions, so this
 * walks the body once more, but only until the member is found.
 */

ngx_int_t
ngx_http_llm_find_member(ngx_str_t *json, ngx_str_t *name, size_t *start,
    size_t *end)
{
    u_char      *p, *last, *key, *key_end;
    ngx_uint_t   depth;

    p = json->data;
    last = p + json->len;

    while (p < last && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
    {
        p++;
    }

    if (p == last || *p++ != '{') {
        return NGX_DECLINED;
    }

    depth = 1;
    key = NULL;
    key_end = NULL;

    /* expecting: a key at depth 1, then ':' and its value */

    while (p < last) {

        switch (*p) {

        case '"':
            key = ++p;

            while (p < last && *p != '"') {
                p += (*p == '\\') ? 2 : 1;
            }

            if (p >= last) {
                return NGX_DECLINED;
            }

            key_end = p++;

            if (depth != 1) {
                break;
            }

            while (p < last && (*p == ' ' || *p == '\t' || *p == '\r'
                                || *p == '\n'))
            {
                p++;
            }

            if (p == last || *p != ':') {
                /* a string value, not a key */
                break;
            }

            p++;

            while (p < last && (*p == ' ' || *p == '\t' || *p == '\r'
                                || *p == '\n'))
            {
                p++;
            }

            if (p < last && *p == '"'
                && (size_t) (key_end - key) == name->len
                && ngx_strncmp(key, name->data, name->len) == 0)
            {
                *start = p - json->data;
                p++;

                while (p < last && *p != '"') {
                    p += (*p == '\\') ? 2 : 1;
                }

                if (p >= last) {
                    return NGX_DECLINED;
                }

                *end = p + 1 - json->data;
                return NGX_OK;
            }

            break;

        case '{':
        case '[':
            depth++;
            p++;
            break;

        case '}':
        case ']':
            if (--depth == 0) {
                return NGX_DECLINED;
            }

            p++;
            break;

        default:
            p++;
        }
    }

    return NGX_DECLINED;
}
