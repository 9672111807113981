
/*
 * Copyright (C) nginx-llm-router authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm.h"
#include "ngx_http_llm_audio.h"
#include "ngx_http_llm_image.h"


/*
 * Audio parts ("input_audio": base64 "data" and a "format") count by
 * their duration: one token per 100 ms, the rate OpenAI gives for user
 * audio of its gpt-4o audio models.  The duration comes from the
 * header of a WAV (data size / byte rate) or an MP3 (the bit rate of the
 * first frame, after an ID3v2 tag) without decoding the audio; anything
 * else is taken to be 32 kbit/s, the low end of speech codecs, so that an
 * unknown format costs more rather than less.  Only a few bytes at known
 * offsets are decoded from the base64 text.
 */


#define NGX_HTTP_LLM_AUDIO_MS_PER_TOKEN  100
#define NGX_HTTP_LLM_AUDIO_DEFAULT_BPS   4000     /* 32 kbit/s */

/* what a header may claim: 8 kbit/s speech to 192 kHz 32-bit stereo */
#define NGX_HTTP_LLM_AUDIO_MIN_BPS       1000
#define NGX_HTTP_LLM_AUDIO_MAX_BPS       1536000


static size_t ngx_http_llm_wav_bps(ngx_str_t *b64, size_t total,
    size_t *audio);
static size_t ngx_http_llm_mp3_bps(ngx_str_t *b64, size_t total,
    size_t *audio);


ngx_uint_t
ngx_http_llm_audio_tokens(const char *data)
{
    size_t     total, audio, bps, len;
    uint64_t   ms;
    ngx_str_t  b64;

    b64.data = (u_char *) data;
    b64.len = ngx_strlen(data);

    /* the decoded size, from the text's length and its padding */

    len = b64.len;
    total = len / 4 * 3;

    if (len >= 4 && len % 4 == 0) {
        total -= (b64.data[len - 1] == '=') + (b64.data[len - 2] == '=');
    }

    if (total == 0) {
        return 0;
    }

    audio = total;

    bps = ngx_http_llm_wav_bps(&b64, total, &audio);

    if (bps == 0) {
        audio = total;
        bps = ngx_http_llm_mp3_bps(&b64, total, &audio);
    }

    if (bps == 0) {
        audio = total;
        bps = NGX_HTTP_LLM_AUDIO_DEFAULT_BPS;
    }

    bps = ngx_max(ngx_min(bps, NGX_HTTP_LLM_AUDIO_MAX_BPS),
                  NGX_HTTP_LLM_AUDIO_MIN_BPS);

    ms = (uint64_t) audio * 1000 / bps;

    return (ngx_uint_t) ((ms + NGX_HTTP_LLM_AUDIO_MS_PER_TOKEN - 1)
                         / NGX_HTTP_LLM_AUDIO_MS_PER_TOKEN);
}


/*
 * RIFF/WAVE: chunks of a 4-byte id and a 4-byte little-endian size; the
 * byte rate is at offset 8 of "fmt ", the samples are "data".  A data
 * size of 0 or 0xffffffff (written by streaming encoders) means "to the
 * end".
 */

static size_t
ngx_http_llm_wav_bps(ngx_str_t *b64, size_t total, size_t *audio)
{
    u_char      h[16];
    size_t      off, size, bps;
    ngx_uint_t  i;

    if (ngx_http_llm_base64_at(h, 12, b64, 0) != 12
        || ngx_memcmp(h, "RIFF", 4) != 0 || ngx_memcmp(h + 8, "WAVE", 4) != 0)
    {
        return 0;
    }

    bps = 0;
    off = 12;

    /* a few chunks at most before the samples: LIST, fact, ... */

    for (i = 0; i < 16 && off + 8 <= total; i++) {

        if (ngx_http_llm_base64_at(h, 16, b64, off) < 8) {
            return 0;
        }

        size = h[4] | (h[5] << 8) | (h[6] << 16) | ((size_t) h[7] << 24);

        if (ngx_memcmp(h, "fmt ", 4) == 0) {
            if (ngx_http_llm_base64_at(h, 16, b64, off + 8) < 12) {
                return 0;
            }

            bps = h[8] | (h[9] << 8) | (h[10] << 16) | ((size_t) h[11] << 24);

        } else if (ngx_memcmp(h, "data", 4) == 0) {
            if (bps == 0) {
                return 0;
            }

            *audio = total - (off + 8);

            if (size != 0 && size != 0xffffffff && size < *audio) {
                *audio = size;
            }

            return bps;
        }

        if (size > total - off - 8) {
            return 0;
        }

        off += 8 + size + (size & 1);
    }

    return 0;
}


/*
 * MP3: an optional ID3v2 tag (its size in 7-bit bytes), then frames
 * starting with 11 set bits; the first frame's bit rate stands for the
 * whole file (a VBR file is off by its first frame's rate).
 */

static size_t
ngx_http_llm_mp3_bps(ngx_str_t *b64, size_t total, size_t *audio)
{
    u_char      h[10];
    size_t      off;
    ngx_uint_t  index, kbps, mpeg1;

    static const uint16_t  layer3_v1[16] = {
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0
    };
    static const uint16_t  layer3_v2[16] = {
        0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 0
    };

    off = 0;

    if (ngx_http_llm_base64_at(h, 10, b64, 0) != 10) {
        return 0;
    }

    if (ngx_memcmp(h, "ID3", 3) == 0) {
        off = 10 + (((size_t) (h[6] & 0x7f) << 21) | ((h[7] & 0x7f) << 14)
                    | ((h[8] & 0x7f) << 7) | (h[9] & 0x7f));

        if (off + 4 > total
            || ngx_http_llm_base64_at(h, 4, b64, off) != 4)
        {
            return 0;
        }
    }

    /* sync, and layer III ("01" in bits 2-1 of the second byte) */

    if (h[0] != 0xff || (h[1] & 0xe0) != 0xe0 || (h[1] & 0x06) != 0x02) {
        return 0;
    }

    mpeg1 = ((h[1] & 0x18) == 0x18);
    index = h[2] >> 4;

    kbps = mpeg1 ? layer3_v1[index] : layer3_v2[index];

    if (kbps == 0) {
        return 0;
    }

    *audio = total - off;

    return kbps * 1000 / 8;
}
