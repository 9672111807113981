
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_estimate.h"
#include "ngx_http_llm_json.h"
#include "ngx_http_llm_json_reader.h"
#include "ngx_http_llm_usage.h"
#include "ngx_http_llm_walk.h"


/*
 * A chat body of the usual shape counted in one pass over its text, with
 * no tree: building cJSON's tree and walking it cost more than all of
 * nginx's proxying of a 1 KB body.  The texts to count are the body's
 * own bytes, unless they hold escapes.  They are guessed as they come
 * when the encoding is known; when "model", which names it, comes after
 * "messages" (OpenAI's Python SDK sends it so), or when a tokenizer
 * counts them (it is not to count twice a body the walk then declines),
 * they are kept until the end.
 *
 * The walk reads strict JSON only, and counts only what it is sure
 * ngx_http_llm_inspect() would count the same: messages whose role,
 * content and name are strings or null, the numbers as plain integers.
 * Anything else (tools, an assistant's calls, content parts, prompts, a
 * json_schema, a member twice, escapes other than the simple ones and
 * \uXXXX outside the surrogates, a NUL byte, a number outside JSON's
 * grammar or a negative or fractional count, blanks other than JSON's
 * four, trailing bytes, nesting past 64) declines, and the body is read
 * into the tree as before.  A body the walk accepts is one the reader
 * reads, so errors are always cJSON's.  t/walk.t compares the two on
 * generated bodies.
 */


/* a key is read at every member: gcc would not inline it (260 a body) */
#if (defined __GNUC__)
#define ngx_http_llm_walk_inline  ngx_inline __attribute__((always_inline))
#else
#define ngx_http_llm_walk_inline  ngx_inline
#endif


#define NGX_HTTP_LLM_WALK_DEPTH   64

/* as the reader: a longer number is left to cJSON */
#define NGX_HTTP_LLM_WALK_NUMBER  63

#define NGX_HTTP_LLM_WALK_TEXT    0
#define NGX_HTTP_LLM_WALK_ROLE    1
#define NGX_HTTP_LLM_WALK_NAME    2


/* a text to count once the encoding is known */

typedef struct {
    ngx_str_t              text;
    ngx_uint_t             kind;
} ngx_http_llm_span_t;


typedef struct {
    u_char                *end;
    ngx_pool_t            *pool;
    ngx_array_t            spans;
    ngx_uint_t             messages;

    /*
     * NULL: texts kept as spans; else the encoding is known and the
     * count is a guess, made on the way in guess
     */
    ngx_http_llm_sum_t    *sum;
    ngx_http_llm_guess_t   guess;

    /* what the body's other members say */
    ngx_str_t              model;
    size_t                 model_start;  /* its place, quotes included */
    size_t                 model_end;
    ngx_uint_t             stream;
    ngx_uint_t             options;
    ngx_uint_t             numbers;      /* which of number[] were set */
    double                 number[NGX_HTTP_LLM_N_LAST];
} ngx_http_llm_walk_t;


typedef enum {
    NGX_HTTP_LLM_W_MODEL = 0,
    NGX_HTTP_LLM_W_STREAM,
    NGX_HTTP_LLM_W_STREAM_OPTIONS,
    NGX_HTTP_LLM_W_MESSAGES,
    NGX_HTTP_LLM_W_RESPONSE_FORMAT,
    NGX_HTTP_LLM_W_DECLINE,

    /* the numbers, in the order of ngx_http_llm_number_e */
    NGX_HTTP_LLM_W_NUMBER,
    NGX_HTTP_LLM_W_OTHER = NGX_HTTP_LLM_W_NUMBER + NGX_HTTP_LLM_N_LAST
} ngx_http_llm_walk_member_e;


typedef struct {
    ngx_str_t              name;
    ngx_uint_t             member;
} ngx_http_llm_walk_name_t;


