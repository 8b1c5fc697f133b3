"""The .cnz container's records: the per-layer records, the metadata schema, and reading a
container's metadata with every check that comes before decoding (tensor table, checksum,
schema, tensor names and dtypes, each layer's counts against its shape)."""

from __future__ import annotations

import enum
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from torch import nn

from cnnzip.errors import ModelError
from cnnzip.integrity import (MAX_PARAMS, InputRecord, RawFile, Sha256, fail, read_versioned,
                              tensor_bytes, validate)
from cnnzip.surgery.edits import Name
from cnnzip.surgery.spec import ModelSpec, SpecSchema, build_model

FORMAT = "cnnzip-cnz"
VERSION = 4
# 2 added uniformly quantized layers, 3 the checksum over everything, 4 the ordered edits
READS = (1, 2, 3, 4)

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
    model_config = ConfigDict(extra="forbid")

    index: list[tuple[Annotated[str, Field(max_length=256)],
                      Annotated[list[Dim], Field(max_length=4)]]] = Field(max_length=100_000)
    crc: Crc


ContainerHeader.model_rebuild()


def read_container(path: Path) -> tuple[RawFile, ContainerHeader]:
    """The container's metadata and tensors, every check before decoding done."""
    raw, _ = read_versioned(path, FORMAT, "cnnzip .cnz container", reads=READS,
                            checksum_since=3, dtypes={"U8": torch.uint8, "F16": torch.float16},
                            on_mismatch=_name_damaged_layer)
    if raw.meta["version"] == 1 and "quant" in raw.meta:
        raise fail(path, "damaged metadata: a version 1 container has no quantized layers")
    header = validate(path, ContainerHeader, raw.meta)
    expected = {"dense", *(f"w:{r[0]}" for r in header.layers),
                *(f"q:{r[0]}" for r in header.quant)}
    if len(expected) != 1 + len(header.layers) + len(header.quant):
        raise fail(path, "damaged metadata: a layer is recorded twice")
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


def _name_damaged_layer(raw: RawFile) -> None:
    """After a checksum mismatch: if one payload's own CRC-32 fails too, say which layer."""
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
        (r.book_bytes != 2 * r.k * r.d, f"codebook of {r.book_bytes} bytes for {r.k}×{r.d}"),
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
