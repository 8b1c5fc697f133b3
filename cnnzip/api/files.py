"""The Python API on model files: train a baseline, load, evaluate, inspect and time a file."""

from __future__ import annotations

import time
from copy import deepcopy
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from cnnzip import distributed, metrics
from cnnzip.codec import load_model, save_checkpoint
from cnnzip.codec.checkpoint import assert_finite
from cnnzip.data import Splits, load_dataset
from cnnzip.errors import ArgumentError, CnnzipError, ModelError
from cnnzip.metrics import bench_models, runtime_name
from cnnzip.surgery import ModelSpec, build_model, resolve_spec
from cnnzip.train import TrainConfig, evaluate, fit

def input_record(splits: Splits) -> dict[str, Any]:
    """What a checkpoint records about its inputs (so a deployed model can normalise them)."""
    info = splits.info
    return {"dataset": info.name, "mean": list(info.mean), "std": list(info.std),
            "split": dict(splits.split)}


def train_baseline(model: str, dataset: str, out: str | Path, *,
                   data_dir: str | Path | None = None, width: float | None = None,
                   config: TrainConfig = TrainConfig(), quiet: bool = False,
                   command: str | None = None,
                   val_size: int | float | None = None) -> dict[str, Any]:
    """Train a model from scratch, evaluate it on the test set and save a checkpoint.
    ``val_size``: training images held out for validation, a count or a fraction (as
    :func:`cnnzip.data.load_dataset` takes it); the checkpoint records the count, and
    ``compress`` holds out the same images.

    Returns:
        A summary: model, dataset, epochs, seed, validation and test accuracy, seconds, file.
    """
    splits = load_dataset(dataset, data_dir, seed=config.seed, val_size=val_size)
    spec = resolve_spec(model, splits.info.in_shape, splits.info.num_classes, width)
    torch.manual_seed(config.seed)
    net = build_model(spec, trust_code=True)  # the name is the user's own: consent
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
    if distributed.rank() == 0:  # torchrun: rank 0 alone writes
        save_checkpoint(out, net, spec, input=input_record(splits), extra=summary)
    return {**summary, "file": str(out), "val_history": result.val_accuracy}


