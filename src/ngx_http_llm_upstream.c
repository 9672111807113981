
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_charge.h"
#include "ngx_http_llm_credentials.h"
#include "ngx_http_llm_identity.h"
#include "ngx_http_llm_keepalive.h"
#include "ngx_http_llm_parse.h"
#include "ngx_http_llm_secret.h"
#include "ngx_http_llm_stream.h"
#include "ngx_http_llm_upstream.h"
#include "ngx_http_llm_zone.h"


#define NGX_HTTP_LLM_BITS  (8 * sizeof(uintptr_t))

#define ngx_http_llm_bit_set(bits, n)                                         \
    (bits)[(n) / NGX_HTTP_LLM_BITS] |= (uintptr_t) 1 << (n) % NGX_HTTP_LLM_BITS


typedef struct {
    /* the round-robin data comes first: its TLS session helpers use it */
    ngx_http_upstream_rr_peer_data_t   rrp;

    ngx_http_llm_pool_t               *pool;
    ngx_http_request_t                *request;

    /* the backend whose Host, key and path the request buffer carries */
    ngx_http_llm_backend_t            *built_for;
    unsigned                           path_built:1;

    uintptr_t                         *tried;
    uintptr_t                         *down;
} ngx_http_llm_peer_data_t;


static ngx_int_t ngx_http_llm_upstream_init(ngx_conf_t *cf,
    ngx_http_upstream_srv_conf_t *us);
static ngx_int_t ngx_http_llm_upstream_init_peer(ngx_http_request_t *r,
    ngx_http_upstream_srv_conf_t *us);
static ngx_int_t ngx_http_llm_get_peer(ngx_peer_connection_t *pc,
    void *data);
static ngx_int_t ngx_http_llm_no_peer(ngx_peer_connection_t *pc,
    ngx_http_llm_peer_data_t *pd, ngx_http_llm_ctx_t *ctx, ngx_msec_t wait);
static ngx_int_t ngx_http_llm_attempt(ngx_peer_connection_t *pc,
    ngx_http_llm_peer_data_t *pd, ngx_http_llm_backend_t *b,
    ngx_http_upstream_rr_peer_t *peer, ngx_uint_t index, time_t now);
static ngx_http_upstream_rr_peer_t *ngx_http_llm_backend_peer(
    ngx_http_llm_peer_data_t *pd, ngx_http_llm_backend_t *b, time_t now,
    ngx_uint_t *index);
static ngx_int_t ngx_http_llm_rebuild_request(ngx_http_request_t *r,
    ngx_http_llm_peer_data_t *pd, ngx_http_llm_backend_t *b);
static void ngx_http_llm_free_peer(ngx_peer_connection_t *pc, void *data,
    ngx_uint_t state);
static ngx_uint_t ngx_http_llm_not_counted(ngx_uint_t status);
#if (NGX_HTTP_SSL)
static ngx_int_t ngx_http_llm_set_session(ngx_peer_connection_t *pc,
    void *data);
#endif
static ngx_msec_t ngx_http_llm_cooldown(ngx_http_upstream_t *u,
    ngx_http_llm_pool_t *pool, ngx_http_llm_signals_t *sig);


/* what becomes the upstream block's server line of a backend */

typedef struct {
    ngx_str_t                    address;
    ngx_uint_t                   port;       /* the URL scheme's */
    ngx_uint_t                   max_fails;
    time_t                       fail_timeout;
} ngx_http_llm_server_t;


static ngx_int_t ngx_http_llm_backend_url(ngx_conf_t *cf,
    ngx_http_llm_backend_t *b, ngx_str_t *url, ngx_http_llm_server_t *server);
static ngx_int_t ngx_http_llm_backend_secret(ngx_conf_t *cf,
    ngx_http_llm_backend_t *b, ngx_str_t *value);
static char *ngx_http_llm_backend_server(ngx_conf_t *cf,
    ngx_http_llm_backend_t *b, ngx_http_upstream_srv_conf_t *uscf,
    ngx_http_llm_server_t *server);


static ngx_http_llm_option_t  ngx_http_llm_balance_options[] = {
    { ngx_string("cooldown="), NGX_HTTP_LLM_OPTION_MSEC,
      offsetof(ngx_http_llm_pool_t, cooldown), 0, 0 },
    { ngx_string("cooldown_max="), NGX_HTTP_LLM_OPTION_MSEC,
      offsetof(ngx_http_llm_pool_t, cooldown_max), 1, 0 },

    /* only to match a time-compressed simulator: the request window is a
     * sixth of it, as Azure's 10 s is of its 60 s */
    { ngx_string("window="), NGX_HTTP_LLM_OPTION_MSEC,
      offsetof(ngx_http_llm_pool_t, window), 1000, 3600000 },

    { ngx_string("keepalive="), NGX_HTTP_LLM_OPTION_NUMBER,
      offsetof(ngx_http_llm_pool_t, keepalive), 1, 0 },
    { ngx_string("keepalive_timeout="), NGX_HTTP_LLM_OPTION_MSEC,
      offsetof(ngx_http_llm_pool_t, keepalive_timeout), 1, 0 },
    { ngx_string("keepalive_requests="), NGX_HTTP_LLM_OPTION_NUMBER,
      offsetof(ngx_http_llm_pool_t, keepalive_requests), 1, 0 },
    { ngx_null_string, 0, 0, 0, 0 }
};


static ngx_http_llm_option_t  ngx_http_llm_backend_options[] = {
    { ngx_string("deployment="), NGX_HTTP_LLM_OPTION_STRING,
      offsetof(ngx_http_llm_backend_t, deployment), 0, 0 },
    { ngx_string("tpm="), NGX_HTTP_LLM_OPTION_COUNT,
      offsetof(ngx_http_llm_backend_t, tpm), 0, 0 },
    { ngx_string("rpm="), NGX_HTTP_LLM_OPTION_COUNT,
      offsetof(ngx_http_llm_backend_t, rpm), 0, 0 },
    { ngx_string("priority="), NGX_HTTP_LLM_OPTION_NUMBER,
      offsetof(ngx_http_llm_backend_t, priority), 0, 0 },
    { ngx_string("weight="), NGX_HTTP_LLM_OPTION_NUMBER,
      offsetof(ngx_http_llm_backend_t, weight), 1, 1000 },
    { ngx_string("reserve="), NGX_HTTP_LLM_OPTION_COUNT,
      offsetof(ngx_http_llm_backend_t, reserve), 0,
      NGX_HTTP_LLM_MAX_TOKENS },
    { ngx_string("identity="), NGX_HTTP_LLM_OPTION_STRING,
      offsetof(ngx_http_llm_backend_t, identity_name), 0, 0 },
    { ngx_null_string, 0, 0, 0, 0 }
};


