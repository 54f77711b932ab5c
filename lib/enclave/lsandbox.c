/*
 * lsandbox.c - the restricted Lua state and the process lockdown of an
 * enclave (see lsandbox.h, docs/enclave.md).
 *
 * Invariants: the allocator is the pool of lpool.h, bounded by the heap: it
 * never holds more than the bound from malloc. The budget costs nothing while a record stays inside
 * it: no hook is installed and no system call is made per record. A timer
 * on the thread's CPU clock (made with the sandbox, before any lockdown)
 * ticks every TICK_MS; the tick only counts while a record runs
 * (ss_sandbox_run), and once a record has run past its budget the tick
 * installs a count hook on every Lua thread of the chain of resumes, from
 * the one running down to the record's own, and from then on every
 * instruction of the record raises, in whichever thread, until its
 * protected call returns (coroutines created later inherit the hook).
 * lua_sethook is safe to call from a signal handler, and the VM looks at
 * the hook at every jump and loop, so an endless loop meets it.
 * coroutine.resume and coroutine.wrap keep the chain.
 */
#include "enclave/lsandbox.h"

#include "lua/lmodules.h"
#include "enclave/lpool.h"

#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <malloc.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif

#define TICK_MS 5         /* CPU time between two ticks of the budget's timer */
#define TICK_SIGNAL SIGVTALRM

/* One Lua thread of the chain of resumes, on the C stack of its resume. */
typedef struct resumed {
    lua_State *thread;
    struct resumed *volatile below;
} resumed;

typedef struct {
    ss_pool pool;         /* first: the state's allocator is ss_pool_alloc
                             with this sandbox as its ud; bounded by the heap */
    unsigned budget_ms;   /* CPU milliseconds per record */
    long budget_ticks;    /* ticks a record may see before it is stopped */
    volatile long ticks;  /* ticks of the current record so far */
    volatile sig_atomic_t exceeded;   /* the current record passed its budget */
    resumed record;                   /* the thread the record started on */
    resumed *volatile running;        /* the chain of resumes down to it */
    struct timespec t0;   /* creation, for the os.clock fallback */
} sandbox;

/* The sandbox whose record runs on this thread now, for the tick. */
static _Thread_local sandbox *volatile ticking;
/* This thread's timer: 0 none yet, 1 running. */
static _Thread_local int timer_made;

static sandbox *get(lua_State *L)
{
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

/* ---- the allocator: a pool bounded by the heap (lpool.h) ---------------- */

size_t ss_sandbox_used(lua_State *L)
{
    return ss_pool_footprint(&get(L)->pool);
}

/* ---- the budget ------------------------------------------------------ */

/* Installed only on a record past its budget: raises at every instruction
 * of that record; anywhere else it removes itself. */
static void budget_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    sandbox *sb = get(L);
    if (ticking != sb || !sb->exceeded) {
        lua_sethook(L, NULL, 0, 0);   /* a coroutine hooked by an earlier record */
        return;
    }
    luaL_error(L, "CPU budget of %d ms exceeded (an endless loop?)", (int)sb->budget_ms);
}

static void on_tick(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    sandbox *sb = ticking;
    if (!sb)
        return;   /* between records: the driver is not budgeted */
    sb->ticks += 1 + (si && si->si_code == SI_TIMER && si->si_overrun > 0 ? si->si_overrun : 0);
    if (sb->ticks <= sb->budget_ticks)
        return;
    sb->exceeded = 1;
    /* every thread of the chain, so whichever one the error returns to
     * stops too (coroutines they create inherit the hook); again at every
     * tick, in case one was resumed in between */
    for (resumed *r = sb->running; r; r = r->below)
        lua_sethook(r->thread, budget_hook, LUA_MASKCOUNT, 1);
}

