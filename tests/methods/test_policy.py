"""Policy search: the DDPG agent learns and is deterministic, episodes always meet the budget,
the closed-form costs match the pruned model, and the channels and quantize steps use it."""

import numpy as np
import pytest
import torch

from cnnzip import metrics
from cnnzip.data import synthetic_splits
from cnnzip.errors import CnnzipError
from cnnzip.graph import channel_groups, dependency_graph
from cnnzip.methods.shared.allocation import channels, plan_removals, ratio_keys
from cnnzip.methods.base import Context, apply
from cnnzip.methods.channel import Allocation, ChannelPolicy, ChannelPrune
from cnnzip.methods.shared.policy import CostModel, Episode
from cnnzip.methods.quant import BitsPolicy, Quantize
from cnnzip.methods.shared.ddpg import DDPG, truncated_normal
from cnnzip.surgery import build_model, remove_channels, resolve_spec

IN = (1, 28, 28)


def _bandit(seed: int, episodes: int, updates: int) -> tuple[DDPG, list[float]]:
    """One-step episodes from a fixed state, rewarded 1 − |a − 0.8|, ``updates`` gradient
    steps after each past the first 20."""
    agent = DDPG(3, 1, seed)
    state = np.array([0.1, 0.5, 0.9], np.float32)
    actions = []
    for episode in range(episodes):
        a = agent.random_action() if episode < 20 else agent.act(state, episode - 20)
        actions.append(a)
        agent.observe([(state, a, np.zeros(3, np.float32))], 1 - abs(a - 0.8))
        for _ in range(updates if episode >= 20 else 0):
            agent.update()
    return agent, actions


def test_the_agent_learns_a_bandit_and_a_seed_fixes_it():
    agent, _ = _bandit(0, 120, 5)
    assert abs(agent.greedy(np.array([0.1, 0.5, 0.9], np.float32)) - 0.8) < 0.1
    actions = _bandit(0, 40, 1)[1]
    assert _bandit(0, 40, 1)[1] == actions
    assert _bandit(1, 40, 1)[1] != actions


def test_truncated_normal_stays_in_range():
    rng = np.random.default_rng(0)
    draws = [truncated_normal(rng, 0.95, 0.5, 0.0, 1.0) for _ in range(500)]
    assert min(draws) >= 0 and max(draws) <= 1 and 0.6 < np.mean(draws) < 0.9
    assert truncated_normal(rng, 1.7, 0.0, 0.0, 1.0) == 1.0


def _resnet():
    torch.manual_seed(0)
    spec = resolve_spec("resnet20", IN, 10, width=0.25)
    model = build_model(spec).eval()
    groups = channel_groups(model, dependency_graph(model, IN))
    return model, list(groups)


def test_closed_form_costs_match_the_pruned_model():
    model, groups = _resnet()
    costs = CostModel(model, groups, IN, "macs")
    assert costs.total == metrics.count_macs(model, IN)
    rng = np.random.default_rng(0)
    for _ in range(3):
        # whole units, so the closed form has nothing to round
        ratios = np.array([rng.integers(0, len(g.units)) / len(g.units) for g in groups])
        pruned = build_model(resolve_spec("resnet20", IN, 10, width=0.25)).eval()
        pruned.load_state_dict(model.state_dict())
        counts = {g.root: int(round(r * len(g.units))) for g, r in zip(groups, ratios)}
        remove_channels(pruned, dependency_graph(pruned, IN),
                        {g.root: g.channels_of(range(counts[g.root])) for g in groups})
        assert costs.cost(ratios) == pytest.approx(metrics.count_macs(pruned, IN), rel=1e-9)


@pytest.mark.parametrize("variant", ["ddpg", "ddpg-scale"])
def test_every_episode_meets_the_budget(variant):
    model, groups = _resnet()
    costs = CostModel(model, groups, IN, "macs")
    budget = 0.5 * costs.total
    static = np.zeros((len(groups), 7))
    rng = np.random.default_rng(0)
    for _ in range(20):
        env = Episode(variant, 0.3, 0.9, costs.cost, budget, static, costs.share)
        for t in range(len(groups)):
            taken = env.act(t, float(rng.uniform()))
            assert 0 <= taken <= 1
        ratios = env.finish()
        assert ratios.min() >= 0 and ratios.max() <= 0.9
        # on the budget: neither over it nor (ddpg scales down, ddpg-scale solves) far under
        assert 0.99 * budget <= costs.cost(ratios) <= budget * (1 + 1e-9)


