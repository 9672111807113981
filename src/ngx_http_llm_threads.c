
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_threads.h"


/*
 * Reading and counting a large body takes long enough (tens of
 * milliseconds a megabyte, seconds for one long word) to stall every
 * other connection of the worker.  Above llm_count_threads min=, that
 * work runs in one of nginx's thread pools, as "aio threads" reads
 * files: the request is blocked (r->main->blocked) until the task is
 * done, so nothing finalizes it meanwhile, and the task touches only the
 * request's own pool and context, and the thread's own tokenizer
 * workspace and JSON pool (ngx_http_llm_thread_local).
 */


#if (NGX_HTTP_LLM_THREADS)

typedef struct {
    ngx_http_request_t          *request;
    ngx_http_llm_thread_pt       work;
    ngx_http_llm_thread_pt       done;

    /* the connection's log, put back when the task is done */
    ngx_log_t                   *log;
    ngx_log_t                    thread_log;

    /* a worker that exits waits for the task (see below) */
    ngx_event_t                  keep;
} ngx_http_llm_thread_ctx_t;


static void ngx_http_llm_thread_handler(void *data, ngx_log_t *log);
static void ngx_http_llm_thread_event_handler(ngx_event_t *ev);
static void ngx_http_llm_thread_keep_handler(ngx_event_t *ev);

#endif


/* llm_count_threads off | [pool=name] [min=size]; */

char *
ngx_http_llm_count_threads(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ssize_t     size;
    ngx_str_t  *value;
    ngx_uint_t  i;

    if (llcf->threads != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "off") == 0) {
        llcf->threads = 0;
        return NGX_CONF_OK;
    }

#if !(NGX_HTTP_LLM_THREADS)

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "\"llm_count_threads\" needs nginx built "
                       "--with-threads");
    return NGX_CONF_ERROR;

#else

    llcf->threads = 1;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "pool=", 5) == 0
            && value[i].len > 5)
        {
            llcf->thread_pool_name.data = value[i].data + 5;
            llcf->thread_pool_name.len = value[i].len - 5;
            continue;
        }

        if (ngx_strncmp(value[i].data, "min=", 4) == 0) {
            value[i].data += 4;
            value[i].len -= 4;

            size = ngx_parse_size(&value[i]);
            if (size == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid min \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            llcf->thread_min = size;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;

#endif
}


/*
 * Where llm_route reads bodies, the pool is looked up (and "default"
 * made, as "aio threads" makes it) at configuration time.  Counting in
 * threads is on by default where nginx has them.
 */

ngx_int_t
ngx_http_llm_threads_merge(ngx_conf_t *cf, ngx_http_llm_loc_conf_t *conf,
    ngx_http_llm_loc_conf_t *prev)
{
#if (NGX_HTTP_LLM_THREADS)

    ngx_conf_merge_value(conf->threads, prev->threads, 1);
    ngx_conf_merge_size_value(conf->thread_min, prev->thread_min,
                              64 * 1024);

    if (conf->thread_pool_name.data == NULL) {
        conf->thread_pool_name = prev->thread_pool_name;
    }

    if (conf->threads && conf->route == 1) {
        conf->thread_pool = ngx_thread_pool_add(cf,
                                             conf->thread_pool_name.data
                                             ? &conf->thread_pool_name
                                             : NULL);
        if (conf->thread_pool == NULL) {
            return NGX_ERROR;
        }
    }

#else

    conf->threads = 0;

#endif

    return NGX_OK;
}


/*
 * work() in a thread, then done() back in the worker's event loop; both
 * get the request.  NGX_DECLINED: the body is too small, threads are
 * off, or the task could not be posted: the caller does the work itself.
 */

ngx_int_t
ngx_http_llm_thread_run(ngx_http_request_t *r, off_t size,
    ngx_http_llm_thread_pt work, ngx_http_llm_thread_pt done)
{
#if (NGX_HTTP_LLM_THREADS)

    ngx_log_t                  *log;
    ngx_thread_task_t          *task;
    ngx_http_llm_loc_conf_t    *llcf;
    ngx_http_llm_thread_ctx_t  *tc;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (!llcf->threads || llcf->thread_pool == NULL
        || size < (off_t) llcf->thread_min)
    {
        return NGX_DECLINED;
    }

    task = ngx_thread_task_alloc(r->pool, sizeof(ngx_http_llm_thread_ctx_t));
    if (task == NULL) {
        return NGX_DECLINED;
    }

    tc = task->ctx;
    tc->request = r;
    tc->work = work;
    tc->done = done;

    /*
     * what the task logs (a client's bad body) goes only to the error
     * logs that are files: one write() each, which threads may share,
     * where the syslog and memory writers may not be entered twice
     */

    log = r->connection->log;
    tc->log = log;

    while (log && log->writer) {
        log = log->next;
    }

    if (log) {
        tc->thread_log = *log;
        tc->thread_log.next = NULL;

    } else {
        tc->thread_log = *tc->log;
        tc->thread_log.log_level = 0;
        tc->thread_log.writer = NULL;
        tc->thread_log.next = NULL;
    }

    task->handler = ngx_http_llm_thread_handler;
    task->event.handler = ngx_http_llm_thread_event_handler;
    task->event.data = tc;

    r->connection->log = &tc->thread_log;

    if (ngx_thread_task_post(llcf->thread_pool, task) != NGX_OK) {
        r->connection->log = tc->log;
        return NGX_DECLINED;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, tc->log, 0,
                   "llm body of %O bytes read in a thread", size);

    r->main->blocked++;
    r->write_event_handler = ngx_http_request_empty_handler;

    /*
     * nothing else of the request is timed meanwhile: a worker that is
     * told to exit would find no timer left, and go before the task is
     * done, its client never answered
     */

    tc->keep.handler = ngx_http_llm_thread_keep_handler;
    tc->keep.data = tc;
    tc->keep.log = tc->log;
    tc->keep.cancelable = 0;

    ngx_add_timer(&tc->keep, 60000);

    return NGX_OK;

#else

    return NGX_DECLINED;

#endif
}


#if (NGX_HTTP_LLM_THREADS)

static void
ngx_http_llm_thread_handler(void *data, ngx_log_t *log)
{
    ngx_http_llm_thread_ctx_t  *tc = data;

    tc->work(tc->request);
}


static void
ngx_http_llm_thread_event_handler(ngx_event_t *ev)
{
    ngx_connection_t           *c;
    ngx_http_request_t         *r;
    ngx_http_llm_thread_ctx_t  *tc;

    tc = ev->data;
    r = tc->request;
    c = r->connection;

    c->log = tc->log;

    if (tc->keep.timer_set) {
        ngx_del_timer(&tc->keep);
    }

    ngx_http_set_log_request(c->log, r);

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0, "llm thread done");

    r->main->blocked--;

    if (r->write_event_handler != ngx_http_request_empty_handler) {
        /* terminated while blocked: nginx left its finalizer here */
        r->write_event_handler(r);

    } else {
        tc->done(r);
    }

    ngx_http_run_posted_requests(c);
}

static void
ngx_http_llm_thread_keep_handler(ngx_event_t *ev)
{
    ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                  "llm: a body has been counted for 60 s");

    ngx_add_timer(ev, 60000);
}

#endif
