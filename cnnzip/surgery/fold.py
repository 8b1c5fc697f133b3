"""BatchNorm folding: a foldable BatchNorm (:func:`cnnzip.graph.foldable_pairs`) goes into its
layer's weights and bias and becomes an identity; and standardizing: a BatchNorm rewritten with
mean 0 and variance 1, its scale and shift carrying the rest."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from cnnzip.errors import ModelError
from cnnzip.graph import FoldPair, foldable
from cnnzip.modules.quant import QuantLayer
from cnnzip.surgery.edits import NormFolded
from cnnzip.surgery.replace import set_module


def fold_batchnorm(model: nn.Module, pairs: Iterable[FoldPair], *,
                   weights: bool = True) -> list[NormFolded]:
    """Fold each pair's BatchNorm into its layer and replace it with ``nn.Identity``.

    Args:
        model: changed in place.
        pairs: from :func:`cnnzip.graph.foldable_pairs` (or a spec's edits, when rebuilding).
        weights: False changes only the structure (a bias where the layer had none), for a
            model whose folded weights are loaded afterwards.

    Returns:
        The edits, one per pair.

    Raises:
        ModelError: a pair that names no such layer or BatchNorm, or whose sizes differ.
    """
    modules = dict(model.named_modules())
    edits = []
    for layer_name, bn_name in pairs:
        edits.append(NormFolded(layer_name, bn_name))
        layer, bn = modules.get(layer_name), modules.get(bn_name)
        if not foldable(layer, bn):
            raise ModelError(f"cannot fold {bn_name!r} into {layer_name!r}: not a conv or "
                             "linear layer followed by its BatchNorm")
        if isinstance(layer, QuantLayer):
            _fold_quantized(layer, bn, layer_name, bn_name, weights)
            set_module(model, bn_name, nn.Identity())
            continue
        out = layer.weight.shape[0]
        if bn.num_features != out:
            raise ModelError(f"cannot fold {bn_name!r} ({bn.num_features} channels) into "
                             f"{layer_name!r} ({out} outputs)")
        with torch.no_grad():
            bias = layer.bias if layer.bias is not None else torch.zeros(out)
            if weights:
                scale, bias = _affine(bn, bias)
                layer.weight.mul_(_rows(scale, layer.weight))
            layer.bias = nn.Parameter(bias.detach().clone())
        set_module(model, bn_name, nn.Identity())
    return edits


def _affine(bn: nn.Module, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The BatchNorm's per-channel scale (eval mode), and ``bias`` carried through it."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = bn.bias if bn.bias is not None else torch.zeros_like(scale)
    return scale, (bias - bn.running_mean) * scale + shift


def standardize_batchnorm(bn: nn.Module) -> bool:
    """Rewrite ``bn`` in place with running mean 0 and running variance 1, its weight and bias
    taking the rest, so that in eval mode it computes the same: two numbers per channel
    instead of four, the two constants cheap to store. False (unchanged) for a BatchNorm
    without an affine weight and bias or without running statistics."""
    if bn.weight is None or bn.bias is None or bn.running_mean is None \
            or bn.running_var is None:
        return False
    with torch.no_grad():
        scale, shift = _affine(bn, torch.zeros_like(bn.running_mean))
        bn.weight.copy_(scale * (1 + bn.eps) ** 0.5)
        bn.bias.copy_(shift)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
    return True


def _rows(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *[1] * (weight.dim() - 1))


def _fold_quantized(wrapper: QuantLayer, bn: nn.Module, layer_name: str, bn_name: str,
                    weights: bool) -> None:
    """Fold ``bn`` into a quantized layer without moving its integers: each output channel's
    weight scale takes the BatchNorm's |scale| and its integers its sign (the grid is
    symmetric), so the layer computes the same and stores the same codes."""
    if not wrapper.per_channel:
        raise ModelError(f"cannot fold {bn_name!r} into {layer_name!r}: its weights have one "
                         "scale for all channels, and a BatchNorm scales each differently; "
                         "quantize per channel or fold before quantizing")
    out = wrapper.latent.shape[0]
    if bn.num_features != out:
        raise ModelError(f"cannot fold {bn_name!r} ({bn.num_features} channels) into "
                         f"{layer_name!r} ({out} outputs)")
    layer = wrapper.layer
    if not weights:
        layer.bias = nn.Parameter(torch.zeros(out))
        return
    with torch.no_grad():
        scale, bias = _affine(bn, layer.bias if layer.bias is not None else torch.zeros(out))
        codes = wrapper.codes() * _rows(scale.sign().long(), wrapper.latent)
        wrapper.w_scale.mul_(torch.where(scale == 0, 1.0, scale.abs()))
        wrapper.load_codes(codes)  # the latent snaps to the grid: the folded layer is final
        layer.bias = nn.Parameter(bias.detach().clone())
