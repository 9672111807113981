/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_parse.h"


/*
 * The values of directives and of backends' reply headers: counts,
 * durations, percentages.  Text in, a number or -1 (NGX_ERROR) out.
 */


/* "89.3%", "100%", "7": per mille (893, 1000, 70), or -1 */

ngx_int_t
ngx_http_llm_parse_permille(ngx_str_t *value)
{
    u_char     *p, *last;
    ngx_int_t   n;

    p = value->data;
    last = p + value->len;

    if (last > p && last[-1] == '%') {
        last--;
    }

    if (p == last || *p < '0' || *p > '9') {
        return -1;
    }

    for (n = 0; p < last && *p >= '0' && *p <= '9'; p++) {
        n = n * 10 + (*p - '0');

        if (n > 100000) {
            return -1;
        }
    }

    n *= 10;

    if (p < last && *p == '.') {
        p++;

        if (p == last || *p < '0' || *p > '9') {
            return -1;
        }

        n += *p++ - '0';

        while (p < last && *p >= '0' && *p <= '9') {
            p++;
        }
    }

    return p == last ? n : -1;
}


/*
 * "17", "17ms", "1.5s", "6m0s", "1h2m3.5s": milliseconds, or -1.  A bare
 * number is seconds, as Azure sends it; OpenAI sends durations.
 */

ngx_int_t
ngx_http_llm_parse_duration(ngx_str_t *value)
{
    u_char      *p, *last;
    ngx_int_t    total, whole, frac, scale, unit;

    p = value->data;
    last = p + value->len;
    total = 0;

    if (p == last) {
        return -1;
    }

    while (p < last) {
        whole = 0;
        frac = 0;
        scale = 1;

        if (*p < '0' || *p > '9') {
            return -1;
        }

        while (p < last && *p >= '0' && *p <= '9') {
            if (whole < NGX_HTTP_LLM_DELAY_MAX) {
                whole = whole * 10 + (*p - '0');
            }

            p++;
        }

        whole = ngx_min(whole, NGX_HTTP_LLM_DELAY_MAX);

        if (p < last && *p == '.') {
            p++;

            while (p < last && *p >= '0' && *p <= '9') {
                if (scale < 1000) {
                    frac = frac * 10 + (*p - '0');
                    scale *= 10;
                }

                p++;
            }
        }

        if (p == last) {
            unit = 1000;

        } else if (last - p >= 2 && p[0] == 'm' && p[1] == 's') {
            unit = 1;
            p += 2;

        } else if (*p == 's') {
            unit = 1000;
            p++;

        } else if (*p == 'm') {
            unit = 60000;
            p++;

        } else if (*p == 'h') {
            unit = 3600000;
            p++;

        } else {
            return -1;
        }

        total += whole * unit + frac * unit / scale;
        total = ngx_min(total, NGX_HTTP_LLM_DELAY_MAX);
    }

    return total;
}


/*
 * Retry-After's "30" (unit 1000) or retry-after-ms's "1500" (unit 1):
 * milliseconds, or -1.  A rest beyond NGX_HTTP_LLM_DELAY_MAX, up to one
 * past any integer, is that long: the caller's cooldown_max cuts it.
 */

ngx_int_t
ngx_http_llm_parse_delay(ngx_str_t *value, ngx_int_t unit)
{
    u_char     *p, *last;
    ngx_int_t   n;

    p = value->data;
    last = p + value->len;

    if (p == last) {
        return -1;
    }

    for (n = 0; p < last; p++) {
        if (*p < '0' || *p > '9') {
            return -1;
        }

        if (n < NGX_HTTP_LLM_DELAY_MAX) {
            n = n * 10 + (*p - '0');
        }
    }

    return ngx_min(n, NGX_HTTP_LLM_DELAY_MAX / unit) * unit;
}


/* "150000", "150k", "1m": a count; NGX_ERROR if invalid */

ngx_int_t
ngx_http_llm_parse_count(u_char *p, size_t len)
{
    ngx_int_t  n, scale;

    scale = 1;

    if (len > 1) {
        switch (p[len - 1]) {
        case 'k':
        case 'K':
            scale = 1000;
            len--;
            break;

        case 'm':
        case 'M':
            scale = 1000000;
            len--;
            break;
        }
    }

    n = ngx_atoi(p, len);

    if (n == NGX_ERROR || n > NGX_MAX_INT32_VALUE / scale) {
        return NGX_ERROR;
    }

    return n * scale;
}


/*
 * One "name=value" of a directive, by a table of the directive's
 * options: NGX_OK when it set its field, NGX_DECLINED when the table has
 * no such name, NGX_ERROR when the value is bad or out of its bounds
 * (max 0: none).  A string may not be empty.
 */

ngx_int_t
ngx_http_llm_parse_option(ngx_str_t *value, ngx_http_llm_option_t *options,
    void *conf)
{
    u_char                 *field;
    time_t                  sec;
    ngx_int_t               n;
    ngx_str_t               v;
    ngx_msec_t              ms;
    ngx_http_llm_option_t  *o;

    for (o = options; o->name.len; o++) {
        if (value->len >= o->name.len
            && ngx_strncmp(value->data, o->name.data, o->name.len) == 0)
        {
            break;
        }
    }

    if (o->name.len == 0) {
        return NGX_DECLINED;
    }

    v.data = value->data + o->name.len;
    v.len = value->len - o->name.len;
    field = (u_char *) conf + o->offset;

    if (v.len == 0) {
        return NGX_ERROR;
    }

    switch (o->type) {

    case NGX_HTTP_LLM_OPTION_STRING:
        *(ngx_str_t *) field = v;
        return NGX_OK;

    case NGX_HTTP_LLM_OPTION_NUMBER:
    case NGX_HTTP_LLM_OPTION_COUNT:
        n = (o->type == NGX_HTTP_LLM_OPTION_NUMBER)
            ? ngx_atoi(v.data, v.len) : ngx_http_llm_parse_count(v.data, v.len);

        if (n == NGX_ERROR || (ngx_uint_t) n < o->min
            || (o->max && (ngx_uint_t) n > o->max))
        {
            return NGX_ERROR;
        }

        *(ngx_uint_t *) field = n;
        return NGX_OK;

    case NGX_HTTP_LLM_OPTION_MSEC:
        ms = ngx_parse_time(&v, 0);

        if (ms == (ngx_msec_t) NGX_ERROR || ms < o->min
            || (o->max && ms > o->max))
        {
            return NGX_ERROR;
        }

        *(ngx_msec_t *) field = ms;
        return NGX_OK;

    default: /* NGX_HTTP_LLM_OPTION_SEC */
        sec = ngx_parse_time(&v, 1);

        if (sec == (time_t) NGX_ERROR || (ngx_uint_t) sec < o->min
            || (o->max && (ngx_uint_t) sec > o->max))
        {
            return NGX_ERROR;
        }

        *(time_t *) field = sec;
        return NGX_OK;
    }
}
