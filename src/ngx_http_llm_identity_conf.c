
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_identity.h"
#include "ngx_http_llm_identity_conf.h"
#include "ngx_http_llm_parse.h"
#include "ngx_http_llm_secret.h"
#include "ngx_http_llm_tls.h"


/*
 * llm_identity's line: the source's defaults (from the environment
 * Azure gives the process), the endpoint resolved, and the request each
 * fetch sends, built once
 */


static ngx_int_t ngx_http_llm_identity_source(ngx_conf_t *cf,
    ngx_http_llm_identity_t *id);
static ngx_int_t ngx_http_llm_identity_endpoint(ngx_conf_t *cf,
    ngx_http_llm_identity_t *id);
static ngx_int_t ngx_http_llm_identity_request(ngx_conf_t *cf,
    ngx_http_llm_identity_t *id);


static ngx_uint_t  ngx_http_llm_identity_zone_tag;


static ngx_http_llm_option_t  ngx_http_llm_identity_options[] = {
    { ngx_string("client_id="), NGX_HTTP_LLM_OPTION_STRING,
      offsetof(ngx_http_llm_identity_t, client_id), 0, 0 },
    { ngx_string("resource="), NGX_HTTP_LLM_OPTION_STRING,
      offsetof(ngx_http_llm_identity_t, resource), 0, 0 },
    { ngx_string("endpoint="), NGX_HTTP_LLM_OPTION_STRING,
      offsetof(ngx_http_llm_identity_t, endpoint), 0, 0 },
    { ngx_string("tenant="), NGX_HTTP_LLM_OPTION_STRING,
      offsetof(ngx_http_llm_identity_t, tenant), 0, 0 },
    { ngx_string("token_file="), NGX_HTTP_LLM_OPTION_STRING,
      offsetof(ngx_http_llm_identity_t, assertion.path), 0, 0 },
    { ngx_string("trusted_certificate="), NGX_HTTP_LLM_OPTION_STRING,
      offsetof(ngx_http_llm_identity_t, trusted), 0, 0 },
    { ngx_string("timeout="), NGX_HTTP_LLM_OPTION_MSEC,
      offsetof(ngx_http_llm_identity_t, timeout), 100, 60000 },
    { ngx_null_string, 0, 0, 0, 0 }
};


/*
 * llm_identity name imds|app_service|workload [client_id=] [resource=]
 *     [endpoint=URL] [tenant=] [token_file=] [trusted_certificate=]
 *     [timeout=]
 */

char *
ngx_http_llm_identity(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_main_conf_t *lmcf = conf;

    size_t                     i, j;
    ngx_str_t                 *value, name;
    ngx_http_llm_identity_t   *id, **ids;

    value = cf->args->elts;

    for (j = 0; j < value[1].len; j++) {
        if (!(isalnum(value[1].data[j]) || value[1].data[j] == '_'
              || value[1].data[j] == '-' || value[1].data[j] == '.'))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_identity name \"%V\" may hold letters, "
                               "digits, \"_\", \"-\" and \".\" only",
                               &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    ids = lmcf->identities.elts;

    for (i = 0; i < lmcf->identities.nelts; i++) {
        if (ids[i]->name.len == value[1].len
            && ngx_strncmp(ids[i]->name.data, value[1].data, value[1].len)
               == 0)
        {
            return "is duplicate";
        }
    }

    id = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_identity_t));
    if (id == NULL) {
        return NGX_CONF_ERROR;
    }

    id->name = value[1];
    id->timeout = 10000;
    ngx_str_set(&id->resource, "https://cognitiveservices.azure.com");

    for (i = 0; i < 3; i++) {
        if (value[2].len == ngx_http_llm_identity_sources[i].len
            && ngx_strncmp(value[2].data, ngx_http_llm_identity_sources[i].data,
                           value[2].len) == 0)
        {
            break;
        }
    }

    if (i == 3) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_identity \"%V\": the source is \"imds\", "
                           "\"app_service\" or \"workload\", not \"%V\"",
                           &id->name, &value[2]);
        return NGX_CONF_ERROR;
    }

    id->source = i;

    for (i = 3; i < cf->args->nelts; i++) {
        if (ngx_http_llm_parse_option(&value[i], ngx_http_llm_identity_options,
                                      id)
            != NGX_OK)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_identity \"%V\": invalid parameter "
                               "\"%V\"", &id->name, &value[i]);
            return NGX_CONF_ERROR;
        }
    }

    if (id->trusted.len
        && ngx_conf_full_name(cf->cycle, &id->trusted, 1) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_llm_identity_source(cf, id) != NGX_OK
        || ngx_http_llm_identity_endpoint(cf, id) != NGX_OK
        || ngx_http_llm_identity_request(cf, id) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    /* the zone's slot is kept across reloads while these stay the same */

    id->hash = ngx_crc32_short(id->name.data, id->name.len)
               ^ ngx_crc32_short(id->request.data, id->request.len)
               ^ ngx_crc32_short(id->form.data, id->form.len)
               ^ (uint32_t) id->source;

    ids = ngx_array_push(&lmcf->identities);
    if (ids == NULL) {
        return NGX_CONF_ERROR;
    }

    *ids = id;

    if (lmcf->identity_zone == NULL) {
        ngx_str_set(&name, "llm_identity");

        lmcf->identity_zone = ngx_shared_memory_add(cf, &name, 0,
                                            &ngx_http_llm_identity_zone_tag);
        if (lmcf->identity_zone == NULL) {
            return NGX_CONF_ERROR;
        }

        lmcf->identity_zone->init = ngx_http_llm_identity_init_zone;
        lmcf->identity_zone->data = lmcf;
    }

    return NGX_CONF_OK;
}


