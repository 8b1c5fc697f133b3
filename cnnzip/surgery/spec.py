"""A model's architecture as files record it: a reference network (or a user's factory) and
the ordered edits that compressed it; :func:`build_model` rebuilds it by replaying them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints
from pydantic import ValidationError, model_validator
from torch import nn

from cnnzip.errors import ModelError
from cnnzip.models import ZOO, build_network, check_name
from cnnzip.surgery import edits as E
from cnnzip.surgery.channels import replay_removal
from cnnzip.surgery.fold import fold_batchnorm
from cnnzip.surgery.replace import construct, set_module
from cnnzip.surgery.wrappers import quantize_layer, replay_sharing

Edit = E.Edit
_LEGACY = ("channel_plan", "folded", "replaced", "quantized")


class SpecSchema(BaseModel):
    """What a file's ``model`` record may hold; checked before anything is built. Files before
    the ordered record (container v1 to v3, checkpoint v1 and v2) list their edits by kind in
    ``channel_plan``, ``folded``, ``replaced`` and ``quantized``, replayed in that order."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(max_length=256)]
    in_shape: tuple[Annotated[StrictInt, Field(ge=1, le=64)],
                    Annotated[StrictInt, Field(ge=1, le=4096)],
                    Annotated[StrictInt, Field(ge=1, le=4096)]]
    num_classes: Annotated[StrictInt, Field(ge=1, le=100_000)]
    width: Annotated[float, Field(gt=0, le=64, allow_inf_nan=False, strict=True)] | None = None
    edits: list[list[Any]] = Field(default=[], max_length=E.MAX_EDITS)
    channel_plan: list[tuple[E.Name, StrictBool, list[E.Index]]] = \
        Field(default=[], max_length=E.MAX_EDITS)
    folded: list[tuple[E.Name, E.Name]] = Field(default=[], max_length=E.MAX_EDITS)
    replaced: list[tuple[E.Name, dict[str, Any]]] = Field(default=[], max_length=E.MAX_EDITS)
    quantized: list[tuple[E.Name, E.Bits, E.Bits, StrictBool, E.Bits]] = \
        Field(default=[], max_length=E.MAX_EDITS)

    @model_validator(mode="after")
    def _one_record(self) -> "SpecSchema":
        if self.edits and any(getattr(self, k) for k in _LEGACY):
            raise ValueError("a record holds either edits or the older lists of edits, not both")
        E.from_json(self.edits)  # every field checked here, before anything is built
        return self


def _legacy_edits(s: SpecSchema) -> tuple[Edit, ...]:
    """The edits of an older record, in the order it was rebuilt."""
    edits: list[Edit] = []
    if s.channel_plan:
        edits.append(E.ChannelsRemoved(tuple((root, tuple(idxs))
                                            for root, _, idxs in s.channel_plan if idxs)))
    edits += [E.NormFolded(layer, norm) for layer, norm in s.folded]
    edits += [E.ModuleReplaced(name, desc) for name, desc in s.replaced]
    edits += [E.LayerQuantized(name, w, a, per_channel, o)
              for name, w, a, per_channel, o in s.quantized]
    return tuple(edits)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's architecture; stored in file metadata.

    Attributes:
        name: a zoo name or ``package.module:factory``.
        in_shape: input (C, H, W).
        num_classes: outputs of the classifier.
        width: width multiplier for zoo models that take one (None: not applicable).
        edits: every change made to the freshly built network, in the order made.
    """

    name: str
    in_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    width: float | None = None
    edits: tuple[Edit, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "in_shape": list(self.in_shape),
                "num_classes": self.num_classes, "width": self.width,
                "edits": E.to_json(self.edits)}

    def with_edits(self, edits: Iterable[Edit]) -> "ModelSpec":
        """This spec with ``edits`` made after its own."""
        return dataclasses.replace(self, edits=(*self.edits, *edits))

    def of(self, kind: type) -> list[Any]:
        """The edits of one kind, in order."""
        return [e for e in self.edits if isinstance(e, kind)]

    @classmethod
    def from_schema(cls, s: SpecSchema) -> "ModelSpec":
        """The spec of a validated ``model`` record (:class:`SpecSchema`)."""
        check_name(s.name, s.width)
        edits = E.from_json(s.edits) if s.edits else _legacy_edits(s)
        return cls(name=s.name, in_shape=s.in_shape, num_classes=s.num_classes,
                   width=None if s.width is None else float(s.width), edits=edits)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        try:
            return cls.from_schema(SpecSchema.model_validate(data))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(map(str, err["loc"]))
            message = err["msg"].removeprefix("Value error, ")
            raise ModelError(f"malformed model spec: {'field ' + where + ': ' if where else ''}"
                             f"{message}") from None


def resolve_spec(name: str, in_shape: tuple[int, int, int], num_classes: int,
                 width: float | None = None) -> ModelSpec:
    """Fill in the zoo's default width; reject a width for models that take none."""
    entry = ZOO.get(name)
    if entry is not None:
        if width is not None and entry.default_width is None:
            raise ModelError(f"model {name!r} has a fixed width; drop --width")
        width = entry.default_width if width is None else width
    if width is not None and width <= 0:
        raise ModelError(f"width must be positive, got {width}")
    return ModelSpec(name, tuple(in_shape), num_classes, width)


_REPLAY: dict[type, Callable[[nn.Module, Any, tuple[int, ...]], None]] = {
    E.ChannelsRemoved: replay_removal,
    E.NormFolded: lambda m, e, _: fold_batchnorm(m, [(e.layer, e.norm)], weights=False),
    E.ModuleReplaced: lambda m, e, _: set_module(m, e.name, construct(e.module)),
    E.LayerQuantized: lambda m, e, _: quantize_layer(m, e.name, e.weight_bits, e.act_bits,
                                                    per_channel=e.per_channel,
                                                    out_bits=e.out_bits),
    E.WeightsShared: lambda m, e, _: replay_sharing(m, e),
}


def replay(model: nn.Module, edits: Iterable[Edit], in_shape: tuple[int, ...]) -> None:
    """Make ``edits`` on ``model`` in order (structure only: the values are loaded after).

    Raises:
        ModelError: an edit that does not fit the model as the edits before it left it.
    """
    for i, edit in enumerate(edits, 1):
        try:
            _REPLAY[type(edit)](model, edit, in_shape)
        except ModelError as exc:
            raise ModelError(f"edit {i} ({edit.op}) does not fit the architecture: {exc}") \
                from None
        except (AttributeError, TypeError, ValueError, IndexError, KeyError,
                RuntimeError) as exc:
            raise ModelError(f"edit {i} ({edit.op}) does not fit the architecture "
                             f"({type(exc).__name__}: {exc})") from None


def build_model(spec: ModelSpec, *, trust_code: bool = False) -> nn.Module:
    """Build a freshly initialised model from its spec, its edits replayed in order.

    Args:
        spec: the architecture.
        trust_code: allow a ``package.module:factory`` name to be imported and called. Pass
            True only for a name the user gave (that is consent), never for one read from a
            file the user did not vouch for.

    Raises:
        ModelError: a factory name without ``trust_code``, a zoo model past the parameter
            limit, or an edit that does not fit the architecture.
    """
    model = build_network(spec.name, spec.in_shape, spec.num_classes, spec.width,
                          trust_code=trust_code)
    try:
        replay(model, spec.edits, spec.in_shape)
    except ModelError as exc:
        raise ModelError(f"model {spec.name!r}: {exc}") from None
    return model
