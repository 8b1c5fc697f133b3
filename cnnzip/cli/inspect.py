"""``cnnzip inspect``: per-layer table of a model file or a zoo model."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from cnnzip import api
from cnnzip.cli.common import (DATASET_HELP, MODEL_HELP, add_trust_arg, dataset_name,
                               positive_float, positive_int, print_json)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="per-layer table: shape, params, non-zeros, MACs",
                       description="Show a model's layers with shape, parameters, non-zero "
                                   "parameters and MACs (counted from a real forward pass).")
    p.add_argument("file", metavar="FILE", nargs="?",
                   help="a checkpoint or .cnz container written by cnnzip")
    p.add_argument("--model", help=MODEL_HELP + " (instead of FILE)")
    p.add_argument("--dataset", type=dataset_name, metavar="NAME",
                   help="input shape for --model (default fashion-mnist: 1×28×28): "
                        + DATASET_HELP)
    p.add_argument("--width", type=positive_float, help="width multiplier for --model")
    p.add_argument("--hardware", choices=["fpga"],
                   help="fpga: per layer, what the quantized model in FILE costs as hls4ml "
                        "builds it: MACs, non-zero MACs, DSPs without packing, two multiplies "
                        "per DSP, zero weights removed, on-chip weight bits")
    p.add_argument("--reuse-factor", type=positive_int, default=1, metavar="N",
                   help="with --hardware fpga: each multiplier serves N multiplies (default 1)")
    add_trust_arg(p)
    p.add_argument("--json", action="store_true",
                   help='print {"params", "macs", "layers", ...} as JSON on stdout')
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.model is None):
        raise api.CnnzipError("give either FILE or --model NAME")
    if args.hardware and not args.file:
        raise api.CnnzipError("--hardware fpga reads a quantized model FILE, not --model")
    if args.hardware:
        return _fpga(args)
    if args.file:
        if args.dataset is not None or args.width is not None:
            raise api.CnnzipError("--dataset and --width describe --model; a file records its own "
                              "input shape and width")
        result = api.inspect_file(args.file, trust_code=args.trust_code)
    else:
        info = api.dataset_info(args.dataset or "fashion-mnist")
        result = api.inspect_name(args.model, info.in_shape, info.num_classes, args.width)
    if args.json:
        print_json(result)
        return 0
    table = Table(title=f"{result['model']}  (input {'×'.join(map(str, result['in_shape']))})")
    for col in ("layer", "type", "shape", "params", "non-zero", "MACs"):
        table.add_column(col, justify="left" if col in ("layer", "type", "shape") else "right")
    for row in result["layers"]:
        table.add_row(row["name"], row["type"], "×".join(map(str, row["shape"])),
                      f"{row['params']:,}", f"{row['nonzero']:,}", f"{row['macs']:,}")
    table.add_section()
    table.add_row("total", "", "", f"{result['params']:,}", f"{result['nonzero_params']:,}",
                  f"{result['macs']:,}")
    Console().print(table)
    return 0


def _fpga(args: argparse.Namespace) -> int:
    result = api.fpga_resources(args.file, reuse_factor=args.reuse_factor,
                                trust_code=args.trust_code)
    if args.json:
        print_json(result)
        return 0
    table = Table(title=f"{result['model']} on an FPGA (hls4ml, reuse factor "
                        f"{result['reuse_factor']})")
    columns = [("layer", "name"), ("MACs", "macs"), ("non-0 MACs", "nonzero_macs"),
               ("w bits", "weight_bits"), ("acc bits", "accumulator_bits"), ("DSP", "dsp"),
               ("DSP 2/slice", "dsp_packed"), ("DSP non-0", "dsp_nonzero"),
               ("both", "dsp_nonzero_packed"), ("weights B", "weight_storage_bits"),
               ("non-0 B", "nonzero_storage_bits")]
    for title, _ in columns:
        table.add_column(title, justify="left" if title == "layer" else "right")

    def cell(row: dict, key: str) -> str:
        if key == "name" or key not in row:
            return str(row.get(key, ""))
        return f"{row[key] // 8 if key.endswith('storage_bits') else row[key]:,}"

    for row in result["layers"]:
        table.add_row(*(cell(row, key) for _, key in columns))
    table.add_section()
    table.add_row(*(cell({**result["total"], "name": "total"}, key) for _, key in columns))
    Console().print(table)
    total = result["total"]
    print(f"two multiplies per DSP: {total['packed_vs_unpacked']:.2f}× the DSPs; "
          f"{result['note']}")
    return 0
