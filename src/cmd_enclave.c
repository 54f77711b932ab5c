/*
 * cmd_enclave.c - `enclave-child`, the isolated enclave a worker starts (its
 * body is the library's ss_enclave_child_main), and `enclave-bench`, the cost
 * of an enclave call against a plain Lua function call and a C call.
 */
#include "cli.h"
#include "base/common.h"
#include "crypto/crypto.h"
#include "enclave/enclave.h"

#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* round trips at most: the Lua loops run 100 times as many calls */
#define MAX_CALLS (LONG_MAX / 100)

int ss_cmd_enclave(int argc, char **argv)
{
    return ss_enclave_child_main(argc, argv);
}


static int noop_cfunction(lua_State *L)
{
    (void)L;
    return 0;
}

static __attribute__((noinline)) int noop_c(int x)
{
    __asm__ volatile("");
    return x + 1;
}

/* ns per iteration of `for i = 1, n do f() end` minus the empty loop. */
static double lua_call_ns(lua_State *L, long n, int cfunc)
{
    const char *code =
        "local f, n, now = ... "
        "f = f or function() end "
        "local t0 = now() for i = 1, n do end local t1 = now() "
        "for i = 1, n do f() end local t2 = now() "
        "return (t2 - t1) - (t1 - t0)";
    if (luaL_loadstring(L, code) != LUA_OK)
        return -1;
    if (cfunc)
        lua_pushcfunction(L, noop_cfunction);
    else
        lua_pushnil(L);   /* the chunk makes a Lua function */
    lua_pushinteger(L, n);
    lua_getglobal(L, "__now");
    if (lua_pcall(L, 3, 1, 0) != LUA_OK) {
        lua_pop(L, 1);
        return -1;
    }
    double ns = lua_tonumber(L, -1) / (double)n;
    lua_pop(L, 1);
    return ns < 0 ? 0 : ns;
}

static int l_now(lua_State *L)
{
    lua_pushinteger(L, ss_now_ns());
    return 1;
}

static double ping_ns(ss_enclave_t *e, long n)
{
    for (long i = 0; i < n / 10 + 1; i++)
        if (ss_enclave_ping(e) != SS_OK)
            return -1;
    int64_t t0 = ss_now_ns();
    for (long i = 0; i < n; i++)
        if (ss_enclave_ping(e) != SS_OK)
            return -1;
    return (double)(ss_now_ns() - t0) / (double)n;
}

int ss_cmd_enclave_bench(int argc, char **argv)
{
    long calls = 100000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--calls") && i + 1 < argc) {
            uint64_t v;
            calls = ss_parse_u64(argv[++i], 10, SS_NUM_PLAIN, MAX_CALLS, &v) == 0 ? (long)v : 0;
        } else {
            fprintf(stderr,
                    "usage: securestreams enclave-bench [--calls N]\n"
                    "The cost of an enclave call (an empty round trip) against a plain Lua\n"
                    "function call and a C function call, all measured in this run.\n");
            return !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h") ? 0 : 2;
        }
    }
    if (calls < 1) {
        fprintf(stderr, "enclave-bench: --calls must be a number from 1 to %ld\n", MAX_CALLS);
        return 2;
    }
    ss_log_init("enclave-bench");
    if (ss_crypto_init() != SS_OK)
        return 1;

    char dir[] = "/tmp/ss-enclave-bench-XXXXXX", keyfile[64], err[512];
    if (!mkdtemp(dir)) {
        perror("enclave-bench: mkdtemp");
        return 1;
    }
    snprintf(keyfile, sizeof keyfile, "%s/key", dir);
    ss_key_t k;
    ss_key_generate(&k);
    ss_err rc = ss_key_save(&k, keyfile, err, sizeof err);
    ss_key_cleanup(&k);
    int status = 1;
    ss_enclave_t *iso = NULL, *inp = NULL, *bell = NULL;
    lua_State *L = NULL;
    if (rc != SS_OK) {
        fprintf(stderr, "enclave-bench: %s\n", err);
        goto out;
    }
    ss_enclave_opts o;
    if (ss_enclave_opts_init(&o, err, sizeof err) != SS_OK) {
        fprintf(stderr, "enclave-bench: %s\n", err);
        goto out;
    }
    o.code = "return function(s) return s end";
    o.code_name = "bench";
    o.key_file = keyfile;
    o.stage = "bench";
    if ((rc = ss_enclave_new(&o, &iso, err, sizeof err)) != SS_OK) {
        fprintf(stderr, "enclave-bench: isolated enclave: %s\n", err);
        goto out;
    }
    const char *spin = getenv("SS_ENCLAVE_SPIN");
    char *saved = spin ? strdup(spin) : NULL;
    setenv("SS_ENCLAVE_SPIN", "0", 1);
    rc = ss_enclave_new(&o, &bell, err, sizeof err);
    if (saved)
        setenv("SS_ENCLAVE_SPIN", saved, 1);
    else
        unsetenv("SS_ENCLAVE_SPIN");
    free(saved);
    if (rc != SS_OK) {
        fprintf(stderr, "enclave-bench: isolated enclave: %s\n", err);
        goto out;
    }
    o.backend = "inprocess";
    if ((rc = ss_enclave_new(&o, &inp, err, sizeof err)) != SS_OK) {
        fprintf(stderr, "enclave-bench: inprocess enclave: %s\n", err);
        goto out;
    }
    L = luaL_newstate();
    if (!L)
        goto out;
    lua_pushcfunction(L, l_now);
    lua_setglobal(L, "__now");
    long lcalls = calls * 100;
    double lua_ns = lua_call_ns(L, lcalls, 0);
    double cfun_ns = lua_call_ns(L, lcalls, 1);
    int64_t t0 = ss_now_ns();
    int acc = 0;
    for (long i = 0; i < lcalls; i++)
        acc = noop_c(acc);
    double c_ns = (double)(ss_now_ns() - t0) / (double)lcalls;
    double iso_ns = ping_ns(iso, calls);
    double bell_ns = ping_ns(bell, calls / 10 + 1);
    double inp_ns = ping_ns(inp, calls * 10);
    if (iso_ns < 0 || bell_ns < 0 || inp_ns < 0 || lua_ns < 0) {
        fprintf(stderr, "enclave-bench: a call failed\n");
        goto out;
    }
    printf("enclave call cost (%ld round trips; isolated spinning %s)\n", calls,
           ss_enclave_spinning(iso) ? "on" : "off: SS_ENCLAVE_SPIN=0 or one CPU");
    printf("  %-46s %10.1f ns\n", "plain Lua function call", lua_ns);
    printf("  %-46s %10.1f ns\n", "C function call (from Lua)", cfun_ns);
    printf("  %-46s %10.1f ns\n", "C function call (from C)", c_ns);
    printf("  %-46s %10.1f ns\n", "enclave round trip (isolated)", iso_ns);
    printf("  %-46s %10.1f ns\n", "enclave round trip (isolated, doorbell only)", bell_ns);
    printf("  %-46s %10.1f ns\n", "enclave round trip (inprocess)", inp_ns);
    printf("  %-46s %10.0fx\n", "isolated / plain Lua call", lua_ns > 0 ? iso_ns / lua_ns : 0);
    printf("  %-46s %10.0fx\n", "isolated / inprocess", inp_ns > 0 ? iso_ns / inp_ns : 0);
    status = acc == lcalls ? 0 : 1;
out:
    if (L)
        lua_close(L);
    ss_enclave_destroy(&iso);
    ss_enclave_destroy(&bell);
    ss_enclave_destroy(&inp);
    unlink(keyfile);
    rmdir(dir);
    return status;
}
