"""The integer-only reference: what a quantized layer computes with integers alone, in numpy.

A :class:`~cnnzip.modules.quant.QuantLayer` with quantized inputs is lowered to an
:class:`IntLayer`: its weight integers, an int32 bias on the accumulator's scale (input scale
× the channel's weight scale), and per output channel a Q31 multiplier and shift that take the
accumulator to the next tensor's grid (:mod:`cnnzip.ops.intmath`, rounded as CMSIS-NN does),
then the zero point, then a clamp that also performs a following ReLU. Everything after
lowering is integer arithmetic: the convolution runs in float64 on integer values, exact
since every sum is checked to stay in int32 (far below 2^53), and the generated C computes the
same integers.

This module lowers a model's graph (torch.fx) to a list of nodes; the integer operations
themselves are defined in :mod:`cnnzip.export.ir.ops`.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from cnnzip.export.ir.ops import (RELU6_CAP, SKIPPED, Concat, Flatten, GlobalAvgPool, Grid,
                                  IntModel, MaxPool, Node, LoweringError, Relu, Rescale,
                                  add_node, layer_grid, lower, lower_logits, rescaler)
from cnnzip.graph import shape_of, with_shapes
from cnnzip.modules import CodebookLayer, FlatLinear, QuantLayer
from cnnzip.modules.merged import ConvMaxPool
from cnnzip.ops.intmath import mean_multiplier
from cnnzip.surgery.replace import pair


_GRID_PRESERVING = ("relu", "relu6", "maxpool", "flatten")


def node_kind(node: torch.fx.Node, modules: dict[str, nn.Module], floats: bool = False) -> str:
    """What an fx node is to the lowering (``layer``, ``relu``, ``relu6``, ``maxpool``,
    ``flatten``, ``mean``, ``add``, ``cat``), or a LoweringError naming it. The
    layers are the quantized ones, or with ``floats`` the float conv and linear layers (the
    float C)."""
    what = "to C" if floats else "to integers"
    if node.op == "call_module":
        m = modules[node.target]
        if floats and isinstance(m, (QuantLayer, CodebookLayer)):
            raise LoweringError(f"{node.target}: a quantized or weight-shared layer in a float "
                                 "model")
        if isinstance(m, (nn.Conv2d, nn.Linear) if floats else QuantLayer):
            return "layer"
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, nn.ReLU6):
            return "relu6"
        if isinstance(m, nn.MaxPool2d) and plain_pool(m):
            return "maxpool"
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            return "flatten"
        if isinstance(m, nn.AdaptiveAvgPool2d) and pair(m.output_size) == (1, 1):
            return "mean"
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            raise LoweringError(f"{node.target}: its weights are float; quantize it (the int8 "
                                 "recipe) first, or export with --calibrate (calibrate=True in "
                                 "Python)")
        raise LoweringError(f"{node.target}: a {type(m).__name__} is not lowered {what} yet")
    if node.op == "call_function":
        if node.target in (F.relu, torch.relu):
            return "relu"
        if node.target is F.relu6:
            return "relu6"
        if node.target in (torch.flatten,) and node.args[1:2] in ((1,), ()) \
                and node.kwargs.get("end_dim", -1) == -1:
            return "flatten"
        if node.target in (operator.add, torch.add) and len(node.args) == 2 \
                and all(isinstance(a, torch.fx.Node) for a in node.args):
            return "add"
        if node.target is torch.cat and _cat_dim(node) == 1:
            return "cat"
        if node.target is F.adaptive_avg_pool2d and pair(node.args[1]) == (1, 1):
            return "mean"
    if node.op == "call_method":
        if node.target == "relu":
            return "relu"
        if node.target == "flatten" and node.args[1:2] == (1,):
            return "flatten"
        if node.target == "mean" and _mean_dims(node) == {2, 3}:
            return "mean"
    raise LoweringError(f"{node.name}: {node.op} {getattr(node.target, '__name__', node.target)}"
                         f" is not lowered {what} yet")


def classified(gm: torch.fx.GraphModule, modules: dict[str, nn.Module],
               floats: bool = False) -> tuple[list[torch.fx.Node], dict[torch.fx.Node, str]]:
    """The graph's operations and what each is to the lowering (:func:`node_kind`), with the
    modules that compute nothing (Identity, such as a folded BatchNorm; Dropout) taken out of
    the graph first, so that a ReLU after a folded BatchNorm fuses into the layer before it."""
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and isinstance(modules[n.target], SKIPPED):
            n.replace_all_uses_with(n.args[0])
            gm.graph.erase_node(n)
    gm.recompile()
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    return nodes, {n: node_kind(n, modules, floats) for n in nodes}


def _cat_dim(node: torch.fx.Node) -> int:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return dim % 4


def _mean_dims(node: torch.fx.Node) -> set[int]:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
    return {d % 4 for d in dims}


def _observed(gm: torch.fx.GraphModule, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every node's value on ``images`` (the fake-quantized model run node by node)."""
    seen: dict[str, torch.Tensor] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                seen[n.name] = out.detach()
            return out

    with torch.no_grad():
        Recorder(gm).run(images.float())
    return seen


