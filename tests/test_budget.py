"""Budgets on any recipe: a size met at the least compression, a drop met by the smallest
model, an impossible budget reported with the closest point, a recipe without a knob."""

import json

import pytest

from cnnzip.budget import KB, Budget, compress_within, knob_of, with_knob
from cnnzip.errors import CnnzipError
from cnnzip.recipes import builtin_names, load_recipe


@pytest.fixture(scope="module")
def lenet300(tmp_path_factory):
    from cnnzip.api import train_baseline
    from cnnzip.train import TrainConfig

    path = tmp_path_factory.mktemp("budget") / "m.safetensors"
    train_baseline("lenet300", "synthetic", path, config=TrainConfig(epochs=1), quiet=True)
    return path


def test_each_recipe_has_the_knob_a_user_would_turn():
    assert knob_of(load_recipe("deep-compression")).name == "sensitivity.target_sparsity"
    assert knob_of(load_recipe("channel-prune")).name == "channels.target_params"
    assert knob_of(load_recipe("int8")).name == "quantize.weight_bits"
    assert knob_of(load_recipe("mixed")).name == "quantize.budget_bits"
    assert knob_of(load_recipe("prune-merge")).name == "prune.sparsity"
    with pytest.raises(CnnzipError, match="no setting a budget can search"):
        knob_of(load_recipe("merge"))


def test_a_size_budget_is_met_by_the_file_at_the_least_compression(lenet300, tmp_path):
    out = tmp_path / "out"
    report = compress_within(lenet300, "deep-compression", out, Budget(size_kb=20),
                             finetune_epochs=0, quiet=True)
    size = (out / "model.cnz").stat().st_size
    budget = report["budget"]
    assert size == report["compressed"]["container_bytes"] <= 20 * KB
    assert budget["met"] and budget["knob"] == "sensitivity.target_sparsity"
    # every probe that compressed less than the one chosen was over the budget
    less = [p for p in budget["probes"] if p["value"] < budget["value"]]
    assert less and all(p["bytes"] > 20 * KB for p in less)
    assert json.loads((out / "report.json").read_text())["budget"] == budget
    assert not (out / ".budget").exists()


def test_an_impossible_budget_names_the_closest_point(lenet300, tmp_path):
    with pytest.raises(CnnzipError, match=r"closest point reached is .* KiB"):
        compress_within(lenet300, "deep-compression", tmp_path / "out", Budget(size_kb=0.1),
                        finetune_epochs=0, quiet=True)
    assert not (tmp_path / "out" / "model.cnz").exists()
    with pytest.raises(CnnzipError, match="--target-size-kb"):
        Budget()


def test_a_drop_budget_keeps_the_smallest_model_within_it(lenet300, tmp_path, capsys):
    from cnnzip.cli import main

    assert main(["compress", str(lenet300), "--recipe", "int8", "--max-drop", "100",
                 "--finetune-epochs", "0", "--quiet", "--json", "--out",
                 str(tmp_path / "out")]) == 0
    report = json.loads(capsys.readouterr().out)
    budget = report["budget"]
    assert budget["met"] and budget["knob"] == "quantize.weight_bits"
    assert budget["value"] == 1  # any drop is within 100 points: the fewest bits
    assert [p["value"] for p in budget["probes"]] == [8, 7, 6, 5, 4, 3, 2, 1]


def test_macs_and_params_budgets_on_a_recipe_without_channels(lenet300, tmp_path, capsys):
    from cnnzip.cli import main

    assert main(["compress", str(lenet300), "--recipe", "deep-compression", "--target-macs",
                 "0.2", "--finetune-epochs", "0", "--quiet", "--json", "--out",
                 str(tmp_path / "macs")]) == 0
    report = json.loads(capsys.readouterr().out)
    c, b = report["compressed"], report["baseline"]
    assert report["budget"]["met"] and report["budget"]["macs"] == 0.2
    assert c["nonzero_macs"] <= 0.2 * b["macs"] and c["macs"] == b["macs"]
    # the least compression that fits: every probe compressing less was over
    less = [p for p in report["budget"]["probes"] if p["value"] < report["budget"]["value"]]
    assert less and all(p["macs"] > 0.2 for p in less)
    report = compress_within(lenet300, "deep-compression", tmp_path / "params",
                             Budget(params=0.1), finetune_epochs=0, quiet=True)
    assert report["compressed"]["nonzero_params"] <= 0.1 * report["baseline"]["params"]


def test_a_macs_budget_on_bits_alone_is_refused(lenet300, tmp_path):
    with pytest.raises(CnnzipError, match="changes neither MACs nor parameters"):
        compress_within(lenet300, "int8", tmp_path / "out", Budget(macs=0.5),
                        finetune_epochs=0, quiet=True)
    with pytest.raises(CnnzipError, match="fraction to keep"):
        Budget(params=1.5)


