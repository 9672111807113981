
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_H_INCLUDED_
#define _NGX_HTTP_LLM_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_tokenizer.h"
#include "ngx_http_llm_genai.h"
#include "ngx_http_llm_share.h"


/*
 * Large bodies are read and counted in nginx's thread pool: what the
 * counting keeps between calls (the tokenizer's workspace, the JSON
 * pool, the repeat cache) is then each thread's own.
 */

#if (NGX_THREADS && defined __GNUC__)
#define NGX_HTTP_LLM_THREADS        1
#define ngx_http_llm_thread_local   __thread
#else
#define NGX_HTTP_LLM_THREADS        0
#define ngx_http_llm_thread_local
#endif


/* a sane bound for one request; keeps sums far from overflow */
#define NGX_HTTP_LLM_MAX_TOKENS    100000000
#define NGX_HTTP_LLM_MAX_CHOICES   128

/* a charge fits a window's 32-bit slot with room for others */
#define NGX_HTTP_LLM_MAX_CHARGE    0x7fffffff


/*
 * Azure's token window is 60 s and its request window 10 s: 240 slots of
 * 250 ms and 100 of 100 ms, plus one each (see below)
 */

#define NGX_HTTP_LLM_TOKEN_SLOTS     241
#define NGX_HTTP_LLM_REQ_SLOTS       101

#define NGX_HTTP_LLM_UNLIMITED       ((ngx_uint_t) 0x7fffffff)


/*
 * A backend's windows shared through Redis (llm_zone redis=): a lease and
 * a ring of unreported amounts for each, keyed in Redis by the SHA-256
 * of "pool/backend"
 */

#define NGX_HTTP_LLM_BUDGET_BACKEND_TOKENS    0
#define NGX_HTTP_LLM_BUDGET_BACKEND_REQUESTS  1

typedef struct {
    u_char                       digest[32];
    int64_t                      limit[2];   /* 0: none */
    ngx_http_llm_lease_t         lease[2];
    int64_t                      tokens[NGX_HTTP_LLM_TOKEN_SLOTS];
    int64_t                      requests[NGX_HTTP_LLM_REQ_SLOTS];
} ngx_http_llm_backend_share_t;


/*
 * A backend's state in the shared zone, keyed by "pool/backend" so that
 * it survives reloads.  Windows are rings of slots with an absolute slot
 * number for the newest one; one slot more than the window, so a charge
 * leaves our window no earlier than it leaves Azure's.
 */

#define NGX_HTTP_LLM_TTFT_RECENT  64

