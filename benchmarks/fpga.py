"""The FPGA path on real models: each compressed container exported as an hls4ml project, its
C simulation (g++) run on the Fashion-MNIST test set against cnnzip's model and the integer
reference, its DSP estimate with and without two multiplies per slice, and every convolution
of the first model computed with the bit-exact DSP48E2 packing model against the plain integer
convolution on real test images.

    python benchmarks/fpga.py FILE[:N] ... [--out runs/bench-fpga] [--reuse-factor 1]

FILE: a .cnz written by `cnnzip compress` (quantized feature maps: the int8, mcu or
fpga-lenet5 recipes); N: check on the first N test images only (default all). The float
baseline's accuracy is that of benchmarks/baselines/MODEL-fashion-mnist.safetensors.

Targets (issue 20): lenet5 pruned + quantized and resnet20 int8: top-1 agreement with cnnzip
≥ 99.5%, accuracy within 0.5 points of the float baseline; DSPs with packing ≤ 0.57× the
unpacked count; the pruned lenet5's DSPs against the dense one's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from cnnzip.api import evaluate_file, export_file, load_model
from cnnzip.api.deploy import _calibration
from cnnzip.data import batches, load_dataset
from cnnzip.export.hls.dsp import max_exact_terms, packed_conv2d
from cnnzip.export.ir.facts import value_ranges
from cnnzip.export.hls.project import HlsOptions
from cnnzip.export.ir.ops import IntLayer
from cnnzip.export.ir.lower import lower_model
from common import BASELINES


def _test_images(name: str = "fashion-mnist"):
    splits = load_dataset(name)
    images = torch.cat([x for x, _ in batches(splits.test, splits.info, 1000)])
    return images, splits.test.labels.numpy()


def baseline_accuracy(model: str, samples: int) -> tuple[float, float]:
    """The float baseline's accuracy on the first ``samples`` test images and on all."""
    base, _, _ = load_model(BASELINES / f"{model}-fashion-mnist.safetensors")
    images, labels = _test_images()
    with torch.inference_mode():
        top1 = torch.cat([base.eval()(images[i:i + 1000]).argmax(1)
                          for i in range(0, len(images), 1000)]).numpy()
    return float((top1[:samples] == labels[:samples]).mean()), float((top1 == labels).mean())


def full_test_set(path: str) -> tuple[float, float]:
    """cnnzip's and the integer reference's accuracy on the whole test set (the C simulation
    equals the reference logit for logit where it ran)."""
    model, spec, info = load_model(path)
    int_model = lower_model(model, tuple(spec.in_shape),
                            _calibration(path, spec, info, None, None))
    images, labels = _test_images(info["dataset"])
    reference = np.concatenate([int_model(int_model.quantize_input(images[i:i + 500]))
                                .argmax(1) for i in range(0, len(images), 500)])
    return evaluate_file(path)["accuracy"], float((reference == labels).mean())


def packing_check(path: str, images: int = 64) -> list[dict]:
    """Every ungrouped convolution of the model in ``path`` on the integer inputs it gets from
    real test images, computed two multiplies per DSP slice and as a plain convolution."""
    model, spec, info = load_model(path)
    int_model = lower_model(model, tuple(spec.in_shape),
                            _calibration(path, spec, info, None, None))
    splits = load_dataset(info["dataset"])
    x, _ = next(iter(batches(splits.test, splits.info, images)))
    values = {-1: int_model.quantize_input(x)}
    ranges = value_ranges(int_model)
    rows = []
    for k, node in enumerate(int_model.nodes):
        op = node.op
        inputs = [values[i] for i in node.inputs]
        values[k] = op(*inputs)
        if not isinstance(op, IntLayer) or op.kind != "conv" or op.groups != 1:
            continue
        centred = inputs[0] - op.in_zero
        plain = op.accumulate(inputs[0]) - op.bias.reshape(1, -1, 1, 1)
        packed = packed_conv2d(op.weight, centred, op.stride, op.padding)
        w = (int(op.weight.min()), int(op.weight.max()))
        rows.append({"layer": node.name, "outputs": int(plain.size),
                     "terms_per_slice": max_exact_terms(w, ranges[node.inputs[0]]),
                     "equal": bool(np.array_equal(packed, plain))})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", metavar="FILE[:N]")
    parser.add_argument("--out", default="runs/bench-fpga")
    parser.add_argument("--reuse-factor", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for item in args.files:
        path, _, n = item.partition(":")
        _, spec, _ = load_model(path)
        r = export_file(path, Path(args.out) / Path(path).parent.name, format="hls4ml",
                        check=True, samples=int(n) if n else None,
                        hls=HlsOptions(reuse_factor=args.reuse_factor))
        t = r["resources"]["total"]
        base_acc, base_full = baseline_accuracy(spec.name, r["samples"])
        full, reference_full = full_test_set(path)
        rows.append({"file": path, "model": spec.name, "samples": r["samples"],
                     "baseline_accuracy": base_acc, "baseline_accuracy_full": base_full,
                     "cnnzip_accuracy_full": full, "reference_accuracy_full": reference_full,
                     "cnnzip_accuracy": r["accuracy"], "hls_accuracy": r["hls_accuracy"],
                     "agreement": r["agreement"],
                     "agreement_with_reference": r["agreement_with_reference"],
                     "logits_equal_reference": r["logits_equal_reference"],
                     "compile_seconds": r["compile_seconds"],
                     "simulation_seconds": r["simulation_seconds"],
                     "accumulator_bits": r["accumulator_bits"], **t})
        print(f"\n{spec.name} ({path}), {r['samples']} test images: float "
              f"{base_acc:.4f}, cnnzip {r['accuracy']:.4f}, hls4ml C simulation "
              f"{r['hls_accuracy']:.4f}; top-1 agreement {r['agreement']:.4f} with cnnzip, "
              f"{r['agreement_with_reference']:.4f} with the integer reference; logits equal to "
              f"the reference's on {100 * r['logits_equal_reference']:.2f}% of images; compile "
              f"{r['compile_seconds']:.0f} s, simulation {r['simulation_seconds']:.0f} s")
        print(f"  full test set: float {base_full:.4f}, cnnzip {full:.4f}, integer reference "
              f"{reference_full:.4f}")
        print(f"  DSPs (reuse {args.reuse_factor}): {t['dsp']:,} unpacked, {t['dsp_packed']:,} "
              f"packed ({t['packed_vs_unpacked']:.3f}×), {t['dsp_nonzero']:,} without zero "
              f"weights, {t['dsp_nonzero_packed']:,} both; on-chip weights "
              f"{t['weight_storage_bits'] // 8:,} B, non-zero {t['nonzero_storage_bits'] // 8:,} B")
    packing = packing_check(args.files[0].partition(":")[0])
    print(f"\nDSP packing model on {Path(args.files[0]).parent.name}'s convolutions (64 test "
          "images): " + "; ".join(f"{p['layer']}: {p['outputs']:,} accumulators, "
                                  f"{p['terms_per_slice']} products per slice, "
                                  f"{'equal' if p['equal'] else 'DIFFERENT'}" for p in packing))
    out = Path(args.out) / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "packing": packing}, indent=2))
    print(f"results in {out}")
    return 0 if all(p["equal"] for p in packing) else 1


if __name__ == "__main__":
    raise SystemExit(main())
