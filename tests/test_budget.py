"""Budgets on any recipe: a size met at the least compression, a drop met by the smallest
model, an impossible budget reported with the closest point, a recipe without a knob."""

import json

import pytest

from cnnzip.budget import KB, Budget, compress_within, knob_of
from cnnzip.errors import CnnzipError
from cnnzip.recipes import load_recipe


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
