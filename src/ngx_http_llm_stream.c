
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_stream.h"


/*
 * llm_stream_usage: a streaming chat or completions request that does
 * not ask for usage gets "stream_options": {"include_usage": true}, so
 * the backend ends the stream with its usage (docs/azure.md section 6);
 * what that changes in the stream is taken out again as it passes, so
 * the client gets the bytes it would have got without us:
 *
 *   - the last event before [DONE], "choices": [] with the usage, is
 *     dropped (clients that read choices[0] of every event fail on it);
 *   - the "usage": null member of every other event is removed.
 *
 * Events are complete when a blank line ends them; the bytes of an event
 * not yet ended wait for the rest (they are of no use to a client before
 * it), an ended event goes out at once.
 */


#define NGX_HTTP_LLM_STRIP_MAX   65536

/* 2024-09-01-preview is the first api-version that knows stream_options */
#define NGX_HTTP_LLM_STREAM_OPTIONS_SINCE  "2024-09-01"


static ngx_uint_t ngx_http_llm_injectable(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static u_char *ngx_http_llm_event_end(u_char *p, u_char *last);
static u_char *ngx_http_llm_copy_event(u_char *dst, u_char *p,
    u_char *last);
static ngx_uint_t ngx_http_llm_usage_event(u_char *p, u_char *last);
static ngx_int_t ngx_http_llm_strip_link(ngx_http_request_t *r, ngx_buf_t *b,
    ngx_chain_t ***ll);
static ngx_buf_t *ngx_http_llm_strip_buf(ngx_http_request_t *r,
    ngx_http_llm_strip_t *st, size_t size);
static ngx_int_t ngx_http_llm_strip_off(ngx_http_request_t *r,
    ngx_http_llm_strip_t *st, ngx_chain_t *in, ngx_chain_t ***ll);


static ngx_str_t  ngx_http_llm_stream_options =
    ngx_string("\"stream_options\":{\"include_usage\":true},");


ngx_int_t
ngx_http_llm_inject_usage(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    off_t    len;
    u_char  *p, *last;

    if (!ngx_http_llm_injectable(r, ctx)) {
        return NGX_OK;
    }

    /* right after the object's "{": the body parsed, so it is there */

    p = ctx->body.data;
    last = p + ctx->body.len;

    while (p < last && *p != '{') {
        p++;
    }

    if (p == last) {
        return NGX_OK;
    }

    ctx->inject_at = p + 1 - ctx->body.data;
    ctx->inject_usage = 1;

    r->request_body->bufs = ngx_http_llm_body_chain(r, ctx, NULL, &len);
    if (r->request_body->bufs == NULL) {
        return NGX_ERROR;
    }

    r->headers_in.content_length_n = len;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm stream: include_usage added");

    return NGX_OK;
}


/*
 * A stream of chat or legacy completions that names no stream_options
 * (a client that set include_usage false, or other options, is left as
 * it is), and an api-version that knows them: none (the v1 API,
 * OpenAI's) or a date from 2024-09-01 on
 */

static ngx_uint_t
ngx_http_llm_injectable(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_str_t  version;

    static u_char  completions[] = "/completions";

    if (!ctx->stream || ctx->stream_options || ctx->embeddings) {
        return 0;
    }

    if (r->uri.len < sizeof(completions) - 1
        || ngx_strncmp(r->uri.data + r->uri.len - (sizeof(completions) - 1),
                       completions, sizeof(completions) - 1)
           != 0)
    {
        return 0;
    }

    if (ngx_http_arg(r, (u_char *) "api-version", sizeof("api-version") - 1,
                     &version)
        != NGX_OK)
    {
        return 1;
    }

    if (version.len >= sizeof(NGX_HTTP_LLM_STREAM_OPTIONS_SINCE) - 1
        && version.data[0] >= '0' && version.data[0] <= '9'
        && ngx_strncmp(version.data, NGX_HTTP_LLM_STREAM_OPTIONS_SINCE,
                       sizeof(NGX_HTTP_LLM_STREAM_OPTIONS_SINCE) - 1)
           < 0)
    {
        return 0;
    }

    return 1;
}


/*
 * The body as the backend gets it: the client's bytes where they are,
 * with stream_options added and, for the v1 API, "model" replaced by
 * the backend's deployment.  Sets len to its length.
 */

ngx_chain_t *
ngx_http_llm_body_chain(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_str_t *model, off_t *len)
{
    u_char       *p, *data;
    size_t        cut;
    ngx_buf_t    *b;
    ngx_str_t     piece[5];
    ngx_uint_t    i, n;
    ngx_chain_t  *cl, *out, **ll;

    data = ctx->body.data;
    n = 0;

    /* the client's body, cut where something goes in */

    cut = 0;

    if (ctx->inject_usage) {
        piece[n].data = data;
        piece[n++].len = ctx->inject_at;
        piece[n++] = ngx_http_llm_stream_options;
        cut = ctx->inject_at;
    }

    if (model) {
        p = ngx_pnalloc(r->pool, model->len + 2);
        if (p == NULL) {
            return NULL;
        }

        p[0] = '"';
        ngx_memcpy(p + 1, model->data, model->len);
        p[model->len + 1] = '"';

        piece[n].data = data + cut;
        piece[n++].len = ctx->model_start - cut;
        piece[n].data = p;
        piece[n++].len = model->len + 2;
        cut = ctx->model_end;
    }

    piece[n].data = data + cut;
    piece[n++].len = ctx->body.len - cut;

    out = NULL;
    ll = &out;
    *len = 0;

    for (i = 0; i < n; i++) {
        b = ngx_calloc_buf(r->pool);
        if (b == NULL) {
            return NULL;
        }

        b->memory = 1;
        b->start = piece[i].data;
        b->pos = b->start;
        b->last = b->start + piece[i].len;
        b->end = b->last;
        b->last_buf = (i == n - 1);

        cl = ngx_alloc_chain_link(r->pool);
        if (cl == NULL) {
            return NULL;
        }

        cl->buf = b;
        *ll = cl;
        ll = &cl->next;

        *len += piece[i].len;
    }

    *ll = NULL;

    return out;
}


/*
 * The body filter's part: the bytes of "in" are taken (the upstream's
 * buffers are free again at once) and what the client gets goes out in
 * our own buffers, reused once sent.
 */

ngx_int_t
ngx_http_llm_strip(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_chain_t *in, ngx_chain_t **out)
{
    u_char                *p, *end;
    size_t                 size, n;
    ngx_buf_t             *b, *pending, *o;
    ngx_uint_t             flush, last;
    ngx_chain_t           *cl, **ll;
    ngx_http_llm_strip_t  *st;

    st = ctx->strip;
    *out = NULL;
    ll = out;

    if (st->off) {
        return ngx_http_llm_strip_off(r, st, in, &ll);
    }

    /* editing only takes bytes away: one buffer holds what goes out */

    size = st->pending->last - st->pending->pos;
    flush = 0;
    last = 0;

    for (cl = in; cl; cl = cl->next) {
        size += cl->buf->last - cl->buf->pos;
        flush |= cl->buf->flush;
        last |= cl->buf->last_buf;
    }

    if (size == 0 && !flush && !last) {
        return NGX_OK;
    }

    o = ngx_http_llm_strip_buf(r, st, size);
    if (o == NULL) {
        return NGX_ERROR;
    }

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;
        n = b->last - b->pos;
        pending = st->pending;

        if (n > (size_t) (pending->end - pending->last)) {

            /* what waits moves to the front, or into a larger buffer */

            size = pending->last - pending->pos;

            if (size + n > (size_t) (pending->end - pending->start)) {
                pending = ngx_create_temp_buf(r->pool, size + n);
                if (pending == NULL) {
                    return NGX_ERROR;
                }
            }

            ngx_memmove(pending->start, st->pending->pos, size);
            pending->pos = pending->start;
            pending->last = pending->start + size;
            st->pending = pending;
        }

        if (n) {
            pending->last = ngx_cpymem(pending->last, b->pos, n);
            b->pos = b->last;
        }

        /* the events that ended go out, edited, at once */

        for (p = pending->pos;
             (end = ngx_http_llm_event_end(p, pending->last)) != NULL;
             p = end)
        {
            o->last = ngx_http_llm_copy_event(o->last, p, end);
        }

        pending->pos = p;

        if ((size_t) (pending->last - pending->pos)
            > NGX_HTTP_LLM_STRIP_MAX)
        {
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "llm: stream event longer than %d bytes, "
                          "\"usage\" left in the stream",
                          NGX_HTTP_LLM_STRIP_MAX);

            o->last = ngx_cpymem(o->last, pending->pos,
                                 pending->last - pending->pos);
            pending->pos = pending->last;
            st->off = 1;

            /* what is edited goes first, the rest as it is */

            if (ngx_http_llm_strip_link(r, o, &ll) != NGX_OK) {
                return NGX_ERROR;
            }

            return ngx_http_llm_strip_off(r, st, cl->next, &ll);
        }
    }

    pending = st->pending;

    if (last && pending->last > pending->pos) {
        /* a stream cut in the middle of an event: its bytes as they are */
        o->last = ngx_cpymem(o->last, pending->pos,
                             pending->last - pending->pos);
        pending->pos = pending->last;
    }

    if (pending->pos == pending->last) {
        pending->pos = pending->start;
        pending->last = pending->start;
    }

    if (o->last == o->pos) {

        /* nothing to send (an event dropped, or not ended): keep the buf */

        cl = ngx_alloc_chain_link(r->pool);
        if (cl == NULL) {
            return NGX_ERROR;
        }

        cl->buf = o;
        cl->next = st->free;
        st->free = cl;

        if (!flush && !last) {
            return NGX_OK;
        }

        /* an empty buffer in memory would be "zero size buf" to nginx */

        o = ngx_calloc_buf(r->pool);
        if (o == NULL) {
            return NGX_ERROR;
        }
    }

    o->flush = flush;
    o->last_buf = last;

    return ngx_http_llm_strip_link(r, o, &ll);
}


