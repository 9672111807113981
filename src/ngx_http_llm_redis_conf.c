/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_redis.h"
#include "ngx_http_llm_tls.h"


/*
 * llm_zone's Redis options as the configuration gives them: the URL, the
 * password file and the TLS context.  Files are read here, while the
 * master may still read what only root can.
 */


/*
 * A "redis://" URL, [:password@]host[:port][/db] after the slashes,
 * "rediss://" for the same over TLS, or unix:/path.  The name kept for
 * logs and llm_status leaves the password out.
 */

char *
ngx_http_llm_redis_parse(ngx_conf_t *cf, ngx_str_t *url,
    ngx_http_llm_redis_conf_t *rcf)
{
    u_char     *p, *last, *at, *slash;
    ngx_int_t   db;
    ngx_url_t   u;

    ngx_memzero(&u, sizeof(ngx_url_t));

    p = url->data;
    last = url->data + url->len;
    db = 0;

    if (url->len > 5 && ngx_strncmp(p, "unix:", 5) == 0) {
        u.url = *url;

    } else if ((url->len > 8 && ngx_strncmp(p, "redis://", 8) == 0)
               || (url->len > 9 && ngx_strncmp(p, "rediss://", 9) == 0))
    {
        rcf->tls = (p[5] == 's');
        p += rcf->tls ? 9 : 8;

        at = ngx_strlchr(p, last, '@');

        if (at) {
            /* ":password@host", or "user:password@host", refused */

            u_char  *colon = ngx_strlchr(p, at, ':');

            if (colon == NULL || colon + 1 == at) {
                return "has an invalid password in its URL";
            }

            if (colon != p) {
                return "names a user: only \":password@\" is supported";
            }

            rcf->password.data = colon + 1;
            rcf->password.len = at - colon - 1;
            p = at + 1;
        }

        slash = ngx_strlchr(p, last, '/');

        if (slash) {
            if (slash + 1 < last) {
                db = ngx_atoi(slash + 1, last - slash - 1);
                if (db == NGX_ERROR) {
                    return "has an invalid database number";
                }
            }

            last = slash;
        }

        u.url.data = p;
        u.url.len = last - p;

    } else {
        return "needs a \"redis://\", \"rediss://\" or \"unix:\" URL";
    }

    u.default_port = 6379;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        if (u.err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s in redis URL",
                               u.err);
        }

        return NGX_CONF_ERROR;
    }

    if (u.naddrs == 0) {
        return "names a host without an address";
    }

    rcf->addr = &u.addrs[0];
    rcf->db = db;

    if (rcf->ssl_name.len == 0) {
        rcf->ssl_name = u.host;
    }

    rcf->name.data = ngx_pnalloc(cf->pool, u.addrs[0].name.len
                                           + 1 + NGX_INT_T_LEN);
    if (rcf->name.data == NULL) {
        return NGX_CONF_ERROR;
    }

    rcf->name.len = ngx_sprintf(rcf->name.data, "%V/%i", &u.addrs[0].name,
                                db)
                    - rcf->name.data;

    return NGX_CONF_OK;
}


/* read while the master still may: workers no longer see root's files */

char *
ngx_http_llm_redis_password_file(ngx_conf_t *cf, ngx_str_t *path,
    ngx_http_llm_redis_conf_t *rcf)
{
    u_char            *p;
    ssize_t            n;
    ngx_str_t          name;
    ngx_file_t         file;
    ngx_file_info_t    fi;

    name = *path;

    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&file, sizeof(ngx_file_t));

    file.name = name;
    file.log = cf->log;

    file.fd = ngx_open_file(name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (file.fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed", &name);
        return NGX_CONF_ERROR;
    }

    if (ngx_fd_info(file.fd, &fi) == NGX_FILE_ERROR
        || ngx_file_size(&fi) > 4096)
    {
        ngx_close_file(file.fd);
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "redis password file \"%V\" is not a small "
                           "file", &name);
        return NGX_CONF_ERROR;
    }

    p = ngx_pnalloc(cf->pool, ngx_file_size(&fi) + 1);
    if (p == NULL) {
        ngx_close_file(file.fd);
        return NGX_CONF_ERROR;
    }

    n = ngx_read_file(&file, p, ngx_file_size(&fi), 0);

    ngx_close_file(file.fd);

    if (n == NGX_ERROR) {
        return NGX_CONF_ERROR;
    }

    while (n > 0 && (p[n - 1] == '\n' || p[n - 1] == '\r')) {
        n--;
    }

    if (n == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "redis password file \"%V\" is empty", &name);
        return NGX_CONF_ERROR;
    }

    rcf->password.data = p;
    rcf->password.len = n;

    return NGX_CONF_OK;
}


