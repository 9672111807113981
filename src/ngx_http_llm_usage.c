
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <cjson/cJSON.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_json.h"
#include "ngx_http_llm_json_reader.h"
#include "ngx_http_llm_json_skip.h"
#include "ngx_http_llm_usage.h"
#include "ngx_http_llm_walk.h"


/*
 * Finds "usage" in a reply as its bytes pass, JSON or SSE alike, without
 * holding or copying the reply: one pass that knows only whether it is
 * inside a string, the name of the last key, and the depth of the usage
 * object it is copying (a few hundred bytes, walked or parsed into a
 * cJSON tree when it closes).  In a stream, "data:" prefixes and [DONE]
 * sit outside any string and are passed over; events split across reads
 * just continue the same state.  A stream's text deltas are counted on
 * the way, for streams that end without usage.  A key with an escape is
 * never one of those looked for, as it is not in the reply's tree.
 * Between the strings it wants, the scan passes over 32 bytes at a time
 * (ngx_http_llm_json_skip.h): most of a stream's event is strings it
 * has no use for.  And most of those are the same bytes in every event:
 * from one text to the next, what is the same as last time is compared,
 * not read again, a value that changes in every event aside
 * (ngx_http_llm_scan_texts()).
 */


/* "content", the longest key the scanner looks for */
#define NGX_HTTP_LLM_KEY_MAX  7

/*
 * the compare of a text's gap runs at every text of a stream, inlined;
 * gcc would not inline it once the gap's alignment, seldom run, was
 * beside it (some 300 instructions a stream)
 */
#if (defined __GNUC__)
#define ngx_http_llm_scan_inline  ngx_inline __attribute__((always_inline))
#define ngx_http_llm_scan_cold    __attribute__((noinline))
#else
#define ngx_http_llm_scan_inline  ngx_inline
#define ngx_http_llm_scan_cold
#endif

/* string values of their own that a gap may differ in, at most */
#define NGX_HTTP_LLM_GAP_VALUES  4

#define ngx_http_llm_scan_shape(c)                                          \
    ((c) == '{' || (c) == '}' || (c) == '[' || (c) == ']' || (c) == ','      \
     || (c) == ':')


ngx_http_llm_usage_name_t  ngx_http_llm_usage_names[] = {
    { ngx_null_string, ngx_string("prompt_tokens") },
    { ngx_null_string, ngx_string("completion_tokens") },
    { ngx_null_string, ngx_string("total_tokens") },
    { ngx_null_string, ngx_string("input_tokens") },
    { ngx_null_string, ngx_string("output_tokens") },
    { ngx_string("prompt_tokens_details"), ngx_string("cached_tokens") },
    { ngx_string("completion_tokens_details"),
      ngx_string("reasoning_tokens") },
    { ngx_string("input_tokens_details"), ngx_string("cached_tokens") },
    { ngx_string("output_tokens_details"), ngx_string("reasoning_tokens") }
};


/*
 * the keys the scan looks for, by their first two bytes and the place of
 * their closing quote: "content" (8), "usage" and "delta" (6); and the
 * spellings of every event of a chat stream: a delta object and, when
 * the stream ends with usage, Azure's "usage":null, both passed over
 * (neither is anything the scan keeps), and a text, counted
 */
static const ngx_http_llm_json_keys_t  ngx_http_llm_scan_keys = {
    "cousde", { 8, 6, 6 }, 3,
    { "\"delta\":{", "\"usage\":null" },
    { sizeof("\"delta\":{") - 1, sizeof("\"usage\":null") - 1 },
    "\"content\":\"", sizeof("\"content\":\"") - 1
};


static ngx_inline u_char *ngx_http_llm_scan_string(ngx_http_llm_scan_t *s,
    ngx_http_llm_scan_state_t *v, u_char *p, u_char *last);
static ngx_inline u_char *ngx_http_llm_scan_between(ngx_http_llm_scan_t *s,
    ngx_http_llm_scan_state_t *v, u_char *p, u_char *last, size_t rec);
static ngx_inline ngx_uint_t ngx_http_llm_scan_gap_room(
    ngx_http_llm_scan_t *s, size_t size);
static ngx_http_llm_scan_inline u_char *ngx_http_llm_scan_texts(
    ngx_http_llm_scan_t *s, ngx_http_llm_scan_state_t *v, u_char **q,
    u_char *last);
static ngx_http_llm_scan_cold size_t ngx_http_llm_scan_align(
    ngx_http_llm_scan_t *s, u_char *c, size_t avail, size_t *m);
static ngx_inline u_char *ngx_http_llm_scan_value_end(u_char *p, size_t o,
    size_t at, size_t len);
static ngx_uint_t ngx_http_llm_scan_in_value(u_char *gap, size_t from,
    size_t j, size_t *o);
