
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_admit.h"
#include "ngx_http_llm_stream.h"
#include "ngx_http_llm_usage.h"


/* a media type, parameters after it allowed, in any case */

#define ngx_http_llm_type_is(type, name)                                     \
    ((type)->len >= sizeof(name) - 1                                         \
     && (ngx_memcmp((type)->data, name, sizeof(name) - 1) == 0              \
         || ngx_strncasecmp((type)->data, (u_char *) name,                  \
                            sizeof(name) - 1) == 0))


static ngx_int_t ngx_http_llm_filter_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_llm_header_filter(ngx_http_request_t *r);
static void ngx_http_llm_scan_reply(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);


static ngx_http_module_t  ngx_http_llm_filter_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_llm_filter_init,              /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_llm_filter_module = {
    NGX_MODULE_V1,
    &ngx_http_llm_filter_module_ctx,       /* module context */
    NULL,                                  /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


/*
 * When a retry finds every backend of the pool without room, the
 * balancer says NGX_BUSY and nginx answers 502 "no live upstreams".
 * The backends are not down, only full: the client gets one 429 in
 * Azure's shape with the earliest time any backend has room again.
 */

static ngx_int_t
ngx_http_llm_header_filter(ngx_http_request_t *r)
{
    ngx_uint_t           from_backend;
    ngx_table_elt_t     *h;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL || r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    /* a backend's answer: proxied, or a hedged attempt's (llm_hedge) */

    from_backend = (r->upstream || ctx->hedge);

    if (ctx->cached) {
        from_backend = 0;
    }

#if (NGX_HTTP_CACHE)

    /*
     * proxy_cache answered (with $llm_cache_key): no backend served it,
     * and its usage is no one's; admission's charges are given back
     */

    if (r->upstream
        && (r->upstream->cache_status == NGX_HTTP_CACHE_HIT
            || r->upstream->cache_status == NGX_HTTP_CACHE_STALE
            || r->upstream->cache_status == NGX_HTTP_CACHE_UPDATING))
    {
        ctx->cached = 1;
        from_backend = 0;
    }

#endif

    if (ctx->backend && from_backend
        && r->headers_out.status == NGX_HTTP_OK)
    {
        ngx_http_llm_scan_reply(r, ctx);
    }

    /* the client may want to know it got another model's answer */

    if (ctx->fallback && from_backend) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "X-LLM-Fallback");
        h->value = ctx->pool->name;
    }

    if (!ctx->all_throttled
        || r->headers_out.status != NGX_HTTP_BAD_GATEWAY)
    {
        return ngx_http_next_header_filter(r);
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm header filter: 502 becomes 429");

    if (ngx_http_llm_throttled_response(r, ctx, &ctx->throttled_body)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ctx->replace_body = 1;

    /* $status says what the client got */

    r->err_status = NGX_HTTP_TOO_MANY_REQUESTS;

    return ngx_http_next_header_filter(r);
}


/*
 * A 200 from a backend in JSON or SSE is scanned for its usage as it
 * passes; an encoded reply (gzip) is not, rather than read as garbage.
 */

static void
ngx_http_llm_scan_reply(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_str_t                *type;
    ngx_http_llm_loc_conf_t  *llcf;

    if (r->headers_out.content_encoding
        && r->headers_out.content_encoding->value.len
        && ngx_strcasecmp(r->headers_out.content_encoding->value.data,
                          (u_char *) "identity") != 0)
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "llm: reply with Content-Encoding \"%V\" not "
                      "scanned for usage",
                      &r->headers_out.content_encoding->value);
        return;
    }

    type = &r->headers_out.content_type;

    /* the type as backends spell it is compared first: it is quicker */

    if (ngx_http_llm_type_is(type, "application/json")) {
        /* void */

    } else if (ngx_http_llm_type_is(type, "text/event-stream")) {
        ctx->sse = 1;

    } else {
        return;
    }

    /*
     * a stream's gap is kept after the scanner's state (see
     * ngx_http_llm_scan_texts()), written before it is read
     */

    ctx->scan = ngx_palloc(r->pool, sizeof(ngx_http_llm_scan_t)
                                    + (ctx->sse ? NGX_HTTP_LLM_GAP_MAX : 0));
    if (ctx->scan == NULL) {
        return;
    }

    ngx_memzero(ctx->scan, sizeof(ngx_http_llm_scan_t));

    ctx->scan->pool = r->pool;

    if (ctx->sse) {
        ctx->scan->gap = (u_char *) (ctx->scan + 1);
        ctx->scan->gap_size = NGX_HTTP_LLM_GAP_MAX;
    }

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);
    ctx->scan->walk = llcf->body_walk;

    if (!ctx->sse || !ctx->inject_usage) {
        return;
    }

    /* the stream changes length: what include_usage added comes out */

    ctx->strip = ngx_pcalloc(r->pool, sizeof(ngx_http_llm_strip_t));
    if (ctx->strip == NULL) {
        return;
    }

    ctx->strip->pending = ngx_create_temp_buf(r->pool, 4096);
    if (ctx->strip->pending == NULL) {
        ctx->strip = NULL;
        return;
    }

    ngx_http_clear_content_length(r);
    r->filter_need_in_memory = 1;
}


