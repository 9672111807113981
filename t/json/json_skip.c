
/*
 * Copyright (C) nginx-llm-router authors
 */


/*
 * The reply scanner's skip (src/ngx_http_llm_json_skip.h) against the
 * byte-by-byte reading it stands for: over the same text, cut into the
 * same pieces, both must find the same strings that may be keys, count
 * the same texts and end in the same state.
 *
 * Built as a libFuzzer target (build/json.sh --fuzz SECS), or with a
 * main() that makes its own texts (build/json.sh; t/usage_stream.t):
 *
 *   json-skip N [SEED]    N texts of streamed-reply-like JSON, each cut
 *                         at random; prints "ok N" or the first text
 *                         that differs, and exits 1
 *   json-skip --bench FILE ROUNDS
 *                         the skip over a file's bytes, for callgrind
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ngx_http_llm_json_skip.h"


#define MAX_FOUND  65536


static const ngx_http_llm_json_keys_t  keys = {
    "cousde", { 8, 6, 6 }, 3,
    { "\"delta\":{", "\"usage\":null" },
    { sizeof("\"delta\":{") - 1, sizeof("\"usage\":null") - 1 },
    "\"content\":\"", sizeof("\"content\":\"") - 1
};


/* the byte-by-byte reading over the whole text */

static size_t
reference(const unsigned char *text, size_t len, size_t *found,
    unsigned *state, size_t *counted)
{
    size_t  i, n;

    n = 0;
    *state = 0;
    *counted = 0;

    for (i = 0; i < len; i++) {
        if (ngx_http_llm_json_skip_byte(text + i, text + len, &keys, state,
                                        counted)
            && n < MAX_FOUND)
        {
            found[n++] = i;
        }
    }

    return n;
}


/*
 * the skip over the text cut at the given places, finishing each piece
 * byte by byte as the scanner does; a key's bytes may lie beyond its
 * piece, as the scanner reads them in the next one
 */

static size_t
skipped(const unsigned char *text, size_t len, const size_t *cuts,
    size_t ncuts, size_t *found, unsigned *state, size_t *counted)
{
    size_t                i, n, from, to;
    const unsigned char  *p, *end;

    n = 0;
    *state = 0;
    *counted = 0;

    for (i = 0; i <= ncuts; i++) {
        from = i ? cuts[i - 1] : 0;
        to = i < ncuts ? cuts[i] : len;

        p = text + from;
        end = text + to;

        while (p < end) {
            p = ngx_http_llm_json_skip(p, end, &keys, state, counted);

            if (*state & NGX_HTTP_LLM_JSON_FOUND) {
                if (n < MAX_FOUND) {
                    found[n++] = p - text;
                }

                *state = NGX_HTTP_LLM_JSON_INSIDE;
                p++;
                continue;
            }

            /* a counted text's opening quote: the reading goes on there */

            if (*state & NGX_HTTP_LLM_JSON_TEXT) {
                *state = 0;
                continue;
            }

            for ( /* void */ ; p < end; p++) {
                if (ngx_http_llm_json_skip_byte(p, text + len, &keys, state,
                                                counted)
                    && n < MAX_FOUND)
                {
                    found[n++] = p - text;
                }
            }
        }
    }

    return n;
}


static int
same(const unsigned char *text, size_t len, const size_t *cuts,
    size_t ncuts)
{
    size_t    n1, n2, c1, c2;
    unsigned  s1, s2;

    static size_t  f1[MAX_FOUND], f2[MAX_FOUND];

    n1 = reference(text, len, f1, &s1, &c1);
    n2 = skipped(text, len, cuts, ncuts, f2, &s2, &c2);

    return n1 == n2 && s1 == s2 && c1 == c2
           && memcmp(f1, f2, n1 * sizeof(size_t)) == 0;
}


#ifdef NGX_HTTP_LLM_FUZZ

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);


/* the first byte says where to cut: every (byte + 1) bytes */