def test_a_latency_budget_keeps_the_least_compression_measured_within_it(lenet300, tmp_path):
    def latency(path):  # a stand-in clock for the plumbing: a kilobyte of file per µs
        return path.stat().st_size / 1000

    report = compress_within(lenet300, "deep-compression", tmp_path / "out",
                             Budget(latency_us=20), latency=latency, finetune_epochs=0,
                             quiet=True)
    budget = report["budget"]
    assert budget["met"] and budget["latency_us"] == 20
    assert report["compressed"]["container_bytes"] / 1000 <= 20
    less = [p for p in budget["probes"] if p["value"] < budget["value"]]
    assert less and all(p["latency_us"] > 20 for p in less)
    with pytest.raises(CnnzipError, match="needs a way to measure"):
        compress_within(lenet300, "deep-compression", tmp_path / "x", Budget(latency_us=20))


def test_c_latency_is_measured_from_the_compiled_model(tmp_path):
    from cnnzip.api import c_latency_us
    from cnnzip.errors import ArgumentError
    from tests.helpers import int8_lenet5

    _, folder = int8_lenet5(tmp_path)
    assert 0 < c_latency_us(folder / "model.cnz", samples=8) < 1e5
    with pytest.raises(ArgumentError, match="--clock-mhz"):
        c_latency_us(folder / "model.cnz", target="cortex-m4")


@pytest.fixture(scope="module")
def lenet5(tmp_path_factory):
    from cnnzip.api import train_baseline
    from cnnzip.train import TrainConfig

    path = tmp_path_factory.mktemp("budget") / "lenet5.safetensors"
    train_baseline("lenet5", "synthetic", path, config=TrainConfig(epochs=1), quiet=True)
    return path


def _with_knob(name):
    try:
        return knob_of(load_recipe(name))
    except CnnzipError:
        return None


KNOBBED = [name for name in builtin_names() if _with_knob(name) is not None]


def test_every_builtin_recipe_but_two_has_a_knob():
    # lowrank-vq meets MACs and parameter budgets by its lowrank step's allocation alone
    assert set(builtin_names()) - set(KNOBBED) == {"merge", "lowrank-vq"}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", KNOBBED)
def test_a_size_budget_probes_every_builtin_recipe_with_a_knob(lenet5, tmp_path, recipe):
    # both ends of the knob's range are valid for the recipe's steps (channel-prune's
    # target_macs once failed every probe, and its least compression too)
    from cnnzip.codec import decode_file
    from cnnzip.pipeline import compress

    whole = lenet5.stat().st_size / KB
    report = compress_within(lenet5, recipe, tmp_path / "out", Budget(size_kb=whole),
                             probes=1, finetune_epochs=0, quiet=True)
    budget = report["budget"]
    knob = knob_of(load_recipe(recipe))
    assert budget["met"] and budget["knob"] == knob.name
    assert knob.value(1.0) in {p["value"] for p in budget["probes"]}
    assert len(budget["probes"]) >= 3
    assert (tmp_path / "out" / "model.cnz").stat().st_size <= whole * KB
    decode_file(tmp_path / "out" / "model.cnz")
    least = compress(lenet5, with_knob(load_recipe(recipe), knob, knob.value(0.0)),
                     tmp_path / "least", finetune_epochs=0, quiet=True, stage_bench=False)
    assert least["compressed"]["container_bytes"] >= report["compressed"]["container_bytes"]


@pytest.mark.slow
def test_the_cli_and_the_api_route_a_budget_alike(lenet5, tmp_path, capsys):
    from cnnzip import api
    from cnnzip.cli import main

    args = ["--recipe", "channel-prune", "--finetune-epochs", "0"]
    assert main(["compress", str(lenet5), *args, "--target-size-kb", "30", "--json",
                 "--out", str(tmp_path / "cli")]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)  # stdout: the report alone; the probes on stderr
    assert report["budget"]["met"] and report["budget"]["knob"] == "channels.target_params"
    assert err.count("budget: channels.target_params=") == len(report["budget"]["probes"])
    api.compress(lenet5, "channel-prune", tmp_path / "api", budget=Budget(size_kb=30),
                 finetune_epochs=0, quiet=True)
    assert (tmp_path / "api" / "model.cnz").read_bytes() == \
        (tmp_path / "cli" / "model.cnz").read_bytes()


@pytest.mark.slow
def test_a_macs_budget_alone_is_the_channel_steps_own_allocation(lenet5, tmp_path):
    from cnnzip import api

    report = api.compress(lenet5, "channel-prune", tmp_path / "out", budget=Budget(macs=0.3),
                          finetune_epochs=0, quiet=True, stage_bench=False)
    budget, b, c = report["budget"], report["baseline"], report["compressed"]
    assert budget["met"] and budget["probes"] == [] and budget["knob"] == "channels.target_macs"
    assert c["macs"] <= 0.3 * b["macs"]
    assert report["recipe_overrides"][-2:] == ["channels.target_macs=0.3",
                                               "channels.target_params=null"]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["budget"] == budget
    with pytest.raises(CnnzipError, match="not both"):
        api.compress(lenet5, "channel-prune", tmp_path / "x", budget=Budget(macs=0.3, params=0.3))
    with pytest.raises(CnnzipError, match="--resume continues one run"):
        api.compress(lenet5, "channel-prune", tmp_path / "y", budget=Budget(size_kb=30),
                     resume=True)
