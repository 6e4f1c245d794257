// longjmp out of a nested call back to a setjmp in main, several times; its exit status
// and output say how often it came back (a native setjmp under `qbdi run` records a return
// address the engine gave it).
#include <setjmp.h>
#include <stdio.h>

static jmp_buf env;

__attribute__((noinline)) static void thrower(int i) {
  if (i % 2 == 0) longjmp(env, 40 + i);
}

int main(void) {
  int caught = 0;
  for (volatile int i = 0; i < 6; i++) {
    int r = setjmp(env);
    if (r == 0) {
      thrower(i);
      printf("no jump %d\n", i);
    } else {
      printf("jumped back: %d\n", r);
      caught++;
    }
  }
  printf("caught=%d\n", caught);
  return caught;
}
