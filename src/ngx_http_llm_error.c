
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_error.h"


/*
 * Errors the gateway answers itself have Azure OpenAI's shape,
 * {"error":{"code":"...","message":"..."}}, so SDKs report them the way
 * they report the service's own errors.
 */

ngx_int_t
ngx_http_llm_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, ngx_str_t *message)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    if (ngx_http_llm_error_body(r, status, code, message, &b) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* the body, and the response headers that go with it */

ngx_int_t
ngx_http_llm_error_body(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, ngx_str_t *message, ngx_buf_t **out)
{
    size_t      len, code_len;
    ngx_buf_t  *b;

    static u_char  head[] = "{\"error\":{\"code\":\"";
    static u_char  middle[] = "\",\"message\":\"";
    static u_char  tail[] = "\"}}\n";

    code_len = ngx_strlen(code);

    len = sizeof(head) - 1 + code_len + sizeof(middle) - 1
          + message->len + ngx_escape_json(NULL, message->data, message->len)
          + sizeof(tail) - 1;

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_cpymem(b->last, head, sizeof(head) - 1);
    b->last = ngx_cpymem(b->last, code, code_len);
    b->last = ngx_cpymem(b->last, middle, sizeof(middle) - 1);
    b->last = (u_char *) ngx_escape_json(b->last, message->data,
                                         message->len);
    b->last = ngx_cpymem(b->last, tail, sizeof(tail) - 1);
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.charset.len = 0;

    ngx_http_clear_accept_ranges(r);
    ngx_http_clear_last_modified(r);
    ngx_http_clear_etag(r);

    if (r->method == NGX_HTTP_HEAD) {
        b->pos = b->last;
    }

    *out = b;

    return NGX_OK;
}
