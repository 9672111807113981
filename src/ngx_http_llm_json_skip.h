
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_JSON_SKIP_H_INCLUDED_
#define _NGX_HTTP_LLM_JSON_SKIP_H_INCLUDED_


/*
 * Passes over JSON text up to the next string that may be a key the
 * caller looks for, knowing only where strings start and end.  A
 * streamed reply is mostly short strings the reply scanner has no use
 * for ("id", "object", "chat.completion.chunk", "created", ...): opening
 * and closing each one costs it some ninety instructions, while here 32
 * bytes without a backslash cost some fifty to eighty, however many
 * strings they hold.
 *
 * A wanted key is known by its length and its first two bytes: a quote
 * opens it, the two bytes after are one of the pairs ("cousde": content,
 * usage, delta), and another quote closes it that pair's span bytes
 * further on (8 for "co", 6 for the others; two spans at most, below
 * 16, for a quote's two looks ahead).  The caller compares the whole key;
 * some strings found here are not one.  The spellings every event of a
 * chat stream has are taken here: a delta object ("delta":{) and a null
 * usage ("usage":null, in every event of a stream asked to end with
 * usage) are passed over, and a text ("content":") counted in *counted
 * where it is not empty (when it opens, where the caller would count it
 * when it closes: the two differ only for a reply cut inside a text).
 * A counted text found 32 bytes at a time also ends the pass, at the
 * text's opening quote, not yet read, with NGX_HTTP_LLM_JSON_TEXT set:
 * from there to the next text a stream's events are often the same
 * bytes, which the caller can compare instead of reading them again.
 *
 * *state says where p is (NGX_HTTP_LLM_JSON_INSIDE a string,
 * NGX_HTTP_LLM_JSON_ESCAPED: the byte at p is escaped) and, on return,
 * where the returned position is, before its byte is read.  The return
 * is the opening quote of a string that may be wanted, with
 * NGX_HTTP_LLM_JSON_FOUND set, or the place from where the caller is to
 * read byte by byte: the end, a string that opens in the last 16 bytes
 * and cannot be told from a wanted key with the bytes there, a
 * backslash in the last 64 (or p itself without SSE2).  Other blocks
 * with a backslash are read byte by byte here too, so the result is
 * exactly that of the byte-by-byte reading, even for text that is not
 * JSON.  Plain C99 without nginx headers, so that a test can
 * compare it with that reading (t/json/json_skip.c).
 */


#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if (defined __SSE2__ && defined __GNUC__)
#include <emmintrin.h>
#endif


#define NGX_HTTP_LLM_JSON_INSIDE   1
#define NGX_HTTP_LLM_JSON_ESCAPED  2
#define NGX_HTTP_LLM_JSON_FOUND    4
#define NGX_HTTP_LLM_JSON_TEXT     8


typedef struct {
    const char     *pairs;
    unsigned char   span[4];     /* 4 pairs at most */
    unsigned        npairs;

    /*
     * the usual spellings of wanted keys and what follows them: those of
     * pass are passed over, count is counted where the text after it is
     * not empty
     */
    const char  *pass[2];
    size_t       pass_len[2];
    const char  *count;
    size_t       count_len;
} ngx_http_llm_json_keys_t;


/* whether the two bytes at p are those a wanted key starts with */

static inline int
ngx_http_llm_json_skip_pair(const unsigned char *p,
    const ngx_http_llm_json_keys_t *keys)
{
    unsigned  i;

    for (i = 0; i < keys->npairs; i++) {
        if (p[0] == (unsigned char) keys->pairs[2 * i]
            && p[1] == (unsigned char) keys->pairs[2 * i + 1])
        {
            return 1;
        }
    }

    return 0;
}


/*
 * whether a wanted key may open with the quote at p, len bytes from p
 * at hand: a pair's two bytes, and a quote at that pair's span (a value
 * such as "default", OpenAI's service tier in every event of a stream,
 * is none: "de" is delta's, whose span is 6)
 */

