"""Model checkpoints in safetensors: weights as tensors, architecture and provenance as JSON
metadata. Loading rebuilds the model from the metadata and never unpickles."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cnnzip.errors import CheckpointError, ModelError
from cnnzip.fileio import atomic_path
from cnnzip.models.zoo import ModelSpec, build_model

FORMAT = "cnnzip-checkpoint"
VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the model (in eval mode), its spec and the recorded metadata.

    Attributes:
        model: the rebuilt module with the file's weights.
        spec: the architecture.
        input: normalisation and dataset of the inputs it was trained on.
        extra: free-form provenance (training command, epochs, seed, accuracy).
    """

    model: nn.Module
    spec: ModelSpec
    input: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | Path, model: nn.Module, spec: ModelSpec, *,
                    input: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s state dict and metadata to ``path`` atomically."""
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    # one key: safetensors writes several metadata keys in varying order (a hash map)
    metadata = {FORMAT: json.dumps({"version": VERSION, "model": spec.to_dict(),
                                    "input": input or {}, "extra": extra or {}})}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(path)


def read_metadata(path: str | Path) -> dict[str, str]:
    """Return a safetensors file's string metadata (empty if it has none); the file's format is
    the key that holds its JSON document."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Rebuild the model recorded in ``path`` and load its weights.

    Raises:
        CheckpointError: the file is missing, damaged, foreign, or its weights do not fit the
            recorded architecture.
    """
    header = _header(path)
    if header.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {header.get('version')!r} is not "
                              f"supported (this cnnzip reads version {VERSION})")
    try:
        spec = ModelSpec.from_dict(header["model"])
        input_info = dict(header.get("input", {}))
        extra = dict(header.get("extra", {}))
    except (KeyError, TypeError, ValueError, ModelError) as exc:
        raise CheckpointError(f"{path}: damaged metadata ({exc})") from None
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged tensor data ({exc})") from None
    model = build_model(spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit model {spec.name!r}: {first}") from None
    return Checkpoint(model.eval(), spec, input_info, extra)


def _header(path: str | Path) -> dict[str, Any]:
    raw = read_metadata(path).get(FORMAT)
    if raw is None:
        raise CheckpointError(f"{path}: not a cnnzip checkpoint (no '{FORMAT}' metadata)")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: damaged metadata ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: damaged metadata (not a JSON object)")
    return header



def assert_finite(model: nn.Module, where: str) -> None:
    """Refuse weights holding NaN or infinity (a diverged run should not be saved silently)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{where}: tensor {name!r} holds NaN or infinity")