/* appends a buffer to the chain that goes out */

static ngx_int_t
ngx_http_llm_strip_link(ngx_http_request_t *r, ngx_buf_t *b,
    ngx_chain_t ***ll)
{
    ngx_chain_t  *cl;

    cl = ngx_alloc_chain_link(r->pool);
    if (cl == NULL) {
        return NGX_ERROR;
    }

    cl->buf = b;
    cl->next = NULL;
    **ll = cl;
    *ll = &cl->next;

    return NGX_OK;
}


/* after the blank line that ends the event at p, or NULL if none yet */

static u_char *
ngx_http_llm_event_end(u_char *p, u_char *last)
{
    u_char  *lf;

    while (p < last) {
        lf = ngx_strlchr(p, last, '\n');

        if (lf == NULL) {
            return NULL;
        }

        if (lf == p || (lf == p + 1 && *p == '\r')) {
            return lf + 1;
        }

        p = lf + 1;
    }

    return NULL;
}


/*
 * Copies an event without what include_usage added: the whole event if
 * it is the usage chunk ("choices": [] and a usage object), else its
 * "usage": null members with the comma that joins each to the object.
 * A raw '"' in JSON text always starts or ends a string, so '"usage":'
 * outside a string value is a key.
 */

static u_char *
ngx_http_llm_copy_event(u_char *dst, u_char *p, u_char *last)
{
    u_char  *k, *v, *from, *to;

    static u_char  usage[] = "\"usage\":";

    if (ngx_http_llm_usage_event(p, last)) {
        return dst;
    }

    for ( ;; ) {
        k = ngx_strlcasestrn(p, last, usage, sizeof(usage) - 2);

        if (k == NULL) {
            break;
        }

        for (v = k + sizeof(usage) - 1; v < last && *v == ' '; v++) {
            /* void */
        }

        if (last - v < 4 || ngx_strncmp(v, "null", 4) != 0) {
            dst = ngx_cpymem(dst, p, v - p);
            p = v;
            continue;
        }

        from = k;
        to = v + 4;

        /* the comma before it, or else the one after it */

        for (v = from; v > p && (v[-1] == ' ' || v[-1] == '\n'); v--) {
            /* void */
        }

        if (v > p && v[-1] == ',') {
            from = v - 1;

        } else {
            for (v = to; v < last && *v == ' '; v++) {
                /* void */
            }

            if (v < last && *v == ',') {
                to = v + 1;
            }
        }

        dst = ngx_cpymem(dst, p, from - p);
        p = to;
    }

    return ngx_cpymem(dst, p, last - p);
}


