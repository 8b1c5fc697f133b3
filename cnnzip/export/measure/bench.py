"""Timing generated C: several models (cnnzip's C of a float or integer model, or a peer
generator's C) compiled with the same compiler and flags for one target and run on the same
images.

``cortex-m4``: each model runs on the emulated board (qemu ``-icount shift=0``); its time is
SysTick ticks per image (40 executed instructions each: a count of instructions, not of memory
wait states), the same on every run. ``host``: every model is linked into one program that
runs them in turn on each image, several rounds, and keeps each model's best round
(nanoseconds per image).

Flash and RAM are the sections of each model's own object file for the target (``size -A``):
flash = code + constant data, RAM = static data (the arena); the stack and the harness aside.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from cnnzip.errors import CnnzipError
from cnnzip.export.c.writer import Generated, generate
from cnnzip.export.ir.lower_float import FloatModel
from cnnzip.export.ir.ops import IntModel
from cnnzip.export.measure.toolchain import (INSTRUCTIONS_PER_TICK, build, compile_c,
                                     model_sections, run)


@dataclass
class Entry:
    """One model to time. ``model``: cnnzip's integer or float model (generated here with
    ``kernels``); or ``peer_c``: a peer's C file with ``void model(int N, const float *input,
    float *logits)`` (float in, float out)."""

    label: str
    model: IntModel | FloatModel | None = None
    kernels: str = "balanced"
    peer_c: Path | None = None
    result: dict = field(default_factory=dict)

    @property
    def is_float(self) -> bool:
        return self.model is None or isinstance(self.model, FloatModel)


_PEER_HEADER = Template("""#ifndef CNZ_MODEL_H
#define CNZ_MODEL_H
#include <stdint.h>
typedef float cnz_input_t;
typedef float cnz_logit_t;
#define CNZ_INPUT_SIZE $size
#define CNZ_CLASSES $classes
#define CNZ_STEPS 1
void cnz_infer(const cnz_input_t *input, cnz_logit_t *logits);
#endif
""")

_PEER_SHIM = """/* the peer's batched entry point, called for one image */
#include "model.h"
void model(int N, const float *input, float *logits);
void cnz_infer(const cnz_input_t *input, cnz_logit_t *logits) { model(1, input, logits); }
"""


def _prepare(entry: Entry, folder: Path, in_shape: tuple[int, ...], classes: int) -> list[str]:
    """Write ``entry``'s sources into ``folder``; returns the model's source files."""
    folder.mkdir(parents=True, exist_ok=True)
    if entry.peer_c is not None:
        # the peer declares its entry with array parameters; the shim passes flat pointers
        shutil.copy(entry.peer_c, folder / "model.c")
        (folder / "model.h").write_text(_PEER_HEADER.substitute(size=int(np.prod(in_shape)),
                                                                classes=classes))
        (folder / "shim.c").write_text(_PEER_SHIM)
        return ["model.c", "shim.c"]
    gen: Generated = generate(entry.model, in_shape, entry.kernels)
    (folder / "model.h").write_text(gen.header)
    (folder / "model.c").write_text(gen.source)
    entry.result.update(planned=gen.memory, layers=[vars(p) for p in gen.layers],
                        kernels={p.name: p.form for p in gen.layers})
    return ["model.c"]


def _inputs(entry: Entry, images) -> np.ndarray:
    if entry.model is None:
        return np.ascontiguousarray(images.float().numpy())
    codes = entry.model.quantize_input(images)
    return codes.astype(np.float32 if entry.is_float else np.uint8)


def _check(entry: Entry, images, logits: np.ndarray) -> None:
    """The target's logits against cnnzip's reference: every logit equal (integer models) or
    the largest difference (float)."""
    if entry.model is None:
        return
    reference = entry.model(entry.model.quantize_input(images))
    if entry.is_float:
        entry.result["max_abs_diff_vs_reference"] = float(np.abs(logits - reference).max())
    else:
        entry.result["bit_exact"] = bool(np.array_equal(logits, reference))
        entry.result["logits_equal"] = float((logits == reference).all(1).mean())
    entry.result["top1_agreement_vs_reference"] = float(
        (logits.argmax(1) == reference.argmax(1)).mean())


def bench(entries: list[Entry], in_shape: tuple[int, ...], classes: int, images, work: Path,
          target: str = "cortex-m4", rounds: int = 5) -> list[Entry]:
    """Compile every entry for ``target``, run it on ``images`` (normalised, N×C×H×W), and fill
    each entry's ``result``: time per image, flash/RAM, and the check against the reference.

    Raises:
        CnnzipError: a toolchain or emulator that is missing or fails.
    """
    for i, entry in enumerate(entries):
        folder = work / f"m{i}-{entry.label}"
        sources = _prepare(entry, folder, in_shape, classes)
        obj_sections = model_sections(folder, folder, target)
        entry.result.update(label=entry.label, flash_bytes=obj_sections["flash"],
                            ram_bytes=obj_sections["ram"], sections=obj_sections)
        entry.result["folder"] = str(folder)
        entry.result["sources"] = sources
    if target == "cortex-m4":
        for entry in entries:
            folder = Path(entry.result["folder"])
            binary = build(folder, target, extra=entry.result["sources"][1:],
                           libs=("-lm",) if entry.peer_c is not None else ())
            done = run(binary, target, _inputs(entry, images),
                       "<f4" if entry.is_float else "<i4", classes)
            entry.result.update(ticks_per_image=float(done.times.mean()),
                                instructions_per_image=float(done.times.mean())
                                * INSTRUCTIONS_PER_TICK)
            _check(entry, images, done.logits)
    else:
        times, logits = _host_rounds(entries, images, work, classes, rounds)
        for entry, t, out in zip(entries, times, logits):
            entry.result["us_per_image"] = t / 1000
            _check(entry, images, out)
    return entries


_HOST_MAIN = Template(r"""/* cnnzip: every model in turn on each image, $rounds rounds; each model's best round. */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <time.h>
$decls
static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static long load(const char *path, void *buf, long n)
{
    FILE *f = fopen(path, "rb");
    long got = f ? (long)fread(buf, 1, (size_t)n, f) : -1;
    if (f) fclose(f);
    return got;
}

