/* Threads made in every way a program makes them, for the tests of threads followed
 * (tests/tests/threads.rs). The mode is the first argument:
 *
 * - clone: a raw clone system call (inline asm, no CLONE_SETTLS: the child shares the
 *   parent's TLS) on a stack from mmap; the child calls clone_work CLONE_N times and
 *   exits with a raw exit system call; the parent waits on the CLONE_CHILD_CLEARTID word;
 * - clone3: the same with clone3 and a struct clone_args (worker clone3_work);
 * - vfork: vfork, then execve /bin/echo in the child; the parent reports its status;
 * - fork_mt: fork while 4 pthreads run; the child computes alone and exits;
 * - exit_running: exit(0) while 4 pthreads spin;
 * - churn [ROUNDS]: ROUNDS rounds (200) of 64 threads created and joined, each calling
 *   churn_step 10 times;
 * - translate_race: 16 threads released together, each reaching functions (64 distinct
 *   ones) no thread has run yet while others exit.
 *
 * Every mode's stdout is the same every run (no thread ids, no addresses); it exits 0. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* ---- raw clone and clone3 ---------------------------------------------------------- */

#define CLONE_N 5000
#define CHILD_STACK (256 << 10)
#define THREAD_FLAGS                                                                    \
    (CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM |  \
     CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID)

/* What the raw threads computed (written by the child, read after it is gone). */
volatile uint64_t clone_result;
volatile uint64_t clone3_result;

__attribute__((noinline, noipa)) uint64_t clone_work(uint64_t k) {
    return k * k + 3 * k + 1;
}

__attribute__((noinline, noipa)) uint64_t clone3_work(uint64_t k) {
    return (k * 7) ^ (k << 2);
}

/* The children's bodies: plain code, no libc (the child shares the parent's TLS, so
 * nothing that uses errno, locks or thread-local data). */
__attribute__((noinline, noipa)) void clone_child(void) {
    uint64_t s = 0;
    for (uint64_t k = 0; k < CLONE_N; k++)
        s += clone_work(k);
    clone_result = s;
}

__attribute__((noinline, noipa)) void clone3_child(void) {
    uint64_t s = 0;
    for (uint64_t k = 0; k < CLONE_N; k++)
        s += clone3_work(k);
    clone3_result = s;
}

/* After the system call, the child (rax = 0, rsp = its new stack) calls `fn` and exits
 * with a raw exit system call (this thread only); the parent gets the tid or -errno. */
#define CHILD_TAIL                                                                      \
    "test %%rax, %%rax\n\t"                                                             \
    "jnz 1f\n\t"                                                                        \
    "xor %%ebp, %%ebp\n\t"                                                              \
    "and $-16, %%rsp\n\t"                                                               \
    "call *%[fn]\n\t"                                                                   \
    "mov $60, %%eax\n\t"                                                                \
    "xor %%edi, %%edi\n\t"                                                              \
    "syscall\n\t"                                                                       \
    "hlt\n"                                                                             \
    "1:\n\t"

static long raw_clone(unsigned long flags, void *stack_top, int *ptid, int *ctid,
                      void (*fn)(void)) {
    long ret;
    register long r10 __asm__("r10") = (long)ctid;
    register long r8 __asm__("r8") = 0;
    __asm__ volatile("syscall\n\t" CHILD_TAIL
                     : "=a"(ret)
                     : "a"(56L), "D"(flags), "S"(stack_top), "d"(ptid), "r"(r10), "r"(r8),
                       [fn] "r"(fn)
                     : "rcx", "r11", "memory");
    return ret;
}

/* struct clone_args of linux/sched.h (version 0, 64 bytes). */
struct clone_args_v0 {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
};

static long raw_clone3(struct clone_args_v0 *args, void (*fn)(void)) {
    long ret;
    __asm__ volatile("syscall\n\t" CHILD_TAIL
                     : "=a"(ret)
                     : "a"(435L), "D"(args), "S"(sizeof *args), [fn] "r"(fn)
                     : "rcx", "r11", "memory");
    return ret;
}

/* Waits until the kernel clears the CLONE_CHILD_CLEARTID word at the child's exit. */
static void wait_cleared(volatile int *ctid) {
    int v;
    while ((v = __atomic_load_n(ctid, __ATOMIC_ACQUIRE)) != 0)
        syscall(SYS_futex, ctid, FUTEX_WAIT, v, NULL, NULL, 0);
}

