
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include "ngx_http_llm_share.h"


/*
 * Budgets shared by several nginx instances, through Redis, without a
 * round trip per request.  Each instance holds a lease of every budget
 * it serves: a part of the limit that Redis has set aside for it and
 * that it may spend locally.  What it spends goes into a ring of slots
 * and is reported every llm_zone redis_sync= period, each amount with
 * its age, so that Redis counts it in the slot it was spent in; the same
 * call renews the lease.  Redis grants a lease only out of what is left
 * after everything spent in the window and every other instance's
 * lease, so the instances together never admit more than the limit;
 * to a request it grants what the request lacks or nothing, as a part
 * of that would only keep from the others what they could use.
 *
 * A lease lapses in Redis redis_sync x 10 (at least a second) after its
 * last renewal, so a stopped instance's share comes back by itself; the
 * instance stops spending it at the same time by its own clock, counted
 * from when it asked, which is no later.  An idle budget's lease is
 * given back.
 *
 * In Redis a budget is one hash: "s<slot>" holds what every instance
 * spent in a slot, "l<instance>" an instance's lease and when it lapses.
 * The script below does one budget's report and renewal atomically; it
 * takes the time from Redis, so the instances' clocks need not agree.
 *
 * A report whose reply is lost (the connection failed or timed out) may
 * have been applied or not, or may yet arrive; its amounts go back into
 * the ring and the next report sends them again.  So that they count
 * once, each worker process is a link with an id of its own and numbers
 * its reports, and "o<link>" keeps the link's last four: each one's
 * number, when, and the amounts it added by Redis's slot, ten minutes
 * at most.  A report names the lost ones of its budget; Redis first
 * undoes every one of them it applied (and keeps it, undone), and marks
 * the ones it never saw, so that if they arrive late they add nothing;
 * a report it has already seen adds nothing either.  A link's report
 * that it applied and that the link's next one does not name was
 * answered: its amounts are dropped, so that a link busy with a budget
 * keeps one report in Redis, not four.
 */

