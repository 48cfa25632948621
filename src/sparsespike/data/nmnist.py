"""N-MNIST: saccade recordings of MNIST digits on a 34x34 ATIS sensor, two polarities.

Source: Orchard, Jayawant, Cohen & Thakor, "Converting static image datasets to spiking
neuromorphic datasets using saccades", Front. Neurosci. 9:437 (2015). Event format: 40-bit words
(see :mod:`sparsespike.data.events`). Each recording lasts ~300 ms (three 100 ms saccades).

Two on-disk layouts are read:

* ``<root>/nmnist-small/``: the 1,000-train / 100-test subset shipped with SLAYER
  (``train1K.txt`` / ``test100.txt``, a ``#sample #class`` header line then one
  ``<id> <class>`` pair per line; events in ``<id>.bs2``);
* ``<root>/nmnist/{Train,Test}/<digit>/<id>.bin``: the full original release (60,000 / 10,000).

Rasters follow Perez-Nieves & Goodman (NeurIPS 2021; METHODS.md 1(b)): 1 ms bins
(``round(t/1ms)``), 300 steps, one spike per bin and unit at most. Both polarities are kept by
default (2 x 34 x 34 = 2312 units, index ``p*1156 + y*34 + x``); ``merge_polarity=True`` gives the
reference code's 1156 merged units.

Example:
    >>> ds = NMNISTDataset(split="test")                  # doctest: +SKIP
    >>> x, label = ds[0]; x.shape                          # doctest: +SKIP
    torch.Size([300, 2312])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .events import (
    bin_to_raster,
    event_bins,
    event_units,
    events_to_raster,
    flat_raster_index,
    read_events,
)
from .paths import find_dataset_dir, require_file

SENSOR_SIZE = (34, 34)
N_UNITS = 2 * 34 * 34
SMALL_LABEL_FILES = {"train": "train1K.txt", "test": "test100.txt"}
FULL_SPLIT_DIRS = {"train": "Train", "test": "Test"}
T_DEFAULT = 300
DT_US_DEFAULT = 1000.0


def read_label_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Parse a ``#sample #class`` label file into ``(sample ids int64, labels int64)``."""
    p = Path(path)
    require_file(p, "N-MNIST label file")
    lines = p.read_text().splitlines()
    if not lines or not lines[0].lstrip().startswith("#"):
        raise DataError(f"{p}: expected a header line '#sample #class', got {lines[:1]!r}")
    ids: list[int] = []
    labels: list[int] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split()
        try:
            sid, lab = (int(v) for v in parts) if len(parts) == 2 else (None, None)
        except ValueError:
            sid = lab = None
        if sid is None or lab is None or not 0 <= lab <= 9:
            raise DataError(f"{p}:{lineno}: expected '<sample id> <class 0-9>', got {line!r}")
        ids.append(sid)
        labels.append(lab)
    if not ids:
        raise DataError(f"{p}: no samples listed after the header")
    return np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)


def check_nmnist_events(events: np.ndarray, source: str | os.PathLike[str]) -> np.ndarray:
    """Check that events fit the 34x34 sensor and times do not decrease; return them."""
    if events.size == 0:
        raise DataError(f"{source}: no events")
    if events["x"].max() >= 34 or events["y"].max() >= 34:
        raise DataError(
            f"{source}: event address up to x={events['x'].max()}, y={events['y'].max()}; "
            "expected x, y < 34 (is this an N-MNIST file?)"
        )
    if (np.diff(events["t"]) < 0).any():
        raise DataError(f"{source}: event times decrease; expected time-ordered events")
    return events


def load_nmnist_small(
    root: str | os.PathLike[str] | None = None, split: str = "train"
) -> tuple[list[np.ndarray], torch.Tensor]:
    """The SLAYER N-MNIST subset: ``(events per sample, labels int64 [N])``.

    ``split='train'`` reads ``train1K.txt`` (1,000 samples), ``'test'`` reads ``test100.txt``
    (100 samples); each event array has fields ``x, y, p, t`` (t in microseconds).
    """
    if split not in SMALL_LABEL_FILES:
        raise ValueError(f"unknown N-MNIST split {split!r}; expected 'train' or 'test'")
    expected = [*SMALL_LABEL_FILES.values(), "<id>.bs2 per sample"]
    folder = find_dataset_dir(root, "nmnist-small", expected)
    label_file = require_file(folder / SMALL_LABEL_FILES[split], "N-MNIST-small labels", expected)
    ids, labels = read_label_file(label_file)
    events = []
    for sid in ids:
        path = folder / f"{sid}.bs2"
        if not path.is_file():
            raise DataError(f"event file not found: {path} (listed in {label_file})")
        events.append(check_nmnist_events(read_events(path), path))
    return events, torch.from_numpy(labels)


