
/*
 * Copyright (C) nginx-llm-router authors
 *
 * libFuzzer target: the split patterns and the three merge paths on
 * arbitrary bytes, for both vocabularies, under ASan and UBSan.  The
 * array merge, the heap merge and the lists by rank must agree; nothing
 * may read out of bounds.
 *
 *   build/tokenizer.sh --fuzz SECONDS
 *
 * Vocabularies come from $LLM_VOCAB_DIR (o200k_base.json, cl100k_base.json).
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_http_llm_tokenizer.h"


static ngx_http_llm_vocab_t   *ngx_http_llm_fuzz_vocab[2];
static ngx_http_llm_tok_ws_t   ngx_http_llm_fuzz_ws;
static ngx_http_llm_tok_ws_t   ngx_http_llm_fuzz_heap_ws;
static ngx_http_llm_tok_ws_t   ngx_http_llm_fuzz_lists_ws;


int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    int          i;
    char         path[4096], err[256];
    const char  *dir, *name[2] = { "o200k_base", "cl100k_base" };

    (void) argc;
    (void) argv;

    dir = getenv("LLM_VOCAB_DIR");
    if (dir == NULL) {
        dir = ".build/npm/node_modules/tiktoken/encoders";
    }

    for (i = 0; i < 2; i++) {
        snprintf(path, sizeof(path), "%s/%s.json", dir, name[i]);

        ngx_http_llm_fuzz_vocab[i] = ngx_http_llm_vocab_load(path, err,
                                                             sizeof(err));
        if (ngx_http_llm_fuzz_vocab[i] == NULL) {
            fprintf(stderr, "fuzz: %s\n", err);
            exit(1);
        }
    }

    ngx_http_llm_tok_ws_init(&ngx_http_llm_fuzz_ws, NULL, NULL, NULL);
    ngx_http_llm_tok_ws_init(&ngx_http_llm_fuzz_heap_ws, NULL, NULL, NULL);
    ngx_http_llm_fuzz_heap_ws.small_max = 0;
    ngx_http_llm_fuzz_heap_ws.bucket_min = (size_t) -1;
    ngx_http_llm_tok_ws_init(&ngx_http_llm_fuzz_lists_ws, NULL, NULL, NULL);
    ngx_http_llm_fuzz_lists_ws.small_max = 0;
    ngx_http_llm_fuzz_lists_ws.bucket_min = 2;

    return 0;
}


int
LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    int                    i, j;
    size_t                 a, b, w, chars, rw, rchars, piece, gw, gchars;
    unsigned char         *copy;
    const unsigned char   *q, *s;
    ngx_http_llm_guess_t   g;

    /* an exact-size copy, so ASan sees any read past the end */
    copy = malloc(size ? size : 1);
    if (copy == NULL) {
        return 0;
    }

    memcpy(copy, data, size);

    for (i = 0; i < 2; i++) {
        a = ngx_http_llm_count_tokens(ngx_http_llm_fuzz_vocab[i],
                                      &ngx_http_llm_fuzz_ws, copy, size);
        b = ngx_http_llm_count_tokens(ngx_http_llm_fuzz_vocab[i],
                                      &ngx_http_llm_fuzz_heap_ws, copy, size);
        w = ngx_http_llm_count_tokens(ngx_http_llm_fuzz_vocab[i],
                                      &ngx_http_llm_fuzz_lists_ws, copy, size);

        if (a != b || a != w || a > size * 3) {
            fprintf(stderr, "fuzz: counts %zu, %zu and %zu for %zu bytes\n",
                    a, b, w, size);
            abort();
        }

        /* the guess: at most 3 tokens a byte, a character a lead byte */

        w = ngx_http_llm_estimate_weight(i ? NGX_HTTP_LLM_ENC_CL100K
                                           : NGX_HTTP_LLM_ENC_O200K,
                                         copy, size, &chars);

        if (w > size * 3 * NGX_HTTP_LLM_WEIGHT_UNIT || chars > size) {
            fprintf(stderr, "fuzz: guess %zu, %zu chars for %zu bytes\n",
                    w, chars, size);
            abort();
        }

        /*
         * weights add up byte by byte: pieces shorter than 16 bytes,
         * which the table alone weighs, add up to the 16-byte path's sum
         */

        rw = 0;
        rchars = 0;

        for (a = 0; a < size; a += 15) {
            b = (size - a < 15) ? size - a : 15;
            rw += ngx_http_llm_estimate_weight(i ? NGX_HTTP_LLM_ENC_CL100K
                                                 : NGX_HTTP_LLM_ENC_O200K,
                                               copy + a, b, &piece);
            rchars += piece;
        }

        if (rw != w || rchars != chars) {
            fprintf(stderr, "fuzz: guess %zu/%zu, by pieces %zu/%zu\n",
                    w, chars, rw, rchars);
            abort();
        }

        /*
         * a JSON string's guess stops at its first quote, backslash or
         * NUL byte and weighs what comes before as the table does; two
         * strings in a row add up
         */

        for (s = copy; s < copy + size; s++) {
            if (*s == '"' || *s == '\\' || *s == '\0') {
                break;
            }
        }

        ngx_http_llm_guess_init(&g, i ? NGX_HTTP_LLM_ENC_CL100K
                                      : NGX_HTTP_LLM_ENC_O200K);
        q = ngx_http_llm_guess_json(&g, copy, copy + size);

        if (q != s) {
            fprintf(stderr, "fuzz: guess stopped at %zu, not %zu\n",
                    (size_t) (q - copy), (size_t) (s - copy));
            abort();
        }

        if (q < copy + size) {
            (void) ngx_http_llm_guess_json(&g, q + 1, copy + size);
        }

        gw = ngx_http_llm_guess_done(&g, &gchars);

        /* the reference: the table alone, in pieces of 15 bytes */

        rw = 0;
        rchars = 0;
        s = copy;

        for (j = 0; j < 2; j++) {
            for (q = s; q < copy + size; q++) {
                if (*q == '"' || *q == '\\' || *q == '\0') {
                    break;
                }
            }

            for (a = 0; a < (size_t) (q - s); a += 15) {
                b = ((size_t) (q - s) - a < 15) ? (size_t) (q - s) - a : 15;
                rw += ngx_http_llm_estimate_weight(
                          i ? NGX_HTTP_LLM_ENC_CL100K
                            : NGX_HTTP_LLM_ENC_O200K,
                          s + a, b, &piece);
                rchars += piece;
            }

            if (q == copy + size) {
                break;
            }

            s = q + 1;
        }

        if (rw != gw || rchars != gchars) {
            fprintf(stderr, "fuzz: json guess %zu/%zu, by the table %zu/%zu\n",
                    gw, gchars, rw, rchars);
            abort();
        }
    }

    free(copy);

    return 0;
}
