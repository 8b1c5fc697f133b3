import json

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from cnnzip.cli import main
from cnnzip.codec import encode_file, round_for_storage
from cnnzip.data import batches, synthetic_splits
from cnnzip.export import ExportError, OrtModel, agreement, export_onnx, to_onnx
from cnnzip.methods.base import Context, apply
from cnnzip.methods.quant import Quantize
from cnnzip.surgery import ModelSpec, build_model
from tests.helpers import TINY_ZOO, tiny

X = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _run(model, x, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(to_onnx(model, (1, 28, 28)).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


@pytest.mark.parametrize("name", sorted(TINY_ZOO))
def test_float_export_computes_what_the_model_computes(name):
    model = tiny(name)
    with torch.no_grad():
        assert torch.allclose(_run(model, X), model(X), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,width", [("lenet5", None), ("resnet20", 0.25),
                                        ("mobilenetv2", 0.25), ("vgg16", 0.125)])
def test_float_export_of_zoo_models(name, width):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name, (1, 28, 28), 10, width)).eval()
    with torch.no_grad():
        assert torch.allclose(_run(model, X), model(X), atol=1e-4, rtol=1e-3)


def _quantized(spec, weight_bits=7):
    torch.manual_seed(0)
    model = build_model(spec).eval()
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, Quantize(weight_bits=weight_bits, calibration=256), ctx)
    return round_for_storage(model), ctx


@pytest.mark.parametrize("name,width", [("lenet5", None), ("resnet20", 0.25)])
def test_int8_export_is_the_fake_quantized_model(name, width):
    model, _ = _quantized(ModelSpec(name, (1, 28, 28), 10, width))
    proto = to_onnx(model, (1, 28, 28))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    ints = [t for t in proto.graph.initializer if t.name.endswith("weight_int8")]
    assert len(ints) == sum(1 for _ in model.modules() if hasattr(_, "latent"))
    assert all(t.data_type == 3 for t in ints)  # INT8
    with torch.no_grad():
        expected = model(X)
    # the graph's own arithmetic (no integer kernels) equals cnnzip's
    plain = _run(model, X, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert torch.allclose(plain, expected, atol=1e-3, rtol=1e-3)
    # integer kernels round differently now and then; the top-1 decisions agree
    splits = synthetic_splits()
    images = torch.cat([x for x, _ in batches(splits.test, splits.info, 256)])
    assert agreement(model, OrtModel(proto), images) >= 0.98


def test_unsupported_layer_is_refused_by_name_and_no_file_is_left(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GELU(), nn.Flatten(), nn.Linear(2 * 26 * 26, 3))
    with pytest.raises(ExportError, match=r"layer '1' \(GELU\)"):
        export_onnx(model, (1, 28, 28), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_cli_checks_the_file_in_onnxruntime(tmp_path, capsys):
    spec = ModelSpec("lenet5", (1, 28, 28), 10)
    model, ctx = _quantized(spec)
    path = tmp_path / "q.cnz"
    encode_file(path, model, spec.with_edits(ctx.edits),
                input={"dataset": "synthetic"})
    out = tmp_path / "q.onnx"
    assert main(["export", str(path), "--check", "--json", "--out", str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["bytes"] == out.stat().st_size and r["samples"] == 256
    assert r["agreement"] >= 0.98 and abs(r["onnx_accuracy"] - r["accuracy"]) <= 0.02
    assert r["int8"] is True
    assert main(["export", str(path), "--format", "onnx", "--float", "--json", "--out",
                 str(tmp_path / "f.onnx")]) == 0
    assert json.loads(capsys.readouterr().out)["int8"] is False
    assert (tmp_path / "f.onnx").stat().st_size > out.stat().st_size  # float weights
    # the input's normalisation travels in the file's metadata (the graph takes normalised
    # inputs)
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert props["cnnzip.dataset"] == "synthetic" and "/ std" in props["cnnzip.input"]


def test_layers_before_residual_adds_quantize_their_outputs_so_every_conv_runs_in_int8(
        tmp_path):
    model, ctx = _quantized(ModelSpec("resnet20", (1, 28, 28), 10, 0.25))
    joined = ctx.notes["quantize"]["outputs_quantized"]
    assert "layers.0.conv2" in joined and "layers.3.shortcut.0" in joined
    assert "layers.0.conv1" not in joined  # read by the next quantized conv only
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(to_onnx(model, (1, 28, 28)).SerializeToString(), options,
                         providers=["CPUExecutionProvider"])
    import onnx

    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("QLinearConv") == 21 and "Conv" not in ops


def test_merged_max_poolings_export_float_and_int8():
    from cnnzip.surgery.merge import max_pools, merge_max_pool

    spec = ModelSpec("lenet5", (1, 28, 28), 10)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    for pool in max_pools(model, (1, 28, 28)):
        merge_max_pool(model, pool, (1, 28, 28))
    with torch.no_grad():
        assert torch.allclose(_run(model, X), model(X), atol=1e-4, rtol=1e-4)
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, Quantize(weight_bits=7, calibration=256), ctx)
    model = round_for_storage(model)
    with torch.no_grad():
        expected = model(X)
    plain = _run(model, X, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert torch.allclose(plain, expected, atol=1e-3, rtol=1e-3)
