// Signals that come while the engine translates code: a timer fires every 20 us while main
// calls 400 functions it has not called before (each one a translation under the engine),
// and the handler itself calls a function it has not called before at each delivery (a
// translation under the handler's Vm). Prints how many functions main ran and whether
// the handler's sum is right; exit 0.
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

// Ten, then a hundred, uses of M with the digits appended to p: M(p0) ... M(p99).
#define D10(M, p) M(p##0) M(p##1) M(p##2) M(p##3) M(p##4) M(p##5) M(p##6) M(p##7) M(p##8) M(p##9)
#define D100(M, p)                                                                         \
    D10(M, p##0) D10(M, p##1) D10(M, p##2) D10(M, p##3) D10(M, p##4) D10(M, p##5)        \
    D10(M, p##6) D10(M, p##7) D10(M, p##8) D10(M, p##9)
#define D400(M) D100(M, 0) D100(M, 1) D100(M, 2) D100(M, 3)
#define N 400

// f000 ... f399 and g000 ... g399, each its own code (1##i: 1000 + i, in decimal).
#define F(i)                                                                               \
    __attribute__((noinline, noipa)) unsigned f##i(unsigned x) {                           \
        return x * (1##i + 3) + (x >> (1##i % 7));                                         \
    }
#define G(i)                                                                               \
    __attribute__((noinline, noipa)) unsigned g##i(unsigned x) {                           \
        return x ^ (1##i * 2654435761u);                                                   \
    }
D400(F)
D400(G)
#define F_ENTRY(i) f##i,
#define G_ENTRY(i) g##i,
static unsigned (*const fs[N])(unsigned) = {D400(F_ENTRY)};
static unsigned (*const gs[N])(unsigned) = {D400(G_ENTRY)};

static volatile sig_atomic_t deliveries;
static volatile unsigned handler_acc;

__attribute__((noinline, noipa)) void on_alrm(int sig) {
    (void)sig;
    if (deliveries < N) handler_acc += gs[deliveries](deliveries);
    deliveries++;
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alrm;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 20}, {0, 20}};
    setitimer(ITIMER_REAL, &it, NULL);
    unsigned acc = 0;
    for (int round = 0; round < 4; round++)
        for (int i = 0; i < N; i++) acc += fs[i](acc + i);
    // Enough deliveries for the handler to have translated at several of them.
    while (deliveries < 64) acc += fs[deliveries % N](acc);
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    sigset_t alrm;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    sigprocmask(SIG_BLOCK, &alrm, NULL);
    int n = deliveries < N ? deliveries : N;
    unsigned expect = 0;
    for (int k = 0; k < n; k++) expect += gs[k](k);
    printf("functions %d, handler sums match: %d\n", 4 * N, expect == handler_acc);
    return 0;
}
