"""The Python API behind the CLI: train a baseline, evaluate a file, inspect a model."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnzip import metrics
from cnnzip.metrics import bench_models, runtime_name
from cnnzip.data import Splits, load_dataset
from cnnzip.errors import CnnzipError
from cnnzip.models import (ModelSpec, build_model, load_checkpoint, resolve_spec,
                           save_checkpoint)
from cnnzip.models.checkpoint import assert_finite
from cnnzip.pipeline import compress
from cnnzip.train import TrainConfig, evaluate, fit

__all__ = ["bench_files", "bench_models", "compress", "evaluate_file", "inspect_file",
           "inspect_model", "inspect_name", "load_model", "runtime_name", "train_baseline"]


def input_record(splits: Splits) -> dict[str, Any]:
    """What a checkpoint records about its inputs (so a deployed model can normalise them)."""
    info = splits.info
    return {"dataset": info.name, "mean": list(info.mean), "std": list(info.std)}


def train_baseline(model: str, dataset: str, out: str | Path, *,
                   data_dir: str | Path | None = None, width: float | None = None,
                   config: TrainConfig = TrainConfig(), quiet: bool = False,
                   command: str | None = None) -> dict[str, Any]:
    """Train a model from scratch, evaluate it on the test set and save a checkpoint.

    Returns:
        A summary: model, dataset, epochs, seed, validation and test accuracy, seconds, file.
    """
    splits = load_dataset(dataset, data_dir, seed=config.seed)
    spec = resolve_spec(model, splits.info.in_shape, splits.info.num_classes, width)
    torch.manual_seed(config.seed)
    net = build_model(spec)
    start = time.perf_counter()
    result = fit(net, splits, config, quiet=quiet, description=f"train {model}")
    seconds = time.perf_counter() - start
    assert_finite(net, f"training {model}")
    summary = {
        "model": spec.name, "width": spec.width, "dataset": dataset,
        "epochs": config.epochs, "seed": config.seed,
        "val_accuracy": evaluate(net, splits.val, splits.info),
        "test_accuracy": evaluate(net, splits.test, splits.info),
        "train_seconds": round(seconds, 1),
        "params": metrics.count_params(net),
        "macs": metrics.count_macs(net, spec.in_shape),
        "config": asdict(config),
    }
    if command:
        summary["command"] = command
    save_checkpoint(out, net, spec, input=input_record(splits), extra=summary)
    return {**summary, "file": str(out), "val_history": result.val_accuracy}


def load_model(path: str | Path) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Load any model file cnnzip writes (.safetensors checkpoint or .cnz container); returns
    the model, its spec and input record."""
    from cnnzip.codec import FORMAT, decode_file
    from cnnzip.models.checkpoint import read_metadata

    if FORMAT in read_metadata(path):
        return decode_file(path)
    ckpt = load_checkpoint(path)
    return ckpt.model, ckpt.spec, ckpt.input


def evaluate_file(path: str | Path, dataset: str | None = None, *,
                  data_dir: str | Path | None = None) -> dict[str, Any]:
    """Test-set accuracy of the model stored in ``path``.

    Args:
        path: a checkpoint written by cnnzip.
        dataset: the dataset name; defaults to the one recorded in the file.
        data_dir: where the dataset's files are.
    """
    model, spec, input_info = load_model(path)
    dataset = dataset or input_info.get("dataset")
    if not dataset:
        raise CnnzipError(f"{path}: no dataset recorded in the file; pass --dataset")
    splits = load_dataset(dataset, data_dir)
    if tuple(splits.info.in_shape) != tuple(spec.in_shape):
        raise CnnzipError(f"{path}: model takes inputs of shape {spec.in_shape} but {dataset} "
                          f"has {splits.info.in_shape}")
    start = time.perf_counter()
    accuracy = evaluate(model, splits.test, splits.info)
    return {"file": str(path), "model": spec.name, "dataset": dataset, "accuracy": accuracy,
            "samples": len(splits.test), "seconds": round(time.perf_counter() - start, 3)}


def inspect_model(model: nn.Module, spec: ModelSpec) -> dict[str, Any]:
    """Counts and the per-layer table of a model."""
    return {"model": spec.name, "width": spec.width, "in_shape": list(spec.in_shape),
            **metrics.summarize(model, spec.in_shape)}


def inspect_file(path: str | Path) -> dict[str, Any]:
    """``inspect_model`` of the model stored in ``path``."""
    model, spec, _ = load_model(path)
    return {"file": str(path), **inspect_model(model, spec)}


def inspect_name(name: str, in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
                 width: float | None = None) -> dict[str, Any]:
    """``inspect_model`` of a freshly built zoo or user model."""
    spec = resolve_spec(name, in_shape, num_classes, width)
    return inspect_model(build_model(spec), spec)


def bench_files(baseline: str | Path, compressed: str | Path, *, batch_size: int = 256,
                rounds: int = 3, min_seconds: float = 1.0) -> dict[str, Any]:
    """Throughput of two model files timed alternately in this process and runtime
    (:func:`bench_models`).

    Codebook layers are materialised to dense layers first (the same weights), so the figure is
    that of the model as it runs, not of decoding.
    """
    from cnnzip.modules import materialize

    models, specs = {}, []
    for key, path in (("baseline", baseline), ("compressed", compressed)):
        model, spec, _ = load_model(path)
        models[key] = materialize(model).eval()
        specs.append(spec)
    shapes = {tuple(spec.in_shape) for spec in specs}
    if len(shapes) != 1:
        raise CnnzipError(f"the two models take different inputs: {sorted(shapes)}")
    best = bench_models(models, shapes.pop(), batch_size=batch_size, rounds=rounds,
                        min_seconds=min_seconds)
    return {"baseline": str(baseline), "compressed": str(compressed),
            "baseline_images_per_s": best["baseline"],
            "compressed_images_per_s": best["compressed"],
            "speedup": best["compressed"] / best["baseline"], "batch_size": batch_size,
            "runtime": runtime_name()}
