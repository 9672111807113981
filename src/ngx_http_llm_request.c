
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <cjson/cJSON.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_admit.h"
#include "ngx_http_llm_charge.h"
#include "ngx_http_llm_error.h"
#include "ngx_http_llm_estimate.h"
#include "ngx_http_llm_hedge.h"
#include "ngx_http_llm_json.h"
#include "ngx_http_llm_request.h"
#include "ngx_http_llm_stream.h"
#include "ngx_http_llm_threads.h"


static void ngx_http_llm_body_handler(ngx_http_request_t *r);
static off_t ngx_http_llm_body_size(ngx_http_request_t *r);
static void ngx_http_llm_parse_request(ngx_http_request_t *r);
static void ngx_http_llm_parsed(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_check_encoding(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_body_contents(ngx_http_request_t *r,
    ngx_str_t *body);
static void ngx_http_llm_parse(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_parse_json(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *body);
static void ngx_http_llm_fail(ngx_http_llm_ctx_t *ctx, ngx_uint_t status,
    const char *code, const char *message);
static void ngx_http_llm_fail_duplicate(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);


/*
 * A phase handler that reads the whole body first, the way the mirror
 * module does: NGX_DONE while reading, then phases run again from the
 * body handler and the second call finds the verdict in the context.
 */

ngx_int_t
ngx_http_llm_request_handler(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    ngx_http_llm_ctx_t       *ctx;
    ngx_http_llm_loc_conf_t  *llcf;

    if (r != r->main) {
        return NGX_DECLINED;
    }

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (!llcf->route) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx) {
        if (ctx->error == 0) {
            rc = ctx->status;

            if (rc == NGX_DECLINED && llcf->upstream && !ctx->admitted) {
                rc = ngx_http_llm_admit(r, ctx);
            }

            /* admitted: llm_hedge may run the attempts */

            if (rc == NGX_DECLINED && ctx->admitted) {
                ngx_http_llm_hedge_prepare(r, ctx);
            }

            return rc;
        }

        rc = ngx_http_llm_send_error(r, ctx->error, ctx->error_code,
                                     &ctx->error_message);
        ngx_http_finalize_request(r, rc);
        return NGX_DONE;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm route handler");

    /* back from an internal redirect: what it held there is settled */

    ngx_http_llm_charge_adopt(r);

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_llm_ctx_t));
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_http_set_ctx(r, ctx, ngx_http_llm_module);

    ctx->start = ngx_current_msec;
    ctx->request = r;

    ngx_http_llm_deployment_from_uri(&r->uri, &ctx->deployment);
    ctx->model = ctx->deployment;
    ctx->choices = 1;

    /* only requests that carry a JSON body are inspected */

    if (!(r->method & (NGX_HTTP_POST|NGX_HTTP_PUT|NGX_HTTP_PATCH))) {
        ctx->status = NGX_DECLINED;

        if (llcf->upstream) {
            return ngx_http_llm_admit(r, ctx);
        }

        return NGX_DECLINED;
    }

    rc = ngx_http_llm_check_encoding(r, ctx);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK
        || (r->headers_in.content_length_n >= 0
            && (size_t) r->headers_in.content_length_n > llcf->max_body_size))
    {
        if (ctx->error == 0) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "llm: client body of %O bytes is larger than "
                          "llm_max_body_size %uz",
                          r->headers_in.content_length_n,
                          llcf->max_body_size);

            ngx_http_llm_fail(ctx, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                              "RequestTooLarge",
                              "The request body is larger than this "
                              "endpoint accepts.");
        }

        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        rc = ngx_http_llm_send_error(r, ctx->error, ctx->error_code,
                                     &ctx->error_message);
        ngx_http_finalize_request(r, rc);
        return NGX_DONE;
    }

    ctx->status = NGX_DONE;

    rc = ngx_http_read_client_request_body(r, ngx_http_llm_body_handler);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    ngx_http_finalize_request(r, NGX_DONE);
    return NGX_DONE;
}


/*
 * A large body is read and counted in a thread (llm_count_threads), so
 * that the worker goes on serving its other connections meanwhile
 */

static void
ngx_http_llm_body_handler(ngx_http_request_t *r)
{
    if (ngx_http_llm_thread_run(r, ngx_http_llm_body_size(r),
                                ngx_http_llm_parse_request,
                                ngx_http_llm_parsed)
        == NGX_OK)
    {
        return;
    }

    ngx_http_llm_parse_request(r);
    ngx_http_llm_parsed(r);
}


