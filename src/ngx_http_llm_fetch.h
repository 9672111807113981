
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_FETCH_H_INCLUDED_
#define _NGX_HTTP_LLM_FETCH_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>


#define NGX_HTTP_LLM_FETCH_MAX  (64 * 1024)   /* the longest reply read */


typedef struct ngx_http_llm_fetch_s  ngx_http_llm_fetch_t;

typedef void (*ngx_http_llm_fetch_handler_pt)(ngx_http_llm_fetch_t *f);


/* one HTTP/1.1 exchange: a request sent, a reply read to its end */

struct ngx_http_llm_fetch_s {
    ngx_addr_t                    *addr;
    ngx_str_t                     *name;       /* for logs, TLS and SNI */
#if (NGX_SSL)
    ngx_ssl_t                     *ssl;        /* NULL: plain HTTP */
#endif
    ngx_uint_t                     address;    /* name is an IP address */
    ngx_str_t                      request;    /* every byte to send */
    ngx_msec_t                     timeout;    /* for the whole exchange */
    ngx_log_t                     *log;

    ngx_http_llm_fetch_handler_pt  handler;    /* called once, at the end */
    void                          *data;

    /* the outcome, for the handler */
    ngx_uint_t                     status;     /* 0: no reply */
    ngx_str_t                      body;       /* chunked encoding undone */
    u_char                        *error;      /* NULL: a reply was read */

    ngx_peer_connection_t          peer;
    ngx_event_t                    timer;
    size_t                         sent;
    u_char                        *buf;
    size_t                         len;
    u_char                         errbuf[160];
};


void ngx_http_llm_fetch(ngx_http_llm_fetch_t *f);
void ngx_http_llm_fetch_close(ngx_http_llm_fetch_t *f);


#endif /* _NGX_HTTP_LLM_FETCH_H_INCLUDED_ */
