
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_JSON_READER_H_INCLUDED_
#define _NGX_HTTP_LLM_JSON_READER_H_INCLUDED_


/*
 * A reader of the JSON that clients and backends actually send, building
 * the very tree cJSON would build, several times faster.  It declines
 * whatever it is not sure to read as cJSON does (numbers outside JSON's
 * grammar, unusual escapes, a byte order mark, deep nesting, any error):
 * the caller then parses with cJSON itself, so the tree and the errors
 * are always cJSON's.  Plain C99 without nginx headers, so that a fuzzer
 * can compare it with cJSON (t/json/json_diff.c).
 */


#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cjson/cJSON.h>
#if (defined __SSE2__ && defined __GNUC__)
#include <emmintrin.h>
#endif


#define NGX_HTTP_LLM_JSON_READ      0
#define NGX_HTTP_LLM_JSON_DECLINED  1
#define NGX_HTTP_LLM_JSON_NOMEM     2


typedef void *(*ngx_http_llm_json_alloc_pt)(void *data, size_t size);


int ngx_http_llm_json_read(const unsigned char *text, size_t len,
    cJSON **root, ngx_http_llm_json_alloc_pt alloc, void *data);


/* JSON's own four blanks, the only bytes that may follow a body's value */
#define ngx_http_llm_json_space(c)                                           \
    ((c) == ' ' || (c) == '\t' || (c) == '\r' || (c) == '\n')


/* decodes a string's escapes, as the reader does: ngx_http_llm_walk() */
int ngx_http_llm_json_unescape(const unsigned char *p,
    const unsigned char *end, unsigned char *dst);


/*
 * The first quote or backslash, or NUL byte if nul is set, for the
 * reader, the body walk and the reply scanner alike (inlined in each,
 * nul a constant): sixteen bytes at a time with SSE2, which every x86-64
 * has, or else eight at a time in a 64-bit word.  In the word, a byte of
 * w ^ c is zero where w has c, and (x - 0x01..) & ~x & 0x80.. sets the
 * high bit of the first zero byte of x (bits above it may be wrong, so
 * only the lowest one is read: a little-endian load).
 */

static inline const unsigned char *
ngx_http_llm_json_find(const unsigned char *p, const unsigned char *end,
    int nul)
{
#if (defined __SSE2__ && defined __GNUC__)

    unsigned  hit;
    __m128i   w, m, quote, backslash, zero;

    quote = _mm_set1_epi8('"');
    backslash = _mm_set1_epi8('\\');
    zero = _mm_setzero_si128();

    while (end - p >= 16) {
        w = _mm_loadu_si128((const __m128i *) p);

        m = _mm_or_si128(_mm_cmpeq_epi8(w, quote),
                         _mm_cmpeq_epi8(w, backslash));

        if (nul) {
            m = _mm_or_si128(m, _mm_cmpeq_epi8(w, zero));
        }

        hit = (unsigned) _mm_movemask_epi8(m);

        if (hit) {
            return p + __builtin_ctz(hit);
        }

        p += 16;
    }

#elif (defined __GNUC__ && defined __BYTE_ORDER__                          \
       && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)

    uint64_t  w, q, b, hit;

    while (end - p >= 8) {
        memcpy(&w, p, 8);

        q = w ^ 0x2222222222222222ULL;
        b = w ^ 0x5c5c5c5c5c5c5c5cULL;

        hit = ((q - 0x0101010101010101ULL) & ~q)
              | ((b - 0x0101010101010101ULL) & ~b);

        if (nul) {
            hit |= (w - 0x0101010101010101ULL) & ~w;
        }

        hit &= 0x8080808080808080ULL;

        if (hit) {
            return p + (__builtin_ctzll(hit) >> 3);
        }

        p += 8;
    }

#endif

    while (p < end && *p != '"' && *p != '\\' && !(nul && *p == '\0')) {
        p++;
    }

    return p;
}


static inline const unsigned char *
ngx_http_llm_json_special(const unsigned char *p, const unsigned char *end)
{
    return ngx_http_llm_json_find(p, end, 0);
}


#endif /* _NGX_HTTP_LLM_JSON_READER_H_INCLUDED_ */
