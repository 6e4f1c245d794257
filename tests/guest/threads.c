/* Guest code of tests/tests/libc_instrumented.rs: threads and child processes made while
 * libc itself runs under the Vm (pthread_create's clone3, glibc's clone with CLONE_VM and
 * without CLONE_SETTLS, fork's clone, vfork). */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void *thr_work(void *arg) {
    uint64_t s = 0, k = (uint64_t)(uintptr_t)arg;
    for (uint64_t i = 0; i < 200000; i++)
        s += (i * 2654435761u) ^ k;
    return (void *)(uintptr_t)s;
}

/* Starts n (<= 16) pthreads, joins them, returns the sum of what they computed, or ~0 on
 * failure. */
uint64_t thr_pthreads(uint32_t n) {
    pthread_t t[16];
    if (n > 16)
        return ~0ull;
    for (uint32_t i = 0; i < n; i++)
        if (pthread_create(&t[i], NULL, thr_work, (void *)(uintptr_t)(i + 1)) != 0)
            return ~0ull;
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        void *r;
        if (pthread_join(t[i], &r) != 0)
            return ~0ull;
        total += (uint64_t)(uintptr_t)r;
    }
    return total;
}

static volatile uint64_t clone_result;

static int clone_fn(void *arg) {
    clone_result = (uint64_t)(uintptr_t)thr_work(arg);
    return 0;
}

/* glibc's clone with CLONE_VM (no CLONE_SETTLS: the child shares the parent's TLS, so it
 * calls nothing that uses it) and a stack of its own; waits for it. Returns its result. */
uint64_t thr_raw_clone(uint64_t k) {
    size_t size = 1 << 20;
    char *stack = malloc(size);
    if (!stack)
        return ~0ull;
    clone_result = 0;
    int pid = clone(clone_fn, stack + size, CLONE_VM | SIGCHLD, (void *)(uintptr_t)k);
    if (pid < 0)
        return ~0ull;
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
        return ~0ull;
    free(stack);
    return clone_result;
}

/* fork, then vfork: each child exits with a status computed from k; returns both statuses
 * and the parent's own computation. */
uint64_t thr_fork_vfork(uint64_t k) {
    int st1 = -1, st2 = -1;
    pid_t p = fork();
    if (p == 0)
        _exit((int)(((uint64_t)(uintptr_t)thr_work((void *)(uintptr_t)k)) & 0x7f));
    if (p < 0 || waitpid(p, &st1, 0) != p)
        return ~0ull;
    pid_t v = vfork();
    if (v == 0)
        _exit((int)(k & 0x3f) + 1);
    if (v < 0 || waitpid(v, &st2, 0) != v)
        return ~0ull;
    return ((uint64_t)WEXITSTATUS(st1) << 8 | (uint64_t)WEXITSTATUS(st2)) ^ (k << 16);
}
