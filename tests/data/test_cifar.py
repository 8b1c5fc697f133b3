import numpy as np
import pytest

from cnnzip.data import load_dataset
from cnnzip.data.cifar import read_cifar_batch
from cnnzip.errors import DataError


def _write_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    path.write_bytes(np.concatenate([labels[:, None], images], 1).tobytes())
    return labels, images.reshape(n, 3, 32, 32)


def test_batch_round_trip(tmp_path):
    labels, images = _write_batch(tmp_path / "b.bin", 7, 0)
    got_images, got_labels = read_cifar_batch(tmp_path / "b.bin")
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_array_equal(got_images, images)


def test_load_cifar10_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for i in range(1, 6):
        _write_batch(folder / f"data_batch_{i}.bin", 20, i)
    _write_batch(folder / "test_batch.bin", 30, 9)
    splits = load_dataset("cifar10", tmp_path, val_size=10)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 30)
    assert splits.train.images.shape[1:] == (3, 32, 32)


def test_truncated_batch(tmp_path):
    _write_batch(tmp_path / "b.bin", 3, 0)
    (tmp_path / "b.bin").write_bytes((tmp_path / "b.bin").read_bytes()[:-1])
    with pytest.raises(DataError, match="truncated CIFAR-10 batch"):
        read_cifar_batch(tmp_path / "b.bin")


def test_bad_label(tmp_path):
    (tmp_path / "b.bin").write_bytes(bytes([42]) + bytes(3072))
    with pytest.raises(DataError, match="label 42 out of range"):
        read_cifar_batch(tmp_path / "b.bin")
