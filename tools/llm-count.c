
/*
 * Copyright (C) nginx-llm-router authors
 *
 * llm-count: counts tokens as the nginx module does, from the same source.
 *
 *   llm-count --encoding o200k_base|cl100k_base [--vocab FILE]
 *             [--chat | --hex-lines] [--bench N] [--info]
 *   llm-count --encoding o200k_base|cl100k_base --estimate
 *
 * Reads stdin: text, or with --chat a chat-completion body (an object
 * with "messages", or the array itself), or with --hex-lines one string
 * per line in hex (so tests can pass any bytes) and prints a count per line.
 * Tests choose the merge a piece takes with --small-max N (longer pieces
 * leave the arrays on the stack) and --bucket-min N (pieces of N bytes or
 * more take the lists by rank).
 */


#define _POSIX_C_SOURCE  200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cjson/cJSON.h>

#include "ngx_http_llm_tokenizer.h"


/* OpenAI cookbook, "How to count tokens with tiktoken" */
#define NGX_HTTP_LLM_COUNT_PER_MESSAGE  3
#define NGX_HTTP_LLM_COUNT_PER_NAME     1
#define NGX_HTTP_LLM_COUNT_REPLY        3


typedef struct {
    const char             *encoding;
    const char             *vocab;
    unsigned                chat;
    unsigned                hex;
    unsigned                info;
    unsigned                estimate;
    long                    bench;
    long                    small_max;
    long                    bucket_min;
} ngx_http_llm_count_opts_t;


static void ngx_http_llm_count_usage(void);
static char *ngx_http_llm_count_find_vocab(const char *argv0,
    const char *encoding);
static unsigned char *ngx_http_llm_count_read(FILE *f, size_t *len);
static size_t ngx_http_llm_count_chat(const ngx_http_llm_vocab_t *vocab,
    ngx_http_llm_tok_ws_t *ws, const cJSON *root);
static size_t ngx_http_llm_count_string(const ngx_http_llm_vocab_t *vocab,
    ngx_http_llm_tok_ws_t *ws, const char *s);
static int ngx_http_llm_count_hex_lines(const ngx_http_llm_vocab_t *vocab,
    ngx_http_llm_tok_ws_t *ws, unsigned char *in, size_t len);
static double ngx_http_llm_count_now(void);


