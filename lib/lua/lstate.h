/*
 * lstate.h - creating the Lua states our components run user code in.
 *
 * Every state has the standard libraries and our modules in package.preload
 * (csv, json, rx, zmq-rx, securestreams.net ...), so `require` never touches
 * the file system for them. Errors from scripts are reported with a
 * traceback through ss_lua_pcall.
 */
#ifndef SS_LSTATE_H
#define SS_LSTATE_H

#include "base/common.h"

#include <lua.h>
#include <stddef.h>

/* A new state with everything loaded, or NULL when out of memory. Its
 * allocator is a pool (lpool.h): close it with ss_lua_close. */
lua_State *ss_lua_new(void);
/* lua_close, then free the state's pool. Accepts NULL. */
void ss_lua_close(lua_State *L);

/* lua_pcall with a traceback handler. On error, leaves the message (with
 * traceback) on the stack and returns the Lua status. */
int ss_lua_pcall(lua_State *L, int nargs, int nresults);

/* Load and run a script file with `arg` set like the lua interpreter does
 * (arg[0] = path, arg[1..] = args), all of it in protected mode. SS_OK, or
 * SS_ERR_LUA with the error (prefixed with the script path, with a
 * traceback) in err. */
ss_err ss_lua_run_file(lua_State *L, const char *path, int argc, char **argv, char *err,
                       size_t errlen);

int luaopen_securestreams_net(lua_State *L);
int luaopen_securestreams_enclave(lua_State *L);


#endif
