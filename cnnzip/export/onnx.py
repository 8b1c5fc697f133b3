"""ONNX export (float, and int8 QuantizeLinear/DequantizeLinear for quantized layers) and
onnxruntime execution.

The exporter walks the model's torch.fx graph and writes one ONNX node per operation, so what
is exported is what cnnzip computes, with cnnzip's own scales and zero points: a quantized
layer's input becomes QuantizeLinear → DequantizeLinear (uint8, the calibrated zero point), its
weight an int8 initializer read through DequantizeLinear (one scale per output channel), its
bias int32 at scale input-scale × weight-scale. onnxruntime fuses these into integer kernels
(QLinearConv, QLinearMatMul) where a quantized tensor follows. Layers without an ONNX form here
are refused by name.
"""

from __future__ import annotations

import copy
import operator
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.fx
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from cnnzip.errors import CnnzipError
from cnnzip.fileio import atomic_path
from cnnzip.graph import shape_of, with_shapes
from cnnzip.modules import WEIGHT_LAYERS, CodebookLayer, ConvMaxPool, FlatLinear, QuantLayer
from cnnzip.surgery import materialize
from cnnzip.surgery.replace import pair

OPSET = 17


class ExportError(CnnzipError):
    """The model has a layer or operation this exporter cannot write."""


