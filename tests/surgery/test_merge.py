import copy

import pytest
import torch
from torch import nn

from cnnzip import metrics
from cnnzip.codec import decode_file, encode_file, load_checkpoint, save_checkpoint
from cnnzip.data import synthetic_splits
from cnnzip.errors import CnnzipError, ModelError
from cnnzip.methods.base import Context, apply
from cnnzip.methods.merge import MergeLayers
from cnnzip.methods.prune import MagnitudePrune
from cnnzip.modules import ConvMaxPool, FlatLinear, Linearizing
from cnnzip.ops.compose import compose_conv
from cnnzip.surgery import ModelSpec, ModuleReplaced, build_model, resolve_spec
from cnnzip.surgery.linearize import Candidate, candidates, linearize
from cnnzip.surgery.merge import find_merges, max_pools, merge_all, merge_layers, merge_max_pool
from cnnzip.surgery.spec import replay

IN = (1, 28, 28)


def _seq(*layers):
    torch.manual_seed(0)
    return nn.Sequential(*layers).eval()


EXACT = {
    "linear∘linear": (lambda: _seq(nn.Flatten(), nn.Linear(784, 32), nn.Linear(32, 10)), "1"),
    "1×1 conv∘conv": (lambda: _seq(nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 4, 1)), "0"),
    "3×3 conv∘strided conv": (
        lambda: _seq(nn.Conv2d(1, 6, 3, stride=2, padding=1), nn.Conv2d(6, 5, 3, stride=2)), "0"),
    "conv∘average pooling": (lambda: _seq(nn.Conv2d(1, 6, 5, padding=2), nn.AvgPool2d(2)), "0"),
    "conv, flatten, linear": (
        lambda: _seq(nn.Conv2d(1, 3, 5, stride=3), nn.Flatten(), nn.Linear(192, 10)), "0"),
    "average pooling, flatten, linear": (
        lambda: _seq(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4, 10)), "0"),
}


@pytest.mark.parametrize("case", list(EXACT))
def test_every_exact_merge_equals_the_unmerged_model(case):
    build, first = EXACT[case]
    model = build()
    x = torch.randn(5, *IN)
    before = model(x)
    merge, log = merge_layers(model, first, IN)
    assert len(merge.names) >= 2 and all(isinstance(model.get_submodule(n), nn.Identity)
                                         for n in merge.names[1:])
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
    rebuilt = copy.deepcopy(build())  # the replacements replay on a fresh model
    replay(rebuilt, log, IN)
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(x), before, rtol=1e-4, atol=1e-5)


def test_composed_kernel_matches_two_convolutions_with_any_strides():
    gen = torch.Generator().manual_seed(1)
    w1, b1 = torch.randn(4, 2, 3, 2, generator=gen), torch.randn(4, generator=gen)
    w2, b2 = torch.randn(3, 4, 2, 3, generator=gen), torch.randn(3, generator=gen)
    x = torch.randn(2, 2, 17, 19, generator=gen)
    ref = nn.functional.conv2d(nn.functional.conv2d(x, w1, b1, (2, 1), (1, 1)), w2, b2, (1, 2))
    w, b, stride = compose_conv(w1, b1, (2, 1), w2, b2, (1, 2))
    torch.testing.assert_close(nn.functional.conv2d(x, w, b, stride, (1, 1)), ref,
                               rtol=1e-4, atol=1e-4)


