/*
 * cmd_enclave.c - `enclave-child`, the isolated enclave a worker starts (its
 * body is the library's ss_enclave_child_main), and `enclave-bench`, the cost
 * of an enclave call against a plain Lua function call and a C call.
 */
#include "cli.h"
#include "base/common.h"
#include "crypto/crypto.h"
#include "enclave/enclave.h"

#include <errno.h>
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

/* The three enclaves measured: isolated (spinning when it may), isolated
 * with the doorbell alone, and in-process. */
typedef struct {
    ss_enclave_t *iso, *bell, *inp;
} bench_enclaves;

static int start_enclaves(const ss_cli *cli, const char *keyfile, bench_enclaves *b)
{
    char err[512];
    ss_enclave_opts o;
    if (ss_enclave_opts_init(&o, err, sizeof err) != SS_OK)
        return ss_cli_fail(cli, SS_EXIT_ERROR, "%s", err);
    o.code = "return function(s) return s end";
    o.code_name = "bench";
    o.key_file = keyfile;
    o.stage = "bench";
    if (ss_enclave_new(&o, &b->iso, err, sizeof err) != SS_OK)
        return ss_cli_fail(cli, SS_EXIT_ERROR, "isolated enclave: %s", err);
    const char *spin = getenv("SS_ENCLAVE_SPIN");
    char *saved = spin ? strdup(spin) : NULL;
    setenv("SS_ENCLAVE_SPIN", "0", 1);
    ss_err rc = ss_enclave_new(&o, &b->bell, err, sizeof err);
    if (saved)
        setenv("SS_ENCLAVE_SPIN", saved, 1);
    else
        unsetenv("SS_ENCLAVE_SPIN");
    free(saved);
    if (rc != SS_OK)
        return ss_cli_fail(cli, SS_EXIT_ERROR, "isolated enclave: %s", err);
    o.backend = "inprocess";
    if (ss_enclave_new(&o, &b->inp, err, sizeof err) != SS_OK)
        return ss_cli_fail(cli, SS_EXIT_ERROR, "inprocess enclave: %s", err);
    return SS_EXIT_OK;
}

/* Measure every call in this run and print the table. */
static int measure(const ss_cli *cli, const bench_enclaves *b, long calls)
{
    lua_State *L = luaL_newstate();
    if (!L)
        return ss_cli_fail(cli, SS_EXIT_ERROR, "cannot create a Lua state: out of memory");
    lua_pushcfunction(L, l_now);
    lua_setglobal(L, "__now");
    long lcalls = calls * 100;
    double lua_ns = lua_call_ns(L, lcalls, 0);
    double cfun_ns = lua_call_ns(L, lcalls, 1);
    lua_close(L);
    int64_t t0 = ss_now_ns();
    int acc = 0;
    for (long i = 0; i < lcalls; i++)
        acc = noop_c(acc);
    double c_ns = (double)(ss_now_ns() - t0) / (double)lcalls;
    double iso_ns = ping_ns(b->iso, calls);
    double bell_ns = ping_ns(b->bell, calls / 10 + 1);
    double inp_ns = ping_ns(b->inp, calls * 10);
    if (iso_ns < 0 || bell_ns < 0 || inp_ns < 0 || lua_ns < 0 || acc != lcalls)
        return ss_cli_fail(cli, SS_EXIT_ERROR, "a call failed");
    printf("enclave call cost (%ld round trips; isolated spinning %s)\n", calls,
           ss_enclave_spinning(b->iso) ? "on" : "off: SS_ENCLAVE_SPIN=0 or one CPU");
    printf("  %-46s %10.1f ns\n", "plain Lua function call", lua_ns);
    printf("  %-46s %10.1f ns\n", "C function call (from Lua)", cfun_ns);
    printf("  %-46s %10.1f ns\n", "C function call (from C)", c_ns);
    printf("  %-46s %10.1f ns\n", "enclave round trip (isolated)", iso_ns);
    printf("  %-46s %10.1f ns\n", "enclave round trip (isolated, doorbell only)", bell_ns);
    printf("  %-46s %10.1f ns\n", "enclave round trip (inprocess)", inp_ns);
    printf("  %-46s %10.0fx\n", "isolated / plain Lua call", lua_ns > 0 ? iso_ns / lua_ns : 0);
    printf("  %-46s %10.0fx\n", "isolated / inprocess", inp_ns > 0 ? iso_ns / inp_ns : 0);
    return SS_EXIT_OK;
}

/* securestreams enclave-bench [--calls N]. 0 done, 1 error, 2 usage. */
int ss_cmd_enclave_bench(int argc, char **argv)
{
    uint64_t calls = 100000;
    const ss_opt opts[] = {
        { "--calls", 0, SS_OPT_UINT, &calls, "N", "enclave round trips to time (default 100000)",
          .min = 1, .max = MAX_CALLS },
        { NULL },
    };
    const ss_cli cli = {
        .name = "enclave-bench", .synopsis = "[--calls N]", .opts = opts,
        .about = "The cost of an enclave call (an empty round trip) against a plain Lua\n"
                 "function call and a C function call, all measured in this run.",
    };
    int status = ss_cli_parse(&cli, argc, argv, NULL, NULL);
    if (status != SS_CLI_GO)
        return status;
    ss_log_init("enclave-bench");
    if (ss_crypto_init() != SS_OK)
        return SS_EXIT_ERROR;

    char dir[] = "/tmp/ss-enclave-bench-XXXXXX", keyfile[64], err[512];
    if (!mkdtemp(dir))
        return ss_cli_fail(&cli, SS_EXIT_ERROR, "cannot make a directory in /tmp: %s", strerror(errno));
    snprintf(keyfile, sizeof keyfile, "%s/key", dir);
    ss_key_t k;
    ss_key_generate(&k);
    ss_err rc = ss_key_save(&k, keyfile, err, sizeof err);
    ss_key_cleanup(&k);
    bench_enclaves b = { NULL, NULL, NULL };
    if (rc != SS_OK)
        status = ss_cli_fail(&cli, SS_EXIT_ERROR, "%s", err);
    else if ((status = start_enclaves(&cli, keyfile, &b)) == SS_EXIT_OK)
        status = measure(&cli, &b, (long)calls);
    ss_enclave_destroy(&b.iso);
    ss_enclave_destroy(&b.bell);
    ss_enclave_destroy(&b.inp);
    unlink(keyfile);
    rmdir(dir);
    return status;
}
