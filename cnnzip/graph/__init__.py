"""All tracing: fx graphs with shapes, Torch-Pruning's dependency graph, coupled-channel groups,
foldable BatchNorms. Nothing here changes a model."""

from cnnzip.graph.barriers import op_name
from cnnzip.graph.fold import FoldPair, foldable, foldable_pairs
from cnnzip.graph.groups import ChannelGroup, Groups, Member, Role, channel_groups
from cnnzip.graph.trace import (TracedGraph, dependency_graph, is_residual, same_shape_modules,
                                shape_of, symbolic, trace_graph, with_shapes)

__all__ = ["ChannelGroup", "FoldPair", "Groups", "Member", "Role", "TracedGraph", "channel_groups",
           "dependency_graph", "foldable", "foldable_pairs", "is_residual", "op_name",
           "same_shape_modules", "shape_of", "symbolic", "trace_graph", "with_shapes"]
