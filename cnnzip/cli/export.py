"""``cnnzip export``: a deployable artifact (ONNX, C, an hls4ml project) from a model file."""

from __future__ import annotations

import argparse

from cnnzip import api
from cnnzip.cli.common import add_data_args, add_trust_arg, positive_int, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write ONNX (int8 where quantized), integer-only C, an "
                                      "int8 .tflite or an hls4ml project",
                       description="Write the model as ONNX (quantized layers become "
                                   "QuantizeLinear/DequantizeLinear pairs with cnnzip's own "
                                   "scales and zero points and int8 weights, which onnxruntime "
                                   "runs with integer kernels; other layers stay float) or, "
                                   "with --format c, as integer-only C99 in a folder: model.h, "
                                   "model.c (weights as const data or code, one static arena, "
                                   "no float, no malloc) and a main.c that runs IDX test "
                                   "images; or, with --format tflite, as an int8 .tflite for "
                                   "TensorFlow Lite Micro (TensorFlow Lite's int8 "
                                   "quantization, NHWC; the normalisation and the input and "
                                   "logit grids in its 'cnnzip' metadata); or, with --format "
                                   "hls4ml, as an hls4ml project for "
                                   "FPGAs (integer weights at their own bits, accumulators "
                                   "wide enough never to overflow, the requantization exact). "
                                   "C, tflite and hls4ml need quantized feature maps (the int8 or "
                                   "mcu recipe); --calibrate quantizes a float or "
                                   "weight-shared model's on training images first.")
    p.add_argument("file", metavar="FILE", help="a .cnz container or .safetensors checkpoint")
    p.add_argument("--format", choices=api.EXPORT_FORMATS, default="onnx",
                   help="default onnx")
    p.add_argument("--float", dest="int8", action="store_false",
                   help="write quantized layers as float layers with their rounded weights")
    p.add_argument("--check", action="store_true",
                   help="run the export on the full test set (onnxruntime; the C compiled "
                        "with gcc; the .tflite in TensorFlow Lite Micro's interpreter; hls4ml's "
                        "C simulation, compiled with g++) and report its accuracy and "
                        "agreement")
    p.add_argument("--kernels", choices=api.KERNEL_POLICIES, default="balanced",
                   help="C only: each layer's kernel. dense: every weight from an array; "
                        "sparse: non-zero weights with their input offsets, zeros skipped; "
                        "unrolled: non-zero weights as immediates in straight-line code "
                        "(most flash); simd: unrolled over four output columns at once in "
                        "16-bit lanes (stride-1 convolutions; the fastest where weights "
                        "repeat, as in shared and low-bit layers); simd-rows: simd with each "
                        "row of a fused pooling window as its own code (faster, more flash); "
                        "packed: one byte per "
                        "non-zero weight (a code "
                        "into the layer's few weight values and the gap to the previous one), "
                        "for shared and low-bit layers; fast/small: the cost model's fastest or "
                        "smallest per layer; balanced (default): fastest, with each byte of "
                        "flash worth a few instructions")
    p.add_argument("--calibrate", action="store_true",
                   help="C, tflite: quantize float feature maps to 8 bits on training images "
                        "first (post-training; weight-shared layers keep their values on one "
                        "grid per layer), for models compressed without the int8 step")
    p.add_argument("--lut", action="store_true",
                   help="tflite only: store each layer's weights as TFLM's LUT compression (a "
                        "table of values per channel and bit-packed indices, a DECODE operator "
                        "before the layer) where that takes fewer bytes: for weight-shared and "
                        "low-bit models; the decoded weights take arena memory while their "
                        "layer runs")
    hls = p.add_argument_group("hls4ml")
    hls.add_argument("--reuse-factor", type=positive_int, default=1, metavar="N",
                     help="each multiplier serves N multiplies (fewer DSPs, N times the "
                          "cycles; default 1)")
    hls.add_argument("--strategy", choices=[s.lower() for s in api.HLS_STRATEGIES],
                     default="latency",
                     help="hls4ml's strategy: latency (weights as constants in the logic, "
                          "default) or resource (weights in BRAM)")
    hls.add_argument("--io-type", choices=[t.removeprefix("io_") for t in api.HLS_IO_TYPES],
                     default="parallel", help="parallel (default) or stream interfaces")
    hls.add_argument("--part", help="the FPGA part (default: hls4ml's)")
    hls.add_argument("--samples", type=positive_int, metavar="N",
                     help="--check on the first N test images (default all; the C simulation "
                          "of a large model takes about a second per image)")
    add_data_args(p, required=False)
    p.add_argument("--out", required=True, metavar="PATH",
                   help="the file to write (onnx, tflite) or the folder (c, hls4ml)")
    add_trust_arg(p)
    p.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.samples and not (args.check and args.format == "hls4ml"):
        raise api.ArgumentError("--samples limits hls4ml's --check; give --format hls4ml --check")
    hls = api.HlsOptions(args.reuse_factor, args.strategy.capitalize(), f"io_{args.io_type}",
                     args.part)
    r = api.export_file(args.file, args.out, format=args.format, int8=args.int8,
                        trust_code=args.trust_code, kernels=args.kernels,
                        calibrate=args.calibrate, check=args.check, dataset=args.dataset,
                        data_dir=args.data_dir, hls=hls, samples=args.samples, lut=args.lut)
    if args.json:
        print_json(r)
        return 0
    if r["format"] == "hls4ml":
        _print_hls(r, args.check)
        return 0
    if r["format"] == "tflite":
        _print_tflite(r, args.check)
        return 0
    if r["format"] == "c":
        print(f"{r['out']}: {', '.join(f'{k} {v:,} B' for k, v in r['files'].items())}; "
              f"build: cd {r['out']} && {r['compile']}")
        m = r["memory"]
        print(f"memory plan: {m['const_bytes']:,} B of constant data (flash), "
              f"{m['arena_bytes']:,} B activation arena (RAM)")
        print("kernels: " + ", ".join(f"{p['name']} {p['form']} ({p['nonzero_macs']:,} of "
                                      f"{p['macs']:,} MACs)" for p in r["layers"]))
        if args.check:
            c = r["compiled"]
            print(f"compiled (gcc -O2, model.c): .rodata {c['rodata']:,} B, .bss {c['bss']:,} B, "
                  f".text {c['text']:,} B")
            if "float_accuracy" in r:
                print(f"calibrated ({r['weights']} weights, 8-bit feature maps on "
                      f"{r['calibration_images']:,} training images): accuracy "
                      f"{r['float_accuracy']:.4f} before, {r['accuracy']:.4f} after")
            print(f"C accuracy {r['c_accuracy']:.4f}, cnnzip {r['accuracy']:.4f}, C predictions "
                  f"equal to the integer reference's on {100 * r['c_equals_reference']:.2f}% of "
                  f"{r['samples']} {r['dataset']} test images")
        return 0
    print(f"{r['out']}: {r['bytes']:,} bytes ({'int8 where quantized' if r['int8'] else 'float'}); "
          f"input: float32 NCHW, (pixel / 255 - mean) / std with mean {r['mean']}, std "
          f"{r['std']} (also in the file's metadata)")
    if args.check:
        print(f"onnxruntime accuracy {r['onnx_accuracy']:.4f}, cnnzip {r['accuracy']:.4f}, "
              f"top-1 agreement {r['agreement']:.4f} on {r['samples']} {r['dataset']} test images")
    return 0


