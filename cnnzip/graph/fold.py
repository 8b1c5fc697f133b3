"""Foldable BatchNorms: a BatchNorm (in eval mode an affine map per channel) that reads nothing
but the output of a convolution or linear layer, which nothing else reads, folds exactly into
that layer's weights and bias."""

from __future__ import annotations

import torch.fx
from torch import nn

from cnnzip.graph.trace import module_calls, symbolic
from cnnzip.modules.merged import ConvMaxPool
from cnnzip.modules.quant import QuantLayer

FoldPair = tuple[str, str]  # (conv or linear layer, the BatchNorm folded into it)
_PAIRS = ((nn.Conv2d, nn.BatchNorm2d), (nn.Conv1d, nn.BatchNorm1d), (nn.Linear, nn.BatchNorm1d))


def foldable(layer: nn.Module | None, bn: nn.Module | None) -> bool:
    """Whether ``bn`` can fold into ``layer`` by their types (a quantized layer by its own)."""
    if isinstance(layer, QuantLayer):
        layer = layer.layer
    if isinstance(layer, ConvMaxPool):  # its output is pooled (and activated): nothing folds
        return False
    return any(isinstance(layer, a) and type(bn) is b for a, b in _PAIRS)


def foldable_pairs(model: nn.Module) -> list[FoldPair]:
    """Every (layer, BatchNorm) of ``model`` that folds exactly, in execution order."""
    graph = symbolic(model, "to find BatchNorms to fold", leaves=(QuantLayer,)).graph
    modules = dict(model.named_modules())
    calls = module_calls(graph)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not node.args:
            continue
        bn, src = modules[node.target], node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module"):
            continue
        if not foldable(modules[src.target], bn):
            continue
        if bn.running_mean is None or len(src.users) != 1 or calls[src.target] != 1 \
                or calls[node.target] != 1:
            continue
        pairs.append((src.target, node.target))
    return pairs
