"""CIFAR-10 and SHD loaders, on small files written in the official formats."""

from __future__ import annotations

import gzip
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from shd_files import write_shd

from sparsespike.data import SHDDataset, load_cifar10, load_shd, shd_raster, shd_rasters
from sparsespike.data.cifar import TEST_BATCHES, TRAIN_BATCHES, read_batch
from sparsespike.errors import DataError


def _write_cifar(root: Path, n: int = 4, protocol: int = 2) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for k, name in enumerate([*TRAIN_BATCHES, *TEST_BATCHES]):
        data = np.zeros((n, 3072), np.uint8)
        data[:, :1024] = 10 + k  # red plane
        data[:, 1024:2048] = 100  # green plane
        data[:, 2048] = 200  # first blue pixel
        batch = {
            b"batch_label": f"batch {k}".encode(),
            b"labels": [(k + i) % 10 for i in range(n)],
            b"data": data,
            b"filenames": [b"img.png"] * n,
        }
        (d / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return d


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_fake_batches(tmp_path: Path, protocol: int) -> None:
    _write_cifar(tmp_path, protocol=protocol)
    x, y = load_cifar10(tmp_path, train=True, verify=False)
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert x[0, 0].unique().tolist() == [10] and x[4, 0, 0, 0] == 11  # batches in order
    assert (x[:, 1] == 100).all() and (x[:, 2, 0, 0] == 200).all() and (x[:, 2, 0, 1] == 0).all()
    assert y[:5].tolist() == [0, 1, 2, 3, 1]
    xt, yt = load_cifar10(tmp_path, train=False, verify=False)
    assert xt.shape == (4, 3, 32, 32) and yt.tolist() == [5, 6, 7, 8]


def test_cifar_checksum_and_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path)
    assert "cifar-10-batches-py" in str(e.value)
    assert all(n in str(e.value) for n in [*TRAIN_BATCHES, *TEST_BATCHES])
    d = _write_cifar(tmp_path)
    with pytest.raises(DataError, match="c99cafc152244af753f735de768cd75f") as e:
        load_cifar10(tmp_path, train=True)  # fake files fail the published md5
    assert str(d / "data_batch_1") in str(e.value)
    (d / "data_batch_3").unlink()
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path, verify=False)
    assert str(d / "data_batch_3") in str(e.value)


class _Evil:
    def __reduce__(self):
        return (sys.exit, ("pickle code ran",))


def test_cifar_restricted_unpickler(tmp_path: Path) -> None:
    p = tmp_path / "evil"
    p.write_bytes(pickle.dumps({b"data": _Evil()}, protocol=2))
    with pytest.raises(DataError, match="not allowed"):
        read_batch(p)
    p.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match="3072"):
        read_batch(p)
    p.write_bytes(b"garbage")
    with pytest.raises(DataError, match="pickle"):
        read_batch(p)


# ----------------------------------------------------------------------------------- SHD


SAMPLES = [([0.0005, 0.0031, 0.0049, 1.2], [0, 699, 5, 3]), ([0.010, 0.010], [7, 7])]


def test_shd_load_and_bin(tmp_path: Path) -> None:
    (tmp_path / "shd").mkdir()
    write_shd(tmp_path / "shd" / "shd_test.h5", SAMPLES, [3, 19])
    ev, y = load_shd(tmp_path, "test")
    assert y.tolist() == [3, 19] and len(ev) == 2 and ev[0][1].tolist() == [0, 699, 5, 3]
    r = shd_raster(*ev[0])  # bins round(t / 2 ms): 0, 2, 2, (600 dropped)
    assert r.shape == (500, 700) and r.sum() == 3
    assert r[0, 0] == 1 and r[2, 699] == 1 and r[2, 5] == 1
    assert shd_raster(*ev[1]).sum() == 1 and shd_raster(*ev[1], clamp=False)[5, 7] == 2
    X = shd_rasters(ev)
    assert X.shape == (2, 500, 700) and X.dtype == torch.uint8 and torch.equal(X[0].float(), r)
    ds = SHDDataset(tmp_path, "test", T=100)
    assert ds[1][0].shape == (100, 700) and ds[1][1] == 19


def test_shd_gz_and_errors(tmp_path: Path) -> None:
    d = tmp_path / "shd"
    d.mkdir()
    with pytest.raises(DataError) as e:
        load_shd(tmp_path, "train")
    assert str(d / "shd_train.h5") in str(e.value)
    write_shd(tmp_path / "plain.h5", SAMPLES, [1, 2])
    (d / "shd_train.h5.gz").write_bytes(gzip.compress((tmp_path / "plain.h5").read_bytes()))
    _, y = load_shd(tmp_path, "train")
    assert y.tolist() == [1, 2]
    write_shd(d / "shd_test.h5", [([0.1], [700])], [0])
    with pytest.raises(DataError, match="channel ids"):
        load_shd(tmp_path, "test")
    (d / "shd_test.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="shd_test.h5"):
        load_shd(tmp_path, "test")


def test_shd_damaged_gz_stream_is_a_data_error(tmp_path: Path) -> None:
    """A .h5.gz with a damaged deflate stream (bytes 12-75 flipped) raises zlib.error inside gzip:
    a DataError naming the file, not a raw zlib.error."""
    d = tmp_path / "shd"
    d.mkdir()
    write_shd(tmp_path / "plain.h5", SAMPLES * 3, [1, 2] * 3)
    raw = bytearray(gzip.compress((tmp_path / "plain.h5").read_bytes()))
    for i in range(12, 76):
        raw[i] ^= 0xFF
    (d / "shd_train.h5.gz").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="shd_train.h5.gz: cannot read as an SHD HDF5 file"):
        load_shd(tmp_path, "train")


def test_shd_without_h5py(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shd").mkdir()
    (tmp_path / "shd" / "shd_test.h5").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="pip install h5py"):
        load_shd(tmp_path, "test")


def test_shd_config_trains_on_synthetic_files(tmp_path: Path) -> None:
    """experiments/shd_pn.yaml runs end to end for a user who has SHD files (issue 3).

    Synthetic SHD-format files (1,500 spikes per sample, like real SHD digits): each class drives
    its own block of 35 channels, so after a short
    run the network must beat chance (5 %) clearly.
    """
    from sparsespike.cli import main

    rng = np.random.default_rng(0)

    def samples(n):
        out, labels = [], []
        for i in range(n):
            c = i % 20
            t = rng.uniform(0.0, 0.2, 1500)
            u = 35 * c + rng.integers(0, 35, 1500)
            out.append((np.sort(t).tolist(), u.tolist()))
            labels.append(c)
        return out, labels

    (tmp_path / "shd").mkdir()
    write_shd(tmp_path / "shd" / "shd_train.h5", *samples(400))
    write_shd(tmp_path / "shd" / "shd_test.h5", *samples(100))
    run = tmp_path / "run"
    rc = main(
        [
            "train",
            "experiments/shd_pn.yaml",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(run),
            "--quiet",
            "--set",
            "train.epochs=3",
            "--set",
            "data.encoding.T=100",
            "--set",
            "data.batch_size=32",
            "--set",
            "train.measure_every=0",
        ]
    )
    assert rc == 0
    res = json.loads((run / "results.json").read_text())
    assert res["test_acc_last"] > 0.3
    assert json.loads((run / "run.json").read_text())["config"]["model"]["backward"] == "sparse"
