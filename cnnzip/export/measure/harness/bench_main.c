/* cnnzip: the benchmark harness. Runs cnz_infer on every input in in.bin (cnz_input_t,
 * CNZ_INPUT_SIZE each), writes the logits to out.bin, each inference's time to time.bin and the
 * time of each step summed over all inputs to steps.bin (uint32 each; host: nanoseconds,
 * Cortex-M4: SysTick ticks). Built with -DCNZ_PROFILE(s)=cnz_profile(s), steps.bin holds the
 * time of each step (the hooks' own instructions included); built without it, zeros. */
#include "cnz_io.h"
#include "model.h"

void cnz_profile(int step);

static uint32_t step_start, step_ticks[CNZ_STEPS];
static int step_now = -1;

void cnz_profile(int step)
{
    if (step_now >= 0) step_ticks[step_now] += cnz_elapsed(step_start);
    step_now = step < CNZ_STEPS ? step : -1;
    step_start = cnz_now();
}

int main(void)
{
    static cnz_input_t input[CNZ_INPUT_SIZE];
    cnz_logit_t logits[CNZ_CLASSES];
    const int in = cnz_open("in.bin", 0), out = cnz_open("out.bin", 1),
              times = cnz_open("time.bin", 1), steps = cnz_open("steps.bin", 1);
    if (in < 0 || out < 0 || times < 0 || steps < 0) return 2;
    cnz_timer_start();
    while (cnz_read(in, input, sizeof input) == (long)sizeof input) {
        const uint32_t t0 = cnz_now();
        cnz_infer(input, logits);
        const uint32_t t = cnz_elapsed(t0);
        cnz_write(out, logits, sizeof logits);
        cnz_write(times, &t, sizeof t);
    }
    cnz_write(steps, step_ticks, sizeof(uint32_t) * CNZ_STEPS);
    cnz_close(in); cnz_close(out); cnz_close(times); cnz_close(steps);
    return 0;
}
