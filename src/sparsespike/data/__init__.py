"""Datasets, spike encodings, splits and augmentation for sparsespike.

Loaders read the original files from the data root (``--data-dir``, else
``$SPARSESPIKE_DATA``, else ``~/.cache/sparsespike``; see :mod:`.paths`), check them, and
return tensors; a missing or bad file is a :class:`~sparsespike.errors.DataError` that names it.
Nothing is downloaded.

:data:`DATASETS` maps a dataset name to a :class:`DatasetInfo` whose ``load(data_dir, split)``
returns ``(data, labels int64 [N])``, where ``data`` depends on ``kind``:

* ``'points'`` (yinyang): float32 ``[N, 4]``;
* ``'images'`` (mnist, fashion-mnist, cifar10): uint8 ``[N, 28, 28]`` / ``[N, 3, 32, 32]``;
  encode with :func:`firing_time_raster`, :func:`latency_raster` or :func:`rate_raster`;
* ``'events'`` (nmnist-small, nmnist, shd): a list of per-sample events; bin with
  :func:`nmnist_rasters` / :func:`shd_rasters` or use :class:`NMNISTDataset` /
  :class:`SHDDataset`.

Example:
    >>> x, y = DATASETS["yinyang"].load(split="test")
    >>> tuple(x.shape), DATASETS["yinyang"].n_classes
    ((1000, 4), 3)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .augment import RandomAffine, affine_transform, random_affine
from .cifar import load_cifar10
from .encoding import (
    firing_time_raster,
    firing_times,
    latency_raster,
    latency_times,
    raster_batch,
    rate_raster,
    times_to_raster,
)
from .events import (
    EVENT_DTYPE,
    collate_time_major,
    decode_events,
    encode_events,
    events_to_raster,
    make_events,
    read_events,
    write_events,
)
from .idx import load_fashion_mnist, load_mnist, parse_idx, read_idx
from .nmnist import NMNISTDataset, load_nmnist, load_nmnist_small, nmnist_rasters
from .paths import file_md5, find_dataset_dir, resolve_data_dir, verify_md5
from .shd import SHDDataset, load_shd, shd_raster, shd_rasters
from .split import train_val_split
from .yinyang import load_yinyang, make_yinyang

PathLike = str | os.PathLike[str] | None


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset: how to load it and what comes out.

    ``load(data_dir=None, split='train') -> (data, labels)``; ``files`` are the file names looked
    for under ``<data_dir>/<folder>``.
    """

    name: str
    load: Callable[..., tuple[Any, torch.Tensor]]
    kind: str
    splits: tuple[str, ...]
    n_classes: int
    input_shape: tuple[int, ...]
    folder: str | None
    files: tuple[str, ...]
    source: str

    def __call__(self, data_dir: PathLike = None, split: str = "train") -> tuple[Any, torch.Tensor]:
        return self.load(data_dir, split)


def _check_split(name: str, split: str, splits: tuple[str, ...]) -> None:
    if split not in splits:
        raise ValueError(f"dataset {name!r} has splits {splits}, not {split!r}")


def _yinyang(data_dir: PathLike = None, split: str = "train") -> tuple[Any, torch.Tensor]:
    return load_yinyang(split)


def _mnist(data_dir: PathLike = None, split: str = "train") -> tuple[Any, torch.Tensor]:
    _check_split("mnist", split, ("train", "test"))
    return load_mnist(data_dir, train=split == "train")


def _fashion(data_dir: PathLike = None, split: str = "train") -> tuple[Any, torch.Tensor]:
    _check_split("fashion-mnist", split, ("train", "test"))
    return load_fashion_mnist(data_dir, train=split == "train")


def _cifar10(data_dir: PathLike = None, split: str = "train") -> tuple[Any, torch.Tensor]:
    _check_split("cifar10", split, ("train", "test"))
    return load_cifar10(data_dir, train=split == "train")


def _nmnist_small(data_dir: PathLike = None, split: str = "train") -> tuple[Any, torch.Tensor]:
    return load_nmnist_small(data_dir, split)


def _nmnist(data_dir: PathLike = None, split: str = "train") -> tuple[Any, torch.Tensor]:
    return load_nmnist(data_dir, split)


def _shd(data_dir: PathLike = None, split: str = "train") -> tuple[Any, torch.Tensor]:
    return load_shd(data_dir, split)


_IDX = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

_ENTRIES = (
    DatasetInfo(name="yinyang", load=_yinyang, kind="points",
                splits=("train", "validation", "test"), n_classes=3, input_shape=(4,),
                folder=None, files=(), source="Kriener et al. 2022 (generated)"),
    DatasetInfo(name="mnist", load=_mnist, kind="images", splits=("train", "test"),
                n_classes=10, input_shape=(28, 28), folder="mnist", files=_IDX,
                source="LeCun et al. 1998"),
    DatasetInfo(name="fashion-mnist", load=_fashion, kind="images", splits=("train", "test"),
                n_classes=10, input_shape=(28, 28), folder="fashion-mnist", files=_IDX,
                source="Xiao et al. 2017"),
    DatasetInfo(name="cifar10", load=_cifar10, kind="images", splits=("train", "test"),
                n_classes=10, input_shape=(3, 32, 32), folder="cifar-10-batches-py",
                files=("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                       "data_batch_5", "test_batch"),
                source="Krizhevsky 2009"),
    DatasetInfo(name="nmnist-small", load=_nmnist_small, kind="events",
                splits=("train", "test"), n_classes=10, input_shape=(2, 34, 34),
                folder="nmnist-small", files=("train1K.txt", "test100.txt", "<id>.bs2"),
                source="Orchard et al. 2015, SLAYER subset"),
    DatasetInfo(name="nmnist", load=_nmnist, kind="events", splits=("train", "test"),
                n_classes=10, input_shape=(2, 34, 34), folder="nmnist",
                files=("Train/<digit>/<id>.bin", "Test/<digit>/<id>.bin"),
                source="Orchard et al. 2015"),
    DatasetInfo(name="shd", load=_shd, kind="events", splits=("train", "test"), n_classes=20,
                input_shape=(700,), folder="shd", files=("shd_train.h5", "shd_test.h5"),
                source="Cramer et al. 2022"),
)  # fmt: skip
DATASETS: dict[str, DatasetInfo] = {d.name: d for d in _ENTRIES}


def load_dataset(name: str, data_dir: PathLike = None, split: str = "train") -> tuple[Any, torch.Tensor]:
    """``DATASETS[name].load(data_dir, split)`` with a helpful error for unknown names."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name].load(data_dir, split)


__all__ = [
    "DATASETS",
    "EVENT_DTYPE",
    "DatasetInfo",
    "NMNISTDataset",
    "RandomAffine",
    "SHDDataset",
    "affine_transform",
    "collate_time_major",
    "decode_events",
    "encode_events",
    "events_to_raster",
    "file_md5",
    "find_dataset_dir",
    "firing_time_raster",
    "firing_times",
    "latency_raster",
    "latency_times",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "load_nmnist",
    "load_nmnist_small",
    "load_shd",
    "load_yinyang",
    "make_events",
    "make_yinyang",
    "nmnist_rasters",
    "parse_idx",
    "random_affine",
    "rate_raster",
    "read_events",
    "read_idx",
    "resolve_data_dir",
    "shd_raster",
    "shd_rasters",
    "times_to_raster",
    "raster_batch",
    "train_val_split",
    "verify_md5",
    "write_events",
]
