from pathlib import Path

import pytest

from cnnzip.errors import CnnzipError
from cnnzip.methods.prune import Schedule
from cnnzip.methods.share import Sharing
from cnnzip.recipes import builtin_names, load_recipe, parse_recipe


def test_builtin_recipes_parse():
    assert {"deep-compression", "pq"} <= set(builtin_names())
    dc = load_recipe("deep-compression")
    assert [kind for kind, _ in dc.steps] == ["sensitivity", "prune", "share"]
    assert dc.steps[1][1].schedule is Schedule.AGP
    assert load_recipe("pq").steps[2][1].method is Sharing.PQ
    assert load_recipe("channel-prune").steps[0][1].target_macs == 0.5


@pytest.mark.parametrize("data,message", [
    ({"steps": [{"prune": {"sparsity": 0.5, "sparsty": 1}}]}, "unknown key 'sparsty'"),
    ({"steps": [{"squash": {}}]}, "unknown step 'squash'"),
    ({"steps": [{"prune": {"schedule": "sometimes"}}]}, "step 1 (prune): schedule"),
    ({"steps": [{"share": {"fc_bits": 40}}]}, "code bits must be in 1..16"),
    ({"steps": []}, "non-empty list"),
    ({"name": "x", "steps": [{"prune": {}}], "extra": 1}, "unknown key 'extra'"),
])
def test_bad_recipes_name_the_problem(data, message):
    with pytest.raises(CnnzipError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_recipe(data, "r.yaml")


def test_unknown_recipe_name():
    with pytest.raises(CnnzipError, match="built-in recipes are"):
        load_recipe("nope")


def test_overrides_change_one_option_and_are_recorded():
    recipe = load_recipe("deep-compression", ["prune.epochs=3", "sensitivity.target_sparsity=0.8"])
    assert recipe.steps[1][1].epochs == 3 and recipe.steps[0][1].target_sparsity == 0.8
    assert recipe.overrides == ("prune.epochs=3", "sensitivity.target_sparsity=0.8")


@pytest.mark.parametrize("override,message", [
    ("prune.epochs", "STEP.KEY=VALUE"),
    ("epochs=3", "STEP.KEY=VALUE"),
    ("merge.depth=2", "no 'merge' step"),
    ("prune.epoch=3", "unknown key 'epoch'"),
    ("prune.epochs=many", "epochs"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(CnnzipError, match=message):
        load_recipe("deep-compression", [override])


def _channels(options, overrides=()):
    from cnnzip.recipes import apply_overrides

    data = apply_overrides({"steps": [{"channels": options}]}, overrides, "r.yaml")
    return parse_recipe(data, "r.yaml").steps[0][1]


def test_option_groups_read_nested_flat_and_dotted_keys_alike():
    nested = _channels({"allocation": "ddpg", "target_macs": 0.5,
                        "policy": {"episodes": 6, "warmup": 3},
                        "sensitivity": {"measure": "kl", "ratios": [0.5]}})
    flat = _channels({"allocation": "ddpg", "target_macs": 0.5, "policy_episodes": 6,
                      "policy_warmup": 3, "sensitivity_measure": "kl",
                      "sensitivity_ratios": [0.5]})
    dotted = _channels({"allocation": "ddpg", "target_macs": 0.5},
                       ["channels.policy.episodes=6", "channels.policy.warmup=3",
                        "channels.sensitivity.measure=kl", "channels.sensitivity.ratios=[0.5]"])
    assert nested == flat == dotted
    assert (nested.policy.episodes, nested.policy.samples) == (6, 1000)  # the rest: defaults
    assert nested.sensitivity.ratios == (0.5,) and nested.sensitivity.measure.value == "kl"
    # the flat or dotted key wins over the group's own (as --set wins over the file)
    assert _channels({"policy": {"samples": 9}}, ["channels.policy.samples=64"]).policy.samples \
        == 64


def test_a_plain_value_for_a_group_with_a_method_is_its_method():
    recipe = load_recipe("mixed", ["quantize.policy=ddpg-scale", "quantize.policy_episodes=20",
                                   "quantize.policy.warmup=5"])
    policy = recipe.steps[0][1].policy
    assert (policy.method, policy.episodes, policy.warmup) == ("ddpg-scale", 20, 5)
    assert load_recipe("mixed").steps[0][1].policy.method == "greedy"


@pytest.mark.parametrize("options,message", [
    ({"policy": {"episode": 6}}, r"unknown key 'policy\.episode'; policy's keys are bn_images"),
    ({"policy": "ddpg"}, "policy is a group of options"),
    ({"policy_warmup": 400}, r"step 1: policy\.warmup \(400\) must be fewer"),
    ({"sensitivity": {"ratios": [1.5]}}, r"sensitivity\.ratios must be fractions"),
    ({"sensitivity_sample": 6}, "unknown key 'sensitivity_sample'"),
])
def test_bad_group_options_name_the_group_and_key(options, message):
    with pytest.raises(CnnzipError, match=message):
        _channels(options)


def test_merge_recipe_removes_a_quarter_of_the_layers_then_folds():
    recipe = load_recipe("merge")
    assert [kind for kind, _ in recipe.steps] == ["merge", "fold"]
    assert recipe.steps[0][1].target_layers == 0.25


def test_prune_merge_exact_recipe_merges_only_what_changes_no_output():
    recipe = load_recipe("prune-merge-exact")
    assert [kind for kind, _ in recipe.steps] == ["merge", "sensitivity", "prune", "share"]
    merge = recipe.steps[0][1]
    assert merge.max_pools is True and not merge.activations and not merge.blocks
    assert merge.epochs == 0


def test_every_step_option_is_documented_and_docs_recipes_md_is_current():
    import dataclasses
    from pathlib import Path

    from cnnzip.recipes import STEPS
    from cnnzip.recipes.docs import options, recipes_markdown

    from cnnzip.recipes import option_groups

    for name, step in STEPS.items():
        documented = options(step.config)
        for field in dataclasses.fields(step.config):
            assert documented.get(field.name), f"{name}.{field.name} has no docstring entry"
        for group_name, group in option_groups(step.config).items():
            inner = options(group)
            for field in dataclasses.fields(group):
                assert inner.get(field.name), \
                    f"{name}.{group_name}.{field.name} has no docstring entry"
    page = Path(__file__).parent.parent / "docs" / "recipes.md"
    assert page.read_text() == recipes_markdown(), \
        "docs/recipes.md is stale: python -m cnnzip.recipes.docs > docs/recipes.md"


@pytest.mark.parametrize("steps,message", [
    (["share", "quantize"], r"step 2 \(quantize\) comes after step 1 \(share\)"),
    (["quantize", "share"], r"step 2 \(share\) comes after step 1 \(quantize\)"),
    (["prune", "fold", "channels"], r"step 3 \(channels\) comes after step 1 \(prune\)"),
    (["quantize", "merge"], "merge layers before quantization"),
])
def test_steps_out_of_order_are_refused_when_the_recipe_is_read(steps, message):
    from cnnzip.recipes import parse_recipe

    with pytest.raises(CnnzipError, match=message):
        parse_recipe({"steps": [{kind: {}} for kind in steps]}, "r.yaml")


def test_channels_may_follow_merging_now_that_edits_replay_in_order():
    from cnnzip.recipes import parse_recipe

    recipe = parse_recipe({"steps": [{"merge": {}}, {"channels": {"target_macs": 0.5}}]},
                          "r.yaml")
    assert [kind for kind, _ in recipe.steps] == ["merge", "channels"]


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "benchmarks" / "recipes")
                                        .glob("*.yaml")), ids=lambda p: p.name)
def test_the_benchmark_recipes_parse(path):
    assert load_recipe(str(path)).steps


@pytest.mark.parametrize("override,message", [
    ("prune.epochs=-1", "prune: epochs must be at least 0, got -1"),
    ("prune.lr=0", "prune: lr must be above 0"),
    ("prune.rounds=0", "prune: rounds must be at least 1"),
    ("sensitivity.samples=0", "sensitivity: samples must be at least 1"),
    ("sensitivity.max_sparsity=-1", r"max_sparsity must be in \(0, 1\]"),
    ("sensitivity.sparsities=[]", "sparsities is empty"),
    ("sensitivity.sparsities=[0.5, .nan]", "sparsities must be finite"),
    ("prune.sparsity=1e309", "sparsity must be finite"),
    ("prune.sparsity=1.0", r"sparsity must be in \[0, 1\)"),
])
def test_recipe_values_out_of_bounds_are_refused_when_read(override, message):
    """`sensitivity.samples: 0` once scanned on no images (−71.95 points, exit 0)."""
    with pytest.raises(CnnzipError, match=message):
        load_recipe("deep-compression", [override])


def test_every_builtin_recipe_and_group_is_within_bounds():
    from cnnzip.recipes import check_bounds

    for name in builtin_names():
        for kind, config in load_recipe(name).steps:
            check_bounds(kind, config)
    _channels({"allocation": "ddpg", "target_macs": 0.5, "policy": {"episodes": 4, "warmup": 1}})
    with pytest.raises(CnnzipError, match="policy.samples must be"):
        _channels({"policy": {"samples": 0}})