typedef struct {
    ngx_rbtree_node_t            node;
    ngx_queue_t                  queue;
    ngx_uint_t                   generation;

    ngx_msec_t                   tokens_last;
    ngx_uint_t                   tokens_sum;
    ngx_msec_t                   requests_last;
    ngx_uint_t                   requests_sum;

    ngx_msec_t                   cooldown_until;
    ngx_uint_t                   in_flight;

    ngx_int_t                    remote_tokens;
    ngx_int_t                    remote_requests;
    ngx_msec_t                   remote_time;
    ngx_uint_t                   remote_charged;  /* by us since then */

    /* a PTU's azure-openai-deployment-utilization, per mille + 1 */
    ngx_uint_t                   utilization;     /* 0: never sent */
    ngx_msec_t                   utilization_time;

    ngx_atomic_uint_t            requests;
    ngx_atomic_uint_t            backend_throttled;
    ngx_atomic_uint_t            local_throttled;
    ngx_atomic_uint_t            fallbacks;  /* a pool's, taken for
                                                another pool */

    /* a pool's llm_hedge: see ngx_http_llm_hedge.c */
    ngx_atomic_uint_t            hedges;        /* second attempts */
    ngx_atomic_uint_t            hedges_won;    /* ... that answered */
    ngx_atomic_uint_t            hedges_cancelled; /* attempts cancelled */
    ngx_atomic_uint_t            hedge_tokens;  /* charged to those */
    ngx_uint_t                   hedge_credit;  /* hundredths of a hedge */
    ngx_atomic_uint_t            failures;
    ngx_atomic_uint_t            responses[6];   /* by status / 100 */
    ngx_atomic_uint_t            tokens_charged;
    ngx_atomic_uint_t            prompt_tokens;
    ngx_atomic_uint_t            completion_tokens;
    ngx_atomic_uint_t            cached_tokens;
    ngx_atomic_uint_t            reasoning_tokens;
    ngx_atomic_uint_t            usage_counted;
    ngx_atomic_uint_t            cost;       /* billionths, llm_price */

    /* the last first-token times, ms, for llm_hedge after=auto */
    uint16_t                     ttft_recent[NGX_HTTP_LLM_TTFT_RECENT];
    ngx_uint_t                   ttft_samples;  /* since forgotten */

    /* exponentially weighted, in milliseconds and tokens/s x 1000 */
    ngx_uint_t                   ttft_ewma;
    ngx_uint_t                   tps_ewma;
    ngx_msec_t                   ewma_time;  /* of the last sample */

    /* OpenTelemetry's histograms, from the start */
    ngx_http_llm_genai_t         genai;

    uint32_t                     tokens[NGX_HTTP_LLM_TOKEN_SLOTS];
    uint32_t                     requests_slot[NGX_HTTP_LLM_REQ_SLOTS];

    ngx_http_llm_backend_share_t  *share;    /* NULL: not shared */

    u_short                      len;
    u_char                       name[1];
} ngx_http_llm_backend_sh_t;


/*
 * A consumer of llm_limit in the shared zone, keyed by the SHA-256 of
 * its key (the raw key is never stored), most recently used first in the
 * zone's consumer queue.  Windows as a backend's, with coarser slots: a
 * zone holds many more consumers than backends.
 */

#define NGX_HTTP_LLM_CONSUMER_SLOTS      61
#define NGX_HTTP_LLM_CONSUMER_RSLOTS     13
#define NGX_HTTP_LLM_DIGEST_LEN          32
#define NGX_HTTP_LLM_CONSUMER_ID_LEN     16  /* hex digits shown */


/* slots long enough that the ring covers the whole window */
#define ngx_http_llm_tslot(window)                                           \
    (((window) + NGX_HTTP_LLM_CONSUMER_SLOTS - 2)                            \
     / (NGX_HTTP_LLM_CONSUMER_SLOTS - 1))
#define ngx_http_llm_rslot(window)                                           \
    (((window) + NGX_HTTP_LLM_CONSUMER_RSLOTS - 2)                           \
     / (NGX_HTTP_LLM_CONSUMER_RSLOTS - 1))


/* a consumer's budgets shared through Redis (llm_zone redis=) */

#define NGX_HTTP_LLM_BUDGET_TOKENS       0
#define NGX_HTTP_LLM_BUDGET_REQUESTS     1
#define NGX_HTTP_LLM_BUDGET_QUOTA        2
#define NGX_HTTP_LLM_BUDGET_MONEY        3  /* billionths of a currency */
#define NGX_HTTP_LLM_BUDGETS             4

typedef struct {
    int64_t                      limit[NGX_HTTP_LLM_BUDGETS];  /* 0: none */
    ngx_msec_t                   touched;
    time_t                       quota_start;  /* of the period's two */
    ngx_http_llm_lease_t         lease[NGX_HTTP_LLM_BUDGETS];
    int64_t                      tokens[NGX_HTTP_LLM_CONSUMER_SLOTS];
    int64_t                      requests[NGX_HTTP_LLM_CONSUMER_RSLOTS];
    int64_t                      quota[1];
    int64_t                      money[1];
} ngx_http_llm_consumer_share_t;


