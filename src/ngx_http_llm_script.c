
/*
 * Copyright (C) nginx-llm-router authors
 */


/*
 * The "estimate" count: tokens guessed from the scripts a text is
 * written in, for users who prefer speed to an exact count.  Characters
 * / 4 is fair for English and 3-3.5x low for Japanese (docs/azure.md
 * section 7); a character's script is told well enough by the lead byte
 * of its UTF-8 sequence, so each byte carries a weight in 1/20 of a
 * token (NGX_HTTP_LLM_WEIGHT_UNIT), one table per encoding.  Weights of
 * the strings of a body add up before they are rounded once.  Plain C99
 * without nginx headers, like the tokenizer, so llm-count can print it
 * next to the exact count.
 */


#include <string.h>
#if (defined __SSE2__ && defined __GNUC__)
#include <emmintrin.h>
#endif

#include "ngx_http_llm_tokenizer.h"


/*
 * Weights in 1/20 of a token, measured with the exact tokenizer on prose
 * of each script (t/tokenizer/corpus and t/tokenizer/script) and rounded:
 *
 *                                      o200k_base  cl100k_base
 *   ASCII letters                          5            5
 *   ASCII digits (split in threes)         7            8
 *   space (it joins the next word)         0            2
 *   tab, line feed, control bytes         20           20
 *   ASCII punctuation                     12           10
 *   accented Latin (C2-CA)                 5           10
 *   Greek, combining marks (CB-CF)         7           20
 *   Cyrillic (D0-D4)                       4            9
 *   Hebrew, Arabic, ... (D5-DF)            6           16
 *   Indic, Thai, ... (E0-E1)               7           22
 *   punctuation, symbols (E2)             16           20
 *   kana, CJK, full-width forms           16           22
 *     (E3-E9, EE-EF)
 *   Hangul (EA-ED)                        18           30
 *   4 bytes: emoji, rare CJK              40           60
 *
 * Continuation bytes (10xxxxxx) weigh nothing.
 */

typedef struct {
    uint8_t   letter;
    uint8_t   digit;
    uint8_t   space;
    uint8_t   line;
    uint8_t   punct;
    uint8_t   latin;
    uint8_t   greek;
    uint8_t   cyrillic;
    uint8_t   semitic;
    uint8_t   indic;
    uint8_t   symbol;
    uint8_t   cjk;
    uint8_t   hangul;
    uint8_t   astral;
} ngx_http_llm_script_weights_t;


static const ngx_http_llm_script_weights_t  ngx_http_llm_script_weights[2] = {
    { 5, 7, 0, 20, 12, 5, 7, 4, 6, 7, 16, 16, 18, 40 },    /* o200k_base */
    { 5, 8, 2, 20, 10, 10, 20, 9, 16, 22, 20, 22, 30, 60 }  /* cl100k_base */
};


/*
 * A weight per byte, one table per encoding, made on first use; bit 32
 * is set for a byte that starts a character, so one addition a byte
 * counts both
 */
static uint64_t  ngx_http_llm_weight[2][256];
static int       ngx_http_llm_weight_ready;


#define NGX_HTTP_LLM_SCRIPT_BLOCK  (64 * 1024 * 1024)


/* each caller gets its own loop, with json a constant */
#if (defined __GNUC__)
#define ngx_http_llm_weigh_inline  inline __attribute__((always_inline))
#else
#define ngx_http_llm_weigh_inline  inline
#endif


static void ngx_http_llm_script_init(void);
static ngx_http_llm_weigh_inline const unsigned char *ngx_http_llm_weigh(
    ngx_http_llm_guess_t *g, const unsigned char *p,
    const unsigned char *end, int json);
static ngx_http_llm_weigh_inline const unsigned char *ngx_http_llm_weigh_bytes(
    ngx_http_llm_guess_t *g, const unsigned char *p,
    const unsigned char *end, int json);
#if (defined __SSE2__ && defined __GNUC__)
static size_t ngx_http_llm_lanes(__m128i v);
#endif


