
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>
#include <openssl/sha.h>
#include <poll.h>
#include "ngx_http_llm_redis.h"
#include "ngx_http_llm_tls.h"


/*
 * One connection per worker and zone.  Replies come in the order of the
 * commands, so the handlers wait in a ring; a command that finds the
 * ring or the output buffer full is refused at once rather than queued
 * without bound, and its caller does without Redis for this once.
 */

#define NGX_HTTP_LLM_REDIS_OUT       (64 * 1024)
#define NGX_HTTP_LLM_REDIS_PENDING   1024
#define NGX_HTTP_LLM_REDIS_BACKOFF   1000   /* the longest, in ms */
#define NGX_HTTP_LLM_REDIS_HEALTHY   10000  /* without a failure: well */

/* no reply the module asks for has more elements than a lease's four */
#define NGX_HTTP_LLM_REDIS_ELEMENTS  64


#if (HIREDIS_MAJOR < 1)
static redisReplyObjectFunctions  ngx_http_llm_redis_functions;
static void *(*ngx_http_llm_redis_create_array)(const redisReadTask *task,
    int elements);
#endif


typedef struct {
    ngx_http_llm_redis_handler_pt  handler;
    void                          *data;
    ngx_msec_t                     queued;
} ngx_http_llm_redis_pending_t;


struct ngx_http_llm_redis_s {
    ngx_http_llm_redis_conf_t     *conf;
    ngx_log_t                     *log;
    ngx_peer_connection_t          peer;
    redisReader                   *reader;

    u_char                        *out;
    size_t                         out_pos;
    size_t                         out_last;

    ngx_http_llm_redis_pending_t   pending[NGX_HTTP_LLM_REDIS_PENDING];
    ngx_uint_t                     head;
    ngx_uint_t                     npending;

    ngx_str_t                     *script;
    u_char                         sha[SHA_DIGEST_LENGTH * 2];

    ngx_event_t                    retry;
    ngx_msec_t                     backoff;
    ngx_uint_t                     state;
    char                           error[128];

    /* a failure was said: the next are told at info, until it works */
    unsigned                       warned:1;
    ngx_msec_t                     failed;     /* the last failure */

    ngx_http_llm_redis_handler_pt  state_handler;
    void                          *state_data;
};


static redisReader *ngx_http_llm_redis_reader(void);
#if (HIREDIS_MAJOR < 1)
static void *ngx_http_llm_redis_array(const redisReadTask *task,
    int elements);
#endif
static void ngx_http_llm_redis_connect(ngx_event_t *ev);
static void ngx_http_llm_redis_write_handler(ngx_event_t *wev);
static void ngx_http_llm_redis_read_handler(ngx_event_t *rev);
static void ngx_http_llm_redis_fail(ngx_http_llm_redis_t *rs,
    const char *error);
static void ngx_http_llm_redis_fail_errno(ngx_http_llm_redis_t *rs,
    const char *what, ngx_err_t err);
static ngx_int_t ngx_http_llm_redis_push(ngx_http_llm_redis_t *rs, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_llm_redis_handler_pt handler, void *data);
static void ngx_http_llm_redis_setup_done(void *data, redisReply *reply);
static void ngx_http_llm_redis_script_done(void *data, redisReply *reply);
static void ngx_http_llm_redis_flush(ngx_http_llm_redis_t *rs);
static void ngx_http_llm_redis_close(ngx_http_llm_redis_t *rs);
static ngx_int_t ngx_http_llm_redis_deadline(ngx_http_llm_redis_t *rs,
    ngx_event_t *rev);
static void ngx_http_llm_redis_abort(ngx_http_llm_redis_t *rs);
static void ngx_http_llm_redis_close_connection(ngx_http_llm_redis_t *rs);
#if (NGX_SSL)
static void ngx_http_llm_redis_ssl_start(ngx_http_llm_redis_t *rs);
static void ngx_http_llm_redis_ssl_done(ngx_connection_t *c);
#endif


