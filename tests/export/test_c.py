"""Generated C: compiled with gcc -O2 -std=c99 -Wall -Werror, bit-exact with the numpy integer
reference on every logit."""

import os
import re
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from cnnzip.data import batches, synthetic_splits
from cnnzip.export.c.writer import generate, plan_arena
from cnnzip.export.ir.lower_float import lower_float_model
from cnnzip.export.ir.lower import lower_model
from cnnzip.export.measure.toolchain import build, model_sections, run
from cnnzip.methods import Context, apply
from cnnzip.methods.quant import Quantize
from cnnzip.surgery import build_model, resolve_spec
from tests.helpers import prune_layers


def _quantized(name: str, options: dict, sparsity: float = 0.0):
    """A zoo model, its weights magnitude-pruned to ``sparsity`` (each layer), quantized."""
    torch.manual_seed(0)
    model = build_model(resolve_spec(name, (1, 28, 28), 10)).eval()
    if sparsity:
        prune_layers(model, sparsity)
    splits = synthetic_splits()
    apply(model, Quantize(calibration=256, **options),
          Context(splits, finetune_epochs=0, quiet=True))
    return model, splits


def _run_on(target: str, int_model, gen, folder, codes):
    (folder / "model.h").write_text(gen.header)
    (folder / "model.c").write_text(gen.source)
    return run(build(folder, target), target, codes.astype(np.uint8), "<i4", 10)


@pytest.mark.parametrize("name,options,sparsity,kernels", [
    ("lenet5", {}, 0.0, "dense"), ("lenet300", {}, 0.0, "balanced"),
    ("lenet5", {"weight_bits": 4}, 0.8, "sparse"), ("lenet5", {"weight_bits": 4}, 0.9, "unrolled"),
    ("lenet5", {"weight_bits": 1, "layers": {"features.0": 2}}, 0.0, "balanced"),
    ("lenet300", {"weight_bits": 8}, 0.95, "unrolled"),
    ("lenet5", {"weight_bits": 4}, 0.8, "packed"), ("lenet300", {"weight_bits": 2}, 0.9, "packed"),
    ("lenet5", {"weight_bits": 1, "layers": {"features.0": 2}}, 0.0, "packed"),
    ("lenet5", {"weight_bits": 4}, 0.7, "simd"), ("lenet5", {}, 0.5, "simd"),
    ("lenet5", {"weight_bits": 4}, 0.7, "simd-rows"), ("lenet5", {}, 0.5, "simd-rows"),
    ("lenet5", {"weight_bits": 1, "layers": {"features.0": 2}}, 0.0, "simd"),
])
def test_the_compiled_c_equals_the_reference_on_every_logit(tmp_path, name, options, sparsity,
                                                              kernels):
    model, splits = _quantized(name, options, sparsity)
    int_model = lower_model(model, (1, 28, 28))
    gen = generate(int_model, (1, 28, 28), kernels)
    assert gen.const_bytes > 0 and gen.arena_bytes > 0
    forms = {p.form for p in gen.layers}
    if kernels in ("dense", "sparse", "packed"):
        assert forms == {kernels}
    elif kernels in ("unrolled", "simd", "simd-rows"):  # too large to unroll, or linear: sparse
        assert kernels in forms and forms <= {kernels, "sparse"}
    if name == "lenet5":  # both convolutions carry their max pooling
        assert [p.name.endswith("+ max pool") for p in gen.layers[:2]] == [True, True]
    x, _ = next(iter(batches(splits.test, splits.info, 256)))
    codes = int_model.quantize_input(x)
    got = _run_on("host", int_model, gen, tmp_path, codes)
    assert np.array_equal(got.logits, int_model(codes))
    assert got.times.shape == (256,)
    code = re.sub(r"/\*.*?\*/", "", gen.source, flags=re.S)  # comments aside
    assert not re.search(r"\b(float|double|malloc)\b", code)
    if sparsity and kernels != "dense":  # zeros are skipped: fewer MACs than dense
        assert sum(p.nonzero_macs for p in gen.layers) < 0.7 * sum(p.macs for p in gen.layers)