def _grid_from_range(values: torch.Tensor, bits: int = 8) -> Grid:
    """An asymmetric grid over [min(0, lowest), max(0, highest)] of ``values``."""
    lo, hi = min(0.0, float(values.min())), max(0.0, float(values.max()))
    scale = float(np.float32((hi - lo) / ((1 << bits) - 1) or 1.0))  # as a file stores it
    return Grid(scale, int(round(-lo / scale)), bits)


LOGITS = ("int32", "int8")


def lower_model(model: nn.Module, in_shape: tuple[int, ...],
                calibration: torch.Tensor | None = None, logits: str = "int32") -> IntModel:
    """The integer form of a quantized model: its quantized conv (also depthwise and grouped)
    and linear layers, ReLUs, max poolings, global average poolings, flattens, residual adds
    and channel concatenations, as a graph of :class:`Node`.

    Each tensor is on one grid: a quantized layer's output grid where it has one (layers that
    feed a join), else the input grid of the quantized layer it reaches first through ReLUs,
    max poolings and flattens, else (a residual sum that only an average pooling reads) an
    8-bit grid over its range on the ``calibration`` images (normalised training images).
    A layer requantizes straight onto that grid (a ReLU that follows fused into the clamp);
    where a layer reads a tensor on another grid, a :class:`Rescale` moves it first.
    ``logits``: ``int32``, the classifier's accumulators on one scale (nothing rounded away);
    ``int8``, requantized to an 8-bit grid like every other layer (its output grid, else one
    over its range on the calibration images), as TensorFlow Lite's int8 models end.

    Raises:
        LoweringError: an operation that is not lowered yet (named), a float layer, or a
            tensor whose grid needs calibration images that were not given.
    """
    if logits not in LOGITS:
        raise ValueError(f"logits must be one of {LOGITS}, got {logits!r}")
    model = model.eval()
    shared = [name for name, m in model.named_modules() if isinstance(m, CodebookLayer)]
    if shared:
        raise LoweringError(f"{shared[0]}: weight-shared layers compute on float feature "
                             "maps; quantize them first (export with --calibrate, "
                             "calibrate=True in Python)")
    gm = with_shapes(model, in_shape, "for the integer reference",
                     leaves=(QuantLayer, FlatLinear))
    modules = dict(model.named_modules())
    nodes, kinds = classified(gm, modules)
    if "layer" not in kinds.values():
        raise LoweringError("the model has no quantized layer: compress it with the int8 "
                             "recipe first, or export with --calibrate (calibrate=True in Python)")
    for n in nodes:
        if kinds[n] == "layer" and modules[n.target].a_grid is None:
            raise LoweringError(f"{n.target}: its inputs are float; quantize them (act_bits) "
                                 "first, or export with --calibrate (calibrate=True in Python)")
    output = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if not isinstance(output, torch.fx.Node) or kinds.get(output) != "layer":
        raise LoweringError("the model must end with its classifier (a quantized layer)")

    def grid_of(n: torch.fx.Node) -> Grid:
        """The grid of ``n``'s value (see the docstring)."""
        if n in kinds and kinds[n] == "layer" and modules[n.target].o_grid is not None:
            return layer_grid(modules[n.target], "out")
        todo, seen = list(n.users), set()
        while todo:
            user = todo.pop(0)
            if user in seen or user not in kinds:
                continue
            seen.add(user)
            if kinds[user] == "layer":
                return layer_grid(modules[user.target], "in")
            if kinds[user] in _GRID_PRESERVING:
                todo += list(user.users)
        if calibration is None:
            raise LoweringError(f"{n.name}: no quantized layer reads it, so its grid comes "
                                 "from calibration images, and none were given")
        if not observed:
            observed.update(_observed(gm, calibration))
        return _grid_from_range(observed[n.name])

    observed: dict[str, torch.Tensor] = {}
    out: list[Node] = []
    tensor: dict[torch.fx.Node, int] = {}  # fx node → the integer tensor holding its value
    grids: dict[int, Grid] = {}
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    tensor[placeholder], grids[-1] = -1, grid_of(placeholder)

    def emit(op, inputs: tuple[int, ...], grid: Grid) -> int:
        out.append(Node(op, inputs, current))
        grids[len(out) - 1] = grid
        return len(out) - 1

    def on_grid(t: int, grid: Grid) -> int:
        src = grids[t]
        if src == grid:
            return t
        m, s = rescaler(src, grid)
        return emit(Rescale(src.zero, int(m[0]), int(s[0]), grid.zero, 0, grid.hi), (t,), grid)

    current = ""  # the fx node being lowered: what each emitted node is named after

    for n in nodes:
        current = n.target if n.op == "call_module" else n.name
        kind, args = kinds[n], [a for a in n.args if isinstance(a, torch.fx.Node)]
        if kind == "cat":
            args = list(n.args[0])
        if kind in ("relu", "relu6"):
            t = tensor[args[0]]
            tensor[n] = t if performed_by_producer(n, kinds) \
                else emit(Relu(grids[t].zero), (t,), grids[t])
        elif kind == "flatten":
            t = tensor[args[0]]
            tensor[n] = emit(Flatten(), (t,), grids[t])
        elif kind == "maxpool":
            m = modules[n.target]
            t = tensor[args[0]]
            tensor[n] = emit(MaxPool(pair(m.kernel_size), pair(m.stride or m.kernel_size)), (t,),
                             grids[t])
        elif kind == "layer":
            layer = modules[n.target]
            t = on_grid(tensor[args[0]], layer_grid(layer, "in"))
            if n is output and logits == "int32":
                tensor[n] = emit(lower_logits(layer, n.target), (t,), grids[t])
            elif n is output:
                g = grid_of(n)
                tensor[n] = emit(lower(layer, g.scale, g.zero, g.bits, name=n.target), (t,), g)
            else:
                # a convolution merged with its max pooling (and ReLU) is the two again: the C
                # fuses them back, requantizing the window's largest accumulator
                g, merged = grid_of(n), layer.layer if isinstance(layer.layer, ConvMaxPool) \
                    else None
                relu = fused_relu(n, kinds) or capped_by(n, kinds) \
                    or (merged is not None and merged.act is not None)
                t = emit(lower(layer, g.scale, g.zero, g.bits, relu=relu, name=n.target,
                               cap=RELU6_CAP if capped_by(n, kinds) else None), (t,), g)
                if merged is not None:
                    t = emit(MaxPool(merged.pool_kernel, merged.pool_stride), (t,), g)
                tensor[n] = t
        elif kind == "add":
            a, b = (tensor[x] for x in args)
            g = grid_of(n)
            tensor[n] = emit(add_node(grids[a], grids[b], g, fused_relu(n, kinds)), (a, b), g)
        elif kind == "mean":
            t = tensor[args[0]]
            src, g = grids[t], grid_of(n)
            h, w = shape_of(args[0])[2:]
            m, s = mean_multiplier(src.scale / g.scale, h * w)
            tensor[n] = emit(GlobalAvgPool(src.zero, m, s, g.zero,
                                           g.zero if fused_relu(n, kinds) else 0, g.hi,
                                           mean_keeps_dims(n)), (t,), g)
        elif kind == "cat":
            g = grid_of(n)
            parts = tuple(on_grid(tensor[x], g) for x in args)
            tensor[n] = emit(Concat(), parts, g)
    if tensor[output] != len(out) - 1:
        raise LoweringError("the classifier must be the last operation")
    first = grids[-1]
    scale = out[-1].op.logit_scale if logits == "int32" else grids[len(out) - 1].scale
    return IntModel(first.scale, first.zero, first.bits, tuple(out), scale,
                    tuple(grids[k] for k in range(len(out))))


