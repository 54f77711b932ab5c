/*
 * lsandbox.h - the sandbox an enclave runs stage code in (docs/enclave.md):
 * a restricted Lua 5.4 state with a heap bound and a CPU-time budget,
 * and, for the isolated backend, the process lockdown (a fixed heap, then
 * no_new_privs and a seccomp filter).
 *
 * The restricted state has the base library without dofile/loadfile and
 * with load limited to text chunks, string, table, math, utf8, coroutine;
 * require finds csv, json and rx only; io, os, debug and package hold stubs
 * that raise "NAME is not available in the enclave" (os.time, os.clock,
 * os.date and os.difftime are real); setmetatable refuses __gc (finalizers
 * run with hooks off, out of the budget's reach). Its allocator (a pool,
 * lpool.h) counts every byte it takes from malloc and refuses to pass the
 * bound, so Lua raises "not enough memory". The budget
 * counts the CPU time of the thread only while a record runs
 * (ss_sandbox_run), at a tick of 5 ms, without any hook or system call
 * while the record stays inside it: past it, every further instruction
 * raises "CPU budget of N ms exceeded (an endless loop?)" until the
 * record's protected call returns, so user code cannot catch its way out
 * of the budget.
 *
 * Internal to lib/enclave (core.c, child.c) and its tests; not a public
 * module.
 */
#ifndef SS_LSANDBOX_H
#define SS_LSANDBOX_H

#include "base/common.h"

#include <lua.h>

/* A new restricted state whose heap may not pass heap_bytes, with a budget
 * of `budget_ms` milliseconds of CPU time per record. The first state made
 * on a thread starts that thread's budget timer (a CPU-clock timer
 * signalling SIGVTALRM to this thread), so make the state on the thread
 * that runs it, and before any lockdown. NULL when the timer cannot be
 * made or even the libraries do not fit (err says so). Close it with
 * ss_sandbox_close. */
lua_State *ss_sandbox_new(size_t heap_bytes, unsigned budget_ms, char *err, size_t errlen);
/* lua_close and free the sandbox's own state. Accepts NULL. */
void ss_sandbox_close(lua_State *L);

/* Bytes the state's allocator holds from malloc now (what Lua holds, and
 * the small blocks it freed, kept for reuse). */
size_t ss_sandbox_used(lua_State *L);

/* Lua function run(f, ...): calls f(...) protected, with the CPU budget
 * counted from zero; returns true, or false and the error. The
 * budget is off outside run. Pushed as a C function for the driver. */
int ss_sandbox_run(lua_State *L);

/* Grow this process's malloc heap once to hold `bytes` more and keep it:
 * no more mmap'd chunks, no trimming (glibc mallopt), then malloc, touch
 * and free that much. After ss_sandbox_lockdown the heap cannot grow: an
 * allocation that does not fit what is there fails. SS_ERR_NOMEM. */
ss_err ss_sandbox_fix_heap(size_t bytes, char *err, size_t errlen);

/* Lock this process down for good: PR_SET_NO_NEW_PRIVS, then a seccomp
 * filter whose default is to fail with EPERM, allowing only read(fd_in),
 * write(fd_out), exit, exit_group and rt_sigreturn (the budget's tick); brk, mmap, munmap and
 * mremap fail with ENOMEM. (AddressSanitizer builds only, whose runtime
 * maps memory and inspects its stack for itself, also allow mmap, munmap,
 * mremap, mprotect, madvise, sigaltstack, gettid and getpid: a test build,
 * never a deployment.)
 * Another architecture's system calls kill the process. SS_ERR_IO with the
 * reason when the kernel refuses. */
ss_err ss_sandbox_lockdown(int fd_in, int fd_out, char *err, size_t errlen);

#endif
