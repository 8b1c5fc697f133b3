"""Datasets: IDX (MNIST, Fashion-MNIST), CIFAR-10 binary batches, and a synthetic set for tests."""

from cnnzip.data.datasets import (
    DATASET_NAMES,
    DatasetInfo,
    ImageSet,
    Splits,
    augment,
    dataset_info,
    batches,
    load_dataset,
    normalize,
    synthetic_splits,
)

__all__ = ["DATASET_NAMES", "DatasetInfo", "ImageSet", "Splits", "augment", "batches",
           "dataset_info", "load_dataset", "normalize", "synthetic_splits"]
