import copy

import pytest
import torch

from cnnzip import metrics
from cnnzip.codec import codebook_records, decode_file, encode_file, round_for_storage
from cnnzip.data import synthetic_splits
from cnnzip.errors import CnnzipError
from cnnzip.methods.base import Context, apply
from cnnzip.methods.channel import Allocation, ChannelPrune, Criterion
from cnnzip.methods.merge import FoldBatchNorm
from cnnzip.methods.prune import MagnitudePrune, Schedule
from cnnzip.methods.quant import Quantize
from cnnzip.methods.share import WeightSharing
from cnnzip.modules import weight_layers
from cnnzip.modules.quant import QuantLayer
from cnnzip.ops.quant import sqnr_db
from cnnzip.recipes import load_recipe
from cnnzip.surgery import ModelSpec, NormFolded, build_model, resolve_spec

LENET = ModelSpec("lenet5", (1, 28, 28), 10)
CONVBN = ModelSpec("tests.helpers:ConvBN", (1, 28, 28), 10)


def _quantized(spec=LENET, seed=0, **options):
    torch.manual_seed(seed)
    model = build_model(spec, trust_code=True).eval()
    ctx = Context(synthetic_splits(), finetune_epochs=options.pop("epochs", 0), quiet=True)
    before = copy.deepcopy(model)
    apply(model, Quantize(calibration=256, **options), ctx)
    return before, model, ctx


def spec_folds(ctx):
    return [e for e in ctx.edits if isinstance(e, NormFolded)]


def _logits(model, n=64):
    x = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model.eval()(x)


def test_ptq_wraps_every_layer_on_its_grid_and_keeps_the_function():
    before, model, ctx = _quantized()
    layers = weight_layers(model)
    assert all(isinstance(m, QuantLayer) for m in layers.values())
    assert [e.name for e in ctx.edits] == list(layers)
    for layer in layers.values():
        steps = layer.weight.detach() / layer.w_scale.view(-1, *[1] * (layer.latent.dim() - 1))
        assert torch.allclose(steps, steps.round(), atol=1e-4)  # integer multiples of the scale
        assert steps.abs().max() <= 127 + 1e-3
        assert layer.a_scale.item() != 1.0  # calibrated
    assert sqnr_db(_logits(before), _logits(model)) > 25


def test_fewer_bits_cost_more_and_per_layer_bits_apply():
    before, eight, _ = _quantized()
    _, four, ctx = _quantized(weight_bits=4, act_bits=0, layers={"classifier.4": 8})
    assert sqnr_db(_logits(before), _logits(four)) < sqnr_db(_logits(before), _logits(eight))
    bits = ctx.notes["quantize"]["bits"]
    assert bits["classifier.4"] == 8 and bits["features.0"] == 4
    assert four.get_submodule("features.0").a_grid is None  # act_bits 0: float inputs


def test_batchnorm_folds_before_quantization():
    _, model, ctx = _quantized(CONVBN)
    assert ctx.edits[0] == NormFolded("conv", "bn")
    assert isinstance(model.bn, torch.nn.Identity)


def test_container_stores_the_integers_packed_and_decodes_the_same_model(tmp_path):
    _, model, ctx = _quantized(weight_bits=4)
    spec = LENET.with_edits(ctx.edits)
    round_for_storage(model)
    path = tmp_path / "q.cnz"
    encode_file(path, model, spec)
    decoded, got_spec, _ = decode_file(path, trust_code=True)
    assert got_spec.edits == spec.edits
    assert torch.equal(_logits(model), _logits(decoded))
    meta, _ = codebook_records(path)
    weights = sum(p.numel() for n, p in model.named_parameters() if n.endswith("latent"))
    coded = sum(r[4] for r in meta["quant"])
    assert coded <= weights * 4 / 8 + len(meta["quant"])  # at most 4 bits per weight
    assert path.stat().st_size < 4 * weights / 6


def test_a_pruned_layer_is_entropy_coded_when_that_is_smaller(tmp_path):
    torch.manual_seed(0)
    model = build_model(LENET).eval()
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, MagnitudePrune(sparsity=0.9, schedule=Schedule.ONE_SHOT), ctx)
    apply(model, Quantize(calibration=128), ctx)
    spec = LENET.with_edits(ctx.edits)
    encode_file(tmp_path / "p.cnz", round_for_storage(model), spec)
    meta, _ = codebook_records(tmp_path / "p.cnz")
    coding = {r[0]: r[3] for r in meta["quant"]}
    assert coding["classifier.0"] == coding["features.3"] == "entropy"  # the big layers
    decoded, _, _ = decode_file(tmp_path / "p.cnz", trust_code=True)
    assert torch.equal(_logits(model), _logits(decoded))