static ngx_str_t  ngx_http_llm_lease_script = ngx_string(
"local key = KEYS[1]\n"
"local inst = ARGV[1]\n"
"local slot_ms = tonumber(ARGV[2])\n"
"local nslots = tonumber(ARGV[3])\n"
"local limit = tonumber(ARGV[4])\n"
"local ask = tonumber(ARGV[5])\n"
"local ttl = tonumber(ARGV[6])\n"
"local link = ARGV[8]\n"
"local least = tonumber(ARGV[11])\n"
"local t = redis.call('TIME')\n"
"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
"local keep = math.min(tonumber(ARGV[7]), 600000)\n"
"local slot = 0\n"
"if slot_ms > 0 then slot = math.floor(now / slot_ms) end\n"
"local spent, leased, own = 0, 0, 0\n"
"local ops, dirty = {}, {}\n"
"local all = redis.call('HGETALL', key)\n"
"for i = 1, #all, 2 do\n"
"  local f, v = all[i], all[i + 1]\n"
"  local k = string.sub(f, 1, 1)\n"
"  if k == 's' then\n"
"    local s = tonumber(string.sub(f, 2))\n"
"    if s == nil or (slot_ms > 0 and s <= slot - nslots) then\n"
"      redis.call('HDEL', key, f)\n"
"    else\n"
"      spent = spent + (tonumber(v) or 0)\n"
"    end\n"
"  elseif k == 'l' then\n"
"    local a, e = string.match(v, '^(%-?%d+):(%d+)$')\n"
"    a = tonumber(a)\n"
"    e = tonumber(e)\n"
"    if a == nil or e == nil or e <= now then\n"
"      redis.call('HDEL', key, f)\n"
"    elseif string.sub(f, 2) == inst then\n"
"      own = a\n"
"    else\n"
"      leased = leased + a\n"
"    end\n"
"  elseif k == 'o' then\n"
"    local list = {}\n"
"    for q, at, a in string.gmatch(v, '(%d+)|(%d+)|([^;]*)') do\n"
"      if tonumber(at) + keep > now then\n"
"        list[#list + 1] = {q, at, a}\n"
"      end\n"
"    end\n"
"    if #list == 0 then\n"
"      redis.call('HDEL', key, f)\n"
"    end\n"
"    ops[string.sub(f, 2)] = list\n"
"  end\n"
"end\n"
"local function find(l, q)\n"
"  local list = ops[l] or {}\n"
"  ops[l] = list\n"
"  for _, r in ipairs(list) do\n"
"    if r[1] == q then return r, true end\n"
"  end\n"
"  local r = {q, string.format('%d', now), ''}\n"
"  list[#list + 1] = r\n"
"  dirty[l] = true\n"
"  return r, false\n"
"end\n"
"for l, q in string.gmatch(ARGV[10], '(%x+):(%d+)') do\n"
"  local r = find(l, q)\n"
"  for s, d in string.gmatch(r[3], '(%w+):(%-?%d+)') do\n"
"    d = tonumber(d)\n"
"    own = own + d\n"
"    s = tonumber(s)\n"
"    if s and (slot_ms == 0 or s > slot - nslots) then\n"
"      redis.call('HINCRBY', key, 's' .. s, -d)\n"
"      spent = spent - d\n"
"    end\n"
"  end\n"
"  if r[3] ~= '' then\n"
"    r[3] = ''\n"
"    dirty[l] = true\n"
"  end\n"
"end\n"
"local mine, seen = nil, false\n"
"if ARGV[9] ~= '0' then\n"
"  local kept = {}\n"
"  for _, r in ipairs(ops[link] or {}) do\n"
"    if r[3] == '' or tonumber(r[1]) >= tonumber(ARGV[9]) then\n"
"      kept[#kept + 1] = r\n"
"    else\n"
"      dirty[link] = true\n"
"    end\n"
"  end\n"
"  ops[link] = kept\n"
"  mine, seen = find(link, ARGV[9])\n"
"end\n"
"local placed = {}\n"
"for i = 12, #ARGV - 1, 2 do\n"
"  local age, d = tonumber(ARGV[i]), tonumber(ARGV[i + 1])\n"
"  if not seen then\n"
"    local s = 0\n"
"    if slot_ms > 0 then s = math.floor((now - age) / slot_ms) end\n"
"    if slot_ms == 0 or s > slot - nslots then\n"
"      redis.call('HINCRBY', key, 's' .. s, d)\n"
"      spent = spent + d\n"
"      placed[#placed + 1] = string.format('%d', s) .. ':' .. ARGV[i + 1]\n"
"    else\n"
"      placed[#placed + 1] = 'x:' .. ARGV[i + 1]\n"
"    end\n"
"    own = own - d\n"
"  end\n"
"end\n"
"if mine and not seen then mine[3] = table.concat(placed, ',') end\n"
"for l in pairs(dirty) do\n"
"  local list = ops[l]\n"
"  table.sort(list, function(a, b)\n"
"    return tonumber(a[1]) > tonumber(b[1])\n"
"  end)\n"
"  local out = {}\n"
"  for j = 1, math.min(#list, 4) do\n"
"    out[j] = list[j][1] .. '|' .. list[j][2] .. '|' .. list[j][3]\n"
"  end\n"
"  redis.call('HSET', key, 'o' .. l, table.concat(out, ';'))\n"
"end\n"
"if own < 0 then own = 0 end\n"
"if ask < 0 then\n"
"  own = math.max(0, own + ask)\n"
"  ask = 0\n"
"end\n"
"local grant = 0\n"
"local room = limit - spent - leased - own\n"
"if ask > 0 and room > 0 and room >= least then\n"
"  grant = math.min(ask, room)\n"
"end\n"
"own = own + grant\n"
"if own > 0 then\n"
"  redis.call('HSET', key, 'l' .. inst, own .. ':' .. (now + ttl))\n"
"else\n"
"  redis.call('HDEL', key, 'l' .. inst)\n"
"end\n"
"redis.call('PEXPIRE', key, tonumber(ARGV[7]))\n"
"return {grant, own, spent, leased}\n");


/* a report and renewal on its way; the ring's amounts, to put back */

typedef struct {
    ngx_http_llm_share_t        *share;
    ngx_http_llm_lease_t        *lease;
    int64_t                     *ring;
    ngx_uint_t                   nslots;
    ngx_msec_t                   slot_ms;
    ngx_msec_t                   sent;
    int64_t                      ask;
    uint64_t                     seq;        /* 0: no amounts */
    ngx_http_llm_doubt_t         doubt;      /* the newest it names */
    ngx_uint_t                   n;
    int64_t                      slot[1];    /* then n deltas */
} ngx_http_llm_lease_op_t;


#define NGX_HTTP_LLM_LEASE_ARGS  15
#define NGX_HTTP_LLM_DOUBTS_LEN                                               \
    (NGX_HTTP_LLM_DOUBTS * (16 + 1 + NGX_INT64_LEN + 1))


static void ngx_http_llm_share_state_changed(void *data, redisReply *reply);
static void ngx_http_llm_ring_advance(ngx_http_llm_lease_t *lease,
    int64_t *ring, ngx_uint_t n, ngx_msec_t slot_ms, ngx_msec_t now);
