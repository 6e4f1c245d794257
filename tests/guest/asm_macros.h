// Assembler macros shared by the hand-written guest files (`#include "asm_macros.h"` at the
// top of a .S file, which goes through the C preprocessor: comments use //).
//
// FUNC name   starts a global function, 16-byte aligned;
// ENDF name   ends it: `name_end` is an exported label just past its last byte (tests
//             instrument [name, name_end)), and the symbol gets its size;
// LABEL name  exports a label on the next instruction (tests attach callbacks there).

    .intel_syntax noprefix

.macro FUNC name
    .text
    .globl \name
    .type \name,@function
    .p2align 4
\name:
.endm

.macro ENDF name
    .globl \name\()_end
\name\()_end:
    .size \name, . - \name
.endm

.macro LABEL name
    .globl \name
\name:
.endm