/*
 * The redis_ssl_ options, named as proxy_ssl_ names them: the client's
 * certificate and key (Redis asks for one unless tls-auth-clients is
 * off), the authorities to trust, whether to verify, and the name to
 * send and verify.
 */

char *
ngx_http_llm_redis_ssl_option(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_llm_redis_conf_t *rcf)
{
    size_t      n;
    ngx_str_t   s, *field;
    ngx_uint_t  i;

    static struct {
        ngx_str_t   name;
        size_t      offset;
    } files[] = {
        { ngx_string("redis_ssl_certificate="),
          offsetof(ngx_http_llm_redis_conf_t, ssl_certificate) },
        { ngx_string("redis_ssl_certificate_key="),
          offsetof(ngx_http_llm_redis_conf_t, ssl_certificate_key) },
        { ngx_string("redis_ssl_trusted_certificate="),
          offsetof(ngx_http_llm_redis_conf_t, ssl_trusted_certificate) },
        { ngx_string("redis_ssl_name="),
          offsetof(ngx_http_llm_redis_conf_t, ssl_name) },
    };

    for (i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        n = files[i].name.len;

        if (value->len <= n
            || ngx_strncmp(value->data, files[i].name.data, n) != 0)
        {
            continue;
        }

        s.data = value->data + n;
        s.len = value->len - n;

        if (i < 3 && ngx_conf_full_name(cf->cycle, &s, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        field = (ngx_str_t *) ((u_char *) rcf + files[i].offset);
        *field = s;

        return NGX_CONF_OK;
    }

    if (value->len == sizeof("redis_ssl_verify=on") - 1
        && ngx_strncmp(value->data, "redis_ssl_verify=on", value->len) == 0)
    {
        rcf->ssl_verify = 1;
        return NGX_CONF_OK;
    }

    if (value->len == sizeof("redis_ssl_verify=off") - 1
        && ngx_strncmp(value->data, "redis_ssl_verify=off", value->len) == 0)
    {
        rcf->ssl_verify = 0;
        return NGX_CONF_OK;
    }

    return NGX_CONF_ERROR;
}


/*
 * Once the zone's options are all read: the TLS context, with its files
 * read while the master still may.  Without redis_ssl_trusted_certificate=
 * the system's authorities are trusted, as redis-cli --tls trusts them.
 */

char *
ngx_http_llm_redis_ssl_init(ngx_conf_t *cf, ngx_http_llm_redis_conf_t *rcf)
{
    if (rcf->ssl_verify == NGX_CONF_UNSET) {
        rcf->ssl_verify = 1;
    }

    if (!rcf->tls) {
        if (rcf->ssl_certificate.len || rcf->ssl_certificate_key.len
            || rcf->ssl_trusted_certificate.len)
        {
            return "has \"redis_ssl_\" options without a \"rediss://\" URL";
        }

        return NGX_CONF_OK;
    }

#if (NGX_SSL)

    if ((rcf->ssl_certificate.len == 0) != (rcf->ssl_certificate_key.len == 0))
    {
        return "needs both \"redis_ssl_certificate=\" and "
               "\"redis_ssl_certificate_key=\", or neither";
    }

    /* an address is decided once, for SNI and for the name's check */

    rcf->ssl_address = ngx_http_llm_tls_is_address(&rcf->ssl_name);

    return ngx_http_llm_tls_context(cf, &rcf->ssl, &rcf->ssl_certificate,
                                    &rcf->ssl_certificate_key,
                                    &rcf->ssl_trusted_certificate,
                                    rcf->ssl_verify);

#else

    return "needs nginx built with OpenSSL for \"rediss://\"";

#endif
}