/* The tick for this thread: a timer on its CPU clock, signalling it alone. */
static int start_timer(char *err, size_t errlen)
{
    if (timer_made)
        return 0;
    static int handler_set;
    if (!handler_set) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_tick;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigemptyset(&sa.sa_mask);
        if (sigaction(TICK_SIGNAL, &sa, NULL) != 0) {
            snprintf(err, errlen, "cannot set the enclave budget's signal handler: %s", strerror(errno));
            return -1;
        }
        handler_set = 1;
    }
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_THREAD_ID;
    ev.sigev_signo = TICK_SIGNAL;
    ev._sigev_un._tid = gettid();
    timer_t t;
    if (timer_create(CLOCK_THREAD_CPUTIME_ID, &ev, &t) != 0) {
        snprintf(err, errlen, "cannot create the enclave budget's CPU timer: %s", strerror(errno));
        return -1;
    }
    struct itimerspec every = { { 0, TICK_MS * 1000000L }, { 0, TICK_MS * 1000000L } };
    if (timer_settime(t, 0, &every, NULL) != 0) {
        snprintf(err, errlen, "cannot start the enclave budget's CPU timer: %s", strerror(errno));
        timer_delete(t);
        return -1;
    }
    timer_made = 1;
    return 0;
}

int ss_sandbox_run(lua_State *L)
{
    sandbox *sb = get(L);
    int nargs = lua_gettop(L) - 1;
    luaL_checkany(L, 1);
    sandbox *outer = ticking;
    sb->record.thread = L;
    sb->record.below = NULL;
    sb->running = &sb->record;
    sb->exceeded = 0;
    sb->ticks = 0;
    atomic_signal_fence(memory_order_seq_cst);
    ticking = sb;
    int status = lua_pcall(L, nargs, 0, 0);
    ticking = outer;
    atomic_signal_fence(memory_order_seq_cst);
    if (sb->exceeded)
        lua_sethook(L, NULL, 0, 0);
    sb->exceeded = 0;
    if (status == LUA_OK) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
}

/* coroutine.resume, keeping the chain of resumed threads for the tick. */
static int tracked_resume(lua_State *L)
{
    sandbox *sb = get(L);
    resumed *caller = sb->running;
    resumed self = { lua_tothread(L, 1), caller };
    atomic_signal_fence(memory_order_seq_cst);
    if (self.thread && caller)
        sb->running = &self;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    int status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    sb->running = caller;
    atomic_signal_fence(memory_order_seq_cst);
    if (status != LUA_OK)
        return lua_error(L);
    return lua_gettop(L);
}

/* coroutine.wrap over the tracked resume (a C wrap would resume directly). */
static const char wrap_source[] =
    "local create, resume, close = ...\n"
    "local function finish(co, ok, ...)\n"
    "  if ok then return ... end\n"
    "  close(co)\n"
    "  error((...), 2)\n"
    "end\n"
    "return function(f)\n"
    "  local co = create(f)\n"
    "  return function(...) return finish(co, resume(co, ...)) end\n"
    "end\n";

static void track_coroutines(lua_State *L)
{
    lua_getglobal(L, LUA_COLIBNAME);
    lua_getfield(L, -1, "resume");
    lua_pushcclosure(L, tracked_resume, 1);
    lua_setfield(L, -2, "resume");
    if (luaL_loadbufferx(L, wrap_source, sizeof wrap_source - 1, "=coroutine.wrap", "t") != LUA_OK)
        lua_error(L);
    lua_getfield(L, -2, "create");
    lua_getfield(L, -3, "resume");
    lua_getfield(L, -4, "close");
    lua_call(L, 3, 1);
    lua_setfield(L, -2, "wrap");
    lua_pop(L, 1);
}

/* ---- the libraries ----------------------------------------------------- */

/* A function that only says it is not there: upvalue 1 is its name. */
static int unavailable(lua_State *L)
{
    return luaL_error(L, "%s is not available in the enclave", lua_tostring(L, lua_upvalueindex(1)));
}

static void push_stub(lua_State *L, const char *lib, const char *name)
{
    if (lib)
        lua_pushfstring(L, "%s.%s", lib, name);
    else
        lua_pushstring(L, name);
    lua_pushcclosure(L, unavailable, 1);
}