ngx_http_llm_redis_t *
ngx_http_llm_redis_create(ngx_cycle_t *cycle, ngx_http_llm_redis_conf_t *rcf,
    ngx_str_t *script, ngx_http_llm_redis_handler_pt state_handler,
    void *data)
{
    u_char                 md[SHA_DIGEST_LENGTH];
    ngx_http_llm_redis_t  *rs;

    rs = ngx_pcalloc(cycle->pool, sizeof(ngx_http_llm_redis_t));
    if (rs == NULL) {
        return NULL;
    }

    rs->out = ngx_palloc(cycle->pool, NGX_HTTP_LLM_REDIS_OUT);
    if (rs->out == NULL) {
        return NULL;
    }

    rs->reader = ngx_http_llm_redis_reader();
    if (rs->reader == NULL) {
        return NULL;
    }

    rs->conf = rcf;
    rs->log = cycle->log;
    rs->script = script;
    rs->state_handler = state_handler;
    rs->state_data = data;
    rs->state = NGX_HTTP_LLM_REDIS_CONNECTING;

    /* EVALSHA names a script by the SHA-1 of its text */

    SHA1(script->data, script->len, md);
    ngx_hex_dump(rs->sha, md, SHA_DIGEST_LENGTH);

    rs->retry.handler = ngx_http_llm_redis_connect;
    rs->retry.data = rs;
    rs->retry.log = cycle->log;
    rs->retry.cancelable = 1;

    ngx_add_timer(&rs->retry, 1);

    return rs;
}


ngx_uint_t
ngx_http_llm_redis_state(ngx_http_llm_redis_t *rs)
{
    return rs->state;
}


u_char *
ngx_http_llm_redis_script_sha(ngx_http_llm_redis_t *rs)
{
    return rs->sha;
}


const char *
ngx_http_llm_redis_error(ngx_http_llm_redis_t *rs)
{
    return rs->error;
}


static void
ngx_http_llm_redis_connect(ngx_event_t *ev)
{
    ngx_int_t              rc;
    ngx_connection_t      *c;
    ngx_http_llm_redis_t  *rs;

    const char  *argv[3];
    size_t       argvlen[3];
    char         db[NGX_INT_T_LEN];

    rs = ev->data;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ngx_memzero(&rs->peer, sizeof(ngx_peer_connection_t));

    rs->peer.sockaddr = rs->conf->addr->sockaddr;
    rs->peer.socklen = rs->conf->addr->socklen;
    rs->peer.name = &rs->conf->name;
    rs->peer.get = ngx_event_get_peer;
    rs->peer.log = rs->log;
    /* one warning says Redis is away (below), not every attempt */
    rs->peer.log_error = NGX_ERROR_INFO;

    rc = ngx_event_connect_peer(&rs->peer);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        ngx_http_llm_redis_fail_errno(rs, "cannot connect",
                                      ngx_socket_errno);
        return;
    }

    c = rs->peer.connection;
    c->data = rs;
    c->read->handler = ngx_http_llm_redis_read_handler;
    c->write->handler = ngx_http_llm_redis_write_handler;
    c->log = rs->log;
    c->read->log = rs->log;
    c->write->log = rs->log;

    /* Redis answers these first, in this order, before any budget */

    rs->out_pos = 0;
    rs->out_last = 0;

    if (rs->conf->password.len) {
        argv[0] = "AUTH";
        argvlen[0] = 4;
        argv[1] = (const char *) rs->conf->password.data;
        argvlen[1] = rs->conf->password.len;

        if (ngx_http_llm_redis_push(rs, 2, argv, argvlen,
                                    ngx_http_llm_redis_setup_done, rs)
            != NGX_OK)
        {
            ngx_http_llm_redis_fail(rs, "no memory");
            return;
        }
    }

    if (rs->conf->db) {
        argv[0] = "SELECT";
        argvlen[0] = 6;
        argv[1] = db;
        argvlen[1] = ngx_sprintf((u_char *) db, "%ui", rs->conf->db)
                     - (u_char *) db;

        if (ngx_http_llm_redis_push(rs, 2, argv, argvlen,
                                    ngx_http_llm_redis_setup_done, rs)
            != NGX_OK)
        {
            ngx_http_llm_redis_fail(rs, "no memory");
            return;
        }
    }

    argv[0] = "SCRIPT";
    argvlen[0] = 6;
    argv[1] = "LOAD";
    argvlen[1] = 4;
    argv[2] = (const char *) rs->script->data;
    argvlen[2] = rs->script->len;

    if (ngx_http_llm_redis_push(rs, 3, argv, argvlen,
                                ngx_http_llm_redis_script_done, rs)
        != NGX_OK)
    {
        ngx_http_llm_redis_fail(rs, "no memory");
        return;
    }

    ngx_add_timer(c->read, rs->conf->timeout);

    if (rc == NGX_AGAIN) {
        /* the write handler goes on once connected */
        return;
    }

