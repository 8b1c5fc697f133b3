"""C99 for an integer model (:class:`cnnzip.export.reference.IntModel`): weights as ``const``
data or code, one static activation arena planned over tensor lifetimes, no ``malloc``, no
floating point; one entry point, ``void cnz_infer(const uint8_t *input, int32_t *logits)``,
computing bit for bit what the numpy reference computes (the requantization is
``cnnzip/export/runtime/cnz_math.h``). Each layer's kernel (dense, sparse or unrolled) is chosen
by the cost model in :mod:`cnnzip.export.kernels`.

The same generator writes a float model (:class:`cnnzip.export.reference.FloatModel`) as float
C with the same dense kernels: the baseline that compressed C is timed against.

Chains of convolutions, linear layers, max poolings and flattens so far.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from string import Template

import numpy as np
import torch

from cnnzip.errors import CnnzipError
from cnnzip.export.kernels import choose, emit, estimate, geometry, macs
from cnnzip.export.reference import (FloatLayer, FloatModel, Flatten, IntLayer, IntModel, Logits,
                                     MaxPool, ReferenceError)

RUNTIME = Path(__file__).parent / "runtime" / "cnz_math.h"

_MAXPOOL = Template(r"""static void $name(const $t *in, $t *out)
{
    for (int c = 0; c < $c; c++)
        for (int y = 0; y < $oh; y++)
            for (int x = 0; x < $ow; x++) {
                const $t *p = in + (c * $h + y * $sh) * $w + x * $sw;
                $t m = p[0];
                for (int ky = 0; ky < $kh; ky++)
                    for (int kx = 0; kx < $kw; kx++)
                        if (p[ky * $w + kx] > m) m = p[ky * $w + kx];
                out[(c * $oh + y) * $ow + x] = m;
            }
}
""")


def plan_arena(tensors: list[tuple[int, int, int]]) -> tuple[int, list[int]]:
    """Offsets in one arena for tensors given as (bytes, first step, last step) that use it:
    greedy packing over lifetimes (largest first, each at the lowest offset free of every
    placed tensor whose lifetime overlaps; TensorFlow Lite Micro's greedy planner).

    Returns:
        The arena's bytes and each tensor's offset.
    """
    order = sorted(range(len(tensors)), key=lambda i: (-tensors[i][0], tensors[i][1]))
    offsets = [0] * len(tensors)
    placed: list[int] = []
    for i in order:
        size, first, last = tensors[i]
        busy = sorted((offsets[j], offsets[j] + tensors[j][0]) for j in placed
                      if tensors[j][1] <= last and first <= tensors[j][2])
        offset = 0
        for lo, hi in busy:
            if offset + size <= lo:
                break
            offset = max(offset, hi)
        offsets[i] = offset
        placed.append(i)
    size = max((offsets[i] + tensors[i][0] for i in range(len(tensors))), default=0)
    return size, offsets


@dataclass(frozen=True)
class LayerPlan:
    """How one layer is computed: its kernel form, its multiply-accumulates (all, and those on
    non-zero weights), the cost model's Cortex-M4 instructions and its constant bytes."""

    name: str
    form: str
    macs: int
    nonzero_macs: int
    predicted_instructions: int
    const_bytes: int


@dataclass(frozen=True)
class Generated:
    """The C of a model: ``model.h``, ``model.c``; the memory plan, known before compiling
    (``const_bytes``: weights and parameters; ``arena_bytes``: every activation); each layer's
    plan."""

    header: str
    source: str
    const_bytes: int
    arena_bytes: int
    layers: tuple[LayerPlan, ...]

    @property
    def memory(self) -> dict[str, int]:
        return {"const_bytes": self.const_bytes, "arena_bytes": self.arena_bytes}


def generate(model: IntModel | FloatModel, in_shape: tuple[int, ...],
             kernels: str = "balanced") -> Generated:
    """The C of ``model`` on inputs of ``in_shape`` (C, H, W), each layer's kernel form chosen
    by ``kernels`` (one of :data:`cnnzip.export.kernels.POLICIES`).

    Raises:
        ReferenceError: an operation without a C kernel yet, or weights wider than 8 bits.
    """
    is_float = isinstance(model, FloatModel)
    elem, width = ("float", 4) if is_float else ("uint8_t", 1)
    if not model.ops or not isinstance(model.ops[-1], FloatLayer if is_float else Logits):
        raise ReferenceError("the model must end with its classifier")
    shapes, x = [], np.zeros((1, *in_shape), np.float32 if is_float else np.int64)
    x = x if is_float else x + model.in_zero
    for op in model.ops:
        x = op(x)
        shapes.append(tuple(x.shape[1:]))
    steps, layers, data, functions, const_bytes = [], [], [], [], 0
    tensors: list[tuple[int, int, int]] = []  # the arena's users: (bytes, first, last step)
    shape, src = tuple(in_shape), None  # src: the arena tensor holding the input (None: input)
    fused = {i + 1 for i, op in enumerate(model.ops[:-1])
             if isinstance(op, (IntLayer, FloatLayer)) and op.kind == "conv"
             and isinstance(model.ops[i + 1], MaxPool)}
    for i, (op, out_shape) in enumerate(zip(model.ops, shapes)):
        if isinstance(op, Flatten) or i in fused:
            shape = out_shape
            continue
        pool = model.ops[i + 1] if i + 1 in fused else None
        stored = shapes[i + 1] if pool else out_shape
        step, last, name = len(steps), i == len(model.ops) - 1, f"cnz_l{i}"
        dst = None if last else len(tensors)
        if dst is not None:
            tensors.append((int(np.prod(stored)) * width, step, step + 1))
        scratch = None
        if isinstance(op, MaxPool):
            c, h, w = shape
            functions.append(_MAXPOOL.substitute(
                name=name, t=elem, c=c, h=h, w=w, kh=op.kernel[0], kw=op.kernel[1],
                sh=op.stride[0], sw=op.stride[1], oh=out_shape[1], ow=out_shape[2]))
        elif isinstance(op, (IntLayer, FloatLayer)):
            geo = geometry(op, shape, out_shape, pool)
            try:
                form = choose(op, geo, kernels)
                emitted = emit(op, name, geo, form)
            except CnnzipError as exc:
                raise ReferenceError(f"layer {i}: {exc}") from None
            dense, nonzero = macs(op, geo)
            layers.append(LayerPlan(f"layer {i}" + (" + max pool" if pool else ""), form, dense,
                                    nonzero, round(estimate(op, geo, form)["instructions"]),
                                    emitted.const_bytes))
            data.append(emitted.data)
            functions.append(emitted.function)
            const_bytes += emitted.const_bytes
            if emitted.scratch_bytes:
                scratch = len(tensors)
                tensors.append((emitted.scratch_bytes, step, step))
        else:
            raise ReferenceError(f"{type(op).__name__} has no C kernel yet")
        steps.append((name, src, dst, scratch))
        shape, src = stored, dst
    arena_bytes, offsets = plan_arena(tensors)
    calls = []
    for k, (name, src, dst, scratch) in enumerate(steps):
        args = ["input" if src is None else f"({elem} *)(cnz_arena + {offsets[src]})",
                "logits" if dst is None else f"({elem} *)(cnz_arena + {offsets[dst]})"]
        if scratch is not None:
            args.append(f"cnz_arena + {offsets[scratch]}")
        calls.append(f"    CNZ_PROFILE({k});\n    {name}({', '.join(args)});")
    logit = "float" if is_float else "int32_t"
    header = ("#ifndef CNZ_MODEL_H\n#define CNZ_MODEL_H\n#include <stdint.h>\n\n"
              f"typedef {elem} cnz_input_t;  /* the first layer's input, C×H×W */\n"
              f"typedef {logit} cnz_logit_t;  /* "
              + ("float logits */\n" if is_float else "int32 logits on one scale */\n")
              + f"#define CNZ_INPUT_SIZE {int(np.prod(in_shape))}\n"
              f"#define CNZ_CLASSES {int(np.prod(shapes[-1]))}\n"
              f"#define CNZ_STEPS {len(steps)}\n"
              "void cnz_infer(const cnz_input_t *input, cnz_logit_t *logits);\n\n#endif\n")
    body = [f"/* Generated by cnnzip: {'float' if is_float else 'integer-only'} inference; "
            "kernels: " + ", ".join(f"{p.name} {p.form}" for p in layers) + ". */",
            '#include "model.h"',
            "/* CNZ_PROFILE(step): a hook before each step and at the end, for timing; the\n"
            " * benchmark harness builds with -DCNZ_PROFILE(s)=cnz_profile(s). */\n"
            "#ifdef CNZ_PROFILE\nvoid cnz_profile(int step);\n#else\n"
            "#define CNZ_PROFILE(step)\n#endif",
            "" if is_float else RUNTIME.read_text(), *data, *functions,
            f"static uint8_t cnz_arena[{arena_bytes}] __attribute__((aligned(8)));\n"
            if arena_bytes else "",
            "void cnz_infer(const cnz_input_t *input, cnz_logit_t *logits)\n{", *calls,
            f"    CNZ_PROFILE({len(steps)});\n}}\n"]
    return Generated(header, "\n".join(body), const_bytes, arena_bytes, tuple(layers))



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
    static uint8_t pixels[CNZ_INPUT_SIZE];
    static cnz_input_t input[CNZ_INPUT_SIZE];
    cnz_logit_t logits[CNZ_CLASSES];
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


def pixel_table(model: IntModel | FloatModel, mean: tuple[float, ...],
                std: tuple[float, ...]) -> np.ndarray:
    """(channels, 256): the first layer's input of each 8-bit pixel value, per channel
    (normalisation, and quantization for an integer model, folded into one lookup, rounded as
    the reference rounds)."""
    channels = len(mean)
    pixels = torch.arange(256, dtype=torch.uint8).repeat(channels, 1)  # (C, 256)
    # exactly as cnnzip.data.normalize computes it (float32), then as the reference quantizes
    x = (pixels.float().div_(255) - torch.tensor(mean)[:, None]) / torch.tensor(std)[:, None]
    return model.quantize_input(x)


def write(model: IntModel | FloatModel, in_shape: tuple[int, ...], mean: tuple[float, ...],
          std: tuple[float, ...], out: Path, kernels: str = "balanced"
          ) -> tuple[dict[str, int], Generated]:
    """``out/model.h``, ``out/model.c`` (with the pixel lookup table) and ``out/main.c``;
    returns each file's bytes and what :func:`generate` planned (the lookup table counted in
    its constant bytes)."""
    gen = generate(model, in_shape, kernels)
    table = pixel_table(model, mean, std)
    ctype = "float" if isinstance(model, FloatModel) else "uint8_t"
    header = gen.header.replace("void cnz_infer(", f"#define CNZ_CHANNELS {len(mean)}\n"
                                f"extern const cnz_input_t cnz_pixel_to_input[{len(mean)}][256];\n"
                                "void cnz_infer(")
    values = [[_literal(v, ctype) for v in row] for row in table.tolist()]
    rows = ",\n    ".join("{" + ", ".join(row) + "}" for row in values)
    source = gen.source + (f"\n/* 8-bit pixel → the first layer's input, per channel */\n"
                           f"const cnz_input_t cnz_pixel_to_input[{len(mean)}][256] = {{\n"
                           f"    {rows}\n}};\n")
    out.mkdir(parents=True, exist_ok=True)
    files = {"model.h": header, "model.c": source, "main.c": HARNESS}
    for name, text in files.items():
        (out / name).write_text(text)
    gen = replace(gen, header=header, source=source,
                  const_bytes=gen.const_bytes + table.size * (4 if ctype == "float" else 1))
    return {name: len(text.encode()) for name, text in files.items()}, gen


def _literal(v, ctype: str) -> str:
    return f"{float(np.float32(v))!r}f" if ctype == "float" else str(int(v))