@pytest.mark.parametrize("name", ["residual", "concat", "depthwise", "grouped", "convbn",
                                  "mlp", "resnet20", "mobilenetv2"])
def test_every_tiny_zoo_graph_compiles_to_c_equal_to_the_reference(tmp_path, name):
    """Residual adds, concatenation, global average pooling, depthwise and grouped
    convolutions, folded BatchNorms: the C gives the reference's logits bit for bit, sparse
    where pruned."""
    from tests.helpers import tiny, zoo_model

    torch.manual_seed(0)
    model = zoo_model(name) if name in ("resnet20", "mobilenetv2") else tiny(name)
    prune_layers(model, 0.5)  # half the weights pruned: the sparse kernels take part
    splits = synthetic_splits()
    apply(model, Quantize(calibration=256), Context(splits, finetune_epochs=0, quiet=True))
    calibration, _ = next(iter(batches(splits.train, splits.info, 256)))
    int_model = lower_model(model, (1, 28, 28), calibration)
    x, _ = next(iter(batches(splits.test, splits.info, 200)))
    codes = int_model.quantize_input(x)
    for kernels in ("balanced", "dense"):  # dense: the zero point folded, padded copies
        gen = generate(int_model, (1, 28, 28), kernels)
        folder = tmp_path / kernels
        folder.mkdir()
        got = _run_on("host", int_model, gen, folder, codes)
        assert np.array_equal(got.logits, int_model(codes))


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "mobilenetv2"])
def test_the_float_c_of_a_baseline_matches_pytorch(tmp_path, name):
    """A chain, and graphs with residual adds, global average pooling, depthwise convolutions
    and ReLU6 (BatchNorms folded, with statistics that are not the identity's)."""
    from tests.helpers import zoo_model

    model = zoo_model(name, width=None)  # the zoo's width; measured BatchNorm statistics
    float_model = lower_float_model(model, (1, 28, 28))
    gen = generate(float_model, (1, 28, 28))
    assert {p.form for p in gen.layers} == {"dense"}
    x = torch.randn(16, 1, 28, 28)
    (tmp_path / "model.h").write_text(gen.header)
    (tmp_path / "model.c").write_text(gen.source)
    got = run(build(tmp_path, "host"), "host", x.numpy(), "<f4", 10)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(float_model(x.numpy()) - expected).max() < 1e-4
    assert np.abs(got.logits - expected).max() < 1e-4


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None and not os.environ.get("CNNZIP_MCU"),
                    reason="the Cortex-M4 toolchain and emulator are not installed "
                           "(scripts/setup.sh --mcu; CI sets CNNZIP_MCU=1 and installs them)")
def test_on_the_emulated_cortex_m4_the_c_is_bit_exact_and_its_ticks_are_deterministic(tmp_path):
    model, splits = _quantized("lenet5", {"weight_bits": 4}, 0.8)
    int_model = lower_model(model, (1, 28, 28))
    x, _ = next(iter(batches(splits.test, splits.info, 64)))
    codes = int_model.quantize_input(x)
    gen = generate(int_model, (1, 28, 28), "unrolled")  # plain Thumb-2, no SIMD instructions
    assert "unrolled" in {p.form for p in gen.layers}
    (tmp_path / "unrolled").mkdir()
    unrolled = _run_on("cortex-m4", int_model, gen, tmp_path / "unrolled", codes)
    assert np.array_equal(unrolled.logits, int_model(codes))
    gen = generate(int_model, (1, 28, 28), "simd-rows")  # UXTAB16, SMLABB, SMLATB, USAT
    assert {p.form for p in gen.layers[:2]} == {"simd-rows"}
    (tmp_path / "rows").mkdir()
    rows = _run_on("cortex-m4", int_model, gen, tmp_path / "rows", codes)
    assert np.array_equal(rows.logits, int_model(codes))
    gen = generate(int_model, (1, 28, 28), "balanced")
    assert {p.form for p in gen.layers} >= {"simd", "packed"}
    first = _run_on("cortex-m4", int_model, gen, tmp_path, codes)
    assert np.array_equal(first.logits, int_model(codes))
    again = run(tmp_path / "bench-cortex-m4", "cortex-m4", codes.astype(np.uint8), "<i4", 10)
    assert np.array_equal(first.times, again.times) and first.times.min() > 1000
    size = model_sections(tmp_path, tmp_path, "cortex-m4")  # the memory plan, checked
    assert size["bss"] == gen.arena_bytes
    assert size["rodata"] == pytest.approx(gen.const_bytes, rel=0.05)