#if (NGX_SSL)
    if (rs->conf->ssl) {
        ngx_http_llm_redis_ssl_start(rs);
        return;
    }
#endif

    ngx_http_llm_redis_flush(rs);
}


#if (NGX_SSL)

static void
ngx_http_llm_redis_ssl_start(ngx_http_llm_redis_t *rs)
{
    ngx_int_t          rc;
    const char        *error;
    ngx_connection_t  *c;

    c = rs->peer.connection;

    rc = ngx_http_llm_tls_start(c, rs->conf->ssl, &rs->conf->ssl_name,
                                rs->conf->ssl_address,
                                ngx_http_llm_redis_ssl_done, &error);

    if (rc == NGX_ERROR) {
        ngx_http_llm_redis_fail(rs, error);
        return;
    }

    if (rc == NGX_OK) {
        ngx_http_llm_redis_ssl_done(c);
    }
}


/* the handshake's end: Redis's certificate is checked, as proxy_ssl_verify
 * checks a backend's, before the first command goes out */

static void
ngx_http_llm_redis_ssl_done(ngx_connection_t *c)
{
    ngx_http_llm_redis_t  *rs;

    rs = c->data;

    if (ngx_http_llm_tls_check(c, rs->conf->ssl_verify ? &rs->conf->ssl_name
                                                       : NULL,
                               rs->conf->ssl_address, (u_char *) rs->error,
                               sizeof(rs->error))
        != NULL)
    {
        ngx_http_llm_redis_fail(rs, NULL);
        return;
    }

    c->read->handler = ngx_http_llm_redis_read_handler;
    c->write->handler = ngx_http_llm_redis_write_handler;

    ngx_http_llm_redis_flush(rs);
}

#endif


/* AUTH and SELECT: an error here is the configuration's, said once */

static void
ngx_http_llm_redis_setup_done(void *data, redisReply *reply)
{
    ngx_http_llm_redis_t  *rs = data;

    size_t       n;
    u_char      *p, *q, *last;
    const char  *hidden;

    if (reply && reply->type == REDIS_REPLY_ERROR) {

        /*
         * the error goes to the log and to llm_status: not what it may
         * repeat of AUTH's argument, the password (Redis's words for a
         * command it does not know end "with args beginning with: ...",
         * and a proxy in front of it may say anything)
         */

        p = (u_char *) reply->str;
        last = p + reply->len;
        hidden = "";

        q = ngx_strlcasestrn(p, last, (u_char *) "with args", 9 - 1);
        if (q) {
            last = q;
        }

        /* its first bytes anywhere, a cut copy too: all of it hidden */

        n = ngx_min(rs->conf->password.len, 6);

        if (n && ngx_strlcasestrn(p, last, rs->conf->password.data, n - 1)) {
            last = p;
            hidden = "an error that repeats the password, not shown";
        }

        last = ngx_min(last, p + 80);

        ngx_snprintf((u_char *) rs->error, sizeof(rs->error) - 1,
                     "refused the connection's set-up: %*s%s%Z",
                     (size_t) (last - p), p, hidden);
        ngx_http_llm_redis_fail(rs, NULL);
    }
}


