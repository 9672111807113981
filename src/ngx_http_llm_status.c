
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_consumer.h"
#include "ngx_http_llm_identity.h"
#include "ngx_http_llm_price.h"
#include "ngx_http_llm_status.h"
#include "ngx_http_llm_zone.h"


/*
 * llm_status: every pool and backend, in JSON (the default) or in the
 * Prometheus text format (?format=prometheus, or an Accept header that
 * asks for text/plain or OpenMetrics).  Names, hosts, limits, windows,
 * counters; never a key or a token.
 */


#define NGX_HTTP_LLM_STATUS_JSON        0
#define NGX_HTTP_LLM_STATUS_PROMETHEUS  1

/*
 * a backend's Prometheus samples that carry its names, at most: some 30
 * today (families of 5 samples, and the shared leases, included)
 */
#define NGX_HTTP_LLM_STATUS_SAMPLES     64


typedef struct {
    ngx_http_llm_backend_sh_t   sh;
    ngx_msec_t                  cooldown;
    ngx_msec_t                  remote_age;
    ngx_msec_t                  utilization_age;

    /* llm_zone redis=: the backend's leases, copied with the rest */
    ngx_http_llm_lease_t        lease[2];
    int64_t                     limit[2];
    ngx_uint_t                  shared;
} ngx_http_llm_snap_t;


/* a zone's consumers as the status shows them: the top n by tokens */

typedef struct {
    ngx_shm_zone_t                 *shm_zone;
    ngx_http_llm_consumer_sh_t     *top;
    ngx_http_llm_consumer_share_t  *shares;
    ngx_uint_t                      ntop;
    ngx_uint_t                      count;
    ngx_uint_t                      evicted;

    /* llm_zone redis=: the link's figures, this worker's state */
    ngx_http_llm_share_sh_t         share;
    ngx_http_llm_zone_t            *zone;
} ngx_http_llm_consumers_snap_t;


static ngx_int_t ngx_http_llm_status_handler(ngx_http_request_t *r);
static ngx_uint_t ngx_http_llm_status_format(ngx_http_request_t *r);
static u_char *ngx_http_llm_status_json(u_char *p, ngx_http_llm_pool_t *pool,
    ngx_http_llm_snap_t *snap, ngx_http_llm_snap_t *total);
static u_char *ngx_http_llm_status_prometheus(u_char *p,
    ngx_http_llm_pool_t **pools, ngx_uint_t npools,
    ngx_http_llm_snap_t **snaps, ngx_http_llm_snap_t *totals);
static u_char *ngx_http_llm_load_prometheus(u_char *p, ngx_uint_t m,
    const char *name, ngx_http_llm_pool_t *pool, ngx_http_llm_backend_t *b,
    ngx_http_llm_snap_t *snap);
static u_char *ngx_http_llm_replies_prometheus(u_char *p, ngx_uint_t m,
    const char *name, ngx_http_llm_pool_t *pool, ngx_http_llm_backend_t *b,
    ngx_http_llm_snap_t *snap);
static u_char *ngx_http_llm_sample(u_char *p, const char *name,
    ngx_http_llm_pool_t *pool, ngx_http_llm_backend_t *b);
static u_char *ngx_http_llm_label(u_char *p, ngx_str_t *value);
static void ngx_http_llm_snapshot(ngx_http_llm_pool_t *pool,
    ngx_http_llm_snap_t *snap, ngx_http_llm_snap_t *total);
static u_char *ngx_http_llm_backend_shared_json(u_char *p,
    ngx_http_llm_snap_t *snap);
static u_char *ngx_http_llm_leases_json(u_char *p, const char **names,
    ngx_http_llm_lease_t *lease, int64_t *limit, ngx_uint_t n);
static u_char *ngx_http_llm_backends_shared_prometheus(u_char *p,
    ngx_http_llm_pool_t **pools, ngx_uint_t npools,
    ngx_http_llm_snap_t **snaps);
static size_t ngx_http_llm_status_backend_size(ngx_http_llm_pool_t *pool,
    ngx_http_llm_backend_t *b);
static size_t ngx_http_llm_genai_labels_len(ngx_http_llm_pool_t *pool,
    ngx_http_llm_backend_t *b);
static u_char *ngx_http_llm_backends_genai_prometheus(ngx_http_request_t *r,
    u_char *p, ngx_http_llm_pool_t **pools, ngx_uint_t npools,
    ngx_http_llm_snap_t **snaps);
static ngx_http_llm_consumers_snap_t *ngx_http_llm_consumers_snapshot(
    ngx_http_request_t *r, ngx_http_llm_pool_t **pools, ngx_uint_t npools,
    ngx_uint_t n, ngx_uint_t *nzones);
static u_char *ngx_http_llm_consumers_json(u_char *p,
    ngx_http_llm_consumers_snap_t *zones, ngx_uint_t nzones);
static u_char *ngx_http_llm_share_json(u_char *p,
    ngx_http_llm_consumers_snap_t *zone);
static u_char *ngx_http_llm_share_prometheus(u_char *p,
    ngx_http_llm_consumers_snap_t *zones, ngx_uint_t nzones);
static u_char *ngx_http_llm_consumer_shared_json(u_char *p,
    ngx_http_llm_consumer_sh_t *cs);
static u_char *ngx_http_llm_consumers_prometheus(u_char *p,
    ngx_http_llm_consumers_snap_t *zones, ngx_uint_t nzones);


/* llm_status [consumers=number]; */

char *
ngx_http_llm_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_int_t                  n;
    ngx_str_t                 *value;
    ngx_http_llm_loc_conf_t   *llcf;
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_llm_status_handler;

    if (cf->args->nelts == 1) {
        return NGX_CONF_OK;
    }

    value = cf->args->elts;

    if (ngx_strncmp(value[1].data, "consumers=", 10) != 0) {
        goto invalid;
    }

    n = ngx_atoi(value[1].data + 10, value[1].len - 10);
    if (n == NGX_ERROR || n > 1000) {
        goto invalid;
    }

    llcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_llm_module);
    llcf->status_consumers = n;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[1]);

    return NGX_CONF_ERROR;
}