static void
ngx_http_llm_parse_request(ngx_http_request_t *r)
{
    ngx_http_llm_parse(r, ngx_http_get_module_ctx(r, ngx_http_llm_module));
}


static void
ngx_http_llm_parsed(ngx_http_request_t *r)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    ctx->status = NGX_DECLINED;

    r->preserve_body = 1;

    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
}


/*
 * A compressed body cannot be counted, and Azure does not accept one
 * either: refuse it clearly instead of proxying what we cannot account.
 *
 * A compressed reply cannot be scanned for usage: the backend is asked
 * for identity instead of what the client accepts.  The client's own
 * header stays where nginx's gzip filter looks for it
 * (r->headers_in.accept_encoding); only the copy in the list, which
 * proxy sends, says identity.
 */

static ngx_int_t
ngx_http_llm_check_encoding(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *client;

    static ngx_str_t  identity = ngx_string("identity");

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].value.len == identity.len
            && ngx_strncasecmp(h[i].value.data, identity.data, identity.len)
               == 0)
        {
            continue;
        }

        if (h[i].key.len == sizeof("Accept-Encoding") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Accept-Encoding",
                               sizeof("Accept-Encoding") - 1)
               == 0)
        {
            client = ngx_palloc(r->pool, sizeof(ngx_table_elt_t));
            if (client == NULL) {
                return NGX_ERROR;
            }

            *client = h[i];
            h[i].value = identity;

#if (NGX_HTTP_GZIP || NGX_HTTP_HEADERS)
            if (r->headers_in.accept_encoding == &h[i]) {
                r->headers_in.accept_encoding = client;
            }
#endif

            continue;
        }

        if (h[i].key.len != sizeof("Content-Encoding") - 1
            || ngx_strncasecmp(h[i].key.data, (u_char *) "Content-Encoding",
                               sizeof("Content-Encoding") - 1)
               != 0)
        {
            continue;
        }

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "llm: client body with Content-Encoding \"%V\" "
                      "refused", &h[i].value);

        ngx_http_llm_fail(ctx, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                          "UnsupportedContentEncoding",
                          "Compressed request bodies are not supported; "
                          "send the JSON body uncompressed.");
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static void
ngx_http_llm_parse(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_str_t                 body;
    ngx_http_llm_loc_conf_t  *llcf;

    static ngx_str_t  model_name = ngx_string("model");

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "llm: empty client body");
        ngx_http_llm_fail(ctx, NGX_HTTP_BAD_REQUEST, "BadRequest",
                          "The request body is empty; a JSON object "
                          "was expected.");
        return;
    }

    switch (ngx_http_llm_body_contents(r, &body)) {

    case NGX_OK:
        break;

    case NGX_DECLINED:
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "llm: client body of %uz bytes is larger than "
                      "llm_max_body_size %uz", body.len,
                      llcf->max_body_size);
        ngx_http_llm_fail(ctx, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                          "RequestTooLarge",
                          "The request body is larger than this "
                          "endpoint accepts.");
        return;

    default:
        ngx_http_llm_fail(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR,
                          "InternalServerError",
                          "The gateway could not read the request body.");
        return;
    }

    ctx->body = body;

    switch (ngx_http_llm_parse_json(r, ctx, &body)) {

    case NGX_OK:
        break;

    case NGX_DECLINED:
        ngx_http_llm_fail(ctx, NGX_HTTP_BAD_REQUEST, "BadRequest",
                          "We could not parse the JSON body of your "
                          "request.");
        return;

    case NGX_ABORT:
        ngx_http_llm_fail(ctx, NGX_HTTP_BAD_REQUEST, "BadRequest",
                          "The request body must be a JSON object.");
        return;

    default:
        ngx_http_llm_fail(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR,
                          "InternalServerError",
                          "The gateway could not inspect the request.");
        return;
    }

    if (ctx->duplicate) {
        ngx_http_llm_fail_duplicate(r, ctx);
        return;
    }

    ctx->parsed = 1;

    /* the v1 API: the deployment is the body's "model" */

    if (llcf->upstream && ctx->deployment.len == 0 && !ctx->model_found) {
        (void) ngx_http_llm_find_member(&body, &model_name, &ctx->model_start,
                                        &ctx->model_end);
    }

    /* the reply is scanned, and so can be edited, only through a pool */

    if (llcf->stream_usage && llcf->upstream
        && ngx_http_llm_inject_usage(r, ctx) != NGX_OK)
    {
        ngx_http_llm_fail(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR,
                          "InternalServerError",
                          "The gateway could not prepare the request.");
        return;
    }

    ngx_log_debug5(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm request: model \"%V\", prompt %ui tokens "
                   "(%ui by characters), reserve %ui x %ui",
                   &ctx->model, ctx->prompt_tokens, ctx->prompt_estimate,
                   ctx->reserve, ctx->choices);
}


