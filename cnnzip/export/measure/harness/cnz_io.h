/* cnnzip: the benchmark harness's input, output and clock, on the host (stdio, a monotonic
 * clock in nanoseconds) or on the emulated Cortex-M4 (semihosting, SysTick ticks). */
#ifndef CNZ_IO_H
#define CNZ_IO_H
#include <stdint.h>
int cnz_open(const char *path, int write);
long cnz_read(int f, void *buf, long n);
long cnz_write(int f, const void *buf, long n);
void cnz_close(int f);
void cnz_timer_start(void);
uint32_t cnz_now(void);
uint32_t cnz_elapsed(uint32_t since);
#endif