def fused_relu(n: torch.fx.Node, kinds: dict[torch.fx.Node, str]) -> bool:
    """Whether ``n``'s only reader is a ReLU (which its producer then performs)."""
    users = list(n.users)
    return len(users) == 1 and kinds.get(users[0]) == "relu"


def capped_by(n: torch.fx.Node, kinds: dict[torch.fx.Node, str]) -> bool:
    """Whether ``n`` is a layer whose only reader is a ReLU6 (which the layer then performs,
    clamping at 6 as well as at 0)."""
    users = list(n.users)
    return kinds.get(n) == "layer" and len(users) == 1 and kinds.get(users[0]) == "relu6"


def performed_by_producer(n: torch.fx.Node, kinds: dict[torch.fx.Node, str]) -> bool:
    """Whether activation ``n`` (``relu`` or ``relu6``) is computed by the operation before it,
    being its only reader: a ReLU by a layer, an add or an average pooling (the clamp at zero),
    a ReLU6 by a layer (the clamp at 0 and 6). A ReLU that is not is its own operation; a
    ReLU6 that is not is refused."""
    src = n.args[0]
    if kinds[n] == "relu":
        return fused_relu(src, kinds) and kinds.get(src) in ("layer", "add", "mean")
    if not capped_by(src, kinds):
        raise LoweringError(f"{n.name}: a ReLU6 is lowered only right after a conv or linear "
                             "layer (fused into it)")
    return True


def mean_keeps_dims(n: torch.fx.Node) -> bool:
    """Whether a global average pooling node keeps the height and width (N×C×1×1)."""
    return n.op == "call_module" or bool(n.kwargs.get("keepdim", False)) \
        or (len(n.args) > 2 and bool(n.args[2]))


def plain_pool(m: nn.MaxPool2d) -> bool:
    return pair(m.padding) == (0, 0) and pair(m.dilation) == (1, 1) and not m.ceil_mode
