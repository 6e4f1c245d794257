/* Guest code of tests/tests/examples.rs: a function calling libc (malloc, memcpy, strlen,
 * free), for the EXEC_TRANSFER_CALL / EXEC_TRANSFER_RETURN events. */
#include <stdlib.h>
#include <string.h>

/* Copies s[0..n) into a fresh buffer, upper-cases it, hashes it with its strlen, frees it.
 * Returns the hash, or -1 if malloc fails. */
long ev_libc_roundtrip(const char *s, size_t n) {
    char *buf = malloc(n + 1);
    if (!buf)
        return -1;
    memcpy(buf, s, n);
    buf[n] = 0;
    for (size_t i = 0; i < n; i++)
        if (buf[i] >= 'a' && buf[i] <= 'z')
            buf[i] = (char)(buf[i] - 32);
    long h = (long)strlen(buf);
    for (size_t i = 0; i < n; i++)
        h = h * 31 + buf[i];
    free(buf);
    return h;
}
