"""Thin compressed layers: the weight is rebuilt from compact parameters and buffers."""

from cnnzip.modules.codebook import CodebookLayer, prunable_layers

__all__ = ["CodebookLayer", "prunable_layers"]
