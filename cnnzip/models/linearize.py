"""Candidates for layer merging: the nonlinearities whose removal would let layers merge
exactly (an activation between two linear layers; a max pooling after a convolution, which
becomes an average pooling, moving a monotone activation after it) and the residual blocks
that can be skipped; and their replacement by linear counterparts, at once or gradually."""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import nn

from cnnzip.models.edit import set_module
from cnnzip.models.merge import MONOTONE, find_merges, trace_graph
from cnnzip.models.replace import Replacement, pair, replace
from cnnzip.modules.merged import Linearizing

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish,
               nn.Tanh, nn.Sigmoid)


@dataclass(frozen=True)
class Candidate:
    """A nonlinearity to linearize or a block to skip.

    Attributes:
        kind: "activation" (becomes the identity), "pool" (max → average pooling) or "block"
            (a residual block replaced by its shortcut, the identity).
        name: the module.
        swap: for a pool, the monotone activation between the convolution and the pool, which
            moves after the pool (exact: they commute) so the pooling meets the convolution.
    """

    kind: str
    name: str
    swap: str | None = None


def _is_residual(module: nn.Module) -> bool:
    """Whether ``module``'s forward adds its own input to something (through identities)."""
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception:  # not traceable alone: not a candidate
        return False
    modules = dict(module.named_modules())
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return False

    def source(arg: Any) -> Any:
        while isinstance(arg, torch.fx.Node) and arg.op == "call_module" \
                and isinstance(modules.get(arg.target), nn.Identity):
            arg = arg.args[0]
        return arg

    adds = [n for n in graph.nodes
            if (n.op == "call_function" and n.target in (operator.add, torch.add))
            or (n.op == "call_method" and n.target in ("add", "add_"))]
    return any(source(a) is inputs[0] for n in adds for a in n.args)


def _same_shape_modules(model: nn.Module, in_shape: tuple[int, ...]) -> set[str]:
    """Modules called exactly once whose output has its input's shape."""
    seen: dict[str, list[bool]] = {}
    handles = []
    for name, m in model.named_modules():
        if name:
            def hook(_m: nn.Module, args: Any, out: Any, name: str = name) -> None:
                same = bool(args) and isinstance(out, torch.Tensor) \
                    and isinstance(args[0], torch.Tensor) and args[0].shape == out.shape
                seen.setdefault(name, []).append(same)
            handles.append(m.register_forward_hook(hook))
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *in_shape))
    finally:
        for h in handles:
            h.remove()
    return {name for name, calls in seen.items() if calls == [True]}


def linearize(model: nn.Module, cand: Candidate, log: list[Replacement], *,
              gradual: bool = False) -> None:
    """Replace a candidate by its linear counterpart, or (``gradual``) by a
    :class:`Linearizing` blend that :func:`finish_linearizing` settles later."""
    modules = dict(model.named_modules())
    if cand.kind == "block":
        replace(model, cand.name, nn.Identity(), log)
        return
    module = modules[cand.name]
    if cand.kind == "activation":
        linear: nn.Module = nn.Identity()
    else:
        linear = nn.AvgPool2d(module.kernel_size, module.stride)
    target = cand.name
    if cand.swap is not None:  # act → pool becomes pool → act, exactly
        replace(model, cand.name, modules[cand.swap], log)
        target = cand.swap
    if gradual:
        set_module(model, target, Linearizing(module, linear))
    else:
        replace(model, target, linear, log)


def finish_linearizing(model: nn.Module, log: list[Replacement]) -> None:
    """Replace every :class:`Linearizing` by its linear counterpart (exact once t = 1)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, Linearizing):
            replace(model, name, m.linear, log)


def candidates(model: nn.Module, in_shape: tuple[int, ...]) -> list[tuple[Candidate, int]]:
    """Every nonlinearity whose removal enables an exact merge that does not add MACs, and every
    residual block that can be skipped, with the weight layers each removes."""
    g = trace_graph(model, in_shape, "to find layers to merge")
    base = len(find_merges(model, in_shape))
    found: list[tuple[Candidate, int]] = []
    for node in g.graph.nodes:
        m = g.module(node)
        if m is None or g.calls.get(node.target) != 1:
            continue
        cand = None
        if type(m) in ACTIVATIONS:
            cand = Candidate("activation", node.target)
        elif type(m) is nn.MaxPool2d and pair(m.padding) == (0, 0) \
                and pair(m.dilation) == (1, 1) and not m.ceil_mode:
            prev = g.prev(node)
            swap = g.module(prev)
            cand = Candidate("pool", node.target,
                             prev.target if type(swap) in MONOTONE and g.once(prev) else None)
        if cand is None:
            continue
        trial = copy.deepcopy(model)
        linearize(trial, cand, [])
        gained = len(find_merges(trial, in_shape)) - base
        if gained > 0:  # an activation's merges each remove a layer; a pool's, only the pool
            found.append((cand, gained if cand.kind == "activation" else 0))
    same = _same_shape_modules(model, in_shape)
    weight_layers = (nn.Conv2d, nn.Linear)
    for name, m in model.named_modules():
        if name in same and not isinstance(m, weight_layers) \
                and any(isinstance(x, weight_layers) for x in m.modules()) and _is_residual(m):
            found.append((Candidate("block", name),
                          sum(isinstance(x, weight_layers) for x in m.modules())))
    return found
