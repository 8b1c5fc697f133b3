
import pytest
import torch
from torch import nn

from cnnzip import metrics
from cnnzip.codec import load_checkpoint, save_checkpoint
from cnnzip.data import synthetic_splits
from cnnzip.errors import CnnzipError, ModelError
from cnnzip.graph import Role, channel_groups, dependency_graph
from cnnzip.methods.base import Context, apply
from cnnzip.methods.channel import (Allocation, ChannelPrune, Criterion, GroupScan,
                                    group_scores, sensitivity_keys)
from cnnzip.methods.shared.channel_scores import _data_stats
from cnnzip.methods.merge import MergeLayers
from cnnzip.modules import ConvMaxPool
from cnnzip.surgery import (ChannelsRemoved, ModelSpec, ModuleReplaced, build_model,
                            remove_channels, resolve_spec, silence_channels)
from tests.helpers import TINY_ZOO, tiny
from tests.modern import MODERN

IN = (1, 28, 28)


@pytest.mark.parametrize("name", ["convbn", "residual", "concat", "depthwise", "grouped", "mlp"])
def test_removing_silent_channels_leaves_outputs_unchanged(name):
    model = tiny(name)
    groups = channel_groups(model, dependency_graph(model, IN))
    assert groups, name
    removals = {}
    for group in groups:
        # half the channels; grouped convs take whole groups' worth only, so take pairs there
        victims = list(range(0, group.channels, 2))[: max(1, group.channels // 2)]
        if len(victims) >= group.channels:
            continue
        silence_channels(group, victims)
        removals[group.root] = victims
    x = torch.randn(3, *IN)
    before = model(x)
    params = metrics.count_params(model)
    remove_channels(model, dependency_graph(model, IN), removals)
    assert metrics.count_params(model) < params
    assert torch.allclose(model(x), before, atol=1e-5)


@pytest.mark.parametrize("criterion", list(Criterion))
def test_every_criterion_scores_every_channel(criterion):
    model = tiny("residual")
    ctx = Context(synthetic_splits(), quiet=True)
    config = ChannelPrune(criterion=criterion, batches=2)
    groups = channel_groups(model, dependency_graph(model, IN))
    grads, active = _data_stats(model, groups, config, ctx)
    for group in groups:
        scores = group_scores(group, config, grads, active)
        assert scores.shape == (group.channels,) and torch.isfinite(scores).all()


def test_l1_ranks_the_weakest_filter_lowest():
    model = tiny("convbn")
    with torch.no_grad():
        model.conv.weight[2] *= 0.01
    (group,) = channel_groups(model, dependency_graph(model, IN))
    scores = group_scores(group, ChannelPrune(criterion=Criterion.L1))
    assert int(scores.argmin()) == 2


@pytest.mark.parametrize("name,target,allocation", [
    *[("resnet20", 0.5, a) for a in Allocation if not a.searched],  # searched: test_policy
    ("mobilenetv2", 0.25, Allocation.GLOBAL), ("vgg16", 0.5, Allocation.ADAPTIVE)])
def test_budget_is_met_and_the_pruned_model_reloads(tmp_path, name, target, allocation):
    spec = resolve_spec(name, IN, 10, width=0.25)
    model = build_model(spec).eval()
    base = metrics.count_macs(model, IN)
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, ChannelPrune(allocation=allocation, target_macs=target), ctx)
    macs = metrics.count_macs(model, IN)
    assert 0.8 * target * base <= macs <= target * base
    spec = spec.with_edits(ctx.edits)
    path = save_checkpoint(tmp_path / "p.safetensors", model.eval(), spec)
    loaded = load_checkpoint(path)
    x = torch.randn(2, *IN)
    assert torch.allclose(loaded.model.eval()(x), model(x), atol=1e-5)


def test_round_to_keeps_multiples_of_its_channel_count():
    model = build_model(resolve_spec("vgg16", IN, 10, width=0.25)).eval()  # 16 to 128
    base = metrics.count_macs(model, IN)

    def widths():
        return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]

    before = widths()
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, ChannelPrune(target_macs=0.5, round_to=8), ctx)
    assert metrics.count_macs(model, IN) <= 0.5 * base
    assert all(w % 8 == 0 for w in widths()) and widths() != before
    with pytest.raises(CnnzipError, match="round_to"):
        ChannelPrune(round_to=0)


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
    spec = ModelSpec("lenet5", edits=(ChannelsRemoved((("features.0", (0, 99)),)),))
    with pytest.raises(ModelError, match="channels_removed.*does not fit"):
        build_model(spec)


