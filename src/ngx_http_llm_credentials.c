
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_credentials.h"
#include "ngx_http_llm_identity.h"
#include "ngx_http_llm_secret.h"


/*
 * What each attempt carries to its backend, whatever the location says:
 * the backend's Host, its credential (api-key, or Authorization with a
 * bearer token), and its name for TLS; never the client's api-key,
 * Authorization or Host.  The balancer knows the backend only after
 * proxy built the request, so the header block proxy built is edited:
 * those three headers are taken out, wherever they came from (the
 * client's headers, or proxy_set_header), and the backend's put in.
 * Proxy writes one "name: value" line per header, ended by CRLF, and
 * nginx refuses bare CR and LF in the client's headers, so the lines of
 * the block are exactly its headers.  A plain "server" line is not
 * touched: it has no Host or credential of its own.
 */


static ngx_uint_t ngx_http_llm_replaced(u_char *p, size_t len);


ngx_int_t
ngx_http_llm_credentials(ngx_http_request_t *r, ngx_http_llm_backend_t *b)
{
    u_char               *p, *last, *line, *next, *dst;
    size_t                len;
    ngx_buf_t            *hb, *nb;
    ngx_str_t             credential;
    ngx_uint_t            bearer;
    ngx_chain_t          *cl;
    ngx_http_upstream_t  *u;

    u = r->upstream;
    cl = u->request_bufs;

    if (cl == NULL || cl->buf->in_file || cl->buf->pos == cl->buf->last) {
        return NGX_OK;
    }

    hb = cl->buf;
    p = hb->pos;
    last = hb->last;

    /* the request line */

    line = memchr(p, LF, last - p);
    if (line == NULL) {
        return NGX_OK;
    }

    line++;

    credential.len = 0;
    bearer = (b->identity != NULL);

    if (b->secret
        && ngx_http_llm_secret_value(r->connection->log, b->secret) == NGX_OK)
    {
        credential = b->secret->value;
        bearer = b->secret->bearer;
    }

    /* a token the balancer saw valid: only its expiry since can stop it */

    if (b->identity
        && ngx_http_llm_identity_token(b->identity, &credential) != NGX_OK)
    {
        credential.len = 0;
    }

    /* one pass, into a buffer as large as the most it can need */

    len = (last - p) + sizeof("Host: " CRLF) - 1 + b->host.len
          + sizeof("Authorization: " CRLF) - 1 + credential.len;

    nb = ngx_create_temp_buf(r->pool, len);
    if (nb == NULL) {
        return NGX_ERROR;
    }

    dst = ngx_cpymem(nb->last, p, line - p);

    /* the headers up to the empty line */

    for ( /* void */ ; /* void */ ; line = next) {
        next = memchr(line, LF, last - line);

        if (next == NULL) {
            /* not a header block proxy made: left as it is */
            return NGX_OK;
        }

        next++;

        if (next - line <= 2) {
            break;
        }

        if (!ngx_http_llm_replaced(line, next - line)) {
            dst = ngx_cpymem(dst, line, next - line);
        }
    }

    dst = ngx_cpymem(dst, "Host: ", sizeof("Host: ") - 1);
    dst = ngx_cpymem(dst, b->host.data, b->host.len);
    *dst++ = CR; *dst++ = LF;

    if (credential.len) {
        if (bearer) {
            dst = ngx_cpymem(dst, "Authorization: ",
                             sizeof("Authorization: ") - 1);
        } else {
            dst = ngx_cpymem(dst, "api-key: ", sizeof("api-key: ") - 1);
        }

        dst = ngx_cpymem(dst, credential.data, credential.len);
        *dst++ = CR; *dst++ = LF;
    }

    /* the empty line, and what proxy put after it (proxy_set_body) */

    dst = ngx_cpymem(dst, line, last - line);

    nb->last = dst;
    nb->flush = hb->flush;
    nb->last_buf = hb->last_buf;
    nb->tag = hb->tag;

    cl->buf = nb;

    return NGX_OK;
}


/*
 * "Host:", "api-key:" or "Authorization:", in any case: a header line is
 * at least "X:" and CRLF, and the name is compared letter by letter only
 * after its first two letters matched
 */

static ngx_uint_t
ngx_http_llm_replaced(u_char *p, size_t len)
{
    switch (p[0] | 0x20) {

    case 'h':
        return len > sizeof("host:") - 1 && p[4] == ':'
               && (p[1] | 0x20) == 'o' && (p[2] | 0x20) == 's'
               && (p[3] | 0x20) == 't';

    case 'a':
        if ((p[1] | 0x20) == 'p') {
            return len > sizeof("api-key:") - 1 && p[7] == ':'
                   && ngx_strncasecmp(p, (u_char *) "api-key",
                                      sizeof("api-key") - 1) == 0;
        }

        return len > sizeof("authorization:") - 1 && p[13] == ':'
               && ngx_strncasecmp(p, (u_char *) "authorization",
                                  sizeof("authorization") - 1) == 0;

    default:
        return 0;
    }
}


#if (NGX_HTTP_SSL)

/*
 * The backend's name in the TLS handshake (SNI), unless proxy_ssl_name
 * with proxy_ssl_server_name already set one: a private endpoint may be
 * reached under another name on purpose.  Called as the peer's
 * set_session, which nginx calls after it set its own name and before
 * the handshake.
 */

ngx_int_t
ngx_http_llm_ssl_server_name(ngx_connection_t *c, ngx_http_llm_backend_t *b)
{
    u_char  *name, *colon;
    size_t   len;

#ifdef SSL_CTRL_SET_TLSEXT_HOSTNAME

    if (b->host.len == 0 || b->host.data[0] == '['
        || SSL_get_servername(c->ssl->connection, TLSEXT_NAMETYPE_host_name)
           != NULL)
    {
        return NGX_OK;
    }

    /* the Host header may name a port, the server name does not */

    colon = ngx_strlchr(b->host.data, b->host.data + b->host.len, ':');
    len = colon ? (size_t) (colon - b->host.data) : b->host.len;

    /* a literal address is not a server name (RFC 6066) */

    if (ngx_inet_addr(b->host.data, len) != INADDR_NONE) {
        return NGX_OK;
    }

    name = ngx_pnalloc(c->pool, len + 1);
    if (name == NULL) {
        return NGX_ERROR;
    }

    (void) ngx_cpystrn(name, b->host.data, len + 1);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "llm upstream SSL server name: \"%s\"", name);

    if (SSL_set_tlsext_host_name(c->ssl->connection, (char *) name) == 0) {
        ngx_ssl_error(NGX_LOG_ERR, c->log, 0,
                      "SSL_set_tlsext_host_name(\"%s\") failed", name);
        return NGX_ERROR;
    }

#endif

    return NGX_OK;
}

#endif
