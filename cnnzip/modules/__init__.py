"""Thin compressed layers: the weight is rebuilt from compact parameters and buffers."""

from cnnzip.modules.codebook import CodebookLayer, materialize, prunable_layers
from cnnzip.modules.merged import ConvMaxPool, FlatLinear, Linearizing

__all__ = ["CodebookLayer", "ConvMaxPool", "FlatLinear", "Linearizing", "materialize",
           "prunable_layers"]