/* __index of io, os, debug and package: any other name is a stub too. */
static int stub_index(lua_State *L)
{
    const char *lib = lua_tostring(L, lua_upvalueindex(1));
    const char *name = luaL_checkstring(L, 2);
    push_stub(L, lib, name);
    return 1;
}

/* A table of stubs for `names`, whose other fields are stubs as well. */
static void stub_library(lua_State *L, const char *lib, const char *const *names)
{
    lua_newtable(L);
    for (; *names; names++) {
        push_stub(L, lib, *names);
        lua_setfield(L, -2, *names);
    }
    lua_createtable(L, 0, 1);
    lua_pushstring(L, lib);
    lua_pushcclosure(L, stub_index, 1);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
}

/* os.clock: CPU time where the kernel answers; under the lockdown that
 * clock needs a system call, so fall back to the time since the sandbox was
 * made (CLOCK_MONOTONIC is read from the vDSO, without one). */
static int os_clock(lua_State *L)
{
    struct timespec ts = { 0, 0 };
    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) == 0) {
        lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
        return 1;
    }
    sandbox *sb = get(L);
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        ts = sb->t0;
    lua_pushnumber(L, (lua_Number)(ts.tv_sec - sb->t0.tv_sec)
                          + (lua_Number)(ts.tv_nsec - sb->t0.tv_nsec) / 1e9);
    return 1;
}

/* setmetatable(t, mt) refusing a __gc field: Lua runs finalizers with
 * hooks off, so a finalizer would escape the budget. (A __gc
 * added to the metatable later is never called: Lua marks an object for
 * finalization only when its metatable is set.) */
static int guarded_setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_error(L, "__gc metamethods are not available in the enclave");
        lua_pop(L, 1);
    }
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 2, 1);
    return 1;
}

/* load(chunk [, chunkname [, mode [, env]]]) with mode always "t". */
static int text_load(lua_State *L)
{
    lua_settop(L, 4);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_pushliteral(L, "t");
    if (lua_isnone(L, 4) || lua_isnil(L, 4)) {
        lua_call(L, 3, LUA_MULTRET);
    } else {
        lua_pushvalue(L, 4);
        lua_call(L, 4, LUA_MULTRET);
    }
    return lua_gettop(L) - 4;
}

static int load_embedded(lua_State *L, const char *name)
{
    for (const ss_lua_embedded *m = ss_lua_sources; m->name; m++) {
        if (strcmp(m->name, name) != 0)
            continue;
        char chunk[128];
        snprintf(chunk, sizeof chunk, "=[securestreams]/%s.lua", m->name);
        if (luaL_loadbufferx(L, m->source, m->len, chunk, "t") != LUA_OK)
            return lua_error(L);
        lua_pushstring(L, name);
        lua_call(L, 1, 1);
        return 1;
    }
    return luaL_error(L, "module '%s' is not built in", name);
}

/* require(name): csv, json and rx, nothing else. */
static int enclave_require(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    lua_settop(L, 1);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_getfield(L, 2, name) != LUA_TNIL)
        return 1;
    lua_pop(L, 1);
    if (!strcmp(name, "csv")) {
        lua_pushcfunction(L, luaopen_csv);
        lua_pushstring(L, name);
        lua_call(L, 1, 1);
    } else if (!strcmp(name, "json")) {
        lua_pushcfunction(L, luaopen_json);
        lua_pushstring(L, name);
        lua_call(L, 1, 1);
    } else if (!strcmp(name, "rx")) {
        load_embedded(L, name);
    } else {
        return luaL_error(L, "module '%s' is not available in the enclave", name);
    }
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, 2, name);
    return 1;
}

