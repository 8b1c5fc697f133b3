"""Model checkpoints in safetensors: weights as tensors, architecture and provenance as JSON
metadata, one SHA-256 over both. Loading checks the file (``cnnzip.integrity``), then rebuilds
the model from the metadata; it never unpickles and never imports code the file names unless
the caller trusts it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, StrictInt
from safetensors.torch import save_file
from torch import nn

from cnnzip.codec.records import rebuild
from cnnzip.fileio import atomic_path
from cnnzip.integrity import (CHECKSUM, InputRecord, Sha256, check_finite, check_runs, digest, fail,
                              guard, read_versioned, validate)
from cnnzip.surgery import ModelSpec, SpecSchema

FORMAT = "cnnzip-checkpoint"
VERSION = 3  # 2 added the checksum and the recorded validation split, 3 the ordered edits
READS = (1, 2, 3)


class CheckpointHeader(BaseModel):
    """The schema of a checkpoint's metadata document."""

    model_config = ConfigDict(extra="forbid")

    version: StrictInt
    model: SpecSchema
    input: InputRecord = InputRecord()
    extra: dict[str, Any] = {}
    sha256: Sha256 | None = None


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the model (in eval mode), its spec and the recorded metadata.

    Attributes:
        model: the rebuilt module with the file's weights.
        spec: the architecture.
        input: normalisation, dataset and validation split of the inputs it was trained on.
        extra: free-form provenance (training command, epochs, seed, accuracy).
        verified: the file carries a checksum and it matched (False: an old file without one).
    """

    model: nn.Module
    spec: ModelSpec
    input: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    verified: bool = True


def save_checkpoint(path: str | Path, model: nn.Module, spec: ModelSpec, *,
                    input: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s state dict and metadata to ``path`` atomically, with their checksum."""
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    meta = json.loads(json.dumps({"version": VERSION, "model": spec.to_dict(),
                                  "input": input or {}, "extra": extra or {}}, allow_nan=False))
    meta[CHECKSUM] = digest(meta, state)
    # one key: safetensors writes several metadata keys in varying order (a hash map)
    metadata = {FORMAT: json.dumps(meta, separators=(",", ":"))}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(path)


def load_checkpoint(path: str | Path, *, trust_code: bool = False) -> Checkpoint:
    """Check ``path``, rebuild the model it records and load its weights.

    Args:
        path: a checkpoint written by ``cnnzip train`` (or ``save_checkpoint``).
        trust_code: allow an architecture named ``package.module:factory`` to be imported and
            called; without it such a file is refused before anything is imported.

    Raises:
        CheckpointError: the file is missing, damaged, foreign, refused, or its weights do not
            fit the recorded architecture; the message names the file and the field or tensor.
    """
    raw, verified = read_versioned(path, FORMAT, "cnnzip checkpoint", reads=READS,
                                   checksum_since=2)
    header = validate(path, CheckpointHeader, raw.meta)
    spec, model = rebuild(path, header.model, trust_code=trust_code)
    with guard(path, "loading weights"):
        _check_tensors(path, model, raw.tensors)
        check_finite(path, raw.tensors)
        model.load_state_dict(raw.tensors, strict=True)
    check_runs(path, model, spec.in_shape, spec.num_classes)
    return Checkpoint(model.eval(), spec, header.input.model_dump(exclude_unset=True),
                      header.extra, verified)


def _check_tensors(path: str | Path, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """The file's tensors are exactly the model's: names, shapes and dtypes."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise fail(path, f"weights do not fit the recorded architecture: {what} "
                         f"({len(missing)} missing, {len(unexpected)} unexpected)")
    for name, want in expected.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise fail(path, f"tensor {name!r} is {got.dtype} {tuple(got.shape)}; the "
                             f"architecture needs {want.dtype} {tuple(want.shape)}")


def assert_finite(model: nn.Module, where: str) -> None:
    """Refuse weights holding NaN or infinity (a diverged run should not be saved silently)."""
    check_finite(where, model.state_dict())