#define ngx_http_llm_json_skip_opens_as(i)                                  \
    (keys->npairs > i                                                        \
     && p[1] == (unsigned char) keys->pairs[2 * i]                           \
     && p[2] == (unsigned char) keys->pairs[2 * i + 1]                       \
     && len > keys->span[i] && p[keys->span[i]] == '"')

static inline int
ngx_http_llm_json_skip_opens(const unsigned char *p, size_t len,
    const ngx_http_llm_json_keys_t *keys)
{
    /* four pairs at most, unrolled: a loop cost 15 instructions a quote */

    return ngx_http_llm_json_skip_opens_as(0)
           || ngx_http_llm_json_skip_opens_as(1)
           || ngx_http_llm_json_skip_opens_as(2)
           || ngx_http_llm_json_skip_opens_as(3);
}


/*
 * bit span set for each pair's span: a constant where keys is (the
 * caller's static keys), so the look ahead below costs nothing more
 */

#define ngx_http_llm_json_skip_span(i)                                      \
    (keys->npairs > i ? 1u << keys->span[i] : 0)

static inline unsigned
ngx_http_llm_json_skip_spans(const ngx_http_llm_json_keys_t *keys)
{
    return ngx_http_llm_json_skip_span(0) | ngx_http_llm_json_skip_span(1)
           | ngx_http_llm_json_skip_span(2) | ngx_http_llm_json_skip_span(3);
}


/*
 * where a usual spelling is at p: 1 one passed over, 2 the counted one;
 * the key's first byte tells them apart before a compare
 */

static inline int
ngx_http_llm_json_skip_spelling(const unsigned char *p,
    const unsigned char *end, const ngx_http_llm_json_keys_t *keys,
    size_t *counted)
{
    unsigned  i;

    for (i = 0; i < sizeof(keys->pass) / sizeof(keys->pass[0]); i++) {
        if (p[1] == (unsigned char) keys->pass[i][1]
            && (size_t) (end - p) > keys->pass_len[i]
            && memcmp(p, keys->pass[i], keys->pass_len[i]) == 0)
        {
            return 1;
        }
    }

    if ((size_t) (end - p) > keys->count_len
        && memcmp(p, keys->count, keys->count_len) == 0)
    {
        *counted += (p[keys->count_len] != '"');
        return 2;
    }

    return 0;
}


/*
 * Whether a wanted key may open with the quote at p, for the caller to
 * read; in one of the usual spellings it is passed over, or counted.
 */

static inline int
ngx_http_llm_json_skip_key(const unsigned char *p, const unsigned char *end,
    const ngx_http_llm_json_keys_t *keys, size_t *counted)
{
    if (end - p < 3 || !ngx_http_llm_json_skip_opens(p, end - p, keys)) {
        return 0;
    }

    return ngx_http_llm_json_skip_spelling(p, end, keys, counted) == 0;
}


/* one byte of the byte-by-byte reading; nonzero where a wanted key may
 * open at p */

static inline int
ngx_http_llm_json_skip_byte(const unsigned char *p, const unsigned char *end,
    const ngx_http_llm_json_keys_t *keys, unsigned *state, size_t *counted)
{
    if (*state & NGX_HTTP_LLM_JSON_ESCAPED) {
        *state &= ~NGX_HTTP_LLM_JSON_ESCAPED;
        return 0;
    }

    if (*state & NGX_HTTP_LLM_JSON_INSIDE) {
        if (*p == '\\') {
            *state |= NGX_HTTP_LLM_JSON_ESCAPED;

        } else if (*p == '"') {
            *state &= ~NGX_HTTP_LLM_JSON_INSIDE;
        }

        return 0;
    }

    if (*p != '"') {
        return 0;
    }

    *state |= NGX_HTTP_LLM_JSON_INSIDE;

    return ngx_http_llm_json_skip_key(p, end, keys, counted);
}


#if (defined __SSE2__ && defined __GNUC__)

/* bit k set where byte k of the 32 at p is c */