def _state_dict(weights: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pt``/``.pth`` file (``torch.load`` with
    ``weights_only=True``: tensors and containers only, never code; a dict holding the state
    dict under ``state_dict`` or ``model`` is unwrapped)."""
    if not weights.is_file():
        raise CnnzipError(f"{weights}: file not found")
    try:
        if weights.suffix == ".safetensors":
            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is the user's input error, said in one line
        raise CnnzipError(f"{weights}: not a readable state dict ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else 'damaged'})") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CnnzipError(f"{weights}: expected a state dict (names → tensors), as "
                          "torch.save(model.state_dict(), FILE) writes")
    return state


def import_model(model: str, weights: str | Path, dataset: str, out: str | Path, *,
                 data_dir: str | Path | None = None, width: float | None = None,
                 val_size: int | None = None) -> dict[str, Any]:
    """A model you trained elsewhere as a cnnzip checkpoint: ``model`` (a zoo name or your
    ``package.module:factory``, built for ``dataset``'s input shape and classes) with the
    weights in ``weights`` (a state dict: ``.pt``/``.pth`` or ``.safetensors``), evaluated on
    the test set and saved to ``out`` with the dataset's normalisation and split recorded.

    Raises:
        CnnzipError: an unreadable weights file, names or shapes that do not match the model
            (the first few named), a dataset that is not at hand.
    """
    splits = load_dataset(dataset, data_dir, val_size=val_size)
    spec = resolve_spec(model, splits.info.in_shape, splits.info.num_classes, width)
    net = build_model(spec, trust_code=True)  # the name is the user's own: consent
    state = _state_dict(Path(weights))
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{what}: {', '.join(keys[:4])}{' …' if len(keys) > 4 else ''}"
                 for what, keys in (("missing", missing), ("not in the model", unexpected),
                                    ("other shapes", wrong)) if keys]
        raise CnnzipError(f"{weights}: does not fit {model} built for {dataset} "
                          f"({splits.info.in_shape}, {splits.info.num_classes} classes): "
                          + "; ".join(parts))
    net.load_state_dict({k: state[k].to(own[k].dtype) for k in own})
    net.eval()
    assert_finite(net, f"importing {weights}")
    summary = {"model": spec.name, "width": spec.width, "dataset": splits.info.name,
               "imported_from": str(weights),
               "val_accuracy": evaluate(net, splits.val, splits.info),
               "test_accuracy": evaluate(net, splits.test, splits.info),
               "params": metrics.count_params(net), "macs": metrics.count_macs(net, spec.in_shape)}
    save_checkpoint(out, net, spec, input=input_record(splits), extra=summary)
    return {**summary, "file": str(out)}


def file_splits(path: str | Path, spec: ModelSpec, input_info: dict[str, Any],
                dataset: str | None, data_dir: str | Path | None) -> tuple[str, Splits]:
    """The dataset a model file is evaluated on (``dataset``, else the one it records) and its
    splits; an error names the file when none is known or the inputs do not fit the model."""
    dataset = dataset or input_info.get("dataset")
    if not dataset:
        raise CnnzipError(f"{path}: no dataset recorded in the file; pass --dataset")
    splits = load_dataset(dataset, data_dir)
    if tuple(splits.info.in_shape) != tuple(spec.in_shape):
        raise CnnzipError(f"{path}: model takes inputs of shape {spec.in_shape} but {dataset} "
                          f"has {splits.info.in_shape}")
    return dataset, splits


def evaluate_file(path: str | Path, dataset: str | None = None, *,
                  data_dir: str | Path | None = None, trust_code: bool = False) -> dict[str, Any]:
    """Test-set accuracy of the model stored in ``path``.

    Args:
        path: a checkpoint or container written by cnnzip.
        dataset: the dataset name; defaults to the one recorded in the file.
        data_dir: where the dataset's files are.
        trust_code: as in :func:`load_model`.
    """
    model, spec, input_info = load_model(path, trust_code=trust_code)
    dataset, splits = file_splits(path, spec, input_info, dataset, data_dir)
    start = time.perf_counter()
    accuracy = evaluate(model, splits.test, splits.info)
    return {"file": str(path), "model": spec.name, "dataset": dataset, "accuracy": accuracy,
            "samples": len(splits.test), "seconds": round(time.perf_counter() - start, 3)}


def inspect_model(model: nn.Module, spec: ModelSpec) -> dict[str, Any]:
    """Counts and the per-layer table of a model."""
    return {"model": spec.name, "width": spec.width, "in_shape": list(spec.in_shape),
            **metrics.summarize(model, spec.in_shape)}


def inspect_file(path: str | Path, *, trust_code: bool = False) -> dict[str, Any]:
    """``inspect_model`` of the model stored in ``path`` (``trust_code`` as in
    :func:`load_model`)."""
    model, spec, _ = load_model(path, trust_code=trust_code)
    return {"file": str(path), **inspect_model(model, spec)}


def inspect_name(name: str, in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
                 width: float | None = None) -> dict[str, Any]:
    """``inspect_model`` of a freshly built zoo or user model."""
    spec = resolve_spec(name, in_shape, num_classes, width)
    return inspect_model(build_model(spec, trust_code=True), spec)  # the user's own name


def bench_files(baseline: str | Path, compressed: str | Path, *, batch_size: int = 256,
                rounds: int = 3, min_seconds: float = 1.0, onnx: bool | None = None,
                trust_code: bool = False) -> dict[str, Any]:
    """Throughput of two model files timed alternately in this process and runtime
    (:func:`bench_models`).

    Codebook layers are materialised to dense layers first (the same weights), so the figure is
    that of the model as it runs, not of decoding. With ``onnx`` (default: when the compressed
    model is quantized) both are also exported and timed in onnxruntime, the baseline in float
    and the compressed model with its integer kernels, in the same rounds; PyTorch runs a
    quantized model as simulated (fake-quantized) float arithmetic. ``trust_code`` as in
    :func:`load_model`.
    """
    from cnnzip.modules.quant import QuantLayer
    from cnnzip.surgery import materialize

    if batch_size < 1 or rounds < 1 or not min_seconds > 0:
        raise ArgumentError(f"batch size ({batch_size}) and rounds ({rounds}) must be at least 1 "
                            f"and the round time ({min_seconds} s) positive")
    models, specs = {}, []
    for key, path in (("baseline", baseline), ("compressed", compressed)):
        model, spec, _ = load_model(path, trust_code=trust_code)
        models[key] = materialize(model).eval()
        specs.append(spec)
    shapes = {tuple(spec.in_shape) for spec in specs}
    if len(shapes) != 1:
        raise CnnzipError(f"the two models take different inputs: {sorted(shapes)}")
    shape = shapes.pop()
    folded, n_folded = folded_copy(models["baseline"])
    if folded is not None:
        models["baseline_folded"] = folded
    quantized = any(isinstance(m, QuantLayer) for m in models["compressed"].modules())
    if onnx if onnx is not None else quantized:
        from cnnzip.export import OrtModel, to_onnx

        models["baseline_ort"] = OrtModel(to_onnx(models["baseline"], shape, int8=False))
        models["compressed_ort"] = OrtModel(to_onnx(models["compressed"], shape))
    best = bench_models(models, shape, batch_size=batch_size, rounds=rounds,
                        min_seconds=min_seconds)
    out = {"baseline": str(baseline), "compressed": str(compressed),
           "baseline_images_per_s": best["baseline"],
           "compressed_images_per_s": best["compressed"],
           "speedup": best["compressed"] / best["baseline"], "batch_size": batch_size,
           "runtime": runtime_name(), "compressed_simulated": quantized}
    # the compressed model's BatchNorms are folded; the fair comparison folds the baseline's too
    folded_speed = best.get("baseline_folded", best["baseline"])
    out.update(baseline_folded_images_per_s=folded_speed,
               speedup_vs_folded_baseline=best["compressed"] / folded_speed,
               baseline_batchnorms_folded=n_folded)
    if "baseline_ort" in best:
        import onnxruntime

        out["onnxruntime"] = {
            "runtime": f"onnxruntime {onnxruntime.__version__} cpu, "
                       f"{torch.get_num_threads()} threads",
            "baseline_fp32_images_per_s": best["baseline_ort"],
            "compressed_images_per_s": best["compressed_ort"], "compressed_int8": quantized,
            "speedup": best["compressed_ort"] / best["baseline_ort"],
            "speedup_vs_pytorch_fp32": best["compressed_ort"] / best["baseline"]}
    return out


def folded_copy(model: nn.Module) -> tuple[nn.Module | None, int]:
    """A copy of ``model`` with every foldable BatchNorm folded, and how many (None, 0: nothing
    to fold, or a model that does not trace)."""
    from cnnzip.graph import foldable_pairs
    from cnnzip.surgery import fold_batchnorm

    copy = deepcopy(model)
    try:
        pairs = foldable_pairs(copy)
    except ModelError:
        return None, 0
    if not pairs:
        return None, 0
    fold_batchnorm(copy, pairs)
    return copy.eval(), len(pairs)