@pytest.mark.parametrize("k", [16, 26])  # 13 output columns (the last block past the row), 3
def test_simd_lanes_never_overflow_where_one_weight_covers_many_taps(tmp_path, k):
    """A k×k convolution whose weights are equal: summed in one 16-bit lane, 256 inputs of 255
    would pass what SMLABB reads as a signed lane (the portable C reads it the same way); the
    kernel splits the group at 128 and stays exact."""
    from cnnzip.export.c.forms.simd import MAX_LANE_TERMS, lane_groups

    torch.manual_seed(0)
    side = 28 - k + 1
    model = nn.Sequential(nn.Conv2d(1, 2, k), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * side * side, 10))
    with torch.no_grad():
        model[0].weight.fill_(0.01)
        model[0].weight[1].fill_(-0.01)
    splits = synthetic_splits()
    apply(model, Quantize(calibration=256), Context(splits, finetune_epochs=0, quiet=True))
    int_model = lower_model(model, (1, 28, 28))
    conv = int_model.nodes[0].op
    assert len(np.unique(conv.weight[0])) == 1
    groups = lane_groups(conv.weight[0].reshape(-1), np.arange(k * k))
    sizes = [len(taps) for _, taps in groups]
    assert sum(sizes) == k * k and sizes[0] == MAX_LANE_TERMS == max(sizes)
    gen = generate(int_model, (1, 28, 28), "simd")
    assert gen.layers[0].form == "simd"
    x, _ = next(iter(batches(splits.test, splits.info, 64)))
    codes = int_model.quantize_input(x)
    codes[0] = 255  # every lane at its largest sum
    got = _run_on("host", int_model, gen, tmp_path, codes)
    assert np.array_equal(got.logits, int_model(codes))


def test_the_arena_planner_never_overlaps_two_live_tensors():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        first = rng.integers(0, 10, n)
        tensors = [(int(rng.integers(1, 100)), int(f), int(f + rng.integers(0, 4)))
                   for f in first]
        size, offsets = plan_arena(tensors)
        for i, (a, fa, la) in enumerate(tensors):
            assert offsets[i] + a <= size
            for j, (b, fb, lb) in enumerate(tensors[:i]):
                if fa <= lb and fb <= la:  # both live at once: disjoint bytes
                    assert offsets[i] + a <= offsets[j] or offsets[j] + b <= offsets[i]
        # never more than the sum, never less than the largest set of tensors live together
        live = max(sum(s for s, f, last in tensors if f <= t <= last) for t in range(14))
        assert live <= size <= sum(s for s, _, _ in tensors)
    # a chain: each step reads the previous output: the arena is the largest pair
    assert plan_arena([(10, 0, 1), (30, 1, 2), (5, 2, 3)])[0] == 40


