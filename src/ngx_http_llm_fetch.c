
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>
#include "ngx_http_llm_fetch.h"
#include "ngx_http_llm_tls.h"


/*
 * One HTTP/1.1 request of the module's own, from a worker's event loop
 * (a token endpoint's): connect, TLS when asked, send every byte, read
 * the reply until its length, its last chunk or the connection's close,
 * all within one timeout.  The handler is called exactly once; the
 * reply stays in the buffer until ngx_http_llm_fetch_close(), which
 * wipes it: it may hold a token.
 */


static void ngx_http_llm_fetch_send(ngx_http_llm_fetch_t *f);
static void ngx_http_llm_fetch_write_handler(ngx_event_t *wev);
static void ngx_http_llm_fetch_read_handler(ngx_event_t *rev);
static void ngx_http_llm_fetch_timeout(ngx_event_t *ev);
static ngx_int_t ngx_http_llm_fetch_parse(ngx_http_llm_fetch_t *f,
    ngx_uint_t eof);
static ngx_int_t ngx_http_llm_fetch_chunks(u_char *p, u_char *end,
    u_char *dst, size_t *len);
static ngx_uint_t ngx_http_llm_fetch_header(u_char *line, u_char *end,
    const char *name, size_t len, ngx_str_t *value);
static void ngx_http_llm_fetch_fail(ngx_http_llm_fetch_t *f,
    const char *what, ngx_err_t err);
static void ngx_http_llm_fetch_end(ngx_http_llm_fetch_t *f);
static void ngx_http_llm_fetch_disconnect(ngx_http_llm_fetch_t *f);
static void ngx_http_llm_fetch_dummy(ngx_event_t *ev);
#if (NGX_SSL)
static void ngx_http_llm_fetch_tls_done(ngx_connection_t *c);
#endif


void
ngx_http_llm_fetch(ngx_http_llm_fetch_t *f)
{
    ngx_int_t          rc;
    ngx_connection_t  *c;

    f->status = 0;
    f->body.len = 0;
    f->error = NULL;
    f->sent = 0;
    f->len = 0;

    /* a byte more than the longest reply: a full buffer is too long */

    f->buf = ngx_alloc(NGX_HTTP_LLM_FETCH_MAX + 1, f->log);
    if (f->buf == NULL) {
        ngx_http_llm_fetch_fail(f, "no memory for", 0);
        return;
    }

    ngx_memzero(&f->timer, sizeof(ngx_event_t));
    f->timer.handler = ngx_http_llm_fetch_timeout;
    f->timer.data = f;
    f->timer.log = f->log;
    /* a worker that is shutting down does not wait for a fetch */
    f->timer.cancelable = 1;

    ngx_add_timer(&f->timer, f->timeout);

    ngx_memzero(&f->peer, sizeof(ngx_peer_connection_t));

    f->peer.sockaddr = f->addr->sockaddr;
    f->peer.socklen = f->addr->socklen;
    f->peer.name = f->name;
    f->peer.get = ngx_event_get_peer;
    f->peer.log = f->log;
    /* the caller says what failed, once */
    f->peer.log_error = NGX_ERROR_INFO;

    rc = ngx_event_connect_peer(&f->peer);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        ngx_http_llm_fetch_fail(f, "cannot connect to", ngx_socket_errno);
        return;
    }

    c = f->peer.connection;
    c->data = f;
    c->read->handler = ngx_http_llm_fetch_read_handler;
    c->write->handler = ngx_http_llm_fetch_write_handler;
    c->log = f->log;
    c->read->log = f->log;
    c->write->log = f->log;

    if (rc == NGX_AGAIN) {
        /* the write handler goes on once connected */
        return;
    }

    ngx_http_llm_fetch_write_handler(c->write);
}