static void ngx_http_llm_ring_add(ngx_http_llm_lease_t *lease, int64_t *ring,
    ngx_uint_t n, ngx_msec_t slot_ms, int64_t value, ngx_msec_t at,
    ngx_msec_t now);
static void ngx_http_llm_lease_done(void *data, redisReply *reply);
static void ngx_http_llm_lease_restore(ngx_http_llm_lease_op_t *op,
    ngx_msec_t now);
static void ngx_http_llm_lease_doubt(ngx_http_llm_lease_t *lease,
    uint64_t link, uint64_t seq);
static void ngx_http_llm_lease_settled(ngx_http_llm_lease_t *lease,
    ngx_http_llm_doubt_t *named);


/*
 * llm_zone's options: redis=URL redis_password_file=path redis_sync=time
 * redis_timeout=time redis_share=percent, and the redis_ssl_ ones
 */

char *
ngx_http_llm_share_option(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_llm_share_conf_t **scfp)
{
    char                       *rv;
    ngx_int_t                   n;
    ngx_str_t                   s;
    ngx_http_llm_share_conf_t  *scf;

    scf = *scfp;

    if (scf == NULL) {
        scf = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_share_conf_t));
        if (scf == NULL) {
            return NGX_CONF_ERROR;
        }

        scf->sync = 100;
        scf->share = 50;
        scf->redis.timeout = 500;
        scf->redis.ssl_verify = NGX_CONF_UNSET;

        *scfp = scf;
    }

    if (ngx_strncmp(value->data, "redis_ssl_", 10) == 0) {
        return ngx_http_llm_redis_ssl_option(cf, value, &scf->redis);
    }

    if (ngx_strncmp(value->data, "redis=", 6) == 0) {
        s.data = value->data + 6;
        s.len = value->len - 6;

        rv = ngx_http_llm_redis_parse(cf, &s, &scf->redis);
        if (rv != NGX_CONF_OK) {
            return rv;
        }

        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "redis_password_file=", 20) == 0) {
        s.data = value->data + 20;
        s.len = value->len - 20;

        return ngx_http_llm_redis_password_file(cf, &s, &scf->redis);
    }

    if (ngx_strncmp(value->data, "redis_sync=", 11) == 0) {
        s.data = value->data + 11;
        s.len = value->len - 11;

        n = ngx_parse_time(&s, 0);
        if (n == NGX_ERROR || n < 10 || n > 10000) {
            return "has an invalid \"redis_sync=\": 10ms to 10s";
        }

        scf->sync = n;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "redis_timeout=", 14) == 0) {
        s.data = value->data + 14;
        s.len = value->len - 14;

        n = ngx_parse_time(&s, 0);
        if (n == NGX_ERROR || n < 1 || n > 60000) {
            return "has an invalid \"redis_timeout=\"";
        }

        scf->redis.timeout = n;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "redis_share=", 12) == 0) {
        s.data = value->data + 12;
        s.len = value->len - 12;

        if (s.len > 1 && s.data[s.len - 1] == '%') {
            s.len--;
        }

        n = ngx_atoi(s.data, s.len);
        if (n == NGX_ERROR || n < 1 || n > 100) {
            return "has an invalid \"redis_share=\": 1% to 100%";
        }

        scf->share = n;
        return NGX_CONF_OK;
    }

    return NGX_CONF_ERROR;
}


/* all of a zone's options read: they must make a whole */

char *
ngx_http_llm_share_conf_done(ngx_conf_t *cf, ngx_http_llm_share_conf_t *scf)
{
    if (scf->redis.addr == NULL) {
        return "has Redis options but no \"redis=\"";
    }

    return ngx_http_llm_redis_ssl_init(cf, &scf->redis);
}


/* in each worker: its connection, the zone's instance, the sync timer */

ngx_int_t
ngx_http_llm_share_init(ngx_cycle_t *cycle, ngx_http_llm_share_t *share,
    ngx_event_handler_pt sync)
{
    ngx_http_llm_share_conf_t  *scf;

    scf = share->conf;

    scf->ttl = ngx_max(scf->sync * 10, 1000);

    ngx_shmtx_lock(&share->shpool->mutex);

    /* a new zone is a new instance: the old one's leases lapse */

    while (share->sh->instance == 0) {
        share->sh->instance = ((uint64_t) ngx_random() << 32)
                              ^ (uint64_t) ngx_random()
                              ^ ((uint64_t) ngx_time() << 16)
                              ^ (uint64_t) ngx_pid;
    }

    ngx_shmtx_unlock(&share->shpool->mutex);

    /* this worker's link, for Redis to know its reports by */

    while (share->link == 0) {
        share->link = ((uint64_t) ngx_random() << 32)
                      ^ (uint64_t) ngx_random()
                      ^ ((uint64_t) ngx_pid << 40);
    }

    share->seq = 0;

    share->redis = ngx_http_llm_redis_create(cycle, &scf->redis,
                                             &ngx_http_llm_lease_script,
                                             ngx_http_llm_share_state_changed,
                                             share);
    if (share->redis == NULL) {
        return NGX_ERROR;
    }

    share->timer.handler = sync;
    share->timer.data = share;
    share->timer.log = cycle->log;
    share->timer.cancelable = 1;

    ngx_add_timer(&share->timer, scf->sync);

    return NGX_OK;
}


