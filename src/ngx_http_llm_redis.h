
/*
 * Copyright (C) nginx-llm-router authors
 */


#ifndef _NGX_HTTP_LLM_REDIS_H_INCLUDED_
#define _NGX_HTTP_LLM_REDIS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>
#include <hiredis/hiredis.h>


/*
 * A worker's connection to Redis, on nginx's own event loop: nginx
 * connects, reads, writes and times out; hiredis only formats commands
 * and parses replies.  Commands are pipelined; each reply goes to the
 * handler of the command it answers, or NULL when the connection failed
 * before it came.
 */

typedef struct {
    ngx_addr_t                  *addr;
    ngx_str_t                    name;       /* host:port/db, never the
                                                password */
    ngx_str_t                    password;
    ngx_uint_t                   db;
    ngx_msec_t                   timeout;

    /* TLS, for a "rediss" URL, and the redis_ssl_ options */
    ngx_flag_t                   tls;
    ngx_flag_t                   ssl_verify;
    ngx_str_t                    ssl_name;   /* SNI, and the name checked */
    ngx_flag_t                   ssl_address; /* ssl_name is an IP address:
                                                 no SNI, an IP SAN */
    ngx_str_t                    ssl_certificate;
    ngx_str_t                    ssl_certificate_key;
    ngx_str_t                    ssl_trusted_certificate;
#if (NGX_SSL)
    ngx_ssl_t                   *ssl;
#endif
} ngx_http_llm_redis_conf_t;


typedef void (*ngx_http_llm_redis_handler_pt)(void *data, redisReply *reply);

typedef struct ngx_http_llm_redis_s  ngx_http_llm_redis_t;


#define NGX_HTTP_LLM_REDIS_CONNECTING  0  /* not connected yet */
#define NGX_HTTP_LLM_REDIS_READY       1
#define NGX_HTTP_LLM_REDIS_DOWN        2  /* failed; trying again */


char *ngx_http_llm_redis_parse(ngx_conf_t *cf, ngx_str_t *url,
    ngx_http_llm_redis_conf_t *rcf);
char *ngx_http_llm_redis_password_file(ngx_conf_t *cf, ngx_str_t *path,
    ngx_http_llm_redis_conf_t *rcf);
char *ngx_http_llm_redis_ssl_option(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_llm_redis_conf_t *rcf);
char *ngx_http_llm_redis_ssl_init(ngx_conf_t *cf,
    ngx_http_llm_redis_conf_t *rcf);

ngx_http_llm_redis_t *ngx_http_llm_redis_create(ngx_cycle_t *cycle,
    ngx_http_llm_redis_conf_t *rcf, ngx_str_t *script,
    ngx_http_llm_redis_handler_pt state_handler, void *data);
ngx_int_t ngx_http_llm_redis_send(ngx_http_llm_redis_t *rs, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_llm_redis_handler_pt handler, void *data);
ngx_uint_t ngx_http_llm_redis_state(ngx_http_llm_redis_t *rs);
u_char *ngx_http_llm_redis_script_sha(ngx_http_llm_redis_t *rs);
const char *ngx_http_llm_redis_error(ngx_http_llm_redis_t *rs);
void ngx_http_llm_redis_reject(ngx_http_llm_redis_t *rs, const char *what,
    redisReply *reply);
ngx_uint_t ngx_http_llm_redis_server_error(redisReply *reply);
void ngx_http_llm_redis_drain(ngx_http_llm_redis_t *rs);
ngx_int_t ngx_http_llm_redis_wait(ngx_http_llm_redis_t *rs);


#endif /* _NGX_HTTP_LLM_REDIS_H_INCLUDED_ */