static void
ngx_http_llm_redis_script_done(void *data, redisReply *reply)
{
    ngx_http_llm_redis_t  *rs = data;

    ngx_uint_t  level;

    if (reply == NULL) {
        return;
    }

    if (reply->type != REDIS_REPLY_STRING
        || reply->len != sizeof(rs->sha)
        || ngx_strncmp(reply->str, rs->sha, sizeof(rs->sha)) != 0)
    {
        ngx_snprintf((u_char *) rs->error, sizeof(rs->error) - 1,
                     "did not load the script: %*s%Z",
                     ngx_min(reply->len, 80),
                     reply->str ? reply->str : "");
        ngx_http_llm_redis_fail(rs, NULL);
        return;
    }

    if (rs->state != NGX_HTTP_LLM_REDIS_READY) {
        level = rs->warned ? NGX_LOG_INFO : NGX_LOG_NOTICE;
        ngx_log_error(level, rs->log, 0, "llm: redis %V: connected",
                      &rs->conf->name);
    }

    rs->state = NGX_HTTP_LLM_REDIS_READY;
    rs->error[0] = '\0';

    if (rs->state_handler) {
        rs->state_handler(rs->state_data, NULL);
    }
}


ngx_int_t
ngx_http_llm_redis_send(ngx_http_llm_redis_t *rs, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_llm_redis_handler_pt handler, void *data)
{
    if (rs->state != NGX_HTTP_LLM_REDIS_READY) {
        return NGX_DECLINED;
    }

    if (ngx_http_llm_redis_push(rs, argc, argv, argvlen, handler, data)
        != NGX_OK)
    {
        return NGX_BUSY;
    }

    /* commands of one turn of the event loop go out together */

    if (!rs->peer.connection->write->posted) {
        ngx_post_event(rs->peer.connection->write, &ngx_posted_events);
    }

    if (!rs->peer.connection->read->timer_set) {
        ngx_add_timer(rs->peer.connection->read, rs->conf->timeout);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_redis_push(ngx_http_llm_redis_t *rs, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_llm_redis_handler_pt handler, void *data)
{
    char                          *cmd;
    long long                      len;
    ngx_http_llm_redis_pending_t  *p;

    if (rs->npending == NGX_HTTP_LLM_REDIS_PENDING) {
        return NGX_BUSY;
    }

    /*
     * the sds formatter, not redisFormatCommandArgv(): that one writes
     * each length with sprintf(), half the cost of a lease's report
     * (callgrind); sds is a char * in every version of hiredis
     */

    cmd = NULL;

    len = redisFormatSdsCommandArgv(&cmd, argc, argv, argvlen);
    if (len < 0 || cmd == NULL) {
        return NGX_ERROR;
    }

    if (rs->out_pos == rs->out_last) {
        rs->out_pos = 0;
        rs->out_last = 0;
    }

    if ((size_t) len > NGX_HTTP_LLM_REDIS_OUT - rs->out_last) {
        /* room at the front, where the sent bytes were */

        ngx_memmove(rs->out, rs->out + rs->out_pos,
                    rs->out_last - rs->out_pos);
        rs->out_last -= rs->out_pos;
        rs->out_pos = 0;

        if ((size_t) len > NGX_HTTP_LLM_REDIS_OUT - rs->out_last) {
            redisFreeSdsCommand(cmd);
            return NGX_BUSY;
        }
    }

    ngx_memcpy(rs->out + rs->out_last, cmd, len);
    rs->out_last += len;

    redisFreeSdsCommand(cmd);

    p = &rs->pending[(rs->head + rs->npending) % NGX_HTTP_LLM_REDIS_PENDING];
    p->handler = handler;
    p->data = data;
    p->queued = ngx_current_msec;
    rs->npending++;

    return NGX_OK;
}


static void
ngx_http_llm_redis_write_handler(ngx_event_t *wev)
{
    ngx_connection_t      *c;
    ngx_http_llm_redis_t  *rs;

    c = wev->data;
    rs = c->data;

    if (wev->timedout) {
        ngx_http_llm_redis_fail(rs, "timed out");
        return;
    }

#if (NGX_SSL)
    if (rs->conf->ssl && c->ssl == NULL) {
        int        err;
        socklen_t  len;

        /* connected, or not: the socket says which */

        err = 0;
        len = sizeof(int);

        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len)
            == -1)
        {
            err = ngx_socket_errno;
        }

        if (err) {
            ngx_http_llm_redis_fail_errno(rs, "cannot connect", err);
            return;
        }

        ngx_http_llm_redis_ssl_start(rs);
        return;
    }
#endif

    ngx_http_llm_redis_flush(rs);
}