/*
 * Each source's defaults, from the variables Azure sets for it, read
 * when the configuration is (the master keeps its environment)
 */

static ngx_int_t
ngx_http_llm_identity_source(ngx_conf_t *cf, ngx_http_llm_identity_t *id)
{
    u_char      *p, *env, *authority;
    size_t       len;
    ngx_str_t    missing;

    ngx_str_null(&missing);

#define ngx_http_llm_from_env(field, var)                                     \
    if (id->field.len == 0) {                                                 \
        env = (u_char *) getenv(var);                                         \
        if (env && *env) {                                                    \
            id->field.len = ngx_strlen(env);                                  \
            id->field.data = ngx_pnalloc(cf->pool, id->field.len + 1);        \
            if (id->field.data == NULL) {                                     \
                return NGX_ERROR;                                             \
            }                                                                 \
            ngx_cpystrn(id->field.data, env, id->field.len + 1);              \
        }                                                                     \
    }

    switch (id->source) {

    case NGX_HTTP_LLM_IDENTITY_IMDS:
        if (id->endpoint.len == 0) {
            ngx_str_set(&id->endpoint, "http://169.254.169.254/metadata/"
                                       "identity/oauth2/token");
        }
        break;

    case NGX_HTTP_LLM_IDENTITY_APP_SERVICE:
        ngx_http_llm_from_env(endpoint, "IDENTITY_ENDPOINT");
        ngx_http_llm_from_env(header, "IDENTITY_HEADER");

        if (id->endpoint.len == 0) {
            ngx_str_set(&missing, "IDENTITY_ENDPOINT");
        } else if (id->header.len == 0) {
            ngx_str_set(&missing, "IDENTITY_HEADER");
        }
        break;

    default: /* NGX_HTTP_LLM_IDENTITY_WORKLOAD */
        ngx_http_llm_from_env(client_id, "AZURE_CLIENT_ID");
        ngx_http_llm_from_env(tenant, "AZURE_TENANT_ID");
        ngx_http_llm_from_env(assertion.path, "AZURE_FEDERATED_TOKEN_FILE");

        if (id->client_id.len == 0) {
            ngx_str_set(&missing, "AZURE_CLIENT_ID or client_id=");
        } else if (id->assertion.path.len == 0) {
            ngx_str_set(&missing,
                        "AZURE_FEDERATED_TOKEN_FILE or token_file=");
        } else if (id->endpoint.len == 0 && id->tenant.len == 0) {
            ngx_str_set(&missing, "AZURE_TENANT_ID or tenant=");
        }

        if (missing.len) {
            break;
        }

        if (ngx_conf_full_name(cf->cycle, &id->assertion.path, 1) != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (ngx_http_llm_secret_value(cf->log, &id->assertion) != NGX_OK) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_identity \"%V\": cannot read the "
                               "federated token from \"%V\"",
                               &id->name, &id->assertion.path);
            return NGX_ERROR;
        }

        if (id->endpoint.len) {
            break;
        }

        /* the authority's token endpoint for the tenant */

        authority = (u_char *) getenv("AZURE_AUTHORITY_HOST");
        if (authority == NULL || *authority == '\0') {
            authority = (u_char *) "https://login.microsoftonline.com/";
        }

        len = ngx_strlen(authority);

        p = ngx_pnalloc(cf->pool, len + 1 + id->tenant.len
                                  + sizeof("/oauth2/v2.0/token") - 1);
        if (p == NULL) {
            return NGX_ERROR;
        }

        id->endpoint.data = p;
        p = ngx_cpymem(p, authority, len);

        if (len == 0 || authority[len - 1] != '/') {
            *p++ = '/';
        }

        p = ngx_cpymem(p, id->tenant.data, id->tenant.len);
        p = ngx_cpymem(p, "/oauth2/v2.0/token",
                       sizeof("/oauth2/v2.0/token") - 1);
        id->endpoint.len = p - id->endpoint.data;
    }

