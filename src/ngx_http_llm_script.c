
/*
 * Copyright (C) nginx-llm-router authors
 */


/*
 * The "estimate" count: tokens guessed from the scripts a text is
 * written in, for users who prefer speed to an exact count.  Characters
 * / 4 is fair for English and 3-3.5x low for Japanese (AOAI_FACTS.md
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
 *   tab, line feed                        20           20
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


/* the low 32 bits hold the weights of up to 64 MB (60 a byte at most) */
#define NGX_HTTP_LLM_SCRIPT_BLOCK  (64 * 1024 * 1024)


static void ngx_http_llm_script_init(void);
static size_t ngx_http_llm_ascii_weight(
    const ngx_http_llm_script_weights_t *sw, const unsigned char *p,
    size_t len, uint64_t *sum);
#if (defined __SSE2__ && defined __GNUC__)
static size_t ngx_http_llm_lanes(__m128i v);
#endif


size_t
ngx_http_llm_estimate_weight(ngx_http_llm_encoding_e enc,
    const unsigned char *text, size_t len, size_t *chars)
{
    size_t                                i, k, n, w, end;
    uint64_t                              sum;
    const uint64_t                       *weight;
    const ngx_http_llm_script_weights_t  *sw;

    if (!ngx_http_llm_weight_ready) {
        ngx_http_llm_script_init();
    }

    weight = ngx_http_llm_weight[enc == NGX_HTTP_LLM_ENC_CL100K];
    sw = &ngx_http_llm_script_weights[enc == NGX_HTTP_LLM_ENC_CL100K];

    n = 0;
    w = 0;

    for (i = 0; i < len; /* void */) {
        end = (len - i > NGX_HTTP_LLM_SCRIPT_BLOCK)
              ? i + NGX_HTTP_LLM_SCRIPT_BLOCK : len;
        sum = 0;

        while (i + 4 <= end) {

            /* runs of ASCII, most of an English prompt, by classes */

            if (end - i >= 16 && text[i] < 0x80) {
                k = ngx_http_llm_ascii_weight(sw, text + i, end - i, &sum);

                if (k) {
                    i += k;
                    continue;
                }
            }

            sum += weight[text[i]] + weight[text[i + 1]]
                   + weight[text[i + 2]] + weight[text[i + 3]];
            i += 4;
        }

        for ( /* void */ ; i < end; i++) {
            sum += weight[text[i]];
        }

        n += (size_t) (sum >> 32);
        w += (size_t) (sum & 0xffffffff);
    }

    if (chars) {
        *chars = n;
    }

    return w;
}


/*
 * Sixteen ASCII bytes at a time: a lane of each class counter goes up by
 * one for each of its bytes (a compare gives -1), the lanes are added
 * up at the end; punctuation is what is left.  Stops at the first block
 * with a byte of 0x80 or more, and adds to sum what the table would
 * have added.  Returns the bytes read: a multiple of 16, at least 16 if
 * the first block is ASCII.
 */

static size_t
ngx_http_llm_ascii_weight(const ngx_http_llm_script_weights_t *sw,
    const unsigned char *p, size_t len, uint64_t *sum)
{
#if (defined __SSE2__ && defined __GNUC__)

    size_t   i, blocks, letters, digits, spaces, lines;
    __m128i  b, x, zero, letter, digit, space, line, t;

    zero = _mm_setzero_si128();
    letter = zero;
    digit = zero;
    space = zero;
    line = zero;
    blocks = 0;

    /* at most 255 blocks: a lane counts to 255 */

    for (i = 0; i + 16 <= len && blocks < 255; i += 16) {
        b = _mm_loadu_si128((const __m128i *) (p + i));

        if (_mm_movemask_epi8(b)) {
            break;
        }

        /*
         * a range test in one signed compare: x - lo + 0x80 is below
         * -0x80 + (hi - lo + 1) exactly for lo <= x <= hi
         */

        x = _mm_add_epi8(_mm_or_si128(b, _mm_set1_epi8(0x20)),
                         _mm_set1_epi8((char) (0x80 - 'a')));
        letter = _mm_sub_epi8(letter,
                     _mm_cmplt_epi8(x, _mm_set1_epi8((char) (0x80 + 26))));

        x = _mm_add_epi8(b, _mm_set1_epi8((char) (0x80 - '0')));
        digit = _mm_sub_epi8(digit,
                    _mm_cmplt_epi8(x, _mm_set1_epi8((char) (0x80 + 10))));

        space = _mm_sub_epi8(space, _mm_cmpeq_epi8(b, _mm_set1_epi8(' ')));

        t = _mm_or_si128(_mm_cmpeq_epi8(b, _mm_set1_epi8('\n')),
                         _mm_cmpeq_epi8(b, _mm_set1_epi8('\t')));
        t = _mm_or_si128(t, _mm_cmpeq_epi8(b, _mm_set1_epi8('\r')));
        line = _mm_sub_epi8(line, t);

        blocks++;
    }

    if (blocks == 0) {
        return 0;
    }

    letters = ngx_http_llm_lanes(letter);
    digits = ngx_http_llm_lanes(digit);
    spaces = ngx_http_llm_lanes(space);
    lines = ngx_http_llm_lanes(line);

    *sum += ((uint64_t) (blocks * 16) << 32)
            + letters * sw->letter + digits * sw->digit
            + spaces * sw->space + lines * sw->line
            + (blocks * 16 - letters - digits - spaces - lines) * sw->punct;

    return blocks * 16;

#else

    (void) sw;
    (void) p;
    (void) len;
    (void) sum;

    return 0;

#endif
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
                       : (c == '\t' || c == '\n' || c == '\r') ? sw->line
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
