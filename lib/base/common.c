/*
 * common.c - error strings, component-prefixed logging, clocks and ids.
 */
#define _POSIX_C_SOURCE 200809L
#include "base/common.h"
#include <errno.h>

#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *component = "securestreams";

void ss_vsay(char *err, size_t errlen, const char *fmt, va_list ap)
{
    if (err && errlen > 0)
        vsnprintf(err, errlen, fmt, ap);
}

void ss_say(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ss_vsay(err, errlen, fmt, ap);
    va_end(ap);
}

const char *ss_strerror(ss_err e)
{
    static const char *const names[SS_ERR__COUNT] = {
        [SS_OK] = "success",
        [SS_ERR_NOMEM] = "out of memory or bound reached",
        [SS_ERR_IO] = "input/output error",
        [SS_ERR_FORMAT] = "malformed data",
        [SS_ERR_TOOBIG] = "value too large",
        [SS_ERR_LUA] = "Lua error",
        [SS_ERR_TIMEOUT] = "timed out",
        [SS_ERR_CLOSED] = "closed",
        [SS_ERR_USAGE] = "usage error",
        [SS_ERR_CRYPTO] = "authentication failure",
    };
    if ((unsigned)e >= SS_ERR__COUNT)
        return "unknown error";
    return names[e];
}

void ss_log_init(const char *name)
{
    component = name;
}

static void vlog(const char *fmt, va_list ap)
{
    char line[2048];
    int n = snprintf(line, sizeof line, "[%s] ", component);
    if (n < 0 || (size_t)n >= sizeof line)
        n = 0;
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    fprintf(stderr, "%s\n", line);
}

void ss_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(fmt, ap);
    va_end(ap);
}

void ss_log_info(const char *fmt, ...)
{
    static int quiet = -1;
    if (quiet < 0) {
        const char *level = getenv("SS_LOG");
        quiet = level && !strcmp(level, "warn");
    }
    if (quiet)
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(fmt, ap);
    va_end(ap);
}

int ss_log_limited(uint64_t *counter, uint64_t limit, const char *fmt, ...)
{
    uint64_t seen = (*counter)++;
    if (seen >= limit)
        return 0;
    va_list ap;
    va_start(ap, fmt);
    vlog(fmt, ap);
    va_end(ap);
    if (seen + 1 == limit)
        ss_log("(further messages of this kind are counted, not logged)");
    return 1;
}

int ss_parse_u64(const char *s, int base, int suffix, uint64_t max, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, base);
    if (errno)
        return -1;
    unsigned shift = 0;
    if (suffix != SS_NUM_PLAIN) {
        if (*end == 'K' || *end == 'k')
            shift = 10;
        else if (*end == 'M' || *end == 'm')
            shift = 20;
        else if (*end == 'G' || *end == 'g')
            shift = 30;
        if (shift)
            end++;
        if (shift && suffix == SS_NUM_BYTES) {
            if (*end == 'i' && end[1] == 'B')
                end += 2;
            else if (*end == 'B')
                end++;
        }
    }
    if (*end || v > (max >> shift))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

int ss_env_int(const char *name, int dflt)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return dflt;
    uint64_t n;
    if (ss_parse_u64(v, 10, SS_NUM_PLAIN, 3600000, &n) != 0 || n == 0)
        return dflt;
    return (int)n;
}

int64_t ss_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t ss_now_ms(void)
{
    return ss_now_ns() / 1000000;
}

uint64_t ss_random_id(void)
{
    uint64_t id = 0;
    while (id == 0) {
        randombytes_buf(&id, sizeof id);
        id &= INT64_MAX; /* ids are Lua integers and MessagePack positive ints */
    }
    return id;
}
