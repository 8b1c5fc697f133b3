"""Exact layer merging on the traced graph.

Two linear operations with nothing nonlinear between them (linear∘linear, conv∘conv when the
second reads no padding, conv∘average pooling, and a convolution or pooling followed by
flatten and a linear layer) become one layer; the second becomes an identity. A max pooling
(with the activation before it) merges into the convolution before it on request
(:func:`merge_max_pool`, a polyphase convolution). Each merge is
checked against the unmerged model's output. Every structural change goes through
:func:`cnnzip.surgery.replace.replace`, which logs a ``ModuleReplaced`` edit, so the spec rebuilds
a merged architecture. The candidates for merging (nonlinearities, residual blocks) are in
:mod:`cnnzip.surgery.linearize`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.fx
from torch import nn

from cnnzip.errors import ModelError
from cnnzip.graph import TracedGraph, trace_graph
from cnnzip.graph import shape_of as _shape
from cnnzip.metrics import layer_macs
from cnnzip.modules.merged import ConvMaxPool, FlatLinear
from cnnzip.ops.compose import average_kernel, compose_conv, compose_linear
from cnnzip.surgery.edits import Edit
from cnnzip.surgery.replace import pair, replace

# --- exact merges -------------------------------------------------------------------------------

MONOTONE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)  # commute with max pooling (non-negative slopes)

@dataclass(frozen=True)
class Merge:
    """Layers that become one: ``names[0]`` gets ``module``, the others become identities."""

    names: tuple[str, ...]
    module: nn.Module
    macs_before: int
    macs_after: int

    def describe(self) -> str:
        return f"{' + '.join(self.names)} → {type(self.module).__name__} " \
               f"({self.macs_before:,} → {self.macs_after:,} MACs)"


def _plain_conv(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.groups == 1 and tuple(m.dilation) == (1, 1)
            and m.padding_mode == "zeros" and not isinstance(m.padding, str))


def _plain_pool(m: nn.Module) -> bool:
    return (type(m) is nn.AvgPool2d and pair(m.padding) == (0, 0) and not m.ceil_mode
            and m.divisor_override is None)


def _flatten_to_linear(g: TracedGraph, node: torch.fx.Node) -> torch.fx.Node | None:
    """The Linear reached from ``node`` through one ``nn.Flatten(1)``, or None."""
    flat = g.module(node)
    if not (isinstance(flat, nn.Flatten) and flat.start_dim == 1 and flat.end_dim == -1
            and g.once(node)):
        return None
    nxt = g.next(node)
    return nxt if type(g.module(nxt)) is nn.Linear and g.once(nxt) else None


def _affine_probe(fn: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple[int, ...],
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (out, in) and bias of an affine ``fn`` over flattened inputs of ``in_shape``."""
    n = 1
    for v in in_shape:
        n *= v
    with torch.no_grad():
        bias = fn(torch.zeros(1, *in_shape, dtype=dtype)).reshape(-1)
        basis = torch.eye(n, dtype=dtype).reshape(n, *in_shape)
        weight = (fn(basis).reshape(n, -1) - bias).T
    return weight.contiguous(), bias