static void
ngx_http_llm_redis_flush(ngx_http_llm_redis_t *rs)
{
    ssize_t            n;
    ngx_connection_t  *c;

    c = rs->peer.connection;

    while (rs->out_pos < rs->out_last) {
        n = c->send(c, rs->out + rs->out_pos, rs->out_last - rs->out_pos);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR || n == 0) {
            ngx_http_llm_redis_fail_errno(rs,
                                          c->ssl ? "cannot send over TLS"
                                                 : "cannot send",
                                          ngx_socket_errno);
            return;
        }

        rs->out_pos += n;
    }

    if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
        ngx_http_llm_redis_fail(rs, "cannot send");
    }
}


static void
ngx_http_llm_redis_read_handler(ngx_event_t *rev)
{
    u_char                         buf[16384];
    void                          *reply;
    ssize_t                        n;
    ngx_connection_t              *c;
    ngx_http_llm_redis_t          *rs;
    ngx_http_llm_redis_pending_t   p;

    c = rev->data;
    rs = c->data;

    if (rev->timedout) {
        rev->timedout = 0;

        if (ngx_http_llm_redis_deadline(rs, rev) == NGX_ERROR) {
            ngx_http_llm_redis_fail(rs, "timed out");
            return;
        }
    }

    for ( ;; ) {
        n = c->recv(c, buf, sizeof(buf));

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR) {
            ngx_http_llm_redis_fail_errno(rs,
                                          c->ssl ? "cannot read over TLS"
                                                 : "cannot read",
                                          ngx_socket_errno);
            return;
        }

        if (n == 0) {
            ngx_http_llm_redis_fail(rs, "closed the connection");
            return;
        }

        if (redisReaderFeed(rs->reader, (const char *) buf, n) != REDIS_OK) {
            ngx_http_llm_redis_fail(rs, "sent a reply that is not RESP");
            return;
        }

        for ( ;; ) {
            reply = NULL;

            if (redisReaderGetReply(rs->reader, &reply) != REDIS_OK) {
                ngx_http_llm_redis_fail(rs, "sent a reply that is not RESP "
                                        "or longer than any asked for");
                return;
            }

            if (reply == NULL) {
                break;
            }

            if (rs->npending == 0) {
                freeReplyObject(reply);
                ngx_http_llm_redis_fail(rs, "sent a reply nobody asked for");
                return;
            }

            p = rs->pending[rs->head];
            rs->head = (rs->head + 1) % NGX_HTTP_LLM_REDIS_PENDING;
            rs->npending--;

            /* the script went away (SCRIPT FLUSH, a failover): again */

            if (((redisReply *) reply)->type == REDIS_REPLY_ERROR
                && ((redisReply *) reply)->len >= 8
                && ngx_strncmp(((redisReply *) reply)->str, "NOSCRIPT", 8)
                   == 0)
            {
                freeReplyObject(reply);
                p.handler(p.data, NULL);
                ngx_http_llm_redis_fail(rs, "lost the script");
                return;
            }

            p.handler(p.data, reply);
            freeReplyObject(reply);

            if (rs->peer.connection == NULL) {
                /* the handler failed the connection */
                return;
            }

            if (p.handler == ngx_http_llm_redis_setup_done
                || p.handler == ngx_http_llm_redis_script_done)
            {
                continue;
            }

            /*
             * a command's reply taken, and none refused for a while: the
             * link works, not just its set-up (a replica takes the
             * script, then refuses to run it; a Redis out of memory runs
             * the reports that write nothing), so a failure now is news,
             * tried again soon
             */

            if (rs->warned
                && ngx_current_msec - rs->failed
                   >= NGX_HTTP_LLM_REDIS_HEALTHY)
            {
                ngx_log_error(NGX_LOG_NOTICE, rs->log, 0,
                              "llm: redis %V answers again",
                              &rs->conf->name);
                rs->warned = 0;
            }

            if (!rs->warned) {
                rs->backoff = 0;
            }
        }
    }

    if (ngx_http_llm_redis_deadline(rs, rev) == NGX_ERROR) {
        ngx_http_llm_redis_fail(rs, "timed out");
        return;
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_llm_redis_fail(rs, "cannot read");
    }
}


