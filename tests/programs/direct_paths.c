/* The guest of tests/tests/direct_plugins.rs: a marker instruction (`xchg r12, r12` with
 * r12 = 0x5ca1ab1e) whose
 * plugin callback changes rax, and `ud2`s the plugin skips. Prints the sum of what came out
 * of the markers and how many ud2 it survived. Natively (no plugin) the sum is that of
 * 0..N-1 and the first ud2 kills it. */
#include <stdio.h>

#define N 1000

static long __attribute__((noinline)) marker(long v) {
    long out;
    __asm__ volatile("mov %1, %%rax\n\tmov $0x5ca1ab1e, %%r12\n\txchg %%r12, %%r12\n\t"
                     "mov %%rax, %0"
                     : "=r"(out)
                     : "r"(v)
                     : "rax", "r12");
    return out;
}

static int __attribute__((noinline)) trap(int i) {
    __asm__ volatile("ud2");
    return i + 1;
}

int main(int argc, char **argv) {
    long sum = 0;
    for (long i = 0; i < N; i++) sum += marker(i);
    printf("sum=%ld\n", sum);
    fflush(stdout);
    if (argc > 1) {
        int survived = 0;
        for (int i = 0; i < 10; i++) survived = trap(survived);
        printf("survived=%d\n", survived);
    }
    return 0;
}
