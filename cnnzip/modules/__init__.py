"""Thin compressed layers: the weight is rebuilt from compact parameters and buffers."""

from cnnzip.modules.codebook import WEIGHT_LAYERS, CodebookLayer, weight_layers
from cnnzip.modules.merged import ConvMaxPool, FlatLinear, Linearizing
from cnnzip.modules.quant import QuantLayer

__all__ = ["CodebookLayer", "ConvMaxPool", "FlatLinear", "Linearizing", "QuantLayer",
           "WEIGHT_LAYERS", "weight_layers"]
