
/*
 * Copyright (C) nginx-llm-router authors
 */


/*
 * cJSON reads a string byte by byte twice, once to find its end and once
 * to copy it, with a bounds check and a branch per byte: about 19
 * instructions a byte of body (measured with callgrind), as much as all
 * of nginx's proxying for a 1 KB chat body.  Most of a chat body is the
 * text of its messages, so this reader finds the end of a string sixteen
 * bytes at a time and copies it with memcpy().  It builds cJSON's own
 * nodes, linked as cJSON links them, so the code that walks the tree
 * does not know which of the two read it.
 *
 * Where cJSON's reading is not plain JSON (it hands strtod() whatever
 * run of [0-9+-eE.] follows, takes any byte up to a space as a blank,
 * reads "\u" with bad digits as U+0000, skips a byte order mark), or
 * where this reader is not sure to agree, it declines rather than guess:
 * cJSON then reads the text from the start.  Declining costs a second
 * read of a body no SDK sends.
 */


#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include "ngx_http_llm_json_reader.h"


/* chat bodies nest about 6 deep, tool schemas a few more */
#define NGX_HTTP_LLM_JSON_DEPTH  64

/* cJSON copies at most 63 bytes of a number for strtod() */
#define NGX_HTTP_LLM_JSON_NUMBER  63


typedef struct {
    const unsigned char          *p;
    const unsigned char          *end;
    ngx_http_llm_json_alloc_pt    alloc;
    void                         *data;
    unsigned                      depth;
} ngx_http_llm_json_in_t;


/* the value of a hex digit; 16 for any other byte */

static const unsigned char  ngx_http_llm_json_hex[256] = {
#define X16  16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16
    X16, X16, X16,
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 16, 16, 16, 16, 16,          /* 0-9 */
    16, 10, 11, 12, 13, 14, 15, 16, 16, 16, 16, 16, 16, 16, 16, 16, /* A-F */
    X16,
    16, 10, 11, 12, 13, 14, 15, 16, 16, 16, 16, 16, 16, 16, 16, 16, /* a-f */
    X16, X16, X16, X16, X16, X16, X16, X16, X16
#undef X16
};


static int ngx_http_llm_json_value(ngx_http_llm_json_in_t *in, cJSON *item);
static int ngx_http_llm_json_list(ngx_http_llm_json_in_t *in, cJSON *item,
    int object);
static int ngx_http_llm_json_string(ngx_http_llm_json_in_t *in,
    char **out);
static const unsigned char *ngx_http_llm_json_close(const unsigned char *p,
    const unsigned char *end);
static long ngx_http_llm_json_hex4(const unsigned char *p);
static int ngx_http_llm_json_number(ngx_http_llm_json_in_t *in,
    cJSON *item);
static cJSON *ngx_http_llm_json_item(ngx_http_llm_json_in_t *in);


/* cJSON's blank is any byte up to the space, not only JSON's four */

#define ngx_http_llm_json_blanks(in)                                        \
    while ((in)->p < (in)->end && *(in)->p <= ' ') { (in)->p++; }

#define ngx_http_llm_json_digit(c)  ((unsigned) ((c) - '0') < 10)


int
ngx_http_llm_json_read(const unsigned char *text, size_t len, cJSON **root,
    ngx_http_llm_json_alloc_pt alloc, void *data)
{
    int                      rc;
    cJSON                   *item;
    ngx_http_llm_json_in_t   in;

    /* cJSON skips a byte order mark: rare enough to leave to it */

    if (len == 0 || text[0] == 0xef) {
        return NGX_HTTP_LLM_JSON_DECLINED;
    }

    in.p = text;
    in.end = text + len;
    in.alloc = alloc;
    in.data = data;
    in.depth = 0;

    item = ngx_http_llm_json_item(&in);
    if (item == NULL) {
        return NGX_HTTP_LLM_JSON_NOMEM;
    }

    ngx_http_llm_json_blanks(&in);

    rc = ngx_http_llm_json_value(&in, item);
    if (rc != NGX_HTTP_LLM_JSON_READ) {
        return rc;
    }

    /*
     * bytes after the value other than JSON's four blanks (cJSON's skip
     * takes any control byte) are not JSON: left to cJSON, which finds
     * where its value ends (ngx_http_llm_json_parse())
     */

    while (in.p < in.end && ngx_http_llm_json_space(*in.p)) {
        in.p++;
    }

    if (in.p != in.end) {
        return NGX_HTTP_LLM_JSON_DECLINED;
    }

    *root = item;

    return NGX_HTTP_LLM_JSON_READ;
}


