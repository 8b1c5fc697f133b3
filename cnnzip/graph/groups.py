"""Coupled-channel groups: the channels that must be removed together.

A group is rooted at a layer's output channels and holds every tensor slice tied to them:
the layers that produce them (several, across a residual add), their BatchNorms, and the
layers that read them (input channels, through flatten, concatenation or a depthwise conv).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch_pruning as tp
from torch import nn

from cnnzip.errors import ModelError
from cnnzip.modules.codebook import WEIGHT_LAYERS as PRODUCERS

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class Role(StrEnum):
    """What a group member does with the group's channels."""

    OUT = "out"  # a conv or linear layer producing them
    NORM = "norm"  # a BatchNorm on them
    IN = "in"  # a conv or linear layer reading them


@dataclass(frozen=True)
class Member:
    """One tensor slice of a group.

    Attributes:
        name: module name.
        module: the module.
        role: what the module does with the channels.
        idxs: indices along the module's channel dimension, one per entry of ``root_idxs``.
        root_idxs: the root channel each index belongs to.
    """

    name: str
    module: nn.Module
    role: Role
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]


@dataclass(frozen=True)
class ChannelGroup:
    """A set of coupled channels rooted at ``root``'s ``channels`` output channels."""

    root: str
    channels: int
    members: tuple[Member, ...]

    def of_role(self, role: Role) -> list[Member]:
        return [m for m in self.members if m.role == role]


def output_layer(model: nn.Module) -> str:
    """The last conv or linear layer: its outputs are the classes, never pruned."""
    names = [n for n, m in model.named_modules() if isinstance(m, PRODUCERS)]
    if not names:
        raise ModelError("the model has no conv or linear layer to prune")
    return names[-1]


def channel_groups(model: nn.Module, graph: tp.DependencyGraph,
                   ignore: tuple[str, ...] = ()) -> list[ChannelGroup]:
    """Every prunable group of ``model`` (traced into ``graph``), the output layer excluded."""
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    ignored = [modules[n] for n in (output_layer(model), *ignore)]
    groups = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=PRODUCERS):
        members = []
        for item in group.items:
            module = item.dep.target.module
            if module not in names or not isinstance(module, (*PRODUCERS, *NORMS)):
                continue  # functional ops (add, flatten): nothing to score or remove
            out = graph.is_out_channel_pruning_fn(item.dep.handler)
            role = Role.NORM if isinstance(module, NORMS) else Role.OUT if out else Role.IN
            members.append(Member(names[module], module, role, tuple(item.idxs),
                                  tuple(item.root_idxs)))
        root = group.items[0].dep.target.module
        groups.append(ChannelGroup(names[root], len(group.items[0].idxs), tuple(members)))
    return groups
