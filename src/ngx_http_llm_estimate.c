
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <cjson/cJSON.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_audio.h"
#include "ngx_http_llm_estimate.h"
#include "ngx_http_llm_image.h"
#include "ngx_http_llm_json_reader.h"
#include "ngx_http_llm_vocab.h"


/*
 * One walk of the parsed body adds up two prompt counts: characters / 4,
 * what an Azure Standard deployment charges at arrival (docs/azure.md
 * section 1), and tokens: exact with the model's vocabulary, else
 * guessed from the text's scripts ("llm_count estimate").  Both get 3
 * tokens of framing per message and 3 for the reply; the cost of a
 * request adds the completion reserve times the number of choices.
 */


#define ngx_http_llm_is_string(item)                                         \
    (cJSON_IsString(item) && (item)->valuestring != NULL)


/* the members of a body that inspect reads, found in one walk */

typedef enum {
    NGX_HTTP_LLM_M_MODEL = 0,
    NGX_HTTP_LLM_M_STREAM,
    NGX_HTTP_LLM_M_STREAM_OPTIONS,
    NGX_HTTP_LLM_M_MESSAGES,
    NGX_HTTP_LLM_M_TOOLS,
    NGX_HTTP_LLM_M_FUNCTIONS,
    NGX_HTTP_LLM_M_RESPONSE_FORMAT,
    NGX_HTTP_LLM_M_PROMPT,
    NGX_HTTP_LLM_M_INPUT,
    NGX_HTTP_LLM_M_INSTRUCTIONS,
    NGX_HTTP_LLM_M_MAX_COMPLETION_TOKENS,
    NGX_HTTP_LLM_M_MAX_TOKENS,
    NGX_HTTP_LLM_M_MAX_OUTPUT_TOKENS,
    NGX_HTTP_LLM_M_N,
    NGX_HTTP_LLM_M_BEST_OF,
    NGX_HTTP_LLM_M_LAST
} ngx_http_llm_member_e;


static const char  *ngx_http_llm_body_members[] = {
    "model", "stream", "stream_options", "messages", "tools", "functions",
    "response_format", "prompt", "input", "instructions",
    "max_completion_tokens", "max_tokens", "max_output_tokens", "n",
    "best_of"
};

static const char  *ngx_http_llm_message_members[] = {
    "role", "content", "name", "tool_calls", "function_call"
};


static const char *ngx_http_llm_members(cJSON *obj, const char **names,
    ngx_uint_t n, cJSON **found);
static cJSON *ngx_http_llm_member(ngx_http_llm_sum_t *sum, cJSON *obj,
    const char *name);
static void ngx_http_llm_add_text(ngx_http_llm_sum_t *sum, const char *s);
static size_t ngx_http_llm_chars(const u_char *p, size_t len);
static void ngx_http_llm_add_tokens(ngx_http_llm_sum_t *sum, u_char *text,
    size_t len);
static void ngx_http_llm_add_role(ngx_http_llm_sum_t *sum, cJSON *role);
static void ngx_http_llm_add_content(ngx_http_llm_sum_t *sum,
    cJSON *content);
static void ngx_http_llm_add_call(ngx_http_llm_sum_t *sum, cJSON *call);
static void ngx_http_llm_add_input(ngx_http_llm_sum_t *sum, cJSON *input,
    ngx_uint_t *items);
static void ngx_http_llm_add_tools(ngx_http_llm_sum_t *sum, cJSON *tools,
    cJSON *format);
static void ngx_http_llm_add_line(ngx_http_llm_sum_t *sum, cJSON *a,
    cJSON *b, cJSON *c);
static void ngx_http_llm_numbers(ngx_http_llm_sum_t *sum, cJSON **m);
static ngx_int_t ngx_http_llm_number(ngx_http_llm_sum_t *sum, ngx_uint_t i,
    ngx_uint_t max, ngx_uint_t *value);
static ngx_int_t ngx_http_llm_copy_string(ngx_pool_t *pool, cJSON *item,
    ngx_str_t *dst);
