// A program that blocks every signal (as daemons and worker threads do) and then has libc
// call back into its own code (qsort's comparator), on the main thread, on a thread whose
// mask pthread_sigmask set and on one that inherited it; it reads its masks back. Deterministic output; exit 0.
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

static void sort_and_print(const char *who) {
    int v[] = {5, 3, 4, 1, 2};
    qsort(v, 5, sizeof v[0], cmp);
    sigset_t now;
    sigprocmask(SIG_BLOCK, NULL, &now);
    printf("%s: %d%d%d%d%d, SIGSEGV blocked %d, SIGINT blocked %d\n", who, v[0], v[1], v[2],
           v[3], v[4], sigismember(&now, SIGSEGV), sigismember(&now, SIGINT));
}

static void *inheritor(void *arg) {
    (void)arg;
    sort_and_print("thread, mask inherited");
    return NULL;
}

static void *worker(void *arg) {
    (void)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, NULL);
    sort_and_print("thread, all blocked");
    return NULL;
}

int main(void) {
    sort_and_print("main, none blocked");
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    sort_and_print("main, all blocked");
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    pthread_join(t, NULL);
    pthread_create(&t, NULL, inheritor, NULL);
    pthread_join(t, NULL);
    sigset_t segv;
    sigemptyset(&segv);
    sigaddset(&segv, SIGSEGV);
    sigprocmask(SIG_UNBLOCK, &segv, NULL);
    sort_and_print("main, SIGSEGV unblocked");
    sigprocmask(SIG_SETMASK, &old, NULL);
    sort_and_print("main, mask restored");
    return 0;
}
