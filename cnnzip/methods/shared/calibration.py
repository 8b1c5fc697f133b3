"""Calibrating quantized layers' feature maps: the helper every method that changes a quantized
model's activations shares (not a method itself)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from cnnzip.data import ImageSet, batches
from cnnzip.methods.base import Context
from cnnzip.modules.quant import QuantLayer
from cnnzip.ops.quant import Observer, calibrate


@contextlib.contextmanager
def float_feature_maps(layers: dict[str, QuantLayer]) -> Iterator[None]:
    """The layers' input and output quantizers bypassed, restored on exit."""
    grids = {name: (layer.a_grid, layer.o_grid) for name, layer in layers.items()}
    for layer in layers.values():
        layer.a_grid = layer.o_grid = None
    try:
        yield
    finally:
        for name, layer in layers.items():
            layer.a_grid, layer.o_grid = grids[name]


@contextlib.contextmanager
def _float_recording(model: nn.Module, layers: dict[str, QuantLayer],
                     limit: int) -> Iterator[dict[tuple[str, str], list[torch.Tensor]]]:
    """Record each layer's float input and output (its feature-map quantizers bypassed), at
    most ``limit`` values per batch, subsampled deterministically."""
    seen: dict[tuple[str, str], list[torch.Tensor]] = {}
    generator = torch.Generator().manual_seed(0)

    def keep(key: tuple[str, str], t: torch.Tensor) -> None:
        flat = t.detach().flatten()
        if flat.numel() > limit:
            flat = flat[torch.randint(flat.numel(), (limit,), generator=generator)]
        seen.setdefault(key, []).append(flat)

    def hook(name: str):
        def record(module: QuantLayer, args: tuple[Any, ...], out: torch.Tensor) -> None:
            keep((name, "input"), args[0])
            keep((name, "output"), out)
        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        with float_feature_maps(layers):
            yield seen
    finally:
        for handle in handles:
            handle.remove()


def calibrate_feature_maps(model: nn.Module, layers: dict[str, QuantLayer], images: ImageSet,
                           ctx: Context, observer: Observer) -> None:
    """Set every layer's input (and output) scale and zero point from ``images``, in one float
    pass."""
    model.eval()
    with _float_recording(model, layers, limit=200_000) as seen, torch.no_grad():
        for x, _ in batches(images, ctx.splits.info, 256):
            model(x)
    for name, layer in layers.items():
        if layer.a_grid is not None:
            values = torch.cat(seen[name, "input"])
            layer.set_input_range(*calibrate(values, layer.a_grid, observer=observer))
        if layer.o_grid is not None:
            values = torch.cat(seen[name, "output"])
            layer.set_output_range(*calibrate(values, layer.o_grid, observer=observer))


def calibration_images(ctx: Context, count: int) -> ImageSet:
    """``count`` training images drawn with the run's seed."""
    train = ctx.splits.train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(ctx.seed))
    idx = order[:count]
    return ImageSet(train.images[idx], train.labels[idx])