int
LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    size_t          ncuts, step, at;
    unsigned char  *text;

    static size_t   cuts[4096];

    if (size < 1) {
        return 0;
    }

    step = (size_t) data[0] + 1;
    text = malloc(size - 1);
    memcpy(text, data + 1, size - 1);

    ncuts = 0;

    for (at = step; at < size - 1 && ncuts < 4096; at += step) {
        cuts[ncuts++] = at;
    }

    if (!same(text, size - 1, cuts, ncuts)) {
        abort();
    }

    free(text);

    return 0;
}

#else


/*
 * pieces a streamed reply is made of, and some that trouble a reader
 * (strings that start as a wanted key does, but are of another key's
 * length); those with a backslash last, as a text without one takes the
 * skip's fast path
 */

static const char  *pieces[] = {
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",",
    "\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,",
    "\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n",
    "\"usage\":{\"prompt_tokens\":9}", "\"content\": \"\"", "\"delta\":\"x\"",
    "\"co\"", "\"cousin\"", "\"us\"", "\"", "\"\"", "\"content\"", "\"usage\"",
    "\"delta\"", "{", "}", ":", ",", " ", "\n", "data: [DONE]\n\n",
    "\xe6\xbc\xa2", "\"text\":\"", "0123456789abcdef", "\"cou\"", "\"usa\"",
    "\"content\":\"\"", "\"delta\":{}", "\"content\":\"", "\"delta\":",
    "\"usage\":null", "\"usage\":nul", "null}",
    "\"service_tier\":\"default\"", "\"conte\"", "\"usage_x\"",
    "\"deltas\"",

    "\"de\\\"x\"", "\\\"content\\\"", "\\\\\"", "\\\\", "\\",
    "\"a\\u0022b\"", "\"\\\\\"usage\\\"\"", "\"\\n\\n\\t\""
};

#define CLEAN  37


static unsigned long  seed;


static unsigned
next(unsigned n)
{
    seed = seed * 6364136223846793005UL + 1442695040888963407UL;

    return (unsigned) ((seed >> 33) % n);
}


static int
cmp(const void *a, const void *b)
{
    size_t  x = *(const size_t *) a, y = *(const size_t *) b;

    return (x > y) - (x < y);
}


static int
bench(const char *file, long rounds)
{
    long            r;
    size_t          len, n, counted;
    unsigned        state;
    FILE           *f;
    unsigned char  *text;

    static size_t   found[MAX_FOUND];

    f = fopen(file, "rb");

    if (f == NULL) {
        perror(file);
        return 2;
    }

    text = malloc(1 << 24);
    len = fread(text, 1, 1 << 24, f);
    fclose(f);

    n = 0;

    for (r = 0; r < rounds; r++) {
        n += skipped(text, len, NULL, 0, found, &state, &counted);
    }

    printf("%zu bytes, %zu found\n", len, n / (size_t) rounds);
    free(text);

    return 0;
}


int
main(int argc, char **argv)
{
    long            runs, run;
    size_t          len, k, ncuts;
    unsigned        clean;
    const char     *s;
    unsigned char  *text;

    static size_t   cuts[256];

    if (argc == 4 && strcmp(argv[1], "--bench") == 0) {
        return bench(argv[2], atol(argv[3]));
    }

    if (argc < 2) {
        fprintf(stderr, "usage: json-skip N [SEED] | --bench FILE ROUNDS\n");
        return 2;
    }

    runs = atol(argv[1]);
    seed = argc > 2 ? strtoul(argv[2], NULL, 10) : 1;
    text = malloc(1 << 16);

    for (run = 0; run < runs; run++) {
        len = 0;

        clean = next(2);

        while (len < 4096) {
            s = pieces[next(clean ? CLEAN
                                  : sizeof(pieces) / sizeof(pieces[0]))];
            memcpy(text + len, s, strlen(s));
            len += strlen(s);
        }

        len -= next(64);
        ncuts = next(8) ? next(40) : 0;

        for (k = 0; k < ncuts; k++) {
            cuts[k] = next((unsigned) len);
        }

        /* in order, as the reads of a reply come */

        qsort(cuts, ncuts, sizeof(size_t), cmp);

        if (!same(text, len, cuts, ncuts)) {
            printf("differs at run %ld (%zu bytes, %zu cuts)\n", run, len,
                   ncuts);
            return 1;
        }
    }

    printf("ok %ld\n", runs);
    free(text);

    return 0;
}

#endif
