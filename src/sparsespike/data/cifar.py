"""CIFAR-10 from the official python-pickle batches (``cifar-10-batches-py``).

Source: Krizhevsky, "Learning multiple layers of features from tiny images" (2009), and the
format description at https://www.cs.toronto.edu/~kriz/cifar.html: each of ``data_batch_1..5``
and ``test_batch`` is a pickled dict with ``b'data'`` (a 10000 x 3072 uint8 array, rows holding
the 1024 red, then green, then blue values of a 32x32 image in row-major order) and
``b'labels'`` (10000 ints in 0..9). Per-file MD5s are those used by torchvision's ``CIFAR10``.

Pickle can run arbitrary code, so the batches are read with a restricted unpickler that only
resolves the few globals this known format needs (numpy's array reconstruction and
``_codecs.encode`` for byte strings); any other global is a :class:`DataError`. MD5 is checked
first by default, so only the published files reach the unpickler at all.

Layout: ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch}``.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .paths import find_dataset_dir, require_file, verify_md5

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
}
TEST_BATCHES: dict[str, str] = {"test_batch": "40351d587109b95175f43aff81a1287e"}
CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR batch contains."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def read_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file: ``(images uint8 [n, 3, 32, 32], labels int64 [n])``."""
    p = Path(path)
    try:
        obj = _BatchUnpickler(io.BytesIO(p.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{p}: not a readable CIFAR-10 pickle batch ({e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{p}: expected a pickled dict, got {type(obj).__name__}")
    obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in obj or "labels" not in obj:
        raise DataError(f"{p}: batch dict lacks 'data'/'labels' keys (has {sorted(obj)})")
    data = obj["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or (data.shape[1] != 3072):
        shape = getattr(data, "shape", None)
        raise DataError(f"{p}: 'data' is {type(data).__name__} {shape}; expected uint8 [n, 3072]")
    labels = np.asarray(obj["labels"], dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise DataError(f"{p}: {labels.shape[0] if labels.ndim else 0} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{p}: labels outside 0..9 (min {labels.min()}, max {labels.max()})")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(
    root: str | os.PathLike[str] | None = None, train: bool = True, verify: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from ``<root>/cifar-10-batches-py``: ``(uint8 [N, 3, 32, 32], int64 [N])``.

    N = 50000 (train, batches 1-5 in order) or 10000 (test). With ``verify`` (default) each
    batch is MD5-checked against its published digest before it is unpickled.
    """
    batches = TRAIN_BATCHES if train else TEST_BATCHES
    expected = [*TRAIN_BATCHES, *TEST_BATCHES]
    folder = find_dataset_dir(root, FOLDER, expected)
    images, labels = [], []
    for name, md5 in batches.items():
        path = require_file(folder / name, "CIFAR-10 batch", expected)
        if verify:
            verify_md5(path, md5)
        x, y = read_batch(path)
        images.append(x)
        labels.append(y)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))
