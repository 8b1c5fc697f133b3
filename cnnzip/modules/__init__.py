"""Thin compressed layers: the weight is rebuilt from compact parameters and buffers."""

from cnnzip.modules.codebook import CodebookLayer, materialize, prunable_layers

__all__ = ["CodebookLayer", "materialize", "prunable_layers"]
