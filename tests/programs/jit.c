// A small JIT: writes functions into an RWX mapping at a fixed address, runs them,
// rewrites them in place and runs them again; then the same with W^X (mprotect between
// writing and running), and with code read from a file by read(2). Last, self-modifying
// code: the program makes its own text writable and patches a function's immediate.
// Prints every result. With argv[1], the file to write and read the code through.
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define AREA ((void *)0x10000000)

typedef long (*fn)(long);

// In its own page of the program's text: mov eax, imm32; ret.
__asm__(".text\n"
        ".p2align 12\n"
        ".globl patched\n"
        ".type patched, @function\n"
        "patched:\n"
        "mov $1, %eax\n"
        "ret\n"
        ".size patched, .-patched\n"
        ".p2align 12\n");
int patched(void);

// mov rax, imm32 (sign-extended); add rax, rdi; ret
static void emit_add(unsigned char *p, int32_t imm) {
    unsigned char code[] = {0x48, 0xc7, 0xc0, 0, 0, 0, 0, 0x48, 0x01, 0xf8, 0xc3};
    memcpy(code + 3, &imm, 4);
    memcpy(p, code, sizeof code);
}

// imul rax, rdi, imm32; ret
static void emit_mul(unsigned char *p, int32_t imm) {
    unsigned char code[] = {0x48, 0x69, 0xc7, 0, 0, 0, 0, 0xc3};
    memcpy(code + 3, &imm, 4);
    memcpy(p, code, sizeof code);
}

// A loop: rax = 0; do { rax += rdi; } while (--ecx); ret  (ecx = n)
static void emit_loop(unsigned char *p, int32_t n) {
    unsigned char code[] = {0x31, 0xc0,                   // xor eax, eax
                            0xb9, 0, 0, 0, 0,             // mov ecx, n
                            0x48, 0x01, 0xf8,             // add rax, rdi
                            0xff, 0xc9,                   // dec ecx
                            0x75, 0xf9,                   // jnz -7
                            0xc3};
    memcpy(code + 3, &n, 4);
    memcpy(p, code, sizeof code);
}

int main(int argc, char **argv) {
    unsigned char *area = mmap(AREA, 8192, PROT_READ | PROT_WRITE | PROT_EXEC,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (area != AREA) {
        printf("mmap failed\n");
        return 1;
    }
    fn f = (fn)area;
    long sum = 0;
    for (int round = 0; round < 5; round++) {
        emit_add(area, 100 + round);
        sum += f(round);
        sum += f(1000);
    }
    printf("rewritten add: %ld\n", sum);
    emit_mul(area, 3);
    printf("another function at the same address: %ld\n", f(14));
    emit_loop(area + 64, 10);
    printf("a loop: %ld\n", ((fn)(area + 64))(7));
    emit_loop(area + 64, 20);
    printf("the loop rewritten: %ld\n", ((fn)(area + 64))(7));

    // W^X: write with the page read-write, run it read-execute.
    unsigned char *wx = area + 4096;
    for (int round = 0; round < 3; round++) {
        mprotect(wx, 4096, PROT_READ | PROT_WRITE);
        emit_add(wx, round * 11);
        mprotect(wx, 4096, PROT_READ | PROT_EXEC);
        printf("W^X round %d: %ld\n", round, ((fn)wx)(5));
    }

    // Code that read(2) writes (the kernel writes the page).
    if (argc > 1) {
        unsigned char code[16];
        for (int round = 0; round < 2; round++) {
            emit_mul(code, 5 + round);
            int fd = open(argv[1], O_CREAT | O_TRUNC | O_RDWR, 0600);
            if (fd < 0 || write(fd, code, sizeof code) != sizeof code) return 1;
            lseek(fd, 0, SEEK_SET);
            mprotect(wx, 4096, PROT_READ | PROT_WRITE | PROT_EXEC);
            long n = read(fd, wx, sizeof code);
            close(fd);
            printf("read %ld bytes of code: %ld\n", n, ((fn)wx)(9));
        }
    }
    // Self-modifying code in the program's own text.
    unsigned char *own = (unsigned char *)((uintptr_t)patched & ~(uintptr_t)4095);
    int total = patched();
    mprotect(own, 4096, PROT_READ | PROT_WRITE | PROT_EXEC);
    for (int32_t v = 2; v <= 4; v++) {
        memcpy((unsigned char *)patched + 1, &v, 4);
        total = total * 10 + patched();
    }
    mprotect(own, 4096, PROT_READ | PROT_EXEC);
    printf("patched own code: %d\n", total);
    return 0;
}
