"""C99 for an integer model (:class:`cnnzip.export.reference.IntModel`): weights as ``const``
data or code, one static activation arena planned over tensor lifetimes, no ``malloc``, no
floating point; one entry point, ``void cnz_infer(const uint8_t *input, int32_t *logits)``,
computing bit for bit what the numpy reference computes (the requantization is
``cnnzip/export/c/runtime/cnz_math.h``). Each layer's kernel (dense, sparse, unrolled, simd or
packed) is chosen by the cost model in :mod:`cnnzip.export.c.costmodel`.

The same generator writes a float model (:class:`cnnzip.export.reference.FloatModel`) as float
C with the same dense kernels: the baseline that compressed C is timed against.

Chains of convolutions, linear layers, max poolings and flattens so far.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from cnnzip.errors import CnnzipError
from cnnzip.export.c.costmodel import choose, estimate
from cnnzip.export.c.forms import emit
from cnnzip.export.c.geometry import geometry, macs
from cnnzip.export.c.glue import glue_function
from cnnzip.export.ir.facts import shapes as tensor_shapes
from cnnzip.export.ir.lower_float import FloatLayer, FloatModel
from cnnzip.export.ir.ops import Flatten, IntLayer, IntModel, Logits, LoweringError, MaxPool
from cnnzip.fileio import atomic_dir

RUNTIME = Path(__file__).parent / "runtime" / "cnz_math.h"

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
             kernels: str = "balanced", *, pixel_channels: int | None = None) -> Generated:
    """The C of ``model`` on inputs of ``in_shape`` (C, H, W), each layer's kernel form chosen
    by ``kernels`` (one of :data:`cnnzip.export.costmodel.POLICIES`).

    A max pooling that is the only reader of a convolution's output is computed inside the
    convolution; flattens are free (the same bytes). Every other tensor gets a place in one
    arena, planned over its lifetime (from the step that writes it to the last that reads it).

    Raises:
        LoweringError: an operation without a C kernel yet, or weights wider than 8 bits.
    """
    is_float = isinstance(model, FloatModel)
    elem, width = ("float", 4) if is_float else ("uint8_t", 1)
    nodes = model.nodes
    if not nodes or not isinstance(nodes[-1].op, FloatLayer if is_float else Logits):
        raise LoweringError("the model must end with its classifier")
    shapes = tensor_shapes(model, in_shape)
    readers = {k: [j for j, n in enumerate(nodes) if k in n.inputs] for k in shapes}
    fused = {readers[k][0]: k for k, node in enumerate(nodes)
             if isinstance(node.op, (IntLayer, FloatLayer)) and node.op.kind == "conv"
             and len(readers[k]) == 1 and isinstance(nodes[readers[k][0]].op, MaxPool)}
    home: dict[int, int] = {-1: -1}  # tensor → the tensor whose bytes hold it
    for k, node in enumerate(nodes):
        home[k] = home[node.inputs[0]] if isinstance(node.op, Flatten) else k
    for pool, conv in fused.items():
        home[pool] = home[conv] = pool
    steps = [k for k, node in enumerate(nodes) if not isinstance(node.op, Flatten)
             and k not in fused.values()]
    last = len(nodes) - 1
    lifetime: dict[int, list[int]] = {}
    for i, k in enumerate(steps):
        if home[k] != last:
            lifetime.setdefault(home[k], [i, i])
        reads = nodes[fused.get(k, k)].inputs
        for t in reads:
            if home[t] != -1:
                lifetime[home[t]][1] = max(lifetime[home[t]][1], i)
    layers, data, functions, calls, const_bytes = [], [], [], [], 0
    tensors = {t: [int(np.prod(shapes[t])) * width, *span] for t, span in lifetime.items()}
    for i, k in enumerate(steps):
        source = fused.get(k, k)  # the conv whose output a fused pooling reads
        op, name = nodes[source].op, f"cnz_l{source}"
        in_shapes = [shapes[t] for t in nodes[source].inputs]
        if isinstance(op, (IntLayer, FloatLayer)):
            pool = nodes[k].op if k in fused else None
            geo = geometry(op, in_shapes[0], shapes[source], pool)
            try:
                form = choose(op, geo, kernels)
                emitted = emit(op, name, geo, form)
            except CnnzipError as exc:
                raise LoweringError(f"layer {source}: {exc}") from None
            dense, nonzero = macs(op, geo)
            layers.append(LayerPlan(f"layer {source}" + (" + max pool" if pool else ""), form,
                                    dense, nonzero,
                                    round(estimate(op, geo, form)["instructions"]),
                                    emitted.const_bytes))
            data.append(emitted.data)
            functions.append(emitted.function)
            const_bytes += emitted.const_bytes
            if emitted.scratch_bytes:  # a padded input copy, live during this step only
                tensors[("scratch", i)] = [emitted.scratch_bytes, i, i]
        else:
            functions.append(glue_function(op, name, elem, in_shapes, shapes[k]))
    keys = list(tensors)
    arena_bytes, placed = plan_arena([tuple(tensors[t]) for t in keys])
    offset = dict(zip(keys, placed))

    def where(t: int) -> str:
        t = home[t]
        if t == -1:
            return "input"
        return "logits" if t == last else f"({elem} *)(cnz_arena + {offset[t]})"
    for i, k in enumerate(steps):
        source = fused.get(k, k)
        args = [where(t) for t in nodes[source].inputs] + [where(k)]
        if ("scratch", i) in offset:
            args.append(f"({elem} *)(cnz_arena + {offset['scratch', i]})")
        calls.append(f"    CNZ_PROFILE({i});\n    cnz_l{source}({', '.join(args)});")
    logit = "float" if is_float else "int32_t"
    header = ("#ifndef CNZ_MODEL_H\n#define CNZ_MODEL_H\n#include <stdint.h>\n\n"
              f"typedef {elem} cnz_input_t;  /* the first layer's input, C×H×W */\n"
              f"typedef {logit} cnz_logit_t;  /* "
              + ("float logits */\n" if is_float else "int32 logits on one scale */\n")
              + f"#define CNZ_INPUT_SIZE {int(np.prod(in_shape))}\n"
              f"#define CNZ_CLASSES {int(np.prod(shapes[last]))}\n"
              f"#define CNZ_STEPS {len(steps)}\n"
              + ("" if pixel_channels is None else
                 f"#define CNZ_CHANNELS {pixel_channels}\n"
                 f"extern const cnz_input_t cnz_pixel_to_input[{pixel_channels}][256];\n")
              + "void cnz_infer(const cnz_input_t *input, cnz_logit_t *logits);\n\n#endif\n")
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
    its constant bytes). ``out`` is written as :func:`cnnzip.fileio.atomic_dir` writes: a new
    or empty folder or an earlier export's, else refused."""
    gen = generate(model, in_shape, kernels, pixel_channels=len(mean))
    table = pixel_table(model, mean, std)
    ctype = "float" if isinstance(model, FloatModel) else "uint8_t"
    values = [[_literal(v, ctype) for v in row] for row in table.tolist()]
    rows = ",\n    ".join("{" + ", ".join(row) + "}" for row in values)
    source = gen.source + (f"\n/* 8-bit pixel → the first layer's input, per channel */\n"
                           f"const cnz_input_t cnz_pixel_to_input[{len(mean)}][256] = {{\n"
                           f"    {rows}\n}};\n")
    files = {"model.h": gen.header, "model.c": source, "main.c": HARNESS}
    with atomic_dir(out) as tmp:  # whole or not at all; never into a user's folder or a link
        for name, text in files.items():
            (tmp / name).write_text(text)
    gen = replace(gen, source=source,
                  const_bytes=gen.const_bytes + table.size * (4 if ctype == "float" else 1))
    return {name: len(text.encode()) for name, text in files.items()}, gen


def _literal(v, ctype: str) -> str:
    return f"{float(np.float32(v))!r}f" if ctype == "float" else str(int(v))