static void
ngx_http_llm_fetch_write_handler(ngx_event_t *wev)
{
    int                    err;
    socklen_t              len;
    ngx_connection_t      *c;
    ngx_http_llm_fetch_t  *f;
#if (NGX_SSL)
    ngx_int_t              rc;
    const char            *error;
#endif

    c = wev->data;
    f = c->data;

    if (f->sent == 0
#if (NGX_SSL)
        && c->ssl == NULL
#endif
       )
    {
        /* connected, or not: the socket says which */

        err = 0;
        len = sizeof(int);

        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len)
            == -1)
        {
            err = ngx_socket_errno;
        }

        if (err) {
            ngx_http_llm_fetch_fail(f, "cannot connect to", err);
            return;
        }

#if (NGX_SSL)
        if (f->ssl) {
            rc = ngx_http_llm_tls_start(c, f->ssl, f->name, f->address,
                                        ngx_http_llm_fetch_tls_done, &error);

            if (rc == NGX_ERROR) {
                ngx_http_llm_fetch_fail(f, error, 0);
                return;
            }

            if (rc == NGX_OK) {
                ngx_http_llm_fetch_tls_done(c);
            }

            return;
        }
#endif
    }

    ngx_http_llm_fetch_send(f);
}


#if (NGX_SSL)

static void
ngx_http_llm_fetch_tls_done(ngx_connection_t *c)
{
    u_char                *error;
    ngx_http_llm_fetch_t  *f;

    f = c->data;

    error = ngx_http_llm_tls_check(c, f->name, f->address, f->errbuf,
                                   sizeof(f->errbuf));
    if (error) {
        f->error = error;
        ngx_http_llm_fetch_fail(f, NULL, 0);
        return;
    }

    c->read->handler = ngx_http_llm_fetch_read_handler;
    c->write->handler = ngx_http_llm_fetch_write_handler;

    ngx_http_llm_fetch_send(f);
}

#endif


static void
ngx_http_llm_fetch_send(ngx_http_llm_fetch_t *f)
{
    ssize_t            n;
    ngx_connection_t  *c;

    c = f->peer.connection;

    while (f->sent < f->request.len) {
        n = c->send(c, f->request.data + f->sent, f->request.len - f->sent);

        if (n == NGX_ERROR) {
            ngx_http_llm_fetch_fail(f, "cannot send to", ngx_socket_errno);
            return;
        }

        if (n == NGX_AGAIN) {
            if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
                ngx_http_llm_fetch_fail(f, "cannot send to", 0);
            }

            return;
        }

        f->sent += n;
    }

    /* all sent: nothing more to write, the reply to read */

    c->write->handler = ngx_http_llm_fetch_dummy;

    ngx_http_llm_fetch_read_handler(c->read);
}


static void
ngx_http_llm_fetch_read_handler(ngx_event_t *rev)
{
    ssize_t                n;
    ngx_int_t              rc;
    ngx_connection_t      *c;
    ngx_http_llm_fetch_t  *f;

    c = rev->data;
    f = c->data;

    if (f->sent < f->request.len) {
        /* nothing is expected before the request is out */
        if (ngx_handle_read_event(rev, 0) != NGX_OK) {
            ngx_http_llm_fetch_fail(f, "cannot read from", 0);
        }

        return;
    }

    for ( ;; ) {

        if (f->len > NGX_HTTP_LLM_FETCH_MAX) {
            ngx_http_llm_fetch_fail(f, "a reply over 64 KB from", 0);
            return;
        }

        n = c->recv(c, f->buf + f->len, NGX_HTTP_LLM_FETCH_MAX + 1 - f->len);

        if (n == NGX_AGAIN) {
            if (ngx_handle_read_event(rev, 0) != NGX_OK) {
                ngx_http_llm_fetch_fail(f, "cannot read from", 0);
            }

            return;
        }

        if (n == NGX_ERROR) {
            ngx_http_llm_fetch_fail(f, "cannot read from", ngx_socket_errno);
            return;
        }

        if (n > 0) {
            f->len += n;
        }

        rc = ngx_http_llm_fetch_parse(f, n == 0);

        if (rc == NGX_OK) {
            ngx_http_llm_fetch_end(f);
            return;
        }

        if (rc == NGX_ERROR) {
            ngx_http_llm_fetch_fail(f, NULL, 0);
            return;
        }
    }
}


