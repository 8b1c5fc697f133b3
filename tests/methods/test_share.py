import pytest
import torch
from torch import nn

from cnnzip.data import synthetic_splits
from cnnzip.errors import CnnzipError
from cnnzip.methods.base import Context, apply
from cnnzip.methods.share import WeightSharing, scan_bits
from cnnzip.modules import weight_layers
from tests.helpers import tiny, zoo_model


def _scanned(tolerance: float) -> Context:
    model = tiny("mlp")
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, WeightSharing(fc_bits=6, min_bits=2, bits_tolerance=tolerance), ctx)
    return ctx


def test_bits_scan_with_a_loose_tolerance_takes_the_fewest_bits():
    ctx = _scanned(1.0)
    notes = ctx.notes["share"]
    assert set(notes["bits"].values()) == {2}
    assert all(len(points) == 1 for points in notes["bits_scan"].values())


def test_bits_scan_with_no_tolerance_keeps_the_configured_bits():
    ctx = _scanned(-1.0)  # no clustering can keep a drop below zero
    notes = ctx.notes["share"]
    assert set(notes["bits"].values()) == {6}
    assert all([b for b, _ in points] == [2, 3, 4, 5] for points in notes["bits_scan"].values())


def test_bits_scan_restores_the_weights_it_tries():
    model = tiny("mlp")
    before = {n: l.weight.detach().clone() for n, l in weight_layers(model).items()}
    ctx = Context(synthetic_splits(), quiet=True)
    scan_bits(model, weight_layers(model), WeightSharing(fc_bits=4, bits_tolerance=0.0), ctx)
    for name, layer in weight_layers(model).items():
        assert torch.equal(layer.weight, before[name])


def test_bad_bits_are_clear_errors():
    with pytest.raises(CnnzipError, match="1..16"):
        WeightSharing(min_bits=0)
    with pytest.raises(CnnzipError, match="bias_bits must be 0"):
        WeightSharing(bias_bits=9)


def test_bias_bits_put_the_shared_layers_biases_on_a_power_of_two_grid():
    from cnnzip.ops.quant import pow2_codes

    model = tiny("mlp")
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    before = {n: m.bias.detach().clone() for n, m in weight_layers(model).items()}
    apply(model, WeightSharing(fc_bits=4, bias_bits=6), ctx)
    assert ctx.notes["share"]["bias_bits"] == 6
    for name, layer in weight_layers(model).items():
        bias = layer.layer.bias.detach()
        q, _, bits = pow2_codes(bias.half())
        assert bits <= 6
        step = before[name].abs().max() / 31  # at most half the grid's step away
        assert (bias - before[name]).abs().max() <= step


def test_bias_bits_store_each_batchnorm_as_a_scale_and_shift_on_the_grid(tmp_path):
    from cnnzip.codec import decode_file, encode_file
    from cnnzip.ops.quant import pow2_codes
    from cnnzip.surgery import resolve_spec

    spec = resolve_spec("resnet20", (1, 28, 28), 10, width=0.5)
    sizes = {}
    for bits in (0, 8):
        model = zoo_model("resnet20", width=0.5)
        with torch.no_grad():  # as trained: no tensor of theirs on a coarse grid
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
        ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
        x = torch.randn(4, 1, 28, 28)
        before = model(x)
        apply(model, WeightSharing(conv_bits=4, fc_bits=4, epochs=0, bias_bits=bits), ctx)
        model.eval()
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        if bits:
            for m in norms:
                assert not m.running_mean.any() and bool((m.running_var == 1).all())
                assert pow2_codes(m.weight.detach().half())[2] <= bits
            # shared weights move the outputs; the rounding of 8-bit scales adds little
            assert (model(x) - before).abs().max() < 0.5 * before.abs().max()
        path = tmp_path / f"{bits}.cnz"
        encode_file(path, model, spec.with_edits(ctx.edits))
        assert torch.allclose(decode_file(path)[0](x), model(x), atol=2e-3)  # float16
        sizes[bits] = path.stat().st_size
    # each channel's four float16 numbers become two bytes and two 2-bit constants (the 8
    # channels of the first stage's scales and shifts stay float16: a grid's entry would cost
    # about what they save)
    channels = sum(m.num_features for m in norms)
    assert sizes[0] - sizes[8] >= 3 * channels - 2 * 8 * 7