ngx_uint_t
ngx_http_llm_share_state(ngx_http_llm_share_t *share)
{
    return ngx_http_llm_redis_state(share->redis);
}


/*
 * Whether a request that has waited for Redis since "since" gives it up
 * and goes on with this instance's share of each limit: after
 * redis_timeout= while the first connection is made.  On a link that
 * answers, a request's asks may wait behind others' (a small budget is
 * asked for request by request, a round trip each): a reply that is late
 * fails the link, which ends every wait; the request's own wait gives up
 * only at ten times redis_timeout=, so that none waits for ever.
 */

ngx_uint_t
ngx_http_llm_share_gave_up(ngx_http_llm_share_t *share, ngx_msec_t since,
    ngx_msec_t now)
{
    ngx_msec_t  patience;

    if (since == 0) {
        return 0;
    }

    patience = share->conf->redis.timeout;

    if (ngx_http_llm_share_state(share) == NGX_HTTP_LLM_REDIS_READY) {
        patience *= NGX_HTTP_LLM_SHARE_PATIENCE;
    }

    return (ngx_msec_int_t) (now - since) >= (ngx_msec_int_t) patience;
}


/* one worker of the instance reports, each redis_sync= period */

ngx_uint_t
ngx_http_llm_share_claim(ngx_http_llm_share_t *share, ngx_msec_t now)
{
    ngx_uint_t  mine;

    ngx_shmtx_lock(&share->shpool->mutex);

    mine = ((ngx_msec_int_t) (share->sh->next_sync - now) <= 0);

    if (mine) {
        share->sh->next_sync = now + share->conf->sync;
    }

    ngx_shmtx_unlock(&share->shpool->mutex);

    return mine;
}


/*
 * A worker's last reports: their replies, without the event loop, and
 * the link has room again for more; then it closes
 */

ngx_int_t
ngx_http_llm_share_flush(ngx_http_llm_share_t *share)
{
    return ngx_http_llm_redis_wait(share->redis);
}


void
ngx_http_llm_share_exit(ngx_http_llm_share_t *share)
{
    ngx_http_llm_redis_drain(share->redis);
}


/* for llm_status: the cause of the last failure, in every worker's view */

static void
ngx_http_llm_share_state_changed(void *data, redisReply *reply)
{
    ngx_http_llm_share_t  *share = data;

    const char  *error;

    if (ngx_http_llm_redis_state(share->redis) == NGX_HTTP_LLM_REDIS_READY) {
        return;
    }

    error = ngx_http_llm_redis_error(share->redis);

    ngx_shmtx_lock(&share->shpool->mutex);

    share->sh->errors++;
    share->sh->last_error = ngx_time();
    ngx_cpystrn(share->sh->error, (u_char *) error, sizeof(share->sh->error));

    ngx_shmtx_unlock(&share->shpool->mutex);
}


/* under the zone's lock, as everything below but the reply */

ngx_uint_t
ngx_http_llm_lease_ok(ngx_http_llm_lease_t *lease, int64_t need,
    ngx_msec_t now)
{
    return lease->credit >= need
           && (ngx_msec_int_t) (lease->expires - now) > 0;
}


/*
 * Spent, or given back when value is negative: the credit moves at
 * once, the ring keeps it for the next report, in the slot of "at" so
 * that a refund leaves Redis's window where its charge went
 */

void
ngx_http_llm_lease_spend(ngx_http_llm_budget_t *b, int64_t value,
    ngx_msec_t at, ngx_msec_t now)
{
    b->lease->credit -= value;

    if (value > 0) {
        b->lease->used = now;
    }

    ngx_http_llm_ring_add(b->lease, b->ring, b->nslots, b->slot_ms, value,
                          at, now);
}


/*
 * What one instance may hold ahead of need: an eighth of the limit, if
 * that covers a request of this size.  A lease that covers none would
 * only keep from the other instances what they could use, so a budget
 * that small is reserved in Redis request by request, a round trip
 * each, and nothing is held for requests to come.
 */

