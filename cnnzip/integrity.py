"""Reading hostile files: every safetensors file cnnzip loads goes through here.

A file is checked in this order, before any model is built: the safetensors tensor table (names,
dtypes, shapes) against what the format allows, the metadata JSON (size, nesting depth, an
object), the checksum over the canonical metadata and every tensor, then the metadata's schema
(pydantic models next to each format). The checksum detects damage; it is not a signature: who
can edit a file can recompute it, which is why the schema and the decoders check every field
anyway.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Mapping

import torch
from pydantic import (BaseModel, ConfigDict, Field, FiniteFloat, StrictInt, StringConstraints,
                      ValidationError)

from cnnzip.errors import CheckpointError, CnnzipError, UnforeseenContent

CHECKSUM = "sha256"  # the metadata key holding the checksum of the rest
MAX_PARAMS = 200_000_000  # the largest model a file may describe (800 MB of fp32 weights)
MAX_DEPTH = 32  # nesting depth of metadata JSON
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "I64": torch.int64, "U8": torch.uint8,
           "I32": torch.int32, "BOOL": torch.bool}


@dataclass(frozen=True)
class RawFile:
    """A safetensors file as read: its one JSON metadata document and its tensors."""

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def fail(path: str | Path, message: str) -> CheckpointError:
    return CheckpointError(f"{path}: {message}")


IMPORT_HINT = ("a model trained elsewhere (a state dict in .pt or .safetensors) becomes a cnnzip "
               "checkpoint with: cnnzip import MODEL WEIGHTS --dataset NAME --out "
               "FILE.safetensors")


@contextmanager
def _opened(path: str | Path) -> Iterator[Any]:
    """``safe_open(path)``, with every way it fails as one clear CheckpointError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except FileNotFoundError:
        raise fail(path, "file not found") from None
    except IsADirectoryError:
        raise fail(path, "is a directory, not a file") from None
    except (SafetensorError, OSError, ValueError, OverflowError) as exc:
        raise fail(path, f"not a readable safetensors file ({_first_line(exc)}); {IMPORT_HINT}") \
            from None


def metadata_keys(path: str | Path) -> tuple[str, ...]:
    """The string metadata keys of a safetensors file (which format wrote it)."""
    with _opened(path) as f:
        return tuple((f.metadata() or {}).keys())


def read_file(path: str | Path, key: str, what: str,
              dtypes: Mapping[str, torch.dtype] | None = None) -> RawFile:
    """Read a safetensors file whose metadata holds one JSON document under ``key``.

    Args:
        path: the file.
        key: the metadata key of the format (``cnnzip-cnz``, ``cnnzip-checkpoint``).
        what: the format in words, for "not a cnnzip ..." errors.
        dtypes: the tensor dtypes the format allows (default: float32/16, int64/32, uint8, bool).

    Raises:
        CheckpointError: missing, unreadable, foreign file, a tensor of another dtype, metadata
            that is not a JSON object of bounded depth.
    """
    allowed = dict(dtypes or _DTYPES)
    with _opened(path) as f:
        raw = (f.metadata() or {}).get(key)
        if raw is None:
            raise fail(path, f"not a {what} (no '{key}' metadata); {IMPORT_HINT}")
        for name in f.keys():
            dtype, shape = f.get_slice(name).get_dtype(), f.get_slice(name).get_shape()
            if dtype not in allowed:
                raise fail(path, f"tensor {name!r} has dtype {dtype}, which a {what} never holds")
            if math.prod(shape) > MAX_PARAMS:
                raise fail(path, f"tensor {name!r} has {math.prod(shape):,} elements, over the "
                                 f"limit of {MAX_PARAMS:,}")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return RawFile(Path(path), parse_metadata(path, raw), tensors)


def read_versioned(path: str | Path, key: str, what: str, *, reads: tuple[int, ...],
                   checksum_since: int, dtypes: Mapping[str, torch.dtype] | None = None,
                   on_mismatch: Callable[[RawFile], None] | None = None) -> tuple[RawFile, bool]:
    """:func:`read_file`, then the format version (one of ``reads``) and the checksum, which
    files of version ``checksum_since`` and later must carry.

    Args:
        on_mismatch: called with the file when the checksum fails, before the error is raised
            (to name the damaged part more precisely by raising first).

    Returns:
        The file, and whether its checksum was verified (False: an older file without one).
    """
    raw = read_file(path, key, what, dtypes)
    version = raw.meta.get("version")
    if version not in reads or type(version) is not int:
        raise fail(path, f"{what} version {version!r} is not supported (this cnnzip reads "
                         f"versions {', '.join(map(str, reads))})")
    try:
        verified = verify(raw)
    except CheckpointError:
        if on_mismatch is not None:
            on_mismatch(raw)
        raise
    if not verified and version >= checksum_since:
        raise fail(path, f"{what} version {version} without its checksum (damaged metadata)")
    return raw, verified