def test_codebook_bits_put_each_codebook_on_a_power_of_two_grid():
    from cnnzip.ops.quant import pow2_codes

    books = {}
    for bits in (0, 6):
        model = tiny("mlp")
        ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
        apply(model, WeightSharing(fc_bits=4, codebook_bits=bits, epochs=0), ctx)
        books[bits] = {n: m.codebook.detach() for n, m in weight_layers(model).items()}
    assert ctx.notes["share"]["codebook_bits"] == 6 and "bias_bits" not in ctx.notes["share"]
    for name, book in books[6].items():
        plain = books[0][name]
        assert pow2_codes(book.half())[2] <= 6 and not torch.equal(book, plain)
        # the step is under 2 max |c| / 31, and rounding moves a centroid half a step at most
        assert (book - plain).abs().max() <= plain.abs().max() / 31
    with pytest.raises(CnnzipError, match="codebook_bits must be 0"):
        WeightSharing(codebook_bits=1)


def test_codebook_bits_fine_tune_on_the_grid_and_store_what_they_trained(monkeypatch):
    import cnnzip.methods.share as share
    from cnnzip.ops.quant import pow2_codes

    seen = []

    def finetune(model, ctx, **kwargs):
        seen.extend(layer.grid_bits for layer in weight_layers(model).values())
        return fit_finetune(model, ctx, **kwargs)

    fit_finetune = share.finetune
    monkeypatch.setattr(share, "finetune", finetune)
    model = tiny("mlp")
    ctx = Context(synthetic_splits(), teacher=tiny("mlp"), quiet=True)
    apply(model, WeightSharing(fc_bits=4, codebook_bits=5, epochs=1), ctx)
    assert seen and set(seen) == {5}  # every layer trained on its grid
    for layer in weight_layers(model).values():
        assert pow2_codes(layer.codebook.detach().half())[2] <= 5
        assert layer.grid_bits == 0  # back to plain centroids once stored


def test_large_layers_train_their_codebook_on_a_sample(monkeypatch):
    import cnnzip.methods.share as share
    from cnnzip.ops import cluster

    seen = {}
    real = cluster.train

    def spy(x, k, **kwargs):
        seen["max_points_per_centroid"] = kwargs["max_points_per_centroid"]
        return real(x, k, **kwargs)

    monkeypatch.setattr(share, "TRAIN_POINTS", 64)
    monkeypatch.setattr(cluster, "train", spy)
    weight = torch.randn(50, 40)
    _, book, codes = share.cluster_weight(weight, 2, 1, share.Init.LINEAR, 0)
    assert seen["max_points_per_centroid"] == 16  # 64 points for 4 centroids
    error = ((book[codes][:, 0] - weight.flatten()) ** 2).mean()
    assert error < 0.2 * weight.var()  # a sample of 64 still places 4 centroids well


def test_entropy_constrained_sharing_lowers_the_codes_entropy_and_files_shrink(tmp_path):
    from cnnzip.codec import encode_file, round_for_storage
    from cnnzip.modules import CodebookLayer
    from cnnzip.surgery import resolve_spec

    def shared(weight):
        model = tiny("mlp")
        ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
        model = apply(model, WeightSharing(fc_bits=5, entropy_weight=weight), ctx)
        codes = [m.codes for m in model.modules() if isinstance(m, CodebookLayer)]
        p = torch.bincount(torch.cat(codes)).float()
        p = p[p > 0] / p.sum()
        path = tmp_path / f"{weight}.cnz"
        encode_file(path, round_for_storage(model.eval()), resolve_spec("tests.helpers:MLP",
                                                                         (1, 28, 28), 10))
        return float(-(p * p.log2()).sum()), path.stat().st_size

    (h0, size0), (h1, size1) = shared(0.0), shared(0.05)
    assert h1 < h0 - 0.5 and size1 < size0
    with pytest.raises(CnnzipError, match="entropy_weight must be in"):
        WeightSharing(entropy_weight=-1)


def test_fisher_diagonal_is_the_mean_squared_gradient_of_each_batch():
    import torch.nn.functional as F

    from cnnzip.data import batches
    from cnnzip.methods.share import fisher_diagonal

    model = tiny("mlp")
    ctx = Context(synthetic_splits(), seed=3, quiet=True)
    layers = weight_layers(model)
    fisher = fisher_diagonal(model, layers, ctx, samples=64)  # two batches of 32
    assert all(l.weight.grad is None for l in layers.values()) and not model.training
    expected = {n: torch.zeros_like(l.weight) for n, l in layers.items()}
    gen = torch.Generator().manual_seed(3)
    for _, (x, y) in zip(range(2), batches(ctx.splits.train, ctx.splits.info, 32, shuffle=True,
                                           generator=gen)):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for name, layer in layers.items():
            expected[name] += layer.weight.grad ** 2 / 64
    for name, layer in layers.items():
        assert fisher[name].shape == layer.weight.shape
        assert torch.allclose(fisher[name], expected[name], rtol=1e-4, atol=1e-12)
        assert fisher[name].sum() > 0