static ngx_http_llm_option_t  ngx_http_llm_server_options[] = {
    { ngx_string("address="), NGX_HTTP_LLM_OPTION_STRING,
      offsetof(ngx_http_llm_server_t, address), 0, 0 },
    { ngx_string("max_fails="), NGX_HTTP_LLM_OPTION_NUMBER,
      offsetof(ngx_http_llm_server_t, max_fails), 0, 0 },
    { ngx_string("fail_timeout="), NGX_HTTP_LLM_OPTION_SEC,
      offsetof(ngx_http_llm_server_t, fail_timeout), 0, 0 },
    { ngx_null_string, 0, 0, 0, 0 }
};


char *
ngx_http_llm_balance(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_pool_t *pool = conf;

    ngx_str_t                     *value, s;
    ngx_uint_t                     i;
    ngx_http_llm_pool_t          **pp;
    ngx_http_llm_main_conf_t      *lmcf;
    ngx_http_upstream_srv_conf_t  *uscf;

    uscf = ngx_http_conf_get_module_srv_conf(cf, ngx_http_upstream_module);

    if (pool->balance) {
        return "is duplicate";
    }

    /*
     * keepalive and other methods wrap or replace init_upstream when
     * their directive is read: ours must be the first one in the block
     */

    if (uscf->peer.init_upstream) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"llm_balance\" must come before \"keepalive\" "
                           "and any other balancing directive in upstream "
                           "\"%V\"", &uscf->host);
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {
            s.data = value[i].data + 5;
            s.len = value[i].len - 5;

            pool->shm_zone = ngx_shared_memory_add(cf, &s, 0,
                                                   &ngx_http_llm_module);
            if (pool->shm_zone == NULL) {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strcmp(value[i].data, "latency") == 0) {
            pool->latency = 1;
            continue;
        }

        if (ngx_http_llm_parse_option(&value[i], ngx_http_llm_balance_options,
                                      pool)
            == NGX_OK)
        {
            continue;
        }

        goto invalid;
    }

    if (pool->shm_zone == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"llm_balance\" needs \"zone=\"");
        return NGX_CONF_ERROR;
    }

    if (ngx_http_llm_zone_add_pool(cf, pool->shm_zone, pool) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);

    pp = ngx_array_push(&lmcf->pools);
    if (pp == NULL) {
        return NGX_CONF_ERROR;
    }

    *pp = pool;

    pool->balance = 1;
    pool->name = uscf->host;
    pool->upstream = uscf;

    ngx_queue_init(&pool->waiting);

    if (pool->cooldown == NGX_CONF_UNSET_MSEC) {
        pool->cooldown = 5000;
    }

    if (pool->cooldown_max == NGX_CONF_UNSET_MSEC) {
        pool->cooldown_max = 60000;
    }

    if (pool->window == NGX_CONF_UNSET_MSEC) {
        pool->window = 60000;
    }

    if (pool->keepalive_timeout == NGX_CONF_UNSET_MSEC) {
        pool->keepalive_timeout = 60000;
    }

    if (pool->keepalive_requests == NGX_CONF_UNSET_UINT) {
        pool->keepalive_requests = 1000;
    }

    /* a remote remaining-* value is trusted for 2 s of a 60 s window */

    pool->remote_fresh = pool->window / 30;
    /*
     * slots rounded up: the slots together may hold a charge a little
     * longer than the window, never shorter (an early release admits
     * what the backend refuses)
     */

    pool->token_slot_ms = (pool->window + NGX_HTTP_LLM_TOKEN_SLOTS - 2)
                          / (NGX_HTTP_LLM_TOKEN_SLOTS - 1);
    pool->request_slot_ms = (pool->window + 6 * (NGX_HTTP_LLM_REQ_SLOTS - 1)
                             - 1)
                            / (6 * (NGX_HTTP_LLM_REQ_SLOTS - 1));

    uscf->peer.init_upstream = ngx_http_llm_upstream_init;

    uscf->flags = NGX_HTTP_UPSTREAM_CREATE
                  |NGX_HTTP_UPSTREAM_WEIGHT
                  |NGX_HTTP_UPSTREAM_MAX_CONNS
                  |NGX_HTTP_UPSTREAM_MAX_FAILS
                  |NGX_HTTP_UPSTREAM_FAIL_TIMEOUT
                  |NGX_HTTP_UPSTREAM_DOWN;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);

    return NGX_CONF_ERROR;
}


/*
 * llm_backend name URL [deployment=] [tpm=] [rpm=] [priority=] [weight=]
 *             [ptu] [reserve=] [key_file= | bearer_file= | identity=]
 *             [address=] [max_fails=] [fail_timeout=]
 */