def _plan(g: TracedGraph, node: torch.fx.Node) -> Merge | str:
    """The exact merge that starts at ``node``'s module, or why there is none."""
    a = g.module(node)
    name = node.target if node.op == "call_module" else node.name
    if a is None or not g.once(node):
        return f"{name!r} is not a module called once whose output one layer reads"
    nxt = g.next(node)
    b = g.module(nxt)
    if b is None:
        what = "several layers" if len(node.users) > 1 else f"{nxt.name!r}" if nxt else "nothing"
        return f"{name!r} is read by {what}, not by one layer it merges with"
    if not g.once(nxt):
        return f"{nxt.target!r} is called more than once or read by several layers"
    b_name, out = nxt.target, _shape(nxt)
    with torch.no_grad():
        if isinstance(a, nn.Linear) and type(b) in (nn.Linear, FlatLinear):
            if type(b) is FlatLinear and len(_shape(node)) != 2:
                return f"{b_name!r} flattens {name!r}'s output, which is not (batch, features)"
            w, bias = compose_linear(a.weight, a.bias, b.weight, b.bias)
            merged = type(a)(a.in_features, b.out_features)
            merged.weight.copy_(w)
            merged.bias.copy_(bias)
            return Merge((name, b_name), merged, layer_macs(a, _shape(node)) + layer_macs(b, out),
                         layer_macs(merged, out))
        if _plain_conv(a) and (_plain_conv(b) or _plain_pool(b)):
            if _plain_conv(b) and pair(b.padding) != (0, 0):
                return f"{b_name!r} pads its input: a merged kernel would read real inputs " \
                       "where it reads zeros"
            if _plain_conv(b):
                w2, b2, s2 = b.weight, b.bias, pair(b.stride)
            else:
                k = pair(b.kernel_size)
                w2 = average_kernel(a.out_channels, k, a.weight.dtype)
                b2, s2 = None, pair(b.stride if b.stride is not None else b.kernel_size)
            w, bias, stride = compose_conv(a.weight, a.bias, pair(a.stride), w2, b2, s2)
            merged = nn.Conv2d(a.in_channels, w.shape[0], tuple(w.shape[2:]), stride,
                               pair(a.padding))
            merged.weight.copy_(w)
            merged.bias.copy_(bias)
            return Merge((name, b_name), merged, layer_macs(a, _shape(node)) + layer_macs(b, out),
                         layer_macs(merged, out))
        lin = _flatten_to_linear(g, nxt)
        if isinstance(a, (nn.Conv2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)) \
                and not isinstance(a, ConvMaxPool) and lin is not None:
            c = g.module(lin)
            in_shape = _shape(node.args[0])[1:]

            def chain(x: torch.Tensor) -> torch.Tensor:
                return c(b(a(x)))
            w, bias = _affine_probe(chain, in_shape, c.weight.dtype)
            merged = FlatLinear(w.shape[1], w.shape[0])
            merged.weight.copy_(w)
            merged.bias.copy_(bias)
            out = _shape(lin)
            return Merge((name, b_name, lin.target), merged,
                         layer_macs(a, _shape(node)) + layer_macs(c, out), layer_macs(merged, out))
    return f"{name!r} ({type(a).__name__}) is followed by {b_name!r} ({type(b).__name__}), " \
           "not a layer it merges with exactly"


def _monotone(m: nn.Module | None) -> bool:
    return type(m) in MONOTONE and getattr(m, "negative_slope", 0.0) >= 0.0


def _pool_plan(g: TracedGraph, node: torch.fx.Node) -> Merge | str:
    """The convolution (→ monotone activation) → max pooling that ends at ``node``, merged into
    a :class:`ConvMaxPool`, or why there is none."""
    pool, name = g.module(node), node.target
    if not (type(pool) is nn.MaxPool2d and pair(pool.padding) == (0, 0)
            and pair(pool.dilation) == (1, 1) and not pool.ceil_mode
            and not pool.return_indices):
        return f"{name!r} is not a max pooling without padding, dilation or ceil mode"
    if g.calls.get(name) != 1:
        return f"{name!r} is called more than once"
    src = g.prev(node)
    act = g.module(src)
    names = [name]
    if _monotone(act):
        if not g.once(src):
            return f"{src.target!r} is called more than once"
        names.insert(0, src.target)
        src = g.prev(src)
    else:
        act = None
    conv = g.module(src)
    if conv is None or not _plain_conv(conv) or not g.once(src):
        return f"{name!r} does not pool a convolution's output (through a ReLU, ReLU6 or " \
               "leaky ReLU) that nothing else reads"
    if act is not None and act.inplace:  # it would overwrite the maximum's saved output
        act = copy.deepcopy(act)
        act.inplace = False
    merged = ConvMaxPool(conv.in_channels, conv.out_channels, pair(conv.kernel_size),
                         pair(conv.stride), pair(conv.padding), conv.bias is not None,
                         pair(pool.kernel_size),
                         pair(pool.stride if pool.stride is not None else pool.kernel_size), act)
    merged.load_state_dict(conv.state_dict())
    return Merge((src.target, *names), merged, layer_macs(conv, _shape(src)),
                 layer_macs(merged, _shape(node)))


