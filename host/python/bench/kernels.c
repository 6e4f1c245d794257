/* Guest kernels of the callback benchmark: loops of one basic block per iteration. */
long bench_loop(long n) {
    long s = 0;
    for (long i = 0; i < n; i++)
        s += (i * i) ^ (s >> 3);
    return s;
}

long bench_branchy(long n) {
    long s = 0;
    for (long i = 0; i < n; i++) {
        if (i & 1)
            s += i;
        else
            s ^= i << 2;
    }
    return s;
}