/*
 * The oldest command waiting for its reply sets the read timer: each
 * command has redis_timeout= from when it was queued.  The timer is set
 * anew each time, as nginx keeps a timer that moves by less than
 * NGX_TIMER_LAZY_DELAY, which would time out a command that is not late.
 * NGX_ERROR: that command is late.
 */

static ngx_int_t
ngx_http_llm_redis_deadline(ngx_http_llm_redis_t *rs, ngx_event_t *rev)
{
    ngx_msec_int_t  left;

    if (rev->timer_set) {
        ngx_del_timer(rev);
    }

    if (rs->npending == 0) {
        return NGX_OK;
    }

    left = (ngx_msec_int_t) (rs->pending[rs->head].queued
                             + rs->conf->timeout - ngx_current_msec);

    if (left <= 0) {
        return NGX_ERROR;
    }

    ngx_add_timer(rev, (ngx_msec_t) left);

    return NGX_OK;
}


/* the commands still waiting for a reply: their handlers hear of it */

static void
ngx_http_llm_redis_abort(ngx_http_llm_redis_t *rs)
{
    ngx_http_llm_redis_pending_t  p;

    while (rs->npending) {
        p = rs->pending[rs->head];
        rs->head = (rs->head + 1) % NGX_HTTP_LLM_REDIS_PENDING;
        rs->npending--;

        if (p.handler != ngx_http_llm_redis_setup_done
            && p.handler != ngx_http_llm_redis_script_done)
        {
            p.handler(p.data, NULL);
        }
    }
}


/*
 * A reply its command's caller cannot use (an error of the whole server,
 * see below, or a reply of another shape): the link is failed as one
 * that did not answer, with the reply's first words as the cause, since
 * asking again at once would be refused again.
 */

void
ngx_http_llm_redis_reject(ngx_http_llm_redis_t *rs, const char *what,
    redisReply *reply)
{
    size_t  n;

    n = (reply->type == REDIS_REPLY_ERROR
         || reply->type == REDIS_REPLY_STATUS)
        ? ngx_min(reply->len, 80) : 0;

    ngx_snprintf((u_char *) rs->error, sizeof(rs->error) - 1, "%s%s%*s%Z",
                 what, n ? ": " : "", n, n ? reply->str : "");

    ngx_http_llm_redis_fail(rs, NULL);
}


