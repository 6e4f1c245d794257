// Loads the library named by argv[1] with dlopen after start, calls its lib_work(1000,
// main_cb), unloads it, and does it again (the second load may land elsewhere, or at the
// same address). Deterministic output.
#include <dlfcn.h>
#include <stdio.h>

__attribute__((noinline, noipa)) long main_cb(long k) { return k & 7; }

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    for (int round = 0; round < 2; round++) {
        void *h = dlopen(argv[1], RTLD_NOW);
        if (!h) {
            printf("dlopen: %s\n", dlerror());
            return 1;
        }
        long (*work)(long, long (*)(long)) = (long (*)(long, long (*)(long)))dlsym(h, "lib_work");
        printf("round %d: %ld\n", round, work(1000, main_cb));
        dlclose(h);
    }
    return 0;
}
