"""Tracing a model: fx graphs (with shapes), Torch-Pruning's dependency graph, and the
questions the editing code asks of them (who reads what, how often, in which shape)."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch_pruning as tp
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from cnnzip.errors import ModelError
from cnnzip.graph.barriers import BARRIER_PRUNERS, Barrier, with_barriers
from cnnzip.modules.merged import ConvMaxPool


class _LeafTracer(torch.fx.Tracer):
    def __init__(self, leaves: tuple[type, ...]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def symbolic(model: nn.Module, purpose: str, *,
             leaves: tuple[type, ...] = ()) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace`` with a tracing failure reported as the model's; modules of
    the ``leaves`` types stay whole (one node) besides torch.nn's own and merged max poolings."""
    try:
        return torch.fx.GraphModule(model, _LeafTracer((*leaves, ConvMaxPool)).trace(model))
    except Exception as exc:  # tracing runs the user's forward: report it as the model's
        raise ModelError(f"cannot trace the model {purpose}: {type(exc).__name__}: {exc}") from None


def with_shapes(model: nn.Module, in_shape: tuple[int, ...], purpose: str, *,
                leaves: tuple[type, ...] = ()) -> torch.fx.GraphModule:
    """:func:`symbolic`, every node's output shape propagated from one zero input of
    ``in_shape`` (in eval mode) into ``node.meta["tensor_meta"]``."""
    gm = symbolic(model, purpose, leaves=leaves)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(1, *in_shape))
    finally:
        model.train(was_training)
    return gm


def shape_of(node: torch.fx.Node) -> tuple[int, ...]:
    """The output shape of a node of a :func:`with_shapes` graph (batch of one first)."""
    return tuple(node.meta["tensor_meta"].shape)


def module_calls(graph: torch.fx.Graph) -> dict[str, int]:
    """How many times the graph calls each module."""
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return calls


@dataclass
class TracedGraph:
    """An fx graph with shapes, the model's modules and how often each is called."""

    graph: torch.fx.Graph
    modules: dict[str, nn.Module]
    calls: dict[str, int]

    def module(self, node: Any) -> nn.Module | None:
        if isinstance(node, torch.fx.Node) and node.op == "call_module":
            return self.modules[node.target]
        return None

    def once(self, node: torch.fx.Node) -> bool:
        """Called once in the graph, and its output read by one node."""
        return self.calls.get(node.target, 0) == 1 and len(node.users) == 1

    def next(self, node: torch.fx.Node) -> torch.fx.Node | None:
        """The one node reading ``node`` (through identities), or None."""
        while len(node.users) == 1:
            (user,) = node.users
            if not isinstance(self.module(user), nn.Identity):
                return user
            node = user
        return None

    def prev(self, node: torch.fx.Node) -> torch.fx.Node | None:
        """The node ``node`` reads (through identities) when that is its only reader."""
        src = node.args[0] if node.args else None
        while isinstance(self.module(src), nn.Identity) and len(src.users) == 1:
            src = src.args[0]
        return src if isinstance(src, torch.fx.Node) and len(src.users) == 1 else None


def trace_graph(model: nn.Module, in_shape: tuple[int, ...], purpose: str) -> TracedGraph:
    """``model``'s :class:`TracedGraph` on inputs of ``in_shape``."""
    gm = with_shapes(model, in_shape, purpose)
    return TracedGraph(gm.graph, dict(model.named_modules()), module_calls(gm.graph))


class Dependencies(tp.DependencyGraph):
    """Torch-Pruning's dependency graph of a model, with the :class:`Barrier` modules that
    stand for the reshapes channel pruning cannot follow (see :mod:`cnnzip.graph.barriers`)."""

    barriers: list[Barrier]


def dependency_graph(model: nn.Module, in_shape: tuple[int, ...]) -> Dependencies:
    """Trace ``model`` (in eval mode) on a zero input of ``in_shape`` into Torch-Pruning's
    dependency graph (which channels of which layers are coupled). A model fx can trace has its
    channel-moving reshapes replaced by barriers first; one it cannot is traced as it is."""
    was_training = model.training
    model.eval()
    try:
        try:
            traced, barriers = with_barriers(with_shapes(model, in_shape, "for structured pruning"))
        except ModelError:  # not fx-traceable: Torch-Pruning follows autograd alone
            traced, barriers = model, []
        graph = Dependencies()
        with torch.enable_grad():
            graph.build_dependency(traced, torch.zeros(1, *in_shape), verbose=False,
                                   customized_pruners=dict(BARRIER_PRUNERS))
        graph.barriers = barriers
        return graph
    except Exception as exc:  # tracing runs the user's forward: report it as the model's
        raise ModelError(f"cannot trace the model for structured pruning: "
                         f"{type(exc).__name__}: {exc}") from None
    finally:
        model.train(was_training)


def is_residual(module: nn.Module) -> bool:
    """Whether ``module``'s forward adds its own input to something (through identities)."""
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception:  # not traceable alone: not a residual block we can reason about
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


def same_shape_modules(model: nn.Module, in_shape: tuple[int, ...]) -> set[str]:
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
