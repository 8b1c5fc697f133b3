"""A ``.tflite`` flatbuffer from the integer model (:class:`~cnnzip.export.ir.ops.IntModel`),
in TensorFlow Lite's int8 quantization: weights int8, symmetric, one scale per output channel;
feature maps int8 with a zero point (cnnzip's unsigned integers less 128, the same real
values); biases int32 on the input scale times each channel's weight scale; NHWC.

TensorFlow Lite Micro derives each requantization from the scales in the file (as the
double-precision product and quotient of the float32 scales, then TensorFlow Lite's
multiplier and shift), and cnnzip's lowering derives them the same way from the same float32
values, so the integers TFLM computes are the reference's (``cnnzip export --format tflite
--check`` runs every test image to show it). The model must be lowered with 8-bit logits
(``lower_model(..., logits="int8")``): TensorFlow Lite's int8 layers output int8.

Each operation of the integer model is written by one function in :data:`WRITERS`, keyed on
its exact type; a new operation adds its writer here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import flatbuffers
import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

from cnnzip.export.ir.facts import shapes
from cnnzip.export.ir.ops import (Add, Concat, Flatten, GlobalAvgPool, Grid, IntLayer, IntModel,
                                  LoweringError, MaxPool, Relu, Rescale)

OFFSET = 128  # cnnzip's unsigned 8-bit integers less this are TensorFlow Lite's int8
OPS = fb.BuiltinOperator
ACT = fb.ActivationFunctionType


@dataclass
class Value:
    """A tensor of the integer model in the file: its tensor index, and, for a flattened
    feature map, the (C, H, W) it came from (its elements are in H, W, C order, NHWC's, where
    cnnzip's are in C, H, W order: the linear layer that reads it takes its columns so)."""

    tensor: int
    flat_from: tuple[int, int, int] | None = None


@dataclass
class Flatbuffer:
    """The model being written: tensors, constant buffers, operators."""

    tensors: list = field(default_factory=list)
    buffers: list = field(default_factory=lambda: [fb.BufferT()])  # 0: the empty buffer
    operators: list = field(default_factory=list)
    codes: dict[int, int] = field(default_factory=dict)
    weights: list[tuple[int, np.ndarray, int]] = field(default_factory=list)

    def weight(self, name: str, values: np.ndarray, scales: np.ndarray, axis: int) -> int:
        """A layer's int8 weights (in the file's layout), per-channel scales along ``axis``;
        recorded in :attr:`weights` for LUT compression."""
        values = np.ascontiguousarray(values.astype(np.int8))
        index = self.tensor(name, values.shape, fb.TensorType.INT8, scales=scales, axis=axis,
                            data=values)
        self.weights.append((index, values, axis))
        return index

    def tensor(self, name: str, shape: tuple[int, ...], dtype: int, *,
               grid: Grid | None = None, scales: np.ndarray | None = None, axis: int = 0,
               data: np.ndarray | None = None) -> int:
        """A new tensor; ``grid``: a feature map's (int8: zero point less 128); ``scales``: a
        constant's per-channel scales along ``axis`` (zero points 0)."""
        t = fb.TensorT()
        t.name, t.shape, t.type = name, list(shape), dtype
        if grid is not None:
            t.quantization = _quantization([grid.scale], [grid.zero - OFFSET])
        elif scales is not None:
            t.quantization = _quantization(list(scales), [0] * len(scales), axis)
        if data is not None:
            buffer = fb.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.buffers.append(buffer)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def operator(self, code: int, inputs: list[int], outputs: list[int],
                 options_type: int = 0, options: object = None) -> None:
        op = fb.OperatorT()
        op.opcodeIndex = self.codes.setdefault(code, len(self.codes))
        op.inputs, op.outputs = inputs, outputs
        op.builtinOptionsType, op.builtinOptions = options_type, options
        self.operators.append(op)

    def feature_map(self, name: str, shape: tuple[int, ...], grid: Grid) -> int:
        """An int8 feature map: (C, H, W) is written NHWC, (N,) as (1, N)."""
        nhwc = (1, shape[1], shape[2], shape[0]) if len(shape) == 3 else (1, *shape)
        return self.tensor(name, nhwc, fb.TensorType.INT8, grid=grid)

    def finish(self, inputs: list[int], outputs: list[int], description: str,
               metadata: dict[str, object]) -> bytes:
        graph = fb.SubGraphT()
        graph.tensors, graph.operators = self.tensors, self.operators
        graph.inputs, graph.outputs, graph.name = inputs, outputs, "main"
        model = fb.ModelT()
        model.version, model.description, model.subgraphs = 3, description, [graph]
        model.operatorCodes = []
        for code in sorted(self.codes, key=self.codes.get):
            oc = fb.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
            model.operatorCodes.append(oc)
        buffer = fb.BufferT()
        buffer.data = np.frombuffer(json.dumps(metadata, sort_keys=True).encode(), np.uint8)
        self.buffers.append(buffer)
        entry = fb.MetadataT()
        entry.name, entry.buffer = "cnnzip", len(self.buffers) - 1
        model.buffers, model.metadata = self.buffers, [entry]
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def int8_nhwc(codes: np.ndarray) -> np.ndarray:
    """cnnzip's input integers (N, C, H, W, unsigned) as the file's input: int8, NHWC."""
    return (np.asarray(codes) - OFFSET).astype(np.int8).transpose(0, 2, 3, 1)


def _quantization(scales: list[float], zeros: list[int], axis: int = 0):
    q = fb.QuantizationParametersT()
    q.scale = [float(np.float32(s)) for s in scales]
    q.zeroPoint = [int(z) for z in zeros]
    q.quantizedDimension = axis
    return q


def _activation(op, grid: Grid) -> int:
    """The fused activation TensorFlow Lite clamps ``op``'s output with, which must give
    cnnzip's clamp [lo, hi] on the output ``grid`` exactly."""
    relu6_hi = min(grid.hi, grid.zero + int(np.floor(np.float32(6.0) / np.float32(grid.scale)
                                                     + 0.5)))
    for act, lo, hi in ((ACT.NONE, 0, grid.hi), (ACT.RELU, grid.zero, grid.hi),
                        (ACT.RELU6, grid.zero, relu6_hi)):
        if (op.lo, op.hi) == (lo, hi):
            return act
    raise LoweringError(f"a clamp to [{op.lo}, {op.hi}] on a grid with zero point {grid.zero} "
                        "is no activation TensorFlow Lite fuses")


Writer = Callable[[Flatbuffer, object, str, list[Value], tuple, Grid, tuple], Value]


def _conv_padding(op: IntLayer, in_shape: tuple, out_shape: tuple) -> tuple[int, bool]:
    """TensorFlow Lite's padding for ``op``'s explicit padding: SAME where that pads as
    cnnzip does, else VALID, with an explicit PAD first where cnnzip pads (``True``)."""
    if op.padding == (0, 0):
        return fb.Padding.VALID, False
    kh, kw = op.weight.shape[2:]
    same = True
    for size, out, k, s, p in zip(in_shape[1:], out_shape[1:], (kh, kw), op.stride,
                                  op.padding):
        total = max((out - 1) * s + k - size, 0)
        same &= -(-size // s) == out and total // 2 == p
    return (fb.Padding.SAME, False) if same else (fb.Padding.VALID, True)


def _layer(f: Flatbuffer, op: IntLayer, name: str, inputs: list[Value], in_shape: tuple,
           grid: Grid, out_shape: tuple) -> Value:
    (x,), in_grid = inputs, f.tensors[inputs[0].tensor].quantization
    in_scale = in_grid.scale[0]
    w_scale = np.asarray(op.w_scale, np.float64)
    bias_scales = np.float32(in_scale) * w_scale.astype(np.float32)
    out = f.feature_map(name, out_shape, grid)
    bias = f.tensor(f"{name}.bias", (len(op.bias),), fb.TensorType.INT32, scales=bias_scales,
                    data=np.asarray(op.bias, np.int32))
    act = _activation(op, grid)
    if op.kind == "linear":
        weight = np.asarray(op.weight)
        if x.flat_from is not None:  # columns in C, H, W order → H, W, C
            c, h, w = x.flat_from
            weight = weight.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(len(weight), -1)
        wt = f.weight(f"{name}.weight", weight, w_scale, 0)
        options = fb.FullyConnectedOptionsT()
        options.fusedActivationFunction = act
        f.operator(OPS.FULLY_CONNECTED, [x.tensor, wt, bias], [out],
                   fb.BuiltinOptions.FullyConnectedOptions, options)
        return Value(out)
    padding, explicit = _conv_padding(op, in_shape, out_shape)
    if explicit:
        x = _pad(f, x, name, in_shape, op.padding)
    depthwise = op.groups > 1 and op.groups == in_shape[0]
    if op.groups > 1 and not depthwise:
        raise LoweringError(f"{name}: a grouped convolution ({op.groups} groups) is not "
                            "written for TensorFlow Lite yet (only depthwise ones)")
    weight = np.asarray(op.weight).astype(np.int8)
    if depthwise:  # (out, 1, kh, kw) → (1, kh, kw, out), scales along the last axis
        wt = f.weight(f"{name}.weight", weight.transpose(1, 2, 3, 0), w_scale, 3)
        options = fb.DepthwiseConv2DOptionsT()
        options.depthMultiplier = len(weight) // op.groups
        code, kind = OPS.DEPTHWISE_CONV_2D, fb.BuiltinOptions.DepthwiseConv2DOptions
    else:  # (out, in, kh, kw) → (out, kh, kw, in)
        wt = f.weight(f"{name}.weight", weight.transpose(0, 2, 3, 1), w_scale, 0)
        options = fb.Conv2DOptionsT()
        code, kind = OPS.CONV_2D, fb.BuiltinOptions.Conv2DOptions
    options.padding, options.fusedActivationFunction = padding, act
    options.strideH, options.strideW = op.stride
    options.dilationHFactor = options.dilationWFactor = 1
    f.operator(code, [x.tensor, wt, bias], [out], kind, options)
    return Value(out)


def _pad(f: Flatbuffer, x: Value, name: str, shape: tuple, padding: tuple[int, int]) -> Value:
    """PAD with the zero point (a quantized PAD's default), as cnnzip's convolution pads."""
    (ph, pw), (c, h, w) = padding, shape
    pads = np.array([[0, 0], [ph, ph], [pw, pw], [0, 0]], np.int32)
    p = f.tensor(f"{name}.paddings", (4, 2), fb.TensorType.INT32, data=pads)
    grid = f.tensors[x.tensor].quantization
    out = f.tensor(f"{name}.padded", (1, h + 2 * ph, w + 2 * pw, c), fb.TensorType.INT8)
    f.tensors[out].quantization = grid
    f.operator(OPS.PAD, [x.tensor, p], [out], fb.BuiltinOptions.PadOptions, fb.PadOptionsT())
    return Value(out)


def _max_pool(f: Flatbuffer, op: MaxPool, name: str, inputs: list[Value], in_shape: tuple,
              grid: Grid, out_shape: tuple) -> Value:
    out = f.feature_map(name, out_shape, grid)
    options = fb.Pool2DOptionsT()
    options.padding = fb.Padding.VALID
    options.filterHeight, options.filterWidth = op.kernel
    options.strideH, options.strideW = op.stride
    f.operator(OPS.MAX_POOL_2D, [inputs[0].tensor], [out], fb.BuiltinOptions.Pool2DOptions,
               options)
    return Value(out)


def _flatten(f: Flatbuffer, op: Flatten, name: str, inputs: list[Value], in_shape: tuple,
             grid: Grid, out_shape: tuple) -> Value:
    out = f.feature_map(name, out_shape, grid)
    shape = f.tensor(f"{name}.shape", (2,), fb.TensorType.INT32,
                     data=np.array([1, out_shape[0]], np.int32))
    options = fb.ReshapeOptionsT()
    options.newShape = [1, int(out_shape[0])]
    f.operator(OPS.RESHAPE, [inputs[0].tensor, shape], [out], fb.BuiltinOptions.ReshapeOptions,
               options)
    return Value(out, tuple(in_shape) if len(in_shape) == 3 else inputs[0].flat_from)


def _rescale(f: Flatbuffer, op: Rescale, name: str, inputs: list[Value], in_shape: tuple,
             grid: Grid, out_shape: tuple) -> Value:
    """QUANTIZE from int8 to int8 requantizes from one grid to another."""
    out = f.feature_map(name, out_shape, grid)
    f.operator(OPS.QUANTIZE, [inputs[0].tensor], [out], fb.BuiltinOptions.QuantizeOptions,
               fb.QuantizeOptionsT())
    return Value(out, inputs[0].flat_from)


def _add(f: Flatbuffer, op: Add, name: str, inputs: list[Value], in_shape: tuple, grid: Grid,
         out_shape: tuple) -> Value:
    out = f.feature_map(name, out_shape, grid)
    options = fb.AddOptionsT()
    options.fusedActivationFunction = _activation(op, grid)
    f.operator(OPS.ADD, [v.tensor for v in inputs], [out], fb.BuiltinOptions.AddOptions, options)
    return Value(out, inputs[0].flat_from)


def _mean(f: Flatbuffer, op: GlobalAvgPool, name: str, inputs: list[Value], in_shape: tuple,
          grid: Grid, out_shape: tuple) -> Value:
    """MEAN over height and width (cnnzip's lowering derives its multiplier as TensorFlow
    Lite's MEAN does); a fused ReLU becomes a RELU after it."""
    act = _activation(op, grid)
    relu = act == ACT.RELU
    if act not in (ACT.NONE, ACT.RELU):
        raise LoweringError(f"{name}: an average pooling clamped as {act} is not written yet")
    shape = (1, 1, 1, out_shape[0]) if op.keepdim else (1, out_shape[0])
    out = f.tensor(name, shape, fb.TensorType.INT8, grid=grid)
    axes = f.tensor(f"{name}.axes", (2,), fb.TensorType.INT32, data=np.array([1, 2], np.int32))
    options = fb.ReducerOptionsT()
    options.keepDims = op.keepdim
    mean = f.tensor(f"{name}.mean", shape, fb.TensorType.INT8, grid=grid) if relu else out
    f.operator(OPS.MEAN, [inputs[0].tensor, axes], [mean], fb.BuiltinOptions.ReducerOptions,
               options)
    if relu:
        f.operator(OPS.RELU, [mean], [out])
    return Value(out)


def _concat(f: Flatbuffer, op: Concat, name: str, inputs: list[Value], in_shape: tuple,
            grid: Grid, out_shape: tuple) -> Value:
    if len(out_shape) != 3:
        raise LoweringError(f"{name}: only feature maps are concatenated (along channels)")
    out = f.feature_map(name, out_shape, grid)
    options = fb.ConcatenationOptionsT()
    options.axis = 3
    f.operator(OPS.CONCATENATION, [v.tensor for v in inputs], [out],
               fb.BuiltinOptions.ConcatenationOptions, options)
    return Value(out)


def _relu(f: Flatbuffer, op: Relu, name: str, inputs: list[Value], in_shape: tuple, grid: Grid,
          out_shape: tuple) -> Value:
    out = f.feature_map(name, out_shape, grid)
    f.operator(OPS.RELU, [inputs[0].tensor], [out])
    return Value(out, inputs[0].flat_from)


WRITERS: dict[type, Writer] = {
    IntLayer: _layer, MaxPool: _max_pool, Flatten: _flatten, Rescale: _rescale, Add: _add,
    GlobalAvgPool: _mean, Concat: _concat, Relu: _relu,
}


@dataclass(frozen=True)
class Written:
    """A written model: the flatbuffer, and its weight tensors (index, int8 values in the
    file's layout, per-channel axis)."""

    data: bytes
    weights: list[tuple[int, np.ndarray, int]]


def tflite_bytes(model: IntModel, in_shape: tuple[int, ...],
                 metadata: dict[str, object] | None = None) -> Written:
    """The flatbuffer of ``model`` (lowered with 8-bit logits); ``metadata`` is stored as
    JSON under the name ``cnnzip`` (TFLM ignores it).

    Raises:
        LoweringError: an operation TensorFlow Lite has no equivalent written for (named).
    """
    if not model.grids or type(model.nodes[-1].op) is not IntLayer:
        raise LoweringError("TensorFlow Lite's int8 layers output int8: lower the model with "
                            "8-bit logits (logits='int8')")
    f = Flatbuffer()
    sizes = shapes(model, in_shape)
    first = Grid(model.in_scale, model.in_zero, model.in_bits)
    values = {-1: Value(f.feature_map("input", in_shape, first))}
    for k, node in enumerate(model.nodes):
        writer = WRITERS.get(type(node.op))
        if writer is None:
            raise LoweringError(f"{node.name}: {type(node.op).__name__} is not written for "
                                "TensorFlow Lite yet")
        name = node.name or f"node{k}"
        values[k] = writer(f, node.op, name, [values[i] for i in node.inputs],
                           sizes[node.inputs[0]], model.grids[k], sizes[k])
    data = f.finish([values[-1].tensor], [values[len(model.nodes) - 1].tensor], "cnnzip int8",
                    metadata or {})
    return Written(data, f.weights)
