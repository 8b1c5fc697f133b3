"""Reader for the CIFAR-10 binary batches (``cifar-10-batches-bin``); never unpickles."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnzip.errors import DataError

_RECORD = 1 + 3 * 32 * 32
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one binary batch.

    Returns:
        images (N, 3, 32, 32) uint8 and labels (N,) uint8.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if len(raw) == 0 or len(raw) % _RECORD:
        raise DataError(
            f"{path}: truncated CIFAR-10 batch ({len(raw)} bytes is not a multiple of {_RECORD})"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        raise DataError(f"{path}: label {labels.max()} out of range: not a CIFAR-10 batch")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10(directory: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Load the training (five batches) or test split from a folder of binary batches."""
    if (directory / "cifar-10-batches-bin").is_dir():
        directory = directory / "cifar-10-batches-bin"
    parts = [read_cifar_batch(directory / name) for name in (TRAIN_FILES if train else TEST_FILES)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