char *
ngx_http_llm_backend(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_pool_t *pool = conf;

    u_char                        *p;
    ngx_int_t                      rc;
    ngx_str_t                     *value;
    ngx_uint_t                     i;
    ngx_http_llm_server_t          server;
    ngx_http_llm_backend_t        *b, *ob;
    ngx_http_upstream_srv_conf_t  *uscf;

    uscf = ngx_http_conf_get_module_srv_conf(cf, ngx_http_upstream_module);

    if (!pool->balance) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"llm_backend\" needs \"llm_balance\" before it "
                           "in upstream \"%V\"", &uscf->host);
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    ob = pool->backends.elts;

    for (i = 0; i < pool->backends.nelts; i++) {
        if (ob[i].name.len == value[1].len
            && ngx_strncmp(ob[i].name.data, value[1].data, value[1].len)
               == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate llm_backend \"%V\" in upstream "
                               "\"%V\"", &value[1], &uscf->host);
            return NGX_CONF_ERROR;
        }
    }

    b = ngx_array_push(&pool->backends);
    if (b == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(b, sizeof(ngx_http_llm_backend_t));

    b->name = value[1];
    b->priority = 1;
    b->weight = 1;
    b->rpm = NGX_CONF_UNSET_UINT;
    b->reserve = NGX_CONF_UNSET_UINT;
    b->pool = pool;

    ngx_memzero(&server, sizeof(ngx_http_llm_server_t));
    server.max_fails = 1;
    server.fail_timeout = 10;

    if (ngx_http_llm_backend_url(cf, b, &value[2], &server) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    for (i = 3; i < cf->args->nelts; i++) {

        if (ngx_strcmp(value[i].data, "ptu") == 0) {
            b->ptu = 1;
            continue;
        }

        if (ngx_strncmp(value[i].data, "key_file=", 9) == 0
            || ngx_strncmp(value[i].data, "bearer_file=", 12) == 0)
        {
            if (b->secret || b->identity_name.len) {
                goto credentials;
            }

            rc = ngx_http_llm_backend_secret(cf, b, &value[i]);

            if (rc == NGX_ERROR) {
                return NGX_CONF_ERROR;
            }

            if (rc == NGX_DECLINED) {
                goto invalid;
            }

            continue;
        }

        rc = ngx_http_llm_parse_option(&value[i],
                                       ngx_http_llm_backend_options, b);

        if (rc == NGX_DECLINED) {
            rc = ngx_http_llm_parse_option(&value[i],
                                           ngx_http_llm_server_options,
                                           &server);
        }

        if (rc != NGX_OK) {
            goto invalid;
        }
    }

    if (b->secret && b->identity_name.len) {
        goto credentials;
    }

    /* the deployment goes into a path and into a JSON string as it is */

    for (p = b->deployment.data;
         p < b->deployment.data + b->deployment.len;
         p++)
    {
        if (*p <= ' ' || *p == '/' || *p == '?' || *p == '"' || *p == '\\'
            || *p == '%' || *p == '#' || *p >= 0x7f)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"deployment=%V\"",
                               &b->deployment);
            return NGX_CONF_ERROR;
        }
    }

    /* Azure: 6 requests a minute per 1,000 tokens a minute */

    if (b->rpm == NGX_CONF_UNSET_UINT) {
        b->rpm = b->tpm * 6 / 1000;
    }

    return ngx_http_llm_backend_server(cf, b, uscf, &server);

credentials:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "llm_backend \"%V\" has more than one of key_file=, "
                       "bearer_file= and identity=", &b->name);

    return NGX_CONF_ERROR;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);

    return NGX_CONF_ERROR;
}


/* the URL: scheme, host and port; a path is not used */

static ngx_int_t
ngx_http_llm_backend_url(ngx_conf_t *cf, ngx_http_llm_backend_t *b,
    ngx_str_t *url, ngx_http_llm_server_t *server)
{
    u_char     *p, *last;
    ngx_str_t   s;

    s = *url;

    if (s.len > 8 && ngx_strncasecmp(s.data, (u_char *) "https://", 8) == 0) {
        b->ssl = 1;
        server->port = 443;
        s.data += 8;
        s.len -= 8;

    } else if (s.len > 7
               && ngx_strncasecmp(s.data, (u_char *) "http://", 7) == 0)
    {
        b->ssl = 0;
        server->port = 80;
        s.data += 7;
        s.len -= 7;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid URL \"%V\": http:// or https:// "
                           "expected", url);
        return NGX_ERROR;
    }

    last = s.data + s.len;
    p = ngx_strlchr(s.data, last, '/');

    b->host.data = s.data;
    b->host.len = (p ? p : last) - s.data;

    if (b->host.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid URL \"%V\"", url);
        return NGX_ERROR;
    }

    /* where to connect, unless address= says otherwise */

    server->address = b->host;

    return NGX_OK;
}


/*
 * key_file= or bearer_file=: the file's first line, read now (as root)
 * and again by each worker when the file changes; NGX_DECLINED for an
 * empty path
 */

