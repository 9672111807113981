
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_keepalive.h"


/*
 * Idle connections kept per backend, not per address: two backends
 * behind one address (Azure resources of a region share front ends)
 * must never share a TLS connection made with the other's name.  Each
 * worker has "keepalive=" slots for the pool; a slot is in the pool's
 * free queue, or in both its backend's idle queue and the pool's LRU.
 */


struct ngx_http_llm_idle_s {
    ngx_queue_t                  backend_queue;
    ngx_queue_t                  pool_queue;
    ngx_http_llm_backend_t      *backend;
    ngx_connection_t            *connection;
    socklen_t                    socklen;
    ngx_sockaddr_t               sockaddr;
};


static void ngx_http_llm_keepalive_release(ngx_http_llm_idle_t *idle);
static void ngx_http_llm_keepalive_close_handler(ngx_event_t *ev);
static void ngx_http_llm_keepalive_dummy_handler(ngx_event_t *ev);
static void ngx_http_llm_keepalive_close(ngx_connection_t *c);


ngx_int_t
ngx_http_llm_keepalive_init(ngx_conf_t *cf, ngx_http_llm_pool_t *pool)
{
    ngx_uint_t               i;
    ngx_http_llm_idle_t     *idle;
    ngx_http_llm_backend_t  *b;

    ngx_queue_init(&pool->idle_free);
    ngx_queue_init(&pool->idle_lru);

    b = pool->backends.elts;

    for (i = 0; i < pool->backends.nelts; i++) {
        ngx_queue_init(&b[i].idle);
    }

    idle = ngx_pcalloc(cf->pool, pool->keepalive * sizeof(ngx_http_llm_idle_t));
    if (idle == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < pool->keepalive; i++) {
        ngx_queue_insert_head(&pool->idle_free, &idle[i].pool_queue);
    }

    return NGX_OK;
}


/* an idle connection of this backend to this address, if there is one */

ngx_int_t
ngx_http_llm_keepalive_get(ngx_peer_connection_t *pc,
    ngx_http_llm_backend_t *b)
{
    ngx_queue_t          *q;
    ngx_connection_t     *c;
    ngx_http_llm_idle_t  *idle;

    for (q = ngx_queue_head(&b->idle);
         q != ngx_queue_sentinel(&b->idle);
         q = ngx_queue_next(q))
    {
        idle = ngx_queue_data(q, ngx_http_llm_idle_t, backend_queue);

        if (ngx_memn2cmp((u_char *) &idle->sockaddr, (u_char *) pc->sockaddr,
                         idle->socklen, pc->socklen)
            != 0)
        {
            continue;
        }

        c = idle->connection;

        ngx_queue_remove(&idle->backend_queue);
        ngx_queue_remove(&idle->pool_queue);
        ngx_queue_insert_head(&b->pool->idle_free, &idle->pool_queue);

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, pc->log, 0,
                       "llm keepalive: backend \"%V\" reuses %p",
                       &b->name, c);

        c->idle = 0;
        c->sent = 0;
        c->data = NULL;
        c->log = pc->log;
        c->read->log = pc->log;
        c->write->log = pc->log;
        c->pool->log = pc->log;

        if (c->read->timer_set) {
            ngx_del_timer(c->read);
        }

        pc->connection = c;
        pc->cached = 1;

        return NGX_DONE;
    }

    return NGX_OK;
}


/* after a response that leaves the connection reusable, park it */