/*
 * An error of the whole server, not of the command's keys: loading its
 * data, a replica's read-only, out of memory, a script still running, a
 * replica or a cluster not ready.  Asked again, any command would be
 * refused the same, for a while.
 */

ngx_uint_t
ngx_http_llm_redis_server_error(redisReply *reply)
{
    ngx_uint_t  i;

    static ngx_str_t  codes[] = {
        ngx_string("LOADING"), ngx_string("READONLY"), ngx_string("OOM"),
        ngx_string("BUSY"), ngx_string("MASTERDOWN"), ngx_string("MISCONF"),
        ngx_string("NOREPLICAS"), ngx_string("CLUSTERDOWN"),
        ngx_string("TRYAGAIN")
    };

    for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        if (reply->len > codes[i].len
            && ngx_strncmp(reply->str, codes[i].data, codes[i].len) == 0
            && reply->str[codes[i].len] == ' ')
        {
            return 1;
        }
    }

    return 0;
}


/*
 * hiredis's reader, that refuses an array longer than any reply asked
 * for as its header comes: it would make room for every element first
 * (a header of 400 million, 3 GB of pointers), and freeing that held
 * the event loop.  hiredis 1.0 bounds arrays itself; 0.14 takes our
 * function for arrays, which calls its own.
 */

static redisReader *
ngx_http_llm_redis_reader(void)
{
    redisReader  *reader;

    reader = redisReaderCreate();
    if (reader == NULL) {
        return NULL;
    }

#if (HIREDIS_MAJOR >= 1)

    reader->maxelements = NGX_HTTP_LLM_REDIS_ELEMENTS;

#else

    if (ngx_http_llm_redis_create_array == NULL) {
        ngx_http_llm_redis_functions = *reader->fn;
        ngx_http_llm_redis_create_array =
                                    ngx_http_llm_redis_functions.createArray;
        ngx_http_llm_redis_functions.createArray = ngx_http_llm_redis_array;
    }

    reader->fn = &ngx_http_llm_redis_functions;

#endif

    return reader;
}


#if (HIREDIS_MAJOR < 1)

static void *
ngx_http_llm_redis_array(const redisReadTask *task, int elements)
{
    if (elements > NGX_HTTP_LLM_REDIS_ELEMENTS) {
        /* the reader says "Out of memory": the link is failed */
        return NULL;
    }

    return ngx_http_llm_redis_create_array(task, elements);
}

#endif


/* the system's words for it, as the warning and llm_status show them */

static void
ngx_http_llm_redis_fail_errno(ngx_http_llm_redis_t *rs, const char *what,
    ngx_err_t err)
{
    u_char  *p, *last;

    p = (u_char *) rs->error;
    last = p + sizeof(rs->error) - 1;

    p = ngx_slprintf(p, last, "%s", what);

    if (err) {
        p = ngx_slprintf(p, last, ": ");
        p = ngx_strerror(err, p, last - p);
    }

    *p = '\0';

    ngx_http_llm_redis_fail(rs, NULL);
}


/*
 * Every waiting handler hears of the failure; a new connection is tried
 * after a pause that doubles up to a second, so that a Redis back up is
 * found within a second and one that stays away costs nothing much.
 */

