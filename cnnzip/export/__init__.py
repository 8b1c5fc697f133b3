"""Deployable artifacts: ONNX (float and int8 QuantizeLinear/DequantizeLinear) and onnxruntime."""

from cnnzip.export.onnx import ExportError, OrtModel, agreement, export_onnx, to_onnx

__all__ = ["ExportError", "OrtModel", "agreement", "export_onnx", "to_onnx"]