static void *child_stack(void) {
    void *s = mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (s == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return s;
}

static uint64_t expected(uint64_t (*f)(uint64_t)) {
    uint64_t s = 0;
    for (uint64_t k = 0; k < CLONE_N; k++)
        s += f(k);
    return s;
}

static int mode_clone(void) {
    void *stack = child_stack();
    static volatile int ctid = -1;
    static int ptid;
    long tid = raw_clone(THREAD_FLAGS, (char *)stack + CHILD_STACK, &ptid, (int *)&ctid,
                         clone_child);
    if (tid < 0) {
        fprintf(stderr, "clone: %s\n", strerror((int)-tid));
        return 1;
    }
    wait_cleared(&ctid);
    munmap(stack, CHILD_STACK);
    /* (expected() is computed here, after the child, on the main thread: the child's
     * result must match a main-thread computation of the same sum.) */
    printf("clone: child computed %llu (%s)\n", (unsigned long long)clone_result,
           clone_result == expected(clone_work) ? "right" : "WRONG");
    return clone_result == expected(clone_work) ? 0 : 1;
}

static int mode_clone3(void) {
    void *stack = child_stack();
    static volatile int ctid = -1;
    static int ptid;
    struct clone_args_v0 args = {
        .flags = THREAD_FLAGS,
        .child_tid = (uint64_t)(uintptr_t)&ctid,
        .parent_tid = (uint64_t)(uintptr_t)&ptid,
        .exit_signal = 0,
        .stack = (uint64_t)(uintptr_t)stack,
        .stack_size = CHILD_STACK,
    };
    long tid = raw_clone3(&args, clone3_child);
    if (tid == -ENOSYS) {
        /* A kernel (or seccomp filter) without clone3: said on stdout, for the tests. */
        printf("clone3: unavailable (ENOSYS)\n");
        return 0;
    }
    if (tid < 0) {
        fprintf(stderr, "clone3: %s\n", strerror((int)-tid));
        return 1;
    }
    wait_cleared(&ctid);
    munmap(stack, CHILD_STACK);
    printf("clone3: child computed %llu (%s)\n", (unsigned long long)clone3_result,
           clone3_result == expected(clone3_work) ? "right" : "WRONG");
    return clone3_result == expected(clone3_work) ? 0 : 1;
}

/* ---- vfork ------------------------------------------------------------------------- */

static int mode_vfork(void) {
    fflush(stdout);
    pid_t p = vfork();
    if (p < 0) {
        perror("vfork");
        return 1;
    }
    if (p == 0) {
        char *argv[] = {"echo", "from-vfork-child", NULL};
        execve("/bin/echo", argv, environ);
        _exit(127);
    }
    int st;
    if (waitpid(p, &st, 0) != p) {
        perror("waitpid");
        return 1;
    }
    printf("vfork: child exited %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    return 0;
}

/* ---- fork with threads running ----------------------------------------------------- */

#define SPINNERS 4

static volatile int stop_spinning;
static volatile uint64_t spin_counts[SPINNERS];

__attribute__((noinline, noipa)) uint64_t spin_step(uint64_t x) {
    return x * 6364136223846793005u + 1442695040888963407u;
}

__attribute__((noinline, noipa)) uint64_t fork_child_work(uint64_t k) {
    return k * 3 + 1;
}

static void *spinner(void *arg) {
    int i = (int)(intptr_t)arg;
    uint64_t x = (uint64_t)i;
    while (!stop_spinning) {
        x = spin_step(x);
        spin_counts[i]++;
    }
    return (void *)(uintptr_t)(x | 1);
}

/* Starts the spinners and waits until each has run (stop_spinning ends them). */
static void start_spinners(pthread_t *t) {
    for (int i = 0; i < SPINNERS; i++) {
        if (pthread_create(&t[i], NULL, spinner, (void *)(intptr_t)i) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            exit(1);
        }
    }
    for (int i = 0; i < SPINNERS; i++)
        while (spin_counts[i] < 1000)
            sched_yield();
}

static int mode_fork_mt(void) {
    pthread_t t[SPINNERS];
    start_spinners(t);
    fflush(stdout);
    pid_t p = fork();
    if (p < 0) {
        perror("fork");
        return 1;
    }
    if (p == 0) {
        /* Only this thread exists in the child. */
        uint64_t s = 0;
        for (uint64_t k = 0; k < 1000; k++)
            s += fork_child_work(k);
        printf("fork_mt child: sum %llu\n", (unsigned long long)s);
        exit(0);
    }
    int st;
    if (waitpid(p, &st, 0) != p) {
        perror("waitpid");
        return 1;
    }
    stop_spinning = 1;
    int joined = 0;
    for (int i = 0; i < SPINNERS; i++) {
        void *r;
        if (pthread_join(t[i], &r) == 0 && r != NULL)
            joined++;
    }
    printf("fork_mt parent: child exited %d, %d threads joined\n",
           WIFEXITED(st) ? WEXITSTATUS(st) : -1, joined);
    return 0;
}

/* ---- exit while threads run -------------------------------------------------------- */

static int mode_exit_running(void) {
    pthread_t t[SPINNERS];
    start_spinners(t); /* stop_spinning is never set */
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    printf("exit_running: exiting with %d threads running\n", SPINNERS);
    exit(0);
}

/* ---- thread churn ------------------------------------------------------------------ */

#define CHURN_THREADS 64
#define CHURN_STEPS 10

static uint64_t churn_total;

__attribute__((noinline, noipa)) uint64_t churn_step(uint64_t x) {
    return x + 1;
}

static void *churner(void *arg) {
    (void)arg;
    uint64_t n = 0;
    for (int k = 0; k < CHURN_STEPS; k++)
        n = churn_step(n);
    __atomic_fetch_add(&churn_total, n, __ATOMIC_RELAXED);
    return NULL;
}

static int mode_churn(int rounds) {
    for (int r = 0; r < rounds; r++) {
        pthread_t t[CHURN_THREADS];
        for (int i = 0; i < CHURN_THREADS; i++) {
            if (pthread_create(&t[i], NULL, churner, NULL) != 0) {
                fprintf(stderr, "pthread_create failed in round %d\n", r);
                return 1;
            }
        }
        for (int i = 0; i < CHURN_THREADS; i++)
            pthread_join(t[i], NULL);
    }
    uint64_t want = (uint64_t)rounds * CHURN_THREADS * CHURN_STEPS;
    printf("churn: %d rounds of %d threads, total %llu (%s)\n", rounds, CHURN_THREADS,
           (unsigned long long)churn_total, churn_total == want ? "right" : "WRONG");
    return churn_total == want ? 0 : 1;
}

/* ---- translation race -------------------------------------------------------------- */

#define RACE_THREADS 16
#define RACE_FNS 64

#define ALL_FNS                                                                         \
    X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14)    \
    X(15) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23) X(24) X(25) X(26) X(27)      \
    X(28) X(29) X(30) X(31) X(32) X(33) X(34) X(35) X(36) X(37) X(38) X(39) X(40)      \
    X(41) X(42) X(43) X(44) X(45) X(46) X(47) X(48) X(49) X(50) X(51) X(52) X(53)      \
    X(54) X(55) X(56) X(57) X(58) X(59) X(60) X(61) X(62) X(63)

