"""The float baseline for the C generator: an unquantized model (a chain such as lenet5, or a
graph with residual adds, concatenations and global average pooling such as resnet20) as
:class:`FloatLayer` and other nodes, computed as the float C computes them, so that compressed
C is timed against a baseline written by the same generator with the same dense kernels."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnzip.export.ir.ops import (RELU6_CAP, Concat, Flatten, MaxPool, Node, LoweringError,
                                  Relu, run_nodes)
from cnnzip.export.ir.lower import (capped_by, classified, fused_relu, mean_keeps_dims,
                                     performed_by_producer)
from cnnzip.graph import foldable_pairs, with_shapes
from cnnzip.modules import CodebookLayer, FlatLinear, QuantLayer
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
    cap: float | None = None  # with relu: also clamp at this (ReLU6)

    is_logits = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        t, w = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(self.weight)
        b = torch.from_numpy(self.bias)
        if self.kind == "conv":
            y = F.conv2d(t, w, b, stride=self.stride, padding=self.padding, groups=self.groups)
        else:
            y = F.linear(t.flatten(1) if self.flatten else t, w, b)
        y = y.clamp(0, self.cap) if self.relu else y
        return y.numpy()


@dataclass(frozen=True)
class FloatAdd:
    """Elementwise sum of two float tensors (a residual add), ReLU fused."""

    relu: bool

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        y = np.asarray(a, np.float32) + np.asarray(b, np.float32)
        return np.maximum(y, np.float32(0)) if self.relu else y


@dataclass(frozen=True)
class FloatMean:
    """Global average pooling of a float tensor: the sum over height and width, in order, then
    divided by their product (as the C computes it); ``keepdim``: N×C×1×1, else N×C."""

    relu: bool
    keepdim: bool = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        y = x.reshape(*x.shape[:2], -1).sum(-1, dtype=np.float32) / np.float32(x[0, 0].size)
        y = np.maximum(y, np.float32(0)) if self.relu else y
        return y.reshape(*y.shape, 1, 1) if self.keepdim else y


@dataclass(frozen=True)
class FloatModel:
    """A float CNN for the C generator (the baseline the compressed C is timed against):
    normalised images in, float logits out; ``nodes`` as in :class:`IntModel`."""

    nodes: tuple

    def quantize_input(self, images: torch.Tensor) -> np.ndarray:
        return images.float().numpy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return run_nodes(self.nodes, x)


def _float_layer(layer: nn.Module, relu: bool, cap: float | None) -> FloatLayer:
    weight = layer.weight.detach().float().numpy()
    bias = layer.bias.detach().float().numpy() if layer.bias is not None \
        else np.zeros(len(weight), np.float32)
    if isinstance(layer, nn.Conv2d):
        return FloatLayer("conv", weight, bias, relu, tuple(layer.stride), pair(layer.padding),
                          layer.groups, cap=cap)
    return FloatLayer("linear", weight, bias, relu, flatten=isinstance(layer, FlatLinear),
                      cap=cap)


def lower_float_model(model: nn.Module, in_shape: tuple[int, ...]) -> FloatModel:
    """The float form of an unquantized model, BatchNorms folded: its conv (also depthwise and
    grouped) and linear layers, ReLUs (fused into the layer or add before them) and ReLU6s
    (fused into the layer before them), max poolings, global average poolings, flattens,
    residual adds and channel concatenations, as a graph of :class:`Node` in the order of the
    model's own graph.

    Raises:
        LoweringError: an operation that is not lowered yet (named), or a quantized or
            weight-shared layer.
    """
    model = copy.deepcopy(model).eval()
    fold_batchnorm(model, foldable_pairs(model))
    gm = with_shapes(model, in_shape, "to C", leaves=(QuantLayer, CodebookLayer, FlatLinear))
    modules = dict(model.named_modules())
    nodes, kinds = classified(gm, modules, floats=True)
    output = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if not isinstance(output, torch.fx.Node) or kinds.get(output) != "layer":
        raise LoweringError("the model must end with its classifier (a conv or linear layer)")
    out: list[Node] = []
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    tensor: dict[torch.fx.Node, int] = {placeholder: -1}  # fx node → the node holding its value

    def emit(op, inputs: tuple[int, ...], name: str) -> int:
        out.append(Node(op, inputs, name))
        return len(out) - 1

    for n in nodes:
        name = n.target if n.op == "call_module" else n.name
        kind = kinds[n]
        args = list(n.args[0]) if kind == "cat" else \
            [a for a in n.args if isinstance(a, torch.fx.Node)]
        inputs = tuple(tensor[a] for a in args)
        relu = fused_relu(n, kinds) and n is not output
        if kind in ("relu", "relu6"):
            tensor[n] = inputs[0] if performed_by_producer(n, kinds) \
                else emit(Relu(0), inputs, name)
        elif kind == "layer":
            capped = capped_by(n, kinds) and n is not output
            tensor[n] = emit(_float_layer(modules[n.target], relu or capped,
                                          RELU6_CAP if capped else None), inputs, name)
        elif kind == "add":
            tensor[n] = emit(FloatAdd(relu), inputs, name)
        elif kind == "mean":
            tensor[n] = emit(FloatMean(relu, mean_keeps_dims(n)), inputs, name)
        elif kind == "maxpool":
            m = modules[n.target]
            tensor[n] = emit(MaxPool(pair(m.kernel_size), pair(m.stride or m.kernel_size)),
                             inputs, name)
        elif kind == "flatten":
            tensor[n] = emit(Flatten(), inputs, name)
        else:  # cat
            tensor[n] = emit(Concat(), inputs, name)
    if tensor[output] != len(out) - 1:
        raise LoweringError("the classifier must be the last operation")
    return FloatModel(tuple(out))
