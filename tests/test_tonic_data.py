"""Datasets through tonic, on local files only: tonic's readers and transforms against our own
readers on the same files (N-MNIST sample, DVS Gesture samples, an AEDAT4 recording), and
tonic's dataset classes on small local copies laid out as tonic expects (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from shd_files import write_shd

tonic = pytest.importorskip("tonic", reason="the optional 'tonic' package is not installed")

from sparsespike.data.events import EVENT_DTYPE, events_to_raster, read_events  # noqa: E402
from sparsespike.data.nmnist import nmnist_rasters  # noqa: E402
from sparsespike.data.tonic_data import (  # noqa: E402
    TonicRasterDataset,
    downsampled_size,
    events_from_tonic,
    load_tonic_split,
    tonic_input_shape,
    tonic_to_raster,
)
from sparsespike.errors import DataError  # noqa: E402


def _nmnist_sample(data_dir: Path):
    path = data_dir / "tonic-samples" / "sample_nmnist.bin"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return tonic.io.read_mnist_file(str(path), dtype=tonic.datasets.NMNIST.dtype), read_events(path)


def test_nmnist_sample_tonic_reader_gives_our_events(data_dir):
    theirs, ours = _nmnist_sample(data_dir)
    assert len(theirs) == len(ours) > 1000
    for k in ("x", "y", "t", "p"):
        assert np.array_equal(theirs[k], ours[k]), k
    ev = events_from_tonic(theirs)
    assert ev.dtype == EVENT_DTYPE and np.array_equal(ev, ours)


@pytest.mark.parametrize("clamp", [True, False])
def test_nmnist_sample_same_raster(data_dir, clamp):
    theirs, ours = _nmnist_sample(data_dir)
    # tonic's ToFrame (floor bins of 1 ms from t = 0) == our floor binning
    r_tonic = tonic_to_raster(theirs, (34, 34, 2), 300, 1000, clamp=clamp)
    assert r_tonic.shape == (300, 2312) and r_tonic.dtype == torch.float32
    assert torch.equal(r_tonic, events_to_raster(ours, 300, 1000, binning="floor", clamp=clamp))
    # our default (round, as Perez-Nieves) through the tonic path == our N-MNIST loader's rasters
    r_round = tonic_to_raster(theirs, (34, 34, 2), 300, 1000, clamp=clamp, binning="round")
    assert torch.equal(r_round, nmnist_rasters([ours], clamp=clamp)[0].float())
    spatial = tonic_to_raster(theirs, (34, 34, 2), 300, 1000, clamp=clamp, spatial=True)
    assert spatial.shape == (300, 2, 34, 34) and torch.equal(spatial.reshape(300, -1), r_tonic)
    assert r_tonic.sum() > 4000


def test_dvs_gesture_sample_downsampled(data_dir):
    path = data_dir / "dvs-gesture-samples" / "1.bs2"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    # the SLAYER .bs2 copies use N-MNIST's 40-bit format; read_mnist_file fills the fields
    # positionally as x, y, t, p, so it needs a dtype in that order (NMNIST's, not DVSGesture's)
    theirs = tonic.io.read_mnist_file(str(path), dtype=tonic.datasets.NMNIST.dtype)
    ours = read_events(path)
    for k in ("x", "y", "t", "p"):
        assert np.array_equal(np.asarray(theirs[k]).astype(np.int64), ours[k].astype(np.int64)), k
    down = tonic.transforms.Downsample(spatial_factor=0.25)(theirs)
    size = downsampled_size((128, 128, 2), 0.25)
    assert size == (32, 32, 2) and tonic_input_shape("dvsgesture", downsample=0.25) == (2048,)
    r = tonic_to_raster(down, size, 100, 5000, clamp=False)
    ours_down = ours.copy()
    ours_down["x"] //= 4
    ours_down["y"] //= 4
    expected = events_to_raster(ours_down, 100, 5000, size=(32, 32), binning="floor", clamp=False)
    assert r.shape == (100, 2048) and torch.equal(r, expected)
    assert r.sum() == np.count_nonzero(ours["t"] < 100 * 5000)


def test_aedat4_sample_through_tonic(data_dir):
    pytest.importorskip("aedat", reason="tonic.io.read_aedat4 needs the 'aedat' package")
    path = data_dir / "tonic-samples" / "sample.aedat4"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    ev = tonic.io.read_aedat4(str(path))
    t0 = float(ev["t"][0])  # absolute timestamps: bin 0 starts at the first event
    size = (int(ev["x"].max()) + 1, int(ev["y"].max()) + 1, 2)
    r = tonic_to_raster(ev, size, 20, 5000, clamp=False, start_time=t0)
    ours = events_from_tonic(ev)
    ours["t"] -= ours["t"][0]
    expected = events_to_raster(ours, 20, 5000, size=size[:2], binning="floor", clamp=False)
    assert torch.equal(r, expected)
    assert r.sum() == np.count_nonzero(ours["t"] < 20 * 5000) > 0


def test_missing_files_are_an_error_not_a_download(tmp_path):
    with pytest.raises(DataError, match="download=True"):
        TonicRasterDataset("nmnist", root=tmp_path, split="test")
    assert not list(tmp_path.rglob("*.zip"))
    with pytest.raises(ValueError, match="unknown tonic dataset"):
        TonicRasterDataset("mnist", root=tmp_path)


def test_shd_through_tonic_matches_our_loader(tmp_path):
    from sparsespike.data.shd import read_shd_file, shd_raster

    rng = np.random.default_rng(0)
    samples = []
    for _ in range(3):  # spike times (2k + 0.5) ms: well inside 2 ms bins for either rounding
        t = np.sort(rng.integers(0, 60, 40) * 2e-3 + 0.5e-3)
        samples.append((t, rng.integers(0, 700, 40)))
    folder = tmp_path / "tonic" / "SHD"
    folder.mkdir(parents=True)
    write_shd(folder / "shd_test.h5", samples, [3, 0, 19], extra=True)
    (folder / "shd_test.h5.zip").write_bytes(b"")  # tonic checks that the archive is present
    ds = TonicRasterDataset("shd", root=tmp_path, split="test", T=50, binning="round")
    assert len(ds) == 3 and ds.input_shape == (700,) == tonic_input_shape("shd")
    ev, labels = read_shd_file(folder / "shd_test.h5")
    for i in range(3):
        x, y = ds[i]
        assert y == labels[i]
        assert torch.equal(x, shd_raster(*ev[i], T=50, dt_s=2e-3))
        assert x.sum() > 0
    xs, ys = load_tonic_split("shd", tmp_path, "test", T=50, binning="round")
    assert xs.dtype == torch.uint8 and xs.shape == (3, 50, 700) and ys.tolist() == [3, 0, 19]


def test_dvsgesture_dataset_from_local_layout(tmp_path, data_dir):
    src = data_dir / "dvs-gesture-samples" / "2.bs2"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    ev = read_events(src)
    ev = ev[ev["t"] < 150_000]  # 150 ms keeps tonic's Python-loop Denoise quick
    ev["t"] -= ev["t"] % 1000  # tonic's DVS Gesture copy has whole milliseconds
    arr = np.stack([ev["x"], ev["y"], ev["p"], ev["t"] // 1000], axis=1).astype(np.float64)
    root = tmp_path / "tonic" / "DVSGesture"
    (root / "ibmGestureTest").mkdir(parents=True)
    (root / "ibmGestureTest.tar.gz").write_bytes(b"")
    one = root / "one.npy"
    np.save(one, arr)
    for user in range(1, 11):  # tonic wants >= 100 .npy files: 10 users x 11 gestures
        d = root / "ibmGestureTest" / f"user{user:02d}_led"
        d.mkdir()
        for label in range(11):
            (d / f"{label}.npy").symlink_to(one)
    ds = TonicRasterDataset(
        "dvsgesture", root=tmp_path, split="test", T=30, dt_us=5000, downsample=0.25,
        denoise_us=5000, spatial=True,
    )  # fmt: skip
    assert len(ds) >= 110
    x, y = ds[0]
    assert x.shape == (30, 2, 32, 32) and 0 <= y <= 10
    from numpy.lib import recfunctions

    stream = arr.copy()
    stream[:, 3] *= 1000  # what tonic's DVSGesture.__getitem__ does with the file
    theirs = tonic.transforms.Denoise(filter_time=5000)(
        recfunctions.unstructured_to_structured(stream, tonic.datasets.DVSGesture.dtype)
    )
    assert 0 < len(theirs) < len(ev)
    ours = events_from_tonic(theirs)
    ours["x"] //= 4
    ours["y"] //= 4
    # Denoise runs before Downsample in the dataset, as here
    expected = events_to_raster(ours, 30, 5000, size=(32, 32), binning="floor", clamp=True)
    assert torch.equal(x.reshape(30, -1), expected)


@pytest.mark.parametrize("binning", ["floor", "round"])
def test_events_outside_the_sensor_are_refused_on_both_binnings(binning):
    """The floor path (tonic's ToFrame) wrapped a negative coordinate to the other side of the
    sensor (p = -1 into the ON channel) and raised a bare IndexError past the edge."""
    dt = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
    for x, y, p in ((-1, 0, 1), (34, 0, 1), (0, 0, -1), (0, 40, 0)):
        ev = np.array([(3, 3, 10, 1), (x, y, 20, p)], dtype=dt)
        with pytest.raises(DataError, match="outside sensor"):
            tonic_to_raster(ev, (34, 34, 2), 5, 1000, binning=binning)
    ok = np.array([(3, 3, 10, 1), (33, 33, 1500, 0)], dtype=dt)
    assert float(tonic_to_raster(ok, (34, 34, 2), 5, 1000, binning=binning).sum()) == 2.0