size_t
ngx_http_llm_estimate_weight(ngx_http_llm_encoding_e enc,
    const unsigned char *text, size_t len, size_t *chars)
{
    ngx_http_llm_guess_t  g;

    ngx_http_llm_guess_init(&g, enc);

    (void) ngx_http_llm_weigh(&g, text, text + len, 0);

    return ngx_http_llm_guess_done(&g, chars);
}


/* the tables, made before threads may guess at once */

void
ngx_http_llm_guess_prepare(void)
{
    if (!ngx_http_llm_weight_ready) {
        ngx_http_llm_script_init();
    }
}


void
ngx_http_llm_guess_init(ngx_http_llm_guess_t *g, ngx_http_llm_encoding_e enc)
{
    if (!ngx_http_llm_weight_ready) {
        ngx_http_llm_script_init();
    }

    memset(g, 0, sizeof(ngx_http_llm_guess_t));
    g->table = ngx_http_llm_weight[enc == NGX_HTTP_LLM_ENC_CL100K];
    g->class_weight =
               &ngx_http_llm_script_weights[enc == NGX_HTTP_LLM_ENC_CL100K];
}


const unsigned char *
ngx_http_llm_guess_json(ngx_http_llm_guess_t *g, const unsigned char *p,
    const unsigned char *end)
{
    return ngx_http_llm_weigh(g, p, end, 1);
}


size_t
ngx_http_llm_guess_done(ngx_http_llm_guess_t *g, size_t *chars)
{
    const ngx_http_llm_script_weights_t  *sw;

    sw = g->class_weight;

    if (chars) {
        *chars = g->chars + g->ascii;
    }

    return g->weight
           + g->letters * sw->letter + g->digits * sw->digit
           + g->spaces * sw->space + g->lines * sw->line
           + (g->ascii - g->letters - g->digits - g->spaces - g->lines)
             * sw->punct;
}


#if (defined __SSE2__ && defined __GNUC__)

/*
 * A lane of each class counter goes up by one for each of its bytes (a
 * compare gives -1).  A range test is one signed compare:
 * x - lo + 0x80 is below -0x80 + (hi - lo + 1) exactly for lo <= x <= hi.
 * The control bytes (below 0x20) are the line class: tab, line feed and
 * carriage return are all of them a text usually has.  The macros work
 * on the locals of ngx_http_llm_weigh(): letter, digit, space, line and
 * the constant json.
 */

#define ngx_http_llm_classify(b)                                             \
    letter = _mm_sub_epi8(letter, _mm_cmplt_epi8(                            \
        _mm_add_epi8(_mm_or_si128(b, _mm_set1_epi8(0x20)),                   \
                     _mm_set1_epi8((char) (0x80 - 'a'))),                    \
        _mm_set1_epi8((char) (0x80 + 26))));                                 \
    digit = _mm_sub_epi8(digit, _mm_cmplt_epi8(                              \
        _mm_add_epi8(b, _mm_set1_epi8((char) (0x80 - '0'))),                 \
        _mm_set1_epi8((char) (0x80 + 10))));                                 \
    space = _mm_sub_epi8(space, _mm_cmpeq_epi8(b, _mm_set1_epi8(' ')));      \
    if (!json) {                                                             \
        line = _mm_sub_epi8(line, _mm_cmplt_epi8(b, _mm_set1_epi8(0x20)));   \
    }

/*
 * the bytes of a block that end or interrupt a JSON string's plain
 * ASCII text: a backslash, and in one signed compare a quote, a control
 * byte or a byte of 0x80 or more; flipping bit 1 takes the quote (0x22)
 * to 0x20 and keeps every other byte on its side of 0x21
 */

#define ngx_http_llm_unusual(b)                                              \
    _mm_or_si128(_mm_cmpeq_epi8(b, _mm_set1_epi8('\\')),                    \
                 _mm_cmplt_epi8(_mm_xor_si128(b, _mm_set1_epi8(0x02)),        \
                                _mm_set1_epi8(0x21)))