static inline uint32_t
ngx_http_llm_json_skip_mask(const unsigned char *p, __m128i c)
{
    __m128i  lo, hi;

    lo = _mm_loadu_si128((const __m128i *) p);
    hi = _mm_loadu_si128((const __m128i *) (p + 16));

    return (uint32_t) _mm_movemask_epi8(_mm_cmpeq_epi8(lo, c))
           | ((uint32_t) _mm_movemask_epi8(_mm_cmpeq_epi8(hi, c)) << 16);
}

#endif


#if (defined __SSE2__ && defined __GNUC__)

/*
 * The last bytes of a buffer, fewer than 64, from a copy padded with
 * blanks.  A key may go on in the next buffer, so the reading stops at
 * the first quote that opens a string too near the end to be told from
 * a wanted one with the bytes at hand (in the last NGX_HTTP_LLM_JSON_LOOK
 * bytes), and leaves the text from there, and any with a backslash, to
 * the byte-by-byte reading.
 */

#define NGX_HTTP_LLM_JSON_LOOK  16

#define ngx_http_llm_json_max(a, b)  ((a) > (b) ? (a) : (b))

static inline const unsigned char *
ngx_http_llm_json_skip_tail(const unsigned char *p, const unsigned char *end,
    const ngx_http_llm_json_keys_t *keys, unsigned *state, size_t *counted)
{
    size_t          len, need;
    unsigned        i, s1, s2;
    uint64_t        q, inside, open, late, near;
    __m128i         quote, backslash;
    unsigned char   pad[64];

    len = end - p;

    if (len == 0 || (*state & NGX_HTTP_LLM_JSON_ESCAPED)) {
        return p;
    }

    memcpy(pad, p, len);
    memset(pad + len, ' ', sizeof(pad) - len);

    quote = _mm_set1_epi8('"');
    backslash = _mm_set1_epi8('\\');

    if (ngx_http_llm_json_skip_mask(pad, backslash)
        | ngx_http_llm_json_skip_mask(pad + 32, backslash))
    {
        return p;
    }

    q = ngx_http_llm_json_skip_mask(pad, quote)
        | (uint64_t) ngx_http_llm_json_skip_mask(pad + 32, quote) << 32;

    /* bit k: in a string after byte k, the parity of the quotes to it */

    inside = q ^ (q << 1);
    inside ^= inside << 2;
    inside ^= inside << 4;
    inside ^= inside << 8;
    inside ^= inside << 16;
    inside ^= inside << 32;

    if (*state & NGX_HTTP_LLM_JSON_INSIDE) {
        inside = ~inside;
    }

    open = q & inside;

    late = (len > NGX_HTTP_LLM_JSON_LOOK)
           ? open & (~0ULL << (len - NGX_HTTP_LLM_JSON_LOOK)) : open;

    s1 = __builtin_ctz(ngx_http_llm_json_skip_spans(keys));
    s2 = 31 - __builtin_clz(ngx_http_llm_json_skip_spans(keys));

    /*
     * A late quote is told here all the same where every byte the
     * telling reads is in the buffer: its two first bytes where they
     * are no pair, or the bytes to the longest span and spelling.  An
     * event of a stream often ends with such a string ("usage":null},
     * "finish_reason":null}]}), and one read here lets the caller keep
     * comparing the next event with the last.
     */

    need = s2;
    need = ngx_http_llm_json_max(need, keys->pass_len[0]);
    need = ngx_http_llm_json_max(need, keys->pass_len[1]);
    need = ngx_http_llm_json_max(need, keys->count_len);

    while (late) {
        i = __builtin_ctzll(late);

        if (len - i <= need
            && (len - i < 3 || ngx_http_llm_json_skip_pair(pad + i + 1, keys)))
        {
            break;
        }

        late &= late - 1;
    }

    if (late) {
        /* only the quotes before the first late one */
        open &= (late & -late) - 1;
    }

    near = open & ((q >> s1) | (q >> s2));

    while (near) {
        i = __builtin_ctzll(near);

        if (ngx_http_llm_json_skip_opens(pad + i, len - i, keys)
            && !ngx_http_llm_json_skip_spelling(pad + i, pad + len, keys,
                                                counted))
        {
            *state = NGX_HTTP_LLM_JSON_FOUND;
            return p + i;
        }

        near &= near - 1;
    }

    if (late) {
        *state = 0;
        return p + __builtin_ctzll(late);
    }

    *state = (inside >> (len - 1)) & NGX_HTTP_LLM_JSON_INSIDE;

    return end;
}

