/*
 * test.c - the helpers every C test shares (test.h). Their plumbing uses
 * plain POSIX and stdio, never the library's own file or parsing code, so a
 * bug there shows up in that module's test and not as every test failing.
 */
#include "test.h"

#include "lua/lmodules.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <lauxlib.h>
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- assertions ------------------------------------------------------------ */

void test_fail_int(const char *file, int line, const char *ea, const char *op, const char *eb,
                   intmax_t a, intmax_t b)
{
    print_error("%s %s %s: %jd %s %jd is false\n", ea, op, eb, a, op, b);
    _fail(file, line);
}

void test_fail_uint(const char *file, int line, const char *ea, const char *op, const char *eb,
                    uintmax_t a, uintmax_t b)
{
    print_error("%s %s %s: %ju %s %ju is false\n", ea, op, eb, a, op, b);
    _fail(file, line);
}

void test_str_eq(const char *file, int line, const char *ea, const char *eb, const char *a,
                 const char *b)
{
    if (a == b || (a && b && !strcmp(a, b)))
        return;
    print_error("%s == %s:\n  %s is \"%s\"\n  %s is \"%s\"\n", ea, eb, ea, a ? a : "(null)", eb,
                b ? b : "(null)");
    _fail(file, line);
}

void test_contains(const char *file, int line, const char *ehay, const char *eneedle,
                   const char *hay, const char *needle, int want)
{
    int has = hay && needle && strstr(hay, needle);
    if (has == want)
        return;
    print_error("%s %s %s:\n  %s is \"%s\"\n  %s is \"%s\"\n", ehay,
                want ? "does not contain" : "contains", eneedle, ehay, hay ? hay : "(null)",
                eneedle, needle ? needle : "(null)");
    _fail(file, line);
}

/* ---- the temporary directory ----------------------------------------------- */

static char dir[256];   /* empty when there is none */

const char *test_dir_make(void)
{
    if (dir[0])
        test_dir_remove();
    snprintf(dir, sizeof dir, "/tmp/ss-%s-XXXXXX", program_invocation_short_name);
    if (!mkdtemp(dir)) {
        int en = errno;
        fprintf(stderr, "cannot make a temporary directory %s: %s\n", dir, strerror(en));
        exit(1);
    }
    return dir;
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    if (remove(path) != 0) {
        int en = errno;
        fprintf(stderr, "cannot remove %s: %s\n", path, strerror(en));
    }
    return 0;
}

void test_dir_remove(void)
{
    if (!dir[0])
        return;
    /* Files a test made read-only stay removable: their directory is ours. */
    nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
    dir[0] = '\0';
}

const char *test_dir(void)
{
    return dir[0] ? dir : NULL;
}

static int capturing_fd = -1;   /* the real stderr while a capture is on */

int test_dir_setup(void **state)
{
    (void)state;
    test_dir_make();
    return 0;
}

int test_dir_teardown(void **state)
{
    (void)state;
    if (capturing_fd >= 0)
        free(test_capture_stop());
    test_dir_remove();
    return 0;
}

const char *test_path(const char *name)
{
    static char buf[16][512];
    static unsigned n;
    if (!dir[0])
        fail_msg("test_path(\"%s\") with no temporary directory", name);
    char *p = buf[n++ % 16];
    if ((size_t)snprintf(p, sizeof buf[0], "%s/%s", dir, name) >= sizeof buf[0])
        fail_msg("test_path(\"%s\"): path too long", name);
    return p;
}

/* ---- small files ------------------------------------------------------------ */

void test_write_file(const char *path, const void *data, size_t len, mode_t mode)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        fail_msg("cannot create %s: %s", path, strerror(errno));
    if (fchmod(fd, mode) != 0)   /* the umask may have taken bits */
        fail_msg("cannot chmod %s: %s", path, strerror(errno));
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            fail_msg("cannot write %s: %s", path, strerror(errno));
        p += w;
        len -= (size_t)w;
    }
    if (close(fd) != 0)
        fail_msg("cannot write %s: %s", path, strerror(errno));
}

void test_write_text(const char *path, const char *text)
{
    test_write_file(path, text, strlen(text), 0644);
}

char *test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s: %s", path, strerror(errno));
    /* Read to the end: files in /proc say they are empty. */
    size_t n = 0, cap = 4096;
    char *p = malloc(cap);
    while (p) {
        n += fread(p + n, 1, cap - 1 - n, f);
        if (n < cap - 1)
            break;
        char *q = realloc(p, 2 * cap);
        if (!q) {
            free(p);
            p = NULL;
        }
        p = q;
        cap *= 2;
    }
    int bad = !p || ferror(f);
    fclose(f);
    if (bad) {
        free(p);
        fail_msg("cannot read %s", path);
    }
    p[n] = '\0';
    if (len)
        *len = n;
    return p;
}

int test_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* ---- stderr ----------------------------------------------------------------- */

static FILE *captured;   /* where fd 2 points while capturing */

void test_capture_start(void)
{
    if (capturing_fd >= 0)
        fail_msg("stderr is already being captured");
    captured = tmpfile();
    if (!captured)
        fail_msg("tmpfile: %s", strerror(errno));
    fflush(stderr);
    capturing_fd = dup(2);
    if (capturing_fd < 0 || dup2(fileno(captured), 2) < 0)
        fail_msg("cannot redirect stderr: %s", strerror(errno));
}

