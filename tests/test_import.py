"""cnnzip import: a model trained elsewhere (architecture + state dict) as a checkpoint that
every command takes; foreign files read without code (weights_only) and refused in one line."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cnnzip import api
from cnnzip.data import batches, load_dataset
from cnnzip.errors import CnnzipError
from cnnzip.surgery import build_model, resolve_spec
from cnnzip.train import evaluate


def _trained_elsewhere():
    """lenet300 for the synthetic set, 'trained' by someone else: seeded weights."""
    torch.manual_seed(3)
    return build_model(resolve_spec("lenet300", (1, 28, 28), 10)).eval()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_a_state_dict_from_elsewhere_becomes_a_checkpoint_that_evaluates_the_same(tmp_path,
                                                                                 suffix):
    net = _trained_elsewhere()
    weights = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    else:
        torch.save({"state_dict": net.state_dict(), "epoch": 7}, weights)
    summary = api.import_model("lenet300", weights, "synthetic", tmp_path / "c.safetensors")
    splits = load_dataset("synthetic")
    assert summary["test_accuracy"] == evaluate(net, splits.test, splits.info)
    assert api.evaluate_file(tmp_path / "c.safetensors")["accuracy"] == summary["test_accuracy"]
    model, spec, inputs = api.load_model(tmp_path / "c.safetensors")
    x, _ = next(iter(batches(splits.test, splits.info, 8)))
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    assert inputs["dataset"] == "synthetic" and inputs["mean"] == [0.5]


def test_weights_that_do_not_fit_or_carry_code_are_refused_in_one_line(tmp_path):
    state = _trained_elsewhere().state_dict()
    torch.save({k: v for k, v in state.items() if not k.endswith("bias")}, tmp_path / "a.pt")
    with pytest.raises(CnnzipError, match="missing: classifier.*bias"):
        api.import_model("lenet300", tmp_path / "a.pt", "synthetic", tmp_path / "o.safetensors")
    wide = {**state, "classifier.1.weight": torch.zeros(3, 3)}
    torch.save(wide, tmp_path / "b.pt")
    with pytest.raises(CnnzipError, match="other shapes: classifier.1.weight"):
        api.import_model("lenet300", tmp_path / "b.pt", "synthetic", tmp_path / "o.safetensors")
    torch.save({"net": np.array([1, 2])}, tmp_path / "c.pt")  # a pickle that needs numpy code
    with pytest.raises(CnnzipError, match="not a readable state dict"):
        api.import_model("lenet300", tmp_path / "c.pt", "synthetic", tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_compress_on_a_foreign_file_says_to_import_it(tmp_path):
    torch.save(_trained_elsewhere().state_dict(), tmp_path / "plain.pt")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    for name in ("plain.pt", "plain.safetensors"):
        with pytest.raises(CnnzipError, match="cnnzip import MODEL WEIGHTS"):
            api.load_model(tmp_path / name)
