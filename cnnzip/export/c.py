"""C99 for an integer model (:class:`cnnzip.export.reference.IntModel`): weights as ``const``
arrays, two static activation buffers, no ``malloc``, no floating point; one entry point,
``void cnz_infer(const uint8_t *input, int32_t *logits)``, computing bit for bit what the numpy
reference computes (the requantization is ``cnnzip/export/runtime/cnz_math.h``).

First slice of issue 19: dense kernels for chains of convolutions, linear layers, max poolings
and flattens; sparse and shared kernels, the memory planner and the CLI come next.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from cnnzip.errors import CnnzipError
from cnnzip.export.reference import Flatten, IntLayer, IntModel, Logits, MaxPool, ReferenceError

RUNTIME = Path(__file__).parent / "runtime" / "cnz_math.h"
CFLAGS = ("-O2", "-std=c99", "-Wall", "-Werror")

_KERNELS = r"""
@@cnz_conv
static void cnz_conv(const uint8_t *in, int ci, int h, int w, int in_zero, const int8_t *wt,
                     const int32_t *bias, const int32_t *mult, const int32_t *shift, int co,
                     int kh, int kw, int sh, int sw, int ph, int pw, int groups, int out_zero,
                     int lo, int hi, uint8_t *out, int oh, int ow)
{
    const int cig = ci / groups, cog = co / groups;
    for (int o = 0; o < co; o++) {
        const int g = o / cog;
        for (int y = 0; y < oh; y++) {
            for (int x = 0; x < ow; x++) {
                int32_t acc = bias[o];
                for (int c = 0; c < cig; c++) {
                    const uint8_t *plane = in + (g * cig + c) * h * w;
                    const int8_t *k = wt + (o * cig + c) * kh * kw;
                    for (int ky = 0; ky < kh; ky++) {
                        const int iy = y * sh - ph + ky;
                        if (iy < 0 || iy >= h) continue;
                        for (int kx = 0; kx < kw; kx++) {
                            const int ix = x * sw - pw + kx;
                            if (ix < 0 || ix >= w) continue;
                            acc += k[ky * kw + kx] * ((int32_t)plane[iy * w + ix] - in_zero);
                        }
                    }
                }
                int32_t v = cnz_requantize(acc, mult[o], shift[o]) + out_zero;
                out[(o * oh + y) * ow + x] = (uint8_t)(v < lo ? lo : v > hi ? hi : v);
            }
        }
    }
}

@@cnz_dot
static int32_t cnz_dot(const uint8_t *in, int n, int in_zero, const int8_t *row, int32_t acc)
{
    for (int i = 0; i < n; i++) acc += row[i] * ((int32_t)in[i] - in_zero);
    return acc;
}

@@cnz_linear
static void cnz_linear(const uint8_t *in, int n, int in_zero, const int8_t *wt,
                       const int32_t *bias, const int32_t *mult, const int32_t *shift, int co,
                       int out_zero, int lo, int hi, uint8_t *out)
{
    for (int o = 0; o < co; o++) {
        int32_t v = cnz_requantize(cnz_dot(in, n, in_zero, wt + o * n, bias[o]), mult[o],
                                   shift[o]) + out_zero;
        out[o] = (uint8_t)(v < lo ? lo : v > hi ? hi : v);
    }
}

@@cnz_logits
static void cnz_logits(const uint8_t *in, int n, int in_zero, const int8_t *wt,
                       const int32_t *bias, const int32_t *mult, const int32_t *shift, int co,
                       int32_t *out)
{
    for (int o = 0; o < co; o++)
        out[o] = cnz_requantize(cnz_dot(in, n, in_zero, wt + o * n, bias[o]), mult[o], shift[o]);
}

