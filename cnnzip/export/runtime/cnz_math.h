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
    const int32_t result = x >> exponent;
    const int32_t threshold = (mask >> 1) + (result < 0 ? 1 : 0);
    return result + (remainder > threshold ? 1 : 0);
}

/* acc * multiplier * 2^(shift - 31), multiplier in [2^30, 2^31), shift in [-31, 30]. */
static inline int32_t cnz_requantize(int32_t acc, int32_t multiplier, int32_t shift)
{
    const int32_t left = shift > 0 ? shift : 0;
    const int32_t right = shift > 0 ? 0 : -shift;
    return cnz_divide_by_pot(cnz_doubling_high_mult(acc * (1 << left), multiplier), right);
}

#endif
