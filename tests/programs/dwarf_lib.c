/* A shared library built with debug information (-g): calltrace decodes the calls into it
 * from its DWARF (none of these functions is in calltrace's built-in table). */
#include <stddef.h>

struct triple {
    long a, b, c;
};

long dl_describe(const char *name, int count, double scale, unsigned long mask, char tag)
{
    long n = 0;
    while (name[n])
        n++;
    return n * count + (long)scale + (long)(mask & 0xf) + tag;
}

size_t dl_measure(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

double dl_scale(double x, float y)
{
    return x * y;
}

/* Passed in memory: no prototype, shown as unknown functions are. */
long dl_sum_triple(struct triple t)
{
    return t.a + t.b + t.c;
}

void dl_touch(void *p)
{
    *(volatile char *)p = 1;
}