def test_channels_prune_after_layer_merging_and_the_record_rebuilds_it():
    spec = resolve_spec("lenet5", (1, 28, 28), 10)
    torch.manual_seed(0)
    model = build_model(spec)
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, MergeLayers(max_pools=True, activations=False, blocks=False, epochs=0), ctx)
    macs = metrics.count_macs(model, (1, 28, 28))
    apply(model, ChannelPrune(target_macs=0.5, epochs=0), ctx)
    assert metrics.count_macs(model, (1, 28, 28)) <= 0.5 * macs + 1
    assert isinstance(model.features[0], ConvMaxPool)
    assert [type(e) for e in ctx.edits[-2:]] == [ModuleReplaced, ChannelsRemoved]
    rebuilt = build_model(spec.with_edits(ctx.edits))  # replayed in the order they happened
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(rebuilt.eval()(x), model.eval()(x))


def test_user_models_prune_too():
    assert "residual" in TINY_ZOO
    spec = ModelSpec("tests.helpers:Residual", IN, 10)
    model = build_model(spec, trust_code=True)
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, ChannelPrune(target_params=0.6), ctx)
    assert metrics.count_params(model) <= 0.6 * metrics.count_params(build_model(spec, trust_code=True))


def test_recoverable_silence_keeps_gradients_flowing_to_the_zeroed_filters():
    model = tiny("convbn").train()
    (group,) = channel_groups(model, dependency_graph(model, IN))
    with torch.no_grad():
        model.bn.bias.fill_(0.1)  # an open ReLU, as a trained shift usually gives
    silence_channels(group, [1], recoverable=True)
    assert not model.conv.weight[1].any() and model.bn.weight[1] != 0
    torch.nn.functional.cross_entropy(model(torch.randn(8, *IN)),
                                      torch.randint(0, 10, (8,))).backward()
    assert model.conv.weight.grad[1].abs().sum() > 0
    silence_channels(group, [1])
    assert model.bn.weight[1] == 0


def test_soft_pruning_meets_the_budget_and_its_last_epoch_trains_the_final_choice(monkeypatch):
    import cnnzip.methods.channel as channel_module

    spec = resolve_spec("resnet20", IN, 10, width=0.25)
    model = build_model(spec)
    base = metrics.count_macs(model, IN)
    ctx = Context(synthetic_splits(n_train=256), quiet=True)
    seen = []  # recoverable or not, per group silenced

    def spy(group, channels, *, recoverable=False):
        seen.append(recoverable)
        silence_channels(group, channels, recoverable=recoverable)
    monkeypatch.setattr(channel_module, "silence_channels", spy)
    apply(model, ChannelPrune(target_macs=0.5, soft=True, epochs=3, lr=0.05), ctx)
    assert metrics.count_macs(model, IN) <= 0.5 * base
    assert len(ctx.notes["channels"]["soft_reselected"]) == 2  # after epochs 0 and 1
    # four rounds over the groups: at the start and after epoch 0 revivable; after epoch 1 (so
    # for the last epoch) and at the removal silenced for good, BatchNorm shifts too
    n = len(seen) // 4
    assert n > 0 and seen == [True] * 2 * n + [False] * 2 * n
    rebuilt = build_model(spec.with_edits(ctx.edits))
    assert metrics.count_params(rebuilt) == metrics.count_params(model)


def test_soft_pruning_with_fewer_finetune_epochs_still_trains_the_final_choice(monkeypatch):
    # --finetune-epochs 2 under a recipe's 5: the second (last) epoch trains the final choice
    # silenced for good (reading the recipe's 5 once left it never trained silenced)
    import cnnzip.methods.channel as channel_module

    model = build_model(resolve_spec("resnet20", IN, 10, width=0.25))
    ctx = Context(synthetic_splits(n_train=128), quiet=True, finetune_epochs=2)
    seen = []

    def spy(group, channels, *, recoverable=False):
        seen.append(recoverable)
        silence_channels(group, channels, recoverable=recoverable)
    monkeypatch.setattr(channel_module, "silence_channels", spy)
    apply(model, ChannelPrune(target_macs=0.5, soft=True, epochs=5, lr=0.05), ctx)
    assert len(ctx.notes["channels"]["soft_reselected"]) == 1  # after epoch 0 only
    n = len(seen) // 3
    assert n > 0 and seen == [True] * n + [False] * 2 * n