static ngx_uint_t ngx_http_llm_member_is(u_char *key, u_char *key_end,
    ngx_str_t *name);


ngx_int_t
ngx_http_llm_inspect(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    cJSON *root)
{
    cJSON               *item, *msg, *call, *m[NGX_HTTP_LLM_M_LAST], *mm[5];
    ngx_http_llm_sum_t   sum;

    ctx->duplicate = ngx_http_llm_members(root, ngx_http_llm_body_members,
                                          NGX_HTTP_LLM_M_LAST, m);
    if (ctx->duplicate) {
        return NGX_OK;
    }

    item = m[NGX_HTTP_LLM_M_MODEL];

    if (ngx_http_llm_is_string(item) && item->valuestring[0] != '\0') {
        if (ngx_http_llm_copy_string(r->pool, item, &ctx->model) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    ctx->stream = cJSON_IsTrue(m[NGX_HTTP_LLM_M_STREAM]) ? 1 : 0;
    ctx->stream_options = (m[NGX_HTTP_LLM_M_STREAM_OPTIONS] != NULL);

    ngx_http_llm_sum_init(r, &ctx->model, &sum);

    /*
     * chat completions: OpenAI's recipe, 3 tokens a message, its role,
     * content and name, 1 more with a name, and 3 to prime the reply
     */

    cJSON_ArrayForEach(msg, m[NGX_HTTP_LLM_M_MESSAGES]) {
        sum.messages++;

        ctx->duplicate = ngx_http_llm_members(msg,
                                              ngx_http_llm_message_members,
                                              5, mm);
        if (ctx->duplicate) {
            return NGX_OK;
        }

        ngx_http_llm_add_role(&sum, mm[0]);
        ngx_http_llm_add_content(&sum, mm[1]);

        if (ngx_http_llm_is_string(mm[2])) {
            ngx_http_llm_add_text(&sum, mm[2]->valuestring);
            sum.tokens++;
        }

        /* the calls an assistant's message made, which the model reads */

        cJSON_ArrayForEach(call, mm[3]) {
            ngx_http_llm_add_call(&sum,
                                  ngx_http_llm_member(&sum, call, "function"));
        }

        ngx_http_llm_add_call(&sum, mm[4]);
    }

    /* tool and function definitions, and a response schema */

    ngx_http_llm_add_tools(&sum, m[NGX_HTTP_LLM_M_TOOLS]
                                 ? m[NGX_HTTP_LLM_M_TOOLS]
                                 : m[NGX_HTTP_LLM_M_FUNCTIONS],
                           m[NGX_HTTP_LLM_M_RESPONSE_FORMAT]);

    /* legacy completions, embeddings and the Responses API */

    ngx_http_llm_add_input(&sum, m[NGX_HTTP_LLM_M_PROMPT], &sum.messages);
    ngx_http_llm_add_input(&sum, m[NGX_HTTP_LLM_M_INPUT], &sum.messages);
    ngx_http_llm_add_content(&sum, m[NGX_HTTP_LLM_M_INSTRUCTIONS]);

    ngx_http_llm_numbers(&sum, m);
    ngx_http_llm_sum_done(r, ctx, &sum);

    /* a part, a tool or a schema that names a member twice */

    ctx->duplicate = sum.duplicate;

    return NGX_OK;
}


/* what to count with, for the model the body names */

void
ngx_http_llm_sum_init(ngx_http_request_t *r, ngx_str_t *model,
    ngx_http_llm_sum_t *sum)
{
    ngx_http_llm_loc_conf_t   *llcf;
    ngx_http_llm_main_conf_t  *lmcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);
    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);

    ngx_memzero(sum, sizeof(ngx_http_llm_sum_t));

    sum->encoding = llcf->encoding ? llcf->encoding
                                   : ngx_http_llm_encoding_for(model);

    /* exact counts when the model's vocabulary is loaded */

    if (llcf->count == NGX_HTTP_LLM_COUNT_EXACT) {
        sum->vocab = lmcf->vocab[sum->encoding];
        sum->cache = llcf->count_cache;

        if (sum->vocab) {
            sum->counter = ngx_http_llm_counter();
        }
    }

    sum->pool = r->pool;
    sum->remote_image = llcf->image_tokens;
    sum->mini = (model->len >= 7
                 && ngx_strlcasestrn(model->data, model->data + model->len,
                                     (u_char *) "4o-mini", 7 - 1)
                    != NULL);
}


