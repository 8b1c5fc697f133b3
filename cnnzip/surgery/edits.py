"""The record of a model's edits: one frozen dataclass per kind of change, in the order made.

Surgery returns an :class:`Edit` for every change it makes; a model's spec keeps them in order
(``ModelSpec.edits``) and :func:`cnnzip.surgery.build_model` replays them on a freshly built
network, so a compressed architecture saves and reloads without pickle. An edit holds the
structure only (which channels went, which module went where, at how many bits); the values
are the file's tensors.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Annotated, Any, ClassVar, Union

from pydantic import (Field, StrictBool, StrictInt, StringConstraints, TypeAdapter,
                      ValidationError)

Name = Annotated[str, StringConstraints(max_length=256, pattern=r"^[A-Za-z0-9_.]*$")]
Index = Annotated[StrictInt, Field(ge=0, le=1 << 20)]
Bits = Annotated[StrictInt, Field(ge=0, le=16)]
MAX_EDITS = 10_000


@dataclass(frozen=True)
class ChannelsRemoved:
    """Output channels removed from root layers, with every tensor slice coupled to them (one
    trace of the dependency graph): (root layer, channel indices) pairs, applied in order."""

    op: ClassVar[str] = "channels_removed"
    removed: tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True)
class NormFolded:
    """The BatchNorm ``norm`` folded into ``layer`` (which gains a bias), now an identity."""

    op: ClassVar[str] = "norm_folded"
    layer: str
    norm: str


@dataclass(frozen=True)
class ModuleReplaced:
    """The module under ``name`` replaced by the one ``module`` describes (layer merging:
    :func:`cnnzip.surgery.replace.describe`)."""

    op: ClassVar[str] = "module_replaced"
    name: str
    module: dict[str, Any]


@dataclass(frozen=True)
class LayerQuantized:
    """The conv or linear layer ``name`` wrapped by uniform quantization: weight bits, input
    feature-map bits (0: float), one scale per output channel or not, output bits (0: float)."""

    op: ClassVar[str] = "layer_quantized"
    name: str
    weight_bits: int
    act_bits: int
    per_channel: bool
    out_bits: int


@dataclass(frozen=True)
class WeightsShared:
    """The conv or linear layer ``name``'s ``nnz`` surviving weights coded with a codebook of
    ``k`` centroids of ``d`` weights (k-means weight sharing at d = 1, product quantization
    above)."""

    op: ClassVar[str] = "weights_shared"
    name: str
    k: int
    d: int
    nnz: int


Edit = Union[ChannelsRemoved, NormFolded, ModuleReplaced, LayerQuantized, WeightsShared]

# An edit's fields as a file stores them (positional, in field order), checked before use.
_ITEM: dict[type, TypeAdapter] = {
    ChannelsRemoved: TypeAdapter(tuple[Annotated[list[tuple[Name, Annotated[
        list[Index], Field(min_length=1, max_length=1 << 16)]]], Field(min_length=1,
                                                                       max_length=MAX_EDITS)]]),
    NormFolded: TypeAdapter(tuple[Name, Name]),
    ModuleReplaced: TypeAdapter(tuple[Name, dict[str, Any]]),
    LayerQuantized: TypeAdapter(tuple[Name, Annotated[StrictInt, Field(ge=1, le=16)], Bits,
                                      StrictBool, Bits]),
    WeightsShared: TypeAdapter(tuple[Name, Annotated[StrictInt, Field(ge=1, le=1 << 16)],
                                     Annotated[StrictInt, Field(ge=1, le=64)],
                                     Annotated[StrictInt, Field(ge=0, le=200_000_000)]]),
}
EDITS: dict[str, type] = {t.op: t for t in _ITEM}


def to_json(edits: tuple[Edit, ...] | list[Edit]) -> list[list[Any]]:
    """The edits as JSON: runs of edits of one kind grouped as ``[op, fields, fields, ...]``
    (each edit's fields positional, in order), so a long record costs little more than its
    names and numbers."""
    groups: list[list[Any]] = []
    for edit in edits:
        fields = list(astuple(edit))
        if groups and groups[-1][0] == edit.op:
            groups[-1].append(fields)
        else:
            groups.append([edit.op, fields])
    return groups


def from_json(groups: Any) -> tuple[Edit, ...]:
    """The edits a :func:`to_json` record describes, every field checked.

    Raises:
        ValueError: a record that is not a list of ``[op, fields, ...]`` groups of known kinds
            with valid fields, or one of more than ``MAX_EDITS`` edits.
    """
    if not isinstance(groups, list):
        raise ValueError("edits must be a list of [op, fields, ...] groups")
    edits: list[Edit] = []
    for g, group in enumerate(groups, 1):
        if not isinstance(group, list) or len(group) < 2 or not isinstance(group[0], str) \
                or group[0] not in EDITS:
            raise ValueError(f"edit group {g} is not [op, fields, ...] with op one of "
                             f"{', '.join(EDITS)}")
        kind = EDITS[group[0]]
        if len(edits) + len(group) - 1 > MAX_EDITS:
            raise ValueError(f"more than {MAX_EDITS:,} edits")
        for k, fields in enumerate(group[1:], 1):
            try:
                values = _ITEM[kind].validate_python(fields, strict=False)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(map(str, err["loc"]))
                raise ValueError(f"edit group {g} ({group[0]}), edit {k}: "
                                 f"{'field ' + where + ': ' if where else ''}{err['msg']}") \
                    from None
            if kind is ChannelsRemoved:
                values = (tuple((root, tuple(idxs)) for root, idxs in values[0]),)
            edits.append(kind(*values))
    return tuple(edits)
