"""Thin compressed layers: the weight is rebuilt from compact parameters and buffers."""

from cnnzip.modules.codebook import CodebookLayer, materialize, prunable_layers
from cnnzip.modules.merged import FlatLinear, Linearizing

__all__ = ["CodebookLayer", "FlatLinear", "Linearizing", "materialize", "prunable_layers"]