int
main(int argc, char **argv)
{
    int                         i, r, rc;
    char                        err[256], *path;
    cJSON                      *root;
    size_t                      len, count, c;
    double                      t0, t1, secs;
    unsigned char              *in;
    ngx_http_llm_vocab_t       *vocab;
    ngx_http_llm_tok_ws_t       ws;
    ngx_http_llm_count_opts_t   o;

    memset(&o, 0, sizeof(o));
    o.small_max = -1;
    o.bucket_min = -1;

    for (i = 1; i < argc; i++) {

        if (strcmp(argv[i], "--encoding") == 0 && i + 1 < argc) {
            o.encoding = argv[++i];

        } else if (strcmp(argv[i], "--vocab") == 0 && i + 1 < argc) {
            o.vocab = argv[++i];

        } else if (strcmp(argv[i], "--chat") == 0) {
            o.chat = 1;

        } else if (strcmp(argv[i], "--hex-lines") == 0) {
            o.hex = 1;

        } else if (strcmp(argv[i], "--estimate") == 0) {
            o.estimate = 1;

        } else if (strcmp(argv[i], "--info") == 0) {
            o.info = 1;

        } else if (strcmp(argv[i], "--bench") == 0 && i + 1 < argc) {
            o.bench = atol(argv[++i]);

        } else if (strcmp(argv[i], "--small-max") == 0 && i + 1 < argc) {
            o.small_max = atol(argv[++i]);

        } else if (strcmp(argv[i], "--bucket-min") == 0 && i + 1 < argc) {
            o.bucket_min = atol(argv[++i]);

        } else {
            ngx_http_llm_count_usage();
            return 2;
        }
    }

    if (o.encoding == NULL && o.vocab == NULL) {
        ngx_http_llm_count_usage();
        return 2;
    }

    if (o.encoding
        && strcmp(o.encoding, "o200k_base") != 0
        && strcmp(o.encoding, "cl100k_base") != 0)
    {
        fprintf(stderr, "llm-count: unknown encoding \"%s\"\n", o.encoding);
        return 2;
    }

    if (o.estimate) {
        /* no vocabulary: the script-aware guess of "llm_count estimate" */

        if (o.encoding == NULL || o.chat || o.hex) {
            ngx_http_llm_count_usage();
            return 2;
        }

        in = ngx_http_llm_count_read(stdin, &len);
        if (in == NULL) {
            fprintf(stderr, "llm-count: cannot read stdin\n");
            return 1;
        }

        count = ngx_http_llm_estimate_weight(
                    strcmp(o.encoding, "cl100k_base") == 0
                    ? NGX_HTTP_LLM_ENC_CL100K : NGX_HTTP_LLM_ENC_O200K,
                    in, len, &c);
        count = (count + NGX_HTTP_LLM_WEIGHT_UNIT - 1)
                / NGX_HTTP_LLM_WEIGHT_UNIT;

        printf("%zu\n", count);
        free(in);

        return 0;
    }

    path = o.vocab ? strdup(o.vocab)
                   : ngx_http_llm_count_find_vocab(argv[0], o.encoding);
    if (path == NULL) {
        fprintf(stderr, "llm-count: no vocabulary file for \"%s\" found; "
                "run build/tokenizer.sh or pass --vocab\n", o.encoding);
        return 1;
    }

    vocab = ngx_http_llm_vocab_load(path, err, sizeof(err));
    if (vocab == NULL) {
        fprintf(stderr, "llm-count: %s\n", err);
        free(path);
        return 1;
    }

    if (o.encoding && strcmp(o.encoding, ngx_http_llm_vocab_name(vocab)) != 0)
    {
        fprintf(stderr, "llm-count: \"%s\" is %s, not %s\n",
                path, ngx_http_llm_vocab_name(vocab), o.encoding);
        ngx_http_llm_vocab_free(vocab);
        free(path);
        return 1;
    }

    if (o.info) {
        fprintf(stderr, "vocab: %s\nencoding: %s\ntokens: %zu\n"
                "memory: %zu bytes\nload: %.1f ms\n",
                path, ngx_http_llm_vocab_name(vocab),
                ngx_http_llm_vocab_tokens(vocab),
                ngx_http_llm_vocab_memory(vocab),
                ngx_http_llm_vocab_load_msec(vocab));
    }

    free(path);

    ngx_http_llm_tok_ws_init(&ws, NULL, NULL, NULL);

    if (o.small_max >= 0) {
        ws.small_max = (size_t) o.small_max;
    }

    if (o.bucket_min >= 0) {
        ws.bucket_min = (size_t) o.bucket_min;
    }

    in = ngx_http_llm_count_read(stdin, &len);
    if (in == NULL) {
        fprintf(stderr, "llm-count: cannot read stdin\n");
        return 1;
    }

    rc = 0;
    root = NULL;

    if (o.hex) {
        rc = ngx_http_llm_count_hex_lines(vocab, &ws, in, len);
        goto done;
    }

    if (o.chat) {
        root = cJSON_ParseWithLength((const char *) in, len);
        if (root == NULL) {
            fprintf(stderr, "llm-count: stdin is not valid JSON\n");
            rc = 1;
            goto done;
        }

        count = ngx_http_llm_count_chat(vocab, &ws, root);

    } else {
        count = ngx_http_llm_count_tokens(vocab, &ws, in, len);
    }

    if (count == NGX_HTTP_LLM_TOKENS_ERROR) {
        fprintf(stderr, "llm-count: out of memory\n");
        rc = 1;
        goto done;
    }

    printf("%zu\n", count);

    if (o.info) {
        /* what the workspace keeps after the count */
        fprintf(stderr, "workspace: %zu bytes\n",
                ngx_http_llm_tok_ws_memory(&ws));
    }

    if (o.bench > 0) {

        /*
         * The fastest of 5 rounds of N runs: the machines we measure on
         * are shared, and the slower rounds measure the neighbours.
         */

        secs = 1e30;

        for (r = 0; r < 5; r++) {
            t0 = ngx_http_llm_count_now();

            for (i = 0; i < o.bench; i++) {
                c = o.chat ? ngx_http_llm_count_chat(vocab, &ws, root)
                           : ngx_http_llm_count_tokens(vocab, &ws, in, len);
                if (c != count) {
                    fprintf(stderr, "llm-count: count changed: %zu\n", c);
                    rc = 1;
                    goto done;
                }
            }

            t1 = ngx_http_llm_count_now();

            if (t1 - t0 < secs) {
                secs = t1 - t0;
            }
        }

        printf("bench: %ld runs of %zu bytes, %zu tokens: %.1f MB/s, "
               "%.0f ns per run, %.1f ns per KB\n",
               o.bench, len, count,
               (double) len * o.bench / secs / 1e6,
               secs * 1e9 / o.bench,
               secs * 1e9 / o.bench / ((double) len / 1024));
    }

done:

    if (root) {
        cJSON_Delete(root);
    }

    free(in);
    ngx_http_llm_tok_ws_cleanup(&ws);
    ngx_http_llm_vocab_free(vocab);

    return rc;
}


