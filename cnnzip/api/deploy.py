"""The Python API for deployment: export a file as ONNX, C, TFLite or an hls4ml project, time it
as C (host or emulated Cortex-M4), estimate its FPGA resources."""

from __future__ import annotations

import importlib.util
import json
import tempfile
from copy import deepcopy
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnzip.api.files import file_splits, load_model
from cnnzip.data import batches
from cnnzip.errors import ArgumentError, CnnzipError
from cnnzip.fileio import atomic_path
from cnnzip.export import OrtModel, agreement, export_onnx
from cnnzip.export.c.writer import write
from cnnzip.export.hls.project import HlsOptions, export_project
from cnnzip.export.hls.resources import resource_report
from cnnzip.export.ir.facts import classes
from cnnzip.export.ir.lower import lower_model
from cnnzip.export.ir.lower_float import lower_float_model
from cnnzip.export.ir.ops import LoweringError
from cnnzip.export.measure import tflm
from cnnzip.export.measure.bench import Entry, bench, onnxruntime_batch1, peer_entries
from cnnzip.export.measure.toolchain import (CFLAGS, INSTRUCTIONS_PER_TICK, TARGETS,
                                             model_sections, run_exported)
from cnnzip.methods import Context
from cnnzip.methods.quant import integer_ready
from cnnzip.modules import QuantLayer
from cnnzip.surgery import ModelSpec
from cnnzip.train import evaluate


def bench_c_files(baseline: str | Path, compressed: str | Path, *, target: str = "host",
                  kernels: str = "balanced", samples: int | None = None, peer: bool = False,
                  calibrate: bool = False, dataset: str | None = None,
                  data_dir: str | Path | None = None, work: str | Path | None = None,
                  trust_code: bool = False) -> dict[str, Any]:
    """Both models as C from cnnzip's generator, compiled with the same compiler and flags for
    ``target`` (``host`` or ``cortex-m4``, :mod:`cnnzip.export.measure.bench`) and run on the first
    ``samples`` test images (default: 200 on the Cortex-M4, 1,000 on the host): the baseline as
    dense float C, the compressed model as integer C with the kernels ``kernels`` chooses, and
    as dense integer C (what sparsity and sharing add). Per model: time per image, flash, RAM,
    and the C checked against the reference. On the host, onnxruntime at batch 1 as well. With
    ``peer``, both models also through emx-onnx-cgen (ONNX to C) when it is installed.
    ``calibrate`` as in :func:`export_file`.
    """
    if target not in TARGETS:
        raise ArgumentError(f"target {target!r}: choose one of {', '.join(TARGETS)}")
    samples = samples or (200 if target == "cortex-m4" else 1000)
    base, base_spec, _ = load_model(baseline, trust_code=trust_code)
    comp, spec, info = load_model(compressed, trust_code=trust_code)
    in_shape = tuple(spec.in_shape)
    if tuple(base_spec.in_shape) != in_shape:
        raise CnnzipError(f"the two models take different inputs: {base_spec.in_shape}, "
                          f"{spec.in_shape}")
    try:
        float_model = lower_float_model(base, in_shape)
    except LoweringError as exc:
        raise CnnzipError(f"{baseline}: cannot write the baseline as C: {exc}") from None
    int_model, calibrated = _integer_model(compressed, comp, spec, info, dataset, data_dir,
                                           calibrate, "export as C")
    dataset, splits = file_splits(compressed, spec, info, dataset, data_dir)
    images = torch.cat([x for x, _ in batches(splits.test, splits.info, 1000)])[:samples]
    entries = [Entry("baseline-float", float_model, "dense"),
               Entry("compressed", int_model, kernels),
               Entry("compressed-dense", int_model, "dense")]
    out: dict[str, Any] = {"baseline": str(baseline), "compressed": str(compressed),
                           "target": target, "kernels": kernels, "samples": len(images),
                           "dataset": dataset, **calibrated}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(work) if work else Path(tmp)
        if peer:
            out["peer"] = peer_entries(base, comp, in_shape, folder, entries)
        bench(entries, in_shape, classes(float_model, in_shape), images, folder, target)
    key = "ticks_per_image" if target == "cortex-m4" else "us_per_image"
    models = {e.label: {k: v for k, v in e.result.items() if k not in ("folder", "sources")}
              for e in entries}
    base_time = models["baseline-float"][key]
    for figures in models.values():
        figures["speedup_vs_baseline"] = base_time / figures[key]
    out.update(models=models, time_unit=key)
    if target == "host":
        out["onnxruntime_batch1"] = onnxruntime_batch1(base, comp, in_shape)
    return out