static ngx_inline size_t ngx_http_llm_scan_same(u_char *a, u_char *b,
    size_t len);
static u_char *ngx_http_llm_scan_resume(ngx_http_llm_scan_t *s, u_char *p,
    u_char *last, ngx_log_t *log, ngx_uint_t *text);
static ngx_inline u_char *ngx_http_llm_scan_after_key(
    ngx_http_llm_scan_t *s, ngx_http_llm_scan_state_t *v, u_char *p,
    u_char *last, ngx_log_t *log);
static u_char *ngx_http_llm_scan_walk(ngx_http_llm_scan_t *s, u_char *p,
    u_char *last, ngx_log_t *log);
static u_char *ngx_http_llm_scan_usage(ngx_http_llm_scan_t *s,
    u_char *start, u_char *p, u_char *last, ngx_log_t *log);
static void ngx_http_llm_usage_parse(ngx_http_llm_scan_t *s, u_char *start,
    size_t len, ngx_uint_t walk, ngx_log_t *log);
static u_char *ngx_http_llm_last_usage(u_char *start, u_char *p);
static void ngx_http_llm_usage_set(ngx_http_llm_scan_t *s, ngx_uint_t *n,
    ngx_log_t *log);
static ngx_uint_t ngx_http_llm_usage_number(cJSON *obj, ngx_uint_t i);


void
ngx_http_llm_scan(ngx_http_llm_scan_t *s, u_char *p, u_char *last,
    ngx_log_t *log)
{
    u_char                     *end;
    size_t                      rec;
    ngx_uint_t                  text;
    ngx_http_llm_scan_state_t  *v;

    if (s->whole) {
        return;
    }

    if (s->depth) {
        p = ngx_http_llm_scan_usage(s, p, p, last, log);

        if (s->depth) {
            return;
        }
    }

    text = 0;

    /* a gap recorded up to the last buffer's end goes on at this start */

    rec = s->gap_rec;
    s->gap_rec = 0;

    if (s->gap_at) {
        p = ngx_http_llm_scan_resume(s, p, last, log, &text);
    }

    /*
     * the state is read where it is kept: taking it into locals and
     * back cost more, with a stream read an event at a time, than the
     * reloads after a key's bytes are written
     */

    v = &s->state;

    if (text) {
        end = ngx_http_llm_scan_texts(s, v, &p, last);

        if (end) {
            p = (end == last) ? last : end + 1;
        }
    }

    while (p < last) {

        if (v->in_string) {
            p = ngx_http_llm_scan_string(s, v, p, last);

        } else if (!v->after_string && !v->after_colon) {
            p = ngx_http_llm_scan_between(s, v, p, last, rec);

        } else {
            p = ngx_http_llm_scan_after_key(s, v, p, last, log);
        }

        /* only where the last buffer ended */
        rec = 0;
    }
}


/*
 * Inside a string: most of a reply is the text inside strings, run to
 * the next quote or backslash at once, keeping a key's bytes; only a key
 * of up to 7 bytes can be one we look for.
 */

static ngx_inline u_char *
ngx_http_llm_scan_string(ngx_http_llm_scan_t *s, ngx_http_llm_scan_state_t *v,
    u_char *p, u_char *last)
{
    u_char  *q;

    if (v->escaped) {
        v->escaped = 0;
        v->value_chars = 1;
        return p + 1;
    }

    q = (u_char *) ngx_http_llm_json_special(p, last);

    if (q != p) {
        if (v->klen + (q - p) <= NGX_HTTP_LLM_KEY_MAX) {

            /* 8 bytes at once: the buffer has room for 15 */

            if (last - p >= 8) {
                ngx_memcpy(s->key + v->klen, p, 8);

            } else {
                ngx_memcpy(s->key + v->klen, p, q - p);
            }
        }

        v->klen += q - p;
        p = q;

        v->value_chars = 1;

        if (p == last) {
            return last;
        }
    }

    if (*p++ == '\\') {
        /* a key with an escape is none of those looked for */
        v->escaped = 1;
        v->klen = NGX_HTTP_LLM_KEY_MAX + 1;
        return p;
    }

    v->in_string = 0;

    if (v->value_of_text && v->value_chars) {
        /* a non-empty "content" or "delta" text: one token */
        v->deltas++;
    }

    v->value_of_text = 0;

    /* only the keys looked for need what follows them */

    v->usage_key = (v->klen == 5 && ngx_memcmp(s->key, "usage", 5) == 0);
    v->text_key = ((v->klen == 7 && ngx_memcmp(s->key, "content", 7) == 0)
                   || (v->klen == 5 && ngx_memcmp(s->key, "delta", 5) == 0));
    v->after_string = v->usage_key || v->text_key;

    return p;
}