static void
ngx_http_llm_count_usage(void)
{
    fprintf(stderr,
            "usage: llm-count --encoding o200k_base|cl100k_base "
            "[--vocab FILE]\n"
            "                 [--chat | --hex-lines] [--bench N] [--info]\n"
            "       llm-count --encoding o200k_base|cl100k_base "
            "--estimate\n");
}


/*
 * $LLM_VOCAB_DIR, the npm tree build/tokenizer.sh installs (beside the
 * binary in .build/, or under the current directory), then the path the
 * packaged module uses.
 */

static char *
ngx_http_llm_count_find_vocab(const char *argv0, const char *encoding)
{
    int          i;
    char         buf[4096], dir[4096], *slash;
    const char  *env, *prefix[4], *middle[4];

    env = getenv("LLM_VOCAB_DIR");

    snprintf(dir, sizeof(dir), "%s", argv0);
    slash = strrchr(dir, '/');
    if (slash) {
        *slash = '\0';

    } else {
        snprintf(dir, sizeof(dir), ".");
    }

    /*
     * each candidate is prefix, middle, encoding, ".json": no positional
     * printf arguments, which _FORTIFY_SOURCE refuses when one is unused
     */

    prefix[0] = env;
    middle[0] = "/";
    prefix[1] = dir;
    middle[1] = "/npm/node_modules/tiktoken/encoders/";
    prefix[2] = ".build";
    middle[2] = "/npm/node_modules/tiktoken/encoders/";
    prefix[3] = "/usr/share/nginx-llm";
    middle[3] = "/";

    for (i = 0; i < 4; i++) {
        if (prefix[i] == NULL) {
            continue;
        }

        snprintf(buf, sizeof(buf), "%s%s%s.json", prefix[i], middle[i],
                 encoding);

        if (access(buf, R_OK) == 0) {
            return strdup(buf);
        }
    }

    return NULL;
}


static unsigned char *
ngx_http_llm_count_read(FILE *f, size_t *len)
{
    size_t          n, size;
    unsigned char  *buf, *p;

    size = 65536;
    n = 0;

    buf = malloc(size + 1);
    if (buf == NULL) {
        return NULL;
    }

    for ( ;; ) {
        n += fread(buf + n, 1, size - n, f);

        if (n < size) {
            break;
        }

        size *= 2;

        p = realloc(buf, size + 1);
        if (p == NULL) {
            free(buf);
            return NULL;
        }

        buf = p;
    }

    if (ferror(f)) {
        free(buf);
        return NULL;
    }

    buf[n] = '\0';
    *len = n;

    return buf;
}