static ngx_http_llm_walk_name_t  ngx_http_llm_walk_names[] = {
    { ngx_string("model"), NGX_HTTP_LLM_W_MODEL },
    { ngx_string("stream"), NGX_HTTP_LLM_W_STREAM },
    { ngx_string("stream_options"), NGX_HTTP_LLM_W_STREAM_OPTIONS },
    { ngx_string("messages"), NGX_HTTP_LLM_W_MESSAGES },
    { ngx_string("response_format"), NGX_HTTP_LLM_W_RESPONSE_FORMAT },
    { ngx_string("tools"), NGX_HTTP_LLM_W_DECLINE },
    { ngx_string("functions"), NGX_HTTP_LLM_W_DECLINE },
    { ngx_string("prompt"), NGX_HTTP_LLM_W_DECLINE },
    { ngx_string("input"), NGX_HTTP_LLM_W_DECLINE },
    { ngx_string("instructions"), NGX_HTTP_LLM_W_DECLINE },
    { ngx_string("max_completion_tokens"),
      NGX_HTTP_LLM_W_NUMBER + NGX_HTTP_LLM_N_MAX_COMPLETION_TOKENS },
    { ngx_string("max_tokens"),
      NGX_HTTP_LLM_W_NUMBER + NGX_HTTP_LLM_N_MAX_TOKENS },
    { ngx_string("max_output_tokens"),
      NGX_HTTP_LLM_W_NUMBER + NGX_HTTP_LLM_N_MAX_OUTPUT_TOKENS },
    { ngx_string("n"), NGX_HTTP_LLM_W_NUMBER + NGX_HTTP_LLM_N_N },
    { ngx_string("best_of"), NGX_HTTP_LLM_W_NUMBER + NGX_HTTP_LLM_N_BEST_OF }
};


/*
 * The names above and the usage names by length: bit i of [len] is set
 * where name i is len bytes long (all are shorter than 32), so that a
 * key is compared with the one or two names of its length only.  Made
 * once in each process, before threads may walk.
 */
static uint32_t  ngx_http_llm_walk_lens[32];
static uint32_t  ngx_http_llm_usage_lens[32];


static ngx_inline ngx_uint_t ngx_http_llm_walk_member(ngx_str_t *key);
static u_char *ngx_http_llm_walk_messages(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_walk_t *w, u_char *p,
    ngx_uint_t seen, ngx_http_llm_sum_t *sum);
static ngx_int_t ngx_http_llm_walk_done(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_walk_t *w,
    ngx_http_llm_sum_t *sum);
static u_char *ngx_http_llm_walk_message(ngx_http_llm_walk_t *w, u_char *p);
static ngx_inline ngx_uint_t ngx_http_llm_walk_ascii(u_char *p, size_t len,
    u_char *end);
static ngx_inline void ngx_http_llm_walk_add(ngx_http_llm_sum_t *sum,
    ngx_uint_t kind, ngx_str_t *text);
static u_char *ngx_http_llm_walk_format(u_char *p, u_char *end);
static u_char *ngx_http_llm_walk_details(u_char *p, u_char *end,
    ngx_str_t *name, ngx_uint_t *n);
static u_char *ngx_http_llm_walk_value(u_char *p, u_char *end,
    ngx_uint_t depth);
static ngx_inline u_char *ngx_http_llm_walk_open(u_char *p, u_char *end,
    ngx_uint_t *done);
static ngx_http_llm_walk_inline u_char *ngx_http_llm_walk_key(u_char *p,
    u_char *end, ngx_str_t *key);
static ngx_inline u_char *ngx_http_llm_walk_next(u_char *p, u_char *end,
    u_char close, ngx_uint_t *done);
static ngx_inline u_char *ngx_http_llm_walk_string(u_char *p, u_char *end,
    ngx_uint_t *escaped);
static u_char *ngx_http_llm_walk_escapes(u_char *p, u_char *end,
    ngx_uint_t *escaped);
static u_char *ngx_http_llm_walk_number(u_char *p, u_char *end);
static u_char *ngx_http_llm_walk_count(u_char *p, u_char *end, uint64_t *v);
static ngx_inline ngx_int_t ngx_http_llm_walk_text(ngx_http_llm_walk_t *w,
    u_char *start, u_char *close, ngx_uint_t escaped, ngx_str_t *text);


#define ngx_http_llm_walk_blank(c)                                           \
    ((c) == ' ' || (c) == '\n' || (c) == '\r' || (c) == '\t')

/* most bytes where a blank may be are above ' ': one compare passes them */

#define ngx_http_llm_walk_blanks(p, end)                                     \
    while ((p) < (end) && *(p) <= ' ' && ngx_http_llm_walk_blank(*(p))) {    \
        (p)++;                                                               \
    }

#define ngx_http_llm_walk_digit(c)  ((unsigned) ((c) - '0') < 10)

#define ngx_http_llm_walk_null(p, end)                                       \
    ((end) - (p) >= 4 && ngx_memcmp(p, "null", 4) == 0)


/*
 * NGX_OK: ctx holds the counts; NGX_DECLINED: the body is to be read
 * into the tree, nothing in ctx changed
 */

