/* cnnzip's integer arithmetic in C99, bit for bit the same as cnnzip/ops/intmath.py (the numpy
 * reference): requantization by a Q31 multiplier and a shift, rounded as CMSIS-NN's default
 * arm_nn_requantize. Assumes two's-complement int32 and arithmetic right shifts of negative
 * values (gcc, clang and arm-none-eabi-gcc all do both). */
#ifndef CNZ_MATH_H
#define CNZ_MATH_H

#include <stdint.h>

/* (a*b + 2^30) >> 31 in 64 bits, kept to 32: the rounded high word of the doubled product. */
static inline int32_t cnz_doubling_high_mult(int32_t a, int32_t b)
{
    const int64_t product = (int64_t)a * (int64_t)b + ((int64_t)1 << 30);
    return (int32_t)(product >> 31);
}

/* x / 2^exponent (exponent 0..31), rounded to nearest, halves away from zero. */
static inline int32_t cnz_divide_by_pot(int32_t x, int32_t exponent)
{
    const int32_t mask = (int32_t)((((uint32_t)1) << exponent) - 1u);
    const int32_t remainder = x & mask;
    /* CMSIS-NN's threshold, one more below zero; "remainder > threshold" as the sign bit of
     * their difference (both in [-2^31 + 1, 2^30]: no overflow), so no branch */
    const int32_t threshold = (mask >> 1) + (int32_t)((uint32_t)x >> 31);
    return (x >> exponent) + (int32_t)((uint32_t)(threshold - remainder) >> 31);
}

/* acc * multiplier * 2^(shift - 31), multiplier in [2^30, 2^31), shift in [-31, 30]. */
static inline int32_t cnz_requantize(int32_t acc, int32_t multiplier, int32_t shift)
{
    const int32_t left = shift > 0 ? shift : 0;
    const int32_t right = shift > 0 ? 0 : -shift;
    return cnz_divide_by_pot(cnz_doubling_high_mult(acc * (1 << left), multiplier), right);
}

static inline int32_t cnz_max(int32_t a, int32_t b)
{
    return a > b ? a : b;
}

#if defined(__ARM_FEATURE_SAT) && defined(__GNUC__)
#include <arm_acle.h>
#endif

/* v clamped to [lo, hi] (0 <= lo <= hi <= 255, both constants) as a byte: on a core with the
 * saturating instructions one USAT where hi is 255 (after a maximum where lo is above 0). */
static inline uint8_t cnz_clamp(int32_t v, int32_t lo, int32_t hi)
{
#if defined(__ARM_FEATURE_SAT) && defined(__GNUC__)
    if (hi == 255) return (uint8_t)__usat(lo > 0 && v < lo ? lo : v, 8);
#endif
    return (uint8_t)(v < lo ? lo : v > hi ? hi : v);
}

/* A point the compiler does not move memory accesses across: the simd kernels put one after
 * each lane group, so gcc schedules one group's loads at a time instead of hoisting a whole
 * row's ahead of the multiplies (which spills registers on a Cortex-M4). */
#if defined(__GNUC__)
#define CNZ_BARRIER() __asm__ __volatile__("" ::: "memory")
#else
#define CNZ_BARRIER() ((void)0)
#endif

/* Four output columns at once (the ``simd`` kernels): two adjacent-column pairs of 16-bit
 * lanes. A word holds four adjacent input bytes x0..x3; the even lanes take x0 and x2, the odd
 * ones x1 and x3; sums of at most 128 bytes per lane never carry into the next lane, so the
 * portable code (a 32-bit add) and the Cortex-M4's UXTAB16 give the same bits, and the lane's
 * value times a weight (SMLABB / SMLATB) is exact. */
static inline uint32_t cnz_load4(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#if defined(__ARM_FEATURE_SIMD32) && defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
#include <arm_acle.h>
static inline uint32_t cnz_odd(uint32_t w)
{
    uint32_t r;
    __asm__("uxtb16 %0, %1, ror #8" : "=r"(r) : "r"(w));
    return r;
}
static inline uint32_t cnz_add_odd(uint32_t s, uint32_t w)
{
    uint32_t r;
    __asm__("uxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(s), "r"(w));
    return r;
}
#define cnz_even(w) __uxtb16(w)
#define cnz_add_even(s, w) __uxtab16((s), (w))
#define cnz_mla_lo(acc, s, v) __smlabb((int32_t)(s), (v), (acc))
#define cnz_mla_hi(acc, s, v) __smlatb((int32_t)(s), (v), (acc))
#else
#define cnz_even(w) ((w) & 0x00FF00FFu)
#define cnz_odd(w) (((w) >> 8) & 0x00FF00FFu)
#define cnz_add_even(s, w) ((s) + cnz_even(w))
#define cnz_add_odd(s, w) ((s) + cnz_odd(w))
/* the lane read as a signed 16-bit value, as SMLABB / SMLATB read it */
#define cnz_lane_lo(s) (((int32_t)((s) & 0xFFFFu) ^ 0x8000) - 0x8000)
#define cnz_lane_hi(s) (((int32_t)((s) >> 16) ^ 0x8000) - 0x8000)
#define cnz_mla_lo(acc, s, v) ((acc) + (v) * cnz_lane_lo(s))
#define cnz_mla_hi(acc, s, v) ((acc) + (v) * cnz_lane_hi(s))
#endif

#endif
