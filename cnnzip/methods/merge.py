"""Layer merging: BatchNorms folded into the layers before them (exact)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from cnnzip.errors import CnnzipError
from cnnzip.methods.base import Context, register
from cnnzip.models.fold import fold_batchnorm, foldable_pairs
from cnnzip.modules import CodebookLayer


@dataclass(frozen=True)
class FoldBatchNorm:
    """Fold every BatchNorm that reads only a conv or linear layer's output into that layer.

    The model computes the same function in eval mode (checked in the tests with allclose);
    it has fewer layers and runs faster. Later retraining trains the folded layers directly.
    """


@register(FoldBatchNorm)
def fold(model: nn.Module, config: FoldBatchNorm, ctx: Context) -> nn.Module:
    if any(isinstance(m, CodebookLayer) for m in model.modules()):
        raise CnnzipError("fold: fold BatchNorms before weight sharing in a recipe")
    pairs = foldable_pairs(model)
    fold_batchnorm(model, pairs)
    ctx.folded.extend(pairs)
    ctx.notes["fold"] = {"folded": [f"{bn} → {layer}" for layer, bn in pairs]}
    return model