/*
 * Nothing pending: strings that cannot be "content", "usage" or "delta"
 * are passed over a block at a time, and the bytes between strings
 * (blanks, punctuation, numbers, SSE's "data:") do not matter.  The
 * skip stops at a text in the usual spelling, counted: see
 * ngx_http_llm_scan_texts().
 */

static ngx_inline u_char *
ngx_http_llm_scan_between(ngx_http_llm_scan_t *s,
    ngx_http_llm_scan_state_t *v, u_char *p, u_char *last, size_t rec)
{
    u_char    *q, *end;
    size_t     counted, n;
    unsigned   st;

    /*
     * a gap is recorded from a text's closing quote, end, or from p when
     * the last buffer ended in it (rec of its bytes are in s->gap)
     */

    end = rec ? p : NULL;

    for ( ;; ) {
        st = 0;
        counted = 0;
        q = (u_char *) ngx_http_llm_json_skip(p, last,
                                              &ngx_http_llm_scan_keys, &st,
                                              &counted);

        /* non-empty texts in the usual spelling, counted on the way */
        v->deltas += counted;

        if (!(st & NGX_HTTP_LLM_JSON_TEXT)) {
            break;
        }

        /*
         * what was read from the last text's end to this one's opening
         * quote, if nothing was counted on the way but this text
         */

        n = end ? (size_t) (q + 1 - end) : NGX_HTTP_LLM_GAP_LIMIT + 1;

        if (rec + n <= NGX_HTTP_LLM_GAP_LIMIT
            && counted == (size_t) (q[1] != '"') && s->gap && !s->replay
            && ngx_http_llm_scan_gap_room(s, rec + n))
        {
            ngx_memcpy(s->gap + rec, end, n);
            s->gap_len = rec + n;
            s->gap_value = 0;
            s->gap_value_end = 0;
        }

        rec = 0;

        end = ngx_http_llm_scan_texts(s, v, &q, last);

        if (end == NULL) {
            /* the usual reading takes the text from its opening quote */
            return q;
        }

        if (end == last) {
            return last;
        }

        p = end + 1;
    }

    /* the buffer ends in a gap: its bytes so far, for the next one */

    if (end && q == last && st == 0 && counted == 0
        && rec + (last - end) < NGX_HTTP_LLM_GAP_LIMIT && s->gap && !s->replay
        && ngx_http_llm_scan_gap_room(s, rec + (last - end)))
    {
        ngx_memcpy(s->gap + rec, end, last - end);
        s->gap_rec = rec + (last - end);
        s->gap_len = 0;
        return last;
    }

    if (st & NGX_HTTP_LLM_JSON_FOUND) {
        v->in_string = 1;
        v->value_chars = 0;
        v->klen = 0;
        return q + 1;
    }

    if (st & NGX_HTTP_LLM_JSON_INSIDE) {
        /* in a string that is none of them */
        v->in_string = 1;
        v->escaped = (st & NGX_HTTP_LLM_JSON_ESCAPED) != 0;
        v->klen = NGX_HTTP_LLM_KEY_MAX + 1;
        return q;
    }

    /* the last bytes, one string at a time */

    p = (u_char *) ngx_http_llm_json_special(q, last);

    if (p == last) {
        return last;
    }

    if (*p == '"') {
        v->in_string = 1;
        v->value_chars = 0;
        v->klen = 0;
    }

    return p + 1;
}


/*
 * Room for a gap of size bytes.  The gap's first buffer, kept after the
 * scanner's state, holds NGX_HTTP_LLM_GAP_MAX, enough for most streams;
 * a longer one (an Azure deployment whose content filter reports more
 * categories in every event) gets a buffer of NGX_HTTP_LLM_GAP_LIMIT,
 * made once, the first time it is needed, with what was recorded so far.
 */

static ngx_inline ngx_uint_t
ngx_http_llm_scan_gap_room(ngx_http_llm_scan_t *s, size_t size)
{
    u_char  *gap;

    if (size <= s->gap_size) {
        return 1;
    }

    gap = ngx_pnalloc(s->pool, NGX_HTTP_LLM_GAP_LIMIT);
    if (gap == NULL) {
        return 0;
    }

    ngx_memcpy(gap, s->gap, s->gap_size);

    s->gap = gap;
    s->gap_size = NGX_HTTP_LLM_GAP_LIMIT;

    return 1;
}


/*
 * A stream's events, from one text to the next, are mostly the same
 * bytes (the id, the model, the keys, "finish_reason": null): where
 * they are those of last time, the next text starts where it did then,
 * and the bytes between need not be read again.  The reading of bytes
 * the same as before, from the same state, outside a string, comes to
 * the same end: the next text's opening quote, with nothing wanted on
 * the way.  q is a counted text's opening quote; the return is the
 * closing quote of the last text of the run (the gap that follows it
 * is not that of last time); last, where the buffer ends in what may
 * be the same gap (s->gap_at: how much of it, for the next buffer to
 * go on with); or NULL, with *q the opening quote of a text the usual
 * reading is to take: one with an escape, one that goes on past the
 * buffer, or one that starts as a wanted key does, which the skip
 * would look at.  Bytes that differ from last time only inside string
 * values of their own come to the same end too, as
 * ngx_http_llm_scan_align() says.
 */