void
ngx_http_llm_keepalive_save(ngx_peer_connection_t *pc,
    ngx_http_llm_backend_t *b, ngx_http_upstream_t *u, ngx_uint_t state)
{
    ngx_queue_t          *q;
    ngx_connection_t     *c;
    ngx_http_llm_pool_t  *pool;
    ngx_http_llm_idle_t  *idle;

    c = pc->connection;
    pool = b->pool;

    if ((state & NGX_PEER_FAILED)
        || c == NULL
        || c->read->eof || c->read->error || c->read->timedout
        || c->write->error || c->write->timedout
        || !u->keepalive
        || !u->request_body_sent
        || c->requests >= pool->keepalive_requests
        || ngx_terminate || ngx_exiting
        || ngx_handle_read_event(c->read, 0) != NGX_OK)
    {
        return;
    }

    if (ngx_queue_empty(&pool->idle_free)) {
        /* the pool's least recently parked connection makes room */
        q = ngx_queue_last(&pool->idle_lru);
        idle = ngx_queue_data(q, ngx_http_llm_idle_t, pool_queue);
        ngx_http_llm_keepalive_close(idle->connection);
        ngx_queue_remove(&idle->backend_queue);
        ngx_queue_remove(&idle->pool_queue);

    } else {
        q = ngx_queue_head(&pool->idle_free);
        ngx_queue_remove(q);
        idle = ngx_queue_data(q, ngx_http_llm_idle_t, pool_queue);
    }

    ngx_queue_insert_head(&pool->idle_lru, &idle->pool_queue);
    ngx_queue_insert_head(&b->idle, &idle->backend_queue);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, pc->log, 0,
                   "llm keepalive: backend \"%V\" parks %p", &b->name, c);

    idle->backend = b;
    idle->connection = c;
    idle->socklen = pc->socklen;
    ngx_memcpy(&idle->sockaddr, pc->sockaddr, pc->socklen);

    pc->connection = NULL;

    c->read->delayed = 0;
    ngx_add_timer(c->read, pool->keepalive_timeout);

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    c->write->handler = ngx_http_llm_keepalive_dummy_handler;
    c->read->handler = ngx_http_llm_keepalive_close_handler;

    c->data = idle;
    c->idle = 1;
    c->log = ngx_cycle->log;
    c->read->log = ngx_cycle->log;
    c->write->log = ngx_cycle->log;
    c->pool->log = ngx_cycle->log;

    /* the backend may have closed it already, or sent something */

    if (c->read->ready) {
        ngx_http_llm_keepalive_close_handler(c->read);
    }
}


static void
ngx_http_llm_keepalive_release(ngx_http_llm_idle_t *idle)
{
    ngx_queue_remove(&idle->backend_queue);
    ngx_queue_remove(&idle->pool_queue);
    ngx_queue_insert_head(&idle->backend->pool->idle_free, &idle->pool_queue);
}


/*
 * An idle connection that becomes readable was closed by the backend or
 * carries bytes nobody asked for; either way it is closed.
 */

static void
ngx_http_llm_keepalive_close_handler(ngx_event_t *ev)
{
    int                   n;
    char                  buf[1];
    ngx_connection_t     *c;
    ngx_http_llm_idle_t  *idle;

    c = ev->data;
    idle = c->data;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ev->log, 0,
                   "llm keepalive close handler");

    if (!c->close && !c->read->timedout) {
        n = recv(c->fd, buf, 1, MSG_PEEK);

        if (n == -1 && ngx_socket_errno == NGX_EAGAIN) {
            ev->ready = 0;

            if (ngx_handle_read_event(c->read, 0) == NGX_OK) {
                return;
            }
        }
    }

    ngx_http_llm_keepalive_close(c);
    ngx_http_llm_keepalive_release(idle);
}


static void
ngx_http_llm_keepalive_dummy_handler(ngx_event_t *ev)
{
    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ev->log, 0,
                   "llm keepalive dummy handler");
}


static void
ngx_http_llm_keepalive_close(ngx_connection_t *c)
{
#if (NGX_HTTP_SSL)

    if (c->ssl) {
        c->ssl->no_wait_shutdown = 1;
        c->ssl->no_send_shutdown = 1;

        if (ngx_ssl_shutdown(c) == NGX_AGAIN) {
            c->ssl->handler = ngx_http_llm_keepalive_close;
            return;
        }
    }

#endif

    ngx_destroy_pool(c->pool);
    ngx_close_connection(c);
}
