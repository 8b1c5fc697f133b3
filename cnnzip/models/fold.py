"""BatchNorm folding: the one routine behind the fold step and rebuilding a folded architecture.

A BatchNorm (in eval mode an affine map per channel) that reads nothing but the output of a
convolution or linear layer, which nothing else reads, folds exactly into that layer's weights
and bias; the BatchNorm becomes an identity.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from cnnzip.errors import ModelError
from cnnzip.models.edit import set_module, symbolic
from cnnzip.modules.merged import ConvMaxPool
from cnnzip.modules.quant import QuantLayer

FoldPair = tuple[str, str]  # (conv or linear layer, the BatchNorm folded into it)
_PAIRS = ((nn.Conv2d, nn.BatchNorm2d), (nn.Conv1d, nn.BatchNorm1d), (nn.Linear, nn.BatchNorm1d))


def _foldable(layer: nn.Module | None, bn: nn.Module | None) -> bool:
    if isinstance(layer, QuantLayer):
        layer = layer.layer
    if isinstance(layer, ConvMaxPool):  # its output is pooled (and activated): nothing folds
        return False
    return any(isinstance(layer, a) and type(bn) is b for a, b in _PAIRS)


def foldable_pairs(model: nn.Module) -> list[FoldPair]:
    """Every (layer, BatchNorm) of ``model`` that folds exactly, in execution order."""
    graph = symbolic(model, "to find BatchNorms to fold", leaves=(QuantLayer,)).graph
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not node.args:
            continue
        bn, src = modules[node.target], node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module"):
            continue
        if not _foldable(modules[src.target], bn):
            continue
        if bn.running_mean is None or len(src.users) != 1 or calls[src.target] != 1 \
                or calls[node.target] != 1:
            continue
        pairs.append((src.target, node.target))
    return pairs


def fold_batchnorm(model: nn.Module, pairs: list[FoldPair] | tuple[FoldPair, ...], *,
                   weights: bool = True) -> None:
    """Fold each pair's BatchNorm into its layer and replace it with ``nn.Identity``.

    Args:
        model: changed in place.
        pairs: from :func:`foldable_pairs` (or a spec's ``folded``, when rebuilding).
        weights: False changes only the structure (a bias where the layer had none), for a
            model whose folded weights are loaded afterwards.

    Raises:
        ModelError: a pair that names no such layer or BatchNorm, or whose sizes differ.
    """
    modules = dict(model.named_modules())
    for layer_name, bn_name in pairs:
        layer, bn = modules.get(layer_name), modules.get(bn_name)
        if not _foldable(layer, bn):
            raise ModelError(f"cannot fold {bn_name!r} into {layer_name!r}: not a conv or "
                             "linear layer followed by its BatchNorm")
        if isinstance(layer, QuantLayer):
            _fold_quantized(layer, bn, layer_name, bn_name)
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


def _affine(bn: nn.Module, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The BatchNorm's per-channel scale (eval mode), and ``bias`` carried through it."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = bn.bias if bn.bias is not None else torch.zeros_like(scale)
    return scale, (bias - bn.running_mean) * scale + shift


def _rows(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *[1] * (weight.dim() - 1))


def _fold_quantized(wrapper: QuantLayer, bn: nn.Module, layer_name: str, bn_name: str) -> None:
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
    with torch.no_grad():
        scale, bias = _affine(bn, layer.bias if layer.bias is not None else torch.zeros(out))
        codes = wrapper.codes() * _rows(scale.sign().long(), wrapper.latent)
        wrapper.w_scale.mul_(torch.where(scale == 0, 1.0, scale.abs()))
        wrapper.load_codes(codes)  # the latent snaps to the grid: the folded layer is final
        layer.bias = nn.Parameter(bias.detach().clone())
