import numpy as np
import pytest
import torch

from cnnzip.data import load_dataset
from cnnzip.data.idx import read_idx
from cnnzip.errors import DataError
from tests.helpers import write_idx, write_mnist_like


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / ("a.gz" if compress else "a"), array, compress=compress)
    np.testing.assert_array_equal(read_idx(path), array)


def test_idx_header_bytes(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((2, 3), dtype=np.uint8))
    assert path.read_bytes()[:12] == bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3])


def test_truncated_idx_names_the_file(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((4, 5, 5), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"x: truncated"):
        read_idx(path)


def test_wrong_magic_and_type(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(bad)
    floats = tmp_path / "floats"
    floats.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x00")
    with pytest.raises(DataError, match="not unsigned byte"):
        read_idx(floats)


def test_damaged_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_load_dataset_from_dir_with_seeded_split(tmp_path, compress):
    write_mnist_like(tmp_path, compress=compress)
    a = load_dataset("mnist", tmp_path, val_size=50, seed=3)
    b = load_dataset("mnist", tmp_path, val_size=50, seed=3)
    c = load_dataset("mnist", tmp_path, val_size=50, seed=4)
    assert (len(a.train), len(a.val), len(a.test)) == (250, 50, 100)
    assert a.train.images.shape[1:] == (1, 28, 28) and a.train.labels.dtype == torch.int64
    assert torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.labels, c.val.labels)
    # train and validation are disjoint and together are the whole training file
    together = torch.cat([a.train.images, a.val.images]).flatten(1)
    assert len(torch.unique(together, dim=0)) == 300


def test_missing_dataset_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", tmp_path / "nowhere")
    assert "nowhere" in str(err.value) and "apt-get install dataset-fashion-mnist" in str(err.value)
    with pytest.raises(DataError, match="no default location"):
        load_dataset("mnist")


def test_missing_file_in_dir(tmp_path):
    write_mnist_like(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path)


def test_label_count_mismatch(tmp_path):
    write_mnist_like(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(7, dtype=np.uint8))
    with pytest.raises(DataError, match="100 images but 7 labels"):
        load_dataset("mnist", tmp_path)


def test_labels_outside_the_classes_and_empty_sets_are_refused(tmp_path):
    """IDX labels of 200 read as accuracy 0.0000 (train: IndexError); 0 test images as 0.0."""
    write_mnist_like(tmp_path, n_train=20)
    labels = np.zeros(100, dtype=np.uint8)
    labels[3] = 200
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(DataError, match=r"test labels run 0..200; mnist has 10 classes"):
        load_dataset("mnist", tmp_path, val_size=5)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(0, dtype=np.uint8))
    with pytest.raises(DataError, match="no test images"):
        load_dataset("mnist", tmp_path, val_size=5)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