static int64_t
ngx_http_llm_lease_target(ngx_http_llm_budget_t *b, int64_t need)
{
    int64_t  eighth;

    eighth = b->limit / 8;

    return (need <= eighth) ? eighth : 0;
}


/* the credit, nothing if it lapsed */

static int64_t
ngx_http_llm_lease_have(ngx_http_llm_lease_t *lease, ngx_msec_t now)
{
    return ((ngx_msec_int_t) (lease->expires - now) > 0) ? lease->credit : 0;
}


/* what a request the credit does not cover asks for */

int64_t
ngx_http_llm_lease_want(ngx_http_llm_budget_t *b, int64_t need,
    ngx_msec_t now)
{
    int64_t  have;

    have = ngx_http_llm_lease_have(b->lease, now);

    if (have >= need) {
        return 0;
    }

    /*
     * a credit below zero (usage beyond the estimate) is settled by the
     * report the request goes with: Redis takes it out of the lease and
     * never below zero, so asking for it as well would hold too much
     */

    have = ngx_max(have, 0);

    /*
     * less than the request lacks would cover no request of its size:
     * Redis grants at least that or nothing, so that what is left stays
     * for the other instances' smaller requests
     */

    b->least = need - have;

    return ngx_max(ngx_http_llm_lease_target(b, need), need) - have;
}


/*
 * Ahead of need, after a charge of this size or, in a report, the last
 * one's: a credit under half the target is topped up to it, so that
 * the next requests need not wait
 */

int64_t
ngx_http_llm_lease_ahead(ngx_http_llm_budget_t *b, int64_t need,
    ngx_msec_t now)
{
    int64_t  have, target;

    target = ngx_http_llm_lease_target(b, need);

    if (target == 0) {
        return 0;
    }

    have = ngx_http_llm_lease_have(b->lease, now);

    if (have >= need && have >= target / 2) {
        return 0;
    }

    return target - ngx_max(have, 0);
}


/*
 * A budget nobody here spent from for half a lease gives its credit
 * back, for the instances that are busy: the amount to ask, negative
 */

static int64_t
ngx_http_llm_lease_idle(ngx_http_llm_budget_t *b, ngx_msec_t now,
    ngx_msec_t ttl)
{
    ngx_http_llm_lease_t  *lease;

    lease = b->lease;

    if (lease->credit > 0
        && (ngx_msec_int_t) (now - lease->used) > (ngx_msec_int_t) ttl / 2)
    {
        return -lease->credit;
    }

    return 0;
}


/*
 * A reply from Redis is awaited for the lease; one that has not come in
 * twice redis_timeout= will not come: its connection failed
 */

ngx_uint_t
ngx_http_llm_lease_busy(ngx_http_llm_share_conf_t *scf,
    ngx_http_llm_lease_t *lease, ngx_msec_t now)
{
    if (lease->busy == 0) {
        return 0;
    }

    if ((ngx_msec_int_t) (now - lease->busy)
        > (ngx_msec_int_t) (2 * scf->redis.timeout))
    {
        lease->busy = 0;
        return 0;
    }

    return 1;
}


/*
 * Redis refused the lease's script for its key lately (a key of another
 * type, set by hand): its requests go on with this instance's share for
 * a lease's life, asking nothing; the reports still go, and the first
 * one Redis takes ends it
 */

ngx_uint_t
ngx_http_llm_lease_refused(ngx_http_llm_share_conf_t *scf,
    ngx_http_llm_lease_t *lease, ngx_msec_t now)
{
    return lease->refused
           && (ngx_msec_int_t) (now - lease->refused)
              < (ngx_msec_int_t) scf->ttl;
}


/* the ring holds something Redis has not heard of yet */

ngx_uint_t
ngx_http_llm_lease_pending(ngx_http_llm_budget_t *b)
{
    int64_t     any;
    ngx_uint_t  i;

    any = 0;

    for (i = 0; i < b->nslots; i++) {
        any |= b->ring[i];
    }

    return any != 0;
}


/*
 * What a report asks besides: a budget spent from in the last half
 * lease is topped up ahead of need; one idle longer gives back its credit
 */

int64_t
ngx_http_llm_lease_renewal(ngx_http_llm_budget_t *b, ngx_msec_t now,
    ngx_msec_t ttl)
{
    if ((ngx_msec_int_t) (now - b->lease->used) > (ngx_msec_int_t) ttl / 2) {
        return ngx_http_llm_lease_idle(b, now, ttl);
    }

    return ngx_http_llm_lease_ahead(b, b->lease->last, now);
}