ngx_int_t
ngx_http_llm_walk(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_str_t *body)
{
    u_char              *p, *end;
    uint64_t             v;
    ngx_str_t            key;
    ngx_uint_t           i, seen, member, escaped, done;
    ngx_http_llm_sum_t   sum;
    ngx_http_llm_walk_t  w;

    p = body->data;
    end = p + body->len;

    ngx_http_llm_walk_blanks(p, end);

    if (p == end || *p != '{') {
        return NGX_DECLINED;
    }

    w.end = end;
    w.sum = NULL;
    w.messages = 0;
    w.pool = ngx_http_llm_json_scratch(r->connection->log);

    if (w.pool == NULL) {
        return NGX_ERROR;
    }

    /* made when a text has to be kept */
    ngx_memzero(&w.spans, sizeof(ngx_array_t));
    ngx_memzero(w.number, sizeof(w.number));

    ngx_str_null(&w.model);
    w.model_start = 0;
    w.model_end = 0;
    w.stream = 0;
    w.options = 0;
    w.numbers = 0;
    seen = 0;

    p = ngx_http_llm_walk_open(p, end, &done);

    while (!done) {

        /* only a key without escapes can be one of ours */

        p = ngx_http_llm_walk_key(p, end, &key);
        if (p == NULL) {
            return NGX_DECLINED;
        }

        member = ngx_http_llm_walk_member(&key);

        /* the tree's walk takes a member's first value: no second one */

        if (member == NGX_HTTP_LLM_W_DECLINE
            || (member != NGX_HTTP_LLM_W_OTHER && (seen & (1 << member))))
        {
            return NGX_DECLINED;
        }

        seen |= 1 << member;

        switch (member) {

        case NGX_HTTP_LLM_W_MODEL:

            if (*p != '"') {
                p = ngx_http_llm_walk_value(p, end, 1);
                break;
            }

            key.data = p + 1;
            p = ngx_http_llm_walk_string(p, end, &escaped);

            if (p == NULL
                || ngx_http_llm_walk_text(&w, key.data, p, escaped, &w.model)
                   != NGX_OK)
            {
                return NGX_DECLINED;
            }

            /* where the v1 API's deployment is, quotes included */
            w.model_start = key.data - 1 - body->data;
            w.model_end = p + 1 - body->data;

            p++;
            break;

        case NGX_HTTP_LLM_W_STREAM:
            w.stream = (end - p >= 4 && ngx_memcmp(p, "true", 4) == 0);
            p = ngx_http_llm_walk_value(p, end, 1);
            break;

        case NGX_HTTP_LLM_W_STREAM_OPTIONS:
            w.options = 1;
            p = ngx_http_llm_walk_value(p, end, 1);
            break;

        case NGX_HTTP_LLM_W_MESSAGES:
            p = ngx_http_llm_walk_messages(r, ctx, &w, p, seen, &sum);
            break;

        case NGX_HTTP_LLM_W_RESPONSE_FORMAT:

            /*
             * it counts only with a "json_schema", which the tree's walk
             * prints as compact JSON: such a body is left to it
             */

            p = (*p == '{') ? ngx_http_llm_walk_format(p, end)
                            : ngx_http_llm_walk_value(p, end, 1);
            break;

        case NGX_HTTP_LLM_W_OTHER:
            p = ngx_http_llm_walk_value(p, end, 1);
            break;

        default: /* a number */

            if (*p == '-' || ngx_http_llm_walk_digit(*p)) {
                i = member - NGX_HTTP_LLM_W_NUMBER;
                p = ngx_http_llm_walk_count(p, end, &v);
                w.number[i] = (double) v;
                w.numbers |= (ngx_uint_t) 1 << i;

            } else {
                p = ngx_http_llm_walk_value(p, end, 1);
            }
        }

        /* a value that failed (NULL) ends the walk there */

        p = ngx_http_llm_walk_next(p, end, '}', &done);
        if (p == NULL) {
            return NGX_DECLINED;
        }
    }

    /* cJSON takes bytes after the object; the walk leaves them to it */

    ngx_http_llm_walk_blanks(p, end);

    if (p != end) {
        return NGX_DECLINED;
    }

    return ngx_http_llm_walk_done(r, ctx, &w, &sum);
}


void
ngx_http_llm_walk_prepare(void)
{
    ngx_str_t   *s;
    ngx_uint_t   i;

    for (i = 0; i < sizeof(ngx_http_llm_walk_names)
                    / sizeof(ngx_http_llm_walk_name_t); i++)
    {
        ngx_http_llm_walk_lens[ngx_http_llm_walk_names[i].name.len]
                                                            |= 1 << i;
    }

    for (i = 0; i < NGX_HTTP_LLM_U_LAST; i++) {
        s = ngx_http_llm_usage_names[i].details.len
            ? &ngx_http_llm_usage_names[i].details
            : &ngx_http_llm_usage_names[i].name;

        ngx_http_llm_usage_lens[s->len] |= 1 << i;
    }
}


