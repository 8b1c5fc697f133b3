"""The float baseline for the C generator: an unquantized chain model (lenet300, lenet5) as
:class:`FloatLayer` nodes, computed as the float C computes them, so that compressed C is timed
against a baseline written by the same generator with the same dense kernels."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnzip.export.intops import RELUS, SKIPPED, Flatten, MaxPool, Node, ReferenceError, run_nodes
from cnnzip.export.reference import plain_pool
from cnnzip.graph import foldable_pairs, with_shapes
from cnnzip.modules import FlatLinear, QuantLayer
from cnnzip.surgery.fold import fold_batchnorm
from cnnzip.surgery.replace import pair


@dataclass(frozen=True)
class FloatLayer:
    """A conv or linear layer in float32, as the float C computes it (the baseline)."""

    kind: str
    weight: np.ndarray
    bias: np.ndarray
    relu: bool
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    flatten: bool = False

    is_logits = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        t, w = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(self.weight)
        b = torch.from_numpy(self.bias)
        if self.kind == "conv":
            y = F.conv2d(t, w, b, stride=self.stride, padding=self.padding, groups=self.groups)
        else:
            y = F.linear(t.flatten(1) if self.flatten else t, w, b)
        return (y.relu() if self.relu else y).numpy()


@dataclass(frozen=True)
class FloatModel:
    """A float CNN for the C generator (the baseline the compressed C is timed against):
    normalised images in, float logits out; ``nodes`` as in :class:`IntModel`."""

    nodes: tuple

    def quantize_input(self, images: torch.Tensor) -> np.ndarray:
        return images.float().numpy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return run_nodes(self.nodes, x)


def lower_float_model(model: nn.Module, in_shape: tuple[int, ...]) -> FloatModel:
    """The float form of an unquantized chain model (lenet300, lenet5), BatchNorms folded.

    Raises:
        ReferenceError: as :func:`lower_model`, or a quantized or weight-shared layer.
    """
    model = copy.deepcopy(model).eval()
    fold_batchnorm(model, foldable_pairs(model))
    kinds = (nn.Conv2d, nn.Linear)
    chain, layers = _chain(model, in_shape, kinds, "to C")
    if not layers:
        raise ReferenceError("the model has no conv or linear layer")
    ops: list = [Flatten() for _ in chain[:layers[0]]]
    for k, i in enumerate(layers):
        name, layer = chain[i]
        if type(layer) not in (nn.Conv2d, nn.Linear, FlatLinear):
            raise ReferenceError(f"{name}: a {type(layer).__name__} is not lowered to C yet")
        between = _between(chain, layers, k)
        relu = any(isinstance(m, RELUS) for _, m in between)
        weight = layer.weight.detach().float().numpy()
        bias = layer.bias.detach().float().numpy() if layer.bias is not None \
            else np.zeros(len(weight), np.float32)
        if isinstance(layer, nn.Conv2d):
            ops.append(FloatLayer("conv", weight, bias, relu, tuple(layer.stride),
                                  pair(layer.padding), layer.groups))
        else:
            ops.append(FloatLayer("linear", weight, bias, relu,
                                  flatten=isinstance(layer, FlatLinear)))
        ops += _glue(between)
    return FloatModel(tuple(Node(op, (k - 1,)) for k, op in enumerate(ops)))


def _chain(model: nn.Module, in_shape: tuple[int, ...], kinds: tuple[type, ...],
           what: str) -> tuple[list[tuple[str, nn.Module]], list[int]]:
    """The model's graph as a chain of (name, module), and the positions of its layers (modules
    of ``kinds``).

    Raises:
        ReferenceError: an operation other than those layers, ReLU, max pooling and flatten,
            a join, or a model that does not start with a layer.
    """
    gm = with_shapes(model, in_shape, what, leaves=(QuantLayer, FlatLinear))
    modules = dict(model.named_modules())
    chain: list[tuple[str, nn.Module]] = []
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op == "call_module":
            module = modules[node.target]
            if not isinstance(module, SKIPPED):
                chain.append((node.target, module))
        elif node.op == "call_function" and node.target in (torch.flatten,):
            chain.append((node.name, nn.Flatten()))
        elif node.op == "call_function" and node.target in (F.relu, torch.relu):
            chain.append((node.name, nn.ReLU()))
        else:
            raise ReferenceError(f"{node.name}: {node.op} {node.target} is not lowered {what} "
                                 "yet")
        if len(node.args) and sum(isinstance(a, torch.fx.Node) for a in node.args) > 1:
            raise ReferenceError(f"{node.name}: joins (residual adds, concatenation) are not "
                                 f"lowered {what} yet")
    layers = [i for i, (_, m) in enumerate(chain) if isinstance(m, kinds)]
    for name, module in chain[:layers[0] if layers else 0]:
        if not (isinstance(module, nn.Flatten) and module.start_dim == 1):
            raise ReferenceError(f"{name}: the model must start with a layer")
    return chain, layers


def _between(chain, layers: list[int], k: int) -> list[tuple[str, nn.Module]]:
    end = layers[k + 1] if k + 1 < len(layers) else len(chain)
    return chain[layers[k] + 1:end]


def _glue(between: list[tuple[str, nn.Module]]) -> list:
    """The pooling and flattening between two layers (ReLUs are fused into the layer)."""
    ops = []
    for other, module in between:
        if isinstance(module, nn.MaxPool2d) and plain_pool(module):
            ops.append(MaxPool(pair(module.kernel_size), pair(module.stride or module.kernel_size)))
        elif isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
            ops.append(Flatten())
        elif not isinstance(module, RELUS):
            raise ReferenceError(f"{other}: a {type(module).__name__} is not lowered to "
                                 "integers yet")
    return ops