/*
 * The reply so far: NGX_OK when it is whole (status and body set),
 * NGX_AGAIN when more is to come, NGX_ERROR with f->error
 */

static ngx_int_t
ngx_http_llm_fetch_parse(ngx_http_llm_fetch_t *f, ngx_uint_t eof)
{
    u_char     *p, *end, *line, *next, *body;
    size_t      len;
    ngx_str_t   value;
    off_t       length;
    ngx_int_t   rc;
    ngx_uint_t  chunked;

    p = f->buf;
    end = f->buf + f->len;

    body = ngx_strlcasestrn(p, end, (u_char *) CRLF CRLF, 4 - 1);

    if (body == NULL) {
        if (eof) {
            f->error = (u_char *) "closed the connection before a reply "
                                  "from";
            return NGX_ERROR;
        }

        return NGX_AGAIN;
    }

    body += 4;

    /* "HTTP/1.x NNN " */

    if (body - p < 13 || ngx_strncmp(p, "HTTP/1.", 7) != 0
        || p[8] != ' ' || p[9] < '1' || p[9] > '5'
        || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9')
    {
        f->error = (u_char *) "a reply that is not HTTP from";
        return NGX_ERROR;
    }

    f->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');

    length = -1;
    chunked = 0;

    for (line = ngx_strlchr(p, body, LF) + 1; line < body - 2; line = next) {
        next = ngx_strlchr(line, body, LF) + 1;

        if (ngx_http_llm_fetch_header(line, next, "content-length",
                                      sizeof("content-length") - 1, &value))
        {
            length = ngx_atoof(value.data, value.len);

            if (length < 0) {
                f->error = (u_char *) "a bad Content-Length from";
                return NGX_ERROR;
            }
        }

        if (ngx_http_llm_fetch_header(line, next, "transfer-encoding",
                                      sizeof("transfer-encoding") - 1, &value)
            && ngx_strlcasestrn(value.data, value.data + value.len,
                                (u_char *) "chunked",
                                sizeof("chunked") - 2)
               != NULL)
        {
            chunked = 1;
        }
    }

    if (chunked) {
        rc = ngx_http_llm_fetch_chunks(body, end, NULL, &len);

        if (rc == NGX_AGAIN && eof) {
            f->error = (u_char *) "closed the connection within a reply from";
            return NGX_ERROR;
        }

        if (rc == NGX_ERROR) {
            f->error = (u_char *) "a bad chunked reply from";
            return NGX_ERROR;
        }

        if (rc == NGX_OK) {
            (void) ngx_http_llm_fetch_chunks(body, end, body, &len);
            f->body.data = body;
            f->body.len = len;
        }

        return rc;
    }

    if (length >= 0) {
        if (end - body >= length) {
            f->body.data = body;
            f->body.len = length;
            return NGX_OK;
        }

        if (eof) {
            f->error = (u_char *) "closed the connection within a reply from";
            return NGX_ERROR;
        }

        return NGX_AGAIN;
    }

    if (!eof) {
        return NGX_AGAIN;
    }

    f->body.data = body;
    f->body.len = end - body;

    return NGX_OK;
}


/*
 * A chunked body: checked when dst is NULL (NGX_OK once its last chunk
 * came), else its data moved to dst, which may be p itself
 */

static ngx_int_t
ngx_http_llm_fetch_chunks(u_char *p, u_char *end, u_char *dst, size_t *len)
{
    u_char  *eol;
    size_t   size, total;

    total = 0;

    for ( ;; ) {
        eol = ngx_strlcasestrn(p, end, (u_char *) CRLF, 2 - 1);
        if (eol == NULL) {
            return (end - p > 64) ? NGX_ERROR : NGX_AGAIN;
        }

        /* the size in hex, any extension after ";" ignored */

        size = 0;

        if (p == eol || ngx_hextoi(p, 1) == NGX_ERROR) {
            return NGX_ERROR;
        }

        for ( /* void */ ; p < eol && *p != ';' && *p != ' '; p++) {
            if (ngx_hextoi(p, 1) == NGX_ERROR
                || size > NGX_HTTP_LLM_FETCH_MAX)
            {
                return NGX_ERROR;
            }

            size = size * 16 + ngx_hextoi(p, 1);
        }

        p = eol + 2;

        if (size == 0) {
            /* the end, after trailers if any */
            if (ngx_strlcasestrn(p - 2, end, (u_char *) CRLF CRLF, 4 - 1)
                == NULL)
            {
                return NGX_AGAIN;
            }

            *len = total;
            return NGX_OK;
        }

        if ((size_t) (end - p) < size + 2) {
            return NGX_AGAIN;
        }

        if (p[size] != CR || p[size + 1] != LF) {
            return NGX_ERROR;
        }

        if (dst) {
            ngx_memmove(dst + total, p, size);
        }

        total += size;
        p += size + 2;
    }
}


/* a header line "Name: value" of this name, in any case */

static ngx_uint_t
ngx_http_llm_fetch_header(u_char *line, u_char *end, const char *name,
    size_t len, ngx_str_t *value)
{
    u_char  *p;

    /* the line without its CRLF or LF */

    end--;

    if (end > line && end[-1] == CR) {
        end--;
    }

    if ((size_t) (end - line) < len + 1
        || ngx_strncasecmp(line, (u_char *) name, len) != 0
        || line[len] != ':')
    {
        return 0;
    }

    for (p = line + len + 1; p < end && (*p == ' ' || *p == '\t'); p++) {
        /* void */
    }

    value->data = p;
    value->len = end - p;

    return 1;
}


static void
ngx_http_llm_fetch_timeout(ngx_event_t *ev)
{
    ngx_http_llm_fetch_t  *f = ev->data;

    ngx_http_llm_fetch_fail(f, "timed out waiting for", 0);
}


/* what went wrong, said as "<what> <name>" with the system's reason */

static void
ngx_http_llm_fetch_fail(ngx_http_llm_fetch_t *f, const char *what,
    ngx_err_t err)
{
    u_char  *p, *last;

    if (what) {
        f->error = (u_char *) what;
    }

    if (f->error != f->errbuf) {
        last = f->errbuf + sizeof(f->errbuf) - 1;
        p = ngx_slprintf(f->errbuf, last, "%s %V", f->error, f->name);

        if (err) {
            p = ngx_slprintf(p, last, " (%d: ", err);
            p = ngx_strerror(err, p, last - p);
            p = ngx_slprintf(p, last, ")");
        }

        *p = '\0';
        f->error = f->errbuf;
    }

    f->status = 0;
    f->body.len = 0;

    ngx_http_llm_fetch_end(f);
}


static void
ngx_http_llm_fetch_end(ngx_http_llm_fetch_t *f)
{
    if (f->timer.timer_set) {
        ngx_del_timer(&f->timer);
    }

    ngx_http_llm_fetch_disconnect(f);

    f->handler(f);
}


/* the reply wiped and freed, once the handler has read it */

void
ngx_http_llm_fetch_close(ngx_http_llm_fetch_t *f)
{
    if (f->timer.timer_set) {
        ngx_del_timer(&f->timer);
    }

    ngx_http_llm_fetch_disconnect(f);

    if (f->buf) {
        ngx_explicit_memzero(f->buf, f->len);
        ngx_free(f->buf);
        f->buf = NULL;
    }

    f->len = 0;
    f->body.len = 0;
}


static void
ngx_http_llm_fetch_disconnect(ngx_http_llm_fetch_t *f)
{
    if (f->peer.connection) {
        ngx_http_llm_tls_close(f->peer.connection);
        f->peer.connection = NULL;
    }
}


static void
ngx_http_llm_fetch_dummy(ngx_event_t *ev)
{
}
