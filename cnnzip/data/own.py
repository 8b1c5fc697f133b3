"""Your own data, named by where it is: ``npz:FILE`` (arrays ``x_train``, ``y_train``,
``x_test``, ``y_test``; uint8 images N×C×H×W, N×H×W×C or N×H×W; integer labels from 0) or
``folder:DIR`` (``DIR/train/CLASS/*.png`` and ``DIR/test/CLASS/*.png``, PNG, JPEG or BMP, one
sub-folder per class, every image the same size). Both are read as hostile input: no pickle,
every array's type and shape checked, every image decoded by Pillow with its limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnzip.errors import DataError

PREFIXES = ("npz:", "folder:")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
MAX_CLASSES = 10_000


def is_own(name: str) -> bool:
    return name.startswith(PREFIXES)


def canonical(name: str) -> str:
    """``npz:FILE`` / ``folder:DIR`` with the path made absolute (what checkpoints record, so
    that later commands find the data from any folder); other names as they are."""
    if not is_own(name):
        return name
    prefix, _, path = name.partition(":")
    if not path:
        raise DataError(f"dataset {name!r}: give a path after '{prefix}:'")
    return f"{prefix}:{Path(path).expanduser().resolve()}"


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def load_own(name: str) -> Arrays:
    """Train images, train labels, test images, test labels: images uint8 (N, C, H, W),
    labels int64, for an ``npz:`` or ``folder:`` dataset.

    Raises:
        DataError: a missing or unreadable file, a missing array, a wrong type or shape, images
            of different sizes (each message names the file and what was expected).
    """
    prefix, _, path = canonical(name).partition(":")
    arrays = _npz(Path(path)) if prefix == "npz" else _folder(Path(path))
    _check_labels(name, arrays[1], arrays[3])
    if arrays[0].shape[1:] != arrays[2].shape[1:]:
        raise DataError(f"{name}: training images are {arrays[0].shape[1:]}, test images "
                        f"{arrays[2].shape[1:]}; they must have one shape")
    return arrays


def _npz(path: Path) -> Arrays:
    if not path.is_file():
        raise DataError(f"npz:{path}: file not found (an .npz with x_train, y_train, x_test, "
                        "y_test, as numpy.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data]
            if missing:
                raise DataError(f"npz:{path}: no array {missing[0]!r} (it holds "
                                f"{', '.join(sorted(data.files)) or 'nothing'}; expected "
                                "x_train, y_train, x_test, y_test)")
            x_train, y_train, x_test, y_test = (data[k] for k in ("x_train", "y_train",
                                                                  "x_test", "y_test"))
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as exc:  # not a zip, an object array, truncated
        raise DataError(f"npz:{path}: not a readable .npz ({exc})") from None
    return (_images(f"npz:{path}: x_train", x_train), _labels(f"npz:{path}: y_train", y_train),
            _images(f"npz:{path}: x_test", x_test), _labels(f"npz:{path}: y_test", y_test))


def _images(where: str, x: np.ndarray) -> np.ndarray:
    """uint8 images as (N, C, H, W): N×H×W gains a channel; N×H×W×C (C of 1, 3 or 4 last and
    not second) is transposed."""
    if x.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8 (0–255), got {x.dtype}; scale them to "
                        "bytes first")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or 0 in x.shape:
        raise DataError(f"{where}: expected N×C×H×W, N×H×W×C or N×H×W images, got shape "
                        f"{x.shape}")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def _labels(where: str, y: np.ndarray) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels must be a 1-D integer array, got {y.dtype} of shape "
                        f"{y.shape}")
    return y.astype(np.int64)


def _check_labels(name: str, y_train: np.ndarray, y_test: np.ndarray) -> None:
    for where, y in (("training", y_train), ("test", y_test)):
        if y.size and (y.min() < 0 or y.max() >= MAX_CLASSES):
            raise DataError(f"{name}: {where} labels must be class numbers in 0..{MAX_CLASSES - 1}"
                            f", got {y.min()}..{y.max()}")


def num_classes(y_train: np.ndarray, y_test: np.ndarray) -> int:
    return int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1


def _folder(root: Path) -> Arrays:
    from PIL import Image  # Pillow (a dependency of matplotlib); only folders of images need it

    where = f"folder:{root}"
    for part in ("train", "test"):
        if not (root / part).is_dir():
            raise DataError(f"{where}: no {part}/ folder (expected {root}/train/CLASS/*.png and "
                            f"{root}/test/CLASS/*.png, one sub-folder per class)")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{where}/train: no class sub-folders")
    files = {part: [(f, classes.index(c.name)) for c in sorted((root / part).iterdir())
                    if c.is_dir() for f in sorted(c.iterdir())
                    if f.suffix.lower() in IMAGE_SUFFIXES and _known(where, part, c.name, classes)]
             for part in ("train", "test")}
    for part, found in files.items():
        if not found:
            raise DataError(f"{where}/{part}: no images ({', '.join(IMAGE_SUFFIXES)})")
    decoded = {part: [] for part in files}
    for part, found in files.items():
        for f, _ in found:
            try:
                with Image.open(f) as image:
                    image.load()
                    decoded[part].append(image.copy())
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise DataError(f"{where}: cannot read {f} ({exc})") from None
    grey = all(im.mode in ("1", "L", "I;16", "I") for ims in decoded.values() for im in ims)
    mode = "L" if grey else "RGB"
    first = files["train"][0][0]
    size = decoded["train"][0].size
    out = []
    for part in ("train", "test"):
        images = []
        for (f, _), image in zip(files[part], decoded[part]):
            if image.size != size:
                raise DataError(f"{where}: {f} is {image.size[0]}×{image.size[1]}, {first} "
                                f"{size[0]}×{size[1]}; every image must have one size")
            images.append(np.asarray(image.convert(mode), np.uint8))
        x = np.stack(images)
        out += [x[:, None] if grey else x.transpose(0, 3, 1, 2),
                np.array([label for _, label in files[part]], np.int64)]
    return out[0], out[1], out[2], out[3]


def _known(where: str, part: str, name: str, classes: list[str]) -> bool:
    if name not in classes:
        raise DataError(f"{where}/{part}/{name}: a class with no training folder "
                        f"(classes: {', '.join(classes)})")
    return True