def _print_tflite(r: dict, check: bool) -> None:
    a = r["arena"]
    print(f"{r['out']}: {r['bytes']:,} B .tflite (int8; model.cnz {r['container_bytes']:,} B); "
          f"TensorFlow Lite Micro reports a {a['total']:,} B tensor arena ({a['head']:,} B "
          f"feature maps, {a['tail']:,} B persistent)")
    if "lut" in r:
        print(f"LUT-compressed {len(r['lut'])} weight tensors ("
              + ", ".join(f"{t['bits']}-bit indices" for t in r["lut"])
              + f"); without: {r['uncompressed_bytes']:,} B file, "
              f"{r['uncompressed_arena']['total']:,} B arena")
    if check:
        print(f"TFLM accuracy {r['tflm_accuracy']:.4f}, integer reference "
              f"{r['reference_accuracy']:.4f}, cnnzip {r['accuracy']:.4f}; int8 logits equal "
              f"to the reference's on {100 * r['logits_equal_reference']:.2f}% of "
              f"{r['samples']:,} {r['dataset']} test images (largest difference "
              f"{r['largest_logit_difference']})")
        if "lut_equals_uncompressed" in r:
            print(f"LUT-compressed logits equal the uncompressed file's on "
                  f"{100 * r['lut_equals_uncompressed']:.2f}% of the images")


def _print_hls(r: dict, check: bool) -> None:
    t = r["resources"]["total"]
    print(f"{r['out']}: hls4ml project ({r['strategy']}, {r['io_type']}, reuse factor "
          f"{r['reuse_factor']}); build with Vivado/Vitis HLS: cd {r['out']} && "
          "vivado_hls -f build_prj.tcl")
    print("accumulators: " + ", ".join(f"{k} {v} bits" for k, v in r["accumulator_bits"].items()))
    print(f"DSP estimate: {t['dsp']:,} multipliers, {t['dsp_packed']:,} with two per DSP, "
          f"{t['dsp_nonzero']:,} without zero weights, {t['dsp_nonzero_packed']:,} both "
          "(cnnzip inspect FILE --hardware fpga: per layer)")
    if check:
        print(f"C simulation ({r['compile_seconds']:.0f} s to compile, "
              f"{r['simulation_seconds']:.0f} s to run): accuracy {r['hls_accuracy']:.4f}, "
              f"cnnzip {r['accuracy']:.4f}, top-1 agreement {r['agreement']:.4f} with cnnzip and "
              f"{r['agreement_with_reference']:.4f} with the integer reference; logits equal to "
              f"the reference's on {100 * r['logits_equal_reference']:.2f}% of {r['samples']} "
              f"{r['dataset']} test images (largest difference {r['largest_logit_difference']})")
