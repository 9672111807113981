/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_secret.h"


static ngx_uint_t ngx_http_llm_secret_same(ngx_http_llm_secret_t *secret,
    ngx_file_info_t *fi);
static ngx_int_t ngx_http_llm_secret_read(ngx_log_t *log,
    ngx_http_llm_secret_t *secret, ngx_file_info_t *fi);


/*
 * The current value of a credential file.  Each worker looks at the
 * file at most once a second and reads it again when it changed, so a
 * rotated key is picked up without a reload; a file that cannot be read
 * keeps the last good value.
 */

ngx_int_t
ngx_http_llm_secret_value(ngx_log_t *log, ngx_http_llm_secret_t *secret)
{
    time_t           now;
    ngx_file_info_t  fi;

    now = ngx_time();

    if (secret->value.len && secret->checked == now) {
        return NGX_OK;
    }

    secret->checked = now;

    if (ngx_file_info(secret->path.data, &fi) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      ngx_file_info_n " \"%V\" failed", &secret->path);
        return secret->value.len ? NGX_OK : NGX_ERROR;
    }

    if (secret->value.len && ngx_http_llm_secret_same(secret, &fi)) {
        return NGX_OK;
    }

    if (ngx_http_llm_secret_read(log, secret, &fi) != NGX_OK) {
        return secret->value.len ? NGX_OK : NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * The file read last time, unchanged: the same inode (a file replaced by
 * rename, as secret mounts and most tools do, is another), size and
 * modification time, to the nanosecond where the system keeps it (a key
 * rewritten in place within the same second is a change too)
 */

static ngx_uint_t
ngx_http_llm_secret_same(ngx_http_llm_secret_t *secret, ngx_file_info_t *fi)
{
    return ngx_file_uniq(fi) == secret->uniq
           && ngx_file_size(fi) == secret->size
           && ngx_file_mtime(fi) == secret->mtime
           && ngx_http_llm_mtime_ns(fi) == secret->mtime_ns;
}


static ngx_int_t
ngx_http_llm_secret_read(ngx_log_t *log, ngx_http_llm_secret_t *secret,
    ngx_file_info_t *fi)
{
    u_char      *p, *start, *end, buf[4096];
    size_t       len, prefix;
    ssize_t      n;
    ngx_fd_t     fd;
    ngx_file_t   file;

    fd = ngx_open_file(secret->path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      ngx_open_file_n " \"%V\" failed", &secret->path);
        return NGX_ERROR;
    }

    ngx_memzero(&file, sizeof(ngx_file_t));
    file.fd = fd;
    file.name = secret->path;
    file.log = log;

    n = ngx_read_file(&file, buf, sizeof(buf), 0);

    if (ngx_close_file(fd) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      ngx_close_file_n " \"%V\" failed", &secret->path);
    }

    if (n == NGX_ERROR) {
        return NGX_ERROR;
    }

    /* the first line, without surrounding blanks */

    start = buf;
    end = buf + n;

    while (start < end && (*start == ' ' || *start == '\t')) {
        start++;
    }

    for (p = start; p < end && *p != '\r' && *p != '\n'; p++) {
        /* void */
    }

    while (p > start && (p[-1] == ' ' || p[-1] == '\t')) {
        p--;
    }

    len = p - start;

    if (len == 0 || (size_t) n == sizeof(buf)) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "credential file \"%V\" is empty or too long",
                      &secret->path);
        return NGX_ERROR;
    }

    prefix = secret->bearer ? sizeof("Bearer ") - 1 : 0;

    p = ngx_alloc(prefix + len, log);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(p, "Bearer ", prefix);
    ngx_memcpy(p + prefix, start, len);

    if (secret->value.data) {
        ngx_explicit_memzero(secret->value.data, secret->value.len);
        ngx_free(secret->value.data);
    }

    ngx_explicit_memzero(buf, sizeof(buf));

    secret->value.data = p;
    secret->value.len = prefix + len;
    secret->mtime = ngx_file_mtime(fi);
    secret->mtime_ns = ngx_http_llm_mtime_ns(fi);
    secret->uniq = ngx_file_uniq(fi);
    secret->size = ngx_file_size(fi);

    return NGX_OK;
}
