import dataclasses

import pytest
import torch

from cnnzip import metrics
from cnnzip.data import synthetic_splits
from cnnzip.errors import CnnzipError, ModelError
from cnnzip.graph import channel_groups, trace
from cnnzip.methods.base import Context, apply
from cnnzip.methods.channel import (Allocation, ChannelPrune, Criterion, _data_stats,
                                    group_scores)
from cnnzip.models import ModelSpec, build_model, load_checkpoint, resolve_spec, save_checkpoint
from cnnzip.surgery import remove_channels
from tests.helpers import TINY_ZOO, tiny

IN = (1, 28, 28)


def _silence(group, channels):
    """Zero everything that produces ``channels`` of ``group``, so they carry nothing."""
    with torch.no_grad():
        for member in group.members:
            if member.role == "in":
                continue
            rows = [i for i, r in zip(member.idxs, member.root_idxs) if r in channels]
            member.module.weight[rows] = 0
            if member.module.bias is not None:
                member.module.bias[rows] = 0


@pytest.mark.parametrize("name", ["convbn", "residual", "concat", "depthwise", "grouped", "mlp"])
def test_removing_silent_channels_leaves_outputs_unchanged(name):
    model = tiny(name)
    groups = channel_groups(model, trace(model, IN))
    assert groups, name
    removals = {}
    for group in groups:
        # half the channels; grouped convs take whole groups' worth only, so take pairs there
        victims = list(range(0, group.channels, 2))[: max(1, group.channels // 2)]
        if len(victims) >= group.channels:
            continue
        _silence(group, set(victims))
        removals[group.root] = victims
    x = torch.randn(3, *IN)
    before = model(x)
    params = metrics.count_params(model)
    remove_channels(model, trace(model, IN), removals)
    assert metrics.count_params(model) < params
    assert torch.allclose(model(x), before, atol=1e-5)


@pytest.mark.parametrize("criterion", list(Criterion))
def test_every_criterion_scores_every_channel(criterion):
    model = tiny("residual")
    ctx = Context(synthetic_splits(), quiet=True)
    config = ChannelPrune(criterion=criterion, batches=2)
    groups = channel_groups(model, trace(model, IN))
    grads, active = _data_stats(model, groups, config, ctx)
    for group in groups:
        scores = group_scores(group, config, grads, active)
        assert scores.shape == (group.channels,) and torch.isfinite(scores).all()


def test_l1_ranks_the_weakest_filter_lowest():
    model = tiny("convbn")
    with torch.no_grad():
        model.conv.weight[2] *= 0.01
    (group,) = channel_groups(model, trace(model, IN))
    scores = group_scores(group, ChannelPrune(criterion=Criterion.L1))
    assert int(scores.argmin()) == 2


@pytest.mark.parametrize("name,target,allocation", [
    *[("resnet20", 0.5, a) for a in Allocation],
    ("mobilenetv2", 0.25, Allocation.GLOBAL), ("vgg16", 0.5, Allocation.ADAPTIVE)])
def test_budget_is_met_and_the_pruned_model_reloads(tmp_path, name, target, allocation):
    spec = resolve_spec(name, IN, 10, width=0.25)
    model = build_model(spec).eval()
    base = metrics.count_macs(model, IN)
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, ChannelPrune(allocation=allocation, target_macs=target), ctx)
    macs = metrics.count_macs(model, IN)
    assert 0.8 * target * base <= macs <= target * base
    spec = dataclasses.replace(spec, channel_plan=tuple(ctx.channel_plan))
    path = save_checkpoint(tmp_path / "p.safetensors", model.eval(), spec)
    loaded = load_checkpoint(path)
    x = torch.randn(2, *IN)
    assert torch.allclose(loaded.model.eval()(x), model(x), atol=1e-5)


def test_unreachable_budget_and_bad_options_are_clear_errors():
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    with pytest.raises(CnnzipError, match="cannot keep macs"):
        apply(tiny("convbn"), ChannelPrune(target_macs=0.01, max_ratio=0.5), ctx)
    with pytest.raises(CnnzipError, match="no prunable group"):
        apply(tiny("convbn"), ChannelPrune(target_macs=0.5, layers={"nope": 0.5}), ctx)
    with pytest.raises(CnnzipError, match="not both"):
        ChannelPrune(target_macs=0.5, target_params=0.5)
    with pytest.raises(CnnzipError, match="in \\(0, 1\\)"):
        ChannelPrune(target_macs=2.0)


def test_a_plan_that_does_not_fit_is_a_clear_error():
    spec = ModelSpec("lenet5", channel_plan=(("features.0", True, (0, 99)),))
    with pytest.raises(ModelError, match="channel plan"):
        build_model(spec)


def test_user_models_prune_too():
    assert "residual" in TINY_ZOO
    spec = ModelSpec("tests.helpers:Residual", IN, 10)
    model = build_model(spec)
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, ChannelPrune(target_params=0.6), ctx)
    assert metrics.count_params(model) <= 0.6 * metrics.count_params(build_model(spec))
