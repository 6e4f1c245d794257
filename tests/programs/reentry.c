// Instrumented code called from native code: qsort and bsearch comparators (nested: a
// comparator that sorts), a comparator that leaves qsort with longjmp, a comparator whose page the
// program mprotects, comparators on four
// threads, errno set by a comparator, an atexit handler, a destructor, and (with argv[1])
// libc's strcmp as a comparator (a PLT stub in a non-PIE build), a callback of a dlopen'ed
// library taking and returning a double. Prints what each one
// saw; the counts let a test compare coverage with the calls made.
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static long value_calls;
static long row_calls;

__attribute__((noinline, noipa)) static int by_value(const void *a, const void *b) {
    __atomic_fetch_add(&value_calls, 1, __ATOMIC_RELAXED);
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

// Compares rows of 5 by their median: sorts copies with qsort (a re-entry inside one).
__attribute__((noinline, noipa)) static int by_median(const void *a, const void *b) {
    row_calls++;
    int ra[5], rb[5];
    memcpy(ra, a, sizeof ra);
    memcpy(rb, b, sizeof rb);
    qsort(ra, 5, sizeof(int), by_value);
    qsort(rb, 5, sizeof(int), by_value);
    return (ra[2] > rb[2]) - (ra[2] < rb[2]);
}

__attribute__((noinline, noipa)) static int setting_errno(const void *a, const void *b) {
    errno = EDOM;
    return by_value(a, b);
}

static jmp_buf escape;
static int escape_after;
__attribute__((noinline, noipa)) static int escaping(const void *a, const void *b) {
    if (--escape_after == 0) longjmp(escape, 1);
    return by_value(a, b);
}

__attribute__((noinline, noipa)) static double twice_plus(double x) { return x * 2 + 0.25; }

__attribute__((noinline, noipa)) static void at_exit_handler(void) {
    printf("atexit: %ld value comparisons, %ld row comparisons\n", value_calls, row_calls);
}

__attribute__((destructor, noinline, noipa)) static void destructor(void) {
    printf("destructor\n");
}

static void fill(int *v, int n, int seed) {
    for (int i = 0; i < n; i++) v[i] = (i * 7919 + seed * 104729) % 1009;
}

static int sorted(const int *v, int n) {
    for (int i = 1; i < n; i++)
        if (v[i - 1] > v[i]) return 0;
    return 1;
}

static void *worker(void *arg) {
    int v[500];
    fill(v, 500, (int)(long)arg);
    qsort(v, 500, sizeof(int), by_value);
    return (void *)(long)sorted(v, 500);
}

int main(int argc, char **argv) {
    atexit(at_exit_handler);
    int v[1000];
    fill(v, 1000, 1);
    qsort(v, 1000, sizeof(int), by_value);
    long sum = 0;
    for (int i = 0; i < 1000; i++) sum += (long)v[i] * i;
    printf("qsort: sorted %d, weighted sum %ld\n", sorted(v, 1000), sum);

    int key = v[617];
    int *found = bsearch(&key, v, 1000, sizeof(int), by_value);
    printf("bsearch: %d found %d\n", key, found ? *found : -1);

    int rows[40][5];
    for (int r = 0; r < 40; r++) fill(rows[r], 5, r + 3);
    qsort(rows, 40, sizeof rows[0], by_median);
    int ok = 1;
    for (int r = 1; r < 40; r++) ok &= by_median(rows[r - 1], rows[r]) <= 0;
    printf("nested: rows ordered %d\n", ok);

    errno = 0;
    fill(v, 100, 2);
    qsort(v, 100, sizeof(int), setting_errno);
    printf("errno after a comparator set it: %s\n", errno == EDOM ? "EDOM" : "other");

    escape_after = 50;
    fill(v, 300, 3);
    if (setjmp(escape) == 0) {
        qsort(v, 300, sizeof(int), escaping);
        printf("escape: not taken\n");
    } else {
        printf("escape: left qsort with longjmp\n");
    }
    // The program's own mprotect of its code with execute permission.
    long page = (long)&by_value & ~4095L;
    printf("mprotect: %d\n", mprotect((void *)page, 4096, PROT_READ | PROT_EXEC));
    fill(v, 300, 4);
    qsort(v, 300, sizeof(int), by_value);
    printf("after the escape: sorted %d\n", sorted(v, 300));

    // libc's own strcmp as a comparator: in a non-PIE executable its address is the
    // executable's PLT stub, which qsort calls natively.
    char names[6][8] = {"pear", "fig", "apple", "kiwi", "date", "lime"};
    qsort(names, 6, sizeof names[0], (int (*)(const void *, const void *))strcmp);
    printf("strcmp as comparator: %s %s %s\n", names[0], names[1], names[5]);

    pthread_t t[4];
    for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        printf("thread %d: sorted %ld\n", i, (long)r);
    }

    if (argc > 1) {
        void *h = dlopen(argv[1], RTLD_NOW);
        if (!h) {
            printf("dlopen: %s\n", dlerror());
            return 1;
        }
        double (*apply)(double, double (*)(double)) =
            (double (*)(double, double (*)(double)))dlsym(h, "lib_apply");
        printf("library callback: %.3f\n", apply(1.5, twice_plus));
        dlclose(h);
    }
    fflush(stdout);
    return 0;
}