static void
ngx_http_llm_redis_fail(ngx_http_llm_redis_t *rs, const char *error)
{
    ngx_uint_t  was, level;

    if (error) {
        ngx_cpystrn((u_char *) rs->error, (u_char *) error,
                    sizeof(rs->error));
    }

    ngx_http_llm_redis_close_connection(rs);

    redisReaderFree(rs->reader);
    rs->reader = ngx_http_llm_redis_reader();

    was = rs->state;
    rs->state = NGX_HTTP_LLM_REDIS_DOWN;

    /* a warning, unless the link failed again a moment ago */

    if (was != NGX_HTTP_LLM_REDIS_DOWN) {
        level = (rs->warned
                 && ngx_current_msec - rs->failed < NGX_HTTP_LLM_REDIS_HEALTHY)
                ? NGX_LOG_INFO : NGX_LOG_WARN;
        ngx_log_error(level, rs->log, 0,
                      "llm: redis %V %s: shared budgets fall back to this "
                      "instance's share until it answers again",
                      &rs->conf->name, rs->error);
        rs->warned = 1;
    }

    rs->failed = ngx_current_msec;

    ngx_http_llm_redis_abort(rs);

    rs->head = 0;
    rs->out_pos = 0;
    rs->out_last = 0;

    if (rs->reader == NULL) {
        return;
    }

    if (rs->state_handler) {
        rs->state_handler(rs->state_data, NULL);
    }

    rs->backoff = rs->backoff ? ngx_min(rs->backoff * 2,
                                        NGX_HTTP_LLM_REDIS_BACKOFF)
                              : 50;

    if (!ngx_exiting && !ngx_terminate && !ngx_quit) {
        ngx_add_timer(&rs->retry, rs->backoff);
    }
}


/*
 * A worker's last word as it exits: what is queued goes out, the
 * replies are read (see below), and the connection closes, so that what
 * was spent since the last report is not lost with the process.
 */

void
ngx_http_llm_redis_drain(ngx_http_llm_redis_t *rs)
{
    (void) ngx_http_llm_redis_wait(rs);

    ngx_http_llm_redis_close(rs);
}


/*
 * Every command queued goes out and its reply is read, redis_timeout= at
 * most: for a worker that exits, when the event loop no longer runs
 */

ngx_int_t
ngx_http_llm_redis_wait(ngx_http_llm_redis_t *rs)
{
    int                ms;
    struct pollfd      pfd;
    ngx_msec_t         start;
    ngx_connection_t  *c;

    c = rs->peer.connection;

    if (rs->state != NGX_HTTP_LLM_REDIS_READY || c == NULL) {
        return NGX_ERROR;
    }

    ngx_time_update();
    start = ngx_current_msec;

    while (rs->npending && rs->peer.connection) {
        ngx_time_update();

        ms = (int) (rs->conf->timeout - (ngx_current_msec - start));
        if (ms <= 0) {
            ngx_http_llm_redis_fail(rs, "timed out at exit");
            return NGX_ERROR;
        }

        pfd.fd = c->fd;
        pfd.events = POLLIN;
        pfd.events |= (rs->out_pos < rs->out_last) ? POLLOUT : 0;
        pfd.revents = 0;

        if (poll(&pfd, 1, ms) <= 0) {
            continue;
        }

        if (pfd.revents & POLLOUT) {
            c->write->ready = 1;
            ngx_http_llm_redis_flush(rs);
        }

        if (rs->peer.connection
            && (pfd.revents & (POLLIN|POLLHUP|POLLERR)))
        {
            /*
             * as the event loop would have it: with EPOLLRDHUP, recv()
             * is not even tried while "available" says nothing is there
             */

            c->read->ready = 1;
            c->read->available = -1;
            ngx_http_llm_redis_read_handler(c->read);
        }
    }

    return rs->peer.connection ? NGX_OK : NGX_ERROR;
}


/* the end: no warning, no new attempt; waiting handlers hear of it */

static void
ngx_http_llm_redis_close(ngx_http_llm_redis_t *rs)
{
    if (rs->retry.timer_set) {
        ngx_del_timer(&rs->retry);
    }

    ngx_http_llm_redis_close_connection(rs);

    rs->state = NGX_HTTP_LLM_REDIS_DOWN;

    ngx_http_llm_redis_abort(rs);
}


static void
ngx_http_llm_redis_close_connection(ngx_http_llm_redis_t *rs)
{
    if (rs->peer.connection) {
        ngx_http_llm_tls_close(rs->peer.connection);
        rs->peer.connection = NULL;
    }
}
