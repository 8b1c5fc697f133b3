"""Low-rank decomposition: the factors, the factorized layers, the step's budgets and records."""

import numpy as np
import pytest
import torch
from torch import nn

from cnnzip import metrics
from cnnzip.codec import (decode_file, encode_file, load_checkpoint, round_for_storage,
                          save_checkpoint)
from cnnzip.data import synthetic_splits
from cnnzip.errors import CnnzipError, ModelError
from cnnzip.methods.base import Context, RunState, apply
from cnnzip.methods.lowrank import LowRank, RankAllocation
from cnnzip.methods.prune import MagnitudePrune, Schedule
from cnnzip.methods.quant import Quantize
from cnnzip.methods.share import WeightSharing
from cnnzip.ops import lowrank
from cnnzip.recipes import load_recipe, parse_recipe
from cnnzip.surgery import build_model, resolve_spec
from cnnzip.surgery.lowrank import Factorization, dense_weight, factorize
from cnnzip.surgery.replace import construct, describe

IN = (1, 28, 28)


def test_energy_rank_counts_the_leading_values_that_hold_the_energy():
    s = np.array([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert lowrank.energy_rank(s, 0.5) == 1
    assert lowrank.energy_rank(s, 9 / 14) == 1
    assert lowrank.energy_rank(s, 0.7) == 2
    assert lowrank.energy_rank(s, 1.0) == 3
    assert lowrank.energy_rank(np.zeros(3), 0.9) == 1


@pytest.mark.parametrize("kind, ranks", [(Factorization.SVD, (16,)),
                                         (Factorization.TUCKER2, (16, 8)),
                                         (Factorization.TUCKER2, (16, 0)),
                                         (Factorization.CP, (200,))])
def test_at_full_rank_a_factorized_convolution_computes_the_same(kind, ranks):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, (3, 2), stride=(2, 1), padding=(1, 0))
    seq = factorize(conv, kind, ranks, iterations=50)
    x = torch.randn(2, 8, 9, 7)
    if kind is Factorization.CP:  # CP by ALS only converges toward it
        assert lowrank.relative_error(conv.weight, dense_weight(seq)) < 0.01
        assert lowrank.relative_error(conv(x), seq(x)) < 0.01
    else:
        assert torch.allclose(seq(x), conv(x), atol=1e-4)
        assert torch.allclose(dense_weight(seq), conv.weight, atol=1e-4)


def test_cp_starts_from_thin_svds_in_little_memory():
    """tensorly's own SVD start asks for ``rank`` vectors of the 3 × 36,864 unfolding of a
    64 × 64 × 3 × 3 kernel and computes the full SVD (36,864² doubles, 11 GB)."""
    import tracemalloc

    torch.manual_seed(0)
    w = torch.randn(64, 64, 3, 3)
    tracemalloc.start()
    try:
        first, vertical, horizontal, last = lowrank.cp(w, 16, iterations=5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100e6
    assert (first.shape, vertical.shape, horizontal.shape, last.shape) == \
        ((16, 64), (16, 3), (16, 3), (64, 16))


def test_truncation_keeps_the_best_approximation_and_costs_less():
    torch.manual_seed(0)
    lin = nn.Linear(40, 30)
    errors = []
    for r in (5, 10, 20, 30):
        seq = factorize(lin, Factorization.SVD, (r,))
        assert metrics.count_params(seq) == r * 70 + 30
        errors.append(lowrank.relative_error(lin.weight, dense_weight(seq)))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-5
    # the SVD's error is the energy of the dropped singular values (Eckart–Young)
    s = lowrank.spectrum(lin.weight.detach(), 0)
    assert errors[0] == pytest.approx(float(np.sqrt((s[5:] ** 2).sum() / (s ** 2).sum())),
                                      rel=1e-4)


def test_a_factorized_layer_is_recorded_and_rebuilt_from_its_description():
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    for kind, ranks in [(Factorization.TUCKER2, (6, 4)), (Factorization.CP, (5,))]:
        seq = factorize(conv, kind, ranks)
        rebuilt = construct(describe(seq))
        rebuilt.load_state_dict(seq.state_dict())
        x = torch.randn(1, 8, 9, 9)
        assert torch.equal(rebuilt(x), seq(x))


@pytest.mark.parametrize("desc, message", [
    ({"type": "Sequential", "layers": [{"type": "Sequential", "layers": []}]}, "not a sequence"),
    ({"type": "Sequential", "layers": [{"type": "ReLU"}] * 9}, "1 to 8"),
    ({"type": "Sequential", "layers": "ReLU"}, "1 to 8"),
    ({"type": "Conv2d", "in": 6, "out": 4, "kernel": 3, "stride": 1, "padding": 0,
      "bias": False, "groups": 4}, "must divide"),
    ({"type": "Conv2d", "in": 4, "out": 4, "kernel": 3, "stride": 1, "padding": 0,
      "bias": False, "groups": 0}, "groups must be"),
])
def test_a_hostile_sequence_or_grouping_is_a_clear_error(desc, message):
    with pytest.raises(ModelError, match=message):
        construct(desc)


def _resnet(seed=0):
    torch.manual_seed(seed)
    return build_model(resolve_spec("resnet20", IN, 10, width=0.25)).eval()


@pytest.mark.parametrize("allocation", list(RankAllocation))
def test_the_step_meets_a_macs_budget_and_the_model_reloads(tmp_path, allocation):
    model, spec = _resnet(), resolve_spec("resnet20", IN, 10, width=0.25)
    before = metrics.count_macs(model, IN)
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    config = LowRank(allocation=allocation, target_macs=0.6, samples=64,
                     fractions=(0.25, 0.5, 0.75), min_saving=0.05)
    model = apply(model, config, ctx).eval()
    note = ctx.notes["lowrank"]
    assert metrics.count_macs(model, IN) == note["after"] <= 0.6 * before
    assert note["layers"] and all(isinstance(model.get_submodule(n), nn.Sequential)
                                  for n in note["layers"])
    path = save_checkpoint(tmp_path / "m.safetensors", model, spec.with_edits(ctx.edits))
    x = torch.randn(2, *IN)
    assert torch.allclose(load_checkpoint(path).model.eval()(x), model(x), atol=1e-5)


def test_energy_allocation_without_a_target_keeps_that_energy_per_layer():
    model = _resnet()
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, LowRank(allocation=RankAllocation.ENERGY, energy=0.5, min_saving=0.0), ctx)
    layers = ctx.notes["lowrank"]["layers"]
    assert {row["factorization"] for row in layers.values()} == {"svd", "tucker2"}
    for name, row in layers.items():
        assert 0 < row["weight_error"] < 1.0 and row["params_after"] < row["params_before"]
        if row["factorization"] == "svd":  # the error is the energy dropped: at most half
            assert row["weight_error"] ** 2 <= 0.5 + 1e-5


def test_factors_compose_with_pruning_quantization_and_sharing(tmp_path):
    spec = resolve_spec("resnet20", IN, 10, width=0.25)
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    model = apply(_resnet(), LowRank(allocation=RankAllocation.ENERGY, energy=0.6), ctx)
    quantized = apply(build_model(spec.with_edits(ctx.edits)), Quantize(weight_bits=4),
                      Context(synthetic_splits(), finetune_epochs=0, quiet=True,
                              state=RunState(edits=list(ctx.edits))))
    assert any(n.startswith("layers.0.conv1.") for n, _ in quantized.named_modules())
    model = apply(model, MagnitudePrune(sparsity=0.5, schedule=Schedule.ONE_SHOT), ctx)
    model = round_for_storage(apply(model, WeightSharing(conv_bits=3, fc_bits=3), ctx).eval())
    encode_file(tmp_path / "m.cnz", model, spec.with_edits(ctx.edits))
    x = torch.randn(2, *IN)
    assert torch.equal(decode_file(tmp_path / "m.cnz")[0].eval()(x), model(x))


def test_bad_uses_are_clear_errors():
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    with pytest.raises(CnnzipError, match="no layer named nope"):
        apply(_resnet(), LowRank(layers=("nope",)), ctx)
    with pytest.raises(CnnzipError, match="above the target"):
        apply(_resnet(), LowRank(allocation=RankAllocation.ENERGY, target_params=0.01), ctx)
    with pytest.raises(CnnzipError, match="target_macs must be in"):
        LowRank(target_macs=1.5)
    pruned = apply(_resnet(), MagnitudePrune(sparsity=0.5, schedule=Schedule.ONE_SHOT), ctx)
    with pytest.raises(CnnzipError, match="factorize before pruning"):
        apply(pruned, LowRank(), ctx)
    with pytest.raises(CnnzipError, match="factorize before unstructured pruning"):
        parse_recipe({"steps": [{"prune": {"sparsity": 0.5}}, {"lowrank": {}}]}, "r.yaml")


def test_the_lowrank_vq_recipe_reads():
    recipe = load_recipe("lowrank-vq")
    assert [kind for kind, _ in recipe.steps] == ["lowrank", "share"]