static int open_restricted(lua_State *L)
{
    static const luaL_Reg libs[] = {
        { LUA_GNAME, luaopen_base },         { LUA_STRLIBNAME, luaopen_string },
        { LUA_TABLIBNAME, luaopen_table },   { LUA_MATHLIBNAME, luaopen_math },
        { LUA_UTF8LIBNAME, luaopen_utf8 },   { LUA_COLIBNAME, luaopen_coroutine },
        { NULL, NULL },
    };
    static const char *const io_names[] = { "open", "lines", "popen", "read", "write", "close",
                                            "input", "output", "tmpfile", "type", NULL };
    static const char *const os_names[] = { "execute", "exit", "remove", "rename", "getenv",
                                            "tmpname", "setlocale", NULL };
    static const char *const debug_names[] = { "debug", "gethook", "getinfo", "getlocal",
                                               "getmetatable", "getregistry", "getupvalue",
                                               "getuservalue", "sethook", "setlocal",
                                               "setmetatable", "setupvalue", "setuservalue",
                                               "traceback", "upvalueid", "upvaluejoin", NULL };
    static const char *const package_names[] = { "loadlib", "searchpath", NULL };

    for (const luaL_Reg *lib = libs; lib->func; lib++) {
        luaL_requiref(L, lib->name, lib->func, 1);
        lua_pop(L, 1);
    }
    lua_pushnil(L);
    lua_setglobal(L, "dofile");
    lua_pushnil(L);
    lua_setglobal(L, "loadfile");
    lua_getglobal(L, "load");
    lua_pushcclosure(L, text_load, 1);
    lua_setglobal(L, "load");
    lua_getglobal(L, "setmetatable");
    lua_pushcclosure(L, guarded_setmetatable, 1);
    lua_setglobal(L, "setmetatable");
    push_stub(L, NULL, "print");
    lua_setglobal(L, "print");
    lua_pushcfunction(L, enclave_require);
    lua_setglobal(L, "require");
    track_coroutines(L);

    lua_getglobal(L, LUA_STRLIBNAME);
    push_stub(L, LUA_STRLIBNAME, "dump");
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);

    stub_library(L, LUA_IOLIBNAME, io_names);
    lua_setglobal(L, LUA_IOLIBNAME);
    stub_library(L, LUA_DBLIBNAME, debug_names);
    lua_setglobal(L, LUA_DBLIBNAME);

    /* os: the clock and calendar functions are real, the rest are stubs */
    lua_pushcfunction(L, luaopen_os);   /* not registered in package.loaded */
    lua_call(L, 0, 1);
    stub_library(L, LUA_OSLIBNAME, os_names);
    static const char *const keep[] = { "time", "date", "difftime", NULL };
    for (const char *const *k = keep; *k; k++) {
        lua_getfield(L, -2, *k);
        lua_setfield(L, -2, *k);
    }
    lua_pushcfunction(L, os_clock);
    lua_setfield(L, -2, "clock");
    lua_setglobal(L, LUA_OSLIBNAME);
    lua_pop(L, 1);

    /* package: the loaded table only; no path, no searchers, no loaders */
    stub_library(L, LUA_LOADLIBNAME, package_names);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_setfield(L, -2, "loaded");
    lua_setglobal(L, LUA_LOADLIBNAME);

    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    for (const char *const *n = (const char *const[]){ LUA_IOLIBNAME, LUA_OSLIBNAME,
                                                       LUA_DBLIBNAME, LUA_LOADLIBNAME, NULL };
         *n; n++) {
        lua_getglobal(L, *n);
        lua_setfield(L, -2, *n);
    }
    lua_pop(L, 1);
    return 0;
}

static int panic(lua_State *L)
{
    /* never reached: the enclave enters Lua only through lua_pcall */
    fprintf(stderr, "securestreams enclave: Lua panic: %s\n", lua_tostring(L, -1));
    return 0;
}

