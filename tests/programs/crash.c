// Dies of SIGSEGV in crash_here (no handler): the status, the drcov file and qbdi's
// message naming the guest function are what the tests check.
#include <stdio.h>
__attribute__((noinline, noipa)) int crash_here(int *p) { return *p + 1; }
int main(void) { printf("before\n"); fflush(stdout); return crash_here((int *)16); }