def c_latency_us(path: str | Path, *, target: str = "host", clock_mhz: float | None = None,
                 samples: int = 200, dataset: str | None = None,
                 data_dir: str | Path | None = None, trust_code: bool = False) -> float:
    """Time per image of ``path`` as cnnzip's C (integer, the balanced kernels; float feature
    maps quantized to 8 bits first) on the first ``samples`` test images: µs measured on the
    host, or on the emulated Cortex-M4 its executed instructions at ``clock_mhz`` (one per
    cycle: memory wait states aside)."""
    if target == "cortex-m4" and not clock_mhz:
        raise ArgumentError("a Cortex-M4 latency needs the board's clock (--clock-mhz)")
    model, spec, info = load_model(path, trust_code=trust_code)
    int_model, _ = _integer_model(path, model, spec, info, dataset, data_dir, True, "time as C")
    _, splits = file_splits(path, spec, info, dataset, data_dir)
    images = torch.cat([x for x, _ in batches(splits.test, splits.info, samples)])[:samples]
    with tempfile.TemporaryDirectory() as tmp:
        (entry,) = bench([Entry("model", int_model)], tuple(spec.in_shape),
                         classes(int_model, tuple(spec.in_shape)), images,
                         Path(tmp), target)
    if target == "host":
        return entry.result["us_per_image"]
    return entry.result["ticks_per_image"] * INSTRUCTIONS_PER_TICK / clock_mhz


def _calibration(path: str | Path, spec: ModelSpec, input_info: dict[str, Any],
                 dataset: str | None, data_dir: str | Path | None) -> torch.Tensor | None:
    """The first 512 training images of the model's dataset (normalised), from which the
    integer lowering sets the grid of a tensor no quantized layer reads directly (a residual
    sum before average pooling); None when the dataset is not at hand."""
    try:
        _, splits = file_splits(path, spec, input_info, dataset, data_dir)
    except CnnzipError:
        return None
    return next(iter(batches(splits.train, splits.info, 512)))[0]


def _integer_ready(path: str | Path, model: torch.nn.Module, spec: ModelSpec,
                   input_info: dict[str, Any], dataset: str | None,
                   data_dir: str | Path | None) -> dict[str, Any]:
    """``model`` made computable in integers by post-training quantization of its float
    feature maps (:func:`cnnzip.methods.quant.integer_ready`), on the model's dataset."""
    _, splits = file_splits(path, spec, input_info, dataset, data_dir)
    return integer_ready(model, Context(splits, finetune_epochs=0, quiet=True))


def _integer_model(path: str | Path, model: torch.nn.Module, spec: ModelSpec,
                   input_info: dict[str, Any], dataset: str | None,
                   data_dir: str | Path | None, calibrate: bool, what: str,
                   logits: str = "int32"):
    """``model`` in integers (:func:`cnnzip.export.ir.lower.lower_model`, ``logits`` as
    there), its float feature maps quantized first with ``calibrate``; what cannot be lowered
    is one line naming it and ``what`` was attempted. Returns the integer model and the
    calibration's record."""
    calibrated = _integer_ready(path, model, spec, input_info, dataset, data_dir) \
        if calibrate else {"calibrated": False}
    try:
        return lower_model(model, tuple(spec.in_shape),
                           _calibration(path, spec, input_info, dataset, data_dir),
                           logits), calibrated
    except LoweringError as exc:
        raise CnnzipError(f"{path}: cannot {what}: {exc}") from None


