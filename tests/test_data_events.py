"""40-bit event files, binning to rasters, and the N-MNIST loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sparsespike.data import (
    NMNISTDataset,
    collate_time_major,
    decode_events,
    encode_events,
    events_to_raster,
    load_mnist,
    load_nmnist,
    load_nmnist_small,
    make_events,
    nmnist_rasters,
    read_events,
    write_events,
)
from sparsespike.data.nmnist import read_label_file
from sparsespike.errors import DataError, SpikeInputError


def test_decode_bit_layout() -> None:
    # x=3, y=5, polarity 1, t=0x012345 us -> bytes 03 05 81 23 45
    ev = decode_events(bytes([3, 5, 0x81, 0x23, 0x45, 33, 0, 0x7F, 0xFF, 0xFF]))
    assert ev["x"].tolist() == [3, 33] and ev["y"].tolist() == [5, 0]
    assert ev["p"].tolist() == [1, 0] and ev["t"].tolist() == [0x012345, (1 << 23) - 1]


def test_encode_decode_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ev = make_events(
        rng.integers(0, 34, 100), rng.integers(0, 34, 100), rng.integers(0, 2, 100),
        np.sort(rng.integers(0, 1 << 23, 100)),
    )  # fmt: skip
    write_events(tmp_path / "a.bs2", ev)
    assert np.array_equal(read_events(tmp_path / "a.bs2"), ev)
    with pytest.raises(SpikeInputError):
        encode_events(make_events([0], [0], [2], [0]))


def test_bad_event_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_events(tmp_path / "nope.bs2")
    (tmp_path / "empty.bs2").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_events(tmp_path / "empty.bs2")
    (tmp_path / "cut.bs2").write_bytes(bytes(12))
    with pytest.raises(DataError, match="2 trailing bytes") as e:
        read_events(tmp_path / "cut.bs2")
    assert "cut.bs2" in str(e.value)


def test_original_nmnist_bin_sample(data_dir: Path) -> None:
    ev = read_events(data_dir / "tonic-samples" / "sample_nmnist.bin")
    assert len(ev) == 4325
    assert ev["x"].max() < 34 and ev["y"].max() < 34 and set(ev["p"].tolist()) == {0, 1}
    assert (np.diff(ev["t"]) >= 0).all() and 250_000 < ev["t"].max() < 350_000


def test_raster_positions_binning_and_clamp() -> None:
    #       unit  p*1156 + y*34 + x
    ev = make_events(
        x=[0, 0, 1, 33, 5, 5],
        y=[0, 0, 0, 33, 2, 2],
        p=[0, 0, 1, 1, 0, 0],
        t=[400, 499, 500, 1500, 2_600, 299_600],  # bins (round half-even): 0 0 0 2 3 300
    )
    r = events_to_raster(ev, T=300, dt_us=1000)
    assert r.shape == (300, 2312) and r.dtype == torch.float32
    assert r[0, 0] == 1 and r[0, 1156 + 1] == 1 and r[2, 1156 + 33 * 34 + 33] == 1
    assert r[3, 2 * 34 + 5] == 1 and r.sum() == 4  # last event (bin 300) dropped
    counts = events_to_raster(ev, T=300, dt_us=1000, clamp=False)
    assert counts[0, 0] == 2 and counts.sum() == 5
    merged = events_to_raster(ev, T=300, dt_us=1000, merge_polarity=True)
    assert merged.shape == (300, 1156) and merged[0, 1] == 1 and merged[0, 0] == 1
    floor = events_to_raster(ev, T=301, dt_us=1000, binning="floor")
    assert floor[1, 1156 + 33 * 34 + 33] == 1 and floor[299, 2 * 34 + 5] == 1
    with pytest.raises(SpikeInputError, match="outside the sensor"):
        events_to_raster(make_events([34], [0], [0], [0]), T=10, dt_us=1000)
    with pytest.raises(SpikeInputError, match="binning"):
        events_to_raster(ev, T=10, dt_us=1000, binning="ceil")


def test_nmnist_small_labels_match_mnist(data_dir: Path) -> None:
    ev, y = load_nmnist_small(data_dir, "train")
    assert len(ev) == 1000 and y.dtype == torch.int64
    _, mnist_y = load_mnist(data_dir, train=True)
    assert torch.equal(y, mnist_y[:1000])  # ids 1..1000 are MNIST train samples 0..999
    ev_t, y_t = load_nmnist_small(data_dir, "test")
    _, mnist_yt = load_mnist(data_dir, train=False)
    assert len(ev_t) == 100 and torch.equal(y_t, mnist_yt[:100])
    for e in ev[:50]:
        assert e["x"].max() < 34 and e["y"].max() < 34 and 250_000 < e["t"].max() < 400_000


def test_split_rasters_match_single_rasters(data_dir: Path) -> None:
    ev, _ = load_nmnist_small(data_dir, "test")
    X = nmnist_rasters(ev)
    assert X.shape == (100, 300, 2312) and X.dtype == torch.uint8
    for i in (0, 57, 99):
        assert torch.equal(X[i].float(), events_to_raster(ev[i], 300, 1000))
    Xm = nmnist_rasters(ev[:3], merge_polarity=True)
    assert torch.equal(Xm[1].float(), events_to_raster(ev[1], 300, 1000, merge_polarity=True))
    Xc = nmnist_rasters(ev[:3], clamp=False)
    assert torch.equal(Xc[2].float(), events_to_raster(ev[2], 300, 1000, clamp=False))


def test_matches_perez_nieves_reference_binning(data_dir: Path) -> None:
    """S3GD code: ts = round(t_s / 1e-3), unit = (x + 34 y + 1156 p) % 1156, keep ts < 300."""
    ev, _ = load_nmnist_small(data_dir, "test")
    e = ev[3]
    ts = np.round(e["t"] * 1e-6 / 1e-3).astype(int)
    us = (e["x"] + 34 * e["y"].astype(int) + 1156 * e["p"].astype(int)) % 1156
    ref = np.zeros((300, 1156), np.float32)
    ref[ts[ts < 300], us[ts < 300]] = 1
    assert np.array_equal(events_to_raster(e, 300, 1000, merge_polarity=True).numpy(), ref)


def test_dataset_and_time_major_batches(data_dir: Path) -> None:
    ds = NMNISTDataset(data_dir, split="test", T=100)
    x, label = ds[0]
    assert x.shape == (100, 2312) and label == 7
    xb, yb = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_time_major)))
    assert xb.shape == (100, 4, 2312) and yb.tolist() == [7, 2, 1, 0]
    assert ds.rasters().shape == (100, 100, 2312)


def test_label_file_errors(tmp_path: Path) -> None:
    p = tmp_path / "labels.txt"
    p.write_text("1\t5\n")
    with pytest.raises(DataError, match="header"):
        read_label_file(p)
    p.write_text("#sample #class\n1 5\n2 x\n")
    with pytest.raises(DataError, match=r"labels.txt:3"):
        read_label_file(p)


def test_missing_nmnist_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train1K.txt"):
        load_nmnist_small(tmp_path, "train")
    d = tmp_path / "nmnist-small"
    d.mkdir()
    (d / "test100.txt").write_text("#sample #class\n60001\t7\n")
    with pytest.raises(DataError) as e:
        load_nmnist_small(tmp_path, "test")
    assert str(d / "60001.bs2") in str(e.value)
    with pytest.raises(DataError, match="Train"):
        load_nmnist(tmp_path, "train")


def test_full_nmnist_layout(tmp_path: Path) -> None:
    for digit in range(10):
        d = tmp_path / "nmnist" / "Test" / str(digit)
        d.mkdir(parents=True)
        for k in (2, 10):
            write_events(d / f"{k}.bin", make_events([digit], [k], [1], [100 * k]))
    ev, y = load_nmnist(tmp_path, "test")
    assert y.tolist() == [d for d in range(10) for _ in (0, 1)]
    assert [int(e["y"][0]) for e in ev[:2]] == [2, 10]  # numeric order of file ids


def test_event_bins_refuses_meaningless_bin_widths() -> None:
    from sparsespike.data.events import event_bins

    t = np.array([0.0, 1499.0, 1501.0, 9999.0])
    assert event_bins(t, 1000.0).tolist() == [0, 1, 2, 10]
    assert event_bins(t, 1000.0, "floor").tolist() == [0, 1, 1, 9]
    for dt in (0.0, -1000.0, float("nan"), float("inf")):
        with pytest.raises(SpikeInputError, match="bin width"):
            event_bins(t, dt)
