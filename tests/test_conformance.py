"""Conformance: every built-in recipe and every documented cascade on small models built the way
modern CNNs are (tests/modern.py), without retraining. Each output file must decode to the
model compress held in memory, channel-removing recipes must cut MACs, and what cnnzip cannot
take is refused in one line before any work."""

import json

import pytest
import torch

from cnnzip.api import train_baseline
from cnnzip.cli import main
from cnnzip.codec.cnz import decode_file
from cnnzip.errors import CnnzipError
from cnnzip.pipeline import compress
from cnnzip.recipes import load_recipe
from cnnzip.train import TrainConfig, evaluate
from cnnzip.data import load_dataset
from tests.modern import ALONE, CASCADES, MODERN, RECIPES, recipe_file

pytestmark = pytest.mark.slow

REMOVES_CHANNELS = {"channel-prune", "prune-merge", "quant-prune", "channels-merge-prune-share",
                    "quantize-channels"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("modern")
    paths = {}
    for name in MODERN:
        paths[name] = root / f"{name}.safetensors"
        train_baseline(f"tests.modern:{name}", "synthetic", paths[name],
                       config=TrainConfig(epochs=1), quiet=True)
    return paths


@pytest.mark.parametrize("recipe", RECIPES + list(CASCADES))
@pytest.mark.parametrize("model", list(MODERN))
def test_every_recipe_and_cascade_on_every_modern_block(tmp_path, checkpoints, model, recipe):
    out = tmp_path / "out"
    report = compress(checkpoints[model], recipe_file(recipe, tmp_path), out, finetune_epochs=0,
                      quiet=True, trust_code=True, stage_bench=False)
    # the file is the model compress held: same outputs, same accuracy, from the file alone
    match = report["compressed"]["decoded_vs_compressed"]
    assert match["max_rel_diff"] <= 1e-5 and match["top1_agreement"] == 1.0
    decoded, _, _ = decode_file(out / "model.cnz", trust_code=True)
    splits = load_dataset("synthetic")
    assert evaluate(decoded, splits.test, splits.info) == report["compressed"]["accuracy"]
    macs = report["compressed"]["macs"] / report["baseline"]["macs"]
    if recipe in REMOVES_CHANNELS:
        assert macs < 0.9, (model, recipe, macs)
    if recipe in ("channel-prune", "quant-prune", "quantize-channels"):
        assert macs == pytest.approx(0.5, abs=0.05), (model, recipe, macs)


@pytest.mark.parametrize("step", list(ALONE))
@pytest.mark.parametrize("model", ["resnext", "shufflenet", "unet"])
def test_each_step_alone(tmp_path, checkpoints, model, step):
    report = compress(checkpoints[model], recipe_file(step, tmp_path), tmp_path / "out",
                      finetune_epochs=0, quiet=True, trust_code=True, stage_bench=False)
    assert report["compressed"]["decoded_vs_compressed"]["max_rel_diff"] <= 1e-5
    if step == "channels":
        assert report["compressed"]["macs"] / report["baseline"]["macs"] < 0.55


def test_functional_activations_are_named_where_merging_cannot_take_them(tmp_path, checkpoints):
    report = compress(checkpoints["densenet"], "merge", tmp_path, finetune_epochs=0, quiet=True,
                      trust_code=True, stage_bench=False)
    named = report["notes"]["merge"]["functional_not_candidates"]
    assert "relu (after stem.conv.1)" in named and len(named) == 5


@pytest.mark.parametrize("model", ["resnext", "shufflenet"])
def test_half_the_macs_on_grouped_and_shuffled_models(tmp_path, checkpoints, model):
    report = compress(checkpoints[model], "channel-prune", tmp_path, finetune_epochs=0,
                      quiet=True, trust_code=True, stage_bench=False)
    assert report["compressed"]["macs"] / report["baseline"]["macs"] == pytest.approx(0.5,
                                                                                    abs=0.02)
    whole = report["notes"]["channels"]["left_whole"]
    if model == "shufflenet":  # the shuffled channels are named, and left whole
        assert "unit1.pw2.0" in whole and "channel dimension" in whole["unit1.pw2.0"]
        assert "- unit1.pw2.0: its channels pass through" in (tmp_path / "report.md").read_text()
    else:
        assert whole == {}


@pytest.mark.parametrize("model, message", [
    ("tuple_out", "returns a tuple, not one tensor of class scores"),
    ("two_inputs", "missing 1 required positional argument"),
])
def test_models_cnnzip_cannot_take_are_refused_in_one_line(tmp_path, capsys, model, message):
    out = tmp_path / "m.safetensors"
    code = main(["train", "--model", f"tests.modern:{model}", "--dataset", "synthetic",
                 "--epochs", "1", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("steps, reason", [
    (["quantize: {}", "share: {}"], "the weights are quantized already"),
    (["share: {}", "quantize: {}"], "the weights are shared already"),
    (["prune: {sparsity: 0.5}", "channels: {target_macs: 0.5}"], "prune channels before"),
    (["share: {}", "channels: {target_macs: 0.5}"], "prune channels before weight sharing"),
    (["quantize: {}", "merge: {}"], "merge layers before quantization"),
    (["share: {}", "merge: {}"], "merge layers before weight sharing"),
    (["share: {}", "fold: {}"], "fold BatchNorms before weight sharing"),
])
def test_orders_that_cannot_work_are_refused_when_the_recipe_is_parsed(tmp_path, steps, reason):
    path = tmp_path / "r.yaml"
    path.write_text("steps:\n" + "".join(f"  - {s}\n" for s in steps))
    with pytest.raises(CnnzipError, match=reason):
        load_recipe(str(path))


def test_lenet5_caffe_trains_without_diverging_where_it_did_without_clipping(tmp_path, capsys):
    """At the defaults lenet5-caffe trains on a small set; at a peak rate eight times the
    default it diverges without gradient clipping and trains with the default clipping."""
    out = tmp_path / "m.safetensors"
    train = ["train", "--model", "lenet5-caffe", "--dataset", "synthetic", "--epochs", "4",
             "--quiet", "--json", "--out", str(out)]
    assert main(train) == 0
    assert all(torch.isfinite(torch.tensor(json.loads(capsys.readouterr().out)["val_history"])))
    assert main([*train, "--lr", "0.4"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] > 0.8
    assert main([*train, "--lr", "0.4", "--clip-norm", "0"]) == 1
    assert "training diverged" in capsys.readouterr().err