/* the counts of the request from the sum and the body's numbers */

void
ngx_http_llm_sum_done(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_sum_t *sum)
{
    ngx_uint_t                 value;
    ngx_http_llm_loc_conf_t   *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    ctx->prompt_estimate = (sum->chars + 3) / 4;

    if (sum->messages) {
        ctx->prompt_estimate += 3 * sum->messages + 3;
        sum->tokens += 3 * sum->messages + 3;
    }

    sum->tokens += (sum->weight + NGX_HTTP_LLM_WEIGHT_UNIT - 1)
                   / NGX_HTTP_LLM_WEIGHT_UNIT;

    ctx->prompt_tokens = ngx_min(sum->tokens, NGX_HTTP_LLM_MAX_TOKENS);

    if (sum->vocab) {
        ngx_http_llm_count_done(sum->counter, ctx->body.len);
    }

    /* the completion reserve: the most specific limit the body names */

    ctx->embeddings = (r->uri.len >= sizeof("/embeddings") - 1
                       && ngx_strncmp(r->uri.data + r->uri.len
                                      - (sizeof("/embeddings") - 1),
                                      "/embeddings",
                                      sizeof("/embeddings") - 1)
                          == 0);

    if (ngx_http_llm_number(sum, NGX_HTTP_LLM_N_MAX_COMPLETION_TOKENS,
                            NGX_HTTP_LLM_MAX_TOKENS, &value)
        == NGX_OK
        || ngx_http_llm_number(sum, NGX_HTTP_LLM_N_MAX_TOKENS,
                               NGX_HTTP_LLM_MAX_TOKENS, &value)
           == NGX_OK
        || ngx_http_llm_number(sum, NGX_HTTP_LLM_N_MAX_OUTPUT_TOKENS,
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

    if (ngx_http_llm_number(sum, NGX_HTTP_LLM_N_N, NGX_HTTP_LLM_MAX_CHOICES,
                            &value)
        == NGX_OK && value > 1)
    {
        ctx->choices = value;
    }

    if (ngx_http_llm_number(sum, NGX_HTTP_LLM_N_BEST_OF,
                            NGX_HTTP_LLM_MAX_CHOICES, &value)
        == NGX_OK && value > ctx->choices)
    {
        ctx->choices = value;
    }

    if (ctx->prompt_estimate > NGX_HTTP_LLM_MAX_TOKENS) {
        ctx->prompt_estimate = NGX_HTTP_LLM_MAX_TOKENS;
    }

    ctx->tokens_estimate = (ngx_uint_t)
                           ngx_min((uint64_t) ctx->prompt_tokens
                                   + (uint64_t) ngx_min(ctx->reserve,
                                                     NGX_HTTP_LLM_MAX_TOKENS)
                                     * ctx->choices,
                                   NGX_HTTP_LLM_MAX_CHARGE);
}


/*
 * "/openai/deployments/{name}/..." names the deployment; the v1 API
 * names it in the body's "model" instead
 */

void
ngx_http_llm_deployment_from_uri(ngx_str_t *uri, ngx_str_t *deployment)
{
    u_char  *p, *last, *start;

    deployment->len = 0;
    deployment->data = NULL;

    last = uri->data + uri->len;

    /*
     * the first "/deployments/" in any case, compared as it is usually
     * spelt first: ngx_strlcasestrn() called ngx_strncasecmp(), 17
     * instructions a byte, at every slash of the path; memchr() goes
     * from slash to slash
     */

    for (p = memchr(uri->data, '/', uri->len);
         p && last - p >= (ssize_t) sizeof("/deployments/") - 1;
         p = memchr(p + 1, '/', last - p - 1))
    {
        if ((p[1] | 0x20) == 'd'
            && (ngx_memcmp(p + 2, "eployments/", sizeof("eployments/") - 1)
                == 0
                || ngx_strncasecmp(p + 2, (u_char *) "eployments/",
                                   sizeof("eployments/") - 1)
                   == 0))
        {
            start = p + sizeof("/deployments/") - 1;

            for (p = start; p < last && *p != '/'; p++) {
                /* void */
            }

            deployment->data = start;
            deployment->len = p - start;
            return;
        }
    }
}


/*
 * Several members of an object in one walk, as
 * cJSON_GetObjectItemCaseSensitive() would find them (a dozen walks and
 * strcmp() calls a message cost more than the rest of the walk).  A name
 * met twice is returned: parsers disagree on which one counts (cJSON
 * takes the first, most others the last), so such a body is refused
 * rather than counted for one value and served for the other.
 */

static const char *
ngx_http_llm_members(cJSON *obj, const char **names, ngx_uint_t n,
    cJSON **found)
{
    cJSON       *item;
    ngx_uint_t   i;

    ngx_memzero(found, n * sizeof(cJSON *));

    if (obj == NULL) {
        return NULL;
    }

    for (item = obj->child; item; item = item->next) {

        if (item->string == NULL) {
            continue;
        }

        for (i = 0; i < n; i++) {
            if (item->string[0] == names[i][0]
                && ngx_strcmp(item->string, names[i]) == 0)
            {
                if (found[i]) {
                    return names[i];
                }

                found[i] = item;
                break;
            }
        }
    }

    return NULL;
}


/*
 * One member of an object, the first of its name, as
 * cJSON_GetObjectItemCaseSensitive() finds it; a name met twice is noted
 * in the sum, and the body refused (see ngx_http_llm_members())
 */

static cJSON *
ngx_http_llm_member(ngx_http_llm_sum_t *sum, cJSON *obj, const char *name)
{
    cJSON       *found;
    const char  *duplicate;

    duplicate = ngx_http_llm_members(obj, &name, 1, &found);

    if (duplicate && sum->duplicate == NULL) {
        sum->duplicate = duplicate;
    }

    return found;
}


/*
 * A text of the prompt: its characters for Azure's estimate, its tokens
 * counted or guessed (the guess counts the characters on its way)
 */

static void
ngx_http_llm_add_text(ngx_http_llm_sum_t *sum, const char *s)
{
    ngx_http_llm_sum_text(sum, (const u_char *) s, ngx_strlen(s));
}


void
ngx_http_llm_sum_text(ngx_http_llm_sum_t *sum, const u_char *p, size_t len)
{
    size_t  n;

    if (sum->vocab == NULL) {
        sum->weight += ngx_http_llm_estimate_weight(sum->encoding, p, len,
                                                    &n);
        sum->chars += n;
        return;
    }

    sum->chars += ngx_http_llm_chars(p, len);
    sum->tokens += ngx_http_llm_count(sum->counter, sum->vocab,
                                      (u_char *) p, len, sum->cache);
}


/*
 * Characters are the bytes that do not continue a UTF-8 sequence
 * (10xxxxxx), counted eight at a time: a continuation byte has bit 7 set
 * and bit 6 clear.
 */

static size_t
ngx_http_llm_chars(const u_char *p, size_t len)
{
    size_t    n, i;
    uint64_t  w, c;

    n = len;

    for (i = 0; i + 8 <= len; i += 8) {
        ngx_memcpy(&w, p + i, 8);
        c = (w & ~(w << 1)) & 0x8080808080808080ULL;

        /* the number of set bits, each one a continuation byte */
        c >>= 7;
        c = (c * 0x0101010101010101ULL) >> 56;
        n -= (size_t) c;
    }

    for ( /* void */ ; i < len; i++) {
        n -= ((p[i] & 0xc0) == 0x80);
    }

    return n;
}


/* tokens that are not prompt characters: definitions, schemas, enums */

static void
ngx_http_llm_add_tokens(ngx_http_llm_sum_t *sum, u_char *text, size_t len)
{
    if (sum->vocab) {
        sum->tokens += ngx_http_llm_count(sum->counter, sum->vocab, text, len,
                                          sum->cache);
        return;
    }

    sum->weight += ngx_http_llm_estimate_weight(sum->encoding, text, len,
                                                NULL);
}


/*
 * A role is characters for Azure's estimate; every role the API knows
 * ("system", "developer", "user", "assistant", "tool") is a single token
 * in both encodings, which a guess by its letters would not give.
 */

static void
ngx_http_llm_add_role(ngx_http_llm_sum_t *sum, cJSON *role)
{
    if (!ngx_http_llm_is_string(role)) {
        ngx_http_llm_add_content(sum, role);
        return;
    }

    ngx_http_llm_sum_role(sum, (u_char *) role->valuestring,
                          ngx_strlen(role->valuestring));
}


void
ngx_http_llm_sum_role(ngx_http_llm_sum_t *sum, const u_char *p, size_t len)
{
    if (sum->vocab) {
        ngx_http_llm_sum_text(sum, p, len);
        return;
    }

    sum->chars += ngx_http_llm_chars(p, len);
    sum->tokens++;
}


/*
 * A message's content: a string, or an array of parts of which only
 * text is characters; images count by the tile rule, audio by its
 * duration, files not at all (their text is the backend's to extract)
 */

static void
ngx_http_llm_add_content(ngx_http_llm_sum_t *sum, cJSON *content)
{
    cJSON  *part, *text, *image, *url, *detail, *audio, *data;

    if (ngx_http_llm_is_string(content)) {
        ngx_http_llm_add_text(sum, content->valuestring);
        return;
    }

    if (!cJSON_IsArray(content)) {
        return;
    }

    cJSON_ArrayForEach(part, content) {

        if (ngx_http_llm_is_string(part)) {
            ngx_http_llm_add_text(sum, part->valuestring);
            continue;
        }

        text = ngx_http_llm_member(sum, part, "text");

        if (ngx_http_llm_is_string(text)) {
            ngx_http_llm_add_text(sum, text->valuestring);
            continue;
        }

        audio = ngx_http_llm_member(sum, part, "input_audio");

        if (audio) {
            data = ngx_http_llm_member(sum, audio, "data");

            if (ngx_http_llm_is_string(data)) {
                sum->tokens += ngx_http_llm_audio_tokens(data->valuestring);
            }

            continue;
        }

        image = ngx_http_llm_member(sum, part, "image_url");

        if (image) {
            url = ngx_http_llm_member(sum, image, "url");
            detail = ngx_http_llm_member(sum, image, "detail");

            if (ngx_http_llm_is_string(image)) {
                url = image;
            }

            if (ngx_http_llm_is_string(url)) {
                sum->tokens += ngx_http_llm_image_tokens(sum->pool,
                                  url->valuestring,
                                  ngx_http_llm_is_string(detail)
                                  ? detail->valuestring : NULL,
                                  sum->mini, sum->remote_image);
            }
        }
    }
}


/*
 * A function call, as the model reads it back: its name, its arguments
 * and, for the Responses API's function_call_output, the output, with 3
 * tokens around them as for a message.  Nothing for what is not one.
 */

static void
ngx_http_llm_add_call(ngx_http_llm_sum_t *sum, cJSON *call)
{
    cJSON  *name, *arguments, *output;

    if (!cJSON_IsObject(call)) {
        return;
    }

    name = ngx_http_llm_member(sum, call, "name");
    arguments = ngx_http_llm_member(sum, call, "arguments");
    output = ngx_http_llm_member(sum, call, "output");

    if (name == NULL && arguments == NULL && output == NULL) {
        return;
    }

    sum->tokens += 3;

    ngx_http_llm_add_content(sum, name);
    ngx_http_llm_add_content(sum, arguments);
    ngx_http_llm_add_content(sum, output);
}


/*
 * "prompt" and "input": a string, an array of strings, or (Responses
 * API) an array of items with a role and content, or function calls and
 * their outputs; arrays of token ids count one character and one token
 * each
 */

static void
ngx_http_llm_add_input(ngx_http_llm_sum_t *sum, cJSON *input,
    ngx_uint_t *items)
{
    cJSON  *item, *content;

    if (input == NULL) {
        return;
    }

    if (!cJSON_IsArray(input)) {
        ngx_http_llm_add_content(sum, input);
        return;
    }

    cJSON_ArrayForEach(item, input) {

        if (cJSON_IsNumber(item)) {
            sum->chars++;
            sum->tokens++;
            continue;
        }

        if (!cJSON_IsObject(item)) {
            ngx_http_llm_add_content(sum, item);
            continue;
        }

        content = ngx_http_llm_member(sum, item, "content");

        if (content) {
            (*items)++;
            ngx_http_llm_add_role(sum,
                          ngx_http_llm_member(sum, item, "role"));
            ngx_http_llm_add_content(sum, content);
            continue;
        }

        /* an object without content: a function call or its output */

        ngx_http_llm_add_call(sum, item);
    }
}


/*
 * Tools by OpenAI's published recipe (cookbook "How to count tokens with
 * tiktoken"): per function 7 tokens (10 for the cl100k models) and the
 * tokens of "name:description"; with properties 3 more, and per
 * property 3 and "name:type:description", an enum -3 and 3 plus the
 * tokens of each item; 12 at the end.  A trailing period of a
 * description is dropped.  A json_schema response format has no
 * published recipe: its compact JSON text is counted.
 */

static void
ngx_http_llm_add_tools(ngx_http_llm_sum_t *sum, cJSON *tools, cJSON *format)
{
    char        *text;
    cJSON       *tool, *fn, *props, *prop, *item, *en, *schema;
    ngx_uint_t   nfunc;
    ngx_int_t    tokens;

    tokens = 0;
    nfunc = 0;

    cJSON_ArrayForEach(tool, tools) {
        fn = ngx_http_llm_member(sum, tool, "function");

        if (fn == NULL) {
            fn = tool;
        }

        if (!cJSON_IsObject(fn)) {
            continue;
        }

        nfunc++;
        tokens += (sum->encoding == NGX_HTTP_LLM_ENC_CL100K) ? 10 : 7;

        ngx_http_llm_add_line(sum,
                    ngx_http_llm_member(sum, fn, "name"), NULL,
                    ngx_http_llm_member(sum, fn, "description"));

        props = ngx_http_llm_member(sum,
                    ngx_http_llm_member(sum, fn, "parameters"),
                    "properties");

        if (cJSON_GetArraySize(props) > 0) {
            tokens += 3;
        }

        cJSON_ArrayForEach(prop, props) {
            tokens += 3;

            en = ngx_http_llm_member(sum, prop, "enum");

            if (en) {
                tokens -= 3;

                cJSON_ArrayForEach(item, en) {
                    tokens += 3;

                    if (ngx_http_llm_is_string(item)) {
                        ngx_http_llm_add_tokens(sum,
                                           (u_char *) item->valuestring,
                                           ngx_strlen(item->valuestring));
                    }
                }
            }

            ngx_http_llm_add_line(sum, prop,
                     ngx_http_llm_member(sum, prop, "type"),
                     ngx_http_llm_member(sum, prop, "description"));
        }
    }

    if (nfunc) {
        tokens += 12;
    }

    sum->tokens += (tokens > 0) ? (size_t) tokens : 0;

    schema = ngx_http_llm_member(sum, format, "json_schema");

    if (schema) {
        text = cJSON_PrintUnformatted(schema);

        if (text) {
            ngx_http_llm_add_tokens(sum, (u_char *) text, ngx_strlen(text));
        }
    }
}


/*
 * "a:b:c" or "a:c" of a definition: a is the name (for a property, its
 * key), c a description without its trailing period
 */

static void
ngx_http_llm_add_line(ngx_http_llm_sum_t *sum, cJSON *a, cJSON *b, cJSON *c)
{
    u_char      *p, *line;
    size_t       len, la, lb, lc;
    const char  *sa, *sb, *sc;

    sa = (a && a->string && !ngx_http_llm_is_string(a)) ? a->string
         : (ngx_http_llm_is_string(a) ? a->valuestring : "");
    sb = ngx_http_llm_is_string(b) ? b->valuestring : NULL;
    sc = ngx_http_llm_is_string(c) ? c->valuestring : "";

    la = ngx_strlen(sa);
    lb = sb ? ngx_strlen(sb) : 0;
    lc = ngx_strlen(sc);

    if (lc && sc[lc - 1] == '.') {
        lc--;
    }

    len = la + 1 + (sb ? lb + 1 : 0) + lc;

    line = ngx_pnalloc(sum->pool, len + 1);
    if (line == NULL) {
        return;
    }

    p = ngx_cpymem(line, sa, la);
    *p++ = ':';

    if (sb) {
        p = ngx_cpymem(p, sb, lb);
        *p++ = ':';
    }

    p = ngx_cpymem(p, sc, lc);
    *p = '\0';

    /* characters of definitions are not prompt text for Azure's charge */

    ngx_http_llm_add_tokens(sum, line, p - line);
}


/* the tree's numbers that ngx_http_llm_sum_done() reads */

static void
ngx_http_llm_numbers(ngx_http_llm_sum_t *sum, cJSON **m)
{
    cJSON       *item;
    ngx_uint_t   i;

    for (i = 0; i < NGX_HTTP_LLM_N_LAST; i++) {
        item = m[NGX_HTTP_LLM_M_MAX_COMPLETION_TOKENS + i];

        if (cJSON_IsNumber(item)) {
            sum->numbers |= (ngx_uint_t) 1 << i;
            sum->number[i] = item->valuedouble;
        }
    }
}


/* a non-negative integer member, clamped to max; NGX_DECLINED if absent */

static ngx_int_t
ngx_http_llm_number(ngx_http_llm_sum_t *sum, ngx_uint_t i, ngx_uint_t max,
    ngx_uint_t *value)
{
    double  d;

    if (!(sum->numbers & ((ngx_uint_t) 1 << i))) {
        return NGX_DECLINED;
    }

    d = sum->number[i];

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


/* whether the raw key from key to key_end is name */

static ngx_uint_t
ngx_http_llm_member_is(u_char *key, u_char *key_end, ngx_str_t *name)
{
    size_t  len;
    u_char  buf[128];

    len = key_end - key;

    if (len == name->len && ngx_strncmp(key, name->data, len) == 0) {
        return 1;
    }

    /*
     * a key spelled with escapes ("m\u006fdel") is the same member to the
     * tree, which read the request, and to the backend, which must not
     * get the client's value there; decoded as the tree decodes keys,
     * up to a NUL byte
     */

    if (len >= sizeof(buf) || ngx_strlchr(key, key_end, '\\') == NULL
        || ngx_http_llm_json_unescape(key, key_end, buf)
           != NGX_HTTP_LLM_JSON_READ)
    {
        return 0;
    }

    return ngx_strlen(buf) == name->len
           && ngx_memcmp(buf, name->data, name->len) == 0;
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

    /*
     * read as cJSON, which read the request, does: a UTF-8 BOM first,
     * and any byte up to the space as a blank
     */

    if (last - p >= 3 && p[0] == 0xef && p[1] == 0xbb && p[2] == 0xbf) {
        p += 3;
    }

    while (p < last && *p <= ' ') {
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

            while (p < last && *p <= ' ') {
                p++;
            }

            if (p == last || *p != ':') {
                /* a string value, not a key */
                break;
            }

            p++;

            while (p < last && *p <= ' ') {
                p++;
            }

            if (p < last && *p == '"'
                && ngx_http_llm_member_is(key, key_end, name))
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
