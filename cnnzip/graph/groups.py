"""Coupled-channel groups: the channels that must be removed together.

A group is rooted at a layer's output channels and holds every tensor slice tied to them:
the layers that produce them (several, across a residual add), their BatchNorms, and the
layers that read them (input channels, through flatten, concatenation or a depthwise conv).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from torch import nn

from cnnzip.errors import ModelError
from cnnzip.graph.trace import Dependencies
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
    units: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if not self.units:
            object.__setattr__(self, "units", tuple((i,) for i in range(self.channels)))

    def of_role(self, role: Role) -> list[Member]:
        return [m for m in self.members if m.role == role]

    def channels_of(self, units) -> list[int]:
        """The root channels of the given units, in order."""
        return sorted(c for u in units for c in self.units[int(u)])


def output_layer(model: nn.Module) -> str:
    """The last conv or linear layer: its outputs are the classes, never pruned."""
    names = [n for n, m in model.named_modules() if isinstance(m, PRODUCERS)]
    if not names:
        raise ModelError("the model has no conv or linear layer to prune")
    return names[-1]


def _grouped(module: nn.Module) -> bool:
    """A grouped convolution that is not depthwise (which Torch-Pruning couples in to out)."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 \
        and not module.in_channels == module.out_channels == module.groups


def _units(members: list[Member], channels: int) -> tuple[tuple[int, ...], ...] | str:
    """The root channels that must go together: a grouped convolution computes its groups
    alike, so a channel goes with the channels at its position in every other group (same
    count per group, same positions, as Torch-Pruning's slicing of grouped weights needs).
    Returns the units, or why the group cannot be pruned at all."""
    parent = list(range(channels))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for member in members:
        module = member.module
        if member.role is Role.NORM or not _grouped(module):
            continue
        width = module.out_channels if member.role is Role.OUT else module.in_channels
        per_group = width // module.groups
        roots_at: dict[int, list[int]] = {}
        for idx, root in zip(member.idxs, member.root_idxs):
            roots_at.setdefault(idx, []).append(root)
        for position in range(per_group):
            at = [roots_at.get(position + g * per_group) for g in range(module.groups)]
            if not any(at):
                continue
            if not all(at):
                return (f"the grouped convolution {member.name!r} ({module.groups} groups) reads "
                        "these channels in some of its groups only")
            first = find(at[0][0])
            for roots in at:
                for root in roots:
                    parent[find(root)] = first
    units: dict[int, list[int]] = {}
    for channel in range(channels):
        units.setdefault(find(channel), []).append(channel)
    return tuple(tuple(u) for u in sorted(units.values()))


class Groups(list):
    """The prunable :class:`ChannelGroup` s of a model; ``whole`` names the conv and linear
    layers whose output channels cannot be pruned, with the reason."""

    whole: dict[str, str]


def channel_groups(model: nn.Module, graph: Dependencies,
                   ignore: tuple[str, ...] = ()) -> Groups:
    """Every prunable group of ``model`` (traced into ``graph``), the output layer excluded
    (the layers left whole, with the reason, in the result's ``whole``)."""
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    skipped = {output_layer(model), *ignore}
    ignored = [modules[n] for n in skipped] + graph.barriers
    groups, whole = Groups(), {}
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
        root = names[group.items[0].dep.target.module]
        channels = len(group.items[0].idxs)
        units = _units(members, channels)
        if isinstance(units, str):
            whole.update({m.name: units for m in members if m.role is Role.OUT})
            continue
        groups.append(ChannelGroup(root, channels, tuple(members), units))
    pruned = {m.name for g in groups for m in g.of_role(Role.OUT)}
    for name, module in modules.items():
        if isinstance(module, nn.ConvTranspose2d):
            whole[name] = "a transposed convolution's output channels are not pruned"
        elif isinstance(module, PRODUCERS) and name not in pruned | skipped | set(whole):
            whole[name] = _why_whole(graph, module)
    groups.whole = whole
    return groups


def _why_whole(graph: Dependencies, module: nn.Module) -> str:
    pruner = graph.get_pruner_of_module(module)
    if module not in graph.module2node or pruner is None:
        return "not reached when the model was traced"
    group = graph.get_pruning_group(module, pruner.prune_out_channels,
                                    list(range(pruner.get_out_channels(module))))
    targets = [item.dep.target.module for item in group.items]
    crossed = [b.node for b in graph.barriers if b in targets]
    if crossed:
        more = f" and {len(crossed) - 3} more" if len(crossed) > 3 else ""
        return (f"its channels pass through {', '.join(crossed[:3])}{more}: a reshape, split "
                "or slice of the channel dimension, which channel pruning cannot follow")
    return "its channels are coupled to the output layer's"
