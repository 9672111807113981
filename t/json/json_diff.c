
/*
 * Copyright (C) nginx-llm-router authors
 */


/*
 * Our JSON reader against cJSON: wherever the reader does not decline,
 * its tree must be cJSON's, node for node and byte for byte.
 *
 * Built as a libFuzzer target (build/json.sh --fuzz SECS), or with a
 * main() that reads files (build/json.sh; t/json_reader.t):
 *
 *   json-diff FILE...   prints "read", "declined" or "MISMATCH" and the
 *                       name of each; exits 1 on any mismatch
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ngx_http_llm_json_reader.h"


typedef struct arena_s  arena_t;

struct arena_s {
    arena_t  *next;
    size_t    used;
    size_t    size;
    /* the memory follows, aligned as malloc() aligns */
};


static arena_t  *arena;


static void *
arena_alloc(void *data, size_t size)
{
    arena_t  *a;
    size_t    n;
    char     *p;

    (void) data;

    size = (size + 15) & ~(size_t) 15;
    a = arena;

    if (a == NULL || a->size - a->used < size) {
        n = size > 4096 ? size : 4096;
        a = malloc(sizeof(arena_t) + 16 + n);
        if (a == NULL) {
            return NULL;
        }

        a->next = arena;
        a->used = 0;
        a->size = n;
        arena = a;
    }

    p = (char *) a + ((sizeof(arena_t) + 15) & ~(size_t) 15) + a->used;
    a->used += size;

    return p;
}


static void
arena_free(void)
{
    arena_t  *a;

    while (arena) {
        a = arena->next;
        free(arena);
        arena = a;
    }
}


/* the links: next and prev, and the first child's prev is the last */

static int
linked(const cJSON *head)
{
    const cJSON  *c, *last;

    if (head == NULL) {
        return 1;
    }

    last = head;

    for (c = head; c->next; c = c->next) {
        if (c->next->prev != c) {
            return 0;
        }

        last = c->next;
    }

    return head->prev == last;
}


static int
same(const cJSON *a, const cJSON *b)
{
    for ( ; a && b; a = a->next, b = b->next) {
        if (a->type != b->type
            || a->valueint != b->valueint
            || memcmp(&a->valuedouble, &b->valuedouble, sizeof(double))
            || (a->valuestring == NULL) != (b->valuestring == NULL)
            || (a->valuestring && strcmp(a->valuestring, b->valuestring))
            || (a->string == NULL) != (b->string == NULL)
            || (a->string && strcmp(a->string, b->string))
            || !linked(a->child) || !linked(b->child)
            || !same(a->child, b->child))
        {
            return 0;
        }
    }

    return a == NULL && b == NULL;
}


/* 0 read and the same, 1 declined, 2 mismatch */

static int
compare(const unsigned char *data, size_t size)
{
    int     rc, result;
    cJSON  *ours, *theirs;

    ours = NULL;
    rc = ngx_http_llm_json_read(data, size, &ours, arena_alloc, NULL);

    if (rc == NGX_HTTP_LLM_JSON_NOMEM) {
        abort();
    }

    theirs = cJSON_ParseWithLengthOpts((const char *) data, size, NULL, 0);

    if (rc == NGX_HTTP_LLM_JSON_DECLINED) {
        result = 1;

    } else if (theirs == NULL || ours->prev || ours->next
               || !same(ours, theirs))
    {
        result = 2;

    } else {
        result = 0;
    }

    cJSON_Delete(theirs);
    arena_free();

    return result;
}


#ifdef NGX_HTTP_LLM_FUZZ

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int
LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    if (compare(data, size) == 2) {
        abort();
    }

    return 0;
}

#else

int
main(int argc, char **argv)
{
    int             i, rc, failed;
    long            len;
    FILE           *f;
    unsigned char  *buf;
    static const char  *said[] = { "read", "declined", "MISMATCH" };

    failed = 0;

    for (i = 1; i < argc; i++) {
        f = fopen(argv[i], "rb");
        if (f == NULL) {
            perror(argv[i]);
            return 2;
        }

        fseek(f, 0, SEEK_END);
        len = ftell(f);
        rewind(f);

        buf = malloc(len + 1);
        if (buf == NULL || fread(buf, 1, len, f) != (size_t) len) {
            perror(argv[i]);
            return 2;
        }

        fclose(f);

        rc = compare(buf, len);
        failed |= (rc == 2);
        printf("%s %s\n", said[rc], argv[i]);

        free(buf);
    }

    return failed;
}

#endif
