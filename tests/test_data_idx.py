"""MNIST / Fashion-MNIST IDX loading: real files, and every kind of broken file."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from idx_files import idx_bytes

from sparsespike.data import load_fashion_mnist, load_mnist, parse_idx, read_idx
from sparsespike.data.idx import FASHION_MNIST_MD5, MNIST_MD5
from sparsespike.data.paths import file_md5
from sparsespike.errors import DataError

FOUR = list(MNIST_MD5)


def test_published_md5_match_the_shared_files(data_dir: Path) -> None:
    for name, md5s in (("mnist", MNIST_MD5), ("fashion-mnist", FASHION_MNIST_MD5)):
        for fname, md5 in md5s.items():
            assert file_md5(data_dir / name / fname) == md5


def test_mnist_real(data_dir: Path) -> None:
    x, y = load_mnist(data_dir, train=False)
    assert x.shape == (10000, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert y[:5].tolist() == [7, 2, 1, 0, 4]
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x, y = load_mnist(data_dir, train=True)
    assert x.shape == (60000, 28, 28) and y[:5].tolist() == [5, 0, 4, 1, 9]
    assert abs(x.double().mean().item() / 255 - 0.1307) < 1e-4  # the well-known MNIST mean


def test_fashion_real(data_dir: Path) -> None:
    x, y = load_fashion_mnist(data_dir, train=True)
    assert x.shape == (60000, 28, 28) and torch.bincount(y).tolist() == [6000] * 10
    assert y[:3].tolist() == [9, 0, 0]
    assert abs(x.double().mean().item() / 255 - 0.2860) < 1e-4
    x, y = load_fashion_mnist(data_dir, train=False)
    assert x.shape == (10000, 28, 28) and torch.bincount(y).tolist() == [1000] * 10


def test_uncompressed_files_are_accepted(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    for base in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(data_dir / "mnist" / f"{base}.gz", "rb") as f:
            (tmp_path / "mnist" / base).write_bytes(f.read())
    x, y = load_mnist(tmp_path, train=False)
    x0, y0 = load_mnist(data_dir, train=False)
    assert torch.equal(x, x0) and torch.equal(y, y0)


def test_missing_folder_and_file_name_the_expected_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path, train=True)
    assert str(tmp_path / "mnist") in str(e.value)
    assert all(n in str(e.value) for n in FOUR)
    (tmp_path / "mnist").mkdir()
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path, train=True)
    msg = str(e.value)
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in msg
    assert all(n in msg for n in FOUR)


def _copy_labels(data_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "mnist"
    d.mkdir()
    shutil.copy(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz", d)
    return d / "t10k-labels-idx1-ubyte.gz"


def test_truncated_gzip(data_dir: Path, tmp_path: Path) -> None:
    target = _copy_labels(data_dir, tmp_path)
    raw = (data_dir / "mnist" / target.name).read_bytes()
    target.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated") as e:
        load_mnist(tmp_path, train=False, verify=False)
    assert str(target) in str(e.value)
    # with verification on, the checksum catches it first and names both digests
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path, train=False)
    msg = str(e.value)
    assert str(target) in msg and MNIST_MD5[target.name] in msg and file_md5(target) in msg


def test_corrupt_gzip(data_dir: Path, tmp_path: Path) -> None:
    target = _copy_labels(data_dir, tmp_path)
    target.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(200)))
    with pytest.raises(DataError, match="corrupt gzip") as e:
        load_mnist(tmp_path, train=False, verify=False)
    assert str(target) in str(e.value)


def test_not_gzip_despite_name(tmp_path: Path) -> None:
    p = tmp_path / "x.gz"
    p.write_bytes(b"")
    with pytest.raises(DataError, match="gzip magic"):
        read_idx(p)


def test_bad_magic(data_dir: Path, tmp_path: Path) -> None:
    target = _copy_labels(data_dir, tmp_path)
    target.write_bytes(gzip.compress(b"\x00\x00\x99\x01" + struct.pack(">I", 10000) + bytes(10000)))
    with pytest.raises(DataError, match="bad IDX magic") as e:
        load_mnist(tmp_path, train=False, verify=False)
    assert str(target) in str(e.value)


def test_wrong_shape_is_rejected(data_dir: Path, tmp_path: Path) -> None:
    target = _copy_labels(data_dir, tmp_path)
    target.write_bytes(gzip.compress(idx_bytes(np.zeros(7, np.uint8), 0x08)))
    with pytest.raises(DataError, match=r"expected \(10000,\)"):
        load_mnist(tmp_path, train=False, verify=False)


def test_parse_idx_types_and_sizes() -> None:
    a = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    assert np.array_equal(parse_idx(idx_bytes(a, 0x0B)), a)
    f = np.linspace(0, 1, 5, dtype=np.float32)
    assert np.array_equal(parse_idx(idx_bytes(f, 0x0D)), f)
    good = idx_bytes(np.zeros((2, 3), np.uint8), 0x08)
    with pytest.raises(DataError, match="payload"):
        parse_idx(good[:-1], "cut.idx")
    with pytest.raises(DataError, match="header truncated"):
        parse_idx(good[:6], "cut.idx")
    with pytest.raises(DataError, match="4-byte magic"):
        parse_idx(b"\x00", "tiny.idx")