typedef struct {
    ngx_rbtree_node_t            node;
    ngx_queue_t                  queue;
    u_char                       digest[NGX_HTTP_LLM_DIGEST_LEN];

    ngx_msec_t                   window;
    ngx_msec_t                   tokens_last;
    ngx_uint_t                   tokens_sum;
    ngx_msec_t                   requests_last;
    ngx_uint_t                   requests_sum;

    ngx_uint_t                   requests;
    ngx_uint_t                   throttled;
    ngx_uint_t                   prompt_tokens;
    ngx_uint_t                   completion_tokens;
    ngx_uint_t                   cost;       /* billionths, llm_price */

    /* the period of quota= and budget=, [start, end) in seconds */
    time_t                       quota_start;
    time_t                       quota_end;
    ngx_uint_t                   quota_used;  /* tokens */
    ngx_uint_t                   spent;       /* billionths, llm_price */

    uint32_t                     tokens[NGX_HTTP_LLM_CONSUMER_SLOTS];
    uint32_t                     requests_slot[NGX_HTTP_LLM_CONSUMER_RSLOTS];

    ngx_http_llm_consumer_share_t  *share;   /* NULL: not shared */
} ngx_http_llm_consumer_sh_t;


/*
 * A worker process whose configuration's backends have their state in
 * the zone: the state of one removed since lives until no such worker
 * is left (a stream keeps an old worker through any number of reloads)
 */

typedef struct {
    ngx_queue_t                  queue;
    ngx_pid_t                    pid;
    ngx_uint_t                   generation;
} ngx_http_llm_worker_sh_t;


typedef struct {
    ngx_rbtree_t                 rbtree;
    ngx_rbtree_node_t            sentinel;
    ngx_queue_t                  queue;
    ngx_uint_t                   generation;

    ngx_queue_t                  workers;    /* ngx_http_llm_worker_sh_t */
    ngx_uint_t                   untracked;  /* workers without a record */

    ngx_rbtree_t                 consumers;
    ngx_rbtree_node_t            consumer_sentinel;
    ngx_queue_t                  consumer_lru;
    ngx_uint_t                   nconsumers;
    ngx_uint_t                   evicted;

    ngx_http_llm_share_sh_t      share;
} ngx_http_llm_shctx_t;


typedef struct {
    ngx_http_llm_shctx_t        *sh;
    ngx_slab_pool_t             *shpool;
    ngx_array_t                  pools;      /* ngx_http_llm_pool_t * */
    ngx_str_t                    name;

    /* this configuration's generation, and this worker's record of it */
    ngx_uint_t                   generation;
    ngx_http_llm_worker_sh_t    *worker;
    unsigned                     entered:1;

    /* llm_zone redis=: the options, and this worker's link */
    ngx_http_llm_share_conf_t   *share_conf;
    ngx_http_llm_share_t        *share;
} ngx_http_llm_zone_t;


typedef struct ngx_http_llm_pool_s      ngx_http_llm_pool_t;
typedef struct ngx_http_llm_idle_s      ngx_http_llm_idle_t;
typedef struct ngx_http_llm_identity_s  ngx_http_llm_identity_t;


/* a file's modification time below the second, where the system has it */

#if (NGX_LINUX)
#define ngx_http_llm_mtime_ns(fi)  ((long) (fi)->st_mtim.tv_nsec)
#else
#define ngx_http_llm_mtime_ns(fi)  0
#endif


/* a secret read from a file, re-read by each worker when it changes */


typedef struct {
    ngx_str_t                    path;
    ngx_str_t                    value;
    time_t                       mtime;
    long                         mtime_ns;
    ngx_file_uniq_t              uniq;
    off_t                        size;
    time_t                       checked;
    unsigned                     bearer:1;
} ngx_http_llm_secret_t;


