"""The C text every kernel form shares: constant arrays, float literals, the emitted layer,
the epilogue that stores an accumulator, the bias and requantization arrays, and the padded
copy of a convolution's input."""

from __future__ import annotations

from dataclasses import dataclass
from string import Template

import numpy as np


def carray(ctype: str, name: str, values) -> str:
    """A ``static const`` C array."""
    flat = np.asarray(values).reshape(-1).tolist()
    if ctype == "float":
        flat = [float_literal(v) for v in flat]
    rows = [", ".join(map(str, flat[i:i + 16])) for i in range(0, len(flat), 16)]
    return (f"static const {ctype} {name}[{max(len(flat), 1)}] = {{\n    "
            + ",\n    ".join(rows or ["0"]) + "\n};\n")


def float_literal(v: float) -> str:
    """A float32 value as a C literal that reads back to the same bits."""
    return f"{float(np.float32(v))!r}f"


@dataclass(frozen=True)
class Emitted:
    """A layer in C: its constant arrays, its function, the bytes of its constant data and of
    the scratch (a padded copy of the input) the function takes as a third argument."""

    data: str
    function: str
    const_bytes: int
    scratch_bytes: int


def epilogue(layer, name: str, index: str, o: str, acc: str = "acc") -> str:
    """Store accumulator ``acc`` of channel ``o`` into ``out[index]``: requantized, zero point,
    clamp (int); ReLU or not (float); int32 logits on the common scale (classifier)."""
    if layer.weight.dtype.kind == "f":
        if layer.relu and layer.cap is not None:
            cap = float_literal(layer.cap)
            return f"out[{index}] = {acc} < 0.0f ? 0.0f : {acc} > {cap} ? {cap} : {acc};"
        return f"out[{index}] = {f'{acc} > 0.0f ? {acc} : 0.0f' if layer.relu else acc};"
    if layer.is_logits:
        return f"out[{index}] = cnz_requantize({acc}, {name}_m[{o}], {name}_s[{o}]);"
    return (f"{{ const int32_t v = cnz_requantize({acc}, {name}_m[{o}], {name}_s[{o}]) + "
            f"{layer.out_zero}; out[{index}] = cnz_clamp(v, {layer.lo}, {layer.hi}); }}")


def out_type(layer) -> str:
    if layer.weight.dtype.kind == "f":
        return "float"
    return "int32_t" if layer.is_logits else "uint8_t"


def params(layer, name: str, bias: np.ndarray) -> tuple[str, int]:
    """Bias (and requantization) arrays: C text and bytes."""
    if layer.weight.dtype.kind == "f":
        return carray("float", f"{name}_b", bias), 4 * bias.size
    return (carray("int32_t", f"{name}_b", bias) + carray("int32_t", f"{name}_m", layer.multiplier)
            + carray("int32_t", f"{name}_s", layer.shift), 12 * bias.size)


PAD = Template(r"""    for (int i = 0; i < $padded; i++) pad[i] = $zero;
    for (int c = 0; c < $ci; c++)
        for (int y = 0; y < $h; y++)
            for (int x = 0; x < $w; x++)
                pad[(c * $hp + y + $ph) * $wp + x + $pw] = in[(c * $h + y) * $w + x];
""")


def pad_copy(layer, geo, wp: int, padded: int) -> str:
    """The C that fills ``pad`` (``padded`` bytes) with the input zero point and copies the
    integer input into it at the layer's padding, rows ``wp`` wide; "" without a copy."""
    if not padded:
        return ""
    ph, pw = layer.padding
    return PAD.substitute(padded=padded, zero=layer.in_zero, ci=geo.cin, h=geo.h, w=geo.w,
                          hp=geo.h + 2 * ph, wp=wp, ph=ph, pw=pw)
