import pytest
import torch

from cnnzip.data import synthetic_splits
from cnnzip.errors import CnnzipError
from cnnzip.methods.base import Context, apply
from cnnzip.methods.prune import MagnitudePrune, Schedule, SensitivityScan, sparsity_of
from cnnzip.ops.allocate import allocate_for_target, choose_sparsities
from tests.helpers import tiny

TABLE = {  # layer → (sparsity, accuracy) with a baseline of 0.9
    "big": [(0.5, 0.9), (0.9, 0.88), (0.95, 0.80)],
    "small": [(0.5, 0.85), (0.9, 0.70), (0.95, 0.60)],
}
SIZES = {"big": 9000, "small": 1000}


def test_allocation_prunes_the_cheap_layer_and_hits_the_target():
    chosen = allocate_for_target(TABLE, 0.9, SIZES, 0.8, 0.99)
    # big's first step is free; its next step costs less per weight than any step of small,
    # and only as much of it is taken as the target needs
    assert chosen == {"big": pytest.approx(0.5 + 3500 / 9000), "small": 0.0}
    assert sum(chosen[n] * SIZES[n] for n in SIZES) / 10_000 == pytest.approx(0.8)


def test_allocation_stops_at_the_maximum():
    chosen = allocate_for_target(TABLE, 0.9, SIZES, 0.99, 0.9)
    assert chosen == {"big": 0.9, "small": 0.9}


def test_choose_sparsities_by_tolerance():
    assert choose_sparsities(TABLE, 0.9, 0.03, 0.99) == {"big": 0.9, "small": 0.0}


def test_scan_then_prune_reaches_the_overall_target():
    splits = synthetic_splits()
    model = tiny("mlp")
    ctx = Context(splits, finetune_epochs=0, quiet=True)
    apply(model, SensitivityScan(target_sparsity=0.7), ctx)
    assert set(ctx.notes["sensitivity"]["table"]) == {"net.1", "net.3"}
    apply(model, MagnitudePrune(schedule=Schedule.ONE_SHOT), ctx)
    weights = {n: m.weight.numel() for n, m in [("net.1", model.net[1]), ("net.3", model.net[3])]}
    pruned = sum(sparsity_of(model)[n] * weights[n] for n in weights) / sum(weights.values())
    assert pruned == pytest.approx(0.7, abs=0.002)


def test_a_scan_by_macs_removes_the_target_share_of_multiply_accumulates():
    from cnnzip.metrics import layer_stats

    splits = synthetic_splits()
    model = tiny("convbn")  # a 3×3 conv (784 positions per weight) and a large linear layer
    ctx = Context(splits, finetune_epochs=0, quiet=True)
    apply(model, SensitivityScan(target_sparsity=0.5, by="macs"), ctx)
    assert ctx.notes["sensitivity"]["by"] == "macs"
    macs = {s.name: s.macs for s in layer_stats(model, splits.info.in_shape)}
    chosen = ctx.sparsities
    removed = sum(chosen[n] * macs[n] for n in chosen) / sum(macs[n] for n in chosen)
    assert removed == pytest.approx(0.5, abs=0.002)
    by_weights = Context(splits, finetune_epochs=0, quiet=True)
    apply(tiny("convbn"), SensitivityScan(target_sparsity=0.5), by_weights)
    assert chosen != by_weights.sparsities


@pytest.mark.parametrize("schedule", list(Schedule))
def test_schedules_end_at_the_target(schedule):
    model = tiny("mlp")
    ctx = Context(synthetic_splits(), quiet=True)
    apply(model, MagnitudePrune(sparsity=0.75, schedule=schedule, epochs=2, rounds=2), ctx)
    for s in sparsity_of(model).values():
        assert s == pytest.approx(0.75, abs=0.001)


def test_quality_threshold_and_bad_layer_names():
    model = tiny("mlp")
    w = model.net[1].weight.detach().clone()
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, MagnitudePrune(quality=1.0, schedule=Schedule.ONE_SHOT), ctx)
    expected = (w.abs() <= w.std()).float().mean()
    assert sparsity_of(model)["net.1"] == pytest.approx(float(expected), abs=1e-3)
    with pytest.raises(CnnzipError, match="no conv or linear layer named nope"):
        apply(model, MagnitudePrune(sparsity=0.5, layers={"nope": 0.1}), ctx)
    with pytest.raises(CnnzipError, match="give a sparsity or run a sensitivity scan"):
        apply(tiny("mlp"), MagnitudePrune(), Context(synthetic_splits(), quiet=True))


def test_surgery_prunes_below_and_splices_above_the_margins():
    from cnnzip.methods.prune import _spliced

    latent = torch.tensor([0.5, 0.95, 1.05, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    # the threshold at 30% sparsity is 1.05: prune < 0.945, splice > 1.155, else keep the state
    was = torch.tensor([True, True, False, False, True, True, True, True, True, True])
    assert _spliced(latent, was, 0.3, 0.1).tolist() == [
        False, True, False, True, True, True, True, True, True, True]


def test_surgery_lets_pruned_weights_grow_back(monkeypatch):
    import cnnzip.methods.prune as prune_module

    seen = []
    spliced = prune_module._spliced

    def record(latent, mask, sparsity, margin):
        seen.append(spliced(latent, mask, sparsity, margin))
        return seen[-1]

    monkeypatch.setattr(prune_module, "_spliced", record)
    model = tiny("mlp")
    ctx = Context(synthetic_splits(), quiet=True)
    apply(model, MagnitudePrune(sparsity=0.8, schedule=Schedule.DNS, epochs=3, rounds=6,
                                lr=0.05), ctx)
    final = ctx.masks["net.1"]
    early = [m for m in seen if m.shape == final.shape]
    assert early and any(int((~m & final).sum()) > 0 for m in early)  # pruned, then back
    assert bool((model.net[1].weight[~final] == 0).all())