@pytest.mark.parametrize("bn_images", [0, 64])
def test_sensitivity_keys_follow_each_groups_measured_cost(bn_images):
    model = tiny("residual")
    ctx = Context(synthetic_splits(), quiet=True)
    groups = channel_groups(model, dependency_graph(model, IN))
    config = ChannelPrune(allocation=Allocation.SENSITIVITY,
                          sensitivity=GroupScan(bn_images=bn_images))
    scores = {g.root: group_scores(g, config) for g in groups}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    keys, drops = sensitivity_keys(model, groups, scores, config, ctx)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # restored
    for group in groups:
        ranked = keys[group.root][torch.argsort(scores[group.root], stable=True)]
        assert (ranked.diff() >= 0).all()  # weaker channels never cost more
        assert len(drops[group.root]) == len(config.sensitivity.ratios)


def test_slimming_drives_batchnorm_scales_down():
    from cnnzip.train import TrainConfig, fit, slimming_penalty
    sums = []
    for weight in (0.0, 0.3):
        model = tiny("convbn")
        fit(model, synthetic_splits(), TrainConfig(epochs=3, lr=0.05, slimming=weight),
            quiet=True)
        sums.append(float(slimming_penalty(model).detach()))
    assert sums[1] < 0.7 * sums[0]
    with pytest.raises(CnnzipError, match="slimming"):
        ChannelPrune(slimming_epochs=2)


def test_cost_weighting_meets_the_budget_with_fewer_channels():
    spec = resolve_spec("vgg16", IN, 10, width=0.25)
    removed = []
    for cost_weight in (0.0, 1.0):
        model = build_model(spec).eval()
        base = metrics.count_macs(model, IN)
        ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
        apply(model, ChannelPrune(target_macs=0.5, cost_weight=cost_weight), ctx)
        assert metrics.count_macs(model, IN) <= 0.5 * base
        removed.append(sum(g["removed"] for g in ctx.notes["channels"]["groups"].values()))
    assert removed[1] < removed[0]


@pytest.mark.parametrize("name", list(MODERN))
def test_modern_blocks_lose_silenced_units_without_changing_their_outputs(name):
    """Grouped convolutions lose the same positions in every group, channel shuffles are left
    whole: silencing the chosen units and then removing them changes nothing."""
    torch.manual_seed(0)
    model = MODERN[name]().eval()
    groups = channel_groups(model, dependency_graph(model, IN))
    removals = {}
    for group in groups:
        units = list(range(0, len(group.units), 2))[: max(1, len(group.units) // 2)]
        if len(units) >= len(group.units):
            continue
        removals[group.root] = group.channels_of(units)
        silence_channels(group, removals[group.root])
    assert removals, name
    x = torch.randn(2, *IN)
    before = model(x)
    macs = metrics.count_macs(model, IN)
    remove_channels(model, dependency_graph(model, IN), removals)
    assert metrics.count_macs(model, IN) < macs
    assert torch.allclose(model(x), before, atol=1e-5)


def test_a_grouped_convolution_ties_each_position_across_its_groups():
    model = MODERN["resnext"]().eval()
    groups = {g.root: g for g in channel_groups(model, dependency_graph(model, IN))}
    grouped = next(g for g in groups.values()
                   if any(m.name == "block1.grouped.0" for m in g.of_role(Role.OUT)))
    # 32 channels in 8 groups of 4: position p is channels p, p + 4, …, p + 28
    assert sorted(grouped.units) == [tuple(range(p, 32, 4)) for p in range(4)]


def test_channels_crossing_a_shuffle_are_left_whole_and_named():
    model = MODERN["shufflenet"]().eval()
    groups = channel_groups(model, dependency_graph(model, IN))
    roots = {m.name for g in groups for m in g.of_role(Role.OUT)}
    assert "unit1.pw1.0" in roots and "unit1.pw2.0" not in roots
    assert "channel dimension" in groups.whole["unit1.pw2.0"]
    assert "transpose" in groups.whole["unit1.pw2.0"]


def test_a_grouped_layer_reading_part_of_a_concatenation_leaves_both_halves_whole():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.b = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.g = torch.nn.Conv2d(16, 16, 3, padding=1, groups=4)
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(self.g(torch.cat([self.a(x), self.b(x)], 1)).relu().mean((2, 3)))

    model = Net().eval()
    groups = channel_groups(model, dependency_graph(model, IN))
    assert [(g.root, len(g.units)) for g in groups] == [("g", 4)]
    assert "reads these channels in some of its groups only" in groups.whole["a"]
    assert set(groups.whole) == {"a", "b"}


def test_the_last_unit_removed_gives_way_to_a_smaller_one_that_meets_the_budget_closer():
    from cnnzip.methods.shared.allocation import _give_back

    cut = {"a": 30, "b": 5, "c": 10}  # what one unit of each group removes, of 100

    def cost(count, order):
        return 100 - sum(cut[root] for root in order[:count])

    order = ["b", "a", "c", "b"]
    assert cost(1, order) > 86 >= cost(2, order) == 65  # two units meet it, 21 under
    assert _give_back(order, 2, 65, 86, cost) == ["b", "c", "a", "b"]  # 85: 1 under
    assert _give_back(order, 2, 65, 80, cost) == order  # no swap meets 80


def test_time_costs_share_each_layers_measured_time_as_macs_costs_share_its_macs(monkeypatch):
    from cnnzip.methods.shared.allocation import Cost, channel_costs

    model = build_model(resolve_spec("vgg16", IN, 10, width=0.25)).eval()
    groups = channel_groups(model, dependency_graph(model, IN))
    times = metrics.layer_times(model, IN, (nn.Conv2d, nn.Linear, nn.BatchNorm2d), rounds=2)
    layers = {n for n, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))}
    assert set(times) == layers and all(t > 0 for t in times.values())
    # timed as if a layer's time were its MACs and a BatchNorm free, the costs are the MACs'
    macs = {s.name: s.macs for s in metrics.layer_stats(model, IN)}
    monkeypatch.setattr(metrics, "layer_times", lambda m, shape, kinds: {
        n: (0.0 if isinstance(mod, nn.BatchNorm2d) else macs[n])
        for n, mod in m.named_modules() if isinstance(mod, kinds)})
    by_time = channel_costs(model, groups, IN, Cost.TIME)
    by_macs = channel_costs(model, groups, IN, Cost.MACS)
    assert by_time.keys() == by_macs.keys()
    for root in by_macs:
        assert torch.allclose(by_time[root], by_macs[root])


