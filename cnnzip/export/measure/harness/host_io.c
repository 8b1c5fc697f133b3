/* cnnzip: cnz_io.h on the host: stdio and CLOCK_MONOTONIC (nanoseconds, modulo 2^32). */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <time.h>
#include "cnz_io.h"

static FILE *files[8];

int cnz_open(const char *path, int write)
{
    for (int i = 0; i < 8; i++)
        if (!files[i]) {
            files[i] = fopen(path, write ? "wb" : "rb");
            return files[i] ? i : -1;
        }
    return -1;
}
long cnz_read(int f, void *buf, long n) { return (long)fread(buf, 1, (size_t)n, files[f]); }
long cnz_write(int f, const void *buf, long n) { return (long)fwrite(buf, 1, (size_t)n, files[f]); }
void cnz_close(int f) { fclose(files[f]); files[f] = NULL; }
void cnz_timer_start(void) {}
uint32_t cnz_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint32_t)((uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec);
}
uint32_t cnz_elapsed(uint32_t since) { return cnz_now() - since; }
