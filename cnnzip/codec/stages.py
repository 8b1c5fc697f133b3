"""Stage files: after each recipe step, ``compress`` saves the model, its spec and what later
steps need under ``OUT/stages/``, so that ``--resume`` after a kill continues from the last
step saved and writes the same bytes as an uninterrupted run.

A stage file is a safetensors file like a checkpoint: the model's state and the pruning masks
as tensors, one JSON document (the spec, the fingerprint of the run up to its step, the steps'
notes and stage figures, the context's typed values) and one SHA-256 over both. It is read
with every check a checkpoint gets. The fingerprint covers the model file, seed, dataset,
options and the recipe's steps up to the file's own, not the steps after it: a run whose
recipe changed only from some step on resumes after the last step both recipes share (an hour
of pruning is not redone to try other sharing options); a file of another model file, seed,
dataset or options, or of a recipe that differs before its step, is never used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file
from torch import nn

from cnnzip.codec.records import rebuild
from cnnzip.errors import CnnzipError
from cnnzip.fileio import atomic_path
from cnnzip.integrity import (CHECKSUM, RawFile, check_finite, digest, fail, guard,
                              read_versioned, validate)
from cnnzip.modules import CodebookLayer
from cnnzip.surgery import ModelSpec

FORMAT = "cnnzip-stage"
VERSION = 1
PATTERN = "[0-9][0-9]-*.safetensors"  # NN-STEP: the step's number in the recipe, its kind


def fingerprint(**inputs: Any) -> str:
    """A SHA-256 of everything that decides a run's result (``repr`` of each input)."""
    return hashlib.sha256(repr(sorted(inputs.items())).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Values(BaseModel):
    """What the steps after a stage need besides the model: the context's typed values, the
    notes so far, and the figures of the stages so far."""

    model_config = ConfigDict(extra="forbid")

    sparsities: dict[str, Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]] | None
    notes: dict[str, Any]
    stages: list[dict[str, Any]]


@dataclass
class Saved:
    """A run as a stage file left it."""

    step: int  # index of the last step done (0-based)
    model: nn.Module
    spec: ModelSpec
    masks: dict[str, torch.Tensor]
    values: Values


def _path(directory: Path, step: int, kind: str) -> Path:
    return directory / f"{step + 1:02d}-{kind}.safetensors"


def save(directory: Path, step: int, kind: str, model: nn.Module, spec: ModelSpec,
         masks: dict[str, torch.Tensor], values: Values, run: str) -> Path:
    """Write step ``step``'s stage file (atomically) and remove those of later steps (and one of
    this step of another kind, left by a changed recipe)."""
    tensors = {f"model/{k}": v.detach().contiguous().clone()
               for k, v in model.state_dict().items()}
    tensors.update({f"mask/{k}": v.detach().contiguous().clone() for k, v in masks.items()})
    meta = json.loads(json.dumps({"version": VERSION, "run": run, "step": step, "kind": kind,
                                  "model": spec.to_dict(), "values": values.model_dump()},
                                 allow_nan=False))
    meta[CHECKSUM] = digest(meta, tensors)
    path = _path(directory, step, kind)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={FORMAT: json.dumps(meta, separators=(",", ":"))})
    for other in directory.glob(PATTERN):  # later steps, and this step of another recipe
        if int(other.name[:2]) >= step + 1 and other != path:
            other.unlink()
    return path


def clear(directory: Path) -> None:
    """Remove every stage file (a fresh run)."""
    for path in directory.glob(PATTERN):
        path.unlink()


def latest(directory: Path, kinds: list[str], runs: list[str], *,
           trust_code: bool) -> Saved | None:
    """The last stage file this run can continue from: ``kinds`` are its recipe's steps and
    ``runs[i]`` the fingerprint of the run up to step ``i``; a file whose fingerprint is not
    its step's (a later step the recipe changed) is passed over. None when there is no file.

    Raises:
        CnnzipError: files, but none of this run's; a damaged one.
    """
    found = sorted(directory.glob(PATTERN))
    if not found:
        return None
    for path in reversed(found):
        raw, _ = read_versioned(path, FORMAT, "cnnzip stage file", reads=(VERSION,),
                                checksum_since=VERSION)
        step = raw.meta.get("step")
        if type(step) is int and 0 <= step < len(runs) and raw.meta.get("run") == runs[step]:
            return _restore(path, raw, kinds, trust_code=trust_code)
    raise CnnzipError(f"{directory}: no stage file there was saved by a run with this model "
                      "file, seed, dataset and options and the same recipe up to its step; "
                      "remove the stages folder or drop --resume")


def _restore(path: Path, raw: RawFile, kinds: list[str], *, trust_code: bool) -> Saved:
    """The run as the stage file ``raw`` (read from ``path``, its fingerprint matched) left
    it, every field checked."""
    meta = raw.meta
    step = meta["step"]
    if meta.get("kind") != kinds[step] or path != _path(path.parent, step, kinds[step]):
        raise fail(path, f"step {step!r} ({meta.get('kind')!r}) is not a step of this recipe")
    if not isinstance(meta.get("model"), dict):
        raise fail(path, "no model record")
    spec, model = rebuild(path, meta["model"], trust_code=trust_code)
    state = {k[6:]: v for k, v in raw.tensors.items() if k.startswith("model/")}
    masks = {k[5:]: v for k, v in raw.tensors.items() if k.startswith("mask/")}
    check_finite(path, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise fail(path, f"the weights do not fit the architecture "
                         f"({str(exc).splitlines()[0]})") from None
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        weight = getattr(modules.get(name), "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.shape != mask.shape:
            raise fail(path, f"mask {name!r} fits no layer of the model")
    with guard(path, "loading the stage's weights"):
        for module in model.modules():
            if isinstance(module, CodebookLayer):  # derived from the codes just loaded
                module.assign(module.positions, module.codebook.data, module.codes)
    return Saved(step, model.eval(), spec, masks, validate(path, Values, meta.get("values")))
