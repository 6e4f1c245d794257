// Signal handlers the engine must run (and cover): SIGUSR1 by raise and by kill from
// another thread, SIGALRM from setitimer (waited for in sigsuspend), SIGCHLD, a SIGSEGV
// probe of unmapped memory on a sigaltstack that leaves by siglongjmp (several times), a
// signal blocked then unblocked, and handlers installed with sysv_signal (once) and
// bsd_signal. Deterministic output; exit 0.
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t usr1_count, alrm_count, chld_count, blocked_seen;
static sigjmp_buf probe_env;

__attribute__((noinline, noipa)) void on_usr1(int sig) { usr1_count += sig == SIGUSR1; }
__attribute__((noinline, noipa)) void on_alrm(int sig) { alrm_count += sig == SIGALRM; }
__attribute__((noinline, noipa)) void on_chld(int sig, siginfo_t *info, void *uc) {
    (void)uc;
    chld_count += sig == SIGCHLD && info->si_signo == SIGCHLD;
}
__attribute__((noinline, noipa)) void on_segv(int sig) {
    (void)sig;
    siglongjmp(probe_env, 1);
}
__attribute__((noinline, noipa)) void on_usr2(int sig) { blocked_seen += sig == SIGUSR2; }
// Still in glibc, no longer declared by its headers.
extern __sighandler_t bsd_signal(int sig, __sighandler_t handler);
static volatile sig_atomic_t winch_count, urg_count;
__attribute__((noinline, noipa)) void on_winch(int sig) { winch_count += sig == SIGWINCH; }
__attribute__((noinline, noipa)) void on_urg(int sig) { urg_count += sig == SIGURG; }

static void *killer(void *arg) {
    (void)arg;
    kill(getpid(), SIGUSR1);
    return NULL;
}

/// Whether `p` is readable, by touching it under a SIGSEGV handler.
static int readable(volatile char *p) {
    if (sigsetjmp(probe_env, 1)) return 0;
    (void)*p;
    return 1;
}

int main(void) {
    signal(SIGUSR1, on_usr1);
    raise(SIGUSR1);
    pthread_t t;
    pthread_create(&t, NULL, killer, NULL);
    pthread_join(t, NULL);
    while (usr1_count < 2) usleep(1000);
    printf("usr1 %d\n", (int)usr1_count);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alrm;
    sigaction(SIGALRM, &sa, NULL);
    // SIGALRM stays blocked but while sigsuspend waits: `while (!alrm_count) pause();`
    // would wait for ever if the timer fired between the check and the call (it did, once,
    // on a loaded machine, the first call of `pause` being a lazy binding).
    sigset_t alrm, before;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    sigprocmask(SIG_BLOCK, &alrm, &before);
    struct itimerval it = {{0, 0}, {0, 20000}};
    setitimer(ITIMER_REAL, &it, NULL);
    sigset_t waiting = before;
    sigdelset(&waiting, SIGALRM);
    while (!alrm_count) sigsuspend(&waiting);
    sigprocmask(SIG_SETMASK, &before, NULL);
    printf("alrm %d\n", (int)alrm_count);

    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_chld;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);
    pid_t child = fork();
    if (child == 0) _exit(3);
    int status;
    waitpid(child, &status, 0);
    while (!chld_count) usleep(1000);
    printf("chld %d status %d\n", (int)chld_count, WEXITSTATUS(status));

    stack_t ss = {.ss_sp = malloc(1 << 16), .ss_size = 1 << 16, .ss_flags = 0};
    sigaltstack(&ss, NULL);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_segv;
    sa.sa_flags = SA_ONSTACK | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
    char *page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int seen = 0;
    for (int i = 0; i < 20; i++) seen += readable(page) * 10 + readable((char *)&seen);
    printf("probe %d\n", seen);

    struct sigaction old;
    sigaction(SIGUSR1, NULL, &old);
    printf("old usr1 handler is ours: %d\n", old.sa_handler == on_usr1);

    signal(SIGUSR2, on_usr2);
    sigset_t set, prev;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, &prev);
    raise(SIGUSR2);
    printf("blocked: %d\n", (int)blocked_seen);
    sigprocmask(SIG_SETMASK, &prev, NULL);
    printf("unblocked: %d\n", (int)blocked_seen);

    // System V: the handler runs once, then the default (ignore, for these two).
    sysv_signal(SIGWINCH, on_winch);
    raise(SIGWINCH);
    raise(SIGWINCH);
    bsd_signal(SIGURG, on_urg);
    raise(SIGURG);
    raise(SIGURG);
    printf("sysv %d bsd %d\n", (int)winch_count, (int)urg_count);
    return 0;
}