def test_sensitivity_with_time_costs_meets_the_budget():
    from cnnzip.methods.shared.allocation import Cost

    spec = resolve_spec("vgg16", IN, 10, width=0.25)
    model = build_model(spec).eval()
    base = metrics.count_macs(model, IN)
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, ChannelPrune(target_macs=0.5, allocation=Allocation.SENSITIVITY,
                              sensitivity=GroupScan(samples=64), cost_weight=1.0,
                              cost=Cost.TIME), ctx)
    assert 0.45 * base <= metrics.count_macs(model, IN) <= 0.5 * base


def test_divergence_is_zero_for_the_same_model_and_matches_a_hand_computed_kl():
    from cnnzip.train import divergence, log_probabilities

    splits = synthetic_splits()
    model, other = tiny("convbn").eval(), tiny("convbn").eval()
    with torch.no_grad():
        other.conv.weight.mul_(0.5)
    reference = log_probabilities(model, splits.val, splits.info)
    assert reference.shape == (len(splits.val), 10)
    assert divergence(model, splits.val, splits.info, reference) == pytest.approx(0, abs=1e-6)
    p, q = reference.exp(), log_probabilities(other, splits.val, splits.info)
    expected = float((p * (reference - q)).sum(1).mean())
    assert expected > 0
    assert divergence(other, splits.val, splits.info, reference) == pytest.approx(expected,
                                                                                  rel=1e-5)


def test_kl_sensitivity_orders_cuts_that_accuracy_counts_as_free():
    """The divergence is above zero for every cut scanned (where accuracy may tie at zero),
    the keys rise within each group, and the KL-keyed allocation meets the budget."""
    from cnnzip.methods.shared.allocation import Measure

    model = tiny("residual").eval()
    ctx = Context(synthetic_splits(), quiet=True)
    groups = channel_groups(model, dependency_graph(model, IN))
    config = ChannelPrune(allocation=Allocation.SENSITIVITY,
                          sensitivity=GroupScan(samples=64, measure=Measure.KL))
    scores = {g.root: group_scores(g, config) for g in groups}
    keys, drops = sensitivity_keys(model, groups, scores, config, ctx)
    for group in groups:
        ranked = keys[group.root][torch.argsort(scores[group.root], stable=True)]
        assert (ranked.diff() >= 0).all() and ranked[-1] > 0
        assert all(d > 0 for d in drops[group.root])  # never a tie at zero
    spec = resolve_spec("vgg16", IN, 10, width=0.25)
    model = build_model(spec).eval()
    base = metrics.count_macs(model, IN)
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, ChannelPrune(target_macs=0.5, allocation=Allocation.SENSITIVITY,
                              sensitivity=GroupScan(samples=64, measure=Measure.KL)), ctx)
    assert 0.45 * base <= metrics.count_macs(model, IN) <= 0.5 * base