/*
 * The cookbook's recipe: 3 per message, the tokens of every string
 * value (role and name too), 1 more with "name", 3 to prime the reply.
 * Content given as parts counts the text of its text parts; other parts
 * (images, audio) are for the module's own rules, not counted here.
 */

static size_t
ngx_http_llm_count_chat(const ngx_http_llm_vocab_t *vocab,
    ngx_http_llm_tok_ws_t *ws, const cJSON *root)
{
    size_t        total, n;
    const cJSON  *messages, *msg, *item, *part, *text;

    messages = cJSON_IsArray(root)
               ? root : cJSON_GetObjectItemCaseSensitive(root, "messages");

    if (!cJSON_IsArray(messages)) {
        return 0;
    }

    total = 0;

    cJSON_ArrayForEach(msg, messages) {
        total += NGX_HTTP_LLM_COUNT_PER_MESSAGE;

        cJSON_ArrayForEach(item, msg) {

            if (cJSON_IsString(item)) {
                n = ngx_http_llm_count_string(vocab, ws, item->valuestring);
                if (n == NGX_HTTP_LLM_TOKENS_ERROR) {
                    return n;
                }

                total += n;

                if (item->string && strcmp(item->string, "name") == 0) {
                    total += NGX_HTTP_LLM_COUNT_PER_NAME;
                }

                continue;
            }

            if (!cJSON_IsArray(item) || item->string == NULL
                || strcmp(item->string, "content") != 0)
            {
                continue;
            }

            cJSON_ArrayForEach(part, item) {
                text = cJSON_GetObjectItemCaseSensitive(part, "text");

                if (!cJSON_IsString(text)) {
                    continue;
                }

                n = ngx_http_llm_count_string(vocab, ws, text->valuestring);
                if (n == NGX_HTTP_LLM_TOKENS_ERROR) {
                    return n;
                }

                total += n;
            }
        }
    }

    return total + NGX_HTTP_LLM_COUNT_REPLY;
}


static size_t
ngx_http_llm_count_string(const ngx_http_llm_vocab_t *vocab,
    ngx_http_llm_tok_ws_t *ws, const char *s)
{
    return ngx_http_llm_count_tokens(vocab, ws, (const unsigned char *) s,
                                     strlen(s));
}


static int
ngx_http_llm_count_hex_lines(const ngx_http_llm_vocab_t *vocab,
    ngx_http_llm_tok_ws_t *ws, unsigned char *in, size_t len)
{
    int             hi, lo;
    size_t          i, n, count;
    unsigned char  *p, *end, *eol, *out;

    end = in + len;

    for (p = in; p < end; p = eol + 1) {

        eol = memchr(p, '\n', end - p);
        if (eol == NULL) {
            eol = end;
        }

        /* decode in place: the bytes are never longer than their hex */
        out = p;
        n = (eol - p) / 2;

        for (i = 0; i < n; i++) {
            hi = p[2 * i];
            lo = p[2 * i + 1];
            hi = hi <= '9' ? hi - '0' : (hi | 0x20) - 'a' + 10;
            lo = lo <= '9' ? lo - '0' : (lo | 0x20) - 'a' + 10;
            out[i] = (unsigned char) (hi << 4 | lo);
        }

        count = ngx_http_llm_count_tokens(vocab, ws, out, n);
        if (count == NGX_HTTP_LLM_TOKENS_ERROR) {
            fprintf(stderr, "llm-count: out of memory\n");
            return 1;
        }

        printf("%zu\n", count);

        if (eol == end) {
            break;
        }
    }

    return 0;
}


static double
ngx_http_llm_count_now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return ts.tv_sec + ts.tv_nsec / 1e9;
}