REFUSED = {
    "relu between": (lambda: _seq(nn.Flatten(), nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 2)),
                     "1", "not a layer it merges with"),
    "padded second conv": (lambda: _seq(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, padding=1)),
                           "0", "pads its input"),
    "max pooling": (lambda: _seq(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2)), "0",
                    "not a layer it merges with"),
    "no such module": (lambda: _seq(nn.Conv2d(1, 4, 3)), "7", "no such module"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_merging_refuses_what_does_not_merge_exactly(case):
    build, first, message = REFUSED[case]
    with pytest.raises(ModelError, match=message):
        merge_layers(build(), first, IN)


def test_an_output_read_twice_is_not_merged():
    from tests.helpers import tiny

    model = tiny("residual")
    assert find_merges(model, IN, only_smaller=False) == []
    with pytest.raises(ModelError, match="not by one layer it merges with"):
        merge_layers(model, "stem", IN)


def test_lenet5_candidates_and_their_merges():
    model = build_model(resolve_spec("lenet5", IN, 10)).eval()
    found = {c.name: (c, n) for c, n in candidates(model, IN)}
    assert found["features.2"][0] == Candidate("pool", "features.2", "features.1")
    assert found["features.5"][0] == Candidate("pool", "features.5", "features.4")
    assert found["classifier.1"] == (Candidate("activation", "classifier.1"), 1)
    assert "features.1" not in found  # a ReLU before a max pooling enables no merge by itself
    x = torch.randn(4, *IN)
    before = model(x)
    # a max pooling after a ReLU: swapping them is exact
    swapped = copy.deepcopy(model)
    swapped.features[1], swapped.features[2] = nn.MaxPool2d(2), nn.ReLU()
    torch.testing.assert_close(swapped(x), before)
    log = []
    for cand, _ in found.values():
        log += linearize(model, cand)
    merges, edits = merge_all(model, IN)
    log += edits
    assert len(merges) == 4 and metrics.count_layers(model) == 3
    assert metrics.count_macs(model, IN) < metrics.count_macs(build_model(
        resolve_spec("lenet5", IN, 10)), IN) / 3
    spec = resolve_spec("lenet5", IN, 10).with_edits(log)
    rebuilt = build_model(spec)
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x), model(x))


def test_resnet_blocks_with_identity_shortcuts_are_candidates():
    model = build_model(resolve_spec("resnet20", IN, 10, width=0.25))
    blocks = [c.name for c, n in candidates(model, IN) if c.kind == "block" and n == 2]
    assert blocks == ["layers.0", "layers.1", "layers.2", "layers.4", "layers.5",
                      "layers.7", "layers.8"]


def test_linearizing_moves_from_the_nonlinearity_to_its_linear_counterpart():
    x = torch.randn(3, 4, 6, 6, requires_grad=True)
    blend = Linearizing(nn.ReLU(inplace=True), nn.Identity())
    torch.testing.assert_close(blend(x.clone()), torch.relu(x))
    blend.set_progress(0.25)
    torch.testing.assert_close(blend(x), nn.functional.leaky_relu(x, 0.25))
    blend(x).sum().backward()
    assert x.grad is not None and torch.all(x.grad > 0)
    blend.set_progress(2.0)
    torch.testing.assert_close(blend(x), x)
    pool = Linearizing(nn.MaxPool2d(2), nn.AvgPool2d(2))
    pool.set_progress(1.0)
    torch.testing.assert_close(pool(x), nn.functional.avg_pool2d(x, 2))


def _merged_lenet(tmp_path, epochs):
    spec = resolve_spec("lenet5", IN, 10)
    torch.manual_seed(0)
    model = build_model(spec)
    ctx = Context(synthetic_splits(), finetune_epochs=epochs, quiet=True)
    config = MergeLayers(include=("features.2", "features.5", "classifier.3"),
                         exclude=("classifier.1",), samples=64)
    model = apply(model, config, ctx)
    return model, spec.with_edits(ctx.edits), ctx


def test_merge_step_makes_lenet5_shallower_and_the_model_reloads(tmp_path):
    model, spec, ctx = _merged_lenet(tmp_path, epochs=1)
    notes = ctx.notes["merge"]
    assert notes["layers_before"] == 5 and notes["layers_after"] == 4
    assert sorted(notes["chosen"]) == ["activation classifier.3", "pool features.2",
                                       "pool features.5"]
    assert not any(isinstance(m, (Linearizing, nn.MaxPool2d)) for m in model.modules())
    x = torch.randn(3, *IN)
    path = save_checkpoint(tmp_path / "m.safetensors", model, spec)
    torch.testing.assert_close(load_checkpoint(path).model(x), model.eval()(x))
    encode_file(tmp_path / "m.cnz", model, spec)
    decoded, _, _ = decode_file(tmp_path / "m.cnz")
    torch.testing.assert_close(decoded(x), model(x), rtol=1e-2, atol=1e-2)  # float16 storage


def test_a_flattened_merge_survives_pruning_and_weight_sharing(tmp_path):
    spec = resolve_spec("lenet5-caffe", IN, 10)
    model = build_model(spec)
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    model = apply(model, MergeLayers(include=("features.1", "features.3"),
                                     exclude=("classifier.1",), samples=64), ctx)
    assert any(isinstance(m, FlatLinear) for m in model.modules())
    model = apply(model, MagnitudePrune(sparsity=0.5), ctx)
    from cnnzip.methods.share import WeightSharing
    model = apply(model, WeightSharing(epochs=0), ctx)
    x = torch.randn(2, *IN)
    assert model.eval()(x).shape == (2, 10)


