"""The int8 .tflite: TensorFlow Lite Micro's own interpreter (the tflite-micro wheel) runs it,
and its int8 logits equal the integer reference's (lowered with 8-bit logits) on every input.
A model TFLM refuses fails here; nothing is skipped."""

import numpy as np
import pytest
import torch
from torch import nn

from cnnzip.data import batches, synthetic_splits
from cnnzip.export.ir.lower import lower_model
from cnnzip.export.ir.ops import LoweringError
from cnnzip.export.measure import tflm
from cnnzip.export.tflite.writer import OFFSET, int8_nhwc, tflite_bytes
from cnnzip.methods import Context, apply
from cnnzip.methods.quant import Quantize
from cnnzip.ops.intmath import mean_multiplier, requantize
from tests.helpers import TINY_ZOO, prune_layers, tiny, zoo_model

IN = (1, 28, 28)


def _lowered(model: nn.Module, sparsity: float = 0.5, **options):
    torch.manual_seed(0)
    prune_layers(model, sparsity)  # pruned weights are zeros in the file, all-zero channels too
    splits = synthetic_splits()
    apply(model, Quantize(calibration=256, **options),
          Context(splits, finetune_epochs=0, quiet=True))
    calibration, _ = next(iter(batches(splits.train, splits.info, 256)))
    x, _ = next(iter(batches(splits.test, splits.info, 300)))
    int_model = lower_model(model, IN, calibration, logits="int8")
    return int_model, int_model.quantize_input(x)


def _tflm_equals_reference(int_model, codes) -> bytes:
    data = tflite_bytes(int_model, IN).data
    got = tflm.run(data, int8_nhwc(codes))
    expected = int_model(codes) - OFFSET
    assert got.dtype == np.int8 and got.shape == expected.shape
    assert np.array_equal(got.astype(np.int64), expected)
    return data


def _model(name: str) -> nn.Module:
    if name in TINY_ZOO:
        return tiny(name)
    return zoo_model(name, width=0.25 if name in ("resnet20", "mobilenetv2") else None)


@pytest.mark.parametrize("name", sorted(set(TINY_ZOO) - {"grouped"})
                         + ["lenet5", "lenet300", "resnet20", "mobilenetv2"])
def test_every_tiny_zoo_model_runs_in_tflm_bit_exact(name):
    """Convolutions padded as TFLite's SAME pads and otherwise (an explicit PAD), strided,
    depthwise; residual adds, concatenation, global average pooling (MEAN), ReLU6, flatten
    into a linear layer (its columns reordered for NHWC), all-zero channels; 300 inputs."""
    data = _tflm_equals_reference(*_lowered(_model(name)))
    assert data[4:8] == b"TFL3"
    assert 0 < tflm.arena(data)["head"] < tflm.arena(data)["total"]


def test_low_bit_and_per_tensor_weights_are_exact_too():
    int_model, codes = _lowered(_model("lenet5"), 0.0, weight_bits=4, per_channel=False)
    _tflm_equals_reference(int_model, codes)


def test_a_grouped_convolution_is_refused_by_name():
    int_model, _ = _lowered(tiny("grouped"))
    with pytest.raises(LoweringError, match="grouped convolution"):
        tflite_bytes(int_model, IN)


def test_int32_logits_are_refused_with_the_way_out():
    model = _model("lenet5")
    int_model, _ = _lowered(model)
    int32 = lower_model(model, IN)
    assert type(int32.nodes[-1].op).__name__ == "Logits"
    with pytest.raises(LoweringError, match="logits='int8'"):
        tflite_bytes(int32, IN)
    assert int_model.logit_scale == int_model.grids[-1].scale


def test_the_mean_multiplier_is_tflites():
    """TFLite's MEAN: the scale's multiplier shifted left by the count's bits and divided by
    the count (truncating); its requantization is within a step of the exact mean."""
    m, s = mean_multiplier(0.5, 49)
    assert (m, s) == ((1 << 30 << 5) // 49, 0 - 5)
    sums = np.arange(-5000, 5000, 7)
    got = requantize(sums, np.int64(m), np.int64(s))
    assert np.abs(got - sums * 0.5 / 49).max() <= 1


def test_the_arena_is_tflms_report_and_the_model_runs_in_it_with_room_to_plan():
    int_model, _ = _lowered(_model("lenet5"))
    data = tflite_bytes(int_model, IN).data
    report = tflm.arena(data)
    assert report["total"] == report["head"] + report["tail"]
    tflm.interpreter(data, report["total"] + 1024)


def test_lut_compression_of_low_bit_weights_is_smaller_and_decodes_to_the_same_logits():
    """4-bit weights: a table per channel and 4-bit indices in place of int8 values, DECODE
    operators inserted by tflite-micro's compression package; TFLM gives the same logits."""
    from cnnzip.export.tflite import lut

    int_model, codes = _lowered(_model("lenet5"), 0.5, weight_bits=4)
    written = tflite_bytes(int_model, IN)
    tables = lut.plan(written.weights)
    assert len(tables) == len(written.weights) and all(t.bits <= 4 for t in tables)
    small = lut.compressed(written.data, tables)
    assert len(small) < 0.75 * len(written.data)
    x = int8_nhwc(codes)
    assert np.array_equal(tflm.run(small, x), tflm.run(written.data, x))
    # 8-bit weights with many values: nothing to gain, nothing planned
    int8_model, _ = _lowered(_model("lenet5"), 0.0, weight_bits=8)
    assert lut.plan(tflite_bytes(int8_model, IN).weights) == []
