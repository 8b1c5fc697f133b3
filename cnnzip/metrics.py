"""Counting and timing: parameters, non-zeros, MACs from a real forward pass, bytes, throughput."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerStats:
    """One weight layer as seen in a forward pass of one sample."""

    name: str
    type: str
    shape: tuple[int, ...]
    params: int
    nonzero: int
    macs: int
    nonzero_macs: int = 0  # the MACs of its non-zero weights (what a sparse kernel computes)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape)}


def _logical_params(model: nn.Module) -> list[torch.Tensor]:
    """The model's parameters as the network uses them: a compressed wrapper counts as its dense
    weight (not its codebook), so counts compare with the uncompressed model."""
    tensors: list[torch.Tensor] = []
    for module in model.modules():
        if getattr(module, "wraps_layer", False):
            tensors.append(module.weight.detach())  # its inner layer adds the bias
        else:
            tensors += [p.detach() for p in module.parameters(recurse=False)]
    return tensors


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in _logical_params(model))


def count_nonzero(model: nn.Module) -> int:
    """Number of parameters that are not exactly zero."""
    return sum(int(torch.count_nonzero(p)) for p in _logical_params(model))


def fp32_bytes(model: nn.Module) -> int:
    """Bytes of the parameters stored densely as float32."""
    return 4 * count_params(model)


def layer_macs(module: nn.Module, out_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of a conv or linear layer whose output has ``out_shape`` (0 for any
    other module); bias adds are not counted."""
    numel = math.prod(out_shape)
    if isinstance(module, nn.Linear):
        return numel // out_shape[-1] * module.in_features * module.out_features
    if not isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return 0
    # every output element takes (C_in / groups) · prod(kernel) MACs; a convolution with its
    # max pooling merged in computes every phase of the pooling window
    return numel * getattr(module, "phases", 1) * (module.in_channels // module.groups) \
        * math.prod(module.kernel_size)


def _geometry(module: nn.Module) -> nn.Module | None:
    """The conv or linear layer whose computation ``module`` performs, or None.

    A compressed wrapper (``wraps_layer = True``) computes with its ``layer``'s geometry and
    exposes the dense ``weight`` it uses.
    """
    if getattr(module, "wraps_layer", False):
        return module.layer
    if isinstance(module, _COUNTED) and isinstance(getattr(module, "weight", None), torch.Tensor):
        return module
    return None


def layer_stats(model: nn.Module, in_shape: tuple[int, ...]) -> list[LayerStats]:
    """Per-layer statistics for convolution and linear layers, in execution order.

    MACs are counted from a forward pass of one zero sample of ``in_shape`` (C, H, W), so
    they follow the model's real spatial sizes, strides and groups. Bias adds are not counted.
    """
    names = {m: n for n, m in model.named_modules()}
    seen: list[LayerStats] = []

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        geometry = _geometry(module)
        w = module.weight
        bias = geometry.bias
        params = w.numel() + (bias.numel() if bias is not None else 0)
        nonzero = int(torch.count_nonzero(w)) + (int(torch.count_nonzero(bias))
                                                 if bias is not None else 0)
        macs = layer_macs(geometry, tuple(output[:1].shape))
        dense = max(1, w.numel())
        seen.append(LayerStats(names[module], type(module).__name__, tuple(w.shape), params,
                               nonzero, macs, macs * int(torch.count_nonzero(w)) // dense))

    handles = [m.register_forward_hook(hook) for m in model.modules() if _geometry(m) is not None]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *in_shape))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def count_layers(model: nn.Module) -> int:
    """Conv and linear layers (dense or compressed): the network's depth in weight layers."""
    return sum(_geometry(m) is not None for m in model.modules())


def count_macs(model: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of one sample (conv and linear layers)."""
    return sum(s.macs for s in layer_stats(model, in_shape))


def count_nonzero_macs(model: nn.Module, in_shape: tuple[int, ...]) -> int:
    """The MACs of the non-zero weights only: what kernels that skip pruned weights compute."""
    return sum(s.nonzero_macs for s in layer_stats(model, in_shape))


def summarize(model: nn.Module, in_shape: tuple[int, ...]) -> dict[str, Any]:
    """Whole-model counts plus the per-layer table, as plain JSON-able data."""
    layers = layer_stats(model, in_shape)
    return {"params": count_params(model), "nonzero_params": count_nonzero(model),
            "macs": sum(s.macs for s in layers), "bytes_fp32": fp32_bytes(model),
            "layers": [s.to_dict() for s in layers]}


def throughput(model: nn.Module, in_shape: tuple[int, ...], *, batch_size: int = 256,
               warmup: int = 2, min_seconds: float = 1.0, min_runs: int = 5) -> float:
    """Images per second of ``model`` in eval mode on a fixed random batch, timed in-process.

    Runs ``warmup`` untimed passes, then at least ``min_runs`` passes and ``min_seconds``; the
    figure is the median per-pass time, which resists the odd slow pass.
    """
    x = torch.randn(batch_size, *in_shape, generator=torch.Generator().manual_seed(0))
    model.eval()
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        start = time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    times.sort()
    return batch_size / times[len(times) // 2]


def layer_times(model: nn.Module, in_shape: tuple[int, ...], kinds: tuple[type, ...], *,
                batch_size: int = 64, rounds: int = 5) -> dict[str, float]:
    """Seconds each module of ``kinds`` takes in an eval-mode forward pass of a random batch,
    timed in-process by hooks around it; the least of ``rounds`` passes after one untimed."""
    x = torch.randn(batch_size, *in_shape, generator=torch.Generator().manual_seed(0))
    started: dict[str, float] = {}
    best: dict[str, float] = {}

    def before(name: str):
        return lambda _module, _inputs: started.__setitem__(name, time.perf_counter())

    def after(name: str):
        def hook(_module, _inputs, _output) -> None:
            seconds = time.perf_counter() - started[name]
            best[name] = min(best.get(name, math.inf), seconds)
        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, kinds):
            handles += [module.register_forward_pre_hook(before(name)),
                        module.register_forward_hook(after(name))]
    model.eval()
    try:
        with torch.inference_mode():
            model(x)
            best.clear()
            for _ in range(rounds):
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    return best


def bench_models(models: dict[str, nn.Module], in_shape: tuple[int, ...], *,
                 batch_size: int = 256, rounds: int = 3,
                 min_seconds: float = 1.0) -> dict[str, float]:
    """Images per second of each model, timed alternately in this process and runtime.

    Each model is timed ``rounds`` times, in turn, and its best round counts (the least
    disturbed by other work on the machine).
    """
    best = dict.fromkeys(models, 0.0)
    for _ in range(rounds):
        for key, model in models.items():
            best[key] = max(best[key], throughput(model.eval(), in_shape,
                                                  batch_size=batch_size,
                                                  min_seconds=min_seconds))
    return best


def runtime_name() -> str:
    return f"pytorch {torch.__version__} cpu, {torch.get_num_threads()} threads"
