#include <string.h>
#include <stdlib.h>
long smoke_fib(long n) { return n < 2 ? n : smoke_fib(n - 1) + smoke_fib(n - 2); }
long smoke_loop(long n) { long s = 0; for (long i = 0; i < n; i++) s += i * i ^ (s >> 3); return s; }
long smoke_libc(long n) { char buf[64]; long s = 0; for (long i = 0; i < n; i++) { memset(buf, 'a' + (i % 26), 40); buf[i % 40] = 0; s += strlen(buf); } return s; }
static int cmp(const void* a, const void* b) { return *(const int*)a - *(const int*)b; }
long smoke_qsort(long n) { int* v = malloc(n * sizeof(int)); for (long i = 0; i < n; i++) v[i] = (i * 7919) % 1000; qsort(v, n, sizeof(int), cmp); long s = 0; for (long i = 0; i < n; i++) s = s * 31 + v[i]; free(v); return s; }
void smoke_fill(long* out, long n) { for (long i = 0; i < n; i++) out[i] = i * 3 + 1; }
long smoke_sum(const long* in, long n) { long s = 0; for (long i = 0; i < n; i++) s += in[i]; return s; }