static ngx_int_t
ngx_http_llm_backend_secret(ngx_conf_t *cf, ngx_http_llm_backend_t *b,
    ngx_str_t *value)
{
    ngx_str_t  s;

    b->secret = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_secret_t));
    if (b->secret == NULL) {
        return NGX_ERROR;
    }

    b->secret->bearer = (value->data[0] == 'b');
    s.data = value->data + (b->secret->bearer ? 12 : 9);
    s.len = value->data + value->len - s.data;

    if (s.len == 0) {
        return NGX_DECLINED;
    }

    if (ngx_conf_full_name(cf->cycle, &s, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    b->secret->path = s;

    if (ngx_http_llm_secret_value(cf->log, b->secret) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_backend \"%V\": cannot read a credential "
                           "from \"%V\"", &b->name, &s);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* the backend as a server of the upstream block, resolved now */

static char *
ngx_http_llm_backend_server(ngx_conf_t *cf, ngx_http_llm_backend_t *b,
    ngx_http_upstream_srv_conf_t *uscf, ngx_http_llm_server_t *server)
{
    ngx_url_t                    u;
    ngx_http_upstream_server_t  *us;

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = server->address;
    u.default_port = (in_port_t) server->port;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        if (u.err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s in llm_backend \"%V\" of upstream \"%V\"",
                               u.err, &server->address, &uscf->host);
        }

        return NGX_CONF_ERROR;
    }

    us = ngx_array_push(uscf->servers);
    if (us == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(us, sizeof(ngx_http_upstream_server_t));

    us->name = u.url;
    us->addrs = u.addrs;
    us->naddrs = u.naddrs;
    us->weight = b->weight;
    us->max_fails = server->max_fails;
    us->fail_timeout = server->fail_timeout;

    b->server = uscf->servers->nelts - 1;

    return NGX_CONF_OK;
}


/*
 * Round-robin builds the peers from every server of the block, in order;
 * each server then becomes a backend: ours carry their llm_backend
 * settings, plain "server" lines are backends without limits or rewrite.
 */

static ngx_int_t
ngx_http_llm_upstream_init(ngx_conf_t *cf, ngx_http_upstream_srv_conf_t *us)
{
    ngx_uint_t                     i, j, k, pos, nservers;
    ngx_array_t                    backends;
    ngx_http_llm_pool_t           *pool;
    ngx_http_llm_backend_t        *b, *ob;
    ngx_http_upstream_server_t    *server;
    ngx_http_upstream_rr_peer_t   *peer;
    ngx_http_upstream_rr_peers_t  *peers;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, cf->log, 0, "init llm balance");

    if (ngx_http_upstream_init_round_robin(cf, us) != NGX_OK) {
        return NGX_ERROR;
    }

    us->peer.init = ngx_http_llm_upstream_init_peer;

    pool = ngx_http_conf_upstream_srv_conf(us, ngx_http_llm_module);
    peers = us->peer.data;

    server = us->servers->elts;
    nservers = us->servers->nelts;

    if (ngx_array_init(&backends, cf->pool, nservers,
                       sizeof(ngx_http_llm_backend_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ob = pool->backends.elts;
    peer = peers->peer;
    pos = 0;

    for (i = 0; i < nservers; i++) {

        if (server[i].backup) {
            continue;
        }

        b = ngx_array_push(&backends);
        if (b == NULL) {
            return NGX_ERROR;
        }

        for (j = 0; j < pool->backends.nelts; j++) {
            if (ob[j].server == i) {
                break;
            }
        }

        if (j < pool->backends.nelts) {
            *b = ob[j];

        } else {
            ngx_memzero(b, sizeof(ngx_http_llm_backend_t));
            b->name = server[i].name;
            b->host = server[i].name;
            b->priority = 1;
            b->weight = server[i].weight;
            b->reserve = NGX_CONF_UNSET_UINT;
            b->plain = 1;
            b->pool = pool;
            b->server = i;
        }

        b->npeers = server[i].naddrs;
        b->first_peer = pos;
        pos += b->npeers;
        b->peers = ngx_palloc(cf->pool,
                         b->npeers * sizeof(ngx_http_upstream_rr_peer_t *));
        if (b->peers == NULL) {
            return NGX_ERROR;
        }

        for (k = 0; k < b->npeers; k++) {
            if (peer == NULL) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "llm upstream \"%V\": peers and servers "
                                   "do not match", &us->host);
                return NGX_ERROR;
            }

            b->peers[k] = peer;
            peer = peer->next;
        }
    }

    if (backends.nelts > 64 * NGX_HTTP_LLM_BITS) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "too many backends in upstream \"%V\"", &us->host);
        return NGX_ERROR;
    }

    pool->backends = backends;

    if (pool->keepalive && ngx_http_llm_keepalive_init(cf, pool) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * After every upstream is set up: nginx's own keepalive matches cached
 * connections by address only, so it must not serve backends that share
 * an address under different TLS names; and it cannot be combined with
 * the pool's own cache.
 */

ngx_int_t
ngx_http_llm_pool_check(ngx_conf_t *cf, ngx_http_llm_pool_t *pool)
{
    ngx_uint_t                     i, j, k, l;
    ngx_http_llm_backend_t        *b;
    ngx_http_upstream_rr_peer_t   *p, *q;
    ngx_http_upstream_srv_conf_t  *us;

    us = pool->upstream;

    if (us->peer.init == ngx_http_llm_upstream_init_peer) {
        return NGX_OK;
    }

#if (nginx_version >= 1029007)

    /*
     * nginx 1.29.7 and later keep connections alive for every upstream
     * block, "keepalive" written or not, and cannot tell us which; its
     * cache matches connections by address only.  The pool's own cache,
     * per backend, takes its place, at nginx's default size unless
     * "llm_balance keepalive=" says otherwise ("keepalive 0" turns both
     * off).
     */

    if (pool->keepalive == 0) {
        pool->keepalive = 32;

        if (ngx_http_llm_keepalive_init(cf, pool) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    us->peer.init = ngx_http_llm_upstream_init_peer;

    return NGX_OK;

#endif

    if (pool->keepalive) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "upstream \"%V\" has both \"keepalive\" and "
                      "\"llm_balance keepalive=\": use one", &us->host);
        return NGX_ERROR;
    }

    b = pool->backends.elts;

    for (i = 0; i < pool->backends.nelts; i++) {
        for (j = i + 1; j < pool->backends.nelts; j++) {

            if (!b[i].ssl || !b[j].ssl
                || (b[i].host.len == b[j].host.len
                    && ngx_strncasecmp(b[i].host.data, b[j].host.data,
                                       b[i].host.len) == 0))
            {
                continue;
            }

            for (k = 0; k < b[i].npeers; k++) {
                for (l = 0; l < b[j].npeers; l++) {
                    p = b[i].peers[k];
                    q = b[j].peers[l];

                    if (ngx_cmp_sockaddr(p->sockaddr, p->socklen,
                                         q->sockaddr, q->socklen, 1)
                        == NGX_OK)
                    {
                        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                                      "llm_backend \"%V\" and \"%V\" of "
                                      "upstream \"%V\" share the address "
                                      "%V: with \"keepalive\" one could "
                                      "reuse the other's TLS connection; "
                                      "use \"llm_balance keepalive=\" "
                                      "instead", &b[i].name, &b[j].name,
                                      &us->host, &p->name);
                        return NGX_ERROR;
                    }
                }
            }
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_upstream_init_peer(ngx_http_request_t *r,
    ngx_http_upstream_srv_conf_t *us)
{
    size_t                     words;
    ngx_http_llm_ctx_t        *ctx, *mctx;
    ngx_http_llm_pool_t       *pool;
    ngx_http_llm_peer_data_t  *pd;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "init llm peer");

    pool = ngx_http_conf_upstream_srv_conf(us, ngx_http_llm_module);

    pd = ngx_pcalloc(r->pool, sizeof(ngx_http_llm_peer_data_t));
    if (pd == NULL) {
        return NGX_ERROR;
    }

    words = (pool->backends.nelts + NGX_HTTP_LLM_BITS - 1) / NGX_HTTP_LLM_BITS;

    pd->tried = ngx_pcalloc(r->pool, 2 * words * sizeof(uintptr_t));
    if (pd->tried == NULL) {
        return NGX_ERROR;
    }

    pd->down = pd->tried + words;

    r->upstream->peer.data = &pd->rrp;

    if (ngx_http_upstream_init_round_robin_peer(r, us) != NGX_OK) {
        return NGX_ERROR;
    }

    r->upstream->peer.get = ngx_http_llm_get_peer;
    r->upstream->peer.free = ngx_http_llm_free_peer;
#if (NGX_HTTP_SSL)
    r->upstream->peer.set_session = ngx_http_llm_set_session;
#endif

    pd->pool = pool;
    pd->request = r;

    /* create_request has run: the buffer carries the admitted backend */

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL) {

        /* back from an internal redirect: what it held there is settled */

        ngx_http_llm_charge_adopt(r);

        ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_llm_ctx_t));
        if (ctx == NULL) {
            return NGX_ERROR;
        }

        ngx_http_set_ctx(r, ctx, ngx_http_llm_module);
        ctx->start = ngx_current_msec;
        ctx->request = r;

        /*
         * another module's subrequest (a mirror's copy, a cache's
         * background update) is not admitted, nor does it wait, nor
         * charge a consumer: its backend is charged the estimate of the
         * client's request, whose body it sends, not one request and no
         * tokens; a v1 body names each backend's deployment as the
         * client's request's does, from the same places in the body
         */

        mctx = (r != r->main)
               ? ngx_http_get_module_ctx(r->main, ngx_http_llm_module)
               : NULL;

        if (mctx && mctx->parsed) {
            ctx->parsed = 1;
            ctx->embeddings = mctx->embeddings;
            ctx->has_reserve = mctx->has_reserve;
            ctx->explicit_reserve = mctx->explicit_reserve;
            ctx->prompt_estimate = mctx->prompt_estimate;
            ctx->prompt_tokens = mctx->prompt_tokens;
            ctx->choices = mctx->choices;
            ctx->body = mctx->body;
            ctx->model_start = mctx->model_start;
            ctx->model_end = mctx->model_end;
            ctx->model_found = mctx->model_found;
            ctx->inject_at = mctx->inject_at;
            ctx->inject_usage = mctx->inject_usage;
        }
    }

    /*
     * admitted in another pool (llm_route fallback=, or a proxy_pass that
     * names another upstream): the backend is not one of this pool's
     */

    if (ctx->backend && ctx->pool && ctx->pool != pool) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "llm: a request admitted to pool \"%V\" reached "
                      "upstream \"%V\"; with \"llm_route ... fallback=\" "
                      "use \"proxy_pass http://$llm_pool\"",
                      &ctx->pool->name, &pool->name);
        return NGX_ERROR;
    }

    ctx->pool = pool;
    pd->built_for = ctx->backend;

    /* attempts without llm_route in the location charge too */

    return ngx_http_llm_charge_own(r, ctx);
}


