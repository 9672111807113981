
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_parse.h"
#include "ngx_http_llm_price.h"
#include "ngx_http_llm_usage.h"


/*
 * llm_price: what a model's tokens cost, for $llm_cost and the costs per
 * backend and consumer in llm_status.  A price is kept in millionths of
 * the currency per "per" tokens, as written; a cost in billionths, so
 * that a few tokens of the cheapest model still cost something and a
 * year of a busy gateway's costs still fits in 64 bits.
 */

typedef struct {
    ngx_str_t                    model;
    ngx_uint_t                   input;      /* millionths per "per" */
    ngx_uint_t                   cached;
    ngx_uint_t                   output;
    ngx_uint_t                   per;
} ngx_http_llm_price_t;


static ngx_int_t ngx_http_llm_price_value(ngx_str_t *value, size_t skip,
    ngx_uint_t *out);
static ngx_http_llm_price_t *ngx_http_llm_price_of(
    ngx_http_llm_main_conf_t *lmcf, ngx_str_t *model);
static ngx_http_llm_price_t *ngx_http_llm_price_for(
    ngx_http_llm_main_conf_t *lmcf, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_backend_t *b);
static ngx_uint_t ngx_http_llm_nano(ngx_uint_t millionths, ngx_uint_t per);


/* llm_price model input=price output=price [cached_input=price] [per=n] */

char *
ngx_http_llm_price(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_main_conf_t *lmcf = conf;

    ngx_int_t              n;
    ngx_str_t             *value, s;
    ngx_uint_t             i, cached;
    ngx_http_llm_price_t  *price;

    value = cf->args->elts;

    if (lmcf->prices == NULL) {
        lmcf->prices = ngx_array_create(cf->pool, 4,
                                        sizeof(ngx_http_llm_price_t));
        if (lmcf->prices == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (ngx_http_llm_price_of(lmcf, &value[1])) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate price of \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    price = ngx_array_push(lmcf->prices);
    if (price == NULL) {
        return NGX_CONF_ERROR;
    }

    price->model = value[1];
    price->input = NGX_CONF_UNSET_UINT;
    price->output = NGX_CONF_UNSET_UINT;
    price->per = 1000000;
    cached = NGX_CONF_UNSET_UINT;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "input=", 6) == 0) {
            if (ngx_http_llm_price_value(&value[i], 6, &price->input)
                != NGX_OK)
            {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "cached_input=", 13) == 0) {
            if (ngx_http_llm_price_value(&value[i], 13, &cached) != NGX_OK) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "output=", 7) == 0) {
            if (ngx_http_llm_price_value(&value[i], 7, &price->output)
                != NGX_OK)
            {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "per=", 4) == 0) {
            s.data = value[i].data + 4;
            s.len = value[i].len - 4;

            n = ngx_http_llm_parse_count(s.data, s.len);
            if (n == NGX_ERROR || n == 0) {
                goto invalid;
            }

            price->per = n;
            continue;
        }

        goto invalid;
    }

    if (price->input == NGX_CONF_UNSET_UINT
        || price->output == NGX_CONF_UNSET_UINT)
    {
        return "needs \"input=\" and \"output=\"";
    }

    /* no word of a discount: cached tokens cost what others do */

    price->cached = (cached == NGX_CONF_UNSET_UINT) ? price->input : cached;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);

    return NGX_CONF_ERROR;
}


/* a price with up to 6 decimals, in millionths */

static ngx_int_t
ngx_http_llm_price_value(ngx_str_t *value, size_t skip, ngx_uint_t *out)
{
    ngx_int_t  n;

    n = ngx_atofp(value->data + skip, value->len - skip, 6);

    if (n == NGX_ERROR) {
        return NGX_ERROR;
    }

    *out = n;

    return NGX_OK;
}


static ngx_http_llm_price_t *
ngx_http_llm_price_of(ngx_http_llm_main_conf_t *lmcf, ngx_str_t *model)
{
    ngx_uint_t             i;
    ngx_http_llm_price_t  *price;

    if (lmcf->prices == NULL || model->len == 0) {
        return NULL;
    }

    price = lmcf->prices->elts;

    for (i = 0; i < lmcf->prices->nelts; i++) {
        if (price[i].model.len == model->len
            && ngx_strncmp(price[i].model.data, model->data, model->len)
               == 0)
        {
            return &price[i];
        }
    }

    return NULL;
}


