"""Your own data: npz:FILE and folder:DIR, read as hostile input, recorded by absolute path,
and the whole chain (train → compress → eval → export) on them."""

import numpy as np
import pytest
from PIL import Image

from cnnzip.data import canonical_name, dataset_info, load_dataset
from cnnzip.errors import DataError


def _npz(path, x_train, y_train, x_test, y_test, **extra):
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, **extra)
    return f"npz:{path}"


def _features(n: int, classes: int = 12, seed: int = 0):
    """1×49×10 'audio features' (uint8), each class a template plus noise."""
    rng = np.random.default_rng(seed)
    templates = np.random.default_rng(99).integers(0, 256, (classes, 49, 10))
    y = rng.integers(0, classes, n)
    x = 0.7 * templates[y] + 0.3 * rng.integers(0, 256, (n, 49, 10))
    return x.astype(np.uint8)[:, None], y


def test_an_npz_of_12_classes_of_1x49x10_features_loads_with_its_own_statistics(tmp_path):
    x, y = _features(400)
    name = _npz(tmp_path / "kws.npz", x, y, *_features(100, seed=1))
    info = dataset_info(name)
    assert info.in_shape == (1, 49, 10) and info.num_classes == 12
    assert info.name == f"npz:{(tmp_path / 'kws.npz').resolve()}"
    assert info.mean == (round(float(x.mean() / 255), 4),)
    splits = load_dataset(name)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (360, 40, 100)  # a tenth
    assert splits.info == info and splits.train.images.dtype.is_floating_point is False
    assert len(load_dataset(name, val_size=100).val) == 100


@pytest.mark.parametrize("shape", [(20, 8, 8, 3), (20, 8, 8)])
def test_npz_images_may_be_channels_last_or_have_no_channel(tmp_path, shape):
    x = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    y = np.arange(20) % 2
    splits = load_dataset(_npz(tmp_path / "d.npz", x, y, x, y), val_size=2)
    expected = np.moveaxis(x, -1, 1) if len(shape) == 4 else x[:, None]
    assert np.array_equal(splits.test.images.numpy(), expected)


@pytest.mark.parametrize("change,message", [
    ({"x_train": np.zeros((4, 1, 8, 8), np.float32)}, "must be uint8"),
    ({"y_train": np.zeros((4, 2), np.int64)}, "1-D integer array"),
    ({"y_test": np.array([0, 1, -1, 0])}, "class numbers"),
    ({"x_test": np.zeros((4, 1, 9, 9), np.uint8)}, "one shape"),
    ({"x_train": np.zeros((0, 1, 8, 8), np.uint8)}, "expected N×C×H×W"),
])
def test_bad_npz_arrays_are_named(tmp_path, change, message):
    arrays = {"x_train": np.zeros((4, 1, 8, 8), np.uint8), "y_train": np.arange(4) % 2,
              "x_test": np.zeros((4, 1, 8, 8), np.uint8), "y_test": np.arange(4) % 2}
    name = _npz(tmp_path / "d.npz", **{**arrays, **change})
    with pytest.raises(DataError, match=message):
        load_dataset(name, val_size=1)


def test_an_npz_that_needs_pickle_or_is_not_one_is_refused(tmp_path):
    objects = np.array([{"a": 1}, None], dtype=object)
    np.savez(tmp_path / "p.npz", x_train=objects, y_train=objects, x_test=objects,
             y_test=objects)
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(f"npz:{tmp_path / 'p.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")
    np.savez(tmp_path / "few.npz", x_train=np.zeros((2, 1, 2, 2), np.uint8))
    with pytest.raises(DataError, match="no array 'y_train'"):
        load_dataset(f"npz:{tmp_path / 'few.npz'}")
    with pytest.raises(DataError, match="file not found"):
        load_dataset(f"npz:{tmp_path / 'absent.npz'}")
    with pytest.raises(DataError, match="npz:FILE or folder:DIR"):
        dataset_info("my-data")


def _folder(root, classes=3, size=(64, 64), per_class=(8, 3), mode="RGB"):
    rng = np.random.default_rng(0)
    shape = (*size[::-1], 3) if mode == "RGB" else size[::-1]
    templates = rng.integers(0, 256, (classes, *shape))
    for part, n in zip(("train", "test"), per_class):
        for c in range(classes):
            folder = root / part / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = 0.7 * templates[c] + 0.3 * rng.integers(0, 256, shape)
                Image.fromarray(pixels.astype(np.uint8), mode).save(folder / f"{i}.png")
    return f"folder:{root}"