static ngx_int_t
ngx_http_llm_get_peer(ngx_peer_connection_t *pc, void *data)
{
    ngx_http_llm_peer_data_t  *pd = data;

    time_t                        now;
    ngx_msec_t                    wait;
    ngx_uint_t                    i, words, index;
    ngx_http_request_t           *r;
    ngx_http_llm_ctx_t           *ctx;
    ngx_http_llm_backend_t       *b, *backends;
    ngx_http_llm_loc_conf_t      *llcf;
    ngx_http_upstream_rr_peer_t  *peer;

    r = pd->request;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);
    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, pc->log, 0,
                   "get llm peer, try: %ui, attempts: %ui",
                   pc->tries, ctx->attempts);

    now = ngx_time();
    backends = pd->pool->backends.elts;
    words = (pd->pool->backends.nelts + NGX_HTTP_LLM_BITS - 1)
            / NGX_HTTP_LLM_BITS;

    b = NULL;
    peer = NULL;
    index = 0;

    /* the first attempt goes where admission charged the request */

    if (ctx->attempts == 0 && ctx->backend && ctx->charged_at) {
        b = ctx->backend;
        peer = ngx_http_llm_backend_peer(pd, b, now, &index);

        if (peer == NULL) {
            ngx_http_llm_refund(b, ctx);
            ngx_http_llm_backend_done(b, ctx, NGX_HTTP_LLM_DONE_OK, 0, NULL);
            ngx_http_llm_bit_set(pd->tried, b - backends);
            b = NULL;
        }
    }

    while (peer == NULL) {

        /* backends whose addresses are all unusable (down, failed) */

        for (i = 0; i < words; i++) {
            pd->down[i] = 0;
        }

        for (i = 0; i < pd->pool->backends.nelts; i++) {
            if (ngx_http_llm_backend_peer(pd, &backends[i], now, NULL)
                == NULL)
            {
                ngx_http_llm_bit_set(pd->down, i);
            }
        }

        b = ngx_http_llm_choose(pd->pool, ctx, pd->tried, pd->down,
                                llcf->completion_reserve, &wait);

        if (b == NULL) {
            return ngx_http_llm_no_peer(pc, pd, ctx, wait);
        }

        peer = ngx_http_llm_backend_peer(pd, b, now, &index);

        if (peer == NULL) {
            /* cannot happen: the backend was not skipped */
            ngx_http_llm_refund(b, ctx);
            ngx_http_llm_backend_done(b, ctx, NGX_HTTP_LLM_DONE_OK, 0, NULL);
            ngx_http_llm_bit_set(pd->tried, b - backends);
        }
    }

    ngx_http_llm_bit_set(pd->tried, b - backends);

    return ngx_http_llm_attempt(pc, pd, b, peer, index, now);
}