static ngx_http_llm_scan_inline u_char *
ngx_http_llm_scan_texts(ngx_http_llm_scan_t *s,
    ngx_http_llm_scan_state_t *v, u_char **q, u_char *last)
{
    u_char  *c;
    size_t   n, k, m, avail;

    for ( ;; ) {
        if (last - *q < 3
            || ngx_http_llm_json_skip_opens(*q, last - *q,
                                            &ngx_http_llm_scan_keys))
        {
            return NULL;
        }

        c = (u_char *) ngx_http_llm_json_special(*q + 1, last);

        if (c == last || *c != '"') {
            return NULL;
        }

        /* the same bytes to the next text's quote, and its first byte */

        n = s->gap_len;
        avail = last - c;

        if (n == 0) {
            return c;
        }

        if (avail > n && ngx_memcmp(c, s->gap, n) == 0) {
            v->deltas += (c[n] != '"');
            *q = c + n - 1;
            continue;
        }

        if (s->replay) {
            return c;
        }

        if (avail < n && ngx_memcmp(c, s->gap, avail) == 0) {
            k = avail;
            m = avail;

        } else {
            /* the same but for values of their own */

            k = ngx_http_llm_scan_align(s, c, avail, &m);

            if (k == 0) {
                return c;
            }
        }

        if (m < n) {
            /* the rest of the gap is yet to come */
            s->gap_at = m;
            return last;
        }

        if (k == avail) {
            /* the text's first byte is yet to come */
            return c;
        }

        v->deltas += (c[k] != '"');
        *q = c + k - 1;
    }
}


/*
 * The bytes at c (avail of them) against the gap where they differ in
 * string values only: a stream whose every event has a value of its own
 * (OpenAI's "obfuscation", random letters of random length that hide
 * the size of an event's text) is otherwise the same from one text to
 * the next.  A value is taken as the same where it is a string after a
 * colon and a key the scan does not look for, without an escape in
 * either, ends in this buffer, and starts, in both, unlike a key the
 * skip stops at: the reading of these bytes then comes to what that of
 * the gap did, nothing wanted on the way.  The return is how many bytes
 * at c match the gap's first *m: the whole gap (*m == s->gap_len), or
 * c's bytes run out first (the return is avail); 0 where they do not
 * match.
 */

static ngx_http_llm_scan_cold size_t
ngx_http_llm_scan_align(ngx_http_llm_scan_t *s, u_char *c, size_t avail,
    size_t *m)
{
    u_char      *gap, *q, *e;
    size_t       i, j, n, o, len, from;
    ngx_uint_t   values;

    gap = s->gap;
    n = s->gap_len;

    i = 0;
    j = 0;

    /* after the text's closing quote, outside any string */
    from = 1;
    values = 0;

    /*
     * the value the last event differed in: the same bytes to its
     * opening quote, and the rest compared from its closing quote
     */

    o = s->gap_value;

    if (o && avail > o + 2 && ngx_memcmp(c, gap, o + 1) == 0) {
        e = ngx_http_llm_scan_value_end(c, o, o + 1, avail);

        if (e) {
            i = e - c;
            j = s->gap_value_end;
            from = j + 1;
            values = 1;
        }
    }

    for ( /* void */ ; /* void */ ; values++) {
        len = ngx_min(avail - i, n - j);

        /* the caller compared from the start */

        if (values && ngx_memcmp(c + i, gap + j, len) == 0) {
            o = len;

        } else {
            o = ngx_http_llm_scan_same(c + i, gap + j, len);
        }

        i += o;
        j += o;

        if (j == n || i == avail) {
            *m = j;
            return i;
        }

        /*
         * where either byte is JSON's punctuation the two differ in
         * shape, not in a value's letters (a quote is where one of the
         * values ends first)
         */

        if (values == NGX_HTTP_LLM_GAP_VALUES
            || ngx_http_llm_scan_shape(gap[j])
            || ngx_http_llm_scan_shape(c[i]))
        {
            return 0;
        }

        /*
         * in a value of the gap, opened at o after a colon, closed at q:
         * most often the one the last event differed in
         */

        if (j > s->gap_value && j <= s->gap_value_end) {
            o = s->gap_value;
            q = gap + s->gap_value_end;

        } else {
            if (!ngx_http_llm_scan_in_value(gap, from, j, &o)) {
                return 0;
            }

            /*
             * the gap's value, as the one here, must not start as a key:
             * a read that ends after a value passed over, and a next
             * one that differs, replay the gap's value, not this one
             */

            q = ngx_http_llm_scan_value_end(gap, o, j, n);

            if (q == NULL) {
                return 0;
            }

            s->gap_value = o;
            s->gap_value_end = q - gap;
        }

        /* the value opens at the same place here: c's bytes match to j */

        e = ngx_http_llm_scan_value_end(c, i - (j - o), i, avail);

        if (e == NULL) {
            return 0;
        }

        i = e - c;
        j = q - gap;
        from = j + 1;
    }
}


