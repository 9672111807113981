
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_image.h"


/*
 * Image parts count by OpenAI's tile rule (docs/azure.md section 7):
 * "low" detail is a base cost; otherwise the image is fitted into
 * 2048 x 2048, its shortest side scaled to 768, and each 512 px tile
 * costs the tile price on top of the base.  The size is read from the
 * header of a data URL's PNG, GIF, WebP or JPEG without decoding the
 * image; an image behind a remote URL costs llm_image_tokens.
 */


/* JPEG keeps its size in a SOF segment, possibly after large metadata */
#define NGX_HTTP_LLM_IMAGE_HEAD  65536


static ngx_int_t ngx_http_llm_image_size(u_char *p, size_t n,
    ngx_uint_t *w, ngx_uint_t *h);


ngx_uint_t
ngx_http_llm_image_tokens(ngx_pool_t *pool, const char *url,
    const char *detail, ngx_uint_t mini, ngx_uint_t remote)
{
    u_char      *p, *comma, *head;
    size_t       len, n;
    ngx_str_t    data;
    double       scale;
    ngx_uint_t   w, h, base, tile, tiles;

    base = mini ? 2833 : 85;
    tile = mini ? 5667 : 170;

    if (detail && ngx_strcmp(detail, "low") == 0) {
        return base;
    }

    /* "data:image/png;base64,...." */

    p = (u_char *) url;
    len = ngx_strlen(url);

    if (len < 5 || ngx_strncasecmp(p, (u_char *) "data:", 5) != 0) {
        return remote;
    }

    comma = ngx_strlchr(p, p + len, ',');

    if (comma == NULL
        || ngx_strlcasestrn(p, comma, (u_char *) ";base64", 7 - 1) == NULL)
    {
        return remote;
    }

    data.data = comma + 1;
    data.len = p + len - comma - 1;

    /* no more than the data holds: a body of many tiny images stays small */

    n = ngx_min(data.len / 4 * 3, NGX_HTTP_LLM_IMAGE_HEAD);

    head = ngx_pnalloc(pool, n);
    if (head == NULL) {
        return remote;
    }

    n = ngx_http_llm_base64_at(head, n, &data, 0);

    if (ngx_http_llm_image_size(head, n, &w, &h) != NGX_OK
        || w == 0 || h == 0)
    {
        return remote;
    }

    /* fit in 2048 x 2048, then the shortest side to 768 */

    if (w > 2048 || h > 2048) {
        scale = 2048.0 / (double) ngx_max(w, h);
        w = (ngx_uint_t) (w * scale);
        h = (ngx_uint_t) (h * scale);
    }

    scale = 768.0 / (double) ngx_min(w, h);

    if (scale < 1.0) {
        w = (ngx_uint_t) (w * scale);
        h = (ngx_uint_t) (h * scale);
    }

    tiles = ((w + 511) / 512) * ((h + 511) / 512);

    return base + tile * tiles;
}


/* width and height from the first bytes of a PNG, GIF, WebP or JPEG */

static ngx_int_t
ngx_http_llm_image_size(u_char *p, size_t n, ngx_uint_t *w, ngx_uint_t *h)
{
    size_t  i, seg;

    if (n >= 24 && ngx_memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0
        && ngx_memcmp(p + 12, "IHDR", 4) == 0)
    {
        *w = ((ngx_uint_t) p[16] << 24) | (p[17] << 16) | (p[18] << 8)
             | p[19];
        *h = ((ngx_uint_t) p[20] << 24) | (p[21] << 16) | (p[22] << 8)
             | p[23];
        return NGX_OK;
    }

    if (n >= 10 && (ngx_memcmp(p, "GIF87a", 6) == 0
                    || ngx_memcmp(p, "GIF89a", 6) == 0))
    {
        *w = p[6] | (p[7] << 8);
        *h = p[8] | (p[9] << 8);
        return NGX_OK;
    }

    if (n >= 30 && ngx_memcmp(p, "RIFF", 4) == 0
        && ngx_memcmp(p + 8, "WEBP", 4) == 0)
    {
        if (ngx_memcmp(p + 12, "VP8X", 4) == 0) {
            *w = 1 + (p[24] | (p[25] << 8) | (p[26] << 16));
            *h = 1 + (p[27] | (p[28] << 8) | (p[29] << 16));
            return NGX_OK;
        }

        if (ngx_memcmp(p + 12, "VP8L", 4) == 0 && p[20] == 0x2f) {
            *w = 1 + (p[21] | ((p[22] & 0x3f) << 8));
            *h = 1 + ((p[22] >> 6) | (p[23] << 2) | ((p[24] & 0x0f) << 10));
            return NGX_OK;
        }

        if (ngx_memcmp(p + 12, "VP8 ", 4) == 0) {
            *w = (p[26] | (p[27] << 8)) & 0x3fff;
            *h = (p[28] | (p[29] << 8)) & 0x3fff;
            return NGX_OK;
        }

        return NGX_DECLINED;
    }

    if (n < 4 || p[0] != 0xff || p[1] != 0xd8) {
        return NGX_DECLINED;
    }

    /* JPEG: walk the segments to a start-of-frame */

    i = 2;

    while (i + 9 < n) {
        if (p[i] != 0xff) {
            return NGX_DECLINED;
        }

        if (p[i + 1] == 0xff) {
            i++;
            continue;
        }

        seg = (p[i + 2] << 8) | p[i + 3];

        if (p[i + 1] >= 0xc0 && p[i + 1] <= 0xcf
            && p[i + 1] != 0xc4 && p[i + 1] != 0xc8 && p[i + 1] != 0xcc)
        {
            *h = (p[i + 5] << 8) | p[i + 6];
            *w = (p[i + 7] << 8) | p[i + 8];
            return NGX_OK;
        }

        if (seg < 2) {
            return NGX_DECLINED;
        }

        i += 2 + seg;
    }

    return NGX_DECLINED;
}


/*
 * Decodes at most n bytes of base64 text, starting at byte offset "off"
 * of what it encodes: only the groups of 4 characters that hold them.
 * Returns the number of bytes decoded: fewer at the end of the data (up
 * to 2 fewer when more than 48 are asked for), 0 if the groups hold an
 * invalid character, or if more than 48 bytes are asked for at an
 * offset that is not a multiple of 3.
 */

size_t
ngx_http_llm_base64_at(u_char *dst, size_t n, ngx_str_t *b64, size_t off)
{
    size_t     skip, from, chars;
    u_char     buf[48];
    ngx_str_t  in, out;

    skip = off % 3;
    from = off / 3 * 4;

    if (from >= b64->len) {
        return 0;
    }

    in.data = b64->data + from;

    if (skip + n <= sizeof(buf)) {
        /* a few bytes: whole groups into a scratch buffer, then the part */
        chars = (skip + n + 2) / 3 * 4;
        out.data = buf;

    } else if (skip == 0) {
        /* many: only whole groups fit, up to 2 bytes fewer than asked */
        chars = n / 3 * 4;
        out.data = dst;

    } else {
        return 0;
    }

    in.len = ngx_min(chars, b64->len - from) & ~((size_t) 3);

    if (ngx_decode_base64(&out, &in) != NGX_OK || out.len <= skip) {
        return 0;
    }

    out.len = ngx_min(out.len - skip, n);

    if (out.data == buf) {
        ngx_memcpy(dst, buf + skip, out.len);
    }

    return out.len;
}