def _check(before: torch.Tensor, model: nn.Module, x: torch.Tensor, what: str) -> torch.Tensor:
    with torch.no_grad():
        after = model(x)
    scale = float(before.abs().max()) + 1e-6
    err = float((after - before).abs().max())
    if err > 1e-4 * scale:
        raise ModelError(f"merging {what} changed the output by {err:.3g} (of {scale:.3g}); "
                         "not an exact merge")
    return after


def _apply(model: nn.Module, merge: Merge) -> list[Edit]:
    return [replace(model, merge.names[0], merge.module),
            *(replace(model, other, nn.Identity()) for other in merge.names[1:])]


def merge_layers(model: nn.Module, first: str,
                 in_shape: tuple[int, ...]) -> tuple[Merge, list[Edit]]:
    """Merge module ``first`` with the layer that reads its output, exactly; returns the merge
    and its edits.

    Raises:
        ModelError: no such module, or the pattern does not merge exactly (a nonlinearity or a
            padded convolution between, an output read twice, ...).
    """
    return _merge_at(model, first, in_shape, _plan)


def merge_max_pool(model: nn.Module, pool: str,
                   in_shape: tuple[int, ...]) -> tuple[Merge, list[Edit]]:
    """Merge the max pooling ``pool`` (and a ReLU, ReLU6 or leaky ReLU before it) into the
    convolution it pools, exactly, as a :class:`ConvMaxPool`; returns the merge and its edits.

    Raises:
        ModelError: no such module, or it is not a plain max pooling of a plain convolution's
            output that nothing else reads.
    """
    return _merge_at(model, pool, in_shape, _pool_plan)


def max_pools(model: nn.Module, in_shape: tuple[int, ...]) -> list[str]:
    """The max poolings :func:`merge_max_pool` can merge, in execution order."""
    g = trace_graph(model, in_shape, "to find max poolings to merge")
    return [n.target for n in g.graph.nodes
            if type(g.module(n)) is nn.MaxPool2d and isinstance(_pool_plan(g, n), Merge)]


def _merge_at(model: nn.Module, name: str, in_shape: tuple[int, ...],
              planner: Callable[[TracedGraph, torch.fx.Node], Merge | str]
              ) -> tuple[Merge, list[Edit]]:
    g = trace_graph(model, in_shape, "to merge layers")
    nodes = [n for n in g.graph.nodes if n.op == "call_module" and n.target == name]
    if not nodes:
        raise ModelError(f"cannot merge {name!r}: the model has no such module in its forward")
    plan = planner(g, nodes[0])
    if isinstance(plan, str):
        raise ModelError(f"cannot merge {name!r}: {plan}")
    x = torch.randn(4, *in_shape, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        before = model(x)
    edits = _apply(model, plan)
    _check(before, model, x, plan.describe())
    return plan, edits


def find_merges(model: nn.Module, in_shape: tuple[int, ...], *,
                only_smaller: bool = True) -> list[Merge]:
    """Every exact merge available now (each from a different first layer); with
    ``only_smaller``, only those that do not add MACs."""
    g = trace_graph(model, in_shape, "to find layers to merge")
    plans = [_plan(g, n) for n in g.graph.nodes if n.op == "call_module"]
    return [p for p in plans if isinstance(p, Merge)
            and (not only_smaller or p.macs_after <= p.macs_before)]


def merge_all(model: nn.Module, in_shape: tuple[int, ...], *,
              only_smaller: bool = True) -> tuple[list[Merge], list[Edit]]:
    """Merge until nothing merges (chains merge pair by pair), checking each merge against the
    previous output; returns the merges in order and their edits."""
    x = torch.randn(4, *in_shape, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        out = model(x)
    done: list[Merge] = []
    edits: list[Edit] = []
    while True:
        merges = find_merges(model, in_shape, only_smaller=only_smaller)
        if not merges:
            return done, edits
        edits += _apply(model, merges[0])
        out = _check(out, model, x, merges[0].describe())
        done.append(merges[0])