class _Builder:
    """Collects nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.names: set[str] = set()

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.unique(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = self.unique(base)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().numpy().astype(np.float32)


def _pads(padding: Any) -> list[int]:
    p = (padding, padding) if isinstance(padding, int) else tuple(padding)
    return [p[0], p[1], p[0], p[1]]


def _pair(v: Any) -> list[int]:
    return list(pair(v))


def _conv_attrs(conv: nn.Conv2d, where: str) -> dict[str, Any]:
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise ExportError(f"{where}: only numeric zero padding is exported "
                          f"(padding={conv.padding!r}, mode={conv.padding_mode!r})")
    return {"kernel_shape": list(conv.kernel_size), "strides": list(conv.stride),
            "pads": _pads(conv.padding), "dilations": list(conv.dilation), "group": conv.groups}


def _phases(layer: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """A weight (or per-channel tensor) as ``layer`` computes with it: a merged max pooling's
    kernels for every phase of its window; others unchanged."""
    if not isinstance(layer, ConvMaxPool):
        return t
    return layer.expand(t) if t.dim() == 4 else layer.expand_bias(t)


def _layer(b: _Builder, name: str, layer: nn.Module, x: str, weight: str,
           bias: str | None) -> str:
    """A conv, linear or flatten-linear computing on ``x`` with the named weight and bias
    (already expanded to every phase for a merged max pooling)."""
    inputs = [x, weight] + ([bias] if bias else [])
    if isinstance(layer, ConvMaxPool):
        attrs = _conv_attrs(layer, name)
        attrs.update(kernel_shape=list(layer.phase_kernel_size),
                     strides=list(layer.phase_stride))
        y = b.op("Conv", inputs, name, **attrs)
        c = layer.out_channels
        phases = [b.op("Slice", [y, b.const(f"{name}.start{i}", np.array([i * c])),
                                 b.const(f"{name}.end{i}", np.array([(i + 1) * c])),
                                 b.const(f"{name}.axis{i}", np.array([1]))], f"{name}.phase{i}")
                  for i in range(layer.phases)]
        y = b.op("Max", phases, f"{name}.max")
        return y if layer.act is None else _module(b, f"{name}.act", layer.act, y, (), False)
    if isinstance(layer, nn.Conv2d):
        return b.op("Conv", inputs, name, **_conv_attrs(layer, name))
    if isinstance(layer, FlatLinear):
        x = b.op("Flatten", [x], f"{name}.flatten", axis=1)
        inputs[0] = x
    return b.op("Gemm", inputs, name, transB=1)


def _float_layer(b: _Builder, name: str, layer: nn.Module, x: str,
                 weight: torch.Tensor) -> str:
    """``layer`` computing in float with ``weight`` (its own, or a quantized layer's rounded
    one)."""
    w = b.const(f"{name}.weight", _f32(_phases(layer, weight)))
    bias = b.const(f"{name}.bias", _f32(_phases(layer, layer.bias))) \
        if layer.bias is not None else None
    return _layer(b, name, layer, x, w, bias)


def _quant_layer(b: _Builder, name: str, q: QuantLayer, x: str, int8: bool) -> str:
    if not int8:
        return _float_layer(b, name, q.layer, x, q.weight)
    w_scale = _f32(_phases(q.layer, q.w_scale.reshape(-1)) if q.per_channel else q.w_scale)
    if q.a_grid is not None:
        x = _qdq(b, f"{name}.input", x, q.a_scale, q.a_zero, q.act_bits)
    codes = _phases(q.layer, q.codes()).numpy().astype(np.int8)
    scale = w_scale if q.per_channel else w_scale.reshape(())
    weight = b.op("DequantizeLinear",
                  [b.const(f"{name}.weight_int8", codes), b.const(f"{name}.weight_scale", scale),
                   b.const(f"{name}.weight_zero", np.zeros(scale.shape, dtype=np.int8))],
                  f"{name}.weight_dq", axis=0)
    bias = None
    if q.layer.bias is not None:
        if q.a_grid is not None:  # int32 bias at input scale × weight scale, as kernels use
            s = (_f32(q.a_scale) * w_scale).astype(np.float32)
            s = np.broadcast_to(s, (codes.shape[0],)).copy()
            b32 = np.round(_f32(_phases(q.layer, q.layer.bias)) / s).astype(np.int32)
            bias = b.op("DequantizeLinear",
                        [b.const(f"{name}.bias_int32", b32), b.const(f"{name}.bias_scale", s),
                         b.const(f"{name}.bias_zero", np.zeros(s.shape, dtype=np.int32))],
                        f"{name}.bias_dq", axis=0)
        else:
            bias = b.const(f"{name}.bias", _f32(_phases(q.layer, q.layer.bias)))
    y = _layer(b, name, q.layer, x, weight, bias)
    if q.o_grid is not None:
        y = _qdq(b, f"{name}.output", y, q.o_scale, q.o_zero, q.out_bits)
    return y


def _qdq(b: _Builder, name: str, x: str, scale: torch.Tensor, zero: torch.Tensor,
         bits: int) -> str:
    """QuantizeLinear → DequantizeLinear of ``x`` on the unsigned 8-bit grid with ``zero``,
    written as the signed grid [-128, 127] with zero point ``zero`` - 128 (the same values):
    signed-by-signed integer kernels do not saturate on x86 without VNNI, where
    unsigned-by-signed ones can (they sum pairs of products in 16 bits)."""
    if bits != 8:
        raise ExportError(f"{name}: ONNX feature maps are 8-bit; this one is {bits}-bit")
    s = b.const(f"{name}_scale", _f32(scale).reshape(()))
    z = b.const(f"{name}_zero", np.array(int(zero.item()) - 128, dtype=np.int8).reshape(()))
    return b.op("DequantizeLinear", [b.op("QuantizeLinear", [x, s, z], f"{name}_q"), s, z],
                f"{name}_dq")


def _module(b: _Builder, name: str, m: nn.Module, x: str, shape: tuple[int, ...],
            int8: bool) -> str:
    if isinstance(m, QuantLayer):
        return _quant_layer(b, name, m, x, int8)
    if isinstance(m, WEIGHT_LAYERS):
        if isinstance(m, nn.Linear) and not isinstance(m, FlatLinear) and len(shape) != 2:
            raise ExportError(f"{name}: a linear layer on a {len(shape)}-d input is not exported")
        return _float_layer(b, name, m, x, m.weight)
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return x
    if isinstance(m, nn.ReLU):
        return b.op("Relu", [x], name)
    if isinstance(m, nn.ReLU6):
        lo, hi = b.const(f"{name}.min", np.array(0, np.float32)), \
            b.const(f"{name}.max", np.array(6, np.float32))
        return b.op("Clip", [x, lo, hi], name)
    if isinstance(m, nn.LeakyReLU):
        return b.op("LeakyRelu", [x], name, alpha=float(m.negative_slope))
    if isinstance(m, nn.MaxPool2d):
        stride = m.stride if m.stride is not None else m.kernel_size
        return b.op("MaxPool", [x], name, kernel_shape=_pair(m.kernel_size),
                    strides=_pair(stride), pads=_pads(m.padding), dilations=_pair(m.dilation),
                    ceil_mode=int(m.ceil_mode))
    if isinstance(m, nn.AvgPool2d):
        if m.divisor_override is not None:
            raise ExportError(f"{name}: average pooling with divisor_override is not exported")
        stride = m.stride if m.stride is not None else m.kernel_size
        return b.op("AveragePool", [x], name, kernel_shape=_pair(m.kernel_size),
                    strides=_pair(stride), pads=_pads(m.padding), ceil_mode=int(m.ceil_mode),
                    count_include_pad=int(m.count_include_pad))
    if isinstance(m, nn.AdaptiveAvgPool2d):
        out = _pair(m.output_size)
        if out == [1, 1]:
            return b.op("GlobalAveragePool", [x], name)
        h, w = shape[-2:]
        if h % out[0] or w % out[1]:
            raise ExportError(f"{name}: adaptive pooling from {h}×{w} to {out} is not exported")
        k = [h // out[0], w // out[1]]
        return b.op("AveragePool", [x], name, kernel_shape=k, strides=k)
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise ExportError(f"{name}: only flattening from dimension 1 is exported")
        return b.op("Flatten", [x], name, axis=1)
    if isinstance(m, nn.BatchNorm2d):
        return b.op("BatchNormalization",
                    [x, *(b.const(f"{name}.{k}", _f32(t)) for k, t in
                          (("scale", m.weight if m.weight is not None
                            else torch.ones(m.num_features)),
                           ("bias", m.bias if m.bias is not None
                            else torch.zeros(m.num_features)),
                           ("mean", m.running_mean), ("var", m.running_var)))],
                    name, epsilon=float(m.eps))
    raise ExportError(f"layer {name!r} ({type(m).__name__}) has no ONNX form in this exporter")


_RELU: tuple[Callable[..., Any], ...] = (F.relu, torch.relu)
_ADD: tuple[Callable[..., Any], ...] = (operator.add, torch.add)


def _function(b: _Builder, node: torch.fx.Node, args: list[Any]) -> str:
    target = node.target
    if target in _RELU:
        return b.op("Relu", [args[0]], node.name)
    if target in _ADD and all(isinstance(a, str) for a in args[:2]) and not node.kwargs:
        return b.op("Add", args[:2], node.name)
    if target is torch.flatten and args[1:] in ([1], [1, -1]):
        return b.op("Flatten", [args[0]], node.name, axis=1)
    if target is torch.cat:
        dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
        return b.op("Concat", list(args[0]), node.name, axis=int(dim))
    name = getattr(target, "__name__", str(target))
    raise ExportError(f"operation {name!r} (graph node {node.name}) has no ONNX form in this "
                      "exporter")


def _method(b: _Builder, node: torch.fx.Node, args: list[Any]) -> str:
    if node.target == "flatten" and args[1:] in ([1], [1, -1]):
        return b.op("Flatten", [args[0]], node.name, axis=1)
    if node.target == "relu":
        return b.op("Relu", [args[0]], node.name)
    if node.target == "mean" and (len(args) > 1 or "dim" in node.kwargs):
        dims = args[1] if len(args) > 1 else node.kwargs["dim"]
        keep = args[2] if len(args) > 2 else node.kwargs.get("keepdim", False)
        axes = [int(d) for d in dims] if isinstance(dims, (list, tuple)) else [int(dims)]
        return b.op("ReduceMean", [args[0]], node.name, axes=axes, keepdims=int(keep))
    raise ExportError(f"tensor method {node.target!r} (graph node {node.name}) has no ONNX form "
                      "in this exporter")


def to_onnx(model: nn.Module, in_shape: tuple[int, ...], *, int8: bool = True) -> onnx.ModelProto:
    """The ONNX graph of ``model`` (batch dimension free).

    Args:
        model: a cnnzip model (codebook layers are written as their dense weights).
        in_shape: one input's (C, H, W).
        int8: write quantized layers as QuantizeLinear/DequantizeLinear with integer weights;
            False writes them as float layers with their rounded weights.

    Raises:
        ExportError: a layer or operation without an ONNX form here.
    """
    model = copy.deepcopy(model).eval()
    if any(isinstance(m, CodebookLayer) for m in model.modules()):
        materialize(model)
    graph = with_shapes(model, in_shape, "for export", leaves=(QuantLayer, FlatLinear))
    modules = dict(graph.named_modules())
    b = _Builder()
    env: dict[str, Any] = {}

    def value(a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            return env[a.name]
        if isinstance(a, (list, tuple)):
            return [value(v) for v in a]
        return a

    outputs: list[str] = []
    for node in graph.graph.nodes:
        args = [value(a) for a in node.args]
        if node.op == "placeholder":
            env[node.name] = b.unique("input")
        elif node.op == "call_module":
            shape = shape_of(node.args[0])
            env[node.name] = _module(b, node.target, modules[node.target], args[0], shape, int8)
        elif node.op == "call_function":
            env[node.name] = _function(b, node, args)
        elif node.op == "call_method":
            env[node.name] = _method(b, node, args)
        elif node.op == "output":
            outputs = [args[0]] if isinstance(args[0], str) else list(args[0])
        else:
            raise ExportError(f"graph node {node.name} ({node.op}) has no ONNX form in this "
                              "exporter")
    final = b.op("Identity", [outputs[0]], "logits")
    graph_proto = helper.make_graph(
        b.nodes, "cnnzip", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                          ["N", *in_shape])],
        [helper.make_tensor_value_info(final, TensorProto.FLOAT, ["N", None])], b.inits)
    proto = helper.make_model(graph_proto, producer_name="cnnzip",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto


def export_onnx(model: nn.Module, in_shape: tuple[int, ...], path: str | Path, *,
                int8: bool = True, metadata: dict[str, str] | None = None) -> int:
    """Write :func:`to_onnx`'s graph to ``path`` atomically, ``metadata`` as the model's
    metadata properties (the input's normalisation: ONNX has no place for it in the graph's
    input); returns its bytes."""
    proto = to_onnx(model, in_shape, int8=int8)
    onnx.helper.set_model_props(proto, dict(metadata or {}))
    data = proto.SerializeToString()
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return len(data)


class OrtModel(nn.Module):
    """An onnxruntime session called like a model (float tensors in and out), so the same
    accuracy and timing code runs it."""

    def __init__(self, proto: onnx.ModelProto | bytes | str | Path, *, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        source = proto.SerializeToString() if isinstance(proto, onnx.ModelProto) else proto
        self.session = ort.InferenceSession(source if isinstance(source, bytes) else str(source),
                                            options, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"input": x.numpy()})[0])


def agreement(a: nn.Module, b: nn.Module, images: torch.Tensor, *, batch_size: int = 256) -> float:
    """The fraction of ``images`` (normalised, N×C×H×W) on which both give the same top-1."""
    same = 0
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size]
            same += int((a(x).argmax(1) == b(x).argmax(1)).sum())
    return same / max(len(images), 1)


__all__ = ["ExportError", "OrtModel", "agreement", "export_onnx", "to_onnx"]