#endif


static inline const unsigned char *
ngx_http_llm_json_skip(const unsigned char *p, const unsigned char *end,
    const ngx_http_llm_json_keys_t *keys, unsigned *state, size_t *counted)
{
#if (defined __SSE2__ && defined __GNUC__)

    unsigned  st, s1, s2, i;
    uint32_t  q, b, qn, bn, near, odd;
    uint64_t  window;
    __m128i   quote, backslash;

    st = *state & ~NGX_HTTP_LLM_JSON_FOUND;

    if (end - p < 64) {
        *state = st;
        return ngx_http_llm_json_skip_tail(p, end, keys, state, counted);
    }

    s1 = __builtin_ctz(ngx_http_llm_json_skip_spans(keys));
    s2 = 31 - __builtin_clz(ngx_http_llm_json_skip_spans(keys));

    quote = _mm_set1_epi8('"');
    backslash = _mm_set1_epi8('\\');

    q = ngx_http_llm_json_skip_mask(p, quote);
    b = ngx_http_llm_json_skip_mask(p, backslash);

    /*
     * the quotes of the blocks passed since st was last brought up to
     * date: without a backslash each quote opens or closes a string, so
     * the parity of their number, taken only when needed, says whether
     * the text is in a string
     */

    odd = 0;

    /* 32 bytes at a time, and the next 32, where a key may close */

    while (end - p >= 64) {

        qn = ngx_http_llm_json_skip_mask(p + 32, quote);
        bn = ngx_http_llm_json_skip_mask(p + 32, backslash);

        if (b | (st & NGX_HTTP_LLM_JSON_ESCAPED)) {

            /* rare outside the texts the caller reads itself */

            st ^= __builtin_parity(odd);
            odd = 0;

            for (i = 0; i < 32; i++) {
                if (ngx_http_llm_json_skip_byte(p + i, end, keys, &st,
                                                counted))
                {
                    *state = NGX_HTTP_LLM_JSON_FOUND;
                    return p + i;
                }
            }

            goto next;
        }

        /* quotes a wanted key's length before another quote */

        window = q | ((uint64_t) qn << 32);
        near = q & (uint32_t) ((window >> s1) | (window >> s2));

        while (near) {
            i = __builtin_ctz(near);

            /* a wanted key's first bytes, after a quote that opens */

            if (ngx_http_llm_json_skip_opens(p + i, end - (p + i), keys)
                && ((st ^ __builtin_parity(odd ^ (q & ((1u << i) - 1))))
                    & NGX_HTTP_LLM_JSON_INSIDE) == 0)
            {
                switch (ngx_http_llm_json_skip_spelling(p + i, end, keys,
                                                        counted))
                {
                case 0:
                    *state = NGX_HTTP_LLM_JSON_FOUND;
                    return p + i;

                case 2:
                    /* "content":" read: outside a string before the " */
                    *state = NGX_HTTP_LLM_JSON_TEXT;
                    return p + i + keys->count_len - 1;
                }
            }

            near &= near - 1;
        }

        odd ^= q;

    next:

        p += 32;
        q = qn;
        b = bn;
    }

    *state = st ^ __builtin_parity(odd);

    return ngx_http_llm_json_skip_tail(p, end, keys, state, counted);

#else

    *state &= ~NGX_HTTP_LLM_JSON_FOUND;

#endif

    return p;
}


#endif /* _NGX_HTTP_LLM_JSON_SKIP_H_INCLUDED_ */
