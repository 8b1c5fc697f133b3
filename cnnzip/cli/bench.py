"""``cnnzip bench``: measured throughput of a compressed model against its baseline."""

from __future__ import annotations

import argparse

from cnnzip import api
from cnnzip.cli.common import add_data_args, add_trust_arg, positive_int, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measured throughput: baseline against compressed",
                       description="Time both models in this process and runtime (PyTorch on "
                                   "the CPU) on the same fixed batch, alternating rounds, and "
                                   "report images per second and the speed-up. With --c: both "
                                   "as C from cnnzip's generator (the baseline dense float, the "
                                   "compressed model integer with its chosen kernels, and dense "
                                   "integer), compiled alike for the host or a Cortex-M4 "
                                   "(emulated by qemu, counting executed instructions), timed "
                                   "per image on test images, with flash and RAM.")
    p.add_argument("baseline", metavar="BASE", help="the original checkpoint")
    p.add_argument("compressed", metavar="COMPRESSED", help="a .cnz container or checkpoint")
    p.add_argument("--batch-size", type=positive_int, default=256, help="default 256")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="alternating timing rounds, default 3")
    add_trust_arg(p)
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                   help="also time both in onnxruntime (the baseline float, the compressed model "
                        "int8 where quantized); default: when the compressed model is quantized")
    p.add_argument("--c", dest="c", action="store_true",
                   help="time C from cnnzip's generator instead of PyTorch")
    p.add_argument("--target", choices=api.C_TARGETS, default="host",
                   help="with --c: host (gcc, nanoseconds, the models alternating in one "
                        "process) or cortex-m4 (arm-none-eabi-gcc on qemu's MPS2-AN386 with "
                        "-icount: SysTick ticks of 40 instructions); default host")
    p.add_argument("--kernels", choices=api.KERNEL_POLICIES, default="balanced",
                   help="with --c: the compressed model's kernels (see cnnzip export --help)")
    p.add_argument("--samples", type=positive_int, default=None,
                   help="with --c: test images to run (default 200 on cortex-m4, 1000 on host)")
    p.add_argument("--peer", action="store_true",
                   help="with --c: also both models through emx-onnx-cgen (ONNX to C), same "
                        "compiler and flags")
    p.add_argument("--calibrate", action="store_true",
                   help="with --c: quantize the compressed model's float feature maps first "
                        "(see cnnzip export --help)")
    add_data_args(p, required=False)
    p.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.c:
        return _run_c(args)
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


def _run_c(args: argparse.Namespace) -> int:
    r = api.bench_c_files(args.baseline, args.compressed, target=args.target,
                          kernels=args.kernels, samples=args.samples, peer=args.peer,
                          calibrate=args.calibrate,
                          dataset=args.dataset, data_dir=args.data_dir,
                          trust_code=args.trust_code)
    if args.json:
        print_json(r)
        return 0
    unit = "ticks" if r["target"] == "cortex-m4" else "µs"
    how = ("SysTick ticks of 40 executed instructions" if unit == "ticks"
           else "host, models alternating")
    print(f"C on {r['target']}, {r['samples']} {r['dataset']} test images ({how})")
    print(f"{'model':18s} {unit + '/image':>12s} {'speed-up':>9s} {'flash B':>9s} {'RAM B':>7s}"
          "  check")
    for label, m in r["models"].items():
        check = ("bit-exact" if m["bit_exact"] else f"{100 * m['logits_equal']:.2f}% exact") \
            if "bit_exact" in m else (f"max |Δ| {m['max_abs_diff_vs_reference']:.1e}"
                                      if "max_abs_diff_vs_reference" in m else "")
        print(f"{label:18s} {m[r['time_unit']]:12,.1f} {m['speedup_vs_baseline']:8.2f}× "
              f"{m['flash_bytes']:9,} {m['ram_bytes']:7,}  {check}")
    kernels = r["models"]["compressed"]["kernels"]
    print("compressed kernels: " + ", ".join(f"{k} {v}" for k, v in kernels.items()))
    for label, status in r.get("peer", {}).items():
        if label != "tool" and status != "generated" or label == "error":
            print(f"peer {label}: {status}")
    ort = r.get("onnxruntime_batch1")
    if ort:
        print(f"onnxruntime batch 1: baseline {ort['baseline_us_per_image']:.1f} µs, compressed "
              f"{ort['compressed_us_per_image']:.1f} µs ({ort['speedup']:.2f}×, {ort['runtime']})")
    return 0
