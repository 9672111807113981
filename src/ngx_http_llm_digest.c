
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <openssl/sha.h>
#include <openssl/evp.h>
#include "ngx_http_llm_digest.h"


/*
 * The SHA-256 of the parts one after the other.  SHA256() of OpenSSL 3
 * looks the algorithm up and makes a context at each call: 7,300
 * instructions for a short key, measured with callgrind, most of a
 * limit line's cost.  A worker keeps one of each instead.
 */

void
ngx_http_llm_sha256(ngx_str_t *parts, ngx_uint_t n, u_char *out)
{
    u_char                *buf, *p;
    size_t                 size;
    ngx_uint_t             i;
    unsigned int           len;
    static EVP_MD_CTX     *ctx;
    static const EVP_MD   *md;

    if (md == NULL) {
#if (OPENSSL_VERSION_NUMBER >= 0x30000000L)
        md = EVP_MD_fetch(NULL, "SHA256", NULL);
#else
        md = EVP_sha256();
#endif
        ctx = EVP_MD_CTX_new();
    }

    if (md && ctx && EVP_DigestInit_ex(ctx, md, NULL) == 1) {

        for (i = 0; i < n; i++) {
            if (EVP_DigestUpdate(ctx, parts[i].data, parts[i].len) != 1) {
                break;
            }
        }

        if (i == n && EVP_DigestFinal_ex(ctx, out, &len) == 1) {
            return;
        }
    }

    /* the one-shot function, on the parts put together */

    if (n == 1) {
        SHA256(parts[0].data, parts[0].len, out);
        return;
    }

    size = 0;

    for (i = 0; i < n; i++) {
        size += parts[i].len;
    }

    buf = ngx_alloc(size ? size : 1, ngx_cycle->log);

    if (buf == NULL) {
        /* no digest at all rather than one two inputs may share */
        ngx_memset(out, 0xff, NGX_HTTP_LLM_SHA256_LEN);
        return;
    }

    for (p = buf, i = 0; i < n; i++) {
        p = ngx_cpymem(p, parts[i].data, parts[i].len);
    }

    SHA256(buf, size, out);

    ngx_free(buf);
}
