/* A program that forks: the parent computes in parent_only() before the fork, the child in
 * child_only() and exits through exit() (so its atexit handlers, and qbdi's fini, run in
 * the child); the parent waits and reports the child's status. For the `qbdi run` tests of
 * plugins in fork children. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((noinline)) int parent_only(int n) {
    int s = 0;
    for (int i = 0; i < n; i++)
        s += i * 3;
    return s;
}

__attribute__((noinline)) int child_only(int n) {
    int s = 1;
    for (int i = 0; i < n; i++)
        s = s * 7 + i;
    return s;
}

int main(void) {
    printf("parent before fork %d\n", parent_only(10));
    fflush(stdout);
    pid_t p = fork();
    if (p < 0)
        return 1;
    if (p == 0) {
        printf("child %d\n", child_only(20));
        exit(7);
    }
    int st;
    if (waitpid(p, &st, 0) != p)
        return 2;
    printf("parent after fork: child exited %d\n", WEXITSTATUS(st));
    return 0;
}
