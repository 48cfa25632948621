"""MNIST and Fashion-MNIST from the original IDX files.

Sources: LeCun, Cortes & Burges, "The MNIST database of handwritten digits" (file-format
section of http://yann.lecun.com/exdb/mnist/); Xiao, Rasul & Vollgraf, "Fashion-MNIST"
(arXiv:1708.07747), which uses the same four-file IDX layout and file names.

IDX format: a 4-byte magic number ``0x00 0x00 <type> <ndim>``; ``ndim`` big-endian uint32
dimension sizes; then the data in C order, big-endian. Type codes: 0x08 ubyte, 0x09 sbyte,
0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64.

Files are looked up as ``<root>/mnist/<name>.gz`` (the published files, MD5-checked against
the published digests) or, failing that, the uncompressed ``<root>/mnist/<name>``, whose shape
and label range are checked instead (no digest is published for them). Fashion-MNIST lives in
``<root>/fashion-mnist/``.

Example:
    >>> images, labels = load_mnist(train=False)      # doctest: +SKIP
    >>> images.shape, images.dtype, labels.dtype       # doctest: +SKIP
    (torch.Size([10000, 28, 28]), torch.uint8, torch.int64)
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .paths import find_dataset_dir, verify_md5

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# (images, labels) base names per split; the published files carry a .gz suffix.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
FASHION_MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

_DATASETS: dict[str, dict[str, str]] = {"mnist": MNIST_MD5, "fashion-mnist": FASHION_MNIST_MD5}
_SIZES = {"train": 60000, "test": 10000}
_GZIP_MAGIC = b"\x1f\x8b"


def parse_idx(buf: bytes, source: str | os.PathLike[str] = "<bytes>") -> np.ndarray:
    """Decode an uncompressed IDX buffer into a numpy array (native byte order).

    Raises :class:`DataError` (naming ``source``) on a bad magic number, an unknown type code,
    or a payload whose length does not match the header's dimensions.
    """
    if len(buf) < 4:
        raise DataError(f"{source}: not an IDX file: only {len(buf)} bytes, expected a 4-byte magic")
    zero0, zero1, code, ndim = buf[0], buf[1], buf[2], buf[3]
    if zero0 != 0 or zero1 != 0 or code not in IDX_TYPES or ndim == 0:
        raise DataError(
            f"{source}: bad IDX magic number 0x{buf[:4].hex()}; expected 0x0000TTNN with type "
            f"code TT in {{08,09,0b,0c,0d,0e}} and NN >= 1 dimensions (e.g. 0x00000803 for "
            "images, 0x00000801 for labels)"
        )
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{source}: IDX header truncated: {len(buf)} bytes, need {header}")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload = len(buf) - header
    if payload != expected:
        raise DataError(
            f"{source}: IDX payload is {payload} bytes but the header dims {dims} of "
            f"{dtype.name} need {expected} bytes (file truncated or corrupt)"
        )
    arr = np.frombuffer(buf, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, gzip-compressed or not (detected from the first bytes, not the name)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"{p}: cannot read IDX file: {e}") from e
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except EOFError as e:
            raise DataError(f"{p}: gzip stream is truncated ({e}); expected a complete .gz file") from e
        except (OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise DataError(f"{p}: corrupt gzip data ({e}); expected a valid .gz file") from e
    elif p.suffix == ".gz":
        raise DataError(
            f"{p}: named .gz but does not start with the gzip magic 1f8b "
            f"(starts with {raw[:4].hex() or 'nothing: the file is empty'})"
        )
    return parse_idx(raw, p)


def _locate(folder: Path, base: str, expected: list[str]) -> Path:
    gz = folder / f"{base}.gz"
    if gz.is_file():
        return gz
    plain = folder / base
    if plain.is_file():
        return plain
    raise DataError(
        f"file not found: {gz} (nor uncompressed {plain}); the folder {folder} should contain "
        f"the four files {', '.join(expected)}"
    )


def load_idx_dataset(
    root: str | os.PathLike[str] | None, name: str, train: bool = True, verify: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of an MNIST-layout dataset (``name`` = ``'mnist'`` or ``'fashion-mnist'``).

    Returns ``(images uint8 [N, 28, 28], labels int64 [N])``. With ``verify`` (default) the
    published ``.gz`` files are MD5-checked (once per process).
    """
    if name not in _DATASETS:
        raise ValueError(f"unknown IDX dataset {name!r}; expected one of {sorted(_DATASETS)}")
    md5s = _DATASETS[name]
    expected = list(md5s)
    folder = find_dataset_dir(root, name, expected)
    split = "train" if train else "test"
    img_base, lbl_base = IDX_FILES[split]
    img_path = _locate(folder, img_base, expected)
    lbl_path = _locate(folder, lbl_base, expected)
    for p in (img_path, lbl_path):
        if verify and p.name in md5s:
            verify_md5(p, md5s[p.name])
    images = read_idx(img_path)
    labels = read_idx(lbl_path)
    n = _SIZES[split]
    if images.dtype != np.uint8 or images.shape != (n, 28, 28):
        raise DataError(
            f"{img_path}: images have shape {images.shape} and dtype {images.dtype}; expected ({n}, 28, 28) uint8"
        )
    if labels.dtype != np.uint8 or labels.shape != (n,):
        raise DataError(f"{lbl_path}: labels have shape {labels.shape} and dtype {labels.dtype}; expected ({n},) uint8")
    if labels.max(initial=0) > 9:
        raise DataError(f"{lbl_path}: label {int(labels.max())} out of range; expected 0..9")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def load_mnist(
    root: str | os.PathLike[str] | None = None, train: bool = True, verify: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST from ``<root>/mnist/``: ``(images uint8 [N, 28, 28], labels int64 [N])``.

    N is 60000 for ``train=True`` and 10000 otherwise. ``root=None`` uses the default data root
    (:func:`~sparsespike.data.paths.resolve_data_dir`).
    """
    return load_idx_dataset(root, "mnist", train=train, verify=verify)


def load_fashion_mnist(
    root: str | os.PathLike[str] | None = None, train: bool = True, verify: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST from ``<root>/fashion-mnist/``; same return as :func:`load_mnist`."""
    return load_idx_dataset(root, "fashion-mnist", train=train, verify=verify)