/* race_fn_<i>: a little arithmetic of its own, with a branch (two blocks or more). */
#define X(i)                                                                            \
    __attribute__((noinline, noipa)) uint64_t race_fn_##i(uint64_t x) {                 \
        uint64_t y = x * (2 * (i) + 3) + (i);                                           \
        if (y & ((i) | 1))                                                              \
            y ^= y >> ((i) % 13 + 1);                                                   \
        else                                                                            \
            y += (uint64_t)(i) << ((i) % 7);                                            \
        return y;                                                                       \
    }
ALL_FNS
#undef X

#define X(i) race_fn_##i,
static uint64_t (*const race_fns[RACE_FNS])(uint64_t) = {ALL_FNS};
#undef X

static pthread_barrier_t race_start;
static uint64_t race_sums[RACE_THREADS];

/* Thread t first runs its own 4 functions (which no other thread runs first), then 3*t
 * functions of the others in turn, each 20*(t+1) times: thread 0 is gone early while
 * thread 15 still reaches functions that nobody ran before. */
static void *racer(void *arg) {
    int t = (int)(intptr_t)arg;
    int reps = 20 * (t + 1);
    uint64_t s = (uint64_t)t;
    pthread_barrier_wait(&race_start);
    for (int j = 0; j < 4 + 3 * t; j++) {
        uint64_t (*f)(uint64_t) = race_fns[(4 * t + j) % RACE_FNS];
        for (int r = 0; r < reps; r++)
            s = f(s + (uint64_t)r);
    }
    race_sums[t] = s;
    return NULL;
}

static int mode_translate_race(void) {
    pthread_t t[RACE_THREADS];
    pthread_barrier_init(&race_start, NULL, RACE_THREADS);
    for (int i = 0; i < RACE_THREADS; i++) {
        if (pthread_create(&t[i], NULL, racer, (void *)(intptr_t)i) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    }
    uint64_t sum = 0;
    for (int i = 0; i < RACE_THREADS; i++) {
        pthread_join(t[i], NULL);
        sum = sum * 31 + race_sums[i];
    }
    pthread_barrier_destroy(&race_start);
    for (int i = 0; i < RACE_THREADS; i++)
        printf("racer %d: %llu\n", i, (unsigned long long)race_sums[i]);
    printf("translate_race: checksum %llu\n", (unsigned long long)sum);
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "clone") == 0)
        return mode_clone();
    if (strcmp(mode, "clone3") == 0)
        return mode_clone3();
    if (strcmp(mode, "vfork") == 0)
        return mode_vfork();
    if (strcmp(mode, "fork_mt") == 0)
        return mode_fork_mt();
    if (strcmp(mode, "exit_running") == 0)
        return mode_exit_running();
    if (strcmp(mode, "churn") == 0)
        return mode_churn(argc > 2 ? atoi(argv[2]) : 200);
    if (strcmp(mode, "translate_race") == 0)
        return mode_translate_race();
    fprintf(stderr,
            "usage: raw_threads clone|clone3|vfork|fork_mt|exit_running|churn [ROUNDS]|"
            "translate_race\n");
    return 2;
}