/*
 * No backend for this attempt: $llm_backend keeps naming the last
 * backend tried, and the access log's $upstream_addr names the pool for
 * this one, as nginx's round-robin does
 */

static ngx_int_t
ngx_http_llm_no_peer(ngx_peer_connection_t *pc, ngx_http_llm_peer_data_t *pd,
    ngx_http_llm_ctx_t *ctx, ngx_msec_t wait)
{
    pc->name = &pd->pool->upstream->host;

    if (wait == NGX_MAX_INT32_VALUE) {

        /*
         * none of the backends left is throttled, they are down: a
         * backend that answered this request's 429 says when to retry,
         * else the client gets nginx's 502
         */

        if (ctx->cooled_until == 0) {
            return NGX_BUSY;
        }

        wait = ngx_max((ngx_msec_int_t) (ctx->cooled_until
                                         - ngx_current_msec), 1);
    }

    /* the filter turns nginx's 502 into one 429 for the client */

    ctx->all_throttled = 1;
    ctx->retry_after = wait;

    ngx_http_llm_pool_count(pd->pool, 0);

    if (ctx->throttle == NGX_HTTP_LLM_THROTTLE_NONE) {
        ctx->throttle = NGX_HTTP_LLM_THROTTLE_LOCAL;
    }

    ngx_log_error(NGX_LOG_WARN, pc->log, 0,
                  "llm: no backend of \"%V\" has room after %ui "
                  "attempts, retry in %M ms",
                  &pd->pool->name, ctx->attempts, wait);

    return NGX_BUSY;
}


/*
 * The attempt on backend "b" at its address "peer", counted where
 * nginx's round-robin counts its own, as max_conns and fail_timeout
 * read them there; the request buffer is rebuilt unless it already is
 * this backend's
 */

static ngx_int_t
ngx_http_llm_attempt(ngx_peer_connection_t *pc, ngx_http_llm_peer_data_t *pd,
    ngx_http_llm_backend_t *b, ngx_http_upstream_rr_peer_t *peer,
    ngx_uint_t index, time_t now)
{
    ngx_http_request_t  *r;
    ngx_http_llm_ctx_t  *ctx;

    r = pd->request;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    ctx->backend = b;
    ctx->attempts++;

    pd->rrp.current = peer;
    ngx_http_llm_bit_set(pd->rrp.tried, index);

    if (now - peer->checked > peer->fail_timeout) {
        peer->checked = now;
    }

    peer->conns++;

    pc->sockaddr = peer->sockaddr;
    pc->socklen = peer->socklen;
    pc->name = &peer->name;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, pc->log, 0,
                   "get llm peer: backend \"%V\", %V, charged %ui",
                   &b->name, &peer->name, ctx->charged);

    if (pd->built_for != b || (b->deployment.len && !pd->path_built)) {
        if (ngx_http_llm_rebuild_request(r, pd, b) != NGX_OK) {
            return NGX_ERROR;
        }
    }

#if (NGX_HTTP_SSL)
    /* the name a certificate is verified against, with no proxy_ssl_name */
    r->upstream->ssl_name = b->plain ? pd->pool->upstream->host : b->host;
#endif

    if (!b->plain && ngx_http_llm_credentials(r, b) != NGX_OK) {
        return NGX_ERROR;
    }

    if (pd->pool->keepalive) {
        return ngx_http_llm_keepalive_get(pc, b);
    }

    return NGX_OK;
}


/*
 * A usable address of the backend, round-robin among its addresses:
 * not down, not failed within fail_timeout, under max_conns, not tried.
 * "index" gets the peer's position in the round-robin list.  A backend
 * of an llm_identity without a valid token has none.
 */

static ngx_http_upstream_rr_peer_t *
ngx_http_llm_backend_peer(ngx_http_llm_peer_data_t *pd,
    ngx_http_llm_backend_t *b, time_t now, ngx_uint_t *index)
{
    ngx_str_t                     token;
    ngx_uint_t                    k, n, pos;
    ngx_http_upstream_rr_peer_t  *peer;

    if (b->identity
        && ngx_http_llm_identity_token(b->identity, &token) != NGX_OK)
    {
        return NULL;
    }

    for (k = 0; k < b->npeers; k++) {
        n = (b->next_peer + k) % b->npeers;
        peer = b->peers[n];
        pos = b->first_peer + n;

        if (pd->rrp.tried[pos / NGX_HTTP_LLM_BITS]
            & ((uintptr_t) 1 << pos % NGX_HTTP_LLM_BITS))
        {
            continue;
        }

        if (peer->down) {
            continue;
        }

        if (peer->max_fails && peer->fails >= peer->max_fails
            && now - peer->checked <= peer->fail_timeout)
        {
            continue;
        }

        if (peer->max_conns && peer->conns >= peer->max_conns) {
            continue;
        }

        if (index) {
            b->next_peer = n + 1;
            *index = pos;
        }

        return peer;
    }

    return NULL;
}


/*
 * The request buffer was built once, before the balancer ran; a new
 * backend needs its own Host, credentials and path.  Proxy builds it
 * again from the body chain, with the backend's deployment in place of
 * the client's in the unparsed URI; variables give the new backend's
 * values because ctx->backend already points to it.
 */

