"""The .cnz container's records: the per-layer records, the metadata schema, and reading a
container's metadata with every check that comes before decoding (tensor table, checksum,
schema, tensor names and dtypes, each layer's counts against its shape).

From version 5 the metadata document is stored packed (:func:`pack_document`): deflated with a
preset dictionary of the words every container repeats, then base85 text, beside the version and
the checksum in the clear; and the layers' payloads are one ``payload`` tensor, cut back into
layers by the byte counts their records give (:func:`layer_tensors`). The metadata was half
the file of a factorized resnet20 (17 of 33 KB: the edit record, 54 layer records, the dense
index, 55 tensor-table entries); packed, the document costs a fifth to a half of its plain
size and the tensor table two entries.
"""

from __future__ import annotations

import base64
import enum
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from torch import nn

from cnnzip.errors import CheckpointError, ModelError
from cnnzip.integrity import (CHECKSUM, MAX_PARAMS, InputRecord, RawFile, Sha256, fail,
                              parse_metadata, read_versioned, tensor_bytes, validate)
from cnnzip.ops.quant import POW2_EXPONENTS
from cnnzip.surgery.edits import Name
from cnnzip.surgery.spec import ModelSpec, SpecSchema, build_model

FORMAT = "cnnzip-cnz"
VERSION = 6
# 2 added uniformly quantized layers, 3 the checksum over everything, 4 the ordered edits,
# 5 the packed document and one payload tensor, 6 the dense index left to the architecture
READS = (1, 2, 3, 4, 5, 6)
PACKED_SINCE = 5
IMPLICIT_INDEX_SINCE = 6
PACKED = "packed"  # version 5's metadata key for the packed document
MAX_DOCUMENT = 1 << 24  # bytes a packed document may inflate to
# Deflate's preset dictionary: the words of a container's document (keys, edit kinds, layer
# types, the zoo's layer names, datasets). Part of the format: changing it needs a new version.
_WORDS = (
    b'"dense":{"index":[["features.0.a_scale",[1]],["features.0.a_zero",[1]],'
    b'["classifier.0.layer.bias",[10]],["layers.0.bn1.weight",[16]],["layers.0.bn1.bias",[16]],'
    b'["layers.0.bn1.running_mean",[16]],["layers.0.bn1.running_var",[16]],"crc":'
    b'"quant":[["features.3",[16,6,5,5],8,"entropy",["classifier.2",[84,120],4,"packed",'
    b'"layers":[["classifier.1",[300,784],'
    b'"input":{"dataset":"fashion-mnist","mean":[0.286],"std":[0.353],"split":{"seed":0,'
    b'"val_size":5000,"sha256":"'
    b'"edits":[["channels_removed",["norm_folded",["weights_shared",["layer_quantized",'
    b'["module_replaced",["layers.0.conv1",{"type":"Sequential","layers":[{"type":"Conv2d",'
    b'"in":8,"out":6,"kernel":[1,1],"stride":[1,1],"padding":[0,0],"bias":false},'
    b'{"type":"Conv2d","in":6,"out":6,"kernel":[3,3],"stride":[1,1],"padding":[1,1],'
    b'"bias":false,"groups":6},{"type":"Linear","in":8,"out":6,"bias":true},{"type":"ReLU"},'
    b'{"type":"ConvMaxPool","pool_kernel":[2,2],"pool_stride":[2,2],"act":null}]}]],'
    b'{"model":{"name":"lenet300","name":"lenet5","name":"lenet5-caffe","name":"vgg16",'
    b'"name":"resnet20","name":"mobilenetv2","in_shape":[1,28,28],"in_shape":[3,32,32],'
    b'"num_classes":10,"width":null,"width":0.5,')

@dataclass(frozen=True)
class CodebookRecord:
    """How one codebook layer is stored."""

    name: str
    shape: tuple[int, ...]
    nnz: int
    k: int
    d: int
    max_gap: int
    n_gaps: int
    n_codes: int
    pos_bytes: int
    code_bytes: int
    book_bytes: int
    crc: int


class Coding(enum.StrEnum):
    """How a quantized layer's integers are stored."""

    PACKED = "packed"  # at their bit width, back to back
    ENTROPY = "entropy"  # ANS-coded (when that is smaller)


@dataclass(frozen=True)
class QuantRecord:
    """How one uniformly quantized layer is stored."""

    name: str
    shape: tuple[int, ...]
    bits: int
    coding: Coding
    code_bytes: int
    scales: int
    crc: int


