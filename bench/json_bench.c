
/*
 * Copyright (C) nginx-llm-router authors
 */


/*
 * Reads one file N times with our JSON reader (allocating from a bump
 * arena, as the module's pool does) or with cJSON (malloc and free):
 * bench/json.sh runs it under callgrind and on the clock.
 *
 *   json-bench reader|cjson FILE N
 */


#define _POSIX_C_SOURCE  200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "ngx_http_llm_json_reader.h"


static char    *arena;
static size_t   arena_used, arena_size;


static void *
arena_alloc(void *data, size_t size)
{
    void  *p;

    (void) data;

    size = (size + 7) & ~(size_t) 7;

    if (arena_used + size > arena_size) {
        return NULL;
    }

    p = arena + arena_used;
    arena_used += size;

    return p;
}


int
main(int argc, char **argv)
{
    int              reader;
    long             i, n;
    FILE            *f;
    cJSON           *root;
    size_t           len;
    double           ns, best;
    unsigned char   *text;
    struct timespec  t0, t1;

    if (argc != 4) {
        fprintf(stderr, "usage: json-bench reader|cjson FILE N\n");
        return 2;
    }

    reader = (strcmp(argv[1], "reader") == 0);
    n = atol(argv[3]);

    f = fopen(argv[2], "rb");
    if (f == NULL) {
        perror(argv[2]);
        return 2;
    }

    fseek(f, 0, SEEK_END);
    len = ftell(f);
    rewind(f);

    text = malloc(len);
    arena_size = 16 * len + 65536;
    arena = malloc(arena_size);

    if (text == NULL || arena == NULL || fread(text, 1, len, f) != len) {
        perror(argv[2]);
        return 2;
    }

    best = 0;

    for (i = 0; i < n; i++) {
        clock_gettime(CLOCK_MONOTONIC, &t0);

        if (reader) {
            arena_used = 0;

            if (ngx_http_llm_json_read(text, len, &root, arena_alloc, NULL)
                != NGX_HTTP_LLM_JSON_READ)
            {
                fprintf(stderr, "json-bench: declined\n");
                return 1;
            }

        } else {
            root = cJSON_ParseWithLengthOpts((const char *) text, len,
                                             NULL, 0);
            if (root == NULL) {
                fprintf(stderr, "json-bench: cJSON failed\n");
                return 1;
            }

            cJSON_Delete(root);
        }

        clock_gettime(CLOCK_MONOTONIC, &t1);

        ns = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);

        if (i == 0 || ns < best) {
            best = ns;
        }
    }

    printf("%zu bytes, fastest %.0f ns, %.0f MB/s\n", len, best,
           len / best * 1e3);

    return 0;
}
