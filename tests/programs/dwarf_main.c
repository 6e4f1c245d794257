/* Calls into libdwarf_lib.so (built with -g) with known arguments, for calltrace's DWARF
 * prototypes. */
#include <stdio.h>

struct triple {
    long a, b, c;
};

long dl_describe(const char *name, int count, double scale, unsigned long mask, char tag);
unsigned long dl_measure(const char *s);
double dl_scale(double x, float y);
long dl_sum_triple(struct triple t);
void dl_touch(void *p);

int main(void)
{
    char buf[4];
    struct triple t = {1, 2, 3};
    long r = dl_describe("widget", -3, 2.5, 255, 'x');
    unsigned long m = dl_measure("a string that is longer than thirty-two bytes");
    double s = dl_scale(1.5, 4.0f);
    long sum = dl_sum_triple(t);
    dl_touch(buf);
    printf("%ld %lu %g %ld %d\n", r, m, s, sum, buf[0]);
    return 0;
}