typedef struct {
    ngx_str_t                    name;
    ngx_str_t                    host;       /* Host and TLS name */
    ngx_str_t                    deployment;
    ngx_uint_t                   tpm;        /* 0: unlimited */
    ngx_uint_t                   rpm;
    ngx_uint_t                   priority;
    ngx_uint_t                   weight;
    ngx_uint_t                   reserve;    /* NGX_CONF_UNSET_UINT: none */
    ngx_http_llm_secret_t       *secret;
    ngx_http_llm_identity_t     *identity;   /* llm_identity's tokens */
    ngx_str_t                    identity_name;

    ngx_uint_t                   server;     /* index in uscf->servers */
    ngx_http_upstream_rr_peer_t **peers;
    ngx_uint_t                   npeers;
    ngx_uint_t                   first_peer;  /* position in rr peers */
    ngx_uint_t                   next_peer;

    ngx_http_llm_backend_sh_t   *sh;
    ngx_http_llm_pool_t         *pool;

    ngx_queue_t                  idle;       /* parked connections */

    unsigned                     ptu:1;
    unsigned                     plain:1;    /* a "server" line */
    unsigned                     ssl:1;
} ngx_http_llm_backend_t;


struct ngx_http_llm_pool_s {
    ngx_str_t                    name;
    ngx_http_llm_backend_sh_t   *sh;         /* the pool's own counters */
    ngx_shm_zone_t              *shm_zone;
    ngx_array_t                  backends;   /* ngx_http_llm_backend_t */
    ngx_http_upstream_srv_conf_t *upstream;
    ngx_msec_t                   cooldown;
    ngx_msec_t                   cooldown_max;
    ngx_msec_t                   window;
    ngx_msec_t                   remote_fresh;
    ngx_msec_t                   token_slot_ms;
    ngx_msec_t                   request_slot_ms;

    /* requests waiting for room in this worker, first come first */
    ngx_queue_t                  waiting;
    ngx_uint_t                   nwaiting;

    ngx_uint_t                   keepalive;
    ngx_msec_t                   keepalive_timeout;
    ngx_uint_t                   keepalive_requests;
    ngx_queue_t                  idle_free;
    ngx_queue_t                  idle_lru;

    unsigned                     balance:1;
    unsigned                     latency:1;  /* choose by room / latency */
    unsigned                     identities:1;  /* a backend's llm_identity */
};


typedef struct {
    ngx_http_upstream_srv_conf_t  *upstream;
    ngx_str_t                      name;
    u_char                        *file;
    ngx_uint_t                     line;
} ngx_http_llm_route_ref_t;


/* what a backend's reply says of it beyond its status */

typedef struct {
    ngx_int_t                    remote_tokens;   /* x-ratelimit-remaining-*, */
    ngx_int_t                    remote_requests; /* -1: not sent */
    ngx_int_t                    utilization;     /* per mille, -1: not sent */
    ngx_str_t                    request_id;      /* apim-request-id, else
                                                     x-request-id */
} ngx_http_llm_signals_t;


typedef struct {
    ngx_array_t                    routes;   /* ngx_http_llm_route_ref_t */
    ngx_array_t                    pools;    /* ngx_http_llm_pool_t * */
    ngx_array_t                   *prices;   /* llm_price lines */
    ngx_http_llm_vocab_t          *vocab[3]; /* by ngx_http_llm_encoding_e */
    ngx_array_t                    identities; /* ngx_http_llm_identity_t * */
    ngx_shm_zone_t                *identity_zone;
} ngx_http_llm_main_conf_t;


/* one llm_limit line */

typedef struct {
    ngx_http_complex_value_t     key;
    ngx_uint_t                   tpm;        /* 0: no token limit */
    ngx_uint_t                   rpm;        /* 0: no request limit */
    ngx_msec_t                   window;
    ngx_uint_t                   quota;      /* 0: no quota */
    ngx_uint_t                   budget;     /* billionths, 0: none */
    ngx_uint_t                   quota_period;  /* of both, 0: neither */
} ngx_http_llm_limit_t;


#define NGX_HTTP_LLM_QUOTA_DAY       1
#define NGX_HTTP_LLM_QUOTA_MONTH     2