@@cnz_maxpool
static void cnz_maxpool(const uint8_t *in, int c, int h, int w, int kh, int kw, int sh, int sw,
                        uint8_t *out, int oh, int ow)
{
    for (int ch = 0; ch < c; ch++)
        for (int y = 0; y < oh; y++)
            for (int x = 0; x < ow; x++) {
                uint8_t m = 0;
                for (int ky = 0; ky < kh; ky++)
                    for (int kx = 0; kx < kw; kx++) {
                        const uint8_t v = in[(ch * h + y * sh + ky) * w + x * sw + kx];
                        if (v > m) m = v;
                    }
                out[(ch * oh + y) * ow + x] = m;
            }
}
"""


KERNELS = {part.split("\n", 1)[0]: part.split("\n", 1)[1]
           for part in _KERNELS.split("@@")[1:]}


def _kernels(calls: list[str]) -> str:
    """The kernels the calls use (an unused static function would not compile with -Werror)."""
    used = {call.split("(", 1)[0] for call in calls}
    if used & {"cnz_linear", "cnz_logits"}:
        used.add("cnz_dot")
    return "\n".join(code for name, code in KERNELS.items() if name in used)


def _array(ctype: str, name: str, values: np.ndarray) -> str:
    flat = np.asarray(values).reshape(-1).tolist()
    rows = [", ".join(map(str, flat[i:i + 24])) for i in range(0, len(flat), 24)]
    return f"static const {ctype} {name}[{len(flat)}] = {{\n    " + ",\n    ".join(rows) + "\n};\n"


def arena(sizes: list[tuple[int, int]]) -> tuple[int, list[int]]:
    """One activation arena for a chain of operations, each reading the previous one's output.

    Args:
        sizes: per operation, (input bytes, output bytes); the first input and the last output
            are the caller's (not in the arena).

    Returns:
        The arena's bytes and each output's offset (the last: -1). An operation writes at the
        end of the arena opposite its input, so the arena is the largest input + output of any
        one operation: for a chain, the least any placement needs.
    """
    size = max((a if i else 0) + (b if i < len(sizes) - 1 else 0)
               for i, (a, b) in enumerate(sizes))
    offsets, low = [], False
    for i, (_, b) in enumerate(sizes):
        if i == len(sizes) - 1:
            offsets.append(-1)
            break
        low = not low
        offsets.append(0 if low else size - b)
    return size, offsets


def generate(model: IntModel, in_shape: tuple[int, ...]) -> tuple[str, str, dict[str, int]]:
    """``(model.h, model.c, memory)`` for ``model`` on inputs of ``in_shape`` (C, H, W);
    ``memory``: the bytes of constant data (weights, biases, requantization parameters) and of
    the activation arena, known before anything is compiled.

    Raises:
        ReferenceError: an operation without a C kernel yet, or weights wider than 8 bits.
    """
    shapes, x = [], np.zeros((1, *in_shape), np.int64) + model.in_zero
    for op in model.ops:
        x = op(x)
        shapes.append(x.shape[1:])
    real, shape = [], tuple(in_shape)  # the operations that move data, with their sizes
    for op, out_shape in zip(model.ops, shapes):
        if not isinstance(op, Flatten):
            real.append((int(np.prod(shape)), int(np.prod(out_shape))))
        shape = out_shape
    arena_bytes, offsets = arena(real)
    data, calls, const_bytes = [], [], 0
    shape = tuple(in_shape)
    src = "input"
    for i, (op, out_shape) in enumerate(zip(model.ops, shapes)):
        last = i == len(model.ops) - 1
        if isinstance(op, Flatten):
            shape = out_shape
            continue
        offset = offsets[len(calls)]
        dst = "logits" if last else f"(cnz_arena + {offset})"
        if isinstance(op, IntLayer):
            if np.abs(op.weight).max(initial=0) > 127:
                raise ReferenceError(f"layer {i}: weights wider than 8 bits have no C kernel")
            data += [_array("int8_t", f"w{i}", op.weight), _array("int32_t", f"b{i}", op.bias),
                     _array("int32_t", f"m{i}", op.multiplier),
                     _array("int32_t", f"s{i}", op.shift)]
            const_bytes += op.weight.size + 4 * (op.bias.size + 2 * op.multiplier.size)
            args = f"w{i}, b{i}, m{i}, s{i}, {len(op.weight)}"
            if isinstance(op, Logits):
                if not last:
                    raise ReferenceError("only the last layer gives logits")
                calls.append(f"cnz_logits({src}, {int(np.prod(shape))}, {op.in_zero}, {args}, "
                             f"{dst});")
            elif op.kind == "conv":
                _, kh, kw = op.weight.shape[1:]
                c, h, w = shape
                calls.append(f"cnz_conv({src}, {c}, {h}, {w}, {op.in_zero}, {args}, {kh}, {kw}, "
                             f"{op.stride[0]}, {op.stride[1]}, {op.padding[0]}, {op.padding[1]}, "
                             f"{op.groups}, {op.out_zero}, {op.lo}, {op.hi}, {dst}, "
                             f"{out_shape[1]}, {out_shape[2]});")
            else:
                calls.append(f"cnz_linear({src}, {int(np.prod(shape))}, {op.in_zero}, {args}, "
                             f"{op.out_zero}, {op.lo}, {op.hi}, {dst});")
        elif isinstance(op, MaxPool):
            c, h, w = shape
            calls.append(f"cnz_maxpool({src}, {c}, {h}, {w}, {op.kernel[0]}, {op.kernel[1]}, "
                         f"{op.stride[0]}, {op.stride[1]}, {dst}, {out_shape[1]}, "
                         f"{out_shape[2]});")
        else:
            raise ReferenceError(f"{type(op).__name__} has no C kernel yet")
        src, shape = dst, out_shape
    if not calls or not calls[-1].startswith("cnz_logits"):
        raise ReferenceError("the model must end with its classifier")
    classes = int(np.prod(shapes[-1]))
    header = (f"#ifndef CNZ_MODEL_H\n#define CNZ_MODEL_H\n#include <stdint.h>\n\n"
              f"#define CNZ_INPUT_SIZE {int(np.prod(in_shape))}\n"
              f"#define CNZ_CLASSES {classes}\n"
              "/* input: the first layer's input integers, C×H×W; logits: int32 on one scale. */\n"
              "void cnz_infer(const uint8_t *input, int32_t *logits);\n\n#endif\n")
    body = ["/* Generated by cnnzip: integer-only inference. */", '#include "model.h"',
            RUNTIME.read_text(), _kernels(calls), *data,
            f"static uint8_t cnz_arena[{arena_bytes}];\n" if arena_bytes else "",
            "void cnz_infer(const uint8_t *input, int32_t *logits)\n{",
            *[f"    {c}" for c in calls], "}\n"]
    return header, "\n".join(body), {"const_bytes": const_bytes, "arena_bytes": arena_bytes}


HARNESS = r"""/* Generated by cnnzip: runs model.c on IDX test images (uncompressed: gunzip -k first) and
 * prints one predicted class per line; with the labels file, the accuracy on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include "model.h"

static int read_u32(FILE *f, uint32_t *v)
{
    unsigned char b[4];
    if (fread(b, 1, 4, f) != 4) return 0;
    *v = ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
    return 1;
}

int main(int argc, char **argv)
{
    static uint8_t pixels[CNZ_INPUT_SIZE], input[CNZ_INPUT_SIZE];
    int32_t logits[CNZ_CLASSES];
    uint32_t magic, count, rows, cols, labels_count = 0;
    FILE *images, *labels = NULL;
    if (argc < 2 || !(images = fopen(argv[1], "rb"))) {
        fprintf(stderr, "usage: %s IMAGES-idx3-ubyte [LABELS-idx1-ubyte]\n", argv[0]);
        return 2;
    }
    if (!read_u32(images, &magic) || magic != 0x803 || !read_u32(images, &count)
        || !read_u32(images, &rows) || !read_u32(images, &cols)
        || rows * cols * CNZ_CHANNELS != CNZ_INPUT_SIZE) {
        fprintf(stderr, "%s: not IDX images of the model's input size\n", argv[1]);
        return 1;
    }
    if (argc > 2 && (!(labels = fopen(argv[2], "rb")) || !read_u32(labels, &magic)
                     || magic != 0x801 || !read_u32(labels, &labels_count))) {
        fprintf(stderr, "%s: not an IDX labels file\n", argv[2]);
        return 1;
    }
    uint32_t correct = 0, done = 0;
    for (; done < count; done++) {
        if (fread(pixels, 1, CNZ_INPUT_SIZE, images) != CNZ_INPUT_SIZE) break;
        for (int i = 0; i < CNZ_INPUT_SIZE; i++)
            input[i] = cnz_pixel_to_input[i / (CNZ_INPUT_SIZE / CNZ_CHANNELS)][pixels[i]];
        cnz_infer(input, logits);
        int best = 0;
        for (int c = 1; c < CNZ_CLASSES; c++) if (logits[c] > logits[best]) best = c;
        printf("%d\n", best);
        unsigned char label;
        if (labels && done < labels_count && fread(&label, 1, 1, labels) == 1)
            correct += (label == best);
    }
    if (labels) fprintf(stderr, "accuracy %.4f on %u images\n", (double)correct / done, done);
    return 0;
}
"""


def pixel_table(model: IntModel, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(channels, 256): the first layer's input integer of each 8-bit pixel value, per channel
    (normalisation and quantization folded into one lookup, rounded as the reference rounds)."""
    channels = len(mean)
    pixels = torch.arange(256, dtype=torch.uint8).repeat(channels, 1)  # (C, 256)
    # exactly as cnnzip.data.normalize computes it (float32), then as the reference quantizes
    x = (pixels.float().div_(255) - torch.tensor(mean)[:, None]) / torch.tensor(std)[:, None]
    return model.quantize_input(x)


def write(model: IntModel, in_shape: tuple[int, ...], mean: tuple[float, ...],
          std: tuple[float, ...], out: Path) -> tuple[dict[str, int], dict[str, int]]:
    """``out/model.h``, ``out/model.c`` (with the pixel lookup table) and ``out/main.c``;
    returns each file's bytes and the memory plan (constant bytes, the lookup table included;
    arena bytes)."""
    header, source, memory = generate(model, in_shape)
    table = pixel_table(model, mean, std)
    header = header.replace("void cnz_infer(", f"#define CNZ_CHANNELS {len(mean)}\n"
                            f"extern const uint8_t cnz_pixel_to_input[{len(mean)}][256];\n"
                            "void cnz_infer(")
    rows = ",\n    ".join("{" + ", ".join(map(str, row)) + "}" for row in table.tolist())
    source += (f"\n/* 8-bit pixel → the first layer's input integer, per channel */\n"
               f"const uint8_t cnz_pixel_to_input[{len(mean)}][256] = {{\n    {rows}\n}};\n")
    out.mkdir(parents=True, exist_ok=True)
    files = {"model.h": header, "model.c": source, "main.c": HARNESS}
    for name, text in files.items():
        (out / name).write_text(text)
    memory = {**memory, "const_bytes": memory["const_bytes"] + table.size}
    return {name: len(text.encode()) for name, text in files.items()}, memory


