import pytest
import torch
from safetensors.torch import save_file

from cnnzip.codec import load_checkpoint, save_checkpoint
from cnnzip.errors import CheckpointError
from cnnzip.surgery import ModelSpec, build_model


def _saved(tmp_path):
    spec = ModelSpec("resnet20", (1, 28, 28), 10, 0.25)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    path = save_checkpoint(tmp_path / "m.safetensors", model, spec, input={"dataset": "x"},
                           extra={"epochs": 3})
    return model, spec, path


def test_round_trip_gives_identical_outputs(tmp_path):
    model, spec, path = _saved(tmp_path)
    ckpt = load_checkpoint(path)
    x = torch.randn(4, 1, 28, 28)
    assert ckpt.spec == spec and ckpt.input == {"dataset": "x"} and ckpt.extra == {"epochs": 3}
    assert torch.equal(ckpt.model(x), model(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_truncated_file(tmp_path):
    _, _, path = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="m.safetensors"):
        load_checkpoint(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "g.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_foreign_safetensors(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "f.safetensors"))
    with pytest.raises(CheckpointError, match="not a cnnzip checkpoint"):
        load_checkpoint(tmp_path / "f.safetensors")


def test_weights_that_do_not_fit(tmp_path):
    spec = ModelSpec("lenet5", (1, 28, 28), 10)
    path = save_checkpoint(tmp_path / "m.safetensors", build_model(spec), spec)
    other = ModelSpec("lenet300", (1, 28, 28), 10)
    save_checkpoint(path, build_model(other), spec)  # lenet300 weights under a lenet5 spec
    with pytest.raises(CheckpointError, match="weights do not fit the recorded architecture"):
        load_checkpoint(path)


def test_failed_write_keeps_the_old_file(tmp_path):
    model, spec, path = _saved(tmp_path)
    before = path.read_bytes()
    bad = {"w": torch.zeros(2)}

    class Broken(torch.nn.Module):
        def state_dict(self, *a, **k):
            return {**bad, "oops": "not a tensor"}

    with pytest.raises(AttributeError):
        save_checkpoint(path, Broken(), spec)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