def test_damaged_quantized_payload_is_a_clear_error(tmp_path):
    _, model, ctx = _quantized()
    spec = LENET.with_edits(ctx.edits)
    path = tmp_path / "q.cnz"
    encode_file(path, round_for_storage(model), spec)
    from cnnzip.errors import CheckpointError
    from tests.helpers import rewrite

    def flip(tensors):
        tensors["q:features.0"][0] ^= 0xFF
    rewrite(path, edit_tensors=flip, checksum=False)

    with pytest.raises(CheckpointError, match="features.0.*checksum"):
        decode_file(path, trust_code=True)


def test_quantization_aware_training_moves_weights_and_scales_and_keeps_masks():
    torch.manual_seed(0)
    model = build_model(LENET).eval()
    ctx = Context(synthetic_splits(), finetune_epochs=None, quiet=True)
    apply(model, MagnitudePrune(sparsity=0.5, schedule=Schedule.ONE_SHOT, epochs=0), ctx)
    apply(model, Quantize(weight_bits=4, calibration=128, epochs=0), ctx)
    layer = model.get_submodule("features.0")
    scale0, a0 = layer.w_scale.detach().clone(), layer.a_scale.detach().clone()
    apply_qat = Quantize(weight_bits=4, calibration=128, epochs=1, lr=0.01)
    from cnnzip.methods.base import finetune

    finetune(model, ctx, epochs=apply_qat.epochs, lr=apply_qat.lr, description="qat")
    assert not torch.equal(layer.w_scale.detach(), scale0)
    assert not torch.equal(layer.a_scale.detach(), a0)
    for name, mask in ctx.masks.items():
        latent = model.get_submodule(name).latent
        assert torch.count_nonzero(latent[mask == 0]) == 0


