
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include "ngx_http_llm_tls.h"


/*
 * TLS for the module's own connections (Redis, a token endpoint), made
 * as proxy makes a backend's: TLS 1.2 or 1.3, the server's name in SNI,
 * its certificate checked against the trusted authorities and the name.
 */


#if (NGX_SSL)
static ngx_int_t ngx_http_llm_tls_check_name(ngx_connection_t *c,
    ngx_str_t *name, ngx_uint_t address);
#endif


/* a name that is an IPv4 or IPv6 address: no SNI, an IP subjectAltName */

ngx_uint_t
ngx_http_llm_tls_is_address(ngx_str_t *name)
{
    return ngx_inet_addr(name->data, name->len) != INADDR_NONE
           || ngx_strlchr(name->data, name->data + name->len, ':') != NULL;
}


/*
 * A connection of the module's own closed at once, TLS or not: no
 * close_notify awaited (the exchange is over or abandoned), and the pool
 * that held OpenSSL's state freed with it
 */

void
ngx_http_llm_tls_close(ngx_connection_t *c)
{
    ngx_pool_t  *pool;

    pool = c->pool;

#if (NGX_SSL)
    if (c->ssl) {
        c->ssl->no_wait_shutdown = 1;
        (void) ngx_ssl_shutdown(c);
    }
#endif

    ngx_close_connection(c);

    if (pool) {
        ngx_destroy_pool(pool);
    }
}


#if (NGX_SSL)

/*
 * The context, with its files read while the master still may.  Without
 * trusted authorities of its own, the system's are trusted, as curl and
 * redis-cli --tls trust them.
 */

char *
ngx_http_llm_tls_context(ngx_conf_t *cf, ngx_ssl_t **ssl,
    ngx_str_t *certificate, ngx_str_t *key, ngx_str_t *trusted,
    ngx_flag_t verify)
{
    ngx_ssl_t           *s;
    ngx_pool_cleanup_t  *cln;

    s = ngx_pcalloc(cf->pool, sizeof(ngx_ssl_t));
    if (s == NULL) {
        return NGX_CONF_ERROR;
    }

    s->log = cf->log;

    if (ngx_ssl_create(s, NGX_SSL_TLSv1_2|NGX_SSL_TLSv1_3, NULL) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        ngx_ssl_cleanup_ctx(s);
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_ssl_cleanup_ctx;
    cln->data = s;

    *ssl = s;

    if (certificate && certificate->len
        && ngx_ssl_certificate(cf, s, certificate, key, NULL) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (!verify) {
        return NGX_CONF_OK;
    }

    if (trusted && trusted->len) {
        if (ngx_ssl_trusted_certificate(cf, s, trusted, 9) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

    } else if (SSL_CTX_set_default_verify_paths(s->ctx) != 1) {
        ngx_ssl_error(NGX_LOG_EMERG, cf->log, 0,
                      "SSL_CTX_set_default_verify_paths() failed");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * The handshake on a connected socket: NGX_AGAIN when done() will be
 * called later, NGX_OK when it may be called now, NGX_ERROR with *error
 */

ngx_int_t
ngx_http_llm_tls_start(ngx_connection_t *c, ngx_ssl_t *ssl, ngx_str_t *name,
    ngx_uint_t address, ngx_connection_handler_pt done, const char **error)
{
    u_char     sni[256];
    ngx_int_t  rc;

    /* OpenSSL's state for the connection, freed as it closes */

    if (c->pool == NULL) {
        c->pool = ngx_create_pool(512, c->log);
        if (c->pool == NULL) {
            *error = "no memory";
            return NGX_ERROR;
        }
    }

    if (ngx_ssl_create_connection(ssl, c, NGX_SSL_CLIENT) != NGX_OK) {
        *error = "cannot start TLS";
        return NGX_ERROR;
    }

    /* SNI carries host names only, never an address (RFC 6066) */

    if (name->len && name->len < sizeof(sni) && !address) {
        ngx_cpystrn(sni, name->data, name->len + 1);

        if (SSL_set_tlsext_host_name(c->ssl->connection, (char *) sni) == 0)
        {
            *error = "cannot set the TLS server name";
            return NGX_ERROR;
        }
    }

    rc = ngx_ssl_handshake(c);

    if (rc == NGX_AGAIN) {
        c->ssl->handler = done;
        return NGX_AGAIN;
    }

    return NGX_OK;
}


/*
 * The handshake's end: NULL when it succeeded and the certificate is
 * trusted and names the server, else what went wrong, in buf
 */

u_char *
ngx_http_llm_tls_check(ngx_connection_t *c, ngx_str_t *name,
    ngx_uint_t address, u_char *buf, size_t size)
{
    long  rc;

    if (c->read->timedout || c->write->timedout) {
        ngx_snprintf(buf, size - 1, "timed out in the TLS handshake%Z");
        return buf;
    }

    if (!c->ssl->handshaked) {
        ngx_snprintf(buf, size - 1, "failed the TLS handshake%Z");
        return buf;
    }

    if (name == NULL) {
        return NULL;
    }

    rc = SSL_get_verify_result(c->ssl->connection);

    if (rc != X509_V_OK) {
        ngx_snprintf(buf, size - 1, "sent an untrusted certificate: %s%Z",
                     X509_verify_cert_error_string(rc));
        return buf;
    }

    if (ngx_http_llm_tls_check_name(c, name, address) != NGX_OK) {
        ngx_snprintf(buf, size - 1,
                     "sent a certificate that does not match \"%V\"%Z",
                     name);
        return buf;
    }

    return NULL;
}


/*
 * nginx's check looks at host names only; a server named by its address
 * has it in its certificate as an IP subjectAltName
 */

static ngx_int_t
ngx_http_llm_tls_check_name(ngx_connection_t *c, ngx_str_t *name,
    ngx_uint_t address)
{
    int      rc;
    u_char   ip[NGX_SOCKADDR_STRLEN];
    X509    *cert;

    if (!address) {
        return ngx_ssl_check_host(c, name);
    }

    if (name->len >= sizeof(ip)) {
        return NGX_ERROR;
    }

    cert = SSL_get_peer_certificate(c->ssl->connection);
    if (cert == NULL) {
        return NGX_ERROR;
    }

    /* an IPv6 address of a URL comes in brackets, a certificate's not */

    if (name->len > 2 && name->data[0] == '['
        && name->data[name->len - 1] == ']')
    {
        ngx_cpystrn(ip, name->data + 1, name->len - 1);

    } else {
        ngx_cpystrn(ip, name->data, name->len + 1);
    }

    rc = X509_check_ip_asc(cert, (char *) ip, 0);

    X509_free(cert);

    return rc == 1 ? NGX_OK : NGX_ERROR;
}

#endif
