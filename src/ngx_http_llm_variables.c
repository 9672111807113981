
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_cache_key.h"
#include "ngx_http_llm_consumer.h"
#include "ngx_http_llm_hedge.h"
#include "ngx_http_llm_identity.h"
#include "ngx_http_llm_price.h"
#include "ngx_http_llm_secret.h"
#include "ngx_http_llm_usage.h"
#include "ngx_http_llm_variables.h"


static ngx_int_t ngx_http_llm_str_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_number_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_backend_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_usage_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_usage_source_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_ttft_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_set_number(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, ngx_uint_t n);
static ngx_int_t ngx_http_llm_secret_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_attempts_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_throttle_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_consumer_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_pool_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_hedge_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_cache_key_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_cost_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static void ngx_http_llm_set_value(ngx_http_variable_value_t *v,
    ngx_str_t *s);
static ngx_http_llm_ctx_t *ngx_http_llm_variable_ctx(ngx_http_request_t *r);


static ngx_http_variable_t  ngx_http_llm_vars[] = {

    { ngx_string("llm_model"), NULL,
      ngx_http_llm_str_variable, offsetof(ngx_http_llm_ctx_t, model),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_tokens_estimate"), NULL,
      ngx_http_llm_number_variable,
      offsetof(ngx_http_llm_ctx_t, tokens_estimate),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_prompt_estimate"), NULL,
      ngx_http_llm_number_variable,
      offsetof(ngx_http_llm_ctx_t, prompt_estimate),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_reserve"), NULL,
      ngx_http_llm_number_variable,
      offsetof(ngx_http_llm_ctx_t, reserve),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_prompt_tokens"), NULL,
      ngx_http_llm_usage_variable, offsetof(ngx_http_llm_scan_t, prompt),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_completion_tokens"), NULL,
      ngx_http_llm_usage_variable,
      offsetof(ngx_http_llm_scan_t, completion),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_total_tokens"), NULL,
      ngx_http_llm_usage_variable, offsetof(ngx_http_llm_scan_t, total),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_cached_tokens"), NULL,
      ngx_http_llm_usage_variable, offsetof(ngx_http_llm_scan_t, cached),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_reasoning_tokens"), NULL,
      ngx_http_llm_usage_variable,
      offsetof(ngx_http_llm_scan_t, reasoning),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_usage_source"), NULL,
      ngx_http_llm_usage_source_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_ttft_ms"), NULL,
      ngx_http_llm_ttft_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_backend"), NULL,
      ngx_http_llm_backend_variable, offsetof(ngx_http_llm_backend_t, name),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_backend_host"), NULL,
      ngx_http_llm_backend_variable, offsetof(ngx_http_llm_backend_t, host),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_backend_key"), NULL,
      ngx_http_llm_secret_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_backend_authorization"), NULL,
      ngx_http_llm_secret_variable, 1, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_attempts"), NULL,
      ngx_http_llm_attempts_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_throttle"), NULL,
      ngx_http_llm_throttle_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_consumer"), NULL,
      ngx_http_llm_consumer_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_backend_request_id"), NULL,
      ngx_http_llm_str_variable,
      offsetof(ngx_http_llm_ctx_t, backend_request_id),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_pool"), NULL,
      ngx_http_llm_pool_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_hedge"), NULL,
      ngx_http_llm_hedge_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_cache_key"), NULL,
      ngx_http_llm_cache_key_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_cost"), NULL,
      ngx_http_llm_cost_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_fallback"), NULL,
      ngx_http_llm_pool_variable, 1, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_llm_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_llm_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/*
 * A string of the request's context at offset data: $llm_model, and
 * $llm_backend_request_id, the service's id (apim-request-id, else
 * x-request-id) of the last attempt a backend answered 429 or 5xx, which
 * $upstream_http_ variables lose when another backend answers next
 */

static ngx_int_t
ngx_http_llm_str_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t           *s;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_llm_variable_ctx(r);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    s = (ngx_str_t *) ((char *) ctx + data);

    if (s->len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_http_llm_set_value(v, s);

    return NGX_OK;
}


/* a count of the context at offset data, only once the body is parsed */

static ngx_int_t
ngx_http_llm_number_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_uint_t           n;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_llm_variable_ctx(r);

    if (ctx == NULL || !ctx->parsed) {
        v->not_found = 1;
        return NGX_OK;
    }

    n = *(ngx_uint_t *) ((char *) ctx + data);

    return ngx_http_llm_set_number(r, v, n);
}


/*
 * The backend of the current attempt: these change between attempts,
 * hence NGX_HTTP_VAR_NOCACHEABLE, and proxy reads them again each time
 * the balancer rebuilds the request for another backend.
 */

static ngx_int_t
ngx_http_llm_backend_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t           *s;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_llm_variable_ctx(r);

    if (ctx == NULL || ctx->backend == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    s = (ngx_str_t *) ((char *) ctx->backend + data);

    ngx_http_llm_set_value(v, s);

    return NGX_OK;
}


/*
 * $llm_backend_key is the api-key of a key_file= backend and
 * $llm_backend_authorization the "Bearer ..." of a bearer_file= or
 * identity= one; the other is empty, so proxy_set_header with both
 * sends only the right one and never the client's own
 */

static ngx_int_t
ngx_http_llm_secret_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t               token;
    ngx_http_llm_ctx_t     *ctx;
    ngx_http_llm_secret_t  *secret;

    ctx = ngx_http_llm_variable_ctx(r);

    /* an llm_identity's token is a bearer's */

    if (ctx && ctx->backend && ctx->backend->identity && data == 1
        && ngx_http_llm_identity_token(ctx->backend->identity, &token)
           == NGX_OK)
    {
        v->len = token.len;
        v->valid = 1;
        v->no_cacheable = 1;
        v->not_found = 0;
        v->data = token.data;
        return NGX_OK;
    }

    if (ctx == NULL || ctx->backend == NULL
        || ctx->backend->secret == NULL
        || ctx->backend->secret->bearer != data)
    {
        v->not_found = 1;
        return NGX_OK;
    }

    secret = ctx->backend->secret;

    (void) ngx_http_llm_secret_value(r->connection->log, secret);

    v->len = secret->value.len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = secret->value.data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_attempts_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_llm_variable_ctx(r);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    return ngx_http_llm_set_number(r, v, ctx->hedge
                                         ? ngx_http_llm_hedge_attempts(ctx)
                                         : ctx->attempts);
}