/* a member's name: one the walk counts, declines, or skips */

static ngx_inline ngx_uint_t
ngx_http_llm_walk_member(ngx_str_t *key)
{
    uint32_t     m;
    ngx_uint_t   i;
    ngx_str_t   *name;

    m = (key->len < 32) ? ngx_http_llm_walk_lens[key->len] : 0;

    for ( /* void */ ; m; m &= m - 1) {
        i = __builtin_ctz(m);
        name = &ngx_http_llm_walk_names[i].name;

        if (key->data[0] == name->data[0]
            && ngx_memcmp(key->data, name->data, key->len) == 0)
        {
            return ngx_http_llm_walk_names[i].member;
        }
    }

    return NGX_HTTP_LLM_W_OTHER;
}


/*
 * "messages": each message walked; NULL declines the body.  With the
 * encoding known, texts are guessed as they come (sum has no vocabulary
 * then); a tokenizer's count waits until the body is accepted, as a
 * body the walk declines is counted again by the tree.
 */

static u_char *
ngx_http_llm_walk_messages(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_walk_t *w, u_char *p, ngx_uint_t seen,
    ngx_http_llm_sum_t *sum)
{
    size_t                    n;
    ngx_uint_t                done;
    ngx_http_llm_loc_conf_t  *llcf;

    if (ngx_http_llm_walk_null(p, w->end)) {
        return p + 4;
    }

    if (*p != '[') {
        return NULL;
    }

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (llcf->count != NGX_HTTP_LLM_COUNT_EXACT
        && (llcf->encoding || (seen & (1 << NGX_HTTP_LLM_W_MODEL))))
    {
        ngx_http_llm_sum_init(r, w->model.len ? &w->model : &ctx->model,
                              sum);
        w->sum = sum;
        ngx_http_llm_guess_init(&w->guess, sum->encoding);
    }

    p = ngx_http_llm_walk_open(p, w->end, &done);

    while (!done) {
        p = ngx_http_llm_walk_message(w, p);
        p = ngx_http_llm_walk_next(p, w->end, ']', &done);

        if (p == NULL) {
            return NULL;
        }

        w->messages++;
    }

    if (w->sum) {
        sum->weight += ngx_http_llm_guess_done(&w->guess, &n);
        sum->chars += n;
    }

    return p;
}


/* the body is read and accepted: now ctx changes */