#undef ngx_http_llm_from_env

    if (missing.len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_identity \"%V\" (%V) needs %V",
                           &id->name, &ngx_http_llm_identity_sources[
                                                                id->source],
                           &missing);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* the endpoint, resolved now as a "server" line's name is */

static ngx_int_t
ngx_http_llm_identity_endpoint(ngx_conf_t *cf, ngx_http_llm_identity_t *id)
{
    size_t      skip;
    ngx_uint_t  tls;

    if (ngx_strncasecmp(id->endpoint.data, (u_char *) "https://", 8) == 0) {
        tls = 1;
        skip = 8;

    } else if (ngx_strncasecmp(id->endpoint.data, (u_char *) "http://", 7)
               == 0)
    {
        tls = 0;
        skip = 7;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_identity \"%V\": the endpoint \"%V\" is not "
                           "an http:// or https:// URL",
                           &id->name, &id->endpoint);
        return NGX_ERROR;
    }

    id->url.url.data = id->endpoint.data + skip;
    id->url.url.len = id->endpoint.len - skip;
    id->url.default_port = tls ? 443 : 80;
    id->url.uri_part = 1;

    if (ngx_parse_url(cf->pool, &id->url) != NGX_OK || id->url.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_identity \"%V\": %s in the endpoint \"%V\"",
                           &id->name,
                           id->url.err ? id->url.err : "no address",
                           &id->endpoint);
        return NGX_ERROR;
    }

    if (tls) {
#if (NGX_SSL)
        if (ngx_http_llm_tls_context(cf, &id->fetch.ssl, NULL, NULL,
                                     &id->trusted, 1)
            != NGX_CONF_OK)
        {
            return NGX_ERROR;
        }

#else
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_identity \"%V\": https:// needs nginx "
                           "built with OpenSSL", &id->name);
        return NGX_ERROR;
#endif

    } else if (id->trusted.len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_identity \"%V\": trusted_certificate= with "
                           "an http:// endpoint", &id->name);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * The request each fetch sends (a workload identity's gets its form's
 * length and the federated token at each fetch: the file rotates)
 */

