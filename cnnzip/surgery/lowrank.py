"""A conv or linear layer replaced by a sequence of smaller plain layers that computes its low-rank
approximation: SVD (two layers), Tucker-2 (1×1, k×k core, 1×1) or CP (1×1, kh×1 and 1×kw
depthwise, 1×1). The sequence is plain ``nn.Conv2d`` / ``nn.Linear`` layers, so every later step
(pruning, quantization, sharing, export) treats the factors as layers; the edit is a
:class:`~cnnzip.surgery.edits.ModuleReplaced`."""

from __future__ import annotations

import enum

import torch
from torch import nn

from cnnzip.ops import lowrank


class Factorization(enum.Enum):
    SVD = "svd"  # a linear or 1×1 layer: (in → r) then (r → out); a k×k conv: k×k to r, 1×1 out
    TUCKER2 = "tucker2"  # 1×1 (in → r_in), k×k core (r_in → r_out), 1×1 (r_out → out)
    CP = "cp"  # 1×1 (in → R), kh×1 and 1×kw depthwise over R, 1×1 (R → out)


def factorable(module: nn.Module) -> bool:
    """A plain linear layer, or a plain 2-D convolution without groups or dilation."""
    if type(module) is nn.Linear:
        return True
    return type(module) is nn.Conv2d and module.groups == 1 and module.dilation == (1, 1) \
        and module.padding_mode == "zeros" and isinstance(module.padding, tuple)


def _conv(cin: int, cout: int, kernel: tuple[int, int] = (1, 1), stride: tuple[int, int] = (1, 1),
          padding: tuple[int, int] = (0, 0), groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=bias)


def skeleton(layer: nn.Module, kind: Factorization, ranks: tuple[int, ...]) -> nn.Sequential:
    """The (untrained) sequence that factorizes ``layer`` at ``ranks``: (r,) for SVD and CP,
    (r_out, r_in) for Tucker-2 with r_in = 0 keeping the input mode whole."""
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        if kind is not Factorization.SVD:
            raise ValueError(f"a linear layer factorizes by SVD, not {kind.value}")
        r = ranks[0]
        return nn.Sequential(nn.Linear(layer.in_features, r, bias=False),
                             nn.Linear(r, layer.out_features, bias=bias))
    cin, cout = layer.in_channels, layer.out_channels
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    if kind is Factorization.SVD:
        return nn.Sequential(_conv(cin, ranks[0], k, s, p), _conv(ranks[0], cout, bias=bias))
    if kind is Factorization.TUCKER2:
        r_out, r_in = ranks
        head = [_conv(cin, r_in)] if r_in else []
        return nn.Sequential(*head, _conv(r_in or cin, r_out, k, s, p),
                             _conv(r_out, cout, bias=bias))
    r = ranks[0]
    return nn.Sequential(_conv(cin, r), _conv(r, r, (k[0], 1), (s[0], 1), (p[0], 0), groups=r),
                         _conv(r, r, (1, k[1]), (1, s[1]), (0, p[1]), groups=r),
                         _conv(r, cout, bias=bias))


def factorize(layer: nn.Module, kind: Factorization, ranks: tuple[int, ...], *,
              iterations: int = 20, seed: int = 0) -> nn.Sequential:
    """The sequence computing ``layer``'s low-rank approximation at ``ranks`` (see
    :func:`skeleton`), its weights from the decomposition and its bias on the last layer."""
    seq = skeleton(layer, kind, ranks)
    w = layer.weight.detach()
    if kind is Factorization.SVD:
        first, last = lowrank.svd_factors(w.flatten(1), ranks[0])
        weights = [first.reshape(seq[0].weight.shape), last.reshape(seq[1].weight.shape)]
    elif kind is Factorization.TUCKER2:
        first, core, last = lowrank.tucker2(w, ranks[0], ranks[1] or None,
                                            iterations=iterations, seed=seed)
        weights = ([] if first is None else [first]) + [core, last]
    else:
        first, vertical, horizontal, last = lowrank.cp(w, ranks[0], iterations=5 * iterations,
                                                       seed=seed)
        weights = [first, vertical, horizontal, last]
    with torch.no_grad():
        for module, value in zip(seq, weights, strict=True):
            module.weight.copy_(value.reshape(module.weight.shape))
        if layer.bias is not None:
            seq[-1].bias.copy_(layer.bias.detach())
    return seq


def dense_weight(seq: nn.Sequential) -> torch.Tensor:
    """The single layer's weight a factorized sequence computes (for checks): the factors
    multiplied back together."""
    layers = list(seq)
    if isinstance(layers[0], nn.Linear):
        return layers[1].weight @ layers[0].weight
    first = layers[0]
    with torch.no_grad():
        if len(layers) == 4 and layers[1].groups > 1:  # CP
            v, h = layers[1].weight[:, 0, :, 0], layers[2].weight[:, 0, 0, :]
            spatial = v[:, :, None] * h[:, None, :]  # (R, kh, kw)
            a, b = layers[3].weight[:, :, 0, 0], first.weight[:, :, 0, 0]
            return torch.einsum("or,ri,ryx->oiyx", a, b, spatial)
        last = layers[-1].weight[:, :, 0, 0]
        core = layers[-2].weight
        w = torch.einsum("or,rjyx->ojyx", last, core)
        if len(layers) == 3:  # Tucker-2: the input projection
            w = torch.einsum("ojyx,ji->oiyx", w, first.weight[:, :, 0, 0])
        return w
