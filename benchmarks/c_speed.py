"""The C kernels' cost model against measurement on the emulated Cortex-M4: each compressed
model's integer C generated with every layer dense, sparse, unrolled, packed and as the cost model
chooses (``balanced``, ``fast``, ``small``), compiled with arm-none-eabi-gcc -O2, run under
qemu-system-arm -icount shift=0 with a SysTick reading before each step; per layer, the
predicted and the measured ticks (40 executed instructions each), the whole inference, flash
and RAM, and whether the logits equal the numpy reference's.

    python benchmarks/c_speed.py MODEL.cnz [MODEL.cnz ...] [--samples 50]
        [--forms dense sparse unrolled packed balanced fast small] [--out runs/bench-c-speed]

Every figure is measured in this run; inputs are the first test images of the model's dataset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cnnzip.api import load_model
from cnnzip.data import batches, load_dataset
from cnnzip.export.c.writer import generate
from cnnzip.export.ir.lower import lower_model
from cnnzip.export.measure.toolchain import INSTRUCTIONS_PER_TICK, build, model_sections, run
from common import write_results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="MODEL.cnz")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--forms", nargs="+",
                        default=["dense", "sparse", "unrolled", "packed", "balanced", "fast",
                                 "small"])
    parser.add_argument("--out", default="runs/bench-c-speed")
    args = parser.parse_args()
    rows = []
    for path in args.models:
        model, spec, info = load_model(path)
        splits = load_dataset(info["dataset"])
        int_model = lower_model(model, tuple(spec.in_shape),
                                next(iter(batches(splits.train, splits.info, 512)))[0])
        images = next(iter(batches(splits.test, splits.info, args.samples)))[0]
        codes = int_model.quantize_input(images)
        reference = int_model(codes)
        for form in args.forms:
            gen = generate(int_model, tuple(spec.in_shape), form)
            folder = Path(args.out) / Path(path).parent.name / form
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "model.h").write_text(gen.header)
            (folder / "model.c").write_text(gen.source)
            timed = run(build(folder, "cortex-m4"), "cortex-m4", codes.astype(np.uint8), "<i4",
                        reference.shape[1])
            profiled = run(build(folder, "cortex-m4", profile=True), "cortex-m4",
                           codes.astype(np.uint8), "<i4", reference.shape[1])
            size = model_sections(folder, folder, "cortex-m4")
            per_step = profiled.steps / len(codes)
            layers = list(gen.layers)
            # the steps are the layers (max poolings are fused into their convolutions)
            measured = per_step[:len(layers)] if len(per_step) == len(layers) else None
            row = {"model": path, "kernels": form,
                   "ticks_per_image": float(timed.times.mean()),
                   "bit_exact": bool(np.array_equal(timed.logits, reference)
                                     and np.array_equal(profiled.logits, reference)),
                   "flash_bytes": size["flash"], "ram_bytes": size["ram"],
                   "layers": [{"layer": p.name, "form": p.form, "nonzero_macs": p.nonzero_macs,
                               "predicted_ticks": p.predicted_instructions / INSTRUCTIONS_PER_TICK,
                               "measured_ticks": None if measured is None else float(m)}
                              for p, m in zip(layers, measured if measured is not None
                                              else [None] * len(layers))]}
            rows.append(row)
            print(f"{path} {form:9s} {row['ticks_per_image']:10,.0f} ticks/image  flash "
                  f"{size['flash']:8,} B  RAM {size['ram']:6,} B  "
                  f"{'bit-exact' if row['bit_exact'] else 'DIFFERS'}")
            for layer in row["layers"]:
                m = layer["measured_ticks"]
                print(f"    {layer['layer']:20s} {layer['form']:8s} {layer['nonzero_macs']:9,} MACs "
                      f"predicted {layer['predicted_ticks']:9,.0f}  measured "
                      + ("n/a" if m is None else f"{m:9,.0f} ({layer['predicted_ticks'] / m:4.2f}×)"))
    write_results(Path(args.out), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
