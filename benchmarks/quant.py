"""Uniform quantization on Fashion-MNIST: compress the trained baselines with a quantization
recipe, export the container to ONNX (int8 QDQ), check it in onnxruntime on the full test set,
and time PyTorch fp32, onnxruntime fp32 and onnxruntime int8 side by side.

    python benchmarks/quant.py [--models lenet5 resnet20 vgg16] [--recipe int8|mixed|quant-prune]
        [--out runs/bench-quant] [--finetune-epochs N] [--set STEP.KEY=VALUE ...]

Targets (issue 6): int8 weights and activations after calibration lose ≤ 0.3 points on
resnet20 and vgg16; the onnxruntime model agrees with cnnzip's fake-quantized model on ≥ 99.5%
of the test set; int8 against fp32 onnxruntime throughput is measured (about 2× is typical for
mid-size CNNs on x86; a small net may not gain, and the table says so). Size is the bytes of
model.cnz against the fp32 parameters. Timing: batch 256, in this process, alternating rounds,
best of five 2-second rounds. Every figure is measured in this run.
"""

from __future__ import annotations


from cnnzip.api import bench_files, export_file
from cnnzip.codec import decode_file
from cnnzip.modules.quant import QuantLayer
from common import compress_each, recipe_parser, write_results


def _average_bits(path) -> float:
    """Weight bits averaged over the quantized layers of the container's model, as stored."""
    model, _, _ = decode_file(path)
    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    return sum(m.weight_bits * m.latent.numel() for m in layers) \
        / max(1, sum(m.latent.numel() for m in layers))


def main() -> int:
    args = recipe_parser(__doc__, ["lenet5", "resnet20", "vgg16"], "int8",
                         "runs/bench-quant").parse_args()
    rows = []
    for model, checkpoint, out, r, seconds, _ in compress_each(args):
        exported = export_file(out / "model.cnz", out / "model.onnx", check=True)
        speed = bench_files(checkpoint, out / "model.cnz", rounds=5, min_seconds=2.0, onnx=True)
        ort = speed["onnxruntime"]
        bits = r["notes"]["quantize"]["bits"]
        rows.append({"model": model, "recipe": args.recipe, "overrides": args.overrides,
                     "base_acc": r["baseline"]["accuracy"], "acc": r["compressed"]["accuracy"],
                     "drop": r["accuracy_drop"], "fp32_bytes": r["baseline"]["bytes_fp32"],
                     "cnz_bytes": r["compressed"]["container_bytes"],
                     "ratio": r["compression_ratio"],
                     "weight_bits": sorted(set(bits.values())),
                     "average_bits": _average_bits(out / "model.cnz"),
                     "base_macs": r["baseline"]["macs"], "macs": r["compressed"]["macs"],
                     "onnx_bytes": exported["bytes"], "onnx_acc": exported["onnx_accuracy"],
                     "agreement": exported["agreement"],
                     "pytorch_fp32": speed["baseline_images_per_s"],
                     "ort_fp32": ort["baseline_fp32_images_per_s"],
                     "ort_int8": ort["compressed_images_per_s"],
                     "int8_vs_ort_fp32": ort["speedup"],
                     "int8_vs_pytorch_fp32": ort["speedup_vs_pytorch_fp32"],
                     "seconds": round(seconds)})
        row = rows[-1]
        print(f"{model:9s} acc {row['base_acc']:.4f} → {row['acc']:.4f} (drop {row['drop']:.2f} "
              f"pts)  {row['fp32_bytes']:,} B → {row['cnz_bytes']:,} B = {row['ratio']:.2f}×  "
              f"{row['average_bits']:.2f} average weight bits  "
              f"MACs {row['base_macs']:,} → {row['macs']:,}  "
              f"onnxruntime int8 acc {row['onnx_acc']:.4f}, agreement {row['agreement']:.4f}  "
              f"img/s: pytorch fp32 {row['pytorch_fp32']:,.0f}, ort fp32 {row['ort_fp32']:,.0f}, "
              f"ort int8 {row['ort_int8']:,.0f} ({row['int8_vs_ort_fp32']:.2f}× ort fp32, "
              f"{row['int8_vs_pytorch_fp32']:.2f}× pytorch)  {row['seconds']} s", flush=True)
    write_results(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