def parse_metadata(path: str | Path, raw: str) -> dict[str, Any]:
    """JSON text → a dict, refusing deep nesting, non-finite numbers and duplicate keys."""
    def constant(name: str) -> None:
        raise ValueError(f"{name} is not a JSON number")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) != len(items):
            raise ValueError("duplicate key in an object")
        return out

    try:
        meta = json.loads(raw, parse_constant=constant, object_pairs_hook=pairs)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise fail(path, f"damaged metadata ({_first_line(exc)})") from None
    if not isinstance(meta, dict):
        raise fail(path, "damaged metadata (not a JSON object)")
    if _depth(meta) > MAX_DEPTH:
        raise fail(path, f"damaged metadata (nested deeper than {MAX_DEPTH} levels)")
    return meta


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) \
            else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def digest(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the canonical metadata (sorted keys, without the checksum itself) and every
    tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    body = {k: v for k, v in meta.items() if k != CHECKSUM}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        h.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        h.update(tensor_bytes(tensor))
    return h.hexdigest()


def verify(raw: RawFile) -> bool:
    """Check the file's checksum; False when the file has none (written before checksums).

    Raises:
        CheckpointError: the checksum does not match (damage anywhere: metadata or tensors).
    """
    stored = raw.meta.get(CHECKSUM)
    if stored is None:
        warnings.warn(f"{raw.path}: written by an older cnnzip without a checksum; damage to "
                      "it cannot be detected", stacklevel=3)
        return False
    if not isinstance(stored, str) or stored != digest(raw.meta, raw.tensors):
        raise fail(raw.path, "checksum mismatch: the file is damaged (its metadata or tensor "
                             "data changed after it was written)")
    return True


def validate(path: str | Path, schema: type[BaseModel], data: Any) -> Any:
    """``schema.model_validate(data)``, a failure as one line naming the first bad field."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        value = repr(err.get("input"))
        value = value if len(value) <= 60 else value[:57] + "..."
        raise fail(path, f"damaged metadata: field {loc or '(top)'}: {err['msg']} "
                         f"(got {value}; {exc.error_count()} error(s) in all)") from None


def check_finite(path: str | Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuse NaN or infinite values, naming the tensor."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise fail(path, f"tensor {name!r} holds NaN or infinity")


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's raw bytes (any dtype, any shape)."""
    if tensor.numel() == 0:
        return b""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class SplitRecord(BaseModel):
    """The train/validation split a checkpoint was trained with (``compress`` reuses it)."""

    model_config = ConfigDict(extra="forbid")

    seed: Annotated[StrictInt, Field(ge=0, le=(1 << 63) - 1)]
    val_size: Annotated[StrictInt, Field(ge=0, le=1 << 31)]
    sha256: Sha256 | None = None


class InputRecord(BaseModel):
    """What a file records about the inputs its model takes."""

    model_config = ConfigDict(extra="forbid")

    dataset: Annotated[str, StringConstraints(max_length=4096)] | None = None  # npz:/folder: paths
    mean: list[FiniteFloat] = Field(default=[], max_length=64)
    std: list[Annotated[FiniteFloat, Field(gt=0)]] = Field(default=[], max_length=64)
    split: SplitRecord | None = None


@contextmanager
def guard(path: str | Path, stage: str) -> Iterator[None]:
    """The last line of defence while a file's model is rebuilt: any error that the explicit
    checks did not foresee becomes an :class:`UnforeseenContent` naming the file and stage
    (the fuzz harness counts these separately: each one is a check still to write)."""
    try:
        yield
    except CnnzipError:
        raise
    except (ArithmeticError, AttributeError, IndexError, KeyError, LookupError, RuntimeError,
            TypeError, ValueError, RecursionError, MemoryError) as exc:
        raise UnforeseenContent(f"{path}: {stage}: the file's content does not fit "
                                f"({type(exc).__name__}: {_first_line(exc)})") from None


def check_runs(path: str | Path, model: torch.nn.Module, in_shape: tuple[int, ...],
               num_classes: int) -> None:
    """Run the rebuilt model once on a blank input: a record whose layers do not chain (a
    merged layer of the wrong width, say) is refused here, not at the user's first batch."""
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, *in_shape))
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise fail(path, f"the recorded architecture does not run on inputs of shape "
                         f"{tuple(in_shape)} ({_first_line(exc)})") from None
    if isinstance(out, torch.Tensor) and tuple(out.shape) != (1, num_classes):
        raise fail(path, f"the recorded architecture gives outputs of shape "
                         f"{tuple(out.shape)[1:]}, not the {num_classes} classes it records")