int main(void)
{
    double best[$models], round_ns[$models];
$buffers
    for (int m = 0; m < $models; m++) best[m] = 1e300;
    for (int r = 0; r < $rounds; r++) {
        for (int m = 0; m < $models; m++) round_ns[m] = 0;
        for (int i = 0; i < $n; i++) {
$calls
        }
        for (int m = 0; m < $models; m++) if (round_ns[m] < best[m]) best[m] = round_ns[m];
    }
$writes
    FILE *t = fopen("time.bin", "wb");
    if (!t) return 1;
    for (int m = 0; m < $models; m++) { double v = best[m] / $n; fwrite(&v, sizeof v, 1, t); }
    fclose(t);
    return 0;
}
""")


def _only_entry(objects: list[Path], entry: str, output: Path) -> Path:
    """The objects linked into one relocatable object whose only global symbol is ``entry``
    (so that several models' own globals, a peer's included, do not clash)."""
    from cnnzip.export.measure.toolchain import compiler

    for command in ([compiler(), "-r", "-nostdlib", *map(str, objects), "-o", str(output)],
                    ["objcopy", f"--keep-global-symbol={entry}", str(output)]):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise CnnzipError(f"{Path(command[0]).name} failed: {done.stderr.strip()[:200]}")
    return output


def _host_rounds(entries: list[Entry], images, work: Path, classes: int,
                 rounds: int) -> tuple[list[float], list[np.ndarray]]:
    """Every entry linked into one host program, run in turn on each image: nanoseconds per
    image (best round) and logits of each."""
    n = len(images)
    decls, buffers, calls, writes, objects = [], [], [], [], []
    for m, entry in enumerate(entries):
        folder = Path(entry.result["folder"])
        tin, tout = ("float", "float") if entry.is_float else ("uint8_t", "int32_t")
        size = int(np.prod(images.shape[1:]))
        (work / f"in{m}.bin").write_bytes(_inputs(entry, images).tobytes())
        parts = [compile_c(folder, [source], work / f"m{m}-{Path(source).stem}.o",
                           object_only=True, defines=(f"cnz_infer=cnz_infer_{m}",))
                 for source in entry.result["sources"]]
        objects.append(_only_entry(parts, f"cnz_infer_{m}", work / f"m{m}.o"))
        decls.append(f"void cnz_infer_{m}(const {tin} *input, {tout} *logits);")
        buffers.append(f"    static {tin} in{m}[{n * size}];\n    static {tout} out{m}[{n * classes}];\n"
                       f"    if (load(\"in{m}.bin\", in{m}, sizeof in{m}) != (long)sizeof in{m}) "
                       "return 2;")
        calls.append(f"            {{ const double t0 = now(); cnz_infer_{m}(in{m} + i * {size}, "
                     f"out{m} + i * {classes}); round_ns[{m}] += now() - t0; }}")
        writes.append(f"    {{ FILE *f = fopen(\"out{m}.bin\", \"wb\"); if (!f) return 1; "
                      f"fwrite(out{m}, sizeof out{m}[0], {n * classes}, f); fclose(f); }}")
    (work / "host_main.c").write_text(_HOST_MAIN.substitute(
        rounds=rounds, models=len(entries), n=n, decls="\n".join(decls),
        buffers="\n".join(buffers), calls="\n".join(calls), writes="\n".join(writes)))
    binary = compile_c(work, ["host_main.c", *map(str, objects)], work / "bench-host",
                       libs=("-lm",))
    done = subprocess.run([str(binary)], cwd=work, capture_output=True, timeout=900)
    if done.returncode:
        raise CnnzipError(f"the host benchmark failed (exit {done.returncode})")
    times = np.frombuffer((work / "time.bin").read_bytes(), "<f8").tolist()
    logits = [np.frombuffer((work / f"out{m}.bin").read_bytes(),
                            "<f4" if e.is_float else "<i4").reshape(n, classes)
              for m, e in enumerate(entries)]
    return times, logits


def peer_entries(base, comp, in_shape, folder: Path, entries: list) -> dict[str, Any]:
    """emx-onnx-cgen's C of both models (from cnnzip's ONNX exports), added to ``entries``;
    what happened, for the report (the tool's error when it is missing or fails)."""
    from cnnzip.export.onnx import to_onnx

    tool = shutil.which("emx-onnx-cgen") or shutil.which("emx-onnx-cgen", path=".venv-peer/bin")
    if tool is None:
        return {"tool": "emx-onnx-cgen", "error": "not installed (scripts/setup.sh --peer puts "
                                                  "it in .venv-peer)"}
    folder.mkdir(parents=True, exist_ok=True)
    done: dict[str, Any] = {"tool": "emx-onnx-cgen"}
    for label, model, int8 in (("peer-baseline", base, False), ("peer-compressed", comp, True)):
        onnx_path = folder / f"{label}.onnx"
        onnx_path.write_bytes(to_onnx(model, in_shape, int8=int8).SerializeToString())
        c_path = folder / f"{label}.c"
        run = subprocess.run([tool, "compile", str(onnx_path), str(c_path),
                              "--large-temp-threshold", "0",
                              "--large-weight-threshold", str(1 << 30)],
                             capture_output=True, text=True)
        if run.returncode or not c_path.exists():
            lines = (run.stderr or run.stdout).strip().splitlines() or ["(no message)"]
            done[label] = f"failed: {lines[-1]}"
            continue
        entries.append(Entry(label, peer_c=c_path))
        done[label] = "generated"
    return done


def onnxruntime_batch1(base, comp, in_shape) -> dict[str, Any]:
    """onnxruntime on the host at batch 1: the baseline in float, the compressed model int8."""
    import onnxruntime

    from cnnzip.export.onnx import OrtModel, to_onnx
    from cnnzip.metrics import bench_models
    from cnnzip.surgery import materialize

    models = {"baseline": OrtModel(to_onnx(materialize(base).eval(), in_shape, int8=False)),
              "compressed": OrtModel(to_onnx(materialize(comp).eval(), in_shape))}
    best = bench_models(models, in_shape, batch_size=1, rounds=3, min_seconds=0.5)
    return {"runtime": f"onnxruntime {onnxruntime.__version__} cpu",
            "baseline_us_per_image": 1e6 / best["baseline"],
            "compressed_us_per_image": 1e6 / best["compressed"],
            "speedup": best["compressed"] / best["baseline"]}
