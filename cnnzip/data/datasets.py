"""Named datasets with a seeded train/validation split, held in memory as uint8 tensors."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from cnnzip.data import own
from cnnzip.data.cifar import load_cifar10
from cnnzip.data.idx import load_idx_pair
from cnnzip.errors import DataError


@dataclass(frozen=True)
class ImageSet:
    """Images (N, C, H, W) uint8 and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its input: shape, classes, normalisation."""

    name: str
    in_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool  # horizontal flips are label-preserving augmentation


@dataclass(frozen=True)
class Splits:
    """Train (for fitting), validation (for compression decisions) and test (for reporting).

    ``split`` records how validation was drawn from the training files: ``{"seed",
    "val_size", "sha256"}`` (the hash of the validation indices), so that ``compress`` can
    take its decisions on the very images the baseline never trained on.
    """

    info: DatasetInfo
    train: ImageSet
    val: ImageSet
    test: ImageSet
    split: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Source:
    default_dir: Path | None
    how_to_get: str
    load: Callable[[Path, bool], tuple[np.ndarray, np.ndarray]]
    info: DatasetInfo


def _idx(directory: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    return load_idx_pair(directory, "train" if train else "t10k")


DATASETS: dict[str, _Source] = {
    "fashion-mnist": _Source(
        Path("/usr/share/datasets/fashion-mnist"),
        "install it with `apt-get install dataset-fashion-mnist` or pass --data-dir DIR "
        "holding the four IDX files",
        _idx,
        DatasetInfo("fashion-mnist", (1, 28, 28), 10, (0.2860,), (0.3530,), hflip=True),
    ),
    "mnist": _Source(
        None,
        "pass --data-dir DIR holding train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (optionally .gz)",
        _idx,
        DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,), hflip=False),
    ),
    "cifar10": _Source(
        None,
        "pass --data-dir DIR holding the CIFAR-10 binary version (cifar-10-batches-bin: "
        "data_batch_1.bin … data_batch_5.bin, test_batch.bin)",
        load_cifar10,
        DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465),
                    (0.2470, 0.2435, 0.2616), hflip=True),
    ),
}
SYNTHETIC = DatasetInfo("synthetic", (1, 28, 28), 10, (0.5,), (0.25,), hflip=False)
# CIFAR-10's shape (3 × 32 × 32, flips), for checking that models train on colour inputs
SYNTHETIC_RGB = DatasetInfo("synthetic-rgb", (3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3,
                            hflip=True)
SYNTHETIC_SETS = {"synthetic": SYNTHETIC, "synthetic-rgb": SYNTHETIC_RGB}
DATASET_NAMES = (*DATASETS, *SYNTHETIC_SETS)


def _to_set(images: np.ndarray, labels: np.ndarray) -> ImageSet:
    return ImageSet(torch.from_numpy(np.array(images, copy=True)),
                    torch.from_numpy(labels.astype(np.int64)))


def _split(full: ImageSet, val_size: int, seed: int) -> tuple[ImageSet, ImageSet, str]:
    if not 0 <= val_size < len(full):
        raise DataError(f"validation size {val_size} must be below the {len(full)} training images")
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
    val, train = order[:val_size], order[val_size:]
    digest = hashlib.sha256(val.to(torch.int64).numpy().tobytes()).hexdigest()
    return (ImageSet(full.images[train], full.labels[train]),
            ImageSet(full.images[val], full.labels[val]), digest)


def _check_sets(where: str, info: DatasetInfo, train: ImageSet, test: ImageSet) -> None:
    """Refuse an empty split and labels outside the classes (which would read as accuracy
    0.0000, or fail deep in training)."""
    for part, data in (("training", train), ("test", test)):
        if len(data) == 0:
            raise DataError(f"{where}: no {part} images")
        low, high = int(data.labels.min()), int(data.labels.max())
        if low < 0 or high >= info.num_classes:
            raise DataError(f"{where}: {part} labels run {low}..{high}; {info.name} has "
                            f"{info.num_classes} classes (0..{info.num_classes - 1})")


def synthetic_splits(n_train: int = 512, n_val: int = 128, n_test: int = 256,
                     seed: int = 0, info: DatasetInfo = SYNTHETIC) -> Splits:
    """A small learnable dataset for tests: each class is a fixed random template plus noise."""
    gen = torch.Generator().manual_seed(1234)
    templates = torch.rand(info.num_classes, *info.in_shape, generator=gen)

    def make(n: int, offset: int) -> ImageSet:
        g = torch.Generator().manual_seed(seed * 1000 + offset)
        labels = torch.randint(0, info.num_classes, (n,), generator=g)
        noisy = 0.6 * templates[labels] + 0.4 * torch.rand(n, *info.in_shape, generator=g)
        return ImageSet((noisy * 255).round().to(torch.uint8), labels)

    return Splits(info, make(n_train, 1), make(n_val, 2), make(n_test, 3),
                  {"seed": seed, "val_size": n_val})


def dataset_locations() -> dict[str, str | None]:
    """Per named dataset, its default folder where that holds files, else None."""
    return {name: str(source.default_dir) if source.default_dir is not None
            and source.default_dir.is_dir() and any(source.default_dir.iterdir()) else None
            for name, source in DATASETS.items()}


def dataset_info(name: str) -> DatasetInfo:
    """Shape, classes and normalisation of a dataset: a named one's without reading its
    files; your own (``npz:FILE``, ``folder:DIR``) from its files (the mean and std of its
    training images)."""
    if name in SYNTHETIC_SETS:
        return SYNTHETIC_SETS[name]
    if own.is_own(name):
        return _own_info(name, own.load_own(name))
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}, "
                        "or your own as npz:FILE or folder:DIR")
    return DATASETS[name].info


def _own_info(name: str, arrays: own.Arrays) -> DatasetInfo:
    """Your dataset's shape, classes (the largest label + 1) and per-channel mean and std over
    its training images (a constant channel gets std 1)."""
    x_train, y_train, _, y_test = arrays
    pixels = x_train.transpose(1, 0, 2, 3).reshape(x_train.shape[1], -1) / 255.0
    mean = tuple(round(float(m), 4) for m in pixels.mean(1))
    std = tuple(round(float(s), 4) or 1.0 for s in pixels.std(1))
    return DatasetInfo(own.canonical(name), tuple(x_train.shape[1:]),
                       own.num_classes(y_train, y_test), mean, std, hflip=False)


def load_dataset(name: str, data_dir: str | Path | None = None, *,
                 val_size: int | float | None = None,
                 seed: int = 0, expect_sha256: str | None = None) -> Splits:
    """Load a dataset by name, with a validation split drawn (seeded) from its training set.

    Args:
        name: one of ``DATASET_NAMES``, or your own: ``npz:FILE`` or ``folder:DIR``
            (:mod:`cnnzip.data.own`).
        data_dir: where the files are; defaults to the dataset's system location (not for
            your own, whose name says where).
        val_size: how many training images are held out for validation, a count or a
            fraction in (0, 1) of them (default 5,000 for the named datasets, a tenth of the
            training images for your own).
        seed: the seed of the split.
        expect_sha256: the hash of the validation indices a checkpoint recorded; a split that
            comes out differently (other files, another size) is an error.

    Raises:
        DataError: unknown name, or missing or damaged files (the message says where and how
            to get them), or a split other than the expected one.
    """
    if name in SYNTHETIC_SETS:
        return synthetic_splits(seed=seed, info=SYNTHETIC_SETS[name])
    if own.is_own(name):
        if data_dir is not None:
            raise DataError(f"{name}: the name says where the data is; drop --data-dir")
        arrays = own.load_own(name)
        info, where = _own_info(name, arrays), name
        train_full, test = _to_set(*arrays[:2]), _to_set(*arrays[2:])
        val_size = max(1, len(train_full) // 10) if val_size is None else val_size
    else:
        dataset_info(name)  # rejects an unknown name
        source = DATASETS[name]
        directory = Path(data_dir) if data_dir is not None else source.default_dir
        if directory is None:
            raise DataError(f"{name} has no default location: {source.how_to_get}")
        if not directory.is_dir():
            raise DataError(f"{name} not found: {directory} is not a directory; "
                            f"{source.how_to_get}")
        try:
            train_full, test = (_to_set(*source.load(directory, train)) for train in (True, False))
        except DataError as exc:
            raise DataError(f"{name}: {exc}; {source.how_to_get}") from None
        info, where = source.info, f"{name} in {directory}"
        if tuple(train_full.images.shape[1:]) != info.in_shape:
            raise DataError(f"{where}: images have shape {tuple(train_full.images.shape[1:])}, "
                            f"expected {info.in_shape}")
        val_size = 5000 if val_size is None else val_size
    _check_sets(where, info, train_full, test)
    if isinstance(val_size, float):
        if not 0 < val_size < 1:
            raise DataError(f"val_size {val_size}: a fraction must be in (0, 1)")
        val_size = max(1, round(val_size * len(train_full)))
    train, val, digest = _split(train_full, val_size, seed)
    if expect_sha256 is not None and digest != expect_sha256:
        raise DataError(f"{where}: the validation split (seed {seed}, {val_size} images) differs "
                        "from the one the model was trained with; the training files are not "
                        "the same")
    return Splits(info, train, val, test, {"seed": seed, "val_size": val_size, "sha256": digest})


def normalize(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """uint8 (N, C, H, W) → float32 normalised with the dataset's per-channel mean and std."""
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (images.float().div_(255) - mean) / std


def augment(images: torch.Tensor, *, pad: int, hflip: bool,
            generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (zero fill) and optional horizontal flips."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))  # (N, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (N, 1, H, 1)
    cols = dx[:, None] + torch.arange(w)  # (N, W)
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    cols = cols[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n)[:, None, None, None]
    chans = torch.arange(c)[None, :, None, None]
    return padded[batch, chans, rows, cols]  # (N, C, H, W)


def batches(data: ImageSet, info: DatasetInfo, batch_size: int, *, shuffle: bool = False,
            augment_pad: int = 0, generator: torch.Generator | None = None,
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised float batches ``(x, y)``; shuffled and augmented when asked."""
    generator = generator or torch.Generator().manual_seed(0)
    order = torch.randperm(len(data), generator=generator) if shuffle else torch.arange(len(data))
    for start in range(0, len(data), batch_size):
        idx = order[start:start + batch_size]
        images = data.images[idx]
        if augment_pad or (shuffle and info.hflip):
            images = augment(images, pad=augment_pad, hflip=info.hflip, generator=generator)
        yield normalize(images, info), data.labels[idx]
