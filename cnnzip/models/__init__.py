"""Reference CNNs, user models by import path, and checkpoints."""

from cnnzip.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cnnzip.models.zoo import ZOO, ModelSpec, build_model, resolve_spec

__all__ = ["Checkpoint", "ModelSpec", "ZOO", "build_model", "load_checkpoint", "resolve_spec",
           "save_checkpoint"]