static ngx_int_t
ngx_http_llm_throttle_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    static ngx_str_t  names[] = {
        ngx_string("none"),
        ngx_string("local"),
        ngx_string("backend"),
        ngx_string("consumer")
    };

    ctx = ngx_http_llm_variable_ctx(r);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = names[ctx->throttle].len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = names[ctx->throttle].data;

    return NGX_OK;
}


/* the first applying llm_limit's consumer, hashed as the status shows it */

static ngx_int_t
ngx_http_llm_consumer_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char              *p;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_llm_variable_ctx(r);

    if (ctx == NULL || ctx->nconsumers == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_HTTP_LLM_CONSUMER_ID_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->len = ngx_http_llm_consumer_id(p, ctx->consumers[0].digest) - p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = p;

    return NGX_OK;
}


/*
 * The reply's usage, as the backend reported it or as counted from a
 * stream's deltas; before the reply (or without one) $llm_prompt_tokens
 * is our own count, exact or guessed
 */

static ngx_int_t
ngx_http_llm_usage_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t   *ctx;
    ngx_http_llm_scan_t   usage;

    ctx = ngx_http_llm_variable_ctx(r);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    if (ngx_http_llm_usage_of(ctx, &usage)) {
        return ngx_http_llm_set_number(r, v,
                                *(ngx_uint_t *) ((char *) &usage + data));
    }

    if (data == offsetof(ngx_http_llm_scan_t, prompt) && ctx->parsed) {
        return ngx_http_llm_set_number(r, v, ctx->prompt_tokens);
    }

    v->not_found = 1;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_usage_source_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_int_t             source;
    ngx_http_llm_ctx_t   *ctx;
    ngx_http_llm_scan_t   usage;

    static ngx_str_t  names[] = {
        ngx_null_string,
        ngx_string("reported"),
        ngx_string("counted")
    };

    ctx = ngx_http_llm_variable_ctx(r);

    source = ctx ? ngx_http_llm_usage_of(ctx, &usage) : 0;

    if (source == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = names[source].len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = names[source].data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_ttft_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_llm_variable_ctx(r);

    if (ctx == NULL || !ctx->first_byte) {
        v->not_found = 1;
        return NGX_OK;
    }

    return ngx_http_llm_set_number(r, v, ctx->ttft);
}


