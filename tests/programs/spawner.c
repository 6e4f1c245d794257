/* Starts itself again (`spawner child FORM`) through one of libc's ways of running a
 * program, named by its first argument: execl, execlp, execle, execv, system, popen,
 * posix_spawn, posix_spawnp. The child prints "child FORM" and exits 0; the parent prints
 * what it got. For the `qbdi run --follow-exec` tests. */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    if (strcmp(argv[1], "child") == 0) {
        printf("child %s\n", argc > 2 ? argv[2] : "?");
        return 0;
    }
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return 3;
    self[n] = 0;
    const char *form = argv[1];
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "exec '%s' child %s", self, form);
    fflush(stdout);
    if (strcmp(form, "execl") == 0) {
        execl(self, self, "child", form, (char *)NULL);
    } else if (strcmp(form, "execlp") == 0) {
        execlp(self, self, "child", form, (char *)NULL);
    } else if (strcmp(form, "execle") == 0) {
        execle(self, self, "child", form, (char *)NULL, environ);
    } else if (strcmp(form, "execv") == 0) {
        char *args[] = {self, "child", (char *)form, NULL};
        execv(self, args);
    } else if (strcmp(form, "system") == 0) {
        int st = system(cmd);
        printf("system: %d\n", WEXITSTATUS(st));
        return 0;
    } else if (strcmp(form, "popen") == 0) {
        FILE *p = popen(cmd, "r");
        char line[256] = {0};
        if (!p || !fgets(line, sizeof line, p))
            return 4;
        printf("popen read: %s", line);
        printf("pclose: %d\n", WEXITSTATUS(pclose(p)));
        return 0;
    } else if (strcmp(form, "posix_spawn") == 0 || strcmp(form, "posix_spawnp") == 0) {
        char *args[] = {self, "child", (char *)form, NULL};
        pid_t pid;
        int r = form[11] == 'p' ? posix_spawnp(&pid, self, NULL, NULL, args, environ)
                                : posix_spawn(&pid, self, NULL, NULL, args, environ);
        if (r != 0)
            return 5;
        int st;
        waitpid(pid, &st, 0);
        printf("spawned: %d\n", WEXITSTATUS(st));
        return 0;
    }
    return 6; /* an exec failed, or an unknown form */
}