/* a credit that would lapse before the next reports could renew it */

ngx_uint_t
ngx_http_llm_lease_lapsing(ngx_http_llm_budget_t *b, ngx_msec_t now,
    ngx_msec_t ttl)
{
    return b->lease->credit > 0
           && (ngx_msec_int_t) (b->lease->expires - now)
              < (ngx_msec_int_t) ttl / 2;
}


/*
 * A report of the ring and a renewal of the lease, sent at once on this
 * worker's connection: Redis's reply sets the credit.  NGX_DECLINED: not
 * connected, nothing was taken from the ring.
 */

ngx_int_t
ngx_http_llm_lease_send(ngx_http_llm_share_t *share,
    ngx_http_llm_budget_t *b, ngx_msec_t now)
{
    u_char                   *p, *last, *nums;
    size_t                   *argvlen;
    ngx_int_t                 rc;
    ngx_uint_t                i, k, n, argc;
    ngx_msec_t                ns;
    ngx_msec_int_t            age;
    const char              **argv;
    ngx_http_llm_lease_op_t  *op;

    if (ngx_http_llm_share_state(share) != NGX_HTTP_LLM_REDIS_READY) {
        return NGX_DECLINED;
    }

    ngx_http_llm_ring_advance(b->lease, b->ring, b->nslots, b->slot_ms, now);

    n = 0;

    for (i = 0; i < b->nslots; i++) {
        n += (b->ring[i] != 0);
    }

    op = ngx_alloc(sizeof(ngx_http_llm_lease_op_t)
                   + 2 * b->nslots * sizeof(int64_t), ngx_cycle->log);
    if (op == NULL) {
        return NGX_ERROR;
    }

    argc = NGX_HTTP_LLM_LEASE_ARGS + 2 * n;

    argv = ngx_alloc(argc * (sizeof(char *) + sizeof(size_t))
                     + (argc + 1) * (NGX_INT64_LEN + 2)
                     + NGX_HTTP_LLM_DOUBTS_LEN, ngx_cycle->log);
    if (argv == NULL) {
        ngx_free(op);
        return NGX_ERROR;
    }

    argvlen = (size_t *) (argv + argc);
    nums = (u_char *) (argvlen + argc);
    p = nums;
    last = nums + (argc + 1) * (NGX_INT64_LEN + 2) + NGX_HTTP_LLM_DOUBTS_LEN;

    op->share = share;
    op->lease = b->lease;
    op->ring = b->ring;
    op->nslots = b->nslots;
    op->slot_ms = b->slot_ms;
    op->sent = now;
    op->ask = b->ask;
    op->seq = n ? ++share->seq : 0;
    op->doubt = b->lease->doubt[0];
    op->n = 0;

    argv[0] = "EVALSHA";
    argvlen[0] = 7;
    argv[1] = (const char *) ngx_http_llm_redis_script_sha(share->redis);
    argvlen[1] = 40;
    argv[2] = "1";
    argvlen[2] = 1;
    argv[3] = (const char *) b->key;
    argvlen[3] = b->key_len;

#define ngx_http_llm_arg(k, fmt, v)                                          \
    argv[k] = (const char *) p;                                              \
    p = ngx_slprintf(p, last, fmt, v);                                       \
    argvlen[k] = (u_char *) p - (u_char *) argv[k]

    ngx_http_llm_arg(4, "%016uxL", share->sh->instance);
    ngx_http_llm_arg(5, "%M", b->slot_ms);
    ngx_http_llm_arg(6, "%ui", b->nslots);
    ngx_http_llm_arg(7, "%L", b->limit);
    ngx_http_llm_arg(8, "%L", b->ask);
    ngx_http_llm_arg(9, "%M", share->conf->ttl);
    ngx_http_llm_arg(10, "%M", b->expire);
    ngx_http_llm_arg(11, "%016uxL", share->link);
    ngx_http_llm_arg(12, "%uL", op->seq);

    /* the reports of this budget whose replies were lost, newest first */

    argv[13] = (const char *) p;

    for (i = 0; i < NGX_HTTP_LLM_DOUBTS && b->lease->doubt[i].seq; i++) {
        p = ngx_slprintf(p, last, "%s%016uxL:%uL", i ? "," : "",
                         b->lease->doubt[i].link, b->lease->doubt[i].seq);
    }

    argvlen[13] = (u_char *) p - (u_char *) argv[13];

    ngx_http_llm_arg(14, "%L", b->least);

    /*
     * the ring's amounts, newest first, each with its age in ms counted
     * from the end of its slot: Redis puts an amount in the slot of its
     * own clock that age falls in, never earlier than it was spent, so
     * that it leaves Redis's window no earlier than the backend's
     */

    ns = b->slot_ms ? now / b->slot_ms : 0;
    k = NGX_HTTP_LLM_LEASE_ARGS;

    for (i = 0; i < b->nslots; i++) {
        int64_t  *v = &b->ring[(ns - i) % b->nslots];

        if (*v == 0) {
            continue;
        }

        age = b->slot_ms ? (ngx_msec_int_t) (now - (ns - i + 1) * b->slot_ms)
                           + 1
                         : 0;

        ngx_http_llm_arg(k, "%M", (ngx_msec_t) ngx_max(age, 0));
        k++;
        ngx_http_llm_arg(k, "%L", *v);
        k++;

        op->slot[op->n] = ns - i;
        op->slot[b->nslots + op->n] = *v;
        op->n++;
    }

#undef ngx_http_llm_arg

    rc = ngx_http_llm_redis_send(share->redis, (int) argc, argv, argvlen,
                                 ngx_http_llm_lease_done, op);

    ngx_free(argv);

    if (rc != NGX_OK) {
        /* NGX_BUSY: as many commands wait as the link holds */
        ngx_free(op);
        return (rc == NGX_DECLINED || rc == NGX_BUSY) ? rc : NGX_ERROR;
    }

    /* the amounts are Redis's now, unless the reply says otherwise */

    for (i = 0; i < op->n; i++) {
        b->ring[op->slot[i] % b->nslots] = 0;
    }

    /*
     * what is given back is no longer this instance's from now on: a
     * request that spent it before the reply would spend what Redis
     * has already freed for the others
     */

    if (b->ask < 0) {
        b->lease->credit += b->ask;
    }

    b->lease->busy = now ? now : 1;
    op->sent = b->lease->busy;

    return NGX_OK;
}