Count = Annotated[StrictInt, Field(ge=0, le=MAX_PARAMS)]
Dim = Annotated[StrictInt, Field(ge=1, le=1 << 20)]
Crc = Annotated[StrictInt, Field(ge=0, le=0xFFFFFFFF)]
Shape = Annotated[list[Dim], Field(min_length=1, max_length=4)]


class ContainerHeader(BaseModel):
    """The schema of a container's metadata document (every version)."""

    model_config = ConfigDict(extra="forbid")

    version: StrictInt
    model: SpecSchema
    input: InputRecord = InputRecord()
    # name, shape, nnz, k, d, max_gap, n_gaps, n_codes, pos_bytes, code_bytes, book_bytes, crc
    layers: list[tuple[Name, Shape, Count, Annotated[StrictInt, Field(ge=1, le=1 << 16)],
                       Annotated[StrictInt, Field(ge=1, le=1 << 16)],
                       Annotated[StrictInt, Field(ge=1, le=1 << 16)], Count, Count, Count,
                       Count, Count, Crc]] = Field(max_length=10_000)
    # name, shape, bits, coding, code_bytes, scales, crc
    quant: list[tuple[Name, Shape, Annotated[StrictInt, Field(ge=1, le=8)],
                      Literal["packed", "entropy"], Count, Count, Crc]] = Field(
        default=[], max_length=10_000)
    dense: "DenseRecord"
    sha256: Sha256 | None = None


class DenseRecord(BaseModel):
    """The float tensors outside coded layers: each (key, shape) in ``index`` is float16 in the
    ``dense`` tensor, in order, unless ``grids`` lists it: (its position in ``index``, bits,
    exponent) for a tensor of integers q · 2^exponent, packed at that many bits (sign
    included) after the layers' bytes in ``payload``. ``crc`` covers both parts. From version
    6 there is no ``index``: the tensors are the rebuilt architecture's, in key order."""

    model_config = ConfigDict(extra="forbid")

    index: list[tuple[Annotated[str, Field(max_length=256)],
                      Annotated[list[Dim], Field(max_length=4)]]] | None = Field(
        default=None, max_length=100_000)
    crc: Crc
    grids: list[tuple[Annotated[StrictInt, Field(ge=0, le=100_000)],
                      Annotated[StrictInt, Field(ge=2, le=15)],
                      Annotated[StrictInt, Field(ge=POW2_EXPONENTS[0], le=POW2_EXPONENTS[1])]]
                ] = Field(default=[], max_length=100_000)

    @model_validator(mode="after")
    def _grids_in_order(self) -> "DenseRecord":
        at = [g[0] for g in self.grids]
        count = len(self.index) if self.index is not None else None
        if at != sorted(set(at)) or (at and count is not None and at[-1] >= count):
            raise ValueError("dense grids must name distinct tensors of the index, in order")
        return self

    def grid_bytes(self) -> int | None:
        """The packed integers' bytes in ``payload`` (None: the rest of it, which only the
        architecture's shapes can check, where the index is left to them)."""
        if self.index is None:
            return None if self.grids else 0
        return sum(grid_size(self.index[i][1], bits) for i, bits, _ in self.grids)