def load_nmnist(
    root: str | os.PathLike[str] | None = None, split: str = "train"
) -> tuple[list[np.ndarray], torch.Tensor]:
    """The full original N-MNIST from ``<root>/nmnist/{Train,Test}/<digit>/<id>.bin``.

    Samples are ordered by digit, then by numeric file id. Returns ``(events, labels)``.
    """
    if split not in FULL_SPLIT_DIRS:
        raise ValueError(f"unknown N-MNIST split {split!r}; expected 'train' or 'test'")
    expected = [f"{d}/<digit 0-9>/<id>.bin" for d in FULL_SPLIT_DIRS.values()]
    folder = find_dataset_dir(root, "nmnist", expected) / FULL_SPLIT_DIRS[split]
    if not folder.is_dir():
        raise DataError(f"N-MNIST split folder not found: {folder} (expected {', '.join(expected)})")
    events: list[np.ndarray] = []
    labels: list[int] = []
    for digit in range(10):
        ddir = folder / str(digit)
        if not ddir.is_dir():
            raise DataError(f"N-MNIST class folder not found: {ddir}")
        files = sorted(ddir.glob("*.bin"), key=lambda q: (len(q.stem), q.stem))
        if not files:
            raise DataError(f"no .bin event files in {ddir}")
        for f in files:
            events.append(check_nmnist_events(read_events(f), f))
            labels.append(digit)
    return events, torch.tensor(labels, dtype=torch.int64)


def nmnist_rasters(
    events: Sequence[np.ndarray],
    T: int = T_DEFAULT,
    dt_us: float = DT_US_DEFAULT,
    merge_polarity: bool = False,
    clamp: bool = True,
    binning: str = "round",
) -> torch.Tensor:
    """Bin a whole split into one ``uint8`` tensor ``[N, T, C]`` (C = 2312, or 1156 merged).

    uint8 keeps 1,000 x 300 x 2312 at 0.7 GB; slice a batch, ``.float()`` it and transpose to
    ``[T, B, C]`` for the engine. Without ``clamp`` counts saturate at 255.
    """
    n_units = N_UNITS // 2 if merge_polarity else N_UNITS
    out = np.zeros((len(events), T * n_units), dtype=np.uint8)
    for i, ev in enumerate(events):
        units = event_units(ev, SENSOR_SIZE, 2, merge_polarity)
        flat = flat_raster_index(event_bins(ev["t"], dt_us, binning), units, T, n_units)
        if clamp:
            out[i, flat] = 1
        else:
            out[i] = bin_to_raster(flat, T, n_units, clamp=False, dtype=np.uint8).reshape(-1)
    return torch.from_numpy(out).view(len(events), T, n_units)


class NMNISTDataset(Dataset):
    """N-MNIST as time-major rasters: item ``i`` is ``(float32 [T, C], label int)``.

    Events are held in memory and binned on access. ``full=False`` (default) reads
    ``nmnist-small``; ``full=True`` the original layout under ``<root>/nmnist``. Use
    :func:`~sparsespike.data.events.collate_time_major` as the ``DataLoader`` collate to get
    ``[T, B, C]`` batches. ``transform`` (optional) is applied to the raster.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        split: str = "train",
        T: int = T_DEFAULT,
        dt_us: float = DT_US_DEFAULT,
        merge_polarity: bool = False,
        clamp: bool = True,
        binning: str = "round",
        full: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        loader = load_nmnist if full else load_nmnist_small
        self.events, self.labels = loader(root, split)
        self.T = T
        self.dt_us = dt_us
        self.merge_polarity = merge_polarity
        self.clamp = clamp
        self.binning = binning
        self.transform = transform

    @property
    def n_units(self) -> int:
        return N_UNITS // 2 if self.merge_polarity else N_UNITS

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = events_to_raster(
            self.events[i],
            self.T,
            self.dt_us,
            size=SENSOR_SIZE,
            polarities=2,
            merge_polarity=self.merge_polarity,
            clamp=self.clamp,
            binning=self.binning,
        )
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])

    def rasters(self) -> torch.Tensor:
        """The whole split as ``uint8 [N, T, C]`` (see :func:`nmnist_rasters`)."""
        return nmnist_rasters(self.events, self.T, self.dt_us, self.merge_polarity, self.clamp, self.binning)