static void
ngx_http_llm_lease_done(void *data, redisReply *reply)
{
    ngx_http_llm_lease_op_t  *op = data;

    int64_t                   grant, own, pending;
    ngx_uint_t                i, ok, keyed, said;
    ngx_msec_t                now;
    ngx_http_llm_lease_t     *lease;
    ngx_http_llm_share_t     *share;
    ngx_http_llm_share_sh_t  *sh;

    share = op->share;
    sh = share->sh;
    lease = op->lease;
    now = ngx_current_msec;

    ok = (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 4);

    for (i = 0; ok && i < 4; i++) {
        ok = (reply->element[i]->type == REDIS_REPLY_INTEGER);
    }

    ngx_shmtx_lock(&share->shpool->mutex);

    if (!ok) {
        ngx_http_llm_lease_restore(op, now);

        /* an error reply: the script did not run; no reply: who knows */

        if (reply == NULL && op->seq) {
            ngx_http_llm_lease_doubt(lease, share->link, op->seq);
            sh->lost++;
        }

        sh->errors++;
        sh->last_error = ngx_time();

        if (reply && reply->type == REDIS_REPLY_ERROR) {
            ngx_snprintf(sh->error, sizeof(sh->error) - 1, "%*s%Z",
                         ngx_min(reply->len, sizeof(sh->error) - 1),
                         reply->str);

        } else if (reply) {
            ngx_cpystrn(sh->error, (u_char *) "unexpected reply",
                        sizeof(sh->error));
        }

        if (lease->busy == op->sent) {
            lease->busy = 0;
        }

        /*
         * an error of this budget's key only: its requests go on with
         * this instance's share, said once, and the link serves the
         * others; rather than ask again each millisecond
         */

        keyed = (reply && reply->type == REDIS_REPLY_ERROR
                 && !ngx_http_llm_redis_server_error(reply));

        said = ngx_http_llm_lease_refused(share->conf, lease, now);

        if (keyed) {
            lease->refused = now ? now : 1;
        }

        ngx_shmtx_unlock(&share->shpool->mutex);

        ngx_free(op);

        if (keyed) {
            if (!said) {
                ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                              "llm: redis %V refused a budget's key: %*s; "
                              "its requests go on with this instance's "
                              "share", &share->conf->redis.name,
                              ngx_min(reply->len, 200), reply->str);
            }

            return;
        }

        /*
         * the server cannot do the work now, or is not Redis: the link
         * goes down, said once, and requests go on with this instance's
         * share at once, rather than ask again each millisecond what
         * Redis will refuse again
         */

        if (reply) {
            ngx_http_llm_redis_reject(share->redis,
                                      (reply->type == REDIS_REPLY_ERROR)
                                      ? "answered a lease with"
                                      : "sent a reply to a lease that is "
                                        "not the script's", reply);
        }

        return;
    }

    grant = reply->element[0]->integer;
    own = reply->element[1]->integer;

    /* what was spent here since the report is still to come out of it */

    ngx_http_llm_ring_advance(lease, op->ring, op->nslots, op->slot_ms, now);

    pending = 0;

    for (i = 0; i < op->nslots; i++) {
        pending += op->ring[i];
    }

    lease->credit = own - pending;
    lease->expires = op->sent + share->conf->ttl;

    ngx_http_llm_lease_settled(lease, &op->doubt);

    lease->spent = reply->element[2]->integer;
    lease->leased = reply->element[3]->integer + own;
    lease->synced = now;
    lease->refused = 0;

    if (op->ask > 0 && grant < op->ask) {
        lease->exhausted = now ? now : 1;
    }

    /*
     * asked for: a request is about to spend it, so the reports do not
     * give it back as unused before it can
     */

    if (op->ask > 0 && grant > 0) {
        lease->used = now;
    }

    if (lease->busy == op->sent) {
        lease->busy = 0;
    }

    sh->replies++;
    sh->last_ok = ngx_time();
    sh->lag = now - op->sent;

    ngx_shmtx_unlock(&share->shpool->mutex);

    ngx_free(op);
}


