/* One SGD step of the C learner on a Cortex-M4F under QEMU (mps2-an386, semihosting).
 *
 * 1. Run one step from the golden initial head (tf_bench_data.h, exported by numpy) and compare the
 *    weights with numpy's after the same step: prints max_abs.
 * 2. Count instructions: with `qemu-system-arm -icount shift=0` every instruction advances the
 *    virtual clock by exactly 1 ns, and the CMSDK APB timer 0 (0x40000000) counts down at the
 *    25 MHz system clock, so one tick = 40 instructions. TF_BENCH_STEPS steps are timed, and a
 *    calibration loop of a known instruction count checks the ratio. Prints one line per figure.
 * Exit code 0 when the step matches numpy within tf_bench_tol.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "tf_bench_data.h"
#include "tf_learner.h"

#define TIMER0 ((volatile uint32_t *)0x40000000u)
enum { CTRL = 0, VALUE = 1, RELOAD = 2 };

static tf_head head;

static void timer_start(void) {
    TIMER0[CTRL] = 0;
    TIMER0[RELOAD] = 0xFFFFFFFFu;
    TIMER0[VALUE] = 0xFFFFFFFFu;
    TIMER0[CTRL] = 1;
}

static uint32_t timer_ticks(void) { return 0xFFFFFFFFu - TIMER0[VALUE]; }

static void calibration_loop(uint32_t n) { /* exactly 2 instructions per iteration (subs, bne) */
    __asm volatile("1: subs %0, %0, #1\n bne 1b" : "+r"(n) : : "cc");
}

int main(void) {
    const uint16_t sizes[] = TF_HEAD_SIZES;
    if (tf_head_init(&head, sizes, TF_HEAD_N_SIZES, TF_HEAD_KIND, TF_HEAD_ACTIVATION) != TF_HEAD_OK) return 2;
    memcpy(head.params, tf_bench_init, sizeof(float) * head.n_params);
    double loss = tf_head_sgd_step(&head, tf_bench_x, tf_bench_y, tf_bench_label, tf_bench_lr, 0xFFFFFFFFu,
                                   tf_bench_clip);
    double worst = 0.0;
    for (uint32_t i = 0; i < head.n_params; i++) {
        double d = fabs((double)head.params[i] - (double)tf_bench_expect[i]);
        if (d > worst) worst = d;
    }
    printf("max_abs %.9g\n", worst);
    printf("loss %.9g expect %.9g\n", loss, tf_bench_expect_loss);
    timer_start();
    uint32_t t0 = timer_ticks();
    for (int k = 0; k < TF_BENCH_STEPS; k++)
        tf_head_sgd_step(&head, tf_bench_x, tf_bench_y, tf_bench_label, tf_bench_lr, 0xFFFFFFFFu, tf_bench_clip);
    uint32_t ticks = timer_ticks() - t0;
    timer_start();
    t0 = timer_ticks();
    calibration_loop(TF_BENCH_CALIBRATION);
    uint32_t calib = timer_ticks() - t0;
    printf("steps %d ticks %lu\n", TF_BENCH_STEPS, (unsigned long)ticks);
    printf("calibration_instructions %lu ticks %lu\n", (unsigned long)(2u * TF_BENCH_CALIBRATION),
           (unsigned long)calib);
    printf("params %lu\n", (unsigned long)head.n_params);
    return worst <= tf_bench_tol ? 0 : 1;
}