/* an applying limit's consumer, for one request */

typedef struct {
    ngx_http_llm_limit_t        *limit;
    u_char                       digest[NGX_HTTP_LLM_DIGEST_LEN];
    ngx_uint_t                   charged;
    ngx_uint_t                   cost;       /* charged to the budget */
    ngx_msec_t                   charged_at;
    time_t                       quota_start; /* of the period charged */
    void                        *node;       /* only under the lock */
    unsigned                     dup:1;      /* a key seen already */
} ngx_http_llm_consumer_t;


typedef struct {
    ngx_flag_t                   route;
    ngx_http_upstream_srv_conf_t *upstream;   /* the pool of llm_route */
    ngx_array_t                 *fallbacks;  /* and its fallback= pools */
    size_t                       max_body_size;
    ngx_uint_t                   completion_reserve;
    ngx_uint_t                   count;      /* exact or estimate */
    ngx_msec_t                   wait;
    ngx_uint_t                   wait_queue;
    ngx_uint_t                   image_tokens;
    ngx_uint_t                   encoding;   /* 0: by the model's name */
    ngx_flag_t                   stream_usage;
    ngx_msec_t                   hedge_after; /* llm_hedge, 0: off,
                                                 or _AUTO */
    ngx_uint_t                   hedge_max;  /* percent of requests */
    ngx_flag_t                   count_cache;
    ngx_flag_t                   body_walk;
    ngx_array_t                 *limits;     /* ngx_http_llm_limit_t */
    ngx_uint_t                   status_consumers;

    /* llm_count_threads */
    ngx_flag_t                   threads;
    size_t                       thread_min;
    ngx_str_t                    thread_pool_name;
#if (NGX_HTTP_LLM_THREADS)
    ngx_thread_pool_t           *thread_pool;
#endif
} ngx_http_llm_loc_conf_t;


typedef void (*ngx_http_llm_thread_pt)(ngx_http_request_t *r);

typedef struct ngx_http_llm_hedge_s  ngx_http_llm_hedge_t;
typedef struct ngx_http_llm_attempt_s  ngx_http_llm_attempt_t;
typedef struct ngx_http_llm_ctx_s  ngx_http_llm_ctx_t;


#define NGX_HTTP_LLM_COUNT_EXACT     1
#define NGX_HTTP_LLM_COUNT_ESTIMATE  2


#define NGX_HTTP_LLM_USAGE_MAX  1024
#define NGX_HTTP_LLM_GAP_MAX    512
#define NGX_HTTP_LLM_GAP_LIMIT  2048


/*
 * the reply scanner's reading state from one buffer to the next, read
 * where it is, a byte a flag: bit fields cost a stream read an event at
 * a time some instructions at every read (see ngx_http_llm_usage.c)
 */

typedef struct {
    size_t                       klen;
    ngx_uint_t                   deltas;
    u_char                       in_string;
    u_char                       escaped;
    u_char                       after_string;
    u_char                       after_colon;
    u_char                       usage_key;
    u_char                       text_key;
    u_char                       value_of_text;
    u_char                       value_chars;
} ngx_http_llm_scan_state_t;


/* the reply scanner's state: see ngx_http_llm_usage.c */

