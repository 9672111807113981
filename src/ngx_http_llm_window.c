/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_window.h"


/*
 * Sliding windows as rings of n slots of slot_ms each, the slot of time t
 * being t / slot_ms mod n; "last" is the newest slot the ring holds and
 * "sum" what all its slots hold.  The caller keeps them where it likes
 * (a backend's and a consumer's live in the shared zone) and holds the
 * lock: nothing here knows of requests, zones or locks.
 */


void
ngx_http_llm_window_add(uint32_t *slots, ngx_uint_t n, ngx_msec_t slot_ms,
    ngx_msec_t last, ngx_uint_t *sum, ngx_uint_t value, ngx_msec_t at)
{
    ngx_msec_t  s;

    s = at / slot_ms;

    if (s > last || last - s >= n) {
        return;
    }

    /*
     * a slot holds 32 bits: what does not fit is not counted, so that the
     * sum always equals the slots (a removal takes at most what a slot
     * holds; admission never lets such a charge into a limited window)
     */

    value = ngx_min(value, (ngx_uint_t) (NGX_MAX_UINT32_VALUE - slots[s % n]));

    slots[s % n] += (uint32_t) value;
    *sum += value;
}


void
ngx_http_llm_window_advance(uint32_t *slots, ngx_uint_t n, ngx_msec_t slot_ms,
    ngx_msec_t *last, ngx_uint_t *sum, ngx_msec_t now)
{
    ngx_msec_t  cur, s;

    cur = now / slot_ms;

    if (cur <= *last) {
        return;
    }

    if (cur - *last >= n) {
        ngx_memzero(slots, n * sizeof(uint32_t));
        *sum = 0;

    } else {
        for (s = *last + 1; s <= cur; s++) {
            *sum -= slots[s % n];
            slots[s % n] = 0;
        }
    }

    *last = cur;
}


/*
 * Milliseconds until "need" more fits under "limit": walk the slots from
 * the oldest, each leaves the window (slot + n) * slot_ms.  A request
 * larger than the limit fits an empty window, as the only way it can.
 */

ngx_msec_t
ngx_http_llm_window_wait(uint32_t *slots, ngx_uint_t n, ngx_msec_t slot_ms,
    ngx_msec_t last, ngx_uint_t sum, ngx_uint_t limit, ngx_uint_t need,
    ngx_msec_t now)
{
    ngx_msec_t  s, first;
    ngx_uint_t  freed, excess;

    if (sum == 0 || sum + need <= limit) {
        return 0;
    }

    excess = (need > limit) ? sum : sum + need - limit;
    freed = 0;
    first = (last >= n - 1) ? last - (n - 1) : 0;

    for (s = first; s <= last; s++) {
        freed += slots[s % n];

        if (freed >= excess) {
            return (s + n) * slot_ms - now;
        }
    }

    return (last + n) * slot_ms - now;
}


void
ngx_http_llm_window_remove(uint32_t *slots, ngx_uint_t n, ngx_msec_t slot_ms,
    ngx_msec_t last, ngx_uint_t *sum, ngx_uint_t value, ngx_msec_t at)
{
    ngx_msec_t  s;
    uint32_t   *slot;

    s = at / slot_ms;

    if (s > last || last - s >= n) {
        /* already gone from the window */
        return;
    }

    slot = &slots[s % n];
    value = ngx_min(value, *slot);

    *slot -= (uint32_t) value;
    *sum -= value;
}
