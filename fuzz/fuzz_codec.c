/*
 * fuzz_codec.c - the MessagePack batch decoder (lib/wire/codec.c), as a
 * worker reads a batch payload from any producer in plain mode, and a
 * standalone document (ss_codec_decode). The Lua state has a memory cap, as
 * a worker's has, so a decoder bomb shows as an allocation failure.
 */
#include "fuzz.h"
#include "wire/codec.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>

#define CAP (256u << 20)

static size_t used;

static void *capped(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        used -= old;
        free(ptr);
        return NULL;
    }
    if (nsize > old && used + (nsize - old) > CAP)
        return NULL;
    void *p = realloc(ptr, nsize);
    if (p)
        used = used - old + nsize;
    return p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = lua_newstate(capped, NULL);
    if (!L)
        return 0;
    ss_batch_reader r;
    char msg[256];
    if (ss_batch_reader_init(&r, data, size) == SS_OK) {
        while (ss_batch_reader_next(&r, L, msg, sizeof msg) == SS_OK)
            lua_pop(L, 1);
    }
    if (ss_codec_decode(L, data, size) == SS_OK)
        lua_pop(L, 1);
    lua_close(L);
    return 0;
}