def grid_size(shape: Sequence[int], bits: int) -> int:
    """Bytes of a tensor of ``shape`` packed at ``bits`` per value."""
    return -(-math.prod(shape) * bits // 8)


ContainerHeader.model_rebuild()


def pack_document(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 5's metadata for the document ``doc`` (which holds no version): the version, and
    the document deflated (raw, level 9, the preset dictionary) as base85 text. The checksum is
    added to this, over the packed text and the tensors."""
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zdict=_WORDS)
    packed = base64.b85encode(deflate.compress(text) + deflate.flush()).decode("ascii")
    return {"version": VERSION, PACKED: packed}


def unpack_document(path: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The document version 5's metadata ``meta`` packs, with the version and checksum of
    ``meta``; bounded (at most :data:`MAX_DOCUMENT` bytes inflated) and checked as plain
    metadata is (:func:`cnnzip.integrity.parse_metadata`)."""
    if set(meta) - {"version", PACKED, CHECKSUM} or not isinstance(meta.get(PACKED), str):
        raise fail(path, f"damaged metadata: a version {meta.get('version')} container holds its "
                         f"version, checksum and packed document (text) only")
    try:
        inflate = zlib.decompressobj(-15, zdict=_WORDS)
        text = inflate.decompress(base64.b85decode(meta[PACKED]), MAX_DOCUMENT)
        if not inflate.eof or inflate.unconsumed_tail or inflate.unused_data:
            raise ValueError("truncated, trailing bytes, or larger than the limit")
        doc = parse_metadata(path, text.decode("utf-8"))
    except (ValueError, zlib.error) as exc:  # UnicodeDecodeError is a ValueError
        raise fail(path, f"damaged metadata: the packed document does not inflate ({exc})") \
            from None
    if {"version", PACKED, CHECKSUM} & set(doc):
        raise fail(path, "damaged metadata: the packed document repeats a key kept outside it")
    return {**doc, **{k: v for k, v in meta.items() if k != PACKED}}


def _payload_lengths(layers: Sequence[Sequence], quant: Sequence[Sequence],
                     grid_bytes: int = 0) -> dict[str, int]:
    """Each layer's payload tensor name and its bytes, in the order version 5 stores them, from
    the codebook layers' and quantized layers' records (rows as the document holds them), then
    the dense tensors' packed integers (``grid``) where there are any."""
    return {**{f"w:{r[0]}": r[8] + r[9] + r[10] for r in layers},
            **{f"q:{r[0]}": r[4] + 2 * r[5] for r in quant},
            **({"grid": grid_bytes} if grid_bytes else {})}


def join_payloads(layers: Sequence[Sequence], quant: Sequence[Sequence],
                  tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Version 5's tensors from one tensor per layer (``w:name``, ``q:name``), the dense
    tensors' packed integers (``grid``, if any) and ``dense``: the bytes concatenated, in record
    order, as ``payload``."""
    grid = tensors.get("grid")
    parts = [tensors[name] for name in _payload_lengths(layers, quant,
                                                        0 if grid is None else grid.numel())]
    payload = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8)
    return {"dense": tensors["dense"], "payload": payload}


def layer_tensors(path: str | Path, layers: Sequence[Sequence], quant: Sequence[Sequence],
                  tensors: dict[str, torch.Tensor], grid_bytes: int | None = 0
                  ) -> dict[str, torch.Tensor]:
    """The inverse of :func:`join_payloads`: ``payload`` cut by the records' byte counts
    (``layers``, ``quant``, checked by the schema), which must cover it exactly; ``grid_bytes``
    None: the dense tensors' integers are the rest, at least a byte (the decoder checks their
    size against the architecture)."""
    if set(tensors) != {"dense", "payload"}:
        odd = sorted(set(tensors) ^ {"dense", "payload"})[0]
        raise fail(path, f"tensor {odd!r}: a packed container holds the tensors 'dense' and "
                         f"'payload' only")
    payload = tensors["payload"]
    if grid_bytes is None:
        grid_bytes = max(1, payload.numel() - sum(_payload_lengths(layers, quant).values()))
    lengths = _payload_lengths(layers, quant, grid_bytes)
    if payload.dtype != torch.uint8 or payload.dim() != 1 \
            or payload.numel() != sum(lengths.values()):
        raise fail(path, f"tensor 'payload' is {payload.dtype} of shape {tuple(payload.shape)}; "
                         f"the records give a flat uint8 of {sum(lengths.values()):,} bytes")
    out, offset = {"dense": tensors["dense"]}, 0
    for name, n in lengths.items():
        out[name], offset = payload[offset:offset + n], offset + n
    return out


def read_container(path: Path) -> tuple[RawFile, ContainerHeader]:
    """The container's metadata document and tensors (one per coded layer, ``w:name`` or
    ``q:name``, and ``dense``), every check before decoding done."""
    raw, _ = read_versioned(path, FORMAT, "cnnzip .cnz container", reads=READS,
                            checksum_since=3, dtypes={"U8": torch.uint8, "F16": torch.float16},
                            on_mismatch=_name_damaged_layer)
    if raw.meta["version"] == 1 and "quant" in raw.meta:
        raise fail(path, "damaged metadata: a version 1 container has no quantized layers")
    if raw.meta["version"] >= PACKED_SINCE:
        raw, header = _unpacked(raw)
    else:
        header = _header(path, raw.meta)
    expected = {"dense", *(f"w:{r[0]}" for r in header.layers),
                *(f"q:{r[0]}" for r in header.quant), *(["grid"] if header.dense.grids else [])}
    if set(raw.tensors) != expected:
        odd = sorted(set(raw.tensors) ^ expected)[0]
        where = "has no payload" if odd in expected else "is not in the metadata"
        raise fail(path, f"tensor {odd!r} {where}")
    for name, tensor in raw.tensors.items():
        want = torch.float16 if name == "dense" else torch.uint8
        if tensor.dtype != want or tensor.dim() != 1:
            raise fail(path, f"tensor {name!r} is {tensor.dtype} of shape {tuple(tensor.shape)}; "
                             f"the format stores a flat {want}")
    return raw, header


def _header(path: Path, doc: dict[str, Any]) -> ContainerHeader:
    """The document checked by the schema, no layer recorded twice."""
    header = validate(path, ContainerHeader, doc)
    if (header.dense.index is None) != (header.version >= IMPLICIT_INDEX_SINCE):
        raise fail(path, f"damaged metadata: a version {header.version} container "
                         f"{'has no' if header.version >= IMPLICIT_INDEX_SINCE else 'needs a'} "
                         f"dense index")
    names = [r[0] for r in header.layers] + [r[0] for r in header.quant]
    if len(set(names)) != len(names):
        raise fail(path, "damaged metadata: a layer is recorded twice")
    return header


def _unpacked(raw: RawFile) -> tuple[RawFile, ContainerHeader]:
    """A packed container (version 5) as earlier versions hold it: the document unpacked and
    checked, the payload cut into one tensor per coded layer."""
    doc = unpack_document(raw.path, raw.meta)
    header = _header(raw.path, doc)
    return RawFile(raw.path, doc, layer_tensors(raw.path, header.layers, header.quant,
                                                raw.tensors, header.dense.grid_bytes())), header


def _name_damaged_layer(raw: RawFile) -> None:
    """After a checksum mismatch: if one payload's own CRC-32 fails too, say which layer."""
    if raw.meta["version"] >= PACKED_SINCE:  # read_versioned checked the version first
        try:
            raw, _ = _unpacked(raw)
        except CheckpointError:
            return  # the metadata itself is damaged: the checksum's message stands
    for key, prefix in (("layers", "w:"), ("quant", "q:")):
        rows = raw.meta.get(key)
        for row in rows if isinstance(rows, list) else ():
            if not (isinstance(row, list) and row and isinstance(row[0], str)):
                continue
            payload = raw.tensors.get(prefix + row[0])
            if payload is not None and payload.dtype == torch.uint8 \
                    and zlib.crc32(tensor_bytes(payload)) != row[-1]:
                raise fail(raw.path, f"layer {row[0]!r}: checksum mismatch (its payload is "
                                     "damaged)")


def codebook_record(path: Path, row: tuple) -> CodebookRecord:
    """A codebook layer's record, its counts checked against its shape before any decoding."""
    r = CodebookRecord(row[0], tuple(row[1]), *row[2:])
    size = math.prod(r.shape)
    problems = [
        (size > MAX_PARAMS, f"{size:,} weights, over the limit of {MAX_PARAMS:,}"),
        (r.nnz > size, f"{r.nnz:,} non-zeros in {size:,} weights"),
        (r.n_codes != -(-r.nnz // r.d), f"{r.n_codes:,} codes for {r.nnz:,} non-zeros in "
                                        f"blocks of {r.d}"),
        (r.n_gaps < r.nnz or r.n_gaps > r.nnz + size // r.max_gap + 1,
         f"{r.n_gaps:,} gap symbols for {r.nnz:,} non-zeros in {size:,} weights"),
        (r.book_bytes != 2 * r.k * r.d and not 3 <= r.book_bytes < 2 * r.k * r.d,
         f"codebook of {r.book_bytes} bytes for {r.k}×{r.d}"),
    ]
    for bad, what in problems:
        if bad:
            raise fail(path, f"layer {r.name!r}: record does not fit its shape {r.shape}: {what}")
    return r


def rebuild(path: str | Path, record: SpecSchema | dict[str, Any], *,
            trust_code: bool) -> tuple[ModelSpec, nn.Module]:
    """The spec a file records and the architecture it describes (weights not loaded); an
    error names the file."""
    try:
        spec = ModelSpec.from_schema(record) if isinstance(record, SpecSchema) \
            else ModelSpec.from_dict(record)
        return spec, build_model(spec, trust_code=trust_code)
    except ModelError as exc:
        raise fail(path, str(exc)) from None


def codebook_records(path: str | Path) -> tuple[dict[str, Any], list[CodebookRecord]]:
    """The container's metadata and per-layer records, checked, without decoding payloads."""
    raw, header = read_container(Path(path))
    return raw.meta, [codebook_record(Path(path), r) for r in header.layers]


def quant_records(path: str | Path) -> list[QuantRecord]:
    """The container's uniformly quantized layers' records, checked, without decoding."""
    _, header = read_container(Path(path))
    return [quant_record(r) for r in header.quant]


def quant_record(row: tuple) -> QuantRecord:
    return QuantRecord(row[0], tuple(row[1]), row[2], Coding(row[3]), *row[4:])
