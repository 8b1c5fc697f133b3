"""``cnnzip bench``: measured throughput of a compressed model against its baseline."""

from __future__ import annotations

import argparse

from cnnzip import api
from cnnzip.cli.common import add_trust_arg, positive_int, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measured throughput: baseline against compressed",
                       description="Time both models in this process and runtime (PyTorch on "
                                   "the CPU) on the same fixed batch, alternating rounds, and "
                                   "report images per second and the speed-up.")
    p.add_argument("baseline", metavar="BASE", help="the original checkpoint")
    p.add_argument("compressed", metavar="COMPRESSED", help="a .cnz container or checkpoint")
    p.add_argument("--batch-size", type=positive_int, default=256, help="default 256")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="alternating timing rounds, default 3")
    add_trust_arg(p)
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                   help="also time both in onnxruntime (the baseline float, the compressed model "
                        "int8 where quantized); default: when the compressed model is quantized")
    p.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    r = api.bench_files(args.baseline, args.compressed, batch_size=args.batch_size,
                        rounds=args.rounds, onnx=args.onnx, trust_code=args.trust_code)
    if args.json:
        print_json(r)
    else:
        print(f"baseline   {r['baseline_images_per_s']:10.0f} images/s\n"
              f"compressed {r['compressed_images_per_s']:10.0f} images/s\n"
              f"speed-up   {r['speedup']:10.2f}×  (batch {r['batch_size']}, {r['runtime']}"
              + (", compressed model simulated in float)" if r["compressed_simulated"] else ")"))
        if r["baseline_batchnorms_folded"]:
            print(f"against the baseline with its {r['baseline_batchnorms_folded']} BatchNorms "
                  f"folded ({r['baseline_folded_images_per_s']:.0f} images/s): "
                  f"{r['speedup_vs_folded_baseline']:.2f}×")
        ort = r.get("onnxruntime")
        if ort:
            kind = "int8" if ort["compressed_int8"] else "fp32"
            print(f"onnxruntime: baseline fp32 {ort['baseline_fp32_images_per_s']:10.0f} images/s\n"
                  f"             compressed {kind} {ort['compressed_images_per_s']:8.0f} images/s\n"
                  f"             speed-up {ort['speedup']:.2f}× over onnxruntime fp32, "
                  f"{ort['speedup_vs_pytorch_fp32']:.2f}× over PyTorch fp32 ({ort['runtime']})")
    return 0