def _export_c(path: str | Path, model: torch.nn.Module, spec: ModelSpec,
              input_info: dict[str, Any], out: Path, check: bool, dataset: str | None,
              data_dir: str | Path | None, kernels: str, calibrate: bool) -> dict[str, Any]:
    """Integer-only C99 in ``out`` (model.h, model.c, main.c), each layer's kernel chosen by
    ``kernels``; with ``calibrate``, float feature maps quantized first; with ``check``,
    compiled with gcc and run on the full test set: every prediction compared with the numpy
    reference's."""
    float_model = deepcopy(model) if calibrate and check else None
    int_model, calibrated = _integer_model(path, model, spec, input_info, dataset, data_dir,
                                           calibrate, "export as C")
    mean, std = input_info.get("mean"), input_info.get("std")
    if not mean or not std:
        raise CnnzipError(f"{path}: no input normalisation recorded; the C needs it to turn "
                          "pixels into the first layer's integers")
    try:
        files, gen = write(int_model, tuple(spec.in_shape), tuple(mean), tuple(std), out, kernels)
    except LoweringError as exc:
        raise CnnzipError(f"{path}: cannot export as C: {exc}") from None
    result: dict[str, Any] = {"file": str(path), "out": str(out), "format": "c",
                              "files": files, "bytes": sum(files.values()), "memory": gen.memory,
                              "kernels": kernels, "layers": [asdict(p) for p in gen.layers],
                              "compile": f"gcc {' '.join(CFLAGS)} model.c main.c -o infer",
                              **calibrated}
    if not check:
        return result
    dataset, splits = file_splits(path, spec, input_info, dataset, data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        result["compiled"] = model_sections(out, Path(tmp))
        predicted = run_exported(out, splits.test.images, Path(tmp))
    reference = np.concatenate([int_model(int_model.quantize_input(x)).argmax(1)
                                for x, _ in batches(splits.test, splits.info, 1000)])
    labels = splits.test.labels.numpy()
    result.update(dataset=dataset, samples=len(predicted),
                  c_accuracy=float((predicted == labels).mean()),
                  accuracy=evaluate(model, splits.test, splits.info),
                  c_equals_reference=float((predicted == reference).mean()))
    if float_model is not None and calibrated["calibrated"]:
        result["float_accuracy"] = evaluate(float_model, splits.test, splits.info)
    return result


def _export_tflite(path: str | Path, model: torch.nn.Module, spec: ModelSpec,
                   input_info: dict[str, Any], out: Path, check: bool, dataset: str | None,
                   data_dir: str | Path | None, calibrate: bool, lut: bool) -> dict[str, Any]:
    """An int8 ``.tflite`` from the integer model lowered with 8-bit logits
    (:mod:`cnnzip.export.tflite.writer`), with ``lut`` its weights LUT-compressed where that
    saves bytes (:mod:`cnnzip.export.tflite.lut`); with ``check``, run in TensorFlow Lite
    Micro's interpreter on the full test set, its int8 logits compared with the reference's
    (and, with ``lut``, the uncompressed file's)."""
    if importlib.util.find_spec("tflite_micro") is None:
        raise CnnzipError(f"tflite-micro is not installed: {tflm.INSTALL}")
    # imported here: the schema comes with tflite-micro, a wheel for Linux x86-64 only
    from cnnzip.export.tflite import lut as luts
    from cnnzip.export.tflite.writer import OFFSET, int8_nhwc, tflite_bytes

    int_model, calibrated = _integer_model(path, model, spec, input_info, dataset, data_dir,
                                           calibrate, "export for TensorFlow Lite", "int8")
    grid = int_model.grids[-1]
    metadata = {"model": spec.name, "mean": input_info.get("mean"),
                "std": input_info.get("std"), "layout": "NHWC",
                "input": {"scale": int_model.in_scale, "zero_point": int_model.in_zero - OFFSET},
                "logits": {"scale": grid.scale, "zero_point": grid.zero - OFFSET}}
    try:
        written = tflite_bytes(int_model, tuple(spec.in_shape), metadata)
    except LoweringError as exc:
        raise CnnzipError(f"{path}: cannot export for TensorFlow Lite: {exc}") from None
    data, tables = written.data, []
    if lut:
        tables = luts.plan(written.weights)
        if not tables:
            raise CnnzipError(f"{path}: no layer's weights take fewer bytes as LUT tables and "
                              f"indices of at most {luts.MAX_INDEX_BITS} bits (share or "
                              "quantize them to fewer values first)")
        data = luts.compressed(written.data, tables)
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(data)
    result: dict[str, Any] = {"file": str(path), "out": str(out), "format": "tflite",
                              "bytes": len(data), "arena": tflm.arena(data),
                              "container_bytes": Path(path).stat().st_size, **calibrated}
    if lut:
        result.update(uncompressed_bytes=len(written.data),
                      uncompressed_arena=tflm.arena(written.data),
                      lut=[asdict(t) for t in tables])
    if not check:
        return result
    dataset, splits = file_splits(path, spec, input_info, dataset, data_dir)
    codes = np.concatenate([int_model.quantize_input(x)
                            for x, _ in batches(splits.test, splits.info, 1000)])
    reference = int_model(codes).astype(np.int64) - OFFSET
    inputs = int8_nhwc(codes)
    outputs = tflm.run(data, inputs, quiet=False).astype(np.int64)
    labels = splits.test.labels.numpy()
    difference = np.abs(outputs - reference).max(1)
    result.update(dataset=dataset, samples=len(codes),
                  tflm_accuracy=float((outputs.argmax(1) == labels).mean()),
                  reference_accuracy=float((reference.argmax(1) == labels).mean()),
                  accuracy=evaluate(model, splits.test, splits.info),
                  logits_equal_reference=float((difference == 0).mean()),
                  largest_logit_difference=int(difference.max()))
    if lut:
        plain = tflm.run(written.data, inputs, quiet=False).astype(np.int64)
        result["lut_equals_uncompressed"] = float((plain == outputs).all(1).mean())
    return result


def _export_hls4ml(path: str | Path, model: torch.nn.Module, spec: ModelSpec,
                   input_info: dict[str, Any], out: Path, check: bool, dataset: str | None,
                   data_dir: str | Path | None, calibrate: bool, options: Any,
                   samples: int | None) -> dict[str, Any]:
    """An hls4ml project in ``out`` from the integer model (:mod:`cnnzip.export.hls.project`), with
    its FPGA resource estimate; with ``check``, its C simulation run on the first
    ``samples`` test images (default all) against cnnzip's model and the integer
    reference."""
    if importlib.util.find_spec("hls4ml") is None:
        raise CnnzipError("hls4ml is not installed: pip install hls4ml==1.3.0 (scripts/setup.sh "
                          "installs it)")
    int_model, calibrated = _integer_model(path, model, spec, input_info, dataset, data_dir,
                                           calibrate, "export for hls4ml")
    in_shape = tuple(spec.in_shape)
    test = None
    if check:
        dataset, splits = file_splits(path, spec, input_info, dataset, data_dir)
        images = torch.cat([x for x, _ in batches(splits.test, splits.info, 1000)])[:samples]
        with torch.inference_mode():
            predicted = torch.cat([model.eval()(images[i:i + 1000]).argmax(1)
                                   for i in range(0, len(images), 1000)]).numpy()
        labels = splits.test.labels.numpy()[:len(images)]
        test = (int_model.quantize_input(images), labels, predicted)
    try:
        result = export_project(int_model, in_shape, out, options, check=test)
    except LoweringError as exc:
        raise CnnzipError(f"{path}: cannot export for hls4ml: {exc}") from None
    result = {"file": str(path), "out": str(out), "format": "hls4ml", **result, **calibrated,
              "resources": resource_report(int_model, in_shape, options.reuse_factor)}
    if check:
        result.update(dataset=dataset,
                      accuracy=float((test[2] == test[1]).mean()))
    return result


def fpga_resources(path: str | Path, *, reuse_factor: int = 1, calibrate: bool = False,
                   dataset: str | None = None, data_dir: str | Path | None = None,
                   trust_code: bool = False) -> dict[str, Any]:
    """Per layer and in total, what the quantized model in ``path`` costs on an FPGA as
    hls4ml builds it (:mod:`cnnzip.export.hls.resources`): MACs, non-zero MACs, DSP slices at
    ``reuse_factor`` without packing, with two multiplies per slice, with zero weights
    removed, and on-chip weight bits. ``calibrate`` as in :func:`export_file`."""
    model, spec, info = load_model(path, trust_code=trust_code)
    int_model, calibrated = _integer_model(path, model, spec, info, dataset, data_dir,
                                           calibrate, "estimate FPGA resources")
    return {"file": str(path), "model": spec.name, **calibrated,
            **resource_report(int_model, tuple(spec.in_shape), reuse_factor)}


FORMATS = ("onnx", "c", "hls4ml", "tflite")


def export_file(path: str | Path, out: str | Path, *, format: str = "onnx", int8: bool = True,
                check: bool = False, dataset: str | None = None,
                data_dir: str | Path | None = None, trust_code: bool = False,
                kernels: str = "balanced", calibrate: bool = False, hls: Any = None,
                samples: int | None = None, lut: bool = False) -> dict[str, Any]:
    """Export the model in ``path`` for deployment: ONNX, quantized layers as int8 QDQ unless
    ``int8`` is False; or (``format="c"``) integer-only C99 whose layers' kernels (dense,
    sparse, unrolled, packed) are chosen by ``kernels``
    (:data:`cnnzip.export.costmodel.POLICIES`); or (``format="hls4ml"``) an hls4ml project
    built as ``hls`` (:class:`cnnzip.export.hls.HlsOptions`) says; or (``format="tflite"``)
    an int8 ``.tflite`` for TensorFlow Lite Micro (``lut``: weights with few distinct values
    stored as TFLM's LUT compression), whose ``check`` runs it in TFLM's own interpreter and
    compares its logits with the integer reference's. ``calibrate`` first
    quantizes a model's float feature maps to 8 bits on training images (weight-shared and
    float models); ``samples``: hls4ml's check on the first so many test images.

    With ``check``, the exported file runs in onnxruntime on the full test set: its accuracy
    and its top-1 agreement with cnnzip's own (PyTorch) model are returned. ``trust_code`` as
    in :func:`load_model`.
    """
    if format not in FORMATS:
        raise CnnzipError(f"export format {format!r} is not available; this cnnzip writes "
                          f"{', '.join(FORMATS)}")
    model, spec, input_info = load_model(path, trust_code=trust_code)
    if format == "tflite":
        return _export_tflite(path, model, spec, input_info, Path(out), check, dataset,
                              data_dir, calibrate, lut)
    if lut:
        raise ArgumentError("lut compresses a .tflite's weights; give format='tflite'")
    if format == "hls4ml":

        return _export_hls4ml(path, model, spec, input_info, Path(out), check, dataset,
                              data_dir, calibrate, hls or HlsOptions(), samples)
    if format == "c":
        return _export_c(path, model, spec, input_info, Path(out), check, dataset, data_dir,
                         kernels, calibrate)
    quantized = any(isinstance(m, QuantLayer) for m in model.modules())
    mean, std = input_info.get("mean"), input_info.get("std")
    size = export_onnx(model, tuple(spec.in_shape), out, int8=int8, metadata={
        "cnnzip.input": "float32 NCHW: (pixel / 255 - mean) / std per channel",
        "cnnzip.mean": json.dumps(mean), "cnnzip.std": json.dumps(std),
        "cnnzip.dataset": str(input_info.get("dataset"))})
    result: dict[str, Any] = {"file": str(path), "out": str(out), "format": format,
                              "bytes": size, "int8": int8 and quantized, "mean": mean, "std": std}
    if check:
        dataset, splits = file_splits(path, spec, input_info, dataset, data_dir)
        runtime = OrtModel(Path(out))
        images = torch.cat([x for x, _ in batches(splits.test, splits.info, 1000)])
        with torch.inference_mode():
            predicted = runtime(images).argmax(1)
        result.update(dataset=dataset, samples=len(images),
                      onnx_accuracy=float((predicted == splits.test.labels).float().mean()),
                      accuracy=evaluate(model, splits.test, splits.info),
                      agreement=agreement(model.eval(), runtime, images))
    return result