char *test_capture_stop(void)
{
    if (capturing_fd < 0)
        fail_msg("stderr is not being captured");
    fflush(stderr);
    dup2(capturing_fd, 2);
    close(capturing_fd);
    capturing_fd = -1;
    char *text = NULL;
    long n = -1;
    /* fd 2 shared the file's offset: its end is what was written. */
    if (fseek(captured, 0, SEEK_END) == 0)
        n = ftell(captured);
    if (n >= 0 && (text = malloc((size_t)n + 1)) != NULL) {
        rewind(captured);
        size_t got = fread(text, 1, (size_t)n, captured);
        text[got] = '\0';
    }
    fclose(captured);
    captured = NULL;
    if (!text)
        fail_msg("cannot read the captured stderr back");
    fputs(text, stderr);   /* still visible in the test's output */
    return text;
}

/* ---- a router in a thread ----------------------------------------------------- */

static void *router_thread(void *arg)
{
    test_router *tr = arg;
    tr->rc = ss_router_run(tr->r, &tr->stop);
    return NULL;
}

void test_router_start(test_router *tr, void *zctx, const ss_router_opts *o)
{
    char err[1024] = "";
    memset(tr, 0, sizeof *tr);
    tr->rc = SS_ERR__COUNT;
    if (ss_router_new(zctx, o, &tr->r, err, sizeof err) != SS_OK)
        fail_msg("router: %s", err);
    if (pthread_create(&tr->th, NULL, router_thread, tr) != 0)
        fail_msg("cannot start the router's thread");
}

ss_err test_router_finish(test_router *tr, int secs)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += secs;
    if (pthread_timedjoin_np(tr->th, NULL, &ts) != 0) {
        tr->stop = 1;
        pthread_join(tr->th, NULL);
        fail_msg("the router did not finish within %d s", secs);
    }
    return tr->rc;
}

void test_eos_payload(msgpack_sbuffer *sb, const uint64_t *members, size_t n,
                      const uint64_t *keys, size_t nkeys, int negative)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_str(&pk, 7);
    msgpack_pack_str_body(&pk, "members", 7);
    msgpack_pack_array(&pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++)
        msgpack_pack_uint64(&pk, members[i]);
    msgpack_pack_str(&pk, 5);
    msgpack_pack_str_body(&pk, "stats", 5);
    msgpack_pack_map(&pk, (uint32_t)nkeys);
    for (size_t i = 0; i < nkeys; i++) {
        if (negative)
            msgpack_pack_int64(&pk, (int64_t)keys[i]);
        else
            msgpack_pack_uint64(&pk, keys[i]);
        msgpack_pack_map(&pk, 1);
        msgpack_pack_str(&pk, 2);
        msgpack_pack_str_body(&pk, "in", 2);
        msgpack_pack_uint64(&pk, keys[i] & 0xffff);
    }
}

/* ---- a child process ----------------------------------------------------------- */

pid_t test_child_start(int (*fn)(void *arg), void *arg)
{
    fflush(NULL);   /* nothing buffered is written twice */
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0)
        _exit(fn(arg));
    return pid;
}

static int reap(pid_t pid, int *status)
{
    for (;;) {
        pid_t r = waitpid(pid, status, 0);
        if (r == pid)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

int test_child_wait(pid_t pid, int deadline_ms)
{
    int64_t until = ss_now_ms() + deadline_ms;
    int status = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        if (r < 0 && errno != EINTR)
            fail_msg("waitpid(%d): %s", (int)pid, strerror(errno));
        if (ss_now_ms() >= until)
            break;
        nanosleep(&(struct timespec){ 0, 10 * 1000 * 1000 }, NULL);
    }
    kill(pid, SIGKILL);
    reap(pid, &status);
    fail_msg("child %d still running after %d ms: killed", (int)pid, deadline_ms);
    return status;
}

int test_child_kill(pid_t pid)
{
    int status = 0;
    kill(pid, SIGKILL);
    if (reap(pid, &status) != 0)
        fail_msg("waitpid(%d): %s", (int)pid, strerror(errno));
    return status;
}

/* ---- waiting for a condition ------------------------------------------------------ */

void test_wait_for(int deadline_ms, int (*cond)(void *arg), void *arg, const char *what)
{
    int64_t until = ss_now_ms() + deadline_ms;
    while (!cond(arg)) {
        if (ss_now_ms() >= until)
            fail_msg("waited %d ms for %s", deadline_ms, what);
        nanosleep(&(struct timespec){ 0, 10 * 1000 * 1000 }, NULL);
    }
}

/* ---- Lua ---------------------------------------------------------------------------- */

static const char deq_src[] =
    "function deq(a, b)\n"
    "  if type(a) ~= type(b) then return false end\n"
    "  if type(a) == 'number' then return math.type(a) == math.type(b) and a == b end\n"
    "  if type(a) ~= 'table' then return a == b end\n"
    "  for k, v in pairs(a) do if not deq(v, b[k]) then return false end end\n"
    "  for k in pairs(b) do if a[k] == nil then return false end end\n"
    "  return true\n"
    "end\n"
    "function nest(n) local t = {1} for i = 2, n do t = {t} end return t end\n";

int test_lua_setup(void **state)
{
    lua_State *L = luaL_newstate();
    if (!L)
        return -1;
    luaL_openlibs(L);
    luaL_requiref(L, "csv", luaopen_csv, 1);
    luaL_requiref(L, "json", luaopen_json, 1);
    lua_pop(L, 2);
    if (luaL_dostring(L, deq_src) != LUA_OK) {
        fprintf(stderr, "deq: %s\n", lua_tostring(L, -1));
        lua_close(L);
        return -1;
    }
    *state = L;
    return 0;
}

int test_lua_teardown(void **state)
{
    lua_close(*state);
    return 0;
}