static int
ngx_http_llm_json_value(ngx_http_llm_json_in_t *in, cJSON *item)
{
    const unsigned char  *p;

    p = in->p;

    if (p == in->end) {
        return NGX_HTTP_LLM_JSON_DECLINED;
    }

    switch (*p) {

    case '"':
        item->type = cJSON_String;
        return ngx_http_llm_json_string(in, &item->valuestring);

    case '{':
        return ngx_http_llm_json_list(in, item, 1);

    case '[':
        return ngx_http_llm_json_list(in, item, 0);

    case 'n':
        if (in->end - p >= 4 && memcmp(p, "null", 4) == 0) {
            item->type = cJSON_NULL;
            in->p += 4;
            return NGX_HTTP_LLM_JSON_READ;
        }

        break;

    case 't':
        if (in->end - p >= 4 && memcmp(p, "true", 4) == 0) {
            item->type = cJSON_True;
            item->valueint = 1;
            in->p += 4;
            return NGX_HTTP_LLM_JSON_READ;
        }

        break;

    case 'f':
        if (in->end - p >= 5 && memcmp(p, "false", 5) == 0) {
            item->type = cJSON_False;
            in->p += 5;
            return NGX_HTTP_LLM_JSON_READ;
        }

        break;

    default:
        if (*p == '-' || ngx_http_llm_json_digit(*p)) {
            return ngx_http_llm_json_number(in, item);
        }
    }

    return NGX_HTTP_LLM_JSON_DECLINED;
}


/*
 * An array or an object: children linked by next and prev, the first
 * child's prev pointing to the last, as cJSON leaves them.
 */

static int
ngx_http_llm_json_list(ngx_http_llm_json_in_t *in, cJSON *item, int object)
{
    int             rc;
    unsigned char   close;
    cJSON          *head, *last, *child;

    if (++in->depth > NGX_HTTP_LLM_JSON_DEPTH) {
        return NGX_HTTP_LLM_JSON_DECLINED;
    }

    close = object ? '}' : ']';
    item->type = object ? cJSON_Object : cJSON_Array;

    in->p++;
    ngx_http_llm_json_blanks(in);

    if (in->p == in->end) {
        return NGX_HTTP_LLM_JSON_DECLINED;
    }

    if (*in->p == close) {
        in->p++;
        in->depth--;
        return NGX_HTTP_LLM_JSON_READ;
    }

    head = NULL;
    last = NULL;

    for ( ;; ) {
        child = ngx_http_llm_json_item(in);
        if (child == NULL) {
            return NGX_HTTP_LLM_JSON_NOMEM;
        }

        if (head == NULL) {
            head = child;

        } else {
            last->next = child;
            child->prev = last;
        }

        last = child;

        if (object) {
            if (in->p == in->end || *in->p != '"') {
                return NGX_HTTP_LLM_JSON_DECLINED;
            }

            rc = ngx_http_llm_json_string(in, &child->string);
            if (rc != NGX_HTTP_LLM_JSON_READ) {
                return rc;
            }

            ngx_http_llm_json_blanks(in);

            if (in->p == in->end || *in->p != ':') {
                return NGX_HTTP_LLM_JSON_DECLINED;
            }

            in->p++;
            ngx_http_llm_json_blanks(in);
        }

        rc = ngx_http_llm_json_value(in, child);
        if (rc != NGX_HTTP_LLM_JSON_READ) {
            return rc;
        }

        ngx_http_llm_json_blanks(in);

        if (in->p == in->end) {
            return NGX_HTTP_LLM_JSON_DECLINED;
        }

        if (*in->p == ',') {
            in->p++;
            ngx_http_llm_json_blanks(in);
            continue;
        }

        if (*in->p == close) {
            break;
        }

        return NGX_HTTP_LLM_JSON_DECLINED;
    }

    in->p++;
    in->depth--;

    head->prev = last;
    item->child = head;

    return NGX_HTTP_LLM_JSON_READ;
}


/*
 * The end of a string is its first quote not escaped; the bytes between
 * are copied as they are when there is no backslash, which is the usual
 * case.  Like cJSON, any other byte, a control character or invalid
 * UTF-8, is kept as it is.
 */