/* 16 - k bytes from here keep the first k lanes of a block */

static const unsigned char  ngx_http_llm_keep[32] = {
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
};

/* the sixteen lanes summed into g and cleared */

#define ngx_http_llm_classified(g)                                           \
    (g)->letters += ngx_http_llm_lanes(letter);                              \
    (g)->digits += ngx_http_llm_lanes(digit);                                \
    (g)->spaces += ngx_http_llm_lanes(space);                                \
    if (!json) {                                                             \
        (g)->lines += ngx_http_llm_lanes(line);                              \
    }                                                                        \
    letter = _mm_setzero_si128();                                            \
    digit = letter;                                                          \
    space = letter;                                                          \
    line = letter

#endif


/*
 * Weighs the text from p to end or, with json set (a constant, so that
 * each caller has its loop), up to its first '"', '\\' or NUL byte, the
 * bytes a JSON string's scan stops at; returns where it stopped.  Runs
 * of sixteen ASCII bytes, most of an English prompt, are counted by
 * classes; the rest goes through the table.
 */

static ngx_http_llm_weigh_inline const unsigned char *
ngx_http_llm_weigh(ngx_http_llm_guess_t *g, const unsigned char *p,
    const unsigned char *end, int json)
{
#if (defined __SSE2__ && defined __GNUC__)

    unsigned  odd, stop, k;
    size_t    blocks;
    __m128i   b, c, s, letter, digit, space, line, keep;

    letter = _mm_setzero_si128();
    digit = letter;
    space = letter;
    line = letter;
    blocks = 0;

    /*
     * two blocks a turn while both are plain ASCII text: one test and
     * one turn's counting for 32 bytes; the block where the text ends or
     * changes goes on one at a time
     */

    while (end - p >= 32) {
        b = _mm_loadu_si128((const __m128i *) p);
        c = _mm_loadu_si128((const __m128i *) (p + 16));

        if (json) {
            odd = (unsigned) _mm_movemask_epi8(ngx_http_llm_unusual(b))
                  | (unsigned) _mm_movemask_epi8(ngx_http_llm_unusual(c));

        } else {
            odd = (unsigned) _mm_movemask_epi8(_mm_or_si128(b, c));
        }

        if (odd) {
            break;
        }

        ngx_http_llm_classify(b);
        ngx_http_llm_classify(c);
        p += 32;

        /* a lane counts to 255 */

        blocks += 2;

        if (blocks >= 254) {
            g->ascii += blocks * 16;
            blocks = 0;
            ngx_http_llm_classified(g);
        }
    }

    while (end - p >= 16) {
        b = _mm_loadu_si128((const __m128i *) p);

        if (json) {
            /* such a block takes the slower way */
            odd = (unsigned) _mm_movemask_epi8(ngx_http_llm_unusual(b));

        } else {
            odd = (unsigned) _mm_movemask_epi8(b);
        }

        if (odd == 0) {
            ngx_http_llm_classify(b);
            p += 16;

            /* a lane counts to 255 */

            if (++blocks == 255) {
                g->ascii += blocks * 16;
                blocks = 0;
                ngx_http_llm_classified(g);
            }

            continue;
        }

        if (json) {
            /* where the string's scan would stop: '"', '\\' or NUL */
            s = _mm_or_si128(_mm_or_si128(
                                 _mm_cmpeq_epi8(b, _mm_set1_epi8('"')),
                                 _mm_cmpeq_epi8(b, _mm_set1_epi8('\\'))),
                             _mm_cmpeq_epi8(b, _mm_setzero_si128()));
            stop = (unsigned) _mm_movemask_epi8(s);

        } else {
            stop = 0;
        }

        if (stop == 0) {
            p = ngx_http_llm_weigh_bytes(g, p, p + 16, 0);
            continue;
        }

        /* the string ends in this block */

        k = (unsigned) __builtin_ctz(stop);

        if (odd & ((1u << k) - 1)) {
            p = ngx_http_llm_weigh_bytes(g, p, p + k, 0);
            break;
        }

        /*
         * all ASCII text before k; lanes from k on become punctuation,
         * which is not counted
         */

        keep = _mm_loadu_si128((const __m128i *)
                               &ngx_http_llm_keep[16 - k]);
        b = _mm_or_si128(_mm_and_si128(keep, b),
                         _mm_andnot_si128(keep, _mm_set1_epi8('!')));

        ngx_http_llm_classify(b);
        g->ascii += k;
        p += k;
        break;
    }

    g->ascii += blocks * 16;
    ngx_http_llm_classified(g);

    if (end - p < 16) {
        p = ngx_http_llm_weigh_bytes(g, p, end, json);
    }

    return p;

#else

    return ngx_http_llm_weigh_bytes(g, p, end, json);

#endif
}