static ngx_int_t
ngx_http_llm_walk_done(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_walk_t *w, ngx_http_llm_sum_t *sum)
{
    ngx_uint_t            i;
    ngx_http_llm_span_t  *span;

    if (w->model.len) {
        ctx->model.data = ngx_pnalloc(r->pool, w->model.len);
        if (ctx->model.data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(ctx->model.data, w->model.data, w->model.len);
        ctx->model.len = w->model.len;
    }

    ctx->stream = w->stream;
    ctx->stream_options = w->options;

    /*
     * the place of "model" only where the tree's reading would look for
     * it: a deployment in the path (percent-encoded in the path sent, so
     * not replaced there) leaves the body as it is
     */

    ctx->model_found = 1;

    if (ctx->deployment.len == 0) {
        ctx->model_start = w->model_start;
        ctx->model_end = w->model_end;
    }

    if (w->sum == NULL) {
        ngx_http_llm_sum_init(r, &ctx->model, sum);

        span = w->spans.elts;

        for (i = 0; i < w->spans.nelts; i++) {
            ngx_http_llm_walk_add(sum, span[i].kind, &span[i].text);
        }
    }

    ngx_memcpy(sum->number, w->number, sizeof(w->number));
    sum->numbers = w->numbers;
    sum->messages = w->messages;

    ngx_http_llm_sum_done(r, ctx, sum);

    return NGX_OK;
}


/*
 * A message: its role, content and name are counted when they are
 * strings, skipped when null; a content of parts is left to the tree
 */

static u_char *
ngx_http_llm_walk_message(ngx_http_llm_walk_t *w, u_char *p)
{
    u_char               *end;
    ngx_str_t             key, text;
    ngx_uint_t            kind, seen, escaped, done;
    ngx_http_llm_span_t  *span;

    end = w->end;

    if (p == end || *p != '{') {
        return NULL;
    }

    seen = 0;
    p = ngx_http_llm_walk_open(p, end, &done);

    while (!done) {
        p = ngx_http_llm_walk_key(p, end, &key);
        if (p == NULL) {
            return NULL;
        }

        if (key.len == 4 && ngx_memcmp(key.data, "role", 4) == 0) {
            kind = NGX_HTTP_LLM_WALK_ROLE;

        } else if (key.len == 7 && ngx_memcmp(key.data, "content", 7) == 0) {
            kind = NGX_HTTP_LLM_WALK_TEXT;

        } else if (key.len == 4 && ngx_memcmp(key.data, "name", 4) == 0) {
            kind = NGX_HTTP_LLM_WALK_NAME;

        } else if ((key.len == 10
                    && ngx_memcmp(key.data, "tool_calls", 10) == 0)
                   || (key.len == 13
                       && ngx_memcmp(key.data, "function_call", 13) == 0))
        {
            /* calls the model reads back: the tree's reader counts them */
            return NULL;

        } else {
            p = ngx_http_llm_walk_value(p, end, 3);
            goto next;
        }

        if (seen & (1 << kind)) {
            return NULL;
        }

        seen |= 1 << kind;

        if (*p == '"') {
            key.data = p + 1;

            if (w->sum && kind != NGX_HTTP_LLM_WALK_ROLE) {

                /*
                 * the text is weighed on the way to its end; from an
                 * escape on it is decoded and weighed as it would be
                 * whole, weights adding up byte by byte
                 */

                p = (u_char *) ngx_http_llm_guess_json(&w->guess, key.data,
                                                       end);

                /* a name's own token now; a decoded rest is its text */

                if (kind == NGX_HTTP_LLM_WALK_NAME) {
                    w->sum->tokens++;
                    kind = NGX_HTTP_LLM_WALK_TEXT;
                }

                if (p < end && *p == '"') {
                    p++;
                    goto next;
                }

                key.data = p;
                p = ngx_http_llm_walk_escapes(p, end, &escaped);

            } else {
                p = ngx_http_llm_walk_string(p, end, &escaped);
            }

            if (p == NULL
                || ngx_http_llm_walk_text(w, key.data, p, escaped, &text)
                   != NGX_OK)
            {
                return NULL;
            }

            if (w->sum && kind == NGX_HTTP_LLM_WALK_ROLE && !escaped
                && ngx_http_llm_walk_ascii(text.data, text.len, end))
            {
                /* as ngx_http_llm_sum_role() guesses a role */
                w->sum->chars += text.len;
                w->sum->tokens++;

            } else if (w->sum) {
                ngx_http_llm_walk_add(w->sum, kind, &text);

            } else {
                if (w->spans.nalloc == 0
                    && ngx_array_init(&w->spans, w->pool, 16,
                                      sizeof(ngx_http_llm_span_t))
                       != NGX_OK)
                {
                    return NULL;
                }

                span = ngx_array_push(&w->spans);
                if (span == NULL) {
                    return NULL;
                }

                span->text = text;
                span->kind = kind;
            }

            p++;

        } else if (kind == NGX_HTTP_LLM_WALK_NAME) {
            /* a name that is not a string is not counted */
            p = ngx_http_llm_walk_value(p, end, 3);

        } else if (ngx_http_llm_walk_null(p, end)) {
            p += 4;

        } else {
            return NULL;
        }

    next:

        p = ngx_http_llm_walk_next(p, end, '}', &done);
        if (p == NULL) {
            return NULL;
        }
    }

    return p;
}


/*
 * Whether a short text is all ASCII, as every role the API knows is,
 * read as one block where the body has 16 bytes from it (its bytes are
 * then its characters); 0 leaves it to be counted
 */

static ngx_inline ngx_uint_t
ngx_http_llm_walk_ascii(u_char *p, size_t len, u_char *end)
{
#if (defined __SSE2__ && defined __GNUC__)

    unsigned  high;

    if (len < 16 && end - p >= 16) {
        high = (unsigned) _mm_movemask_epi8(
                              _mm_loadu_si128((const __m128i *) p));

        return (high & ((1u << len) - 1)) == 0;
    }

#endif

    return 0;
}


static ngx_inline void
ngx_http_llm_walk_add(ngx_http_llm_sum_t *sum, ngx_uint_t kind,
    ngx_str_t *text)
{
    switch (kind) {

    case NGX_HTTP_LLM_WALK_ROLE:
        ngx_http_llm_sum_role(sum, text->data, text->len);
        break;

    case NGX_HTTP_LLM_WALK_NAME:
        ngx_http_llm_sum_text(sum, text->data, text->len);
        sum->tokens++;
        break;

    default:
        ngx_http_llm_sum_text(sum, text->data, text->len);
    }
}


/*
 * A usage object at p: its counts ((ngx_uint_t) -1 where absent or not a
 * count), as ngx_http_llm_usage_number() finds them in its tree, and the
 * byte after it; NULL declines
 */

u_char *
ngx_http_llm_walk_usage(u_char *p, u_char *end, ngx_uint_t *n)
{
    uint32_t                    m;
    uint64_t                    v;
    ngx_str_t                   key, *s;
    ngx_uint_t                  i, seen, done;
    ngx_http_llm_usage_name_t  *name;

    for (i = 0; i < NGX_HTTP_LLM_U_LAST; i++) {
        n[i] = (ngx_uint_t) -1;
    }

    if (p == end || *p != '{') {
        return NULL;
    }

    seen = 0;
    p = ngx_http_llm_walk_open(p, end, &done);

    while (!done) {
        p = ngx_http_llm_walk_key(p, end, &key);
        if (p == NULL) {
            return NULL;
        }

        m = (key.len < 32) ? ngx_http_llm_usage_lens[key.len] : 0;

        for ( /* void */ ; m; m &= m - 1) {
            i = __builtin_ctz(m);
            name = &ngx_http_llm_usage_names[i];
            s = name->details.len ? &name->details : &name->name;

            if (key.data[0] == s->data[0]
                && ngx_memcmp(key.data, s->data, key.len) == 0)
            {
                break;
            }
        }

        if (m == 0) {
            p = ngx_http_llm_walk_value(p, end, 1);
            goto next;
        }

        if (seen & (1 << i)) {
            return NULL;
        }

        seen |= 1 << i;

        if (name->details.len && *p == '{') {
            p = ngx_http_llm_walk_details(p, end, &name->name, &n[i]);

        } else if (name->details.len == 0
                   && (*p == '-' || ngx_http_llm_walk_digit(*p)))
        {
            p = ngx_http_llm_walk_count(p, end, &v);
            n[i] = (v <= NGX_HTTP_LLM_MAX_TOKENS) ? v : (ngx_uint_t) -1;

        } else {
            p = ngx_http_llm_walk_value(p, end, 1);
        }

    next:

        p = ngx_http_llm_walk_next(p, end, '}', &done);
        if (p == NULL) {
            return NULL;
        }
    }

    return p;
}


/* a "response_format" object: one with a "json_schema" declines */

static u_char *
ngx_http_llm_walk_format(u_char *p, u_char *end)
{
    ngx_str_t   key;
    ngx_uint_t  done;

    p = ngx_http_llm_walk_open(p, end, &done);

    while (!done) {
        p = ngx_http_llm_walk_key(p, end, &key);

        if (p == NULL
            || (key.len == 11 && ngx_memcmp(key.data, "json_schema", 11) == 0))
        {
            return NULL;
        }

        p = ngx_http_llm_walk_value(p, end, 2);
        p = ngx_http_llm_walk_next(p, end, '}', &done);

        if (p == NULL) {
            return NULL;
        }
    }

    return p;
}


/* a usage object's details: the count of the given name */

static u_char *
ngx_http_llm_walk_details(u_char *p, u_char *end, ngx_str_t *name,
    ngx_uint_t *n)
{
    uint64_t    v;
    ngx_str_t   key;
    ngx_uint_t  seen, done;

    seen = 0;
    p = ngx_http_llm_walk_open(p, end, &done);

    while (!done) {
        p = ngx_http_llm_walk_key(p, end, &key);
        if (p == NULL) {
            return NULL;
        }

        if (key.len != name->len
            || ngx_memcmp(key.data, name->data, key.len) != 0)
        {
            p = ngx_http_llm_walk_value(p, end, 2);

        } else if (seen++) {
            return NULL;

        } else if (*p == '-' || ngx_http_llm_walk_digit(*p)) {
            p = ngx_http_llm_walk_count(p, end, &v);
            *n = (v <= NGX_HTTP_LLM_MAX_TOKENS) ? v : (ngx_uint_t) -1;

        } else {
            p = ngx_http_llm_walk_value(p, end, 2);
        }

        p = ngx_http_llm_walk_next(p, end, '}', &done);
        if (p == NULL) {
            return NULL;
        }
    }

    return p;
}


/* any value, checked and passed over; NULL declines */

static u_char *
ngx_http_llm_walk_value(u_char *p, u_char *end, ngx_uint_t depth)
{
    u_char      close;
    ngx_uint_t  escaped, done;

    if (p == end) {
        return NULL;
    }

    switch (*p) {

    case '"':
        p = ngx_http_llm_walk_string(p, end, &escaped);
        return p ? p + 1 : NULL;

    case 'n':
        return ngx_http_llm_walk_null(p, end) ? p + 4 : NULL;

    case 't':
        return (end - p >= 4 && ngx_memcmp(p, "true", 4) == 0) ? p + 4
                                                                 : NULL;

    case 'f':
        return (end - p >= 5 && ngx_memcmp(p, "false", 5) == 0) ? p + 5
                                                                  : NULL;

    case '{':
    case '[':
        break;

    default:
        return ngx_http_llm_walk_number(p, end);
    }

    if (++depth > NGX_HTTP_LLM_WALK_DEPTH) {
        return NULL;
    }

    close = (*p == '{') ? '}' : ']';
    p = ngx_http_llm_walk_open(p, end, &done);

    while (!done) {

        if (close == '}') {
            /* any key, escaped or not */

            if (p == end || *p != '"') {
                return NULL;
            }

            p = ngx_http_llm_walk_string(p, end, &escaped);
            if (p == NULL) {
                return NULL;
            }

            p++;
            ngx_http_llm_walk_blanks(p, end);

            if (p == end || *p != ':') {
                return NULL;
            }

            p++;
            ngx_http_llm_walk_blanks(p, end);
        }

        p = ngx_http_llm_walk_value(p, end, depth);
        p = ngx_http_llm_walk_next(p, end, close, &done);

        if (p == NULL) {
            return NULL;
        }
    }

    return p;
}


/*
 * Members and items one by one: ngx_http_llm_walk_open() at the brace or
 * bracket passes it and tells whether the list is empty,
 * ngx_http_llm_walk_key() reads a key without escapes and leaves p at
 * its value, ngx_http_llm_walk_next() after a value passes the comma
 * or, setting done, the closing byte.  NULL declines; the two last take
 * it as p too, so that a caller tests once.
 */

static ngx_inline u_char *
ngx_http_llm_walk_open(u_char *p, u_char *end, ngx_uint_t *done)
{
    u_char  close;

    close = (*p == '{') ? '}' : ']';

    p++;
    ngx_http_llm_walk_blanks(p, end);

    if (p < end && *p == close) {
        *done = 1;
        return p + 1;
    }

    *done = 0;
    return p;
}


static ngx_http_llm_walk_inline u_char *
ngx_http_llm_walk_key(u_char *p, u_char *end, ngx_str_t *key)
{
    ngx_uint_t  escaped;

    if (p == NULL || p == end || *p != '"') {
        return NULL;
    }

    key->data = p + 1;

    p = ngx_http_llm_walk_string(p, end, &escaped);
    if (p == NULL || escaped) {
        return NULL;
    }

    key->len = p - key->data;

    p++;

    /* the usual spellings, ':' and ': ' right after the key, at once */

    if (end - p > 2 && *p == ':') {
        p += 1 + (p[1] == ' ');

        /*
         * a value right there: out without the blanks' bound test (with
         * the same in ngx_http_llm_walk_next(), 90 instructions a body)
         */

        if (*p > ' ') {
            return p;
        }

    } else {
        ngx_http_llm_walk_blanks(p, end);

        if (p == end || *p != ':') {
            return NULL;
        }

        p++;
    }

    ngx_http_llm_walk_blanks(p, end);

    return (p < end) ? p : NULL;
}


static ngx_inline u_char *
ngx_http_llm_walk_next(u_char *p, u_char *end, u_char close,
    ngx_uint_t *done)
{
    if (p == NULL) {
        return NULL;
    }

    /* the usual spellings, ',' and ', ' right after the value, at once */

    if (end - p > 2 && *p == ',') {
        p += 1 + (p[1] == ' ');

        /* see ngx_http_llm_walk_key() */

        if (*p > ' ') {
            return p;
        }

        ngx_http_llm_walk_blanks(p, end);

        return p;
    }

    ngx_http_llm_walk_blanks(p, end);

    if (p == end) {
        return NULL;
    }

    if (*p == close) {
        *done = 1;
        return p + 1;
    }

    if (*p != ',') {
        return NULL;
    }

    p++;
    ngx_http_llm_walk_blanks(p, end);

    return p;
}


/*
 * The closing quote of the string whose opening quote is at p; NULL for
 * a string the walk declines (see above).  escaped tells whether the
 * string has to be decoded.  Most strings have no escape: that case is
 * inlined.
 */

static ngx_inline u_char *
ngx_http_llm_walk_string(u_char *p, u_char *end, ngx_uint_t *escaped)
{
    p = (u_char *) ngx_http_llm_json_find(p + 1, end, 1);

    if (p < end && *p == '"') {
        *escaped = 0;
        return p;
    }

    return ngx_http_llm_walk_escapes(p, end, escaped);
}


/* from the first backslash or NUL byte of a string, or its end */

static u_char *
ngx_http_llm_walk_escapes(u_char *p, u_char *end, ngx_uint_t *escaped)
{
    ngx_uint_t  c, i;

    *escaped = 1;

    for ( ;; ) {
        if (p == end || *p == '\0') {
            return NULL;
        }

        if (*p == '"') {
            return p;
        }

        /* a backslash */

        if (end - p < 2) {
            return NULL;
        }

        switch (p[1]) {

        case '"': case '\\': case '/':
        case 'b': case 'f': case 'n': case 'r': case 't':
            p = (u_char *) ngx_http_llm_json_find(p + 2, end, 1);
            continue;

        case 'u':
            break;

        default:
            return NULL;
        }

        if (end - p < 6) {
            return NULL;
        }

        c = 0;

        for (i = 2; i < 6; i++) {
            c <<= 4;

            if (ngx_http_llm_walk_digit(p[i])) {
                c |= p[i] - '0';

            } else if ((p[i] | 0x20) >= 'a' && (p[i] | 0x20) <= 'f') {
                c |= (p[i] | 0x20) - 'a' + 10;

            } else {
                return NULL;
            }
        }

        /* surrogates, paired or not, are left to the reader */

        if (c >= 0xd800 && c <= 0xdfff) {
            return NULL;
        }

        p = (u_char *) ngx_http_llm_json_find(p + 6, end, 1);
    }
}


/*
 * JSON's grammar, as the reader checks it: a byte after a number that
 * cJSON would have handed strtod() too is left to cJSON
 */

static u_char *
ngx_http_llm_walk_number(u_char *p, u_char *end)
{
    u_char  *start;

    start = p;

    if (*p == '-') {
        p++;
    }

    if (p < end && *p == '0') {
        p++;

    } else if (p < end && ngx_http_llm_walk_digit(*p)) {
        while (p < end && ngx_http_llm_walk_digit(*p)) {
            p++;
        }

    } else {
        return NULL;
    }

    if (p < end && *p == '.') {
        if (++p == end || !ngx_http_llm_walk_digit(*p)) {
            return NULL;
        }

        while (p < end && ngx_http_llm_walk_digit(*p)) {
            p++;
        }
    }

    if (p < end && (*p | 0x20) == 'e') {
        if (++p < end && (*p == '+' || *p == '-')) {
            p++;
        }

        if (p == end || !ngx_http_llm_walk_digit(*p)) {
            return NULL;
        }

        while (p < end && ngx_http_llm_walk_digit(*p)) {
            p++;
        }
    }

    if (p - start > NGX_HTTP_LLM_WALK_NUMBER
        || (p < end
            && (ngx_http_llm_walk_digit(*p) || *p == '.' || *p == '+'
                || *p == '-' || (*p | 0x20) == 'e')))
    {
        return NULL;
    }

    return p;
}


/*
 * A count (max_tokens, n, usage): a plain integer of up to 15 digits,
 * exact in a double as cJSON reads it; a sign, a fraction or an exponent
 * is left to the tree, and so is what JSON does not allow after it
 */

static u_char *
ngx_http_llm_walk_count(u_char *p, u_char *end, uint64_t *v)
{
    u_char    *start;
    uint64_t   n;

    start = p;
    n = 0;

    if (p < end && *p == '0') {
        p++;

    } else {
        while (p < end && ngx_http_llm_walk_digit(*p)) {
            n = n * 10 + (*p++ - '0');
        }
    }

    *v = n;

    if (p == start || p - start > 15
        || (p < end
            && (ngx_http_llm_walk_digit(*p) || *p == '.' || *p == '+'
                || *p == '-' || (*p | 0x20) == 'e')))
    {
        return NULL;
    }

    return p;
}


/*
 * A string's text as the tree holds it: the body's own bytes, or decoded
 * into the worker's scratch pool, up to a NUL that "\u0000" gave (the
 * tree's strings end there)
 */

static ngx_inline ngx_int_t
ngx_http_llm_walk_text(ngx_http_llm_walk_t *w, u_char *start, u_char *close,
    ngx_uint_t escaped, ngx_str_t *text)
{
    u_char  *dst;

    if (!escaped) {
        text->data = start;
        text->len = close - start;
        return NGX_OK;
    }

    dst = ngx_pnalloc(w->pool, close - start + 1);
    if (dst == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_llm_json_unescape(start, close, dst)
        != NGX_HTTP_LLM_JSON_READ)
    {
        return NGX_DECLINED;
    }

    text->data = dst;
    text->len = ngx_strlen(dst);

    return NGX_OK;
}