/*
 * The closing quote of the value that opens at p[o], from p[at] on, of
 * len bytes; NULL where the value starts as a key the scanner looks for,
 * has an escape, or goes on past len
 */

static ngx_inline u_char *
ngx_http_llm_scan_value_end(u_char *p, size_t o, size_t at, size_t len)
{
    u_char  *q;

    if (len - o < 3
        || ngx_http_llm_json_skip_opens(p + o, len - o,
                                        &ngx_http_llm_scan_keys))
    {
        return NULL;
    }

    q = (u_char *) ngx_http_llm_json_special(p + at, p + len);

    return (q < p + len && *q == '"') ? q : NULL;
}


/*
 * Whether byte j of the gap is in a string value of its own: the quotes
 * from "from" (outside any string) to j, without a backslash, are odd in
 * number, the last of them, *o, follows a colon, and the key before the
 * colon is none the scanner looks for (the value of "content" or
 * "delta" is a text, empty in the gap maybe, but counted where it is
 * not)
 */

static ngx_uint_t
ngx_http_llm_scan_in_value(u_char *gap, size_t from, size_t j, size_t *o)
{
    size_t    k, at, key;
    unsigned  odd, quotes, slash, bits;
#if (defined __SSE2__ && defined __GNUC__)
    __m128i   b;
#endif

    odd = 0;
    at = 0;
    k = from;

#if (defined __SSE2__ && defined __GNUC__)

    /* 16 bytes at a time; the last block ends at j, over the one before */

    while (k < j && j >= 16) {
        bits = 16;

        if (j - k < 16) {
            bits = j - k;
            k = j - 16;
        }

        b = _mm_loadu_si128((const __m128i *) (gap + k));
        quotes = (unsigned) _mm_movemask_epi8(
                                _mm_cmpeq_epi8(b, _mm_set1_epi8('"')));
        slash = (unsigned) _mm_movemask_epi8(
                                _mm_cmpeq_epi8(b, _mm_set1_epi8('\\')));

        /* only the bits not read in the block before */

        quotes = (quotes >> (16 - bits)) << (16 - bits);
        slash = (slash >> (16 - bits)) << (16 - bits);

        if (slash) {
            return 0;
        }

        if (quotes) {
            odd ^= __builtin_parity(quotes);
            at = k + 31 - __builtin_clz(quotes);
        }

        k += 16;
    }

#endif

    for ( /* void */ ; k < j; k++) {
        if (gap[k] == '\\') {
            return 0;
        }

        if (gap[k] == '"') {
            odd ^= 1;
            at = k;
        }
    }

    if (!odd || at < 2) {
        return 0;
    }

    /* the key's closing quote, right before the colon */

    if (gap[at - 1] == ':') {
        key = at - 2;

    } else if (at >= 3 && gap[at - 1] == ' ' && gap[at - 2] == ':') {
        key = at - 3;

    } else {
        return 0;
    }

    /* a wanted key of either length may close there */

    if (gap[key] != '"'
        || (key >= 6
            && ngx_http_llm_json_skip_opens(gap + key - 6, 7,
                                            &ngx_http_llm_scan_keys))
        || (key >= 8
            && ngx_http_llm_json_skip_opens(gap + key - 8, 9,
                                            &ngx_http_llm_scan_keys)))
    {
        return 0;
    }

    *o = at;

    return 1;
}


/* how many bytes at a and b are the same, of len */

static ngx_inline size_t
ngx_http_llm_scan_same(u_char *a, u_char *b, size_t len)
{
    size_t    i;
#if (defined __SSE2__ && defined __GNUC__)
    unsigned  same;
#endif

    i = 0;

#if (defined __SSE2__ && defined __GNUC__)

    while (len - i >= 16) {
        same = (unsigned) _mm_movemask_epi8(_mm_cmpeq_epi8(
                   _mm_loadu_si128((const __m128i *) (a + i)),
                   _mm_loadu_si128((const __m128i *) (b + i))));

        if (same != 0xffff) {
            return i + __builtin_ctz(~same);
        }

        i += 16;
    }

#endif

    while (i < len && a[i] == b[i]) {
        i++;
    }

    return i;
}


/*
 * A buffer after one that ended in what may be the same gap as last
 * time: where it goes on with the gap and the next text's first byte,
 * the text's opening quote, with *text set; where it goes on with the
 * gap only, last; where it does not, the gap's bytes that came before
 * are read as the usual reading would have read them (nothing wanted
 * is among them), and then this buffer from its start.
 */

