"""Writes small files in the SHD HDF5 layout (Cramer et al. 2022) for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def write_shd(path: Path, samples, labels, extra: bool = False) -> None:
    """``samples``: ``(times_s, units)`` pairs; ``extra`` adds the ``extra/`` group of the real files."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        vt = h5py.vlen_dtype(np.dtype("float32"))
        vu = h5py.vlen_dtype(np.dtype("uint16"))
        times = f.create_dataset("spikes/times", (len(samples),), dtype=vt)
        units = f.create_dataset("spikes/units", (len(samples),), dtype=vu)
        for i, (t, u) in enumerate(samples):
            times[i] = np.asarray(t, np.float32)
            units[i] = np.asarray(u, np.uint16)
        f.create_dataset("labels", data=np.asarray(labels, np.uint16))
        if extra:
            f.create_dataset("extra/keys", data=np.array([b"k%d" % i for i in range(20)]))
            f.create_dataset("extra/speaker", data=np.zeros(len(samples), np.uint16))
