
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <cjson/cJSON.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_identity.h"
#include "ngx_http_llm_secret.h"
#include "ngx_http_llm_tls.h"


/*
 * llm_identity: Entra ID tokens that nginx obtains itself, for backends
 * whose resource accepts no keys.  A token is asked of the managed
 * identity endpoint of the VM or AKS node (IMDS), of App Service's
 * IDENTITY_ENDPOINT, or of Entra's token endpoint in exchange for AKS
 * workload identity's federated token.
 *
 * One worker at a time fetches, from its event loop: the first to see
 * that a token is due takes a lease in the shared zone.  The token is
 * kept in the zone for every worker, fetched again halfway through its
 * life (or when the endpoint's refresh_in says), and after a failure
 * tried again after 1 s, doubling up to 30 s, while the last token
 * serves until it expires.  Backends with no valid token are passed
 * over like backends that are down.
 */


static void ngx_http_llm_identity_forget(ngx_http_llm_identity_t *id);
static void ngx_http_llm_identity_tick(ngx_event_t *ev);
static void ngx_http_llm_identity_start(ngx_http_llm_identity_t *id);
static void ngx_http_llm_identity_done(ngx_http_llm_fetch_t *f);
static void ngx_http_llm_identity_refused(ngx_http_llm_identity_t *id,
    ngx_http_llm_fetch_t *f);
static void ngx_http_llm_identity_accept(ngx_http_llm_identity_t *id,
    cJSON *json);
static ngx_int_t ngx_http_llm_identity_seconds(cJSON *json,
    const char *name);
static void ngx_http_llm_identity_fail(ngx_http_llm_identity_t *id,
    u_char *error);


ngx_str_t  ngx_http_llm_identity_sources[] = {
    ngx_string("imds"),
    ngx_string("app_service"),
    ngx_string("workload"),
};


/*
 * The slots, one per identity in the order of the lines.  A zone kept
 * across a reload has as many (its size says so); a slot is emptied when
 * its line changed, and a worker of the old configuration, which still
 * reads it, sees another hash and uses no token of another identity.
 */

ngx_int_t
ngx_http_llm_identity_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_llm_main_conf_t *lmcf = shm_zone->data;

    ngx_uint_t                   i, version;
    ngx_slab_pool_t             *shpool;
    ngx_http_llm_identity_t    **ids;
    ngx_http_llm_identity_sh_t  *slots;

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;
    ids = lmcf->identities.elts;

    if (data) {
        /* workers of the old configuration still use the slots */
        ngx_shmtx_lock(&shpool->mutex);
        slots = shpool->data;

    } else {
        slots = ngx_slab_alloc(shpool, lmcf->identities.nelts
                                       * sizeof(ngx_http_llm_identity_sh_t));
        if (slots == NULL) {
            return NGX_ERROR;
        }

        ngx_memzero(slots, lmcf->identities.nelts
                           * sizeof(ngx_http_llm_identity_sh_t));
        shpool->data = slots;
    }

    for (i = 0; i < lmcf->identities.nelts; i++) {
        if (slots[i].hash != ids[i]->hash) {
            version = slots[i].version;
            ngx_explicit_memzero(&slots[i],
                                 sizeof(ngx_http_llm_identity_sh_t));
            slots[i].hash = ids[i]->hash;
            slots[i].version = version + 1;
        }

        ids[i]->sh = &slots[i];
        ids[i]->shpool = shpool;
    }

    if (data) {
        ngx_shmtx_unlock(&shpool->mutex);
    }

    return NGX_OK;
}


/* a query or form value: all but RFC 3986's unreserved bytes encoded */

u_char *
ngx_http_llm_identity_encode(u_char *p, ngx_str_t *s)
{
    u_char      c;
    size_t      i;
    static u_char  hex[] = "0123456789ABCDEF";

    for (i = 0; i < s->len; i++) {
        c = s->data[i];

        if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
            *p++ = c;
            continue;
        }

        *p++ = '%';
        *p++ = hex[c >> 4];
        *p++ = hex[c & 0xf];
    }

    return p;
}