static ngx_int_t
ngx_http_llm_set_number(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    ngx_uint_t n)
{
    u_char  *p;

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->len = ngx_sprintf(p, "%ui", n) - p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = p;

    return NGX_OK;
}


/*
 * $llm_pool: the pool that admitted the request, its llm_route pool
 * before that, for "proxy_pass http://$llm_pool"; $llm_fallback: the
 * same when a fallback= pool took it, else empty
 */

static ngx_int_t
ngx_http_llm_pool_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t       *ctx;
    ngx_http_llm_pool_t      *pool;
    ngx_http_llm_loc_conf_t  *llcf;

    ctx = ngx_http_llm_variable_ctx(r);

    pool = NULL;

    if (ctx && ctx->pool) {
        pool = ctx->pool;

    } else if (data == 0) {
        llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

        if (llcf->upstream) {
            pool = ngx_http_llm_pool_of(llcf->upstream);
        }
    }

    if (pool == NULL || (data == 1 && !ctx->fallback)) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_http_llm_set_value(v, &pool->name);

    return NGX_OK;
}


/* a value that changes between attempts: never cached */

static void
ngx_http_llm_set_value(ngx_http_variable_value_t *v, ngx_str_t *s)
{
    v->len = s->len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = s->data;
}


/* "won" or "lost": whether a hedged request's second attempt answered */

static ngx_int_t
ngx_http_llm_hedge_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t           *s;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_llm_variable_ctx(r);

    s = ctx ? ngx_http_llm_hedge_outcome(ctx) : NULL;

    if (s == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_http_llm_set_value(v, s);

    return NGX_OK;
}


/* llm_price's cost of the reply's usage; empty without a price */

static ngx_int_t
ngx_http_llm_cost_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t            s;
    ngx_uint_t           nano;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_llm_variable_ctx(r);

    if (ctx == NULL || ngx_http_llm_cost(r, ctx, &nano) != NGX_OK) {
        v->not_found = 1;
        return NGX_OK;
    }

    s.data = ngx_pnalloc(r->pool, NGX_HTTP_LLM_COST_LEN);
    if (s.data == NULL) {
        return NGX_ERROR;
    }

    s.len = ngx_http_llm_cost_print(s.data, nano) - s.data;

    ngx_http_llm_set_value(v, &s);

    return NGX_OK;
}


/* empty until the body is read, and for a request without one */

static ngx_int_t
ngx_http_llm_cache_key_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t            key;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_llm_variable_ctx(r);

    if (ctx == NULL || !ctx->parsed || ctx->body.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    if (ngx_http_llm_cache_key(r, ctx, &key) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_http_llm_set_value(v, &key);

    return NGX_OK;
}


/*
 * A hedged request's attempts are subrequests, each with a context of
 * its own: proxy_set_header and proxy_pass read the attempt's backend
 * there.  Any other request reads its main request's.
 */

static ngx_http_llm_ctx_t *
ngx_http_llm_variable_ctx(ngx_http_request_t *r)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL && r != r->main) {
        ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);
    }

    return ctx;
}