def test_a_folder_of_pngs_in_three_classes_loads_as_rgb(tmp_path):
    name = _folder(tmp_path / "shapes")
    splits = load_dataset(name, val_size=3)
    assert splits.info.in_shape == (3, 64, 64) and splits.info.num_classes == 3
    assert len(splits.train) + len(splits.val) == 24 and len(splits.test) == 9
    assert sorted(set(splits.test.labels.tolist())) == [0, 1, 2]
    grey = load_dataset(_folder(tmp_path / "grey", size=(10, 12), mode="L"), val_size=1)
    assert grey.info.in_shape == (1, 12, 10)


def test_bad_folders_are_named(tmp_path):
    name = _folder(tmp_path / "d", size=(8, 8))
    Image.new("RGB", (9, 8)).save(tmp_path / "d" / "test" / "class1" / "odd.png")
    with pytest.raises(DataError, match="odd.png is 9×8"):
        load_dataset(name, val_size=1)
    (tmp_path / "d" / "test" / "class1" / "odd.png").unlink()
    (tmp_path / "d" / "test" / "class1" / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="cannot read .*broken.png"):
        load_dataset(name, val_size=1)
    (tmp_path / "d" / "test" / "class1" / "broken.png").unlink()
    (tmp_path / "d" / "test" / "extra").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "d" / "test" / "extra" / "0.png")
    with pytest.raises(DataError, match="a class with no training folder"):
        load_dataset(name, val_size=1)
    with pytest.raises(DataError, match="no train/ folder"):
        load_dataset(f"folder:{tmp_path}", val_size=1)
    with pytest.raises(DataError, match="drop --data-dir"):
        load_dataset(name, data_dir=tmp_path)


@pytest.mark.slow
def test_your_data_train_compress_eval_export_end_to_end(tmp_path, monkeypatch):
    """npz (12 classes of 1×49×10) and a folder of 64×64 RGB PNGs (3 classes): train, the int8
    recipe, eval and the C and TFLite exports with their checks, from another folder than the
    data's (the checkpoint records the absolute path)."""
    from cnnzip import api
    from cnnzip.train import TrainConfig

    x, y = _features(600)
    npz = _npz(tmp_path / "kws.npz", x, y, *_features(120, seed=1))
    folder = _folder(tmp_path / "shapes", per_class=(30, 6))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name, model in ((npz, "lenet300"), (folder, "lenet5")):
        monkeypatch.chdir(tmp_path)
        relative = name.replace(str(tmp_path) + "/", "")  # as a user types it
        out = tmp_path / model
        summary = api.train_baseline(model, relative, out / "base.safetensors",
                                     config=TrainConfig(epochs=8), quiet=True)
        assert summary["test_accuracy"] > 0.5, summary
        monkeypatch.chdir(elsewhere)
        api.compress(out / "base.safetensors", "int8", out / "int8", quiet=True)
        evaluated = api.evaluate_file(out / "int8" / "model.cnz")
        assert evaluated["dataset"] == canonical_name(name)
        c = api.export_file(out / "int8" / "model.cnz", out / "c", format="c", check=True,
                            kernels="small")
        assert c["c_equals_reference"] == 1.0
        tflite = api.export_file(out / "int8" / "model.cnz", out / "m.tflite", format="tflite",
                                 check=True)
        assert tflite["logits_equal_reference"] == 1.0


def test_val_size_as_a_count_or_a_fraction_is_recorded_and_compress_holds_out_the_same(
        tmp_path):
    from cnnzip import api
    from cnnzip.codec import load_checkpoint
    from cnnzip.train import TrainConfig

    x, y = _features(200)
    name = _npz(tmp_path / "d.npz", x, y, *_features(40, seed=1))
    for val_size, expected in ((0.25, 50), (30, 30)):
        out = tmp_path / f"{val_size}.safetensors"
        api.train_baseline("lenet300", name, out, config=TrainConfig(epochs=1), quiet=True,
                           val_size=val_size)
        assert load_checkpoint(out).input["split"]["val_size"] == expected
    with pytest.raises(Exception, match="fraction must be in"):
        api.train_baseline("lenet300", name, tmp_path / "x.safetensors", val_size=1.5)


def test_the_cli_reads_val_size_and_your_dataset_names(tmp_path):
    import argparse

    from cnnzip.cli.common import dataset_name
    from cnnzip.cli.train import val_size

    assert (val_size("0.1"), val_size("300")) == (0.1, 300)
    for bad in ("0", "1.5", "abc", "-3"):
        with pytest.raises(argparse.ArgumentTypeError):
            val_size(bad)
    assert dataset_name("npz:x.npz") == "npz:x.npz" and dataset_name("mnist") == "mnist"
    with pytest.raises(argparse.ArgumentTypeError, match="npz:FILE or folder:DIR"):
        dataset_name("mydata")