@pytest.mark.parametrize("options,message", [
    ({"weight_bits": 0}, "weight bits must be in 1..8"),
    ({"act_bits": 9}, "act_bits"),
    ({"layers": {"nope": 4}}, "no conv or linear layer named nope"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(CnnzipError, match=message):
        _quantized(**options)


def test_an_unknown_observer_is_refused_when_the_recipe_is_read():
    from cnnzip.recipes import parse_recipe

    with pytest.raises(CnnzipError, match="weight_observer.*'minmax', 'percentile' or 'mse'"):
        parse_recipe({"steps": [{"quantize": {"weight_observer": "median"}}]}, "r.yaml")


def test_sharing_and_quantizing_twice_are_refused():
    _, model, ctx = _quantized()
    with pytest.raises(CnnzipError, match="already quantized"):
        apply(model, WeightSharing(), ctx)
    with pytest.raises(CnnzipError, match="already quantized"):
        apply(model, Quantize(), ctx)


def test_int8_recipe_loads():
    recipe = load_recipe("int8")
    (kind, config), = recipe.steps
    assert kind == "quantize" and config.act_bits == 8 and config.epochs == 0


def test_mixed_precision_meets_the_average_bit_budget_lowering_the_least_sensitive_first():
    _, model, ctx = _quantized(budget_bits=4.0, candidate_bits=[8, 6, 4, 3], samples=128,
                               act_bits=0)
    notes = ctx.notes["quantize"]
    assert notes["average_bits"] <= 4.0
    assert set(notes["bits"].values()) <= {8, 6, 4, 3} and len(set(notes["bits"].values())) > 1
    mixed = notes["mixed"]
    assert set(mixed["sensitivity"]) == set(notes["bits"])
    assert mixed["steps"] and mixed["steps"][-1]["average_bits"] == pytest.approx(
        notes["average_bits"], abs=1e-3)
    assert [e.weight_bits for e in ctx.edits] == list(notes["bits"].values())
    for name, bits in notes["bits"].items():
        assert model.get_submodule(name).w_grid.qmax == 2 ** (bits - 1) - 1


def test_mixed_precision_without_a_budget_stops_at_the_accuracy_tolerance():
    _, _, strict = _quantized(max_drop=-1.0, samples=128, act_bits=0)  # nothing can hold
    assert set(strict.notes["quantize"]["bits"].values()) == {8}
    _, _, loose = _quantized(max_drop=1.0, samples=128, act_bits=0)  # anything holds
    assert set(loose.notes["quantize"]["bits"].values()) == {2}


@pytest.mark.parametrize("weights_first", [True, False])
def test_two_stage_training_trains_weights_first_then_feature_maps(monkeypatch, weights_first):
    import cnnzip.methods.quant as quant_method

    stages = []  # per fine-tuning call: (epochs, are feature maps quantized while it trains)

    def recording(model, ctx, *, epochs, **kwargs):
        stages.append((epochs, all(m.a_grid is not None
                                   for m in weight_layers(model).values())))

    monkeypatch.setattr(quant_method, "finetune", recording)
    _, model, ctx = _quantized(epochs=2, weights_first=weights_first, weight_bits=4)
    assert stages == ([(1, False), (1, True)] if weights_first else [(2, True)])
    assert all(m.a_grid is not None for m in weight_layers(model).values())


def test_binary_and_ternary_layers_store_one_and_two_bits_per_weight(tmp_path):
    _, model, ctx = _quantized(weight_bits=1, layers={"features.0": 2}, epochs=1)
    assert set(model.get_submodule("classifier.0").codes().unique().tolist()) == {-1, 1}
    assert set(model.get_submodule("features.0").codes().unique().tolist()) <= {-1, 0, 1}
    spec = LENET.with_edits(ctx.edits)
    encode_file(tmp_path / "b.cnz", round_for_storage(model), spec)
    meta, _ = codebook_records(tmp_path / "b.cnz")
    sizes = {r[0]: r[4] for r in meta["quant"]}
    assert sizes["classifier.0"] <= 400 * 120 / 8 + 1
    decoded, _, _ = decode_file(tmp_path / "b.cnz", trust_code=True)
    assert torch.equal(_logits(model), _logits(decoded))


def test_quantize_then_prune_removes_the_weakest_quantized_channels_exactly(tmp_path):
    _, model, ctx = _quantized(layers={"features.3": 4, "classifier.0": 3})
    layers = weight_layers(model)
    gone = {"features.3": [1, 5, 9], "classifier.0": list(range(10))}
    with torch.no_grad():
        for name, rows in gone.items():
            layers[name].latent[rows] = 0
            layers[name].layer.bias[rows] = 0
    scales = {name: layers[name].w_scale.detach().clone() for name in gone}
    before = _logits(model)
    apply(model, ChannelPrune(criterion=Criterion.L1, epochs=0, recalibrate=False,
                              layers={"features.3": 3 / 16, "classifier.0": 10 / 120}), ctx)
    layers = weight_layers(model)
    assert all(isinstance(m, QuantLayer) for m in layers.values())
    assert {n: m.weight_bits for n, m in layers.items()} == {
        "features.0": 8, "features.3": 4, "classifier.0": 3, "classifier.2": 8,
        "classifier.4": 8}
    assert layers["features.3"].latent.shape[0] == 13
    assert layers["classifier.0"].latent.shape == (110, 13 * 25)
    for name, rows in gone.items():
        kept = [r for r in range(len(scales[name])) if r not in rows]
        assert torch.equal(layers[name].w_scale.detach(), scales[name][kept])
    # exact but for the float sums' order, which another CPU kernel (fewer channels) may
    # change, so that a feature map rounds one step the other way for an image
    moved = (_logits(model) - before).abs().amax(1)
    assert (moved <= 1e-5).float().mean() >= 0.95 and float(moved.max()) <= 0.01
    spec = LENET.with_edits(ctx.edits)
    encode_file(tmp_path / "qp.cnz", round_for_storage(model), spec)
    decoded, _, _ = decode_file(tmp_path / "qp.cnz", trust_code=True)
    assert torch.equal(_logits(model), _logits(decoded))


def test_quantized_resnet_prunes_across_residual_adds_to_the_budget():
    spec = resolve_spec("resnet20", (1, 28, 28), 10, width=0.25)
    _, model, ctx = _quantized(spec, fold=False)
    bits = {n: m.weight_bits for n, m in weight_layers(model).items()}
    base = metrics.count_macs(model, (1, 28, 28))
    ranges = {n: m.a_scale.item() for n, m in weight_layers(model).items()}
    apply(model, ChannelPrune(criterion=Criterion.TAYLOR, target_macs=0.5, batches=2,
                              epochs=1), ctx)  # ctx.finetune_epochs = 0: no retraining after
    assert not [e for e in ctx.edits if isinstance(e, NormFolded)]
    # the ranges were measured again, and the note is the recalibrated model's accuracy
    assert any(m.a_scale.item() != ranges[n] for n, m in weight_layers(model).items())
    assert ctx.notes["channels"]["val_after_recalibration"] == ctx.val_accuracy(model)
    apply(model, FoldBatchNorm(), ctx)
    assert [e for e in ctx.edits if isinstance(e, NormFolded)]
    assert metrics.count_macs(model, (1, 28, 28)) <= 0.5 * base
    assert {n: m.weight_bits for n, m in weight_layers(model).items()} == bits
    assert ctx.notes["channels"]["quantized"]
    rebuilt = build_model(spec.with_edits(ctx.edits))
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(_logits(rebuilt), _logits(model))


def test_quantize_then_prune_refuses_what_needs_float_layers():
    _, model, ctx = _quantized()
    with pytest.raises(CnnzipError, match="soft pruning cannot run on a quantized model"):
        apply(model, ChannelPrune(soft=True, target_macs=0.5), ctx)
    with pytest.raises(CnnzipError, match="sensitivity allocation"):
        apply(model, ChannelPrune(allocation=Allocation.SENSITIVITY, target_macs=0.5), ctx)


def test_quant_prune_recipe_loads():
    recipe = load_recipe("quant-prune")
    assert [kind for kind, _ in recipe.steps] == ["quantize", "channels", "fold"]
    assert not recipe.steps[0][1].fold


def test_batchnorms_kept_through_quantization_fold_later_without_moving_the_integers(tmp_path):
    torch.manual_seed(0)
    model = build_model(CONVBN, trust_code=True).eval()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([1.5, -0.7, 0.0, 0.3]))
        model.bn.bias.uniform_(-0.5, 0.5)
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 2.0)
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, Quantize(calibration=128, fold=False, weight_bits=4), ctx)
    assert isinstance(model.bn, torch.nn.BatchNorm2d) and not spec_folds(ctx)
    codes = model.conv.codes()
    before = _logits(model)
    apply(model, FoldBatchNorm(), ctx)
    assert isinstance(model.bn, torch.nn.Identity) and spec_folds(ctx) == [NormFolded("conv", "bn")]
    sign = torch.tensor([1, -1, 0, 1]).view(-1, 1, 1, 1)
    assert torch.equal(model.conv.codes(), codes * sign)
    assert torch.allclose(_logits(model), before, atol=1e-4)
    spec = CONVBN.with_edits(ctx.edits)
    encode_file(tmp_path / "f.cnz", round_for_storage(model), spec)
    decoded, _, _ = decode_file(tmp_path / "f.cnz", trust_code=True)
    assert torch.equal(_logits(model), _logits(decoded))