/*
 * Byte by byte, with the table.  The low 32 bits of sum hold the weights
 * of 64 MB (60 a byte at most): a longer text is summed in pieces.
 */

static ngx_http_llm_weigh_inline const unsigned char *
ngx_http_llm_weigh_bytes(ngx_http_llm_guess_t *g, const unsigned char *p,
    const unsigned char *end, int json)
{
    uint64_t              sum;
    const uint64_t       *table;
    const unsigned char  *last;

    table = g->table;

    do {
        last = (end - p > NGX_HTTP_LLM_SCRIPT_BLOCK)
               ? p + NGX_HTTP_LLM_SCRIPT_BLOCK : end;
        sum = 0;

        if (!json) {
            /* four at a time, which compilers leave unvectorized */

            for ( /* void */ ; last - p >= 4; p += 4) {
                sum += table[p[0]] + table[p[1]] + table[p[2]]
                       + table[p[3]];
            }
        }

        for ( /* void */ ; p < last; p++) {

            if (json && (*p == '"' || *p == '\\' || *p == '\0')) {
                end = p;
                break;
            }

            sum += table[*p];
        }

        g->chars += (size_t) (sum >> 32);
        g->weight += (size_t) (sum & 0xffffffff);

    } while (p < end);

    return p;
}


#if (defined __SSE2__ && defined __GNUC__)

/* the sum of the sixteen byte lanes */

static size_t
ngx_http_llm_lanes(__m128i v)
{
    __m128i  s;

    s = _mm_sad_epu8(v, _mm_setzero_si128());

    return (size_t) _mm_cvtsi128_si32(s)
           + (size_t) _mm_cvtsi128_si32(_mm_srli_si128(s, 8));
}

#endif


static void
ngx_http_llm_script_init(void)
{
    int                                   e, c;
    uint64_t                             *t;
    const ngx_http_llm_script_weights_t  *sw;

    for (e = 0; e < 2; e++) {
        t = ngx_http_llm_weight[e];
        sw = &ngx_http_llm_script_weights[e];

        for (c = 0; c < 256; c++) {

            if (c < 0x80) {
                t[c] = ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') ? sw->letter
                       : (c >= '0' && c <= '9') ? sw->digit
                       : (c == ' ') ? sw->space
                       : (c < 0x20) ? sw->line
                       : sw->punct;

            } else if (c < 0xc0) {
                t[c] = 0;

            } else if (c < 0xe0) {
                t[c] = (c <= 0xca) ? sw->latin
                       : (c <= 0xcf) ? sw->greek
                       : (c <= 0xd4) ? sw->cyrillic
                       : sw->semitic;

            } else if (c < 0xf0) {
                t[c] = (c <= 0xe1) ? sw->indic
                       : (c == 0xe2) ? sw->symbol
                       : (c >= 0xea && c <= 0xed) ? sw->hangul
                       : sw->cjk;

            } else {
                t[c] = sw->astral;
            }

            if ((c & 0xc0) != 0x80) {
                t[c] |= (uint64_t) 1 << 32;
            }
        }
    }

    ngx_http_llm_weight_ready = 1;
}