static ngx_int_t
ngx_http_llm_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_int_t            rc;
    ngx_uint_t           last;
    ngx_chain_t         *cl, out, *edited;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL) {
        return ngx_http_next_body_filter(r, in);
    }

    /*
     * a reply cut after its header (the backend closed, timed out) is
     * finalized without its last buffer: the log phase tells it from a
     * whole one by this (ngx_http_llm_log_handler())
     */

    for (cl = in; cl; cl = cl->next) {
        if (cl->buf->last_buf || cl->buf->last_in_chain) {
            ctx->reply_ended = 1;
        }
    }

    if (ctx->scan) {

        /* a JSON reply whole in its first buffer, as most are */

        if (!ctx->sse && !ctx->first_byte && in && ngx_buf_in_memory(in->buf)
            && r->headers_out.content_length_n > 0
            && ngx_buf_size(in->buf) == r->headers_out.content_length_n)
        {
            (void) ngx_http_llm_scan_whole(ctx->scan, in->buf->pos,
                                           in->buf->last,
                                           r->connection->log);
        }

        for (cl = in; cl; cl = cl->next) {

            if (!ctx->first_byte && ngx_buf_size(cl->buf)) {
                ctx->first_byte = 1;
                ctx->ttft = ngx_current_msec - ctx->start;
            }

            if (ngx_buf_in_memory(cl->buf)) {
                ngx_http_llm_scan(ctx->scan, cl->buf->pos, cl->buf->last,
                                  r->connection->log);
            }
        }
    }

    if (ctx->strip) {
        if (ngx_http_llm_strip(r, ctx, in, &edited) != NGX_OK) {
            return NGX_ERROR;
        }

        rc = ngx_http_next_body_filter(r, edited);

        ngx_chain_update_chains(r->pool, &ctx->strip->free,
                                &ctx->strip->busy, &edited,
                                (ngx_buf_tag_t) &ngx_http_llm_filter_module);
        return rc;
    }

    if (!ctx->replace_body) {
        return ngx_http_next_body_filter(r, in);
    }

    /* nginx's HTML error page is consumed; ours goes out in its place */

    last = 0;

    for (cl = in; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;

        if (cl->buf->in_file) {
            cl->buf->file_pos = cl->buf->file_last;
        }

        if (cl->buf->last_buf) {
            last = 1;
        }
    }

    if (!last) {
        return NGX_OK;
    }

    ctx->replace_body = 0;

    out.buf = ctx->throttled_body;
    out.next = NULL;

    return ngx_http_next_body_filter(r, &out);
}


static ngx_int_t
ngx_http_llm_filter_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_llm_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_llm_body_filter;

    return NGX_OK;
}