static u_char *
ngx_http_llm_scan_resume(ngx_http_llm_scan_t *s, u_char *p, u_char *last,
    ngx_log_t *log, ngx_uint_t *text)
{
    size_t  m, n, k;

    m = s->gap_at;
    n = s->gap_len;

    if (p == last) {
        return last;
    }

    s->gap_at = 0;

    k = ngx_min((size_t) (last - p), n - m);

    if (ngx_memcmp(p, s->gap + m, k) == 0) {

        if (m + k < n) {
            s->gap_at = m + k;
            return last;
        }

        if (p + k < last) {
            s->state.deltas += (p[k] != '"');
            *text = 1;
            return p + k - 1;
        }
    }

    /* after the closing quote, outside any string */

    s->replay = 1;
    ngx_http_llm_scan(s, s->gap + 1, s->gap + m, log);
    s->replay = 0;

    return p;
}


/* after "usage", "content" or "delta": is it a key, and what value */

static ngx_inline u_char *
ngx_http_llm_scan_after_key(ngx_http_llm_scan_t *s,
    ngx_http_llm_scan_state_t *v, u_char *p, u_char *last, ngx_log_t *log)
{
    u_char  *q;

    switch (*p++) {

    case ' ': case '\t': case '\r': case '\n':
        break;

    case '"':
        v->value_of_text = v->after_colon && v->text_key;
        v->in_string = 1;
        v->value_chars = 0;
        v->klen = 0;
        v->after_colon = 0;
        v->after_string = 0;
        break;

    case ':':
        v->after_colon = v->after_string;
        v->after_string = 0;
        break;

    case '{':
        if (v->after_colon && v->usage_key) {
            q = ngx_http_llm_scan_walk(s, p - 1, last, log);

            if (q) {
                p = q;

            } else {
                s->depth = 1;
                s->len = 0;
                s->overflow = 0;
                s->in_string = 0;
                s->escaped = 0;

                p = ngx_http_llm_scan_usage(s, p - 1, p, last, log);
            }
        }

        v->after_colon = 0;
        v->after_string = 0;
        break;

    default:
        v->after_colon = 0;
        v->after_string = 0;
    }

    return p;
}


/*
 * A usage object of the usual spelling that ends in this buffer, walked
 * where it is without first finding its end: the byte after it, or NULL
 * to leave it to ngx_http_llm_scan_usage() (split, longer than the
 * bound, or spelled otherwise)
 */

static u_char *
ngx_http_llm_scan_walk(ngx_http_llm_scan_t *s, u_char *p, u_char *last,
    ngx_log_t *log)
{
    u_char      *q;
    ngx_uint_t   n[NGX_HTTP_LLM_U_LAST];

    if (!s->walk) {
        return NULL;
    }

    q = ngx_http_llm_walk_usage(p, last, n);

    if (q == NULL || q - p > NGX_HTTP_LLM_USAGE_MAX) {
        return NULL;
    }

    ngx_http_llm_usage_set(s, n, log);

    return q;
}


/*
 * Inside the usage object: only its depth and strings matter, kept in
 * locals.  The object's bytes in this buffer start at start (its '{'
 * when it opens here) and are read from p.  An object that ends in the
 * buffer it opened in is read where it is; one split across buffers is
 * copied, piece by piece.  Returns where the object ended, or last.
 */

static u_char *
ngx_http_llm_scan_usage(ngx_http_llm_scan_t *s, u_char *start, u_char *p,
    u_char *last, ngx_log_t *log)
{
    u_char      ch, *q;
    size_t      n;
    unsigned    in_string, escaped;
    ngx_uint_t  depth;

    depth = s->depth;
    in_string = s->in_string;
    escaped = s->escaped;

    while (p < last) {

        if (in_string) {
            if (escaped) {
                escaped = 0;
                p++;
                continue;
            }

            q = (u_char *) ngx_http_llm_json_special(p, last);

            if (q == last) {
                p = last;
                break;
            }

            p = q + 1;

            if (*q == '\\') {
                escaped = 1;

            } else {
                in_string = 0;
            }

            continue;
        }

        ch = *p++;

        if (ch == '"') {
            in_string = 1;

        } else if (ch == '{' || ch == '[') {
            depth++;

        } else if ((ch == '}' || ch == ']') && --depth == 0) {
            break;
        }
    }

    s->depth = depth;
    s->in_string = in_string;
    s->escaped = escaped;

    /*
     * an object that opened in this buffer was offered to the walk
     * already (ngx_http_llm_scan_walk()): the tree reads it
     */

    if (depth == 0 && s->len == 0) {
        ngx_http_llm_usage_parse(s, start, p - start, 0, log);
        return p;
    }

    if (s->buf == NULL && !s->overflow) {
        s->buf = ngx_pnalloc(s->pool, NGX_HTTP_LLM_USAGE_MAX);

        if (s->buf == NULL) {
            /* the allocation's failure is logged: the object is lost */
            s->overflow = 1;
        }
    }

    n = ngx_min((size_t) (p - start), NGX_HTTP_LLM_USAGE_MAX - s->len);

    if (n < (size_t) (p - start) || s->buf == NULL) {
        s->overflow = 1;

    } else {
        s->len = ngx_cpymem(s->buf + s->len, start, n) - s->buf;
    }

    if (depth == 0) {
        ngx_http_llm_usage_parse(s, s->buf, s->len, s->walk, log);
    }

    return p;
}