def test_merge_refuses_after_unstructured_pruning_and_bad_options():
    model = build_model(resolve_spec("lenet5", IN, 10))
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    model = apply(model, MagnitudePrune(sparsity=0.5), ctx)
    with pytest.raises(CnnzipError, match="before unstructured pruning"):
        apply(model, MergeLayers(), ctx)
    with pytest.raises(CnnzipError, match="target_layers"):
        MergeLayers(target_layers=1.5)


def test_a_spec_whose_replacements_do_not_fit_is_a_clear_error():
    with pytest.raises(ModelError, match="edit 1 .module_replaced. does not fit"):
        build_model(ModelSpec("lenet5", edits=(ModuleReplaced("nope.3", {"type": "Identity"}),)))
    with pytest.raises(ModelError, match="malformed layer description"):
        build_model(ModelSpec("lenet5", edits=(ModuleReplaced("features.0", {"type": "Transformer"}),)))


POOLED = {
    "lenet5": lambda: build_model(resolve_spec("lenet5", IN, 10)).eval(),
    "lenet5-caffe (no activation)":
        lambda: build_model(resolve_spec("lenet5-caffe", IN, 10)).eval(),
    "strided conv, leaky ReLU, overlapping pool": lambda: _seq(
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.Linear(4 * 6 * 6, 3)),
}


@pytest.mark.parametrize("case", list(POOLED))
def test_max_poolings_merge_exactly_and_replay(case):
    model = POOLED[case]()
    x = torch.randn(5, *IN)
    before = model(x)
    pools, log = max_pools(model, IN), []
    assert pools
    macs = metrics.count_macs(model, IN)
    for pool in pools:
        log += merge_max_pool(model, pool, IN)[1]
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert sum(isinstance(m, ConvMaxPool) for m in model.modules()) == len(pools)
    # every phase is counted (the zero padding not): the same MACs unless windows overlap
    assert (metrics.count_macs(model, IN) > macs) == ("overlapping" in case)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    rebuilt = POOLED[case]()
    replay(rebuilt, log, IN)
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(x), before, rtol=1e-5, atol=1e-5)


POOL_REFUSED = {
    "pool of a pool": (lambda: _seq(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.MaxPool2d(2)), "2",
                       "does not pool a convolution"),
    "a decreasing activation": (lambda: _seq(nn.Conv2d(1, 4, 3), nn.LeakyReLU(-0.5),
                                             nn.MaxPool2d(2)), "2", "does not pool"),
    "padded pool": (lambda: _seq(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2, padding=1)), "1",
                    "without padding"),
    "not a pool": (lambda: _seq(nn.Conv2d(1, 4, 3), nn.AvgPool2d(2)), "1", "not a max pooling"),
}


@pytest.mark.parametrize("case", list(POOL_REFUSED))
def test_max_pool_merging_refuses_what_it_cannot_merge(case):
    build, name, message = POOL_REFUSED[case]
    with pytest.raises(ModelError, match=message):
        merge_max_pool(build(), name, IN)


def test_merge_step_merges_max_pools_exactly_and_the_container_reloads(tmp_path):
    spec = resolve_spec("lenet5", IN, 10)
    model = build_model(spec).eval()
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    x = torch.randn(3, *IN)
    before = model(x)
    model = apply(model, MergeLayers(max_pools=True, activations=False, samples=64), ctx)
    assert len(ctx.notes["merge"]["max_pools"]) == 2 and ctx.notes["merge"]["chosen"] == []
    torch.testing.assert_close(model.eval()(x), before, rtol=1e-5, atol=1e-5)
    model = apply(model, MagnitudePrune(sparsity=0.5), ctx)  # prunes the original kernels
    spec = spec.with_edits(ctx.edits)
    encode_file(tmp_path / "m.cnz", model, spec)
    decoded, _, _ = decode_file(tmp_path / "m.cnz")
    torch.testing.assert_close(decoded(x), model.eval()(x), rtol=1e-2, atol=1e-2)
    with pytest.raises(CnnzipError, match="max_pools: 'features.1'.*features.2, features.5"):
        apply(build_model(resolve_spec("lenet5", IN, 10)), MergeLayers(max_pools=("features.1",)),
              Context(synthetic_splits(), finetune_epochs=0, quiet=True))
