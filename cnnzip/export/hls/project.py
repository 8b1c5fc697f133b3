"""hls4ml projects for FPGAs from the integer model (:class:`IntModel`): its shell
(:mod:`cnnzip.export.hls.shell`) read by hls4ml's PyTorch converter with every layer's precision
set, the requantization scales set exactly, written as a Vivado project and, for a check,
compiled (g++) and run as its C simulation. The simulation computes the integer reference's
logits bit for bit. hls4ml's PyTorch reader takes no grouped or depthwise convolutions; its
io_stream simulation is wrong on joins: both are refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnzip.export.ir.ops import Add, Concat, GlobalAvgPool, IntModel, LoweringError
from cnnzip.export.hls.shell import Shell, build_shell

STRATEGIES = ("Latency", "Resource")
STREAM_UNSUPPORTED = (Add, Concat, GlobalAvgPool)
IO_TYPES = ("io_parallel", "io_stream")


def hls_config(shell: Shell, in_shape: tuple[int, ...], *, reuse_factor: int = 1,
               strategy: str = "Latency") -> dict[str, Any]:
    """hls4ml's configuration of the shell: every layer's precision set from the shell."""
    import hls4ml

    config = hls4ml.utils.config_from_pytorch_model(
        shell.module, tuple(in_shape), granularity="name", backend="Vivado",
        default_precision="ap_fixed<16,6>", default_reuse_factor=reuse_factor)
    config["Model"]["Strategy"] = strategy
    names = config["LayerName"]
    missing = set(shell.layers) - set(names)
    if missing:
        raise LoweringError(f"hls4ml did not keep the shell's layers {sorted(missing)}")
    names[shell.input_name]["Precision"]["result"] = shell.input_precision
    for name, layer in shell.layers.items():
        precision = names[name].setdefault("Precision", {})
        precision.update(layer.precision)
        names[name]["ReuseFactor"] = reuse_factor
    return config


def convert(shell: Shell, in_shape: tuple[int, ...], out_dir: str, *, reuse_factor: int = 1,
            strategy: str = "Latency", io_type: str = "io_parallel", part: str | None = None):
    """The hls4ml model of the shell (written to ``out_dir`` when written or compiled), with
    the scale factors set exactly (hls4ml reads float32 parameters)."""
    import hls4ml

    config = hls_config(shell, in_shape, reuse_factor=reuse_factor, strategy=strategy)
    kwargs = {"part": part} if part else {}
    hls_model = hls4ml.converters.convert_from_pytorch_model(
        shell.module, output_dir=out_dir, project_name="cnnzip", hls_config=config,
        backend="Vivado", io_type=io_type, **kwargs)
    for name, layer in shell.layers.items():
        if layer.scale is not None:
            hls_layer = hls_model.graph.get(name)
            if hls_layer is None or "scale" not in hls_layer.weights:
                raise LoweringError(f"{name}: hls4ml merged the requantization into another "
                                     "layer; its scale would not be exact")
            hls_layer.weights["scale"].data = layer.scale.copy()
            hls_layer.weights["bias"].data = np.full(layer.scale.shape, float(layer.bias))
    return hls_model


def predict(hls_model, shell: Shell, codes: np.ndarray, *, progress=None) -> np.ndarray:
    """The compiled project's outputs (its C simulation) for the integer model's input
    ``codes``: one row of logits per image (``progress(n)`` after each chunk)."""
    out = []
    for start in range(0, len(codes), 100):
        chunk = shell.centre(codes[start:start + 100])
        out.append(np.asarray(hls_model.predict(chunk), np.float64).reshape(len(chunk), -1))
        if progress is not None:
            progress(len(chunk))
    return np.rint(np.concatenate(out)).astype(np.int64)


@dataclass(frozen=True)
class HlsOptions:
    """How hls4ml builds the design: multipliers shared ``reuse_factor`` ways, its
    ``Latency`` or ``Resource`` strategy, ``io_parallel`` or ``io_stream`` interfaces, and
    the FPGA part (hls4ml's default when None)."""

    reuse_factor: int = 1
    strategy: str = "Latency"
    io_type: str = "io_parallel"
    part: str | None = None

    def __post_init__(self):
        if self.reuse_factor < 1:
            raise ValueError("the reuse factor must be at least 1")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
        if self.io_type not in IO_TYPES:
            raise ValueError(f"io type {self.io_type!r}: choose one of {', '.join(IO_TYPES)}")


def export_project(int_model: IntModel, in_shape: tuple[int, ...], out, options: HlsOptions,
                   *, check=None, quiet: bool = False) -> dict[str, Any]:
    """Write the hls4ml project of ``int_model`` to the folder ``out`` (whole or not at all).

    ``check``: (integer input codes, labels, cnnzip's predictions) of test images; the project
    is then compiled (its C simulation, g++) and run on them, and the result has its
    accuracy, its top-1 agreement with cnnzip's model and with the integer reference, and how
    many images' logits equal the reference's exactly.

    Raises:
        LoweringError: an operation hls4ml cannot take (named); nothing is written.
    """
    import contextlib
    import io
    import time

    from cnnzip.fileio import atomic_dir
    from cnnzip.progress import progress_bar

    if options.io_type == "io_stream":
        joins = [n.name for n in int_model.nodes if isinstance(n.op, STREAM_UNSUPPORTED)]
        if joins:
            raise LoweringError(f"{joins[0]}: hls4ml's io_stream C simulation does not "
                                 "compute residual adds, concatenations or global average "
                                 "pooling as io_parallel does (measured: wrong logits); "
                                 "export with --io-type parallel")
    shell = build_shell(int_model, in_shape)
    result: dict[str, Any] = {
        "reuse_factor": options.reuse_factor, "strategy": options.strategy,
        "io_type": options.io_type, "part": options.part,
        "precisions": {name: {"source": layer.source, **layer.precision}
                       for name, layer in shell.layers.items()},
        "accumulator_bits": shell.accumulators}
    chatter = io.StringIO()  # hls4ml prints every layer it reads and writes
    with atomic_dir(out) as tmp:
        with contextlib.redirect_stdout(chatter):
            hls_model = convert(shell, in_shape, str(tmp), reuse_factor=options.reuse_factor,
                                strategy=options.strategy, io_type=options.io_type,
                                part=options.part)
            hls_model.write()
        if check is not None:
            codes, labels, predicted = check
            with progress_bar(disable=quiet) as bar:
                task = bar.add_task("hls4ml: compiling the C simulation (g++)", total=None,
                                    status="")
                start = time.perf_counter()
                with contextlib.redirect_stdout(chatter):
                    hls_model.compile()
                result["compile_seconds"] = round(time.perf_counter() - start, 1)
                bar.update(task, total=1, completed=1, status="done")
                task = bar.add_task("hls4ml: C simulation", total=len(codes), status="")
                start = time.perf_counter()
                logits = predict(hls_model, shell, codes,
                                 progress=lambda n: bar.advance(task, n))
                result["simulation_seconds"] = round(time.perf_counter() - start, 1)
            reference = np.concatenate([int_model(codes[i:i + 500])
                                        for i in range(0, len(codes), 500)])
            top1, diff = logits.argmax(1), np.abs(logits - reference).max(1)
            result.update(
                samples=len(codes),
                hls_accuracy=float((top1 == labels).mean()),
                agreement=float((top1 == predicted).mean()),
                agreement_with_reference=float((top1 == reference.argmax(1)).mean()),
                logits_equal_reference=float((diff == 0).mean()),
                largest_logit_difference=int(diff.max(initial=0)))
        config = tmp / "hls4ml_config.yml"  # names the folder it was written to: the final one
        if config.is_file():
            config.write_text(config.read_text().replace(str(tmp), str(out)))
    return result
