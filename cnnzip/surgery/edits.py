"""The record of a model's edits: one frozen dataclass per kind of change, in the order made.

Surgery returns an :class:`Edit` for every change it makes; a model's spec keeps them in order
(``ModelSpec.edits``) and :func:`cnnzip.surgery.build_model` replays them on a freshly built
network, so a compressed architecture saves and reloads without pickle. An edit holds the
structure only (which channels went, which module went where, at how many bits); the values
are the file's tensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints

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
EDITS: dict[str, type] = {t.op: t for t in (ChannelsRemoved, NormFolded, ModuleReplaced,
                                             LayerQuantized, WeightsShared)}


def to_json(edit: Edit) -> dict[str, Any]:
    """The edit as a JSON object, its kind under ``op``."""
    return {"op": edit.op, **asdict(edit)}


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChannelsRemovedSchema(_Schema):
    op: Literal["channels_removed"]
    removed: list[tuple[Name, Annotated[list[Index], Field(min_length=1, max_length=1 << 16)]]] \
        = Field(min_length=1, max_length=MAX_EDITS)


class NormFoldedSchema(_Schema):
    op: Literal["norm_folded"]
    layer: Name
    norm: Name


class ModuleReplacedSchema(_Schema):
    op: Literal["module_replaced"]
    name: Name
    module: dict[str, Any]


class LayerQuantizedSchema(_Schema):
    op: Literal["layer_quantized"]
    name: Name
    weight_bits: Annotated[StrictInt, Field(ge=1, le=16)]
    act_bits: Bits
    per_channel: StrictBool
    out_bits: Bits


class WeightsSharedSchema(_Schema):
    op: Literal["weights_shared"]
    name: Name
    k: Annotated[StrictInt, Field(ge=1, le=1 << 16)]
    d: Annotated[StrictInt, Field(ge=1, le=64)]
    nnz: Annotated[StrictInt, Field(ge=0, le=200_000_000)]


EditSchema = Annotated[Union[ChannelsRemovedSchema, NormFoldedSchema, ModuleReplacedSchema,
                             LayerQuantizedSchema, WeightsSharedSchema], Field(discriminator="op")]


def from_schema(s: BaseModel) -> Edit:
    """The edit a validated schema object describes."""
    fields = s.model_dump()
    kind = EDITS[fields.pop("op")]
    if kind is ChannelsRemoved:
        fields["removed"] = tuple((root, tuple(idxs)) for root, idxs in fields["removed"])
    if kind is ModuleReplaced:
        fields["module"] = s.module  # as read (the description is checked when it is built)
    return kind(**fields)
