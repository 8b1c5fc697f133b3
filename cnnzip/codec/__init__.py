"""Files: the .cnz container (encode a compressed model, decode it bit for bit, verify it),
training checkpoints, stage files (:mod:`.stages`), and :func:`load_model`, which reads
either kind of model file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from cnnzip.codec.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cnnzip.codec.cnz import decode_file, encode_file, round_for_storage
from cnnzip.codec.records import FORMAT, CodebookRecord, Coding, codebook_records, quant_records
from cnnzip.integrity import metadata_keys
from cnnzip.surgery import ModelSpec

__all__ = ["Checkpoint", "CodebookRecord", "Coding", "FORMAT", "codebook_records", "decode_file",
           "encode_file", "load_checkpoint", "load_model", "quant_records", "round_for_storage",
           "save_checkpoint"]


def load_model(path: str | Path, *, trust_code: bool = False,
               ) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Load any model file cnnzip writes (.safetensors checkpoint or .cnz container), told
    apart by the metadata key each carries; returns the model, its spec and input record.

    Every field of the file is checked before use. An architecture named
    ``package.module:factory`` is code: it is imported and called only with ``trust_code``.
    """
    if FORMAT in metadata_keys(path):
        return decode_file(path, trust_code=trust_code)
    ckpt = load_checkpoint(path, trust_code=trust_code)
    return ckpt.model, ckpt.spec, ckpt.input
