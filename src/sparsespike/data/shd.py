"""Spiking Heidelberg Digits (SHD) from the official HDF5 files.

Source: Cramer, Stradmann, Schemmel & Zenke, "The Heidelberg spiking data sets for the
systematic evaluation of spiking neural networks", IEEE TNNLS 33(7), 2022 (sec. III, file
layout): ``spikes/times`` (one variable-length array of spike times in seconds per sample),
``spikes/units`` (the matching input channel ids, 0..699) and ``labels`` (0..19; 0-9 German,
10-19 English digits). 8,156 train / 2,264 test samples.

Binning follows Perez-Nieves & Goodman (NeurIPS 2021; METHODS.md 1(b)): bin ``round(t/2 ms)``,
500 steps (1 s), later spikes dropped, bins clamped to one spike per unit.

Files: ``<root>/shd/shd_train.h5`` and ``shd_test.h5``, or the downloaded ``.h5.gz`` (read
through an in-memory decompression). ``h5py`` is needed only here and is imported lazily:
``pip install h5py``. No checksum is verified (the published md5s are of the ``.gz`` files
and are not reproduced reliably in public code); the structure and value ranges are checked.

Example:
    >>> ds = SHDDataset(split="test")                     # doctest: +SKIP
    >>> ds[0][0].shape                                     # doctest: +SKIP
    torch.Size([500, 700])
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..optional import require
from .events import bin_to_raster, event_bins, flat_raster_index
from .paths import find_dataset_dir

N_UNITS = 700
N_CLASSES = 20
T_DEFAULT = 500
DT_S_DEFAULT = 2e-3
SPLIT_FILES = {"train": "shd_train.h5", "test": "shd_test.h5"}

ShdEvents = tuple[np.ndarray, np.ndarray]
"""One sample: (spike times in seconds, float64; channel ids, int64)."""


def _h5py() -> ModuleType:
    return require("h5py", "reading the SHD HDF5 files")


def _locate(folder: Path, split: str) -> Path:
    name = SPLIT_FILES[split]
    for cand in (folder / name, folder / f"{name}.gz"):
        if cand.is_file():
            return cand
    raise DataError(
        f"SHD file not found: {folder / name} (nor {folder / name}.gz); the folder should "
        f"contain {', '.join(SPLIT_FILES.values())} (or the .h5.gz downloads)"
    )


def read_shd_file(path: str | os.PathLike[str]) -> tuple[list[ShdEvents], np.ndarray]:
    """Read one SHD HDF5 file (``.h5`` or ``.h5.gz``): ``(events per sample, labels int64)``."""
    h5py = _h5py()
    p = Path(path)
    try:
        if p.suffix == ".gz":
            with gzip.open(p, "rb") as f:
                source: io.BytesIO | Path = io.BytesIO(f.read())
        else:
            source = p
        with h5py.File(source, "r") as f:
            missing = [k for k in ("spikes/times", "spikes/units", "labels") if k not in f]
            if missing:
                raise DataError(
                    f"{p}: HDF5 file lacks {', '.join(missing)}; expected the SHD layout "
                    "spikes/times, spikes/units, labels"
                )
            times = f["spikes/times"][:]
            units = f["spikes/units"][:]
            labels = np.asarray(f["labels"][:], dtype=np.int64)
    except DataError:
        raise
    except (OSError, EOFError, KeyError, ValueError, zlib.error) as e:  # zlib: a damaged .gz stream
        raise DataError(f"{p}: cannot read as an SHD HDF5 file ({e})") from e
    n = labels.shape[0]
    if len(times) != n or len(units) != n:
        raise DataError(f"{p}: {len(times)} time arrays, {len(units)} unit arrays, {n} labels; expected equal")
    if n and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise DataError(f"{p}: labels outside 0..{N_CLASSES - 1}")
    events: list[ShdEvents] = []
    for i in range(n):
        t = np.asarray(times[i], dtype=np.float64)
        u = np.asarray(units[i], dtype=np.int64)
        if t.shape != u.shape:
            raise DataError(f"{p}: sample {i} has {t.size} times but {u.size} units")
        if u.size and (u.min() < 0 or u.max() >= N_UNITS):
            raise DataError(f"{p}: sample {i} has channel ids outside 0..{N_UNITS - 1}")
        if t.size and (not np.isfinite(t).all() or t.min() < 0):
            raise DataError(f"{p}: sample {i} has negative or non-finite spike times")
        events.append((t, u))
    return events, labels


def load_shd(root: str | os.PathLike[str] | None = None, split: str = "train") -> tuple[list[ShdEvents], torch.Tensor]:
    """SHD events from ``<root>/shd/``: ``(list of (times_s, units), labels int64 [N])``."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown SHD split {split!r}; expected 'train' or 'test'")
    folder = find_dataset_dir(root, "shd", list(SPLIT_FILES.values()))
    events, labels = read_shd_file(_locate(folder, split))
    return events, torch.from_numpy(labels)


def shd_raster(
    times_s: np.ndarray,
    units: np.ndarray,
    T: int = T_DEFAULT,
    dt_s: float = DT_S_DEFAULT,
    clamp: bool = True,
    binning: str = "round",
    n_units: int = N_UNITS,
) -> torch.Tensor:
    """Bin one sample into a time-major float32 raster ``[T, 700]`` (Perez-Nieves: 2 ms, 500)."""
    flat = flat_raster_index(event_bins(times_s, dt_s, binning), np.asarray(units), T, n_units)
    return torch.from_numpy(bin_to_raster(flat, T, n_units, clamp=clamp))


def shd_rasters(
    events: Sequence[ShdEvents],
    T: int = T_DEFAULT,
    dt_s: float = DT_S_DEFAULT,
    clamp: bool = True,
    binning: str = "round",
) -> torch.Tensor:
    """Bin many samples into ``uint8 [N, T, 700]`` (the whole train split is 2.9 GB: slice it)."""
    out = np.zeros((len(events), T * N_UNITS), dtype=np.uint8)
    for i, (t, u) in enumerate(events):
        flat = flat_raster_index(event_bins(t, dt_s, binning), np.asarray(u), T, N_UNITS)
        if clamp:
            out[i, flat] = 1
        else:
            out[i] = bin_to_raster(flat, T, N_UNITS, clamp=False, dtype=np.uint8).reshape(-1)
    return torch.from_numpy(out).view(len(events), T, N_UNITS)


class SHDDataset(Dataset):
    """SHD as time-major rasters: item ``i`` is ``(float32 [T, 700], label int)``.

    Events are read once and binned on access; batch with
    :func:`~sparsespike.data.events.collate_time_major` for ``[T, B, 700]``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        split: str = "train",
        T: int = T_DEFAULT,
        dt_s: float = DT_S_DEFAULT,
        clamp: bool = True,
        binning: str = "round",
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.events, self.labels = load_shd(root, split)
        self.T = T
        self.dt_s = dt_s
        self.clamp = clamp
        self.binning = binning
        self.transform = transform

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        t, u = self.events[i]
        x = shd_raster(t, u, self.T, self.dt_s, self.clamp, self.binning)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])