static ngx_int_t
ngx_http_llm_rebuild_request(ngx_http_request_t *r,
    ngx_http_llm_peer_data_t *pd, ngx_http_llm_backend_t *b)
{
    off_t                 content_length;
    u_char               *p, *start, *end, *last, *path_end;
    size_t                len;
    ngx_int_t             rc;
    ngx_str_t             saved, base, uri;
    ngx_uint_t            valid, escape, in_path;
    ngx_chain_t          *body;
    ngx_http_upstream_t  *u;
    ngx_http_llm_ctx_t   *ctx;

    static u_char  prefix[] = "/deployments/";

    u = r->upstream;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);
    in_path = 0;

    saved = r->unparsed_uri;
    valid = r->valid_unparsed_uri;
    uri.len = 0;

    if (b->deployment.len) {

        /*
         * the path proxy would send: the client's own, or after a rewrite
         * the escaped new URI and its arguments; and so where the
         * client's has dot segments or escapes ("/x/../", "%2E"): the
         * deployment was read from the URI nginx made of it, and the
         * backend must get that one, not one it would resolve otherwise
         */

        if (valid && !r->complex_uri && !r->quoted_uri) {
            base = saved;

        } else {
            escape = 2 * ngx_escape_uri(NULL, r->uri.data, r->uri.len,
                                        NGX_ESCAPE_URI);

            base.len = r->uri.len + escape
                       + (r->args.len ? r->args.len + 1 : 0);
            base.data = ngx_pnalloc(r->pool, base.len);
            if (base.data == NULL) {
                return NGX_ERROR;
            }

            if (escape) {
                p = (u_char *) ngx_escape_uri(base.data, r->uri.data,
                                              r->uri.len, NGX_ESCAPE_URI);
            } else {
                p = ngx_cpymem(base.data, r->uri.data, r->uri.len);
            }

            if (r->args.len) {
                *p++ = '?';
                ngx_memcpy(p, r->args.data, r->args.len);
            }
        }

        /* in the path only: "/deployments/" in the query is not one */

        last = base.data + base.len;
        path_end = ngx_strlchr(base.data, last, '?');

        if (path_end == NULL) {
            path_end = last;
        }

        p = ngx_strlcasestrn(base.data, path_end, prefix, sizeof(prefix) - 2);

        if (p) {
            start = p + sizeof(prefix) - 1;

            for (end = start; end < path_end && *end != '/'; end++) {
                /* void */
            }

            len = base.len - (end - start) + b->deployment.len;

            uri.data = ngx_pnalloc(r->pool, len);
            if (uri.data == NULL) {
                return NGX_ERROR;
            }

            p = ngx_cpymem(uri.data, base.data, start - base.data);
            p = ngx_cpymem(p, b->deployment.data, b->deployment.len);
            p = ngx_cpymem(p, end, last - end);
            uri.len = p - uri.data;
            in_path = 1;
        }

        pd->path_built = 1;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm rebuild request for \"%V\": \"%V\"", &b->name, &uri);

    if (uri.len) {
        r->unparsed_uri = uri;
        r->valid_unparsed_uri = 1;
    }

    body = r->request_body ? r->request_body->bufs : NULL;
    content_length = r->headers_in.content_length_n;

    if (b->deployment.len && !in_path && ctx->model_end) {

        /* proxy takes the length it sends from the request's */

        body = ngx_http_llm_body_chain(r, ctx, &b->deployment,
                                       &r->headers_in.content_length_n);
        if (body == NULL) {
            return NGX_ERROR;
        }
    }

    u->request_bufs = body;

    rc = u->create_request(r);

    r->unparsed_uri = saved;
    r->valid_unparsed_uri = valid;
    r->headers_in.content_length_n = content_length;

    if (rc != NGX_OK) {
        return NGX_ERROR;
    }

    pd->built_for = b;

    return NGX_OK;
}


static void
ngx_http_llm_free_peer(ngx_peer_connection_t *pc, void *data,
    ngx_uint_t state)
{
    ngx_http_llm_peer_data_t  *pd = data;

    ngx_msec_t               cooldown;
    ngx_uint_t               status;
    ngx_http_request_t      *r;
    ngx_http_upstream_t     *u;
    ngx_http_llm_ctx_t      *ctx;
    ngx_http_llm_backend_t  *b;
    ngx_http_llm_signals_t   sig;

    r = pd->request;
    u = r->upstream;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);
    b = ctx->backend;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, pc->log, 0,
                   "free llm peer %ui %ui", pc->tries, state);

    if (b == NULL) {
        ngx_http_upstream_free_round_robin_peer(pc, &pd->rrp, state);
        return;
    }

    status = (u->state && u->state->header_time != (ngx_msec_t) -1)
             ? u->headers_in.status_n : 0;

    ngx_memzero(&sig, sizeof(ngx_http_llm_signals_t));
    sig.remote_tokens = -1;
    sig.remote_requests = -1;
    sig.utilization = -1;

    ctx->upstream_status = status;

    if (status == NGX_HTTP_TOO_MANY_REQUESTS) {

        /*
         * throttled: Azure charged nothing, the backend is not broken
         * (not a failure for max_fails), it cools down for its Retry-After
         */

        cooldown = ngx_http_llm_cooldown(u, pd->pool, &sig);

        ngx_log_error(NGX_LOG_WARN, pc->log, 0,
                      "llm: backend \"%V\" of \"%V\" answered 429, "
                      "cooling down for %M ms", &b->name, &pd->pool->name,
                      cooldown);

        ngx_http_llm_refund(b, ctx);
        ngx_http_llm_backend_done(b, ctx, NGX_HTTP_LLM_DONE_THROTTLED,
                                  cooldown, &sig);
        ctx->throttle = NGX_HTTP_LLM_THROTTLE_BACKEND;

        if (ctx->cooled_until == 0
            || (ngx_msec_int_t) (ngx_current_msec + cooldown
                                 - ctx->cooled_until) < 0)
        {
            ctx->cooled_until = ngx_current_msec + cooldown;
        }

        state &= ~NGX_PEER_FAILED;

    } else {

        /*
         * a request that never went out (a connect error, the client gone
         * during the connect or the TLS handshake, an error of ours) cost
         * the backend nothing, nor one that it refused before its limiter
         */

        if (!u->request_sent || ngx_http_llm_not_counted(status)) {
            ngx_http_llm_refund(b, ctx);
        }

        if (status) {
            (void) ngx_http_llm_cooldown(u, pd->pool, &sig);
        }

        ngx_http_llm_backend_done(b, ctx, (state & NGX_PEER_FAILED)
                                          ? NGX_HTTP_LLM_DONE_FAILED
                                          : NGX_HTTP_LLM_DONE_OK,
                                  0, &sig);

        /* the log phase corrects a PTU backend's charge to the usage */

        if (!(state & NGX_PEER_FAILED)) {
            ctx->final_charge = ctx->charged;
            ctx->final_at = ctx->charged_at;
        }
    }

    /*
     * the service's id of a throttled or failed attempt, for a support
     * ticket: copied, as the next attempt's reply reuses the buffer
     */

    if ((status == NGX_HTTP_TOO_MANY_REQUESTS || status >= 500)
        && sig.request_id.len)
    {
        ctx->backend_request_id.data = ngx_pstrdup(r->pool, &sig.request_id);
        ctx->backend_request_id.len = ctx->backend_request_id.data
                                      ? sig.request_id.len : 0;
    }

    /* what was not refunded stays in the backend's windows */

    ctx->charged = 0;
    ctx->held = 0;

    if (pd->pool->keepalive) {
        ngx_http_llm_keepalive_save(pc, b, u, state);
    }

    ngx_http_upstream_free_round_robin_peer(pc, &pd->rrp, state);
}