typedef struct {
    ngx_uint_t                   prompt;
    ngx_uint_t                   completion;
    ngx_uint_t                   total;
    ngx_uint_t                   cached;
    ngx_uint_t                   reasoning;

    ngx_http_llm_scan_state_t    state;

    /* inside a usage object: its depth and its own strings */
    ngx_uint_t                   depth;
    size_t                       len;
    u_char                       in_string;
    u_char                       escaped;

    u_char                       key[16];

    unsigned                     overflow:1;
    unsigned                     found:1;
    unsigned                     walk:1;     /* llm_body_walk */
    unsigned                     whole:1;    /* read from the end */
    unsigned                     replay:1;   /* of the gap's bytes */

    /*
     * a stream's bytes from a text's closing quote to the next text's
     * opening quote; how many of them the last buffer ended with
     */
    size_t                       gap_len;
    size_t                       gap_at;
    size_t                       gap_rec;    /* recorded so far */
    size_t                       gap_size;
    u_char                      *gap;        /* gap_size bytes, or NULL:
                                                not kept */

    /* where the last value the events differ in opens and closes */
    size_t                       gap_value;
    size_t                       gap_value_end;

    /*
     * a usage object split across buffers is copied, up to
     * NGX_HTTP_LLM_USAGE_MAX bytes, into buf, made from pool when first
     * needed: most objects end in the buffer they start in, and are read
     * where they are
     */
    u_char                      *buf;
    ngx_pool_t                  *pool;
} ngx_http_llm_scan_t;


/* what llm_stream_usage takes out of a stream: see ngx_http_llm_stream.c */

typedef struct {
    ngx_buf_t                   *pending;    /* an event not yet ended */
    ngx_chain_t                 *free;
    ngx_chain_t                 *busy;
    unsigned                     off:1;      /* gave up: passes as is */
} ngx_http_llm_strip_t;


struct ngx_http_llm_ctx_s {
    /* NGX_DONE while the body is read, then NGX_DECLINED */
    ngx_int_t                    status;

    /* a local error to answer instead of proxying, 0 when none */
    ngx_uint_t                   error;
    const char                  *error_code;
    ngx_str_t                    error_message;

    ngx_str_t                    model;
    ngx_str_t                    deployment;

    /* the body in one piece, and where its "model" value is */
    ngx_str_t                    body;
    size_t                       model_start;
    size_t                       model_end;

    ngx_uint_t                   prompt_estimate; /* characters / 4 */
    ngx_uint_t                   prompt_tokens;  /* exact or guessed */
    ngx_uint_t                   reserve;
    ngx_uint_t                   choices;
    ngx_uint_t                   tokens_estimate;

    /* the body named its own completion limit */
    ngx_uint_t                   explicit_reserve;

    /* a member the module reads, named twice in the body */
    const char                  *duplicate;

    ngx_http_llm_pool_t         *pool;
    ngx_http_llm_backend_t      *backend;     /* current attempt's */
    ngx_uint_t                   charged;     /* tokens charged to it */
    ngx_msec_t                   charged_at;
    ngx_uint_t                   attempts;
    ngx_msec_t                   retry_after; /* when throttled locally */
    ngx_msec_t                   cooled_until; /* the first backend that
                                                  answered 429 may retry */
    ngx_buf_t                   *throttled_body;

    /* the attempt that answered: its charge, for the PTU correction */
    ngx_uint_t                   final_charge;
    ngx_msec_t                   final_at;

    /* the last attempt's status from the backend, 0 when none came */
    ngx_uint_t                   upstream_status;
    ngx_str_t                    backend_request_id; /* of a 429 or 5xx */

    ngx_msec_t                   start;
    ngx_msec_t                   ttft;

    ngx_http_request_t          *request;
    ngx_queue_t                  queue;       /* in pool->waiting */
    ngx_msec_t                   deadline;
    ngx_http_llm_scan_t         *scan;

    /* llm_stream_usage: where the body gets stream_options, the filter */
    size_t                       inject_at;
    ngx_http_llm_strip_t        *strip;

    /* llm_limit: the consumers of the limits that apply */
    ngx_http_llm_consumer_t     *consumers;
    ngx_uint_t                   nconsumers;
    ngx_http_llm_limit_t        *over;        /* the limit that refused */
    ngx_http_llm_consumer_t     *over_consumer;
    ngx_uint_t                   cost_estimate;  /* billionths, for its
                                                    message */

    ngx_uint_t                   cost;        /* billionths, when priced */

    /* llm_hedge: the main request's race, or one attempt of it */
    ngx_http_llm_hedge_t        *hedge;
    ngx_http_llm_attempt_t      *attempt;

