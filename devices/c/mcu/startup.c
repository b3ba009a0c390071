/* Start-up of the Cortex-M4F on QEMU's mps2-an386 (and any Cortex-M with this linker script):
 * copy .data from flash, enable the FPU (CPACR CP10/CP11 full access), then newlib's _start
 * (semihosting builds: it zeroes .bss, sets up stdio and calls main) or main directly. */
#include <stdint.h>

extern uint32_t __etext, __data_start__, __data_end__, __bss_start__, __bss_end__, __StackTop;
extern int main(void);
#ifdef TF_SEMIHOSTING
extern void _start(void);
#endif

void Reset_Handler(void) {
    uint32_t *src = &__etext, *dst = &__data_start__;
    while (dst < &__data_end__) *dst++ = *src++;
    *(volatile uint32_t *)0xE000ED88 |= 0xFu << 20; /* CPACR: enable CP10 and CP11 (the FPU) */
    __asm volatile("dsb\n isb" ::: "memory");
#ifdef TF_SEMIHOSTING
    _start();
#else
    for (dst = &__bss_start__; dst < &__bss_end__;) *dst++ = 0;
    main();
#endif
    for (;;) {
    }
}

#ifndef TF_SEMIHOSTING
/* errno of a single-threaded firmware: newlib's own __errno would link its 1 KB reentrancy
 * structure (impure_data) just so that expf/log can set errno; a firmware's C library (the
 * Arduino core) already has one, so the learner is measured without it. */
int *__errno(void) {
    static int errno_value;
    return &errno_value;
}
#endif

static void Default_Handler(void) {
    for (;;) {
    }
}

__attribute__((section(".vectors"), used)) void (*const tf_vectors[16])(void) = {
    (void (*)(void))(&__StackTop), Reset_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, 0, 0, 0, 0, Default_Handler, Default_Handler, 0, Default_Handler,
    Default_Handler};