def test_ratio_keys_take_the_ratios_and_the_budget_scales_them():
    model, groups = _resnet()
    scores = {g.root: torch.rand(len(g.units)) for g in groups}
    ratios = {g.root: 0.5 if i % 2 else 0.1 for i, g in enumerate(groups)}
    config = ChannelPrune(target_macs=0.7)
    units = plan_removals(model, groups, scores, ratio_keys(scores, ratios), config, IN)
    by_root = {g.root: g for g in groups}
    removed = {root: len(u) / len(by_root[root].units) for root, u in units.items()}
    heavy = [removed[g.root] for i, g in enumerate(groups) if i % 2]
    light = [removed[g.root] for i, g in enumerate(groups) if not i % 2]
    assert min(heavy) > max(light)  # the shape survives the budget's scaling
    trial = build_model(resolve_spec("resnet20", IN, 10, width=0.25)).eval()
    trial.load_state_dict(model.state_dict())
    remove_channels(trial, dependency_graph(trial, IN), channels(by_root, units))
    assert metrics.count_macs(trial, IN) <= 0.7 * metrics.count_macs(model, IN)


@pytest.mark.parametrize("allocation", [Allocation.DDPG, Allocation.DDPG_SCALE])
def test_a_searched_allocation_meets_the_budget_and_repeats(allocation):
    results = []
    for _ in range(2):
        model, _ = _resnet()
        base = metrics.count_macs(model, IN)
        ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True, seed=3)
        config = ChannelPrune(allocation=allocation, target_macs=0.5,
                              policy=ChannelPolicy(episodes=6, warmup=3, samples=64,
                                                   bn_images=64))
        apply(model, config, ctx)
        assert metrics.count_macs(model, IN) <= 0.5 * base
        policy = ctx.notes["channels"]["policy"]
        assert policy["variant"] == allocation.value and len(policy["rewards"]) == 6
        assert round(policy["best_val_accuracy"], 4) == max(policy["rewards"])
        results.append(policy["ratios"])
    assert results[0] == results[1]


def test_searched_allocations_need_a_budget_and_sane_settings():
    with pytest.raises(CnnzipError, match="give target_macs or target_params"):
        ChannelPrune(allocation=Allocation.DDPG)
    with pytest.raises(CnnzipError, match="policy.warmup"):
        ChannelPolicy(episodes=10, warmup=10)
    with pytest.raises(CnnzipError, match="cannot keep macs"):
        model, _ = _resnet()
        apply(model, ChannelPrune(allocation=Allocation.DDPG, target_macs=0.001, max_ratio=0.5,
                                  policy=ChannelPolicy(episodes=2, warmup=1)),
              Context(synthetic_splits(), finetune_epochs=0, quiet=True))


@pytest.mark.parametrize("policy", ["ddpg", "ddpg-scale"])
def test_searched_bits_meet_the_average(policy):
    model, _ = _resnet()
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, Quantize(weight_bits=8, budget_bits=4.0,
                          policy=BitsPolicy(method=policy, episodes=4, warmup=2), samples=64,
                          calibration=64), ctx)
    notes = ctx.notes["quantize"]
    assert notes["average_bits"] <= 4.0
    assert set(notes["bits"].values()) <= {8, 6, 5, 4, 3, 2}
    assert notes["mixed"]["variant"] == policy and len(notes["mixed"]["rewards"]) == 4


def test_quantize_policy_is_checked():
    with pytest.raises(CnnzipError, match="policy.method must be one of"):
        BitsPolicy(method="ppo")
    with pytest.raises(CnnzipError, match="give budget_bits"):
        Quantize(policy=BitsPolicy(method="ddpg"))


def test_a_search_with_short_finetunes_leaves_the_model_as_it_was():
    from cnnzip.methods.shared.policy import PolicySearch, search_ratios

    model, groups = _resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    teacher = build_model(resolve_spec("resnet20", IN, 10, width=0.25)).eval()
    teacher.load_state_dict(before)
    ctx = Context(synthetic_splits(), teacher=teacher, finetune_epochs=0, quiet=True)
    scores = {g.root: torch.rand(len(g.units)) for g in groups}
    search = PolicySearch("ddpg", 3, 1, 64, 64, 0.3, 0, finetune_images=256)
    ratios, notes = search_ratios(model, groups, scores, search, "macs", 0.5, 0.9, ctx)
    assert notes["finetune_images"] == 256 and len(notes["rewards"]) == 3
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert set(ratios) == {g.root for g in groups}