def test_per_tensor_weights_cannot_keep_batchnorms_to_fold_later():
    with pytest.raises(CnnzipError, match="per_channel"):
        Quantize(fold=False, per_channel=False)


def test_a_fully_pruned_channel_survives_quantization_and_the_container(tmp_path):
    """Prune → quantize: an all-zero output channel's scale must stay positive in float16
    (it used to round to 0, its codes to NaN, and the encoder to crash)."""
    torch.manual_seed(0)
    model = build_model(LENET).eval()
    with torch.no_grad():
        model.get_submodule("features.0").weight[2].zero_()
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, Quantize(calibration=256), ctx)
    spec = LENET.with_edits(ctx.edits)
    encode_file(tmp_path / "z.cnz", round_for_storage(model), spec)
    decoded, _, _ = decode_file(tmp_path / "z.cnz")
    layer = decoded.get_submodule("features.0")
    assert bool((layer.w_scale > 0).all()) and bool((layer.codes()[2] == 0).all())
    assert torch.equal(_logits(decoded), _logits(model))


def test_learned_scales_are_kept_positive_while_training():
    from cnnzip.ops.quant import MIN_SCALE

    _, model, ctx = _quantized()
    layer = model.get_submodule("features.0")
    with torch.no_grad():
        layer.w_scale[0] = -0.5
        layer.a_scale.fill_(0.0)
    layer.keep_scales_positive()
    assert layer.w_scale[0].item() == MIN_SCALE and layer.a_scale.item() == MIN_SCALE
    assert bool((layer.w_scale[1:] > MIN_SCALE).all())  # the others untouched