def test_gradual_pruning_meets_the_budget_in_steps_and_rebuilds_from_its_edits():
    spec = resolve_spec("vgg16", IN, 10, width=0.25)
    model = build_model(spec).eval()
    base = metrics.count_macs(model, IN)
    channels_before = {n: m.out_channels for n, m in model.named_modules()
                       if isinstance(m, nn.Conv2d)}
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, ChannelPrune(target_macs=0.5, steps=3, max_ratio=0.6), ctx)
    assert 0.45 * base <= metrics.count_macs(model, IN) <= 0.5 * base
    notes = ctx.notes["channels"]
    assert len(notes["steps"]) == 3
    removals = [e for e in ctx.edits if isinstance(e, ChannelsRemoved)]
    assert len(removals) == 3 and all(e.removed for e in removals)
    for name, conv in model.named_modules():  # max_ratio bounds the three cuts together
        if isinstance(conv, nn.Conv2d):
            assert conv.out_channels >= 0.4 * channels_before[name] - 1e-9
    modules = dict(model.named_modules())
    for root, g in notes["groups"].items():
        layer = modules[root]
        width = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        assert g["removed"] == g["channels"] - width
    rebuilt = build_model(spec.with_edits(ctx.edits))
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, *IN)
    assert torch.equal(rebuilt.eval()(x), model(x))


def test_gradual_pruning_spreads_the_epochs_and_refuses_soft_steps():
    from cnnzip.methods.channel import _schedule

    model = tiny("convbn")
    for total, expected in ((3, [1, 1, 1]), (4, [1, 1, 2]), (2, [0, 1, 1]), (0, [0, 0, 0])):
        ctx = Context(synthetic_splits(), finetune_epochs=total, quiet=True)
        cut, budgets, epochs = _schedule(model, ChannelPrune(target_macs=0.5, steps=3), ctx,
                                         IN, "macs")
        assert epochs == expected and cut.steps == 1
        assert cut.max_ratio == pytest.approx(1 - 0.1 ** (1 / 3))
        macs = metrics.count_macs(model, IN)
        assert budgets == pytest.approx([macs * 0.5 ** (1 / 3), macs * 0.5 ** (2 / 3), macs / 2])
    with pytest.raises(CnnzipError, match="soft"):
        ChannelPrune(steps=2, soft=True)
    with pytest.raises(CnnzipError, match="steps"):
        ChannelPrune(steps=0)


def test_adaptive_batchnorm_in_the_scan_re_measures_every_cut_and_restores_the_model(
        monkeypatch):
    """With sensitivity.bn_images each measurement (the uncut model's and every cut's) follows
    a re-measurement of the BatchNorm statistics, and the scan leaves the model as it came."""
    from cnnzip.methods.shared import allocation

    calls = []
    real = allocation.recalibrate_batchnorm

    def spy(model, images, info):
        calls.append(len(images))
        real(model, images, info)

    monkeypatch.setattr(allocation, "recalibrate_batchnorm", spy)
    model = tiny("convbn").train()
    with torch.no_grad():  # stale statistics that a re-measurement would change
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(3.0)
    model.eval()
    ctx = Context(synthetic_splits(), quiet=True)
    groups = channel_groups(model, dependency_graph(model, IN))
    scores = {g.root: group_scores(g, ChannelPrune()) for g in groups}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for bn_images, expected in ((0, 0), (32, 1 + 2 * len(groups))):
        calls.clear()
        config = ChannelPrune(allocation=Allocation.SENSITIVITY,
                              sensitivity=GroupScan(bn_images=bn_images, samples=64,
                                                    ratios=(0.25, 0.5)))
        sensitivity_keys(model, groups, scores, config, ctx)
        assert len(calls) == expected and all(n == bn_images for n in calls)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(CnnzipError, match="sensitivity.bn_images"):
        GroupScan(bn_images=-1)
