/*
 * common.h - the error enum, logging and small helpers every module shares.
 *
 * Errors travel as ss_err values (SS_OK = 0); a function that fails also
 * leaves a human message in the caller-supplied buffer where it takes one.
 * Logging goes to stderr, one line per message, prefixed with the name of the
 * component (set once with ss_log_init), so interleaved output of a pipeline's
 * processes stays readable.
 */
#ifndef SS_COMMON_H
#define SS_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    SS_OK = 0,
    SS_ERR_NOMEM,     /* allocation failed or a bound was reached */
    SS_ERR_IO,        /* file or socket error; errno was saved in the message */
    SS_ERR_FORMAT,    /* data not in the expected format */
    SS_ERR_TOOBIG,    /* a value exceeds its hard bound */
    SS_ERR_LUA,       /* a Lua script raised an error */
    SS_ERR_TIMEOUT,   /* a peer did not answer in time */
    SS_ERR_CLOSED,    /* the stream or the peer has ended */
    SS_ERR_USAGE,     /* bad command line or spec */
    SS_ERR_CRYPTO,    /* authentication or key failure */
    SS_ERR__COUNT
} ss_err;

const char *ss_strerror(ss_err e);

/* Format a message into the caller's error buffer (err, errlen), the way
 * every function here that takes one reports what failed and where. Does
 * nothing when err is NULL or errlen is 0. */
void ss_say(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* ss_say with a va_list, for helpers that add to it. */
void ss_vsay(char *err, size_t errlen, const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));

/* Name used as the prefix of every log line of this process. Not copied. */
void ss_log_init(const char *component);
void ss_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Progress a user wiring components by hand wants to see (joins, end of
 * stream, counters); silent when SS_LOG=warn, as `run` sets unless --verbose. */
void ss_log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Log at most `limit` messages for a given counter; returns 1 if logged. */
int ss_log_limited(uint64_t *counter, uint64_t limit, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Suffixes ss_parse_u64 accepts after the number. */
enum {
    SS_NUM_PLAIN = 0,   /* digits only */
    SS_NUM_KMG = 1,     /* K, M or G (binary: 2^10, 2^20, 2^30), either case */
    SS_NUM_BYTES = 2,   /* the same, optionally followed by B or iB (64M, 64MB, 64MiB) */
};

/* A non-negative integer that starts with a digit, in `base` (10, or 0 for
 * C's 0x and 0 prefixes), with the suffixes `suffix` allows, at most max
 * once multiplied. 0, or -1 when malformed or larger than max. */
int ss_parse_u64(const char *s, int base, int suffix, uint64_t max, uint64_t *out);

/* A positive integer setting from the environment (at most 3600000), or
 * dflt when the variable is unset, empty or not such a number. */
int ss_env_int(const char *name, int dflt);

/* Monotonic clock in milliseconds and nanoseconds. */
int64_t ss_now_ms(void);
int64_t ss_now_ns(void);

/* Random id in 1 .. 2^63-1, from libsodium's generator. */
uint64_t ss_random_id(void);

static inline void ss_put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void ss_put_u32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static inline void ss_put_u64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static inline uint16_t ss_get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t ss_get_u32(const uint8_t *p) { uint32_t v = 0; for (int i = 3; i >= 0; i--) v = (v << 8) | p[i]; return v; }
static inline uint64_t ss_get_u64(const uint8_t *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = (v << 8) | p[i]; return v; }

#endif
