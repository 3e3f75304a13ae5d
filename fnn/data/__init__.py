"""Data for fnn: data sets, an input pipeline, augmentation and splits.

* ``checks``: ``DataError`` (raised for every damaged or unusable data file), ``check_finite``,
  ``check_labels``.
* ``datasets``: ``load_mnist``, ``load_fashion_mnist`` (found on disk or downloaded, checked).
* ``idx``: the IDX file format (``read_idx``, ``write_idx``).
* ``arrays``: ``load_arrays`` (``.npz``/``.npy``, memory-mapped when large).
* ``tabular``: ``load_csv``, ``Standardizer`` (fitted on the training split only).
* ``synthetic``: ``xor``, ``two_spirals``, ``circles``, ``noisy_regression``, ``adding_problem``.
* ``pipeline``: ``batches``, ``Loader``, ``prefetch_to_device``, ``repeat``, ``num_batches``.
* ``augment``: per-example random ``shift``/``rotation``/``zoom``/``flip`` in JAX, ``make_augment``.
* ``labels``: ``one_hot`` (class ids -> one-hot target rows).
* ``splits``: ``train_val_test_split``, ``holdout``, ``kfold`` (optionally stratified).

Example:
    >>> from fnn import data
    >>> x, y = data.load_mnist()["train"]
    >>> split = data.train_val_test_split(y, 0.1, seed=0, stratify=True)
    >>> loader = data.Loader({"x": x[split.train], "y": y[split.train]}, 128, seed=0)
    >>> len(split.train), len(split.val), len(loader)    # examples, examples, batches per epoch
    (54000, 6000, 422)
    >>> batch = next(iter(loader.prefetch(2).epoch(0)))  # on the device
    >>> batch["x"].shape, batch["y"].shape
    ((128, 28, 28), (128,))
"""

from fnn.data.arrays import MMAP_THRESHOLD_BYTES, load_arrays
from fnn.data.checks import DataError, check_finite, check_labels
from fnn.data.augment import (AUGMENT_KEYS, make_augment, random_affine, random_flip_lr,
                              random_rotation, random_shift, random_zoom, rotate, shift, zoom)
from fnn.data.datasets import (FASHION_MNIST, MNIST, DatasetNotFoundError, IdxDatasetSpec,
                               IdxFile, load_fashion_mnist, load_idx_dataset, load_mnist,
                               search_dirs, stand_in)
from fnn.data.download import (Checksum, ChecksumError, DownloadError, fetch, file_digest,
                               user_cache_dir)
from fnn.data.labels import one_hot
from fnn.data.idx import IdxFormatError, parse_idx, read_idx, read_raw, write_idx
from fnn.data.pipeline import (Loader, batches, epoch_permutation, num_batches,
                               prefetch_to_device, repeat)
from fnn.data.splits import Split, holdout, kfold, train_val_test_split
from fnn.data.synthetic import (RegressionData, adding_problem, circles, noisy_regression,
                                 two_spirals, xor)
from fnn.data.tabular import Standardizer, Table, load_csv

__all__ = [
    # checks: every bad data file or array raises DataError (IdxFormatError, ChecksumError too)
    "DataError", "check_finite", "check_labels",
    # datasets and files
    "load_mnist", "load_fashion_mnist", "load_idx_dataset", "search_dirs", "MNIST",
    "FASHION_MNIST", "IdxDatasetSpec", "IdxFile", "DatasetNotFoundError",
    "read_idx", "read_raw", "parse_idx", "write_idx", "IdxFormatError",
    "fetch", "file_digest", "user_cache_dir", "Checksum", "ChecksumError", "DownloadError",
    "load_arrays", "load_csv", "Table", "Standardizer", "MMAP_THRESHOLD_BYTES",
    "xor", "two_spirals", "circles", "noisy_regression", "RegressionData",
    # pipeline
    "batches", "Loader", "prefetch_to_device", "repeat", "num_batches", "epoch_permutation",
    # augmentation
    "shift", "rotate", "zoom", "random_shift", "random_rotation", "random_zoom",
    "random_flip_lr", "random_affine", "make_augment", "AUGMENT_KEYS",
    # labels
    "one_hot",
    # splits
    "train_val_test_split", "holdout", "kfold", "Split",
]
