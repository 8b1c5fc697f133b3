"""The pipeline's data contract: decisions on the validation images the baseline never saw."""

import pytest

from cnnzip.api import train_baseline
from cnnzip.codec import load_checkpoint
from cnnzip.data import load_dataset
from cnnzip.errors import DataError
from cnnzip.pipeline import _training_splits
from cnnzip.train import TrainConfig
from tests.helpers import write_mnist_like


def test_compress_reuses_the_split_train_recorded_whatever_its_seed(tmp_path):
    data = write_mnist_like(tmp_path / "data", n_train=5100, n_test=20)
    path = tmp_path / "m.safetensors"
    train_baseline("lenet300", "mnist", path, data_dir=data, config=TrainConfig(epochs=0, seed=3),
                   quiet=True)
    ckpt = load_checkpoint(path)
    trained = load_dataset("mnist", data, seed=3)
    assert ckpt.input["split"] == trained.split and trained.split["seed"] == 3
    splits = _training_splits(ckpt, "mnist", data)  # compress --seed plays no part
    assert splits.split == trained.split
    assert splits.val.images.equal(trained.val.images)
    other = write_mnist_like(tmp_path / "other", n_train=5200, n_test=20)
    with pytest.raises(DataError, match="differs from the one the model was trained with"):
        _training_splits(ckpt, "mnist", other)


def test_a_failed_compress_leaves_no_container(tmp_path, monkeypatch):
    from cnnzip import pipeline
    from cnnzip.errors import CnnzipError

    path = tmp_path / "m.safetensors"
    train_baseline("lenet300", "synthetic", path, config=TrainConfig(epochs=0), quiet=True)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - prune: {sparsity: 0.5, schedule: one-shot}\n")

    def broken(*_, **__):
        raise CnnzipError("disk full while writing the report")

    monkeypatch.setattr(pipeline, "write_report", broken)
    with pytest.raises(CnnzipError, match="disk full"):
        pipeline.compress(path, str(recipe), tmp_path / "out", quiet=True)
    # no container; the step's stage file stays for --resume
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["stages"]
    assert [p.name for p in (tmp_path / "out" / "stages").iterdir()] == ["01-prune.safetensors"]