static void
ngx_http_llm_usage_parse(ngx_http_llm_scan_t *s, u_char *start, size_t len,
    ngx_uint_t walk, ngx_log_t *log)
{
    cJSON       *obj;
    size_t       at;
    ngx_str_t    text;
    ngx_uint_t   i, n[NGX_HTTP_LLM_U_LAST];

    if (s->overflow && s->buf == NULL) {
        /* lost to an allocation that failed, and said so */
        return;
    }

    /* the same bound wherever the object is read */

    if (s->overflow || len > NGX_HTTP_LLM_USAGE_MAX) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "llm: usage object longer than %d bytes ignored",
                      NGX_HTTP_LLM_USAGE_MAX);
        return;
    }

    text.data = start;
    text.len = len;

    /* the usual object is walked; the tree reads anything else */

    if (!walk
        || ngx_http_llm_walk_usage(text.data, text.data + text.len, n)
           != text.data + text.len)
    {

        if (ngx_http_llm_json_parse(&text, &obj, &at, log) != NGX_OK) {
            ngx_log_error(NGX_LOG_WARN, log, 0,
                          "llm: malformed usage object in the reply");
            ngx_http_llm_json_done(text.len);
            return;
        }

        for (i = 0; i < NGX_HTTP_LLM_U_LAST; i++) {
            n[i] = ngx_http_llm_usage_number(obj, i);
        }

        ngx_http_llm_json_done(text.len);
    }

    ngx_http_llm_usage_set(s, n, log);
}


/*
 * A JSON reply that came whole in one buffer: its usage object, which
 * backends send last, is found from the end and walked where it lies
 * instead of scanning the reply from the start.  In JSON a quote that is
 * not escaped starts or ends a string, so "usage" between two of them is
 * a string, and a key if a colon follows.  When the reply has one such
 * key and its value is an object, that object is the one the scanner
 * would take.  NGX_DECLINED (no such key or more than one, a value the
 * walk declines or without counts): the reply is scanned.
 */

ngx_int_t
ngx_http_llm_scan_whole(ngx_http_llm_scan_t *s, u_char *start, u_char *last,
    ngx_log_t *log)
{
    u_char      *p, *q, *b, *o, *usage;
    ngx_uint_t   n[NGX_HTTP_LLM_U_LAST];

    if (!s->walk) {
        return NGX_DECLINED;
    }

    usage = NULL;

    for (p = last; /* void */; p = q) {

        /* the closing quote of a "usage" before p */

        q = ngx_http_llm_last_usage(start + 6, p);

        if (q == NULL) {
            break;
        }

        if (q[-6] != '"' || ngx_memcmp(q - 5, "usage", 5) != 0) {
            continue;
        }

        /* its opening quote is not escaped: an even run of backslashes */

        for (b = q - 6; b > start && b[-1] == '\\'; b--) {
            /* void */
        }

        if ((q - 6 - b) & 1) {
            continue;
        }

        /* a key if a colon follows */

        o = q + 1;

        while (o < last && (*o == ' ' || *o == '\t' || *o == '\r'
                            || *o == '\n'))
        {
            o++;
        }

        if (o == last || *o++ != ':') {
            continue;
        }

        /*
         * a second key "usage" (the scanner would take the last object
         * not inside another) is left to the scanner
         */

        if (usage) {
            return NGX_DECLINED;
        }

        while (o < last && (*o == ' ' || *o == '\t' || *o == '\r'
                            || *o == '\n'))
        {
            o++;
        }

        if (o == last || *o != '{') {
            return NGX_DECLINED;
        }

        usage = o;
        q -= 6;
    }

    if (usage == NULL) {
        return NGX_DECLINED;
    }

    p = ngx_http_llm_walk_usage(usage, last, n);

    if (p == NULL || p - usage > NGX_HTTP_LLM_USAGE_MAX
        || (n[NGX_HTTP_LLM_U_PROMPT] == (ngx_uint_t) -1
            && n[NGX_HTTP_LLM_U_INPUT] == (ngx_uint_t) -1))
    {
        return NGX_DECLINED;
    }

    ngx_http_llm_usage_set(s, n, log);

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, log, 0,
                   "llm usage: read from the end");

    s->whole = 1;

    return NGX_OK;
}