    /*
     * set by whoever made more attempts of the request (llm_hedge), as
     * upstream's callbacks are set by proxy: settling the request calls
     * it first, so that each attempt is settled and the one that
     * answered hands its charge over
     */
    void                       (*settle_attempts)(ngx_http_llm_ctx_t *ctx);

    /* waiting for a lease from Redis since, 0: not waiting */
    ngx_msec_t                   share_since;
    ngx_msec_t                   token_since;  /* waiting for a first
                                                  Entra ID token */

    unsigned                     parsed:1;
    unsigned                     stream:1;
    unsigned                     stream_options:1;
    unsigned                     model_found:1;  /* model_start known */
    unsigned                     inject_usage:1;
    unsigned                     embeddings:1;
    unsigned                     has_reserve:1;
    unsigned                     admitted:1;
    unsigned                     throttle:2;  /* none, local, backend,
                                                 consumer */
    unsigned                     all_throttled:1;
    unsigned                     fallback:1; /* admitted to a fallback */
    unsigned                     cached:1;   /* answered by proxy_cache */
    unsigned                     priced:1;   /* "cost" is llm_price's */
    unsigned                     replace_body:1;
    unsigned                     sse:1;
    unsigned                     first_byte:1;
    unsigned                     reply_ended:1;  /* its last buffer went */
    unsigned                     reply_cut:1;    /* a 2xx that did not */
    unsigned                     accounted:1;
    unsigned                     queued:1;
    unsigned                     cleanup:1;
    unsigned                     consumers_keyed:1;
    unsigned                     consumers_charged:1;
    unsigned                     share_local:1;  /* Redis did not answer */
    unsigned                     lease_wait:1;   /* for a backend's lease */

    /* see ngx_http_llm_charge.c */
    unsigned                     held:1;      /* the backend's charge */
    unsigned                     in_flight:1; /* one of its in_flight */
    unsigned                     owned:1;     /* settled at the end */
    unsigned                     settled:1;
    unsigned                     over_kind:2;  /* tokens, requests,
                                                 quota, budget */
};


#define NGX_HTTP_LLM_THROTTLE_NONE     0
#define NGX_HTTP_LLM_THROTTLE_LOCAL    1
#define NGX_HTTP_LLM_THROTTLE_BACKEND  2
#define NGX_HTTP_LLM_THROTTLE_CONSUMER 3

#define NGX_HTTP_LLM_OVER_TOKENS       0
#define NGX_HTTP_LLM_OVER_REQUESTS     1
#define NGX_HTTP_LLM_OVER_QUOTA        2
#define NGX_HTTP_LLM_OVER_BUDGET       3

#define NGX_HTTP_LLM_HEDGE_AUTO        ((ngx_msec_t) -2)

#define NGX_HTTP_LLM_HEDGE_EARN        0
#define NGX_HTTP_LLM_HEDGE_SPEND       1
#define NGX_HTTP_LLM_HEDGE_UNSPEND     2
#define NGX_HTTP_LLM_HEDGE_STARTED     3
#define NGX_HTTP_LLM_HEDGE_WON         4
#define NGX_HTTP_LLM_HEDGE_CANCELLED   5

#define NGX_HTTP_LLM_DONE_OK           0
#define NGX_HTTP_LLM_DONE_THROTTLED    1
#define NGX_HTTP_LLM_DONE_FAILED       2


#define ngx_http_llm_pool_of(uscf)                                           \
    ((ngx_http_llm_pool_t *)                                                 \
         ngx_http_conf_upstream_srv_conf(uscf, ngx_http_llm_module))


extern ngx_module_t  ngx_http_llm_module;
extern ngx_module_t  ngx_http_llm_filter_module;
extern ngx_module_t  ngx_http_llm_hedge_module;


#endif /* _NGX_HTTP_LLM_H_INCLUDED_ */
