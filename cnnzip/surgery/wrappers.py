"""Wrapping conv and linear layers in compressed modules (uniform quantization, a shared
codebook) and unwrapping them again (to trace or remove channels, to run or export)."""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, MutableMapping

import torch
from torch import nn

from cnnzip.modules.codebook import CodebookLayer
from cnnzip.modules.quant import QuantLayer
from cnnzip.surgery.edits import LayerQuantized, WeightsShared
from cnnzip.surgery.replace import set_module


def quantize_layer(model: nn.Module, name: str, weight_bits: int, act_bits: int = 0, *,
                   per_channel: bool = True, out_bits: int = 0) -> QuantLayer:
    """Replace the conv or linear layer ``name`` of ``model`` by a :class:`QuantLayer` (its
    edit is :func:`quantized_edit`, taken once the bits are final)."""
    wrapped = QuantLayer(model.get_submodule(name), weight_bits, act_bits,
                         per_channel=per_channel, out_bits=out_bits)
    set_module(model, name, wrapped)
    return wrapped


def quantized_edit(name: str, layer: QuantLayer) -> LayerQuantized:
    """The edit that wraps ``name`` as ``layer`` is wrapped now (its bits as they stand)."""
    return LayerQuantized(name, layer.weight_bits, layer.act_bits, layer.per_channel,
                         layer.out_bits)


def share_layer(model: nn.Module, name: str, positions: torch.Tensor, codebook: torch.Tensor,
                codes: torch.Tensor) -> WeightsShared:
    """Replace the conv or linear layer ``name`` by a :class:`CodebookLayer` with these
    surviving positions, centroids and codes (a codebook layer there takes them)."""
    layer = model.get_submodule(name)
    if isinstance(layer, CodebookLayer):
        layer.assign(positions, codebook, codes)
    else:
        set_module(model, name, CodebookLayer(layer, positions, codebook, codes))
    k, d = codebook.shape
    return WeightsShared(name, int(k), int(d), int(positions.numel()))


def replay_sharing(model: nn.Module, edit: WeightsShared) -> None:
    """A codebook layer of ``edit``'s sizes (zero values: the file's tensors fill them)."""
    codes = math.ceil(edit.nnz / edit.d)
    share_layer(model, edit.name, torch.zeros(edit.nnz, dtype=torch.long),
                torch.zeros(edit.k, edit.d), torch.zeros(codes, dtype=torch.long))


def materialize(model: nn.Module) -> nn.Module:
    """Replace every ``CodebookLayer`` by a plain layer holding its dense weight, in place.

    The result computes exactly what the codebook layers compute (same weight tensors) without
    rebuilding weights on every call: the form to run, time and export.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, CodebookLayer):
            layer = module.layer
            layer.weight = nn.Parameter(module.dense_weight().detach().clone())
            set_module(model, name, layer)
    return model


@contextlib.contextmanager
def plain_layers(model: nn.Module, removed_rows: MutableMapping[str, list[int]] | None = None
                 ) -> Iterator[dict[str, QuantLayer]]:
    """Every :class:`QuantLayer` of ``model`` replaced by its plain layer, whose ``weight`` is
    the float latent weight (the same parameter), so that structural tools (dependency tracing,
    channel removal) see ordinary convolutions; wrapped again on exit, each with the weight
    its layer then has, its bits and its scales.

    Args:
        model: changed in place; a model without quantized layers is left alone.
        removed_rows: output channels (rows) each layer loses inside the block (read on exit,
            so the block may fill it): their per-channel weight scales are dropped, so the
            others stay as learned.

    Yields:
        The wrappers by layer name.
    """
    removed_rows = {} if removed_rows is None else removed_rows
    wrappers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}
    for name, wrapper in wrappers.items():
        wrapper.layer.weight = wrapper.latent
        set_module(model, name, wrapper.layer)
    try:
        yield wrappers
    finally:
        for name, wrapper in wrappers.items():
            layer = wrapper.layer
            weight = layer.weight
            del layer.weight
            if wrapper.per_channel and weight.shape[0] != wrapper.w_scale.numel():
                gone = set(removed_rows.get(name, ()))
                kept = [r for r in range(wrapper.w_scale.numel()) if r not in gone]
                if len(kept) != weight.shape[0]:
                    raise RuntimeError(f"{name}: {weight.shape[0]} output channels remain but "
                                       f"{len(kept)} weight scales")
                wrapper.w_scale = nn.Parameter(wrapper.w_scale.detach()[kept].clone())
                wrapper.w_zero = torch.zeros_like(wrapper.w_scale)
            wrapper.latent = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight)
            set_module(model, name, wrapper)