/* no reply: the amounts go back into the ring, for the next report */

static void
ngx_http_llm_lease_restore(ngx_http_llm_lease_op_t *op, ngx_msec_t now)
{
    ngx_uint_t  i;

    for (i = 0; i < op->n; i++) {
        ngx_http_llm_ring_add(op->lease, op->ring, op->nslots, op->slot_ms,
                              op->slot[op->nslots + i],
                              op->slot[i] * (op->slot_ms ? op->slot_ms : 1),
                              now);
    }
}


/*
 * a report with amounts whose reply was lost, to be named by the next
 * ones (one without amounts cannot count twice)
 */

static void
ngx_http_llm_lease_doubt(ngx_http_llm_lease_t *lease, uint64_t link,
    uint64_t seq)
{
    /* the oldest goes if there are too many; its amounts may count twice */

    ngx_memmove(&lease->doubt[1], &lease->doubt[0],
                (NGX_HTTP_LLM_DOUBTS - 1) * sizeof(ngx_http_llm_doubt_t));

    lease->doubt[0].link = link;
    lease->doubt[0].seq = seq;
}


/*
 * A reply came: Redis has settled the lost reports that the report
 * named; those lost since it was sent stay
 */

static void
ngx_http_llm_lease_settled(ngx_http_llm_lease_t *lease,
    ngx_http_llm_doubt_t *named)
{
    ngx_uint_t  i;

    if (named->seq == 0) {
        return;
    }

    for (i = 0; i < NGX_HTTP_LLM_DOUBTS; i++) {
        if (lease->doubt[i].seq == named->seq
            && lease->doubt[i].link == named->link)
        {
            ngx_memzero(&lease->doubt[i], (NGX_HTTP_LLM_DOUBTS - i)
                                          * sizeof(ngx_http_llm_doubt_t));
            return;
        }
    }
}


/* slots that the window has left are cleared as "now" reaches them */

static void
ngx_http_llm_ring_advance(ngx_http_llm_lease_t *lease, int64_t *ring,
    ngx_uint_t n, ngx_msec_t slot_ms, ngx_msec_t now)
{
    ngx_msec_t  ns, s;

    if (slot_ms == 0) {
        return;
    }

    ns = now / slot_ms;

    if ((ngx_msec_int_t) (ns - lease->pending_last) <= 0) {
        return;
    }

    if (ns - lease->pending_last >= n) {
        ngx_memzero(ring, n * sizeof(int64_t));

    } else {
        for (s = lease->pending_last + 1; s != ns + 1; s++) {
            ring[s % n] = 0;
        }
    }

    lease->pending_last = ns;
}


static void
ngx_http_llm_ring_add(ngx_http_llm_lease_t *lease, int64_t *ring,
    ngx_uint_t n, ngx_msec_t slot_ms, int64_t value, ngx_msec_t at,
    ngx_msec_t now)
{
    ngx_msec_t  s;

    if (slot_ms == 0) {
        ring[0] += value;
        return;
    }

    ngx_http_llm_ring_advance(lease, ring, n, slot_ms, now);

    s = at / slot_ms;

    /* older than the window: it no longer counts anywhere */

    if ((ngx_msec_int_t) (lease->pending_last - s) >= (ngx_msec_int_t) n
        || (ngx_msec_int_t) (lease->pending_last - s) < 0)
    {
        return;
    }

    ring[s % n] += value;
}
