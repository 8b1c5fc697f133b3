"""The hls4ml project: its precisions, refusals, the CLI, the resource estimate, and (slow) its
C simulation against the integer reference, logit for logit."""

import json

import numpy as np
import pytest
import torch

from cnnzip.data import batches, synthetic_splits
from cnnzip.export.hls.resources import layer_costs, resource_report
from cnnzip.export.ir.facts import signed_bits, value_ranges
from cnnzip.export.hls.project import HlsOptions, export_project
from cnnzip.export.ir.ops import IntLayer, LoweringError
from cnnzip.export.ir.lower import lower_model
from cnnzip.export.hls.shell import build_shell
from cnnzip.methods import Context, apply
from cnnzip.methods.quant import Quantize
from tests.helpers import int8_lenet5, tiny


def _integer(model, samples=64, **options):
    splits = synthetic_splits()
    apply(model, Quantize(calibration=256, **options), Context(splits, finetune_epochs=0,
                                                                 quiet=True))
    x, _ = next(iter(batches(splits.test, splits.info, samples)))
    calibration, _ = next(iter(batches(splits.train, splits.info, 256)))
    int_model = lower_model(model.eval(), (1, 28, 28), calibration)
    return int_model, int_model.quantize_input(x), x


def _lenet5(sparsity=0.0, **options):
    from cnnzip.surgery import build_model, resolve_spec

    torch.manual_seed(0)
    model = build_model(resolve_spec("lenet5", (1, 28, 28), 10)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and sparsity:
                cut = m.weight.abs().flatten().kthvalue(int(sparsity * m.weight.numel())).values
                m.weight[m.weight.abs() <= cut] = 0
    return _integer(model, **options)


def test_precisions_hold_every_weight_and_accumulator_without_overflow():
    int_model, codes, _ = _lenet5(weight_bits=6)
    shell = build_shell(int_model, (1, 28, 28))
    values = {-1: codes}
    for k, node in enumerate(int_model.nodes):
        values[k] = node.op(*(values[i] for i in node.inputs))
        if isinstance(node.op, IntLayer):
            layer = shell.layers[node.name.replace(".", "_")]
            bits = signed_bits(int(node.op.weight.min()), int(node.op.weight.max()))
            assert layer.precision["weight"] == f"ap_fixed<{bits},{bits}>" and bits <= 6
            acc = node.op.accumulate(values[node.inputs[0]])
            width = shell.accumulators[node.name]
            assert layer.precision["accum"] == f"ap_fixed<{width},{width}>"
            assert np.abs(acc).max() < 2 ** (width - 1)  # never overflows on real inputs
            assert width <= 24  # and is not padded to 32
    # every requantization scale is held exactly: the float64 factor, not hls4ml's float32
    scales = [layer.scale for layer in shell.layers.values() if layer.scale is not None]
    first = int_model.nodes[0].op
    assert any(np.array_equal(s, first.multiplier * np.exp2(np.maximum(first.shift, 0) - 31.0))
               for s in scales)


def test_grouped_convolutions_are_refused_by_name_and_nothing_is_written(tmp_path):
    int_model, _, _ = _integer(tiny("depthwise"))
    with pytest.raises(LoweringError, match="dw: hls4ml.*grouped or depthwise"):
        export_project(int_model, (1, 28, 28), tmp_path / "out", HlsOptions())
    assert list(tmp_path.iterdir()) == []


def test_options_are_checked():
    with pytest.raises(ValueError, match="strategy"):
        HlsOptions(strategy="Fast")
    with pytest.raises(ValueError, match="reuse"):
        HlsOptions(reuse_factor=0)


def test_the_resource_estimate_counts_pairs_zeros_and_the_reuse_factor():
    dense, _, _ = _lenet5(weight_bits=8)
    pruned, _, _ = _lenet5(sparsity=0.8, weight_bits=8)
    costs = {c.name: c for c in layer_costs(dense, (1, 28, 28))}
    conv = costs["features.3"]
    assert conv.macs == 16 * 6 * 5 * 5 * 10 * 10 and conv.dsp == 16 * 6 * 5 * 5
    assert conv.dsp_packed == conv.dsp // 2  # 16 outputs: every input feeds 8 pairs
    assert conv.packing_terms == 4  # int8 weights × uint8 activations
    report = resource_report(dense, (1, 28, 28))
    assert report["total"]["packed_vs_unpacked"] <= 0.57
    sparse = resource_report(pruned, (1, 28, 28))["total"]
    assert sparse["dsp_nonzero"] < 0.25 * sparse["dsp"]
    assert sparse["dsp_nonzero_packed"] <= sparse["dsp_nonzero"]
    assert sparse["nonzero_storage_bits"] < 0.25 * sparse["weight_storage_bits"]
    four = resource_report(dense, (1, 28, 28), reuse_factor=4)["total"]
    assert four["dsp"] == sum(-(-c.weights // 4) for c in costs.values())
    # the input grid's zero point is not 0: the first layer reads signed values
    assert value_ranges(dense)[-1][0] < 0 < value_ranges(dense)[-1][1]


def test_export_and_inspect_from_the_command_line(tmp_path, capsys):
    from cnnzip.cli import main

    int8_lenet5(tmp_path)
    capsys.readouterr()
    out = tmp_path / "hls"
    assert main(["export", str(tmp_path / "q" / "model.cnz"), "--format", "hls4ml",
                 "--reuse-factor", "2", "--strategy", "resource", "--json", "--out",
                 str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["reuse_factor"] == 2 and r["strategy"] == "Resource"
    assert (out / "firmware" / "cnnzip.cpp").is_file() and (out / "build_prj.tcl").is_file()
    assert f"OutputDir: {out}" in (out / "hls4ml_config.yml").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hls")]
    assert r["resources"]["total"]["dsp"] > 0 and "features_0_requant" in r["precisions"]
    assert main(["inspect", str(tmp_path / "q" / "model.cnz"), "--hardware", "fpga",
                 "--json"]) == 0
    costs = json.loads(capsys.readouterr().out)
    assert costs["total"]["packed_vs_unpacked"] <= 0.57
    assert [layer["name"] for layer in costs["layers"]] == [
        "features.0", "features.3", "classifier.0", "classifier.2", "classifier.4"]
    assert main(["export", str(tmp_path / "q" / "model.cnz"), "--samples", "5", "--out",
                 str(tmp_path / "x.onnx")]) != 0
    assert "--samples" in capsys.readouterr().err


def test_io_stream_is_refused_where_its_simulation_is_wrong(tmp_path):
    int_model, _, _ = _integer(tiny("residual"))
    with pytest.raises(LoweringError, match="add: hls4ml's io_stream.*--io-type parallel"):
        export_project(int_model, (1, 28, 28), tmp_path / "out",
                       HlsOptions(io_type="io_stream"))
    assert list(tmp_path.iterdir()) == []


class _Capped(torch.nn.Module):
    """Conv → BatchNorm → ReLU6 → global average pooling → linear, the convolution's outputs
    well past 6 so that the cap clamps."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(6)
        self.fc = torch.nn.Linear(6, 10)
        with torch.no_grad():
            self.conv.weight.mul_(20)

    def forward(self, x):
        return self.fc(torch.nn.functional.relu6(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["residual", "concat", "relu6"])
def test_the_c_simulation_equals_the_integer_reference_on_every_logit(tmp_path, name):
    """Residual add, concatenation with rescaled inputs (one by a factor that is 1 in float32),
    clamps whose zero point is not 0, ReLU6's clamp at the grid point nearest 6, global average
    pooling: hls4ml's compiled C++ (g++) gives the integer reference's logits exactly."""
    model = _Capped().eval() if name == "relu6" else tiny(name)
    int_model, codes, x = _integer(model, samples=100)
    if name == "relu6":  # the cap is reached: the conv's clamp is below the uint8 range's top
        conv = int_model.nodes[0].op
        assert conv.hi < 255 and (int_model.nodes[0].op(codes) == conv.hi).any()
    predicted = np.zeros(len(codes), np.int64)
    r = export_project(int_model, (1, 28, 28), tmp_path / "hls", HlsOptions(),
                       check=(codes, predicted, predicted), quiet=True)
    assert r["logits_equal_reference"] == 1.0 and r["largest_logit_difference"] == 0
    assert r["agreement_with_reference"] == 1.0 and r["samples"] == 100
