/*
 * codec.h - events between Lua and MessagePack.
 *
 * A batch payload is one MessagePack array of events (docs/protocol.md).
 * The writer appends Lua values into a buffer with a hard bound; the reader
 * walks a received payload without copying it and pushes one event at a time
 * onto a Lua stack.
 *
 * Mapping: nil, booleans, integers (msgpack int), floats (float64), strings
 * (always str, whatever their bytes: they are not checked for UTF-8 and bin
 * is never written; the reader turns both str and bin into Lua strings),
 * tables with keys exactly 1..n as arrays (n >= 1), other tables as maps; an
 * empty table is an empty map. Functions, userdata, threads and tables
 * nested deeper than 64 levels or containing cycles are refused with
 * SS_ERR_FORMAT.
 */
#ifndef SS_CODEC_H
#define SS_CODEC_H

#include "base/common.h"

#include <lua.h>

typedef struct {
    char *data;
    size_t len;       /* bytes used, array header included */
    size_t cap;
    size_t limit;     /* hard bound on len */
    uint32_t count;   /* events appended */
    size_t body;      /* offset where events start (after a reserved 5-byte array header) */
} ss_batch_writer;

/* Reserve storage; limit is the hard bound on the encoded size. */
ss_err ss_batch_writer_init(ss_batch_writer *w, size_t limit);
void ss_batch_writer_cleanup(ss_batch_writer *w);
/* Start a new batch, keeping the storage. */
void ss_batch_writer_reset(ss_batch_writer *w);
/* Append the Lua value at stack index idx. On error the batch is unchanged
 * and msg (if non-NULL) says why. SS_ERR_TOOBIG when the limit would be passed. */
ss_err ss_batch_writer_add(ss_batch_writer *w, lua_State *L, int idx, char *msg, size_t msglen);
/* Append a string event (a raw line) without Lua. */
ss_err ss_batch_writer_add_string(ss_batch_writer *w, const char *s, size_t len);
/* Finish: write the array header; *out and *len describe the payload (valid
 * until the next reset). The payload starts at an offset inside data. */
void ss_batch_writer_finish(ss_batch_writer *w, const char **out, size_t *len);

typedef struct {
    const char *data;
    size_t len;
    size_t pos;
    uint32_t count;    /* events in the batch */
    uint32_t next;     /* index of the next event */
    size_t presize;    /* table slots the rest of the batch may pre-allocate */
} ss_batch_reader;

/* Check the array header; SS_ERR_FORMAT when the payload is not an array. */
ss_err ss_batch_reader_init(ss_batch_reader *r, const void *payload, size_t len);
/* Push the next event onto L. SS_ERR_CLOSED after the last one;
 * SS_ERR_FORMAT (message in msg) when the payload is malformed. */
ss_err ss_batch_reader_next(ss_batch_reader *r, lua_State *L, char *msg, size_t msglen);

/* Encode one Lua value as a standalone MessagePack document into a
 * malloc'd buffer (caller frees); decode one back. Used for EOS payloads. */
ss_err ss_codec_encode(lua_State *L, int idx, char **out, size_t *len);
ss_err ss_codec_decode(lua_State *L, const void *buf, size_t len);

#endif
