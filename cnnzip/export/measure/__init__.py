"""Measuring deployed models: toolchains (gcc, arm-none-eabi-gcc) and the emulated Cortex-M4
(:mod:`.toolchain`, with the timing harness in ``harness/``), and benchmarks of cnnzip's C
against the baseline and peers (:mod:`.bench`)."""