static int
ngx_http_llm_json_string(ngx_http_llm_json_in_t *in, char **out)
{
    int                   escaped;
    size_t                len;
    unsigned char        *dst;
    const unsigned char  *start, *p, *q;

    start = in->p + 1;
    p = start;
    escaped = 0;

    for ( ;; ) {
        q = ngx_http_llm_json_special(p, in->end);

        if (q == in->end) {
            return NGX_HTTP_LLM_JSON_DECLINED;
        }

        if (*q == '"') {
            break;
        }

        /*
         * a backslash: from here on only quotes are looked for, a quote
         * after an odd run of backslashes being part of the text (where
         * every character is escaped, "\uXXXX" after "\uXXXX", this
         * saves a search per escape)
         */

        escaped = 1;

        q = ngx_http_llm_json_close(q, in->end);
        if (q == NULL) {
            return NGX_HTTP_LLM_JSON_DECLINED;
        }

        break;
    }

    len = q - start;

    dst = in->alloc(in->data, len + 1);
    if (dst == NULL) {
        return NGX_HTTP_LLM_JSON_NOMEM;
    }

    if (!escaped) {
        memcpy(dst, start, len);
        dst[len] = '\0';

    } else if (ngx_http_llm_json_unescape(start, q, dst)
               != NGX_HTTP_LLM_JSON_READ)
    {
        return NGX_HTTP_LLM_JSON_DECLINED;
    }

    in->p = q + 1;
    *out = (char *) dst;

    return NGX_HTTP_LLM_JSON_READ;
}


/*
 * The quote that ends a string, from p inside it on: the first one after
 * an even run of backslashes.  The run never reaches past the string's
 * opening quote.
 */

static const unsigned char *
ngx_http_llm_json_close(const unsigned char *p, const unsigned char *end)
{
    const unsigned char  *q, *b;

    for ( ;; ) {
        q = memchr(p, '"', end - p);

        if (q == NULL) {
            return NULL;
        }

        for (b = q; b[-1] == '\\'; b--) {
            /* void */
        }

        if (((q - b) & 1) == 0) {
            return q;
        }

        p = q + 1;
    }
}


/*
 * Every backslash between p and end is followed by a byte before end:
 * ngx_http_llm_json_string() skipped it.  The text never grows.
 */

int
ngx_http_llm_json_unescape(const unsigned char *p, const unsigned char *end,
    unsigned char *dst)
{
    long                  c, c2;
    const unsigned char  *q;

    while (p < end) {

        if (*p != '\\') {
            q = memchr(p, '\\', end - p);

            if (q == NULL) {
                memcpy(dst, p, end - p);
                dst += end - p;
                break;
            }

            memcpy(dst, p, q - p);
            dst += q - p;

        } else {
            /* escapes in a row, as \uXXXX of every non-ASCII character */
            q = p;
        }

        switch (q[1]) {

        case 'b': *dst++ = '\b'; p = q + 2; continue;
        case 'f': *dst++ = '\f'; p = q + 2; continue;
        case 'n': *dst++ = '\n'; p = q + 2; continue;
        case 'r': *dst++ = '\r'; p = q + 2; continue;
        case 't': *dst++ = '\t'; p = q + 2; continue;

        case '"':
        case '\\':
        case '/':
            *dst++ = q[1];
            p = q + 2;
            continue;

        case 'u':
            break;

        default:
            return NGX_HTTP_LLM_JSON_DECLINED;
        }

        if (end - q < 6 || (c = ngx_http_llm_json_hex4(q + 2)) < 0) {
            return NGX_HTTP_LLM_JSON_DECLINED;
        }

        p = q + 6;

        if (c >= 0xdc00 && c <= 0xdfff) {
            return NGX_HTTP_LLM_JSON_DECLINED;
        }

        if (c >= 0xd800 && c <= 0xdbff) {

            /* a surrogate pair: one code point above U+FFFF */

            if (end - p < 6 || p[0] != '\\' || p[1] != 'u'
                || (c2 = ngx_http_llm_json_hex4(p + 2)) < 0xdc00
                || c2 > 0xdfff)
            {
                return NGX_HTTP_LLM_JSON_DECLINED;
            }

            c = 0x10000 + (((c & 0x3ff) << 10) | (c2 & 0x3ff));
            p += 6;
        }

        if (c < 0x80) {
            *dst++ = (unsigned char) c;

        } else if (c < 0x800) {
            *dst++ = (unsigned char) (0xc0 | (c >> 6));
            *dst++ = (unsigned char) (0x80 | (c & 0x3f));

        } else if (c < 0x10000) {
            *dst++ = (unsigned char) (0xe0 | (c >> 12));
            *dst++ = (unsigned char) (0x80 | ((c >> 6) & 0x3f));
            *dst++ = (unsigned char) (0x80 | (c & 0x3f));

        } else {
            *dst++ = (unsigned char) (0xf0 | (c >> 18));
            *dst++ = (unsigned char) (0x80 | ((c >> 12) & 0x3f));
            *dst++ = (unsigned char) (0x80 | ((c >> 6) & 0x3f));
            *dst++ = (unsigned char) (0x80 | (c & 0x3f));
        }
    }

    *dst = '\0';

    return NGX_HTTP_LLM_JSON_READ;
}