size_t
ngx_http_llm_identity_encoded(ngx_str_t *s)
{
    u_char  c;
    size_t  i, len;

    len = s->len;

    for (i = 0; i < s->len; i++) {
        c = s->data[i];

        if (!(isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~')) {
            len += 2;
        }
    }

    return len;
}


/*
 * A fetch's own request, a workload identity's, wiped and freed: its
 * form held the federated token
 */

static void
ngx_http_llm_identity_forget(ngx_http_llm_identity_t *id)
{
    if (id->fetch.request.data != id->request.data) {
        ngx_explicit_memzero(id->fetch.request.data, id->fetch.request.len);
        ngx_free(id->fetch.request.data);
        id->fetch.request = id->request;
    }
}


/* in each worker: a look every second at each identity a backend uses */

ngx_int_t
ngx_http_llm_identities_start(ngx_cycle_t *cycle,
    ngx_http_llm_main_conf_t *lmcf)
{
    ngx_uint_t                 i;
    ngx_http_llm_identity_t  **ids, *id;

    ids = lmcf->identities.elts;

    for (i = 0; i < lmcf->identities.nelts; i++) {
        id = ids[i];

        if (!id->used) {
            continue;
        }

        id->value.data = ngx_alloc(sizeof("Bearer ") - 1
                                   + NGX_HTTP_LLM_TOKEN_MAX, cycle->log);
        if (id->value.data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(id->value.data, "Bearer ", sizeof("Bearer ") - 1);
        id->value.len = 0;
        id->version = (ngx_uint_t) -1;

        id->fetch.addr = &id->url.addrs[0];
        id->fetch.name = &id->url.host;
        id->fetch.address = ngx_http_llm_tls_is_address(&id->url.host);
        id->fetch.timeout = id->timeout;
        id->fetch.log = cycle->log;
        id->fetch.handler = ngx_http_llm_identity_done;
        id->fetch.data = id;

        id->tick.handler = ngx_http_llm_identity_tick;
        id->tick.data = id;
        id->tick.log = cycle->log;
        id->tick.cancelable = 1;

        /* the first look at once: a token is wanted before requests */
        ngx_add_timer(&id->tick, 1);
    }

    return NGX_OK;
}


/* a worker's end: a fetch under way is dropped, another worker's next */

void
ngx_http_llm_identities_stop(ngx_http_llm_main_conf_t *lmcf)
{
    ngx_uint_t                 i;
    ngx_http_llm_identity_t  **ids;

    ids = lmcf->identities.elts;

    for (i = 0; i < lmcf->identities.nelts; i++) {
        if (ids[i]->fetching) {
            ids[i]->fetching = 0;
            ngx_http_llm_fetch_close(&ids[i]->fetch);

            /* another worker need not wait for this one's lease */

            ngx_shmtx_lock(&ids[i]->shpool->mutex);

            if (ids[i]->sh->hash == ids[i]->hash) {
                ids[i]->sh->lease = 0;
            }

            ngx_shmtx_unlock(&ids[i]->shpool->mutex);

            ngx_http_llm_identity_forget(ids[i]);
        }
    }
}


static void
ngx_http_llm_identity_tick(ngx_event_t *ev)
{
    ngx_http_llm_identity_t *id = ev->data;

    time_t                       now;
    ngx_msec_t                   ms;
    ngx_uint_t                   due;
    ngx_http_llm_identity_sh_t  *sh;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ngx_add_timer(ev, 1000);

    if (id->fetching) {
        return;
    }

    sh = id->sh;
    now = ngx_time();
    ms = ngx_current_msec;

    ngx_shmtx_lock(&id->shpool->mutex);

    due = sh->hash == id->hash
          && (sh->len == 0 || now >= sh->refresh)
          && (sh->next == 0 || (ngx_msec_int_t) (ms - sh->next) >= 0)
          && (sh->lease == 0 || (ngx_msec_int_t) (ms - sh->lease) >= 0);

    if (due) {
        /* no other worker starts one while this one may be running */
        sh->lease = (ms + id->timeout + 1000) | 1;
    }

    ngx_shmtx_unlock(&id->shpool->mutex);

    if (due) {
        ngx_http_llm_identity_start(id);
    }
}


/* one fetch; a workload identity's request carries the federated token */

static void
ngx_http_llm_identity_start(ngx_http_llm_identity_t *id)
{
    u_char     *p;
    size_t      len;
    ngx_str_t  *assertion;

    id->fetch.request = id->request;

    if (id->source == NGX_HTTP_LLM_IDENTITY_WORKLOAD) {

        if (ngx_http_llm_secret_value(id->fetch.log, &id->assertion)
            != NGX_OK)
        {
            ngx_http_llm_identity_fail(id,
                                  (u_char *) "cannot read the federated token");
            return;
        }

        assertion = &id->assertion.value;

        len = id->form.len + ngx_http_llm_identity_encoded(assertion);

        p = ngx_alloc(id->request.len + NGX_SIZE_T_LEN + 4 + len,
                      id->fetch.log);
        if (p == NULL) {
            ngx_http_llm_identity_fail(id, (u_char *) "no memory");
            return;
        }

        id->fetch.request.data = p;

        p = ngx_cpymem(p, id->request.data, id->request.len);
        p = ngx_sprintf(p, "%uz" CRLF CRLF, len);
        p = ngx_cpymem(p, id->form.data, id->form.len);
        p = ngx_http_llm_identity_encode(p, assertion);

        id->fetch.request.len = p - id->fetch.request.data;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, id->fetch.log, 0,
                   "llm identity \"%V\": fetching a token", &id->name);

    id->fetching = 1;

    ngx_http_llm_fetch(&id->fetch);
}


static void
ngx_http_llm_identity_done(ngx_http_llm_fetch_t *f)
{
    ngx_http_llm_identity_t *id = f->data;

    cJSON  *json, *token;

    id->fetching = 0;

    ngx_http_llm_identity_forget(id);

    if (f->error) {
        ngx_http_llm_identity_fail(id, f->error);
        ngx_http_llm_fetch_close(f);
        return;
    }

    if (f->status != NGX_HTTP_OK) {
        ngx_http_llm_identity_refused(id, f);
        ngx_http_llm_fetch_close(f);
        return;
    }

    json = cJSON_ParseWithLength((char *) f->body.data, f->body.len);

    ngx_http_llm_fetch_close(f);

    if (json == NULL || !cJSON_IsObject(json)) {
        ngx_http_llm_identity_fail(id, (u_char *) "a reply that is not "
                                                  "a JSON object");
        cJSON_Delete(json);
        return;
    }

    ngx_http_llm_identity_accept(id, json);

    /* cJSON frees without wiping: the token goes first */

    token = cJSON_GetObjectItemCaseSensitive(json, "access_token");

    if (cJSON_IsString(token)) {
        ngx_explicit_memzero(token->valuestring,
                             ngx_strlen(token->valuestring));
    }

    cJSON_Delete(json);
}


/*
 * A reply other than 200: its status and what the endpoint said of it
 * (Entra's and IMDS's "error" and "error_description", App Service's
 * "message"), which holds no secret
 */

static void
ngx_http_llm_identity_refused(ngx_http_llm_identity_t *id,
    ngx_http_llm_fetch_t *f)
{
    u_char  *p, *last, error[NGX_HTTP_LLM_IDENTITY_ERROR];
    cJSON   *json, *code, *text;

    last = error + sizeof(error) - 1;
    p = ngx_slprintf(error, last, "%ui", f->status);

    json = cJSON_ParseWithLength((char *) f->body.data, f->body.len);

    code = cJSON_GetObjectItemCaseSensitive(json, "error");
    text = cJSON_GetObjectItemCaseSensitive(json, "error_description");

    if (text == NULL) {
        text = cJSON_GetObjectItemCaseSensitive(json, "message");
    }

    if (cJSON_IsString(code)) {
        p = ngx_slprintf(p, last, " %s", code->valuestring);
    }

    if (cJSON_IsString(text)) {
        p = ngx_slprintf(p, last, ": %s", text->valuestring);
    }

    *p = '\0';

    cJSON_Delete(json);

    /* one line in the log, whatever the endpoint wrote */

    for (p = error; *p; p++) {
        if (*p < 0x20 || *p == 0x7f) {
            *p = ' ';
        }
    }

    ngx_http_llm_identity_fail(id, error);
}


/*
 * A token: printable and without blanks (it goes into a header), and
 * with a life, from expires_in (a number, or a string as IMDS sends
 * it) or else expires_on (the time it ends, as App Service sends it)
 */

static void
ngx_http_llm_identity_accept(ngx_http_llm_identity_t *id, cJSON *json)
{
    u_char                      *p;
    size_t                       len;
    time_t                       now;
    ngx_int_t                    life, refresh;
    cJSON                       *token;
    ngx_http_llm_identity_sh_t  *sh;

    token = cJSON_GetObjectItemCaseSensitive(json, "access_token");

    if (!cJSON_IsString(token)) {
        ngx_http_llm_identity_fail(id, (u_char *) "a reply without "
                                                  "\"access_token\"");
        return;
    }

    p = (u_char *) token->valuestring;
    len = ngx_strlen(p);

    if (len == 0 || len > NGX_HTTP_LLM_TOKEN_MAX) {
        ngx_http_llm_identity_fail(id, (u_char *) "an empty or too long "
                                                  "token");
        return;
    }

    while (*p) {
        if (*p <= 0x20 || *p >= 0x7f) {
            ngx_http_llm_identity_fail(id, (u_char *) "a token that is not "
                                              "printable ASCII");
            return;
        }

        p++;
    }

    now = ngx_time();

    life = ngx_http_llm_identity_seconds(json, "expires_in");

    if (life == NGX_ERROR) {
        life = ngx_http_llm_identity_seconds(json, "expires_on");
        life = (life == NGX_ERROR) ? NGX_ERROR : life - now;
    }

    if (life <= 0) {
        ngx_http_llm_identity_fail(id, (u_char *) "a token without a "
                                        "lifetime, or an expired one");
        return;
    }

    /*
     * Entra's tokens live a day at most: a longer life said is taken as
     * a day, so that the token is fetched again within one
     */

    life = ngx_min(life, NGX_HTTP_LLM_IDENTITY_LIFE_MAX);

    refresh = ngx_http_llm_identity_seconds(json, "refresh_in");

    if (refresh <= 0 || refresh >= life) {
        refresh = life / 2;
    }

    sh = id->sh;

    ngx_shmtx_lock(&id->shpool->mutex);

    /*
     * a worker of an older configuration, whose identity's slot was
     * given to a changed line by a reload: its token is not this one's
     */

    if (sh->hash != id->hash) {
        ngx_shmtx_unlock(&id->shpool->mutex);
        return;
    }

    ngx_memcpy(sh->token, token->valuestring, len);
    sh->len = len;
    sh->expires = now + life;
    sh->refresh = now + refresh;
    sh->version++;
    sh->failures = 0;
    sh->fetched++;
    sh->tried = 1;
    sh->lease = 0;
    sh->next = 0;
    sh->error[0] = '\0';

    ngx_shmtx_unlock(&id->shpool->mutex);

    ngx_log_error(NGX_LOG_INFO, id->fetch.log, 0,
                  "llm: identity \"%V\" has a token valid for %i s, "
                  "fetched again in %i s", &id->name, life, refresh);
}


/* a number of seconds, sent as a number or as a string of digits */

static ngx_int_t
ngx_http_llm_identity_seconds(cJSON *json, const char *name)
{
    u_char     *p;
    cJSON      *item;
    ngx_int_t   n;

    item = cJSON_GetObjectItemCaseSensitive(json, name);

    /* a time past any clock is the last one a 32-bit number holds */

    if (cJSON_IsNumber(item)) {
        if (item->valuedouble < 0) {
            return NGX_ERROR;
        }

        return (item->valuedouble > NGX_MAX_INT32_VALUE)
               ? NGX_MAX_INT32_VALUE : (ngx_int_t) item->valuedouble;
    }

    if (!cJSON_IsString(item) || item->valuestring[0] == '\0') {
        return NGX_ERROR;
    }

    n = 0;

    for (p = (u_char *) item->valuestring; *p; p++) {
        if (*p < '0' || *p > '9') {
            return NGX_ERROR;
        }

        n = (n > (NGX_MAX_INT32_VALUE - 9) / 10) ? NGX_MAX_INT32_VALUE
                                                 : n * 10 + (*p - '0');
    }

    return n;
}


/*
 * No token this time: the next attempt after a pause that doubles, and
 * the last token, if any, serves until it expires
 */

static void
ngx_http_llm_identity_fail(ngx_http_llm_identity_t *id, u_char *error)
{
    time_t                       left;
    ngx_msec_t                   pause;
    ngx_uint_t                   failures;
    ngx_http_llm_identity_sh_t  *sh;

    sh = id->sh;

    ngx_shmtx_lock(&id->shpool->mutex);

    if (sh->hash != id->hash) {
        /* the slot is another line's since a reload (see accept) */
        ngx_shmtx_unlock(&id->shpool->mutex);
        return;
    }

    failures = ++sh->failures;
    sh->failed++;
    sh->tried = 1;
    sh->lease = 0;

    pause = ngx_min((ngx_msec_t) 1000 << ngx_min(failures - 1, 5),
                    NGX_HTTP_LLM_IDENTITY_BACKOFF);
    sh->next = (ngx_current_msec + pause) | 1;

    ngx_cpystrn(sh->error, error, sizeof(sh->error));

    left = sh->len ? sh->expires - ngx_time() : 0;

    ngx_shmtx_unlock(&id->shpool->mutex);

    if (left > 0) {
        ngx_log_error(NGX_LOG_WARN, id->fetch.log, 0,
                      "llm: identity \"%V\" got no token from \"%V\": %s; "
                      "the last one serves %T s more, next try in %M ms",
                      &id->name, &id->endpoint, error, left, pause);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, id->fetch.log, 0,
                  "llm: identity \"%V\" got no token from \"%V\": %s; its "
                  "backends are passed over, next try in %M ms",
                  &id->name, &id->endpoint, error, pause);
}


/*
 * This worker's copy of the token, taken again when the zone's changed:
 * NGX_OK, NGX_AGAIN while the first token is on its way, NGX_DECLINED
 * when there is none
 */

ngx_int_t
ngx_http_llm_identity_token(ngx_http_llm_identity_t *id, ngx_str_t *value)
{
    ngx_http_llm_identity_sh_t  *sh;

    sh = id->sh;

    if (id->value.data == NULL || sh == NULL) {
        return NGX_DECLINED;
    }

    if (sh->version != id->version) {
        ngx_shmtx_lock(&id->shpool->mutex);

        if (sh->hash == id->hash && sh->len) {
            ngx_memcpy(id->value.data + sizeof("Bearer ") - 1, sh->token,
                       sh->len);
            id->value.len = sizeof("Bearer ") - 1 + sh->len;
            id->expires = sh->expires;

        } else {
            id->value.len = 0;
        }

        id->version = sh->version;

        ngx_shmtx_unlock(&id->shpool->mutex);
    }

    if (id->value.len && ngx_time() < id->expires) {
        *value = id->value;
        return NGX_OK;
    }

    return (sh->tried || sh->hash != id->hash) ? NGX_DECLINED : NGX_AGAIN;
}


/* llm_status: each identity's state, never its token */

size_t
ngx_http_llm_identities_size(ngx_http_llm_main_conf_t *lmcf)
{
    size_t                     size;
    ngx_uint_t                 i;
    ngx_http_llm_identity_t  **ids;

    ids = lmcf->identities.elts;
    size = 1024;

    /* JSON escapes a byte into 6 at most; Prometheus names it 3 times */

    for (i = 0; i < lmcf->identities.nelts; i++) {
        size += 1024 + 6 * NGX_HTTP_LLM_IDENTITY_ERROR
                + 4 * ids[i]->name.len + 6 * ids[i]->endpoint.len;
    }

    return size;
}


u_char *
ngx_http_llm_identities_json(u_char *p, ngx_http_llm_main_conf_t *lmcf)
{
    time_t                       now;
    ngx_uint_t                   i;
    const char                  *state;
    ngx_http_llm_identity_t    **ids, *id;
    ngx_http_llm_identity_sh_t   sh;
    u_char                       error[NGX_HTTP_LLM_IDENTITY_ERROR * 6];

    ids = lmcf->identities.elts;
    now = ngx_time();

    for (i = 0; i < lmcf->identities.nelts; i++) {
        id = ids[i];

        ngx_shmtx_lock(&id->shpool->mutex);
        ngx_memcpy(&sh, id->sh, offsetof(ngx_http_llm_identity_sh_t, token));
        ngx_shmtx_unlock(&id->shpool->mutex);

        if (!id->used) {
            state = "unused";

        } else if (sh.len && now < sh.expires) {
            state = sh.failures ? "failing" : "ready";

        } else {
            state = sh.tried ? (sh.len ? "expired" : "failing")
                             : "starting";
        }

        sh.error[sizeof(sh.error) - 1] = '\0';
        *(u_char *) ngx_escape_json(error, sh.error,
                                    ngx_strlen(sh.error)) = '\0';

        p = ngx_sprintf(p, "%s{\"name\":\"%V\",\"source\":\"%V\","
                        "\"endpoint\":\"", i ? "," : "", &id->name,
                        &ngx_http_llm_identity_sources[id->source]);
        p = (u_char *) ngx_escape_json(p, id->endpoint.data,
                                       id->endpoint.len);
        p = ngx_sprintf(p, "\",\"state\":\"%s\","
                        "\"expires_in\":%T,\"refresh_in\":%T,"
                        "\"fetched\":%ui,\"failed\":%ui,"
                        "\"failures_in_a_row\":%ui,\"last_error\":\"%s\"}",
                        state,
                        sh.len ? ngx_max(sh.expires - now, 0) : 0,
                        sh.len ? ngx_max(sh.refresh - now, 0) : 0,
                        sh.fetched, sh.failed, sh.failures, error);
    }

    return p;
}


u_char *
ngx_http_llm_identities_prometheus(u_char *p, ngx_http_llm_main_conf_t *lmcf)
{
    time_t                       now;
    ngx_uint_t                   i, k;
    ngx_http_llm_identity_t    **ids;
    ngx_http_llm_identity_sh_t   sh[1];

    static const char  *help[] = {
        "llm_identity_token_expiry_seconds",
        "Seconds until the identity's Entra ID token expires (0: none)",
        "gauge",
        "llm_identity_fetches_total",
        "Tokens fetched from the identity's endpoint",
        "counter",
        "llm_identity_failures_total",
        "Failed attempts to fetch a token from the identity's endpoint",
        "counter",
    };

    if (lmcf->identities.nelts == 0) {
        return p;
    }

    ids = lmcf->identities.elts;
    now = ngx_time();

    for (k = 0; k < 3; k++) {
        p = ngx_sprintf(p, "# HELP %s %s\n# TYPE %s %s\n",
                        help[3 * k], help[3 * k + 1], help[3 * k],
                        help[3 * k + 2]);

        for (i = 0; i < lmcf->identities.nelts; i++) {
            ngx_shmtx_lock(&ids[i]->shpool->mutex);
            ngx_memcpy(sh, ids[i]->sh,
                       offsetof(ngx_http_llm_identity_sh_t, error));
            ngx_shmtx_unlock(&ids[i]->shpool->mutex);

            p = ngx_sprintf(p, "%s{identity=\"%V\"} %T\n", help[3 * k],
                            &ids[i]->name,
                            k == 0 ? (sh->len ? ngx_max(sh->expires - now, 0)
                                              : 0)
                                   : (time_t) (k == 1 ? sh->fetched
                                                      : sh->failed));
        }
    }

    return p;
}