/* "choices": [] and a "usage" object: the event include_usage adds */

static ngx_uint_t
ngx_http_llm_usage_event(u_char *p, u_char *last)
{
    u_char  *v;

    static u_char  choices[] = "\"choices\":";
    static u_char  usage[] = "\"usage\":";

    v = ngx_strlcasestrn(p, last, choices, sizeof(choices) - 2);
    if (v == NULL) {
        return 0;
    }

    for (v += sizeof(choices) - 1; v < last && *v == ' '; v++) { /* void */ }

    if (v == last || *v++ != '[') {
        return 0;
    }

    for ( /* void */ ; v < last && *v == ' '; v++) { /* void */ }

    if (v == last || *v != ']') {
        return 0;
    }

    v = ngx_strlcasestrn(p, last, usage, sizeof(usage) - 2);
    if (v == NULL) {
        return 0;
    }

    for (v += sizeof(usage) - 1; v < last && *v == ' '; v++) { /* void */ }

    return (v < last && *v == '{');
}


/* a buffer of ours for at least size bytes: a free one, or a new one */

static ngx_buf_t *
ngx_http_llm_strip_buf(ngx_http_request_t *r, ngx_http_llm_strip_t *st,
    size_t size)
{
    ngx_buf_t    *b;
    ngx_chain_t  *cl, **ll;

    for (ll = &st->free; *ll; ll = &(*ll)->next) {
        b = (*ll)->buf;

        if ((size_t) (b->end - b->start) >= size) {
            cl = *ll;
            *ll = cl->next;
            ngx_free_chain(r->pool, cl);

            b->pos = b->start;
            b->last = b->start;
            b->flush = 0;
            b->last_buf = 0;

            return b;
        }
    }

    b = ngx_create_temp_buf(r->pool, ngx_max(size, 1024));
    if (b == NULL) {
        return NULL;
    }

    b->tag = (ngx_buf_tag_t) &ngx_http_llm_filter_module;

    return b;
}


/* what waits goes out as it is, then everything else unedited */

static ngx_int_t
ngx_http_llm_strip_off(ngx_http_request_t *r, ngx_http_llm_strip_t *st,
    ngx_chain_t *in, ngx_chain_t ***ll)
{
    size_t      size;
    ngx_buf_t  *o;

    size = st->pending->last - st->pending->pos;

    if (size) {
        o = ngx_http_llm_strip_buf(r, st, size);
        if (o == NULL) {
            return NGX_ERROR;
        }

        o->last = ngx_cpymem(o->last, st->pending->pos, size);
        st->pending->pos = st->pending->last;

        if (ngx_http_llm_strip_link(r, o, ll) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    for ( /* void */ ; in; in = in->next) {
        if (ngx_http_llm_strip_link(r, in->buf, ll) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}