static ngx_int_t
ngx_http_llm_status_handler(ngx_http_request_t *r)
{
    size_t                          size;
    u_char                         *p;
    ngx_int_t                       rc;
    ngx_buf_t                      *b;
    ngx_uint_t                      i, j, format, n, nzones;
    ngx_chain_t                     out;
    ngx_http_llm_pool_t           **pools;
    ngx_http_llm_backend_t         *be;
    ngx_http_llm_snap_t           **snaps, *totals;
    ngx_http_llm_loc_conf_t        *llcf;
    ngx_http_llm_main_conf_t       *lmcf;
    ngx_http_llm_consumers_snap_t  *zones;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);
    pools = lmcf->pools.elts;
    n = lmcf->pools.nelts;
    format = ngx_http_llm_status_format(r);

    snaps = ngx_palloc(r->pool, (n + 1) * sizeof(ngx_http_llm_snap_t *));
    totals = ngx_palloc(r->pool, (n + 1) * sizeof(ngx_http_llm_snap_t));
    if (snaps == NULL || totals == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* an upper bound: a fixed part and names, per backend and pool */

    size = 9216;

    for (i = 0; i < n; i++) {
        snaps[i] = ngx_palloc(r->pool, (pools[i]->backends.nelts + 1)
                                       * sizeof(ngx_http_llm_snap_t));
        if (snaps[i] == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_http_llm_snapshot(pools[i], snaps[i], &totals[i]);

        /* the pool's own samples, a name escaped in each */

        size += 1024 + 32 * pools[i]->name.len;

        be = pools[i]->backends.elts;

        for (j = 0; j < pools[i]->backends.nelts; j++) {
            size += ngx_http_llm_status_backend_size(pools[i], &be[j]);
            size += ngx_http_llm_genai_size(&snaps[i][j].sh.genai,
                        ngx_http_llm_genai_labels_len(pools[i], &be[j]));
        }
    }

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    zones = ngx_http_llm_consumers_snapshot(r, pools, n,
                                            llcf->status_consumers, &nzones);
    if (zones == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < nzones; i++) {
        size += 4096 + 16 * zones[i].shm_zone->shm.name.len
                + zones[i].ntop * (2048 + 16 * zones[i].shm_zone->shm.name.len);
    }

    size += ngx_http_llm_identities_size(lmcf);

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->last;

    if (format == NGX_HTTP_LLM_STATUS_JSON) {
        p = ngx_sprintf(p, "{\"pools\":[");

        for (i = 0; i < n; i++) {
            if (i) {
                *p++ = ',';
            }

            p = ngx_http_llm_status_json(p, pools[i], snaps[i], &totals[i]);
        }

        p = ngx_sprintf(p, "],\"consumers\":[");
        p = ngx_http_llm_consumers_json(p, zones, nzones);
        p = ngx_sprintf(p, "],\"identities\":[");
        p = ngx_http_llm_identities_json(p, lmcf);
        p = ngx_sprintf(p, "]}\n");
        ngx_str_set(&r->headers_out.content_type, "application/json");

    } else {
        p = ngx_http_llm_status_prometheus(p, pools, n, snaps, totals);
        p = ngx_http_llm_backends_shared_prometheus(p, pools, n, snaps);
        p = ngx_http_llm_backends_genai_prometheus(r, p, pools, n, snaps);

        if (p == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p = ngx_http_llm_consumers_prometheus(p, zones, nzones);
        p = ngx_http_llm_share_prometheus(p, zones, nzones);
        p = ngx_http_llm_identities_prometheus(p, lmcf);
        ngx_str_set(&r->headers_out.content_type,
                    "text/plain; version=0.0.4; charset=utf-8");
    }

    b->last = p;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static ngx_uint_t
ngx_http_llm_status_format(ngx_http_request_t *r)
{
    ngx_str_t         value;
    ngx_table_elt_t  *accept;

    if (ngx_http_arg(r, (u_char *) "format", 6, &value) == NGX_OK) {
        return (value.len == 10
                && ngx_strncmp(value.data, "prometheus", 10) == 0)
               ? NGX_HTTP_LLM_STATUS_PROMETHEUS : NGX_HTTP_LLM_STATUS_JSON;
    }

#if (NGX_HTTP_HEADERS)
    accept = r->headers_in.accept;
#else
    accept = NULL;
#endif

    if (accept
        && (ngx_strlcasestrn(accept->value.data,
                             accept->value.data + accept->value.len,
                             (u_char *) "text/plain", 10 - 1)
            || ngx_strlcasestrn(accept->value.data,
                                accept->value.data + accept->value.len,
                                (u_char *) "openmetrics", 11 - 1))
        && !ngx_strlcasestrn(accept->value.data,
                             accept->value.data + accept->value.len,
                             (u_char *) "application/json", 16 - 1))
    {
        return NGX_HTTP_LLM_STATUS_PROMETHEUS;
    }

    return NGX_HTTP_LLM_STATUS_JSON;
}


/*
 * The shared state of a pool, copied under its lock, the windows brought
 * up to date first
 */

static void
ngx_http_llm_snapshot(ngx_http_llm_pool_t *pool, ngx_http_llm_snap_t *snap,
    ngx_http_llm_snap_t *total)
{
    ngx_msec_t                  now;
    ngx_uint_t                  i;
    ngx_http_llm_zone_t        *zone;
    ngx_http_llm_backend_t     *b;
    ngx_http_llm_backend_sh_t  *sh;

    zone = pool->shm_zone->data;
    b = pool->backends.elts;
    now = ngx_current_msec;

    ngx_shmtx_lock(&zone->shpool->mutex);

    for (i = 0; i < pool->backends.nelts; i++) {
        sh = b[i].sh;

        ngx_http_llm_windows_update(pool, sh, now);

        snap[i].sh = *sh;
        snap[i].cooldown = ((ngx_msec_int_t) (sh->cooldown_until - now) > 0)
                           ? sh->cooldown_until - now : 0;
        snap[i].remote_age = now - sh->remote_time;
        snap[i].utilization_age = now - sh->utilization_time;
        snap[i].shared = (sh->share && zone->share_conf);

        if (snap[i].shared) {
            ngx_memcpy(snap[i].lease, sh->share->lease,
                       sizeof(snap[i].lease));
            ngx_memcpy(snap[i].limit, sh->share->limit,
                       sizeof(snap[i].limit));
        }
    }

    total->sh = *pool->sh;

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


static u_char *
ngx_http_llm_status_json(u_char *p, ngx_http_llm_pool_t *pool,
    ngx_http_llm_snap_t *snap, ngx_http_llm_snap_t *total)
{
    ngx_uint_t                  i;
    ngx_http_llm_backend_t     *b;
    ngx_http_llm_backend_sh_t  *sh;

    b = pool->backends.elts;

    p = ngx_sprintf(p, "{\"name\":\"");
    p = (u_char *) ngx_escape_json(p, pool->name.data, pool->name.len);
    p = ngx_sprintf(p, "\",\"window_ms\":%M,\"local_throttled\":%uA,"
                    "\"fallbacks\":%uA,\"hedges\":%uA,\"hedges_won\":%uA,"
                    "\"hedges_cancelled\":%uA,\"hedge_tokens\":%uA,"
                    "\"backends\":[", pool->window,
                    total->sh.local_throttled, total->sh.fallbacks,
                    total->sh.hedges, total->sh.hedges_won,
                    total->sh.hedges_cancelled, total->sh.hedge_tokens);

    for (i = 0; i < pool->backends.nelts; i++) {
        sh = &snap[i].sh;

        p = ngx_sprintf(p, "%s{\"name\":\"", i ? "," : "");
        p = (u_char *) ngx_escape_json(p, b[i].name.data, b[i].name.len);
        p = ngx_sprintf(p, "\",\"host\":\"");
        p = (u_char *) ngx_escape_json(p, b[i].host.data, b[i].host.len);

        p = ngx_sprintf(p, "\",\"priority\":%ui,\"weight\":%ui,"
                        "\"ptu\":%s,\"plain\":%s,"
                        "\"limit_tokens\":%ui,\"limit_requests_10s\":%ui,"
                        "\"window_tokens\":%ui,\"window_requests\":%ui,"
                        "\"in_flight\":%ui,\"cooldown_ms\":%M,",
                        b[i].priority, b[i].weight,
                        b[i].ptu ? "true" : "false",
                        b[i].plain ? "true" : "false",
                        b[i].tpm, b[i].rpm ? ngx_max(b[i].rpm / 6, 1) : 0,
                        sh->tokens_sum, sh->requests_sum, sh->in_flight,
                        snap[i].cooldown);

        if (sh->remote_tokens >= 0 || sh->remote_requests >= 0) {
            p = ngx_sprintf(p, "\"remote_remaining_tokens\":%i,"
                            "\"remote_remaining_requests\":%i,"
                            "\"remote_age_ms\":%M,",
                            sh->remote_tokens, sh->remote_requests,
                            snap[i].remote_age);

        } else {
            p = ngx_sprintf(p, "\"remote_remaining_tokens\":null,"
                            "\"remote_remaining_requests\":null,"
                            "\"remote_age_ms\":null,");
        }

        if (sh->utilization) {
            p = ngx_sprintf(p, "\"utilization_pct\":%ui.%ui,"
                            "\"utilization_age_ms\":%M,",
                            (sh->utilization - 1) / 10,
                            (sh->utilization - 1) % 10,
                            snap[i].utilization_age);

        } else {
            p = ngx_sprintf(p, "\"utilization_pct\":null,"
                            "\"utilization_age_ms\":null,");
        }

        p = ngx_sprintf(p, "\"ttft_ms_ewma\":%ui,"
                        "\"tokens_per_second_ewma\":%ui.%03ui,"
                        "\"requests\":%uA,\"backend_throttled\":%uA,"
                        "\"failures\":%uA,"
                        "\"responses\":{\"1xx\":%uA,\"2xx\":%uA,"
                        "\"3xx\":%uA,\"4xx\":%uA,\"5xx\":%uA},"
                        "\"tokens\":{\"charged\":%uA,\"prompt\":%uA,"
                        "\"completion\":%uA,\"cached\":%uA,"
                        "\"reasoning\":%uA},\"usage_counted\":%uA,"
                        "\"cost\":",
                        sh->ttft_ewma, sh->tps_ewma / 1000,
                        sh->tps_ewma % 1000,
                        sh->requests, sh->backend_throttled, sh->failures,
                        sh->responses[1], sh->responses[2], sh->responses[3],
                        sh->responses[4], sh->responses[5],
                        sh->tokens_charged, sh->prompt_tokens,
                        sh->completion_tokens, sh->cached_tokens,
                        sh->reasoning_tokens, sh->usage_counted);

        p = ngx_http_llm_cost_print(p, sh->cost);
        *p++ = ',';

        p = ngx_http_llm_backend_shared_json(p, &snap[i]);
        *p++ = '}';
    }

    return ngx_sprintf(p, "]}");
}


/* what all instances spent of a backend's windows, as Redis said */

static u_char *
ngx_http_llm_backend_shared_json(u_char *p, ngx_http_llm_snap_t *snap)
{
    static const char  *names[] = { "tokens", "requests" };

    if (!snap->shared) {
        return ngx_sprintf(p, "\"shared\":null");
    }

    return ngx_http_llm_leases_json(p, names, snap->lease, snap->limit, 2);
}


/*
 * "shared": per budget, what every instance used and holds leased at the
 * last reply, this instance's credit, and how long ago that was
 */

static u_char *
ngx_http_llm_leases_json(u_char *p, const char **names,
    ngx_http_llm_lease_t *lease, int64_t *limit, ngx_uint_t n)
{
    ngx_uint_t  k;

    p = ngx_sprintf(p, "\"shared\":{");

    for (k = 0; k < n; k++) {

        if (limit[k] == 0 || lease[k].synced == 0) {
            p = ngx_sprintf(p, "%s\"%s\":null", k ? "," : "", names[k]);
            continue;
        }

        p = ngx_sprintf(p, "%s\"%s\":{\"used\":%L,\"leased\":%L,"
                        "\"credit\":%L,\"synced_ms_ago\":%M}",
                        k ? "," : "", names[k], lease[k].spent,
                        lease[k].leased, ngx_max(lease[k].credit, 0),
                        ngx_current_msec - lease[k].synced);
    }

    *p++ = '}';

    return p;
}


/* the same in Prometheus's format, after the backends' own metrics */

static u_char *
ngx_http_llm_backends_shared_prometheus(u_char *p,
    ngx_http_llm_pool_t **pools, ngx_uint_t npools,
    ngx_http_llm_snap_t **snaps)
{
    ngx_uint_t               i, j, k, m, any;
    ngx_http_llm_snap_t     *snap;
    ngx_http_llm_backend_t  *b;

    static const char  *names[] = { "tokens", "requests" };
    static const char  *metrics[][2] = {
        { "llm_backend_shared_used",
          "What every instance spent of the backend's window, at the last "
          "reply from Redis." },
        { "llm_backend_shared_leased",
          "What every instance holds in leases of the backend's window." }
    };

    any = 0;

    for (i = 0; i < npools; i++) {
        for (j = 0; j < pools[i]->backends.nelts; j++) {
            any |= snaps[i][j].shared;
        }
    }

    if (!any) {
        return p;
    }

    for (m = 0; m < 2; m++) {
        p = ngx_sprintf(p, "# HELP %s %s\n# TYPE %s gauge\n",
                        metrics[m][0], metrics[m][1], metrics[m][0]);

        for (i = 0; i < npools; i++) {
            b = pools[i]->backends.elts;

            for (j = 0; j < pools[i]->backends.nelts; j++) {
                snap = &snaps[i][j];

                for (k = 0; snap->shared && k < 2; k++) {
                    if (snap->limit[k] == 0 || snap->lease[k].synced == 0) {
                        continue;
                    }

                    p = ngx_http_llm_sample(p, metrics[m][0], pools[i],
                                            &b[j]);
                    p = ngx_sprintf(p, ",budget=\"%s\"} %L\n", names[k],
                                    m ? snap->lease[k].leased
                                      : snap->lease[k].spent);
                }
            }
        }
    }

    return p;
}


/*
 * OpenTelemetry's GenAI histograms of every backend, labelled with the
 * provider, the model asked for (the backend's deployment= name), the
 * pool and the backend; NULL: no memory.
 */

static u_char *
ngx_http_llm_backends_genai_prometheus(ngx_http_request_t *r, u_char *p,
    ngx_http_llm_pool_t **pools, ngx_uint_t npools,
    ngx_http_llm_snap_t **snaps)
{
    u_char                  *q;
    ngx_str_t              **labels, *l;
    ngx_uint_t               i, j, m;
    const char              *name, *help;
    ngx_http_llm_backend_t  *b;

    labels = ngx_palloc(r->pool, npools * sizeof(ngx_str_t *));
    if (labels == NULL) {
        return NULL;
    }

    for (i = 0; i < npools; i++) {
        b = pools[i]->backends.elts;

        labels[i] = ngx_palloc(r->pool,
                               pools[i]->backends.nelts * sizeof(ngx_str_t));
        if (labels[i] == NULL) {
            return NULL;
        }

        for (j = 0; j < pools[i]->backends.nelts; j++) {
            q = ngx_pnalloc(r->pool,
                            ngx_http_llm_genai_labels_len(pools[i], &b[j]));
            if (q == NULL) {
                return NULL;
            }

            l = &labels[i][j];
            l->data = q;

            /* Azure's deployments are named by deployment= */

            if (b[j].deployment.len) {
                q = ngx_sprintf(q, "gen_ai_provider_name=\"azure.ai.openai\","
                                "gen_ai_request_model=\"");
                q = ngx_http_llm_label(q, &b[j].deployment);
                q = ngx_sprintf(q, "\",");

            } else {
                q = ngx_sprintf(q, "gen_ai_provider_name=\"openai\",");
            }

            q = ngx_sprintf(q, "pool=\"");
            q = ngx_http_llm_label(q, &pools[i]->name);
            q = ngx_sprintf(q, "\",backend=\"");
            q = ngx_http_llm_label(q, &b[j].name);
            *q++ = '"';

            l->len = q - l->data;
        }
    }

    for (m = 0; (name = ngx_http_llm_genai_family(m, &help)); m++) {
        p = ngx_sprintf(p, "# HELP %s %s\n# TYPE %s histogram\n",
                        name, help, name);

        for (i = 0; i < npools; i++) {
            for (j = 0; j < pools[i]->backends.nelts; j++) {
                p = ngx_http_llm_genai_prometheus(p, m,
                                                  &snaps[i][j].sh.genai,
                                                  &labels[i][j]);
            }
        }
    }

    return p;
}


/*
 * Room for a backend's part of either format: its figures, and its names,
 * which the configuration lets run to hundreds of bytes; JSON spells a
 * control byte in six, Prometheus doubles a quote or a backslash in each
 * sample's labels.
 */

static size_t
ngx_http_llm_status_backend_size(ngx_http_llm_pool_t *pool,
    ngx_http_llm_backend_t *b)
{
    size_t  names;

    names = pool->name.len + b->name.len + b->host.len + b->deployment.len;

    return 6144 + 6 * names
           + NGX_HTTP_LLM_STATUS_SAMPLES * (256 + 2 * names);
}


/* room for a backend's labels, each escaped character doubled */

static size_t
ngx_http_llm_genai_labels_len(ngx_http_llm_pool_t *pool,
    ngx_http_llm_backend_t *b)
{
    return sizeof("gen_ai_provider_name=\"azure.ai.openai\","
                  "gen_ai_request_model=\"\",pool=\"\",backend=\"\"")
           + 2 * (b->deployment.len + pool->name.len + b->name.len);
}


/*
 * One family after another with its HELP and TYPE (Prometheus wants a
 * family's samples together); labels pool and backend; base units.
 */

typedef struct {
    const char                  *name;
    const char                  *type;
    const char                  *help;
} ngx_http_llm_metric_t;


static ngx_http_llm_metric_t  ngx_http_llm_metrics[] = {
    { "llm_backend_limit_tokens", "gauge",
      "Tokens a minute the backend allows (0: unlimited)." },
    { "llm_backend_limit_requests", "gauge",
      "Requests per 10 seconds the backend allows (0: unlimited)." },
    { "llm_backend_window_tokens", "gauge",
      "Tokens charged in the backend's current token window." },
    { "llm_backend_window_requests", "gauge",
      "Requests in the backend's current 10 second window." },
    { "llm_backend_in_flight", "gauge",
      "Requests sent to the backend and not finished." },
    { "llm_backend_cooldown_seconds", "gauge",
      "Seconds until the backend's cool-down after a 429 ends." },
    { "llm_backend_remote_remaining_tokens", "gauge",
      "The backend's last x-ratelimit-remaining-tokens." },
    { "llm_backend_remote_age_seconds", "gauge",
      "Seconds since the backend's last remaining-* headers." },
    { "llm_backend_ttft_seconds", "gauge",
      "Moving average of the time to the first byte of a reply." },
    { "llm_backend_output_tokens_per_second", "gauge",
      "Moving average of completion tokens a second." },
    { "llm_backend_requests_total", "counter",
      "Attempts sent to the backend." },
    { "llm_backend_throttled_total", "counter",
      "Replies with status 429 from the backend." },
    { "llm_backend_failures_total", "counter",
      "Failed attempts: errors, timeouts, 5xx." },
    { "llm_backend_responses_total", "counter",
      "Responses to clients by status class." },
    { "llm_backend_tokens_total", "counter",
      "Tokens by kind: charged at admission, and prompt, completion, "
      "cached, reasoning from usage." },
    { "llm_backend_usage_counted_total", "counter",
      "Replies whose usage was counted from stream deltas." },
    { "llm_backend_utilization_ratio", "gauge",
      "A provisioned deployment's last "
      "azure-openai-deployment-utilization, 1 for 100 %." },
    { "llm_backend_cost_total", "counter",
      "What the backend's replies cost by llm_price, in its currency." },
    { "llm_pool_local_throttled_total", "counter",
      "Requests answered 429 by nginx for want of room in the pool." },
    { "llm_pool_fallbacks_total", "counter",
      "Requests the pool took as llm_route's fallback for another." },
    { "llm_pool_hedges_total", "counter",
      "Second attempts llm_hedge started." },
    { "llm_pool_hedges_won_total", "counter",
      "Second attempts whose answer reached the client." },
    { "llm_pool_hedge_cancelled_total", "counter",
      "Attempts cancelled because the other answered first." },
    { "llm_pool_hedge_tokens_total", "counter",
      "Tokens charged to cancelled attempts." },
    { NULL, NULL, NULL }
};


static u_char *
ngx_http_llm_status_prometheus(u_char *p, ngx_http_llm_pool_t **pools,
    ngx_uint_t npools, ngx_http_llm_snap_t **snaps,
    ngx_http_llm_snap_t *totals)
{
    ngx_uint_t                  i, j, m;
    ngx_atomic_uint_t           v[6];
    ngx_http_llm_metric_t      *metric;
    ngx_http_llm_backend_t     *b;
    ngx_http_llm_snap_t        *snap;
    ngx_http_llm_backend_sh_t  *sh;

    /* a family's samples stay together: metrics outside, pools inside */

    for (m = 0; ngx_http_llm_metrics[m].name; m++) {
        metric = &ngx_http_llm_metrics[m];

        p = ngx_sprintf(p, "# HELP %s %s\n# TYPE %s %s\n",
                        metric->name, metric->help, metric->name,
                        metric->type);

        for (i = 0; i < npools; i++) {

            if (m >= 18) {
                sh = &totals[i].sh;
                v[0] = sh->local_throttled;
                v[1] = sh->fallbacks;
                v[2] = sh->hedges;
                v[3] = sh->hedges_won;
                v[4] = sh->hedges_cancelled;
                v[5] = sh->hedge_tokens;

                p = ngx_sprintf(p, "%s{pool=\"", metric->name);
                p = ngx_http_llm_label(p, &pools[i]->name);
                p = ngx_sprintf(p, "\"} %uA\n", v[m - 18]);
                continue;
            }

            b = pools[i]->backends.elts;

            for (j = 0; j < pools[i]->backends.nelts; j++) {
                snap = &snaps[i][j];

                if (m < 10) {
                    p = ngx_http_llm_load_prometheus(p, m, metric->name,
                                                     pools[i], &b[j], snap);

                } else {
                    p = ngx_http_llm_replies_prometheus(p, m, metric->name,
                                                        pools[i], &b[j], snap);
                }
            }
        }
    }

    return p;
}


/*
 * A backend's samples of families 0 to 9: what the balancer weighs it
 * by.  Remaining tokens the backend has not sent yet have no sample,
 * nor their age: a 0 would read as none left, or as sent just now.
 */

static u_char *
ngx_http_llm_load_prometheus(u_char *p, ngx_uint_t m, const char *name,
    ngx_http_llm_pool_t *pool, ngx_http_llm_backend_t *b,
    ngx_http_llm_snap_t *snap)
{
    ngx_http_llm_backend_sh_t  *sh;

    sh = &snap->sh;

    switch (m) {

    case 0:
        p = ngx_http_llm_sample(p, name, pool, b);
        p = ngx_sprintf(p, "} %ui\n", b->tpm);
        break;

    case 1:
        p = ngx_http_llm_sample(p, name, pool, b);
        p = ngx_sprintf(p, "} %ui\n", b->rpm ? ngx_max(b->rpm / 6, 1) : 0);
        break;

    case 2:
        p = ngx_http_llm_sample(p, name, pool, b);
        p = ngx_sprintf(p, "} %ui\n", sh->tokens_sum);
        break;

    case 3:
        p = ngx_http_llm_sample(p, name, pool, b);
        p = ngx_sprintf(p, "} %ui\n", sh->requests_sum);
        break;

    case 4:
        p = ngx_http_llm_sample(p, name, pool, b);
        p = ngx_sprintf(p, "} %ui\n", sh->in_flight);
        break;

    case 5:
        p = ngx_http_llm_sample(p, name, pool, b);
        p = ngx_sprintf(p, "} %M.%03M\n", snap->cooldown / 1000,
                        snap->cooldown % 1000);
        break;

    case 6:
        if (sh->remote_tokens >= 0) {
            p = ngx_http_llm_sample(p, name, pool, b);
            p = ngx_sprintf(p, "} %i\n", sh->remote_tokens);
        }

        break;

    case 7:
        if (sh->remote_tokens >= 0 || sh->remote_requests >= 0) {
            p = ngx_http_llm_sample(p, name, pool, b);
            p = ngx_sprintf(p, "} %M.%03M\n", snap->remote_age / 1000,
                            snap->remote_age % 1000);
        }

        break;

    case 8:
        p = ngx_http_llm_sample(p, name, pool, b);
        p = ngx_sprintf(p, "} %ui.%03ui\n", sh->ttft_ewma / 1000,
                        sh->ttft_ewma % 1000);
        break;

    default: /* 9 */
        p = ngx_http_llm_sample(p, name, pool, b);
        p = ngx_sprintf(p, "} %ui.%03ui\n", sh->tps_ewma / 1000,
                        sh->tps_ewma % 1000);
        break;
    }

    return p;
}


/*
 * A backend's samples of families 10 to 17: its attempts and what their
 * replies came to.  A deployment that never reported its utilization
 * has no sample: a 0 would read as idle.
 */

static u_char *
ngx_http_llm_replies_prometheus(u_char *p, ngx_uint_t m, const char *name,
    ngx_http_llm_pool_t *pool, ngx_http_llm_backend_t *b,
    ngx_http_llm_snap_t *snap)
{
    ngx_uint_t                  k;
    ngx_atomic_uint_t           v[5];
    ngx_http_llm_backend_sh_t  *sh;

    static const char  *classes[] = { "1xx", "2xx", "3xx", "4xx", "5xx" };
    static const char  *kinds[] = { "charged", "prompt", "completion",
                                    "cached", "reasoning" };

    sh = &snap->sh;

    switch (m) {

    case 10:
        p = ngx_http_llm_sample(p, name, pool, b);
        p = ngx_sprintf(p, "} %uA\n", sh->requests);
        break;

    case 11:
        p = ngx_http_llm_sample(p, name, pool, b);
        p = ngx_sprintf(p, "} %uA\n", sh->backend_throttled);
        break;

    case 12:
        p = ngx_http_llm_sample(p, name, pool, b);
        p = ngx_sprintf(p, "} %uA\n", sh->failures);
        break;

    case 13:
        for (k = 0; k < 5; k++) {
            p = ngx_http_llm_sample(p, name, pool, b);
            p = ngx_sprintf(p, ",code=\"%s\"} %uA\n", classes[k],
                            sh->responses[k + 1]);
        }

        break;

    case 14:
        v[0] = sh->tokens_charged;
        v[1] = sh->prompt_tokens;
        v[2] = sh->completion_tokens;
        v[3] = sh->cached_tokens;
        v[4] = sh->reasoning_tokens;

        for (k = 0; k < 5; k++) {
            p = ngx_http_llm_sample(p, name, pool, b);
            p = ngx_sprintf(p, ",kind=\"%s\"} %uA\n", kinds[k], v[k]);
        }

        break;

    case 15:
        p = ngx_http_llm_sample(p, name, pool, b);
        p = ngx_sprintf(p, "} %uA\n", sh->usage_counted);
        break;

    case 17:
        p = ngx_http_llm_sample(p, name, pool, b);
        p = ngx_sprintf(p, "} ");
        p = ngx_http_llm_cost_print(p, sh->cost);
        *p++ = '\n';
        break;

    default: /* 16 */
        if (sh->utilization) {
            p = ngx_http_llm_sample(p, name, pool, b);
            p = ngx_sprintf(p, "} %ui.%03ui\n", (sh->utilization - 1) / 1000,
                            (sh->utilization - 1) % 1000);
        }

        break;
    }

    return p;
}


/*
 * Each zone once (pools may share one), with its top consumers by tokens
 * in the window; a zone no llm_limit ever used shows none
 */

static ngx_http_llm_consumers_snap_t *
ngx_http_llm_consumers_snapshot(ngx_http_request_t *r,
    ngx_http_llm_pool_t **pools, ngx_uint_t npools, ngx_uint_t n,
    ngx_uint_t *nzones)
{
    ngx_uint_t                      i, j, k;
    ngx_http_llm_consumers_snap_t  *zones;

    zones = ngx_pcalloc(r->pool,
                        (npools + 1) * sizeof(ngx_http_llm_consumers_snap_t));
    if (zones == NULL) {
        return NULL;
    }

    k = 0;

    for (i = 0; i < npools; i++) {

        for (j = 0; j < k; j++) {
            if (zones[j].shm_zone == pools[i]->shm_zone) {
                break;
            }
        }

        if (j < k) {
            continue;
        }

        zones[k].shm_zone = pools[i]->shm_zone;
        zones[k].zone = pools[i]->shm_zone->data;

        if (n) {
            zones[k].top = ngx_palloc(r->pool,
                                   n * sizeof(ngx_http_llm_consumer_sh_t));
            if (zones[k].top == NULL) {
                return NULL;
            }

            if (zones[k].zone->share_conf) {
                zones[k].shares = ngx_palloc(r->pool,
                                 n * sizeof(ngx_http_llm_consumer_share_t));
                if (zones[k].shares == NULL) {
                    return NULL;
                }
            }
        }

        zones[k].ntop = ngx_http_llm_consumers_top(pools[i]->shm_zone,
                                                   zones[k].top,
                                                   zones[k].shares, n,
                                                   &zones[k].count,
                                                   &zones[k].evicted,
                                                   &zones[k].share);
        k++;
    }

    *nzones = k;

    return zones;
}


/*
 * A zone shared through Redis: where, whether this worker is connected,
 * and the link's history; the secret in a URL never shows
 */

static u_char *
ngx_http_llm_share_json(u_char *p, ngx_http_llm_consumers_snap_t *zone)
{
    ngx_str_t                *name;
    ngx_http_llm_share_sh_t  *sh;

    static const char  *states[] = { "connecting", "connected", "down" };

    if (zone->zone->share_conf == NULL) {
        return ngx_sprintf(p, "\"redis\":null");
    }

    sh = &zone->share;
    name = &zone->zone->share_conf->redis.name;

    p = ngx_sprintf(p, "\"redis\":{\"server\":\"");
    p = (u_char *) ngx_escape_json(p, name->data, name->len);
    p = ngx_sprintf(p, "\",\"state\":\"%s\",\"replies\":%uA,"
                    "\"errors\":%uA,\"lost_reports\":%uA,"
                    "\"degraded_admissions\":%uA,\"lag_ms\":%M,",
                    zone->zone->share
                    ? states[ngx_http_llm_share_state(zone->zone->share)]
                    : "connecting",
                    sh->replies, sh->errors, sh->lost, sh->degraded,
                    sh->lag);

    if (sh->last_ok) {
        p = ngx_sprintf(p, "\"last_reply_s_ago\":%T,",
                        ngx_max(ngx_time() - sh->last_ok, 0));

    } else {
        p = ngx_sprintf(p, "\"last_reply_s_ago\":null,");
    }

    if (sh->last_error) {
        p = ngx_sprintf(p, "\"last_error_s_ago\":%T,\"last_error\":\"",
                        ngx_max(ngx_time() - sh->last_error, 0));
        p = (u_char *) ngx_escape_json(p, sh->error,
                                       ngx_strlen(sh->error));
        p = ngx_sprintf(p, "\"}");

    } else {
        p = ngx_sprintf(p, "\"last_error_s_ago\":null,"
                        "\"last_error\":null}");
    }

    return p;
}


/*
 * What every instance spent of the consumer's budgets, as Redis said at
 * the last reply, and what they hold in leases
 */

static u_char *
ngx_http_llm_consumer_shared_json(u_char *p, ngx_http_llm_consumer_sh_t *cs)
{
    static const char  *names[] = { "tokens", "requests", "quota",
                                    "budget" };

    if (cs->share == NULL) {
        return ngx_sprintf(p, "\"shared\":null");
    }

    return ngx_http_llm_leases_json(p, names, cs->share->lease,
                                    cs->share->limit, NGX_HTTP_LLM_BUDGETS);
}


static u_char *
ngx_http_llm_consumers_json(u_char *p, ngx_http_llm_consumers_snap_t *zones,
    ngx_uint_t nzones)
{
    ngx_str_t                   *name;
    ngx_uint_t                   i, j;
    ngx_http_llm_consumer_sh_t  *cs;

    for (i = 0; i < nzones; i++) {
        name = &zones[i].shm_zone->shm.name;

        p = ngx_sprintf(p, "%s{\"zone\":\"", i ? "," : "");
        p = (u_char *) ngx_escape_json(p, name->data, name->len);
        p = ngx_sprintf(p, "\",\"count\":%ui,\"evicted\":%ui,",
                        zones[i].count, zones[i].evicted);
        p = ngx_http_llm_share_json(p, &zones[i]);
        p = ngx_sprintf(p, ",\"top\":[");

        for (j = 0; j < zones[i].ntop; j++) {
            cs = &zones[i].top[j];

            p = ngx_sprintf(p, "%s{\"consumer\":\"", j ? "," : "");
            p = ngx_http_llm_consumer_id(p, cs->digest);
            p = ngx_sprintf(p, "\",\"window_ms\":%M,"
                            "\"window_tokens\":%ui,"
                            "\"window_requests\":%ui,\"requests\":%ui,"
                            "\"throttled\":%ui,\"tokens\":{\"prompt\":%ui,"
                            "\"completion\":%ui},\"cost\":",
                            cs->window, cs->tokens_sum, cs->requests_sum,
                            cs->requests, cs->throttled, cs->prompt_tokens,
                            cs->completion_tokens);
            p = ngx_http_llm_cost_print(p, cs->cost);
            *p++ = ',';

            if (cs->quota_end) {
                p = ngx_sprintf(p, "\"quota_used\":%ui,"
                                "\"quota_resets_in_s\":%T,"
                                "\"budget_spent\":",
                                cs->quota_used,
                                ngx_max(cs->quota_end - ngx_time(), 0));
                p = ngx_http_llm_cost_print(p, cs->spent);
                *p++ = ',';

            } else {
                p = ngx_sprintf(p, "\"quota_used\":null,"
                                "\"quota_resets_in_s\":null,"
                                "\"budget_spent\":null,");
            }

            p = ngx_http_llm_consumer_shared_json(p, cs);
            *p++ = '}';
        }

        p = ngx_sprintf(p, "]}");
    }

    return p;
}


static ngx_http_llm_metric_t  ngx_http_llm_consumer_metrics[] = {
    { "llm_consumers", "gauge",
      "Consumers of llm_limit held in the zone." },
    { "llm_consumers_evicted_total", "counter",
      "Consumers evicted, least recently used first, to make room." },
    { "llm_consumer_window_tokens", "gauge",
      "Tokens in the consumer's current window (top consumers only)." },
    { "llm_consumer_window_requests", "gauge",
      "Requests in the consumer's current window (top consumers only)." },
    { "llm_consumer_requests_total", "counter",
      "Requests admitted for the consumer and not refunded." },
    { "llm_consumer_throttled_total", "counter",
      "Requests answered 429 for the consumer's own limit." },
    { "llm_consumer_tokens_total", "counter",
      "Tokens of the consumer's replies by kind, from usage." },
    { "llm_consumer_quota_used_tokens", "gauge",
      "Tokens the consumer used of its quota this period (0: none)." },
    { "llm_consumer_cost_total", "counter",
      "What the consumer's replies cost by llm_price, in its currency." },
    { "llm_consumer_budget_spent", "gauge",
      "What the consumer spent of its budget this period (0: none)." },
    { NULL, NULL, NULL }
};


static u_char *
ngx_http_llm_consumers_prometheus(u_char *p,
    ngx_http_llm_consumers_snap_t *zones, ngx_uint_t nzones)
{
    ngx_uint_t                   i, j, m;
    ngx_http_llm_metric_t       *metric;
    ngx_http_llm_consumer_sh_t  *cs;

    for (m = 0; ngx_http_llm_consumer_metrics[m].name; m++) {
        metric = &ngx_http_llm_consumer_metrics[m];

        p = ngx_sprintf(p, "# HELP %s %s\n# TYPE %s %s\n",
                        metric->name, metric->help, metric->name,
                        metric->type);

        for (i = 0; i < nzones; i++) {

            if (m < 2) {
                p = ngx_sprintf(p, "%s{zone=\"", metric->name);
                p = ngx_http_llm_label(p, &zones[i].shm_zone->shm.name);
                p = ngx_sprintf(p, "\"} %ui\n",
                                m ? zones[i].evicted : zones[i].count);
                continue;
            }

            for (j = 0; j < zones[i].ntop; j++) {
                cs = &zones[i].top[j];

                p = ngx_sprintf(p, "%s{zone=\"", metric->name);
                p = ngx_http_llm_label(p, &zones[i].shm_zone->shm.name);
                p = ngx_sprintf(p, "\",consumer=\"");
                p = ngx_http_llm_consumer_id(p, cs->digest);

                switch (m) {

                case 2:
                    p = ngx_sprintf(p, "\"} %ui\n", cs->tokens_sum);
                    break;

                case 3:
                    p = ngx_sprintf(p, "\"} %ui\n", cs->requests_sum);
                    break;

                case 4:
                    p = ngx_sprintf(p, "\"} %ui\n", cs->requests);
                    break;

                case 5:
                    p = ngx_sprintf(p, "\"} %ui\n", cs->throttled);
                    break;

                case 7:
                    p = ngx_sprintf(p, "\"} %ui\n", cs->quota_used);
                    break;

                case 8:
                    p = ngx_sprintf(p, "\"} ");
                    p = ngx_http_llm_cost_print(p, cs->cost);
                    *p++ = '\n';
                    break;

                case 9:
                    p = ngx_sprintf(p, "\"} ");
                    p = ngx_http_llm_cost_print(p, cs->spent);
                    *p++ = '\n';
                    break;

                default: /* 6 */
                    p = ngx_sprintf(p, "\",kind=\"prompt\"} %ui\n",
                                    cs->prompt_tokens);
                    p = ngx_sprintf(p, "%s{zone=\"", metric->name);
                    p = ngx_http_llm_label(p, &zones[i].shm_zone->shm.name);
                    p = ngx_sprintf(p, "\",consumer=\"");
                    p = ngx_http_llm_consumer_id(p, cs->digest);
                    p = ngx_sprintf(p, "\",kind=\"completion\"} %ui\n",
                                    cs->completion_tokens);
                    break;
                }
            }
        }
    }

    return p;
}


static ngx_http_llm_metric_t  ngx_http_llm_share_metrics[] = {
    { "llm_redis_up", "gauge",
      "1 when this worker's connection to the zone's Redis answers." },
    { "llm_redis_replies_total", "counter",
      "Lease reports and renewals Redis answered." },
    { "llm_redis_errors_total", "counter",
      "Connections to Redis that failed, and replies that were errors." },
    { "llm_redis_degraded_admissions_total", "counter",
      "Admissions made on the instance's share, without Redis." },
    { "llm_redis_lost_reports_total", "counter",
      "Reports of spending that got no reply; the next report names "
      "them, so that they count once." },
    { "llm_redis_lag_seconds", "gauge",
      "Round trip of the last reply from Redis." },
    { "llm_consumer_shared_used", "gauge",
      "What every instance spent of the consumer's budget, at the last "
      "reply (top consumers only)." },
    { "llm_consumer_shared_leased", "gauge",
      "What every instance holds in leases of the consumer's budget." },
    { NULL, NULL, NULL }
};


/* zones shared through Redis: the link, and the shared figures */

static u_char *
ngx_http_llm_share_prometheus(u_char *p,
    ngx_http_llm_consumers_snap_t *zones, ngx_uint_t nzones)
{
    ngx_uint_t                      i, j, k, m, any;
    ngx_http_llm_metric_t          *metric;
    ngx_http_llm_share_sh_t        *sh;
    ngx_http_llm_consumer_sh_t     *cs;
    ngx_http_llm_consumer_share_t  *share;

    static const char  *names[] = { "tokens", "requests", "quota",
                                    "budget" };

    any = 0;

    for (i = 0; i < nzones; i++) {
        any |= (zones[i].zone->share_conf != NULL);
    }

    if (!any) {
        return p;
    }

    for (m = 0; ngx_http_llm_share_metrics[m].name; m++) {
        metric = &ngx_http_llm_share_metrics[m];

        p = ngx_sprintf(p, "# HELP %s %s\n# TYPE %s %s\n",
                        metric->name, metric->help, metric->name,
                        metric->type);

        for (i = 0; i < nzones; i++) {
            if (zones[i].zone->share_conf == NULL) {
                continue;
            }

            sh = &zones[i].share;

            if (m < 6) {
                p = ngx_sprintf(p, "%s{zone=\"", metric->name);
                p = ngx_http_llm_label(p, &zones[i].shm_zone->shm.name);
                p = ngx_sprintf(p, "\"} ");

                switch (m) {

                case 0:
                    p = ngx_sprintf(p, "%d\n", zones[i].zone->share
                                    && ngx_http_llm_share_state(
                                           zones[i].zone->share)
                                       == NGX_HTTP_LLM_REDIS_READY);
                    break;

                case 1:
                    p = ngx_sprintf(p, "%uA\n", sh->replies);
                    break;

                case 2:
                    p = ngx_sprintf(p, "%uA\n", sh->errors);
                    break;

                case 3:
                    p = ngx_sprintf(p, "%uA\n", sh->degraded);
                    break;

                case 4:
                    p = ngx_sprintf(p, "%uA\n", sh->lost);
                    break;

                default: /* 5 */
                    p = ngx_sprintf(p, "%M.%03M\n", sh->lag / 1000,
                                    sh->lag % 1000);
                }

                continue;
            }

            for (j = 0; j < zones[i].ntop; j++) {
                cs = &zones[i].top[j];
                share = cs->share;

                if (share == NULL) {
                    continue;
                }

                for (k = 0; k < NGX_HTTP_LLM_BUDGETS; k++) {
                    if (share->limit[k] == 0 || share->lease[k].synced == 0)
                    {
                        continue;
                    }

                    p = ngx_sprintf(p, "%s{zone=\"", metric->name);
                    p = ngx_http_llm_label(p, &zones[i].shm_zone->shm.name);
                    p = ngx_sprintf(p, "\",consumer=\"");
                    p = ngx_http_llm_consumer_id(p, cs->digest);
                    p = ngx_sprintf(p, "\",budget=\"%s\"} %L\n", names[k],
                                    m == 6 ? share->lease[k].spent
                                           : share->lease[k].leased);
                }
            }
        }
    }

    return p;
}


/* "name{pool="...",backend="..."", the caller closes the labels */

static u_char *
ngx_http_llm_sample(u_char *p, const char *name, ngx_http_llm_pool_t *pool,
    ngx_http_llm_backend_t *b)
{
    p = ngx_sprintf(p, "%s{pool=\"", name);
    p = ngx_http_llm_label(p, &pool->name);
    p = ngx_sprintf(p, "\",backend=\"");
    p = ngx_http_llm_label(p, &b->name);
    *p++ = '"';

    return p;
}


/* a label value: backslash, double quote and newline escaped */

static u_char *
ngx_http_llm_label(u_char *p, ngx_str_t *value)
{
    u_char  *s, *last;

    last = value->data + value->len;

    for (s = value->data; s < last; s++) {
        if (*s == '\\' || *s == '"') {
            *p++ = '\\';
            *p++ = *s;

        } else if (*s == '\n') {
            *p++ = '\\';
            *p++ = 'n';

        } else {
            *p++ = *s;
        }
    }

    return p;
}
