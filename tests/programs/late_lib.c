// A library the late_main program loads with dlopen after start: lib_work calls lib_step n
// times and the caller's callback n times.
__attribute__((noinline, noipa)) long lib_step(long k) { return k * 9 + 4; }

long lib_work(long n, long (*cb)(long)) {
    long sum = 0;
    for (long k = 0; k < n; k++) sum += lib_step(k) + cb(k);
    return sum;
}

// Calls the caller's callback with a double, twice, and returns the sum of its results.
double lib_apply(double x, double (*f)(double)) { return f(x) + f(x + 1); }
