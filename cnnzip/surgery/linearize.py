"""Candidates for layer merging: the nonlinearities whose removal would let layers merge
exactly (an activation between two linear layers; a max pooling after a convolution, which
becomes an average pooling, moving a monotone activation after it) and the residual blocks
that can be skipped; and their replacement by linear counterparts, at once or gradually."""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass

from torch import nn

from cnnzip.graph import is_residual, op_name, same_shape_modules, trace_graph
from cnnzip.modules.codebook import WEIGHT_LAYERS
from cnnzip.modules.merged import Linearizing
from cnnzip.surgery.edits import Edit
from cnnzip.surgery.merge import MONOTONE, find_merges
from cnnzip.surgery.replace import pair, replace, set_module

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish,
               nn.Tanh, nn.Sigmoid)


class Kind(enum.StrEnum):
    """What merging a candidate takes away."""

    ACTIVATION = "activation"  # the nonlinearity becomes the identity
    POOL = "pool"  # a max pooling becomes an average pooling
    BLOCK = "block"  # a residual block is replaced by its shortcut, the identity


@dataclass(frozen=True)
class Candidate:
    """A nonlinearity to linearize or a block to skip.

    Attributes:
        kind: what merging it takes away.
        name: the module.
        swap: for a pool, the monotone activation between the convolution and the pool, which
            moves after the pool (exact: they commute) so the pooling meets the convolution.
    """

    kind: Kind
    name: str
    swap: str | None = None


def linearize(model: nn.Module, cand: Candidate, *, gradual: bool = False) -> list[Edit]:
    """Replace a candidate by its linear counterpart, or (``gradual``) by a
    :class:`Linearizing` blend that :func:`finish_linearizing` settles later; returns the
    edits made (none for the blend, which is no change to record until it settles)."""
    modules = dict(model.named_modules())
    if cand.kind is Kind.BLOCK:
        return [replace(model, cand.name, nn.Identity())]
    edits: list[Edit] = []
    module = modules[cand.name]
    if cand.kind is Kind.ACTIVATION:
        linear: nn.Module = nn.Identity()
    else:
        linear = nn.AvgPool2d(module.kernel_size, module.stride)
    target = cand.name
    if cand.swap is not None:  # act → pool becomes pool → act, exactly
        edits.append(replace(model, cand.name, modules[cand.swap]))
        target = cand.swap
    if gradual:
        set_module(model, target, Linearizing(module, linear))
    else:
        edits.append(replace(model, target, linear))
    return edits


def finish_linearizing(model: nn.Module) -> list[Edit]:
    """Replace every :class:`Linearizing` by its linear counterpart (exact once t = 1);
    returns the edits."""
    return [replace(model, name, m.linear) for name, m in list(model.named_modules())
            if isinstance(m, Linearizing)]


FUNCTIONAL = {"relu", "relu_", "relu6", "leaky_relu", "elu", "gelu", "silu", "hardswish",
              "tanh", "sigmoid", "max_pool2d"}


def functional_nonlinearities(model: nn.Module, in_shape: tuple[int, ...]) -> list[str]:
    """Activations and max poolings the forward calls as functions (``F.relu``, ``x.relu()``):
    merging removes modules, so these are never candidates. Named by their fx node and what
    they read."""
    g = trace_graph(model, in_shape, "to find layers to merge")
    found = []
    for node in g.graph.nodes:
        if op_name(node) in FUNCTIONAL:
            src = node.args[0] if node.args else None
            after = src.target if getattr(src, "op", None) == "call_module" else \
                getattr(src, "name", "?")
            found.append(f"{node.name} (after {after})")
    return found


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
            cand = Candidate(Kind.ACTIVATION, node.target)
        elif type(m) is nn.MaxPool2d and pair(m.padding) == (0, 0) \
                and pair(m.dilation) == (1, 1) and not m.ceil_mode:
            prev = g.prev(node)
            swap = g.module(prev)
            cand = Candidate(Kind.POOL, node.target,
                             prev.target if type(swap) in MONOTONE and g.once(prev) else None)
        if cand is None:
            continue
        trial = copy.deepcopy(model)
        linearize(trial, cand)
        gained = len(find_merges(trial, in_shape)) - base
        if gained > 0:  # an activation's merges each remove a layer; a pool's, only the pool
            found.append((cand, gained if cand.kind is Kind.ACTIVATION else 0))
    same = same_shape_modules(model, in_shape)
    for name, m in model.named_modules():
        if name in same and not isinstance(m, WEIGHT_LAYERS) \
                and any(isinstance(x, WEIGHT_LAYERS) for x in m.modules()) and is_residual(m):
            found.append((Candidate(Kind.BLOCK, name),
                          sum(isinstance(x, WEIGHT_LAYERS) for x in m.modules())))
    return found
