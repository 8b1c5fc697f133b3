/* cnnzip: a minimal Cortex-M4 start-up for the emulated MPS2 board (qemu-system-arm -M
 * mps2-an386): a vector table, zeroed .bss, the FPU enabled, main(), then exit through
 * semihosting; semihosting calls for the harness's input and output. */
#include <stdint.h>
#include "cnz_io.h"

extern int main(void);
extern uint32_t __bss_start__, __bss_end__, __StackTop;

int cnz_semihost(int op, void *arg)
{
    register int r0 __asm("r0") = op;
    register void *r1 __asm("r1") = arg;
    __asm volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void cnz_exit(int code)
{
    uint32_t args[2] = {0x20026u, (uint32_t)code};  /* ADP_Stopped_ApplicationExit */
    cnz_semihost(0x20, args);                        /* SYS_EXIT_EXTENDED */
    for (;;) {}
}

void Reset_Handler(void)
{
    for (uint32_t *p = &__bss_start__; p < &__bss_end__; p++) *p = 0;
    *(volatile uint32_t *)0xE000ED88 |= 0xFu << 20;  /* CPACR: CP10 and CP11, full access */
    __asm volatile("dsb\n isb");
    cnz_exit(main());
}

static void Fault_Handler(void) { cnz_exit(70); }

__attribute__((section(".isr_vector"), used))
static void (*const cnz_vectors[16])(void) = {
    (void (*)(void))&__StackTop, Reset_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, 0, 0, 0, 0, Fault_Handler, Fault_Handler, 0, Fault_Handler,
    Fault_Handler};

int cnz_open(const char *path, int write)
{
    uint32_t n = 0;
    while (path[n]) n++;
    uint32_t args[3] = {(uint32_t)path, write ? 6u : 1u, n};  /* "wb" : "rb" */
    return cnz_semihost(0x01, args);                           /* SYS_OPEN */
}

long cnz_read(int f, void *buf, long n)
{
    uint32_t args[3] = {(uint32_t)f, (uint32_t)buf, (uint32_t)n};
    return n - cnz_semihost(0x06, args);                       /* SYS_READ: bytes not read */
}

long cnz_write(int f, const void *buf, long n)
{
    uint32_t args[3] = {(uint32_t)f, (uint32_t)buf, (uint32_t)n};
    return n - cnz_semihost(0x05, args);                       /* SYS_WRITE: bytes not written */
}

void cnz_close(int f)
{
    uint32_t args[1] = {(uint32_t)f};
    cnz_semihost(0x02, args);
}

/* SysTick at the core clock, free running over 24 bits: a tick count (differences modulo
 * 2^24). Under qemu -icount shift=0 one instruction takes 1 ns of virtual time and the MPS2
 * core clock is 25 MHz, so one tick is 40 executed instructions. */
#define SYST ((volatile uint32_t *)0xE000E010)
void cnz_timer_start(void) { SYST[1] = 0xFFFFFFu; SYST[2] = 0; SYST[0] = 5; }
uint32_t cnz_now(void) { return (0xFFFFFFu - SYST[2]) & 0xFFFFFFu; }
uint32_t cnz_elapsed(uint32_t since) { return (cnz_now() - since) & 0xFFFFFFu; }