/*
 * The last quote in [start, p) that follows "ge", or NULL: candidates
 * for the end of "usage", found sixteen at a time (start is 6 bytes in)
 */

static u_char *
ngx_http_llm_last_usage(u_char *start, u_char *p)
{
#if (defined __SSE2__ && defined __GNUC__)

    unsigned  hit;
    __m128i   q, e, g;

    q = _mm_set1_epi8('"');
    e = _mm_set1_epi8('e');
    g = _mm_set1_epi8('g');

    while (p - start >= 16) {
        hit = (unsigned) _mm_movemask_epi8(_mm_and_si128(
                  _mm_cmpeq_epi8(_mm_loadu_si128((__m128i *) (p - 16)), q),
                  _mm_and_si128(
                  _mm_cmpeq_epi8(_mm_loadu_si128((__m128i *) (p - 17)), e),
                  _mm_cmpeq_epi8(_mm_loadu_si128((__m128i *) (p - 18)),
                                 g))));

        if (hit) {
            return p - 16 + (31 - __builtin_clz(hit));
        }

        p -= 16;
    }

#endif

    while (p > start) {
        p--;

        if (p[0] == '"' && p[-1] == 'e' && p[-2] == 'g') {
            return p;
        }
    }

    return NULL;
}


static void
ngx_http_llm_usage_set(ngx_http_llm_scan_t *s, ngx_uint_t *n, ngx_log_t *log)
{
    /* chat, completions and embeddings; else the Responses API's names */

    if (n[NGX_HTTP_LLM_U_PROMPT] != (ngx_uint_t) -1) {
        s->prompt = n[NGX_HTTP_LLM_U_PROMPT];
        s->completion = n[NGX_HTTP_LLM_U_COMPLETION];
        s->cached = n[NGX_HTTP_LLM_U_PROMPT_CACHED];
        s->reasoning = n[NGX_HTTP_LLM_U_COMPLETION_REASONING];

    } else {
        s->prompt = n[NGX_HTTP_LLM_U_INPUT];
        s->completion = n[NGX_HTTP_LLM_U_OUTPUT];
        s->cached = n[NGX_HTTP_LLM_U_INPUT_CACHED];
        s->reasoning = n[NGX_HTTP_LLM_U_OUTPUT_REASONING];
    }

    s->total = n[NGX_HTTP_LLM_U_TOTAL];

    if (s->prompt == (ngx_uint_t) -1) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "llm: usage object without prompt or input tokens");
        return;
    }

    if (s->completion == (ngx_uint_t) -1) {
        /* embeddings */
        s->completion = 0;
    }

    if (s->total == (ngx_uint_t) -1) {
        s->total = s->prompt + s->completion;
    }

    if (s->cached == (ngx_uint_t) -1) {
        s->cached = 0;
    }

    if (s->reasoning == (ngx_uint_t) -1) {
        s->reasoning = 0;
    }

    s->found = 1;
}


/* a count of the usage object, (ngx_uint_t) -1 if absent or not one */

static ngx_uint_t
ngx_http_llm_usage_number(cJSON *obj, ngx_uint_t i)
{
    cJSON                      *item;
    ngx_http_llm_usage_name_t  *name;

    name = &ngx_http_llm_usage_names[i];

    if (name->details.len) {
        obj = cJSON_GetObjectItemCaseSensitive(obj,
                                         (const char *) name->details.data);
    }

    item = cJSON_GetObjectItemCaseSensitive(obj,
                                            (const char *) name->name.data);

    if (!cJSON_IsNumber(item) || !(item->valuedouble >= 0)
        || item->valuedouble > NGX_HTTP_LLM_MAX_TOKENS)
    {
        return (ngx_uint_t) -1;
    }

    return (ngx_uint_t) item->valuedouble;
}


/* the usage of the reply: 1 reported by the backend, 2 counted, 0 none */

ngx_int_t
ngx_http_llm_usage_of(ngx_http_llm_ctx_t *ctx, ngx_http_llm_scan_t *out)
{
    ngx_http_llm_scan_t  *s;

    s = ctx->scan;

    if (s == NULL) {
        return 0;
    }

    if (s->found) {
        out->prompt = s->prompt;
        out->completion = s->completion;
        out->total = s->total;
        out->cached = s->cached;
        out->reasoning = s->reasoning;
        return 1;
    }

    /*
     * a stream that ended without usage (none asked for, or cut): one
     * token a text delta, as Azure sends them, and our own prompt count
     */

    if (ctx->sse && s->state.deltas) {
        out->prompt = ctx->prompt_tokens;
        out->completion = s->state.deltas;
        out->total = out->prompt + out->completion;
        out->cached = 0;
        out->reasoning = 0;
        return 2;
    }

    return 0;
}