/*
 * The price a request is served at by backend b (NULL: none chosen
 * yet): its deployment's, which the backend serves whatever the client
 * named; else the deployment in the path, which Azure serves whatever
 * the body names; else the body's model (the v1 API)
 */

static ngx_http_llm_price_t *
ngx_http_llm_price_for(ngx_http_llm_main_conf_t *lmcf,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_backend_t *b)
{
    ngx_http_llm_price_t  *price;

    price = NULL;

    if (b) {
        price = ngx_http_llm_price_of(lmcf, &b->deployment);
    }

    if (price == NULL) {
        price = ngx_http_llm_price_of(lmcf, &ctx->deployment);
    }

    if (price == NULL) {
        price = ngx_http_llm_price_of(lmcf, &ctx->model);
    }

    return price;
}


/*
 * What the request's usage cost, in billionths, at the price of the
 * backend that served it (ngx_http_llm_price_for()); cached prompt
 * tokens at their own price.  NGX_DECLINED: no price, or no usage
 * (nothing served, an answer from nginx's cache).
 */

ngx_int_t
ngx_http_llm_cost(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_uint_t *nano)
{
    ngx_uint_t                 cached, fresh;
    ngx_http_llm_scan_t        usage;
    ngx_http_llm_price_t      *price;
    ngx_http_llm_main_conf_t  *lmcf;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);

    if (lmcf->prices == NULL || ctx->cached
        || !ngx_http_llm_usage_of(ctx, &usage))
    {
        return NGX_DECLINED;
    }

    price = ngx_http_llm_price_for(lmcf, ctx, ctx->backend);

    if (price == NULL) {
        return NGX_DECLINED;
    }

    cached = ngx_min(usage.cached, usage.prompt);
    fresh = usage.prompt - cached;

    *nano = ngx_http_llm_nano(fresh * price->input + cached * price->cached
                              + usage.completion * price->output,
                              price->per);

    return NGX_OK;
}


/*
 * What the request may cost at most, in billionths, for a money budget
 * at admission, before a backend is chosen: at the dearest price any
 * backend of its pool would serve it at, the prompt at input= and the
 * completion limit times n at output=.  0: no price for it.
 */

ngx_uint_t
ngx_http_llm_cost_estimate(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_uint_t                 i, n, prompt, completion, cost, most;
    ngx_http_llm_price_t      *price;
    ngx_http_llm_backend_t    *b;
    ngx_http_llm_main_conf_t  *lmcf;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);

    if (lmcf->prices == NULL) {
        return 0;
    }

    prompt = ngx_min(ctx->prompt_tokens, ctx->tokens_estimate);
    completion = ctx->tokens_estimate - prompt;

    b = ctx->pool ? ctx->pool->backends.elts : NULL;
    n = ctx->pool ? ctx->pool->backends.nelts : 0;
    most = 0;

    for (i = 0; i < ngx_max(n, 1); i++) {
        price = ngx_http_llm_price_for(lmcf, ctx, n ? &b[i] : NULL);

        if (price == NULL) {
            continue;
        }

        cost = ngx_http_llm_nano(prompt * price->input
                                 + completion * price->output, price->per);
        most = ngx_max(most, cost);
    }

    return most;
}


/*
 * Tokens times millionths per "per" tokens, in billionths: divided
 * first, so that a request's 10^8 tokens at a price of 10^9 millionths
 * do not overflow
 */

static ngx_uint_t
ngx_http_llm_nano(ngx_uint_t millionths, ngx_uint_t per)
{
    return millionths / per * 1000 + millionths % per * 1000 / per;
}


/* billionths as a decimal number, without trailing zeros: 0.00025 */

u_char *
ngx_http_llm_cost_print(u_char *p, ngx_uint_t nano)
{
    u_char      *last;
    ngx_uint_t   frac;

    p = ngx_sprintf(p, "%ui", nano / 1000000000);

    frac = nano % 1000000000;

    if (frac == 0) {
        return p;
    }

    last = ngx_sprintf(p, ".%09ui", frac);

    while (last[-1] == '0') {
        last--;
    }

    return last;
}