static long
ngx_http_llm_json_hex4(const unsigned char *p)
{
    unsigned  a, b, c, d;

    a = ngx_http_llm_json_hex[p[0]];
    b = ngx_http_llm_json_hex[p[1]];
    c = ngx_http_llm_json_hex[p[2]];
    d = ngx_http_llm_json_hex[p[3]];

    /* 16 marks a byte that is not a hex digit */

    if ((a | b | c | d) & 16) {
        return -1;
    }

    return (long) ((a << 12) | (b << 8) | (c << 4) | d);
}


/*
 * JSON's grammar exactly.  An integer of up to 15 digits is exact in a
 * double, which is then what strtod() returns for it; anything else goes
 * to strtod() as cJSON's does.  A number followed by a byte cJSON would
 * have handed strtod() too ("1.5.2", "01", "1-2") is left to cJSON.
 */

static int
ngx_http_llm_json_number(ngx_http_llm_json_in_t *in, cJSON *item)
{
    int                   exact, neg;
    char                  buf[NGX_HTTP_LLM_JSON_NUMBER + 1], *after;
    double                d;
    size_t                len;
    uint64_t              v;
    const unsigned char  *p, *end, *digits;

    p = in->p;
    end = in->end;

    neg = (*p == '-');
    if (neg) {
        p++;
    }

    digits = p;

    if (p < end && *p == '0') {
        p++;

    } else if (p < end && ngx_http_llm_json_digit(*p)) {
        while (p < end && ngx_http_llm_json_digit(*p)) {
            p++;
        }

    } else {
        return NGX_HTTP_LLM_JSON_DECLINED;
    }

    exact = (p - digits <= 15);
    len = p - digits;

    if (p < end && *p == '.') {
        exact = 0;

        if (++p == end || !ngx_http_llm_json_digit(*p)) {
            return NGX_HTTP_LLM_JSON_DECLINED;
        }

        while (p < end && ngx_http_llm_json_digit(*p)) {
            p++;
        }
    }

    if (p < end && (*p | 0x20) == 'e') {
        exact = 0;

        if (++p < end && (*p == '+' || *p == '-')) {
            p++;
        }

        if (p == end || !ngx_http_llm_json_digit(*p)) {
            return NGX_HTTP_LLM_JSON_DECLINED;
        }

        while (p < end && ngx_http_llm_json_digit(*p)) {
            p++;
        }
    }

    if (p < end
        && (ngx_http_llm_json_digit(*p) || *p == '.' || *p == '+'
            || *p == '-' || (*p | 0x20) == 'e'))
    {
        return NGX_HTTP_LLM_JSON_DECLINED;
    }

    if (exact) {
        v = 0;

        while (len--) {
            v = v * 10 + (*digits++ - '0');
        }

        d = neg ? -(double) v : (double) v;

    } else {
        len = p - in->p;

        if (len > NGX_HTTP_LLM_JSON_NUMBER) {
            return NGX_HTTP_LLM_JSON_DECLINED;
        }

        /* the C locale of nginx: '.' is the decimal point */

        memcpy(buf, in->p, len);
        buf[len] = '\0';

        d = strtod(buf, &after);

        if (after != buf + len) {
            return NGX_HTTP_LLM_JSON_DECLINED;
        }
    }

    item->type = cJSON_Number;
    item->valuedouble = d;

    /* cJSON saturates */

    if (d >= INT_MAX) {
        item->valueint = INT_MAX;

    } else if (d <= (double) INT_MIN) {
        item->valueint = INT_MIN;

    } else {
        item->valueint = (int) d;
    }

    in->p = p;

    return NGX_HTTP_LLM_JSON_READ;
}


static cJSON *
ngx_http_llm_json_item(ngx_http_llm_json_in_t *in)
{
    cJSON  *item;

    item = in->alloc(in->data, sizeof(cJSON));
    if (item == NULL) {
        return NULL;
    }

    memset(item, 0, sizeof(cJSON));

    return item;
}