static ngx_int_t
ngx_http_llm_parse_json(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_str_t *body)
{
    cJSON                    *root;
    size_t                    at;
    ngx_int_t                 rc;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    /* the usual chat body is counted without a tree */

    if (llcf->body_walk) {
        rc = ngx_http_llm_walk(r, ctx, body);

        if (rc != NGX_DECLINED) {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "llm json: walked");
            ngx_http_llm_json_done(body->len);
            return rc;
        }

        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "llm json: left to the tree");
    }

    rc = ngx_http_llm_json_parse(body, &root, &at, r->connection->log);

    if (rc == NGX_DECLINED) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "llm: malformed JSON in client body near byte %uz",
                      at);

    } else if (rc == NGX_OK && !cJSON_IsObject(root)) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "llm: client body is JSON but not an object");
        rc = NGX_ABORT;

    } else if (rc == NGX_OK) {
        rc = ngx_http_llm_inspect(r, ctx, root);
    }

    ngx_http_llm_json_done(body->len);

    return rc;
}


/*
 * cJSON needs the body in one piece: a single memory buffer is used as
 * it is, anything else (several buffers of a chunked body, a temp file)
 * is gathered once into the request pool.  NGX_DECLINED: over the limit.
 */

static ngx_int_t
ngx_http_llm_body_contents(ngx_http_request_t *r, ngx_str_t *body)
{
    off_t                     size;
    u_char                   *p;
    ssize_t                   n;
    ngx_buf_t                *b;
    ngx_chain_t              *cl, *in;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    in = r->request_body->bufs;
    size = ngx_http_llm_body_size(r);

    body->len = (size_t) size;

    if ((size_t) size > llcf->max_body_size) {
        return NGX_DECLINED;
    }

    if (in->next == NULL && !in->buf->in_file) {
        body->data = in->buf->pos;
        return NGX_OK;
    }

    body->data = ngx_pnalloc(r->pool, body->len + 1);
    if (body->data == NULL) {
        return NGX_ERROR;
    }

    p = body->data;

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;

        if (!b->in_file) {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
            continue;
        }

        n = ngx_read_file(b->file, p, (size_t) (b->file_last - b->file_pos),
                          b->file_pos);

        if (n == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (n != b->file_last - b->file_pos) {
            ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                          ngx_read_file_n " read only %z of %O from \"%V\"",
                          n, b->file_last - b->file_pos, &b->file->name);
            return NGX_ERROR;
        }

        p += n;
    }

    *p = '\0';

    return NGX_OK;
}


/* the bytes of the body read, wherever they are (memory, a file) */

static off_t
ngx_http_llm_body_size(ngx_http_request_t *r)
{
    off_t         size;
    ngx_chain_t  *cl;

    size = 0;

    if (r->request_body) {
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            size += ngx_buf_size(cl->buf);
        }
    }

    return size;
}


static void
ngx_http_llm_fail(ngx_http_llm_ctx_t *ctx, ngx_uint_t status,
    const char *code, const char *message)
{
    ctx->error = status;
    ctx->error_code = code;
    ctx->error_message.data = (u_char *) message;
    ctx->error_message.len = ngx_strlen(message);
}


static void
ngx_http_llm_fail_duplicate(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    u_char  *p;
    size_t   len;

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "llm: client body names \"%s\" twice", ctx->duplicate);

    len = sizeof("The request body names \"\" more than once; send each "
                 "member once.") + ngx_strlen(ctx->duplicate);

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        ngx_http_llm_fail(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR,
                          "InternalServerError",
                          "The gateway could not inspect the request.");
        return;
    }

    *ngx_snprintf(p, len - 1, "The request body names \"%s\" more than "
                  "once; send each member once.", ctx->duplicate) = '\0';

    ngx_http_llm_fail(ctx, NGX_HTTP_BAD_REQUEST, "BadRequest", (char *) p);
}