static ngx_int_t
ngx_http_llm_identity_request(ngx_conf_t *cf, ngx_http_llm_identity_t *id)
{
    u_char     *p;
    size_t      len;
    ngx_str_t   scope, uri, version;

    uri = id->url.uri;
    if (uri.len == 0) {
        ngx_str_set(&uri, "/");
    }

    if (id->source == NGX_HTTP_LLM_IDENTITY_IMDS) {
        ngx_str_set(&version, "2018-02-01");
    } else {
        ngx_str_set(&version, "2019-08-01");
    }

    /* the longest each part can be: every byte of a value encoded */

    len = sizeof("POST ? HTTP/1.1" CRLF "Host: :65535" CRLF
                 "Accept: application/json" CRLF "Connection: close" CRLF
                 "Content-Type: application/x-www-form-urlencoded" CRLF
                 "X-IDENTITY-HEADER: " CRLF "Content-Length: ")
          + sizeof("Metadata: true" CRLF CRLF) + NGX_SIZE_T_LEN
          + uri.len + id->url.host.len + id->header.len
          + sizeof("api-version=&resource=&client_id=") + version.len
          + 3 * (id->resource.len + id->client_id.len);

    p = ngx_pnalloc(cf->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    id->request.data = p;

    p = ngx_sprintf(p, "%s %V",
                    id->source == NGX_HTTP_LLM_IDENTITY_WORKLOAD ? "POST"
                                                                 : "GET",
                    &uri);

    if (id->source != NGX_HTTP_LLM_IDENTITY_WORKLOAD) {
        p = ngx_sprintf(p, "%c" "api-version=%V&resource=",
                        ngx_strlchr(uri.data, uri.data + uri.len, '?')
                        ? '&' : '?', &version);
        p = ngx_http_llm_identity_encode(p, &id->resource);

        if (id->client_id.len) {
            p = ngx_cpymem(p, "&client_id=", sizeof("&client_id=") - 1);
            p = ngx_http_llm_identity_encode(p, &id->client_id);
        }
    }

    p = ngx_sprintf(p, " HTTP/1.1" CRLF "Host: %V", &id->url.host);

    if (id->url.port != id->url.default_port) {
        p = ngx_sprintf(p, ":%d", (int) id->url.port);
    }

    p = ngx_cpymem(p, CRLF "Accept: application/json" CRLF
                   "Connection: close" CRLF,
                   sizeof(CRLF "Accept: application/json" CRLF
                          "Connection: close" CRLF) - 1);

    switch (id->source) {

    case NGX_HTTP_LLM_IDENTITY_IMDS:
        p = ngx_cpymem(p, "Metadata: true" CRLF CRLF,
                       sizeof("Metadata: true" CRLF CRLF) - 1);
        break;

    case NGX_HTTP_LLM_IDENTITY_APP_SERVICE:
        p = ngx_sprintf(p, "X-IDENTITY-HEADER: %V" CRLF CRLF, &id->header);
        break;

    default:
        p = ngx_cpymem(p, "Content-Type: application/x-www-form-urlencoded"
                       CRLF "Content-Length: ",
                       sizeof("Content-Type: application/x-www-form-"
                              "urlencoded" CRLF "Content-Length: ") - 1);
    }

    id->request.len = p - id->request.data;

    if (id->source != NGX_HTTP_LLM_IDENTITY_WORKLOAD) {
        return NGX_OK;
    }

    /* the form, up to the federated token */

    scope.len = id->resource.len + sizeof("/.default") - 1;
    scope.data = ngx_pnalloc(cf->pool, scope.len);
    if (scope.data == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(scope.data, "%V/.default", &id->resource);

    p = ngx_pnalloc(cf->pool, 3 * (id->client_id.len + scope.len) + 256);
    if (p == NULL) {
        return NGX_ERROR;
    }

    id->form.data = p;

    p = ngx_cpymem(p, "grant_type=client_credentials&client_id=",
                   sizeof("grant_type=client_credentials&client_id=") - 1);
    p = ngx_http_llm_identity_encode(p, &id->client_id);
    p = ngx_cpymem(p, "&scope=", sizeof("&scope=") - 1);
    p = ngx_http_llm_identity_encode(p, &scope);
    p = ngx_cpymem(p, "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth"
                   "%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=",
                   sizeof("&client_assertion_type=urn%3Aietf%3Aparams%3A"
                          "oauth%3Aclient-assertion-type%3Ajwt-bearer"
                          "&client_assertion=") - 1);

    id->form.len = p - id->form.data;

    return NGX_OK;
}


/*
 * Once the http block is read: each backend's identity= found, and the
 * zone sized for the identities, one slot each
 */

char *
ngx_http_llm_identities_init(ngx_conf_t *cf, ngx_http_llm_main_conf_t *lmcf)
{
    ngx_uint_t                 i, j, k;
    ngx_http_llm_pool_t      **pools;
    ngx_http_llm_backend_t    *b;
    ngx_http_llm_identity_t  **ids;

    pools = lmcf->pools.elts;
    ids = lmcf->identities.elts;

    for (i = 0; i < lmcf->pools.nelts; i++) {
        b = pools[i]->backends.elts;

        for (j = 0; j < pools[i]->backends.nelts; j++) {
            if (b[j].identity_name.len == 0) {
                continue;
            }

            for (k = 0; k < lmcf->identities.nelts; k++) {
                if (ids[k]->name.len == b[j].identity_name.len
                    && ngx_strncmp(ids[k]->name.data,
                                   b[j].identity_name.data,
                                   ids[k]->name.len) == 0)
                {
                    break;
                }
            }

            if (k == lmcf->identities.nelts) {
                ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                              "llm_backend \"%V\" of \"%V\": no "
                              "\"llm_identity %V\"", &b[j].name,
                              &pools[i]->name, &b[j].identity_name);
                return NGX_CONF_ERROR;
            }

            b[j].identity = ids[k];
            ids[k]->used = 1;
            pools[i]->identities = 1;
        }
    }

    if (lmcf->identity_zone) {
        lmcf->identity_zone->shm.size = 8 * ngx_pagesize
            + ngx_align(lmcf->identities.nelts
                        * sizeof(ngx_http_llm_identity_sh_t), ngx_pagesize);
    }

    return NGX_CONF_OK;
}