def compile_c(folder: Path, sources: list[str], output: str | Path, *,
              object_only: bool = False) -> Path:
    """``gcc`` with :data:`CFLAGS` on ``sources`` in ``folder``: an executable (or, with
    ``object_only``, one object file) at ``output``.

    Raises:
        CnnzipError: no C compiler, or one that refuses the sources (its first error line).
    """
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise CnnzipError("no C compiler (gcc or cc) on PATH; scripts/setup.sh installs gcc")
    output = Path(output).resolve()
    done = subprocess.run([gcc, *CFLAGS, *(["-c"] if object_only else []), *sources, "-o",
                           str(output)], cwd=folder, capture_output=True, text=True)
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["(no message)"]
        raise CnnzipError(f"{folder}: gcc failed: {lines[0]}")
    return output


def sections(folder: Path, scratch: Path) -> dict[str, int]:
    """Bytes of ``folder/model.c``'s sections once compiled (``size -A`` of the object file,
    written in ``scratch``): ``rodata`` (the constant data), ``bss`` (the arena), ``text``
    (the code)."""
    obj = compile_c(folder, ["model.c"], scratch / "model.o", object_only=True)
    table = subprocess.run(["size", "-A", str(obj)], capture_output=True, text=True,
                           check=True).stdout
    sizes = {"rodata": 0, "bss": 0, "text": 0}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            for key in sizes:
                if parts[0] == f".{key}" or parts[0].startswith(f".{key}."):
                    sizes[key] += int(parts[1])
    return sizes