def test_an_important_weight_sits_closer_to_its_centroid_under_fisher_weighting():
    from cnnzip.methods.share import Init, cluster_weight

    weight = torch.randn(400, generator=torch.Generator().manual_seed(0))
    importance = torch.ones(400)
    importance[:3] = 1e4  # 3 weights the loss is most sensitive to, 4 centroids
    errors = []
    for imp in (None, importance):
        positions, book, codes = cluster_weight(weight, 2, 1, Init.LINEAR, 0, 0.02, imp)
        errors.append(((book[codes][:, 0] - weight[positions]) ** 2)[:3].mean())
    assert errors[1] < 0.01 * errors[0]


def test_fisher_weighted_sharing_records_its_weighting_and_needs_kmeans():
    from cnnzip.methods.share import Sharing, Weighting

    model = tiny("mlp")
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, WeightSharing(fc_bits=3, weighting=Weighting.FISHER, fisher_samples=64,
                               bits_tolerance=0.5, entropy_weight=0.02), ctx)
    assert ctx.notes["share"]["weighting"] == "fisher"
    with pytest.raises(CnnzipError, match="weighting applies to k-means"):
        WeightSharing(method=Sharing.PQ, block=2, weighting=Weighting.FISHER)
    with pytest.raises(CnnzipError, match="fisher_samples"):
        WeightSharing(fisher_samples=0)


def test_weight_epochs_train_the_weights_clustered_and_keep_the_pruned_ones_zero():
    from torch.nn.utils import parametrize

    from cnnzip.methods.prune import MagnitudePrune, Schedule
    from cnnzip.methods.share import Sharing, Weighting
    from cnnzip.modules import CodebookLayer

    codes = {}
    for epochs in (0, 2):
        model = tiny("mlp")
        ctx = Context(synthetic_splits(), teacher=tiny("mlp"), quiet=True)
        apply(model, MagnitudePrune(sparsity=0.6, schedule=Schedule.ONE_SHOT, epochs=0), ctx)
        zeros = {n: m.weight.detach() == 0 for n, m in weight_layers(model).items()}
        model = apply(model, WeightSharing(fc_bits=3, entropy_weight=0.02, weight_epochs=epochs,
                                           epochs=0), ctx)
        for name, layer in weight_layers(model).items():
            assert isinstance(layer, CodebookLayer)
            assert not parametrize.is_parametrized(layer.layer)
            assert not (layer.weight.detach()[zeros[name]]).any()  # pruned weights stay zero
            assert layer.nnz == int((~zeros[name]).sum())
            codes[name, epochs] = layer.codes
    assert ctx.notes["share"]["weight_epochs"] == 2
    # weights moved between clusters as they trained
    assert any(not torch.equal(codes[n, 0], codes[n, 2]) for n, _ in codes if _ == 0)
    for bad in ({"method": Sharing.PQ, "block": 2}, {"weighting": Weighting.FISHER}):
        with pytest.raises(CnnzipError, match="weight_epochs train scalar k-means"):
            WeightSharing(weight_epochs=1, **bad)
    with pytest.raises(CnnzipError, match="weight_epochs must be"):
        WeightSharing(weight_epochs=-1)


def test_a_batchnorm_whose_grid_would_wipe_out_its_channels_stays_float16():
    from cnnzip.methods.share import BATCHNORM_GRID_ERROR, batchnorm_grid_error
    from cnnzip.ops.quant import pow2_codes

    model = zoo_model("resnet20", width=0.5)
    norms = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    with torch.no_grad():
        for m in norms.values():
            m.weight.uniform_(2.0, 4.0)
            m.bias.uniform_(-0.5, 0.5)
        # a channel of tiny variance: its standardized scale ~400, the grid's step 4
        norms["layers.8.bn2"].running_var[5] = 1e-4
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, WeightSharing(conv_bits=4, fc_bits=4, epochs=0, bias_bits=8), ctx)
    assert ctx.notes["share"]["float16_batchnorms"] == ["layers.8.bn2"]
    outlier = norms["layers.8.bn2"]
    assert batchnorm_grid_error(outlier, 8) > BATCHNORM_GRID_ERROR
    assert pow2_codes(outlier.weight.detach().half()) is None  # float16, as it was
    assert pow2_codes(norms["layers.7.bn2"].weight.detach().half())[2] <= 8
    assert batchnorm_grid_error(norms["layers.7.bn2"], 8) < 0.01


def test_weight_epochs_pass_over_a_layer_pruned_to_nothing():
    model = tiny("mlp")
    first = next(iter(weight_layers(model).values()))
    with torch.no_grad():
        first.weight.zero_()
    ctx = Context(synthetic_splits(), teacher=tiny("mlp"), quiet=True)
    model = apply(model, WeightSharing(fc_bits=3, weight_epochs=1, epochs=0), ctx)
    layer = next(iter(weight_layers(model).values()))
    assert layer.nnz == 0 and not layer.weight.any() and len(layer.codes) == 1
