/* Eight pthreads doing known amounts of work: worker i calls step() exactly ITERS(i) =
 * 1000*(i+1)+i times and accumulates what it returns; main only creates and joins them
 * (it never calls step or worker itself), then prints each worker's result and a total.
 * For the tests of threads followed (tests/tests/threads.rs): every call of step runs on a
 * thread the program created, so its coverage and counts come from those threads only.
 * `step` and `worker` are global symbols (the tests find their offsets with nm). */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

#define THREADS 8
#define ITERS(i) (1000 * ((i) + 1) + (i))

/* noipa: no inlining, cloning or interprocedural shortcuts; every call is made. */
__attribute__((noinline, noipa)) uint64_t step(uint64_t k) {
    return (k * 2654435761u) ^ (k >> 3);
}

static uint64_t results[THREADS];

__attribute__((noinline, noipa)) void *worker(void *arg) {
    int i = (int)(intptr_t)arg;
    uint64_t acc = 0;
    for (int k = 0; k < ITERS(i); k++)
        acc += step((uint64_t)k + (uint64_t)i * 100000u);
    results[i] = acc;
    return NULL;
}

int main(void) {
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        if (pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    uint64_t total = 0;
    for (int i = 0; i < THREADS; i++) {
        printf("worker %d: %d steps, result %llu\n", i, ITERS(i),
               (unsigned long long)results[i]);
        total += results[i];
    }
    printf("total %llu\n", (unsigned long long)total);
    return 0;
}