def test_export_format_c_writes_the_folder_and_checks_it_on_the_test_set(tmp_path, capsys):
    import json

    from cnnzip.cli import main
    from tests.helpers import int8_lenet5

    ckpt, _ = int8_lenet5(tmp_path)
    capsys.readouterr()
    out = tmp_path / "c"
    assert main(["export", str(tmp_path / "q" / "model.cnz"), "--format", "c", "--check",
                 "--json", "--out", str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert sorted(r["files"]) == ["main.c", "model.c", "model.h"]
    assert all((out / name).stat().st_size == size for name, size in r["files"].items())
    assert r["c_equals_reference"] == 1.0 and r["samples"] == 256
    # the memory plan, known before compiling, against the compiled object's sections
    plan, compiled = r["memory"], r["compiled"]
    assert compiled["bss"] == plan["arena_bytes"] > 0
    assert compiled["rodata"] == pytest.approx(plan["const_bytes"], rel=0.05)
    assert {p["form"] for p in r["layers"]} <= {"dense", "sparse", "unrolled", "simd",
                                                "simd-rows"}
    # compress planned the same C in report.json (without the pixel table)
    planned = json.loads((tmp_path / "q" / "report.json").read_text())["c"]
    assert planned["available"] and planned["arena_bytes"] == plan["arena_bytes"]
    assert planned["const_bytes"] + 256 == plan["const_bytes"]
    assert r["c_accuracy"] == pytest.approx(r["accuracy"], abs=0.02)
    # bench --c: the float baseline, the compressed and its dense C, timed alternately
    assert main(["bench", str(ckpt), str(tmp_path / "q" / "model.cnz"), "--c", "--samples",
                 "20", "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    models = b["models"]
    assert list(models) == ["baseline-float", "compressed", "compressed-dense"]
    assert models["compressed"]["bit_exact"] and models["compressed-dense"]["bit_exact"]
    assert models["baseline-float"]["max_abs_diff_vs_reference"] < 1e-3
    assert all(m["us_per_image"] > 0 and m["flash_bytes"] > 0 for m in models.values())
    assert b["onnxruntime_batch1"]["compressed_us_per_image"] > 0
    # a float model has no integers to export: one clear line
    assert main(["compress", str(ckpt), "--recipe", "channel-prune", "--finetune-epochs", "0",
                 "--no-stage-bench", "--quiet", "--out", str(tmp_path / "f")]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "f" / "model.cnz"), "--format", "c", "--out",
                 str(tmp_path / "fc")]) != 0
    err = capsys.readouterr().err
    assert "cannot export as C" in err and "int8 recipe" in err and len(err.splitlines()) == 1
    assert "int8 recipe" in json.loads((tmp_path / "f" / "report.json").read_text())["c"]["why"]
    assert "--calibrate" in err
    # ... unless asked to calibrate its feature maps: then it is bit-exact like the rest
    assert main(["export", str(tmp_path / "f" / "model.cnz"), "--format", "c", "--calibrate",
                 "--check", "--json", "--out", str(tmp_path / "fc")]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["calibrated"] and r["weights"] == "per channel" and r["c_equals_reference"] == 1.0
    assert r["float_accuracy"] == pytest.approx(r["accuracy"], abs=0.05)


def test_packed_weights_decode_to_the_layer_in_both_layouts():
    """Gaps longer than one entry spans take zero-valued padding entries; dense low-bit layers
    take the gapless layout, 8 / bits codes to a byte."""
    from cnnzip.export.c.forms.packed import pack
    from cnnzip.export.ir.ops import IntLayer

    rng = np.random.default_rng(0)
    one = np.ones(4, np.int64)

    def layer(weight):
        return IntLayer("linear", weight, np.zeros(len(weight), np.int64), 0, one, one, 0, 0, 255)

    sparse = rng.integers(-7, 8, (4, 300)) * (rng.random((4, 300)) < 0.05)
    sparse[0] = 0  # an empty channel
    sparse[1, -1] = 3  # a gap far longer than 16
    packed = pack(layer(sparse))
    assert not packed.gapless and packed.bits == 4 and packed.table[0] == 0
    assert np.array_equal(packed.weights(300), sparse)
    assert packed.entries.size > np.count_nonzero(sparse)  # padding entries
    binary = rng.choice([-1, 1], (4, 37))
    packed = pack(layer(binary))
    assert packed.gapless and packed.bits == 1 and packed.entries.size == 4 * 5
    assert np.array_equal(packed.weights(37), binary)
    assert pack(layer(rng.integers(-127, 128, (4, 300)))) is None  # too many values


def test_weight_shared_layers_export_packed_after_calibration(tmp_path):
    """A k-means-shared model (float feature maps) made integer by ``integer_ready``: each
    layer keeps at most its codebook's values, the packed kernels take them, bit-exact."""
    from cnnzip.methods.quant import integer_ready
    from cnnzip.methods.share import WeightSharing
    from cnnzip.modules import CodebookLayer

    torch.manual_seed(0)
    model = prune_layers(build_model(resolve_spec("lenet5", (1, 28, 28), 10)).eval(), 0.8)
    splits = synthetic_splits()
    ctx = Context(splits, finetune_epochs=0, quiet=True)
    apply(model, WeightSharing(conv_bits=4, fc_bits=3), ctx)
    assert any(isinstance(m, CodebookLayer) for m in model.modules())
    with pytest.raises(Exception, match="--calibrate"):
        lower_model(model, (1, 28, 28))
    done = integer_ready(model, ctx, calibration=256)
    assert done["calibrated"] and done["weights"] == "per tensor"
    int_model = lower_model(model, (1, 28, 28))
    for node in int_model.nodes:
        if hasattr(node.op, "weight"):
            assert len(np.unique(node.op.weight[node.op.weight != 0])) <= 16
    gen = generate(int_model, (1, 28, 28), "small")
    assert "packed" in {p.form for p in gen.layers}
    x, _ = next(iter(batches(splits.test, splits.info, 100)))
    codes = int_model.quantize_input(x)
    got = _run_on("host", int_model, gen, tmp_path, codes)
    assert np.array_equal(got.logits, int_model(codes))
    assert integer_ready(model, ctx) == {"calibrated": False}  # integer already: unchanged


def test_a_model_with_merged_max_poolings_exports_them_fused_again(tmp_path):
    """Exact max-pool merges (ConvMaxPool) lower to the convolution and its pooling, which the
    C fuses back: the same predictions as PyTorch, bit-exact C."""
    from cnnzip.methods.merge import MergeLayers
    from cnnzip.modules.merged import ConvMaxPool

    torch.manual_seed(0)
    model = build_model(resolve_spec("lenet5", (1, 28, 28), 10)).eval()
    splits = synthetic_splits()
    ctx = Context(splits, finetune_epochs=0, quiet=True)
    apply(model, MergeLayers(max_pools=True, activations=False, blocks=False, epochs=0), ctx)
    assert sum(isinstance(m, ConvMaxPool) for m in model.modules()) == 2
    apply(model, Quantize(calibration=256), ctx)
    int_model = lower_model(model, (1, 28, 28))
    x, _ = next(iter(batches(splits.test, splits.info, 200)))
    codes = int_model.quantize_input(x)
    with torch.no_grad():
        expected = model(x).argmax(1).numpy()
    assert (int_model(codes).argmax(1) == expected).mean() >= 0.99
    gen = generate(int_model, (1, 28, 28), "balanced")
    assert [p.name.endswith("+ max pool") for p in gen.layers[:2]] == [True, True]
    got = _run_on("host", int_model, gen, tmp_path, codes)
    assert np.array_equal(got.logits, int_model(codes))


def test_the_c_export_never_writes_into_a_users_folder_or_through_a_link(tmp_path):
    """`cout/main.c → victim.txt` was overwritten; now the folder is written whole beside it
    and replaces only an earlier export's."""
    from cnnzip.errors import CnnzipError
    from cnnzip.export.c.writer import write

    model, _ = _quantized("lenet5", {})
    int_model = lower_model(model, (1, 28, 28))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "cout"
    out.mkdir()
    (out / "main.c").symlink_to(victim)
    with pytest.raises(CnnzipError, match="other content"):
        write(int_model, (1, 28, 28), (0.5,), (0.25,), out, "dense")
    assert victim.read_text() == "precious"
    fresh = tmp_path / "fresh"
    for _ in range(2):  # a new folder, then the same export again
        files, _ = write(int_model, (1, 28, 28), (0.5,), (0.25,), fresh, "dense")
        assert set(files) == {"model.h", "model.c", "main.c"}