#if (NGX_HTTP_SSL)

/* before a handshake: the backend's server name, then the saved session */

static ngx_int_t
ngx_http_llm_set_session(ngx_peer_connection_t *pc, void *data)
{
    ngx_http_llm_peer_data_t  *pd = data;

    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(pd->request, ngx_http_llm_module);

    if (ctx && ctx->backend && !ctx->backend->plain
        && ngx_http_llm_ssl_server_name(pc->connection, ctx->backend)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_upstream_set_round_robin_peer_session(pc, &pd->rrp);
}

#endif


/*
 * A wrong key, a forbidden resource or a deployment that does not exist
 * is refused before Azure's limiter: it counts in no window.
 */

static ngx_uint_t
ngx_http_llm_not_counted(ngx_uint_t status)
{
    return status == NGX_HTTP_UNAUTHORIZED || status == NGX_HTTP_FORBIDDEN
           || status == NGX_HTTP_NOT_FOUND;
}


/*
 * How long a throttled backend rests: retry-after-ms (or Azure's other
 * spelling, x-ms-retry-after-ms), else retry-after (seconds), else
 * x-ratelimit-reset-tokens (seconds or a duration such as "6m0s" or
 * "17ms"), else the pool's default; never over the cap.  Also picks up
 * the backend's remaining-* headers, a PTU's utilization and the
 * service's request id.
 */

static ngx_msec_t
ngx_http_llm_cooldown(ngx_http_upstream_t *u, ngx_http_llm_pool_t *pool,
    ngx_http_llm_signals_t *sig)
{
    ngx_int_t         n, ms_value, s_value, reset_value;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;
    ngx_msec_t        cooldown;

    ms_value = -1;
    s_value = -1;
    reset_value = -1;

    part = &u->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len < 11
            || ((h[i].key.data[0] | 0x20) != 'r'
                && (h[i].key.data[0] | 0x20) != 'x'
                && (h[i].key.data[0] | 0x20) != 'a'))
        {
            continue;
        }

        if ((h[i].key.len == sizeof("retry-after-ms") - 1
             && ngx_strncasecmp(h[i].key.data, (u_char *) "retry-after-ms",
                                h[i].key.len) == 0)
            || (h[i].key.len == sizeof("x-ms-retry-after-ms") - 1
                && ngx_strncasecmp(h[i].key.data,
                                   (u_char *) "x-ms-retry-after-ms",
                                   h[i].key.len) == 0))
        {
            ms_value = ngx_http_llm_parse_delay(&h[i].value, 1);
            continue;
        }

        if (h[i].key.len == sizeof("azure-openai-deployment-utilization") - 1
            && ngx_strncasecmp(h[i].key.data,
                          (u_char *) "azure-openai-deployment-utilization",
                          h[i].key.len) == 0)
        {
            sig->utilization = ngx_http_llm_parse_permille(&h[i].value);
            continue;
        }

        /* apim-request-id wins over x-request-id, whichever comes first */

        if (h[i].key.len == sizeof("apim-request-id") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "apim-request-id",
                               h[i].key.len) == 0)
        {
            sig->request_id = h[i].value;
            continue;
        }

        if (h[i].key.len == sizeof("x-request-id") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "x-request-id",
                               h[i].key.len) == 0)
        {
            if (sig->request_id.len == 0) {
                sig->request_id = h[i].value;
            }

            continue;
        }

        if (h[i].key.len == sizeof("retry-after") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "retry-after",
                               h[i].key.len) == 0)
        {
            s_value = ngx_http_llm_parse_delay(&h[i].value, 1000);
            continue;
        }

        if ((h[i].key.len == sizeof("x-ratelimit-reset-tokens") - 1
             && ngx_strncasecmp(h[i].key.data,
                                (u_char *) "x-ratelimit-reset-tokens",
                                h[i].key.len) == 0)
            || (h[i].key.len == sizeof("x-rate-limit-reset-tokens") - 1
                && ngx_strncasecmp(h[i].key.data,
                                   (u_char *) "x-rate-limit-reset-tokens",
                                   h[i].key.len) == 0))
        {
            reset_value = ngx_http_llm_parse_duration(&h[i].value);
            continue;
        }

        if (h[i].key.len == sizeof("x-ratelimit-remaining-tokens") - 1
            && ngx_strncasecmp(h[i].key.data,
                               (u_char *) "x-ratelimit-remaining-tokens",
                               h[i].key.len) == 0)
        {
            n = ngx_atoi(h[i].value.data, h[i].value.len);
            sig->remote_tokens = (n == NGX_ERROR) ? -1 : n;
            continue;
        }

        if (h[i].key.len == sizeof("x-ratelimit-remaining-requests") - 1
            && ngx_strncasecmp(h[i].key.data,
                               (u_char *) "x-ratelimit-remaining-requests",
                               h[i].key.len) == 0)
        {
            n = ngx_atoi(h[i].value.data, h[i].value.len);
            sig->remote_requests = (n == NGX_ERROR) ? -1 : n;
            continue;
        }
    }

    if (ms_value > 0) {
        cooldown = ms_value;

    } else if (s_value > 0) {
        cooldown = s_value;

    } else if (reset_value > 0) {
        cooldown = reset_value;

    } else {
        cooldown = pool->cooldown;
    }

    return ngx_min(cooldown, pool->cooldown_max);
}
