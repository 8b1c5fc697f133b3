"""Datasets: IDX (MNIST, Fashion-MNIST), CIFAR-10 binary batches, your own (``npz:FILE``,
``folder:DIR``), and a synthetic set for tests."""

from cnnzip.data.datasets import (
    DATASET_NAMES,
    DatasetInfo,
    ImageSet,
    Splits,
    augment,
    dataset_info,
    dataset_locations,
    batches,
    load_dataset,
    normalize,
    synthetic_splits,
)
from cnnzip.data.own import canonical as canonical_name

__all__ = ["DATASET_NAMES", "DatasetInfo", "ImageSet", "Splits", "augment", "batches",
           "canonical_name", "dataset_info", "dataset_locations", "load_dataset", "normalize",
           "synthetic_splits"]