lua_State *ss_sandbox_new(size_t heap_bytes, unsigned budget_ms, char *err, size_t errlen)
{
    if (start_timer(err, errlen) != 0)
        return NULL;
    sandbox *sb = calloc(1, sizeof *sb);
    if (!sb) {
        snprintf(err, errlen, "out of memory creating the Lua state");
        return NULL;
    }
    ss_pool_init(&sb->pool, heap_bytes);
    sb->budget_ms = budget_ms ? budget_ms : 1;
    sb->budget_ticks = (long)((sb->budget_ms + TICK_MS - 1) / TICK_MS);
    clock_gettime(CLOCK_MONOTONIC, &sb->t0);
    lua_State *L = lua_newstate(ss_pool_alloc, sb);
    if (!L) {
        snprintf(err, errlen, "a heap of %zu bytes cannot hold a Lua state", heap_bytes);
        ss_pool_release(&sb->pool);
        free(sb);
        return NULL;
    }
    lua_atpanic(L, panic);
    lua_setwarnf(L, NULL, NULL);
    lua_pushcfunction(L, open_restricted);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        snprintf(err, errlen, "setting up the enclave's Lua state (heap %zu bytes): %s", heap_bytes,
                 lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
        ss_sandbox_close(L);
        return NULL;
    }
    return L;
}

void ss_sandbox_close(lua_State *L)
{
    if (!L)
        return;
    sandbox *sb = get(L);
    lua_close(L);
    ss_pool_release(&sb->pool);
    free(sb);
}

/* ---- the process --------------------------------------------------------- */

ss_err ss_sandbox_fix_heap(size_t bytes, char *err, size_t errlen)
{
    if (mallopt(M_MMAP_MAX, 0) != 1 || mallopt(M_TRIM_THRESHOLD, -1) != 1) {
#ifndef SANITIZED
        snprintf(err, errlen, "cannot fix the heap: mallopt refused");
        return SS_ERR_NOMEM;
#endif
    }
    char *p = malloc(bytes);
    if (!p) {
        snprintf(err, errlen, "cannot reserve the enclave's heap of %zu bytes", bytes);
        return SS_ERR_NOMEM;
    }
    /* touch every page (a memset of zeros before free may be optimised
     * into nothing, or into a calloc that touches nothing) */
    volatile char *v = p;
    for (size_t i = 0; i < bytes; i += 4096)
        v[i] = 1;
    free(p);
    return SS_OK;
}

ss_err ss_sandbox_lockdown(int fd_in, int fd_out, char *err, size_t errlen)
{
    tzset();   /* read the time zone now: os.date cannot open files later */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        int en = errno;
        snprintf(err, errlen, "prctl(PR_SET_NO_NEW_PRIVS): %s", strerror(en));
        return SS_ERR_IO;
    }
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM));
    if (!ctx) {
        snprintf(err, errlen, "seccomp_init failed");
        return SS_ERR_IO;
    }
    int rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
    if (rc == 0)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(read), 1, SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)fd_in));
    if (rc == 0)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(write), 1, SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)fd_out));
    static const int allowed[] = { SCMP_SYS(exit), SCMP_SYS(exit_group), SCMP_SYS(rt_sigreturn) };
    for (size_t i = 0; rc == 0 && i < sizeof allowed / sizeof *allowed; i++)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, allowed[i], 0);
#ifdef SANITIZED
    static const int memory[] = { SCMP_SYS(brk) };
    static const int sanitizer[] = { SCMP_SYS(mmap), SCMP_SYS(munmap), SCMP_SYS(mremap),
                                     SCMP_SYS(mprotect), SCMP_SYS(madvise), SCMP_SYS(sigaltstack),
                                     SCMP_SYS(gettid), SCMP_SYS(getpid) };
    for (size_t i = 0; rc == 0 && i < sizeof sanitizer / sizeof *sanitizer; i++)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, sanitizer[i], 0);
#else
    static const int memory[] = { SCMP_SYS(brk), SCMP_SYS(mmap), SCMP_SYS(munmap), SCMP_SYS(mremap) };
#endif
    for (size_t i = 0; rc == 0 && i < sizeof memory / sizeof *memory; i++)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOMEM), memory[i], 0);
    if (rc == 0)
        rc = seccomp_load(ctx);
    seccomp_release(ctx);
    if (rc != 0) {
        snprintf(err, errlen, "cannot install the seccomp filter: %s", strerror(-rc));
        return SS_ERR_IO;
    }
    return SS_OK;
}
