"""SHD, N-MNIST and DVS Gesture through ``tonic`` (optional), as time-major rasters.

Our own loaders (:mod:`.nmnist`, :mod:`.shd`) stay the default and need nothing but numpy
(and h5py for SHD). This module is for users who keep tonic's copies of the datasets, want
tonic's download, or want its event transforms (``Denoise``, ``Downsample``, ...):

* files live where tonic puts them, under ``<data root>/tonic/<ClassName>/`` (``NMNIST``,
  ``SHD``, ``DVSGesture``), with the data root chosen as everywhere
  (:func:`~sparsespike.data.paths.resolve_data_dir`);
* nothing is downloaded unless ``download=True``; then tonic's own downloader fetches and
  checks (md5) the official archives. Without it a missing file is a
  :class:`~sparsespike.errors.DataError` that names the folder;
* events become rasters ``[T, C]`` (one sample) or ``uint8 [N, T, C]`` (a split), time-major as
  the rest of the pipeline, channel index ``p*H*W + y*W + x`` (as :mod:`.events`; SHD: the
  700 channels). ``spatial=True`` keeps ``[T, P, H, W]`` for convolutional networks.

Binning: ``binning="floor"`` (default here) is tonic's ``ToFrame(time_window=dt_us,
start_time=0, end_time=T*dt_us)`` (bin ``floor(t/dt)``, counts per bin); ``binning="round"`` is
our loaders' ``round(t/dt)`` (Perez-Nieves & Goodman), computed with :mod:`.events`. With
``clamp`` (default) a bin holds at most one spike.

Event times: tonic gives microseconds (N-MNIST: as recorded; SHD: ``int(t_s * 1e6)``,
truncated; DVS Gesture: tonic's preprocessed copy, whole milliseconds x 1000).

``tonic`` is imported lazily; install it with ``pip install 'sparsespike[tonic]'``
(``read_aedat4`` also needs ``aedat``).

Example::

    >>> ds = TonicRasterDataset("dvsgesture", split="test", T=300, dt_us=5000,
    ...                         downsample=0.25)                     # doctest: +SKIP
    >>> x, label = ds[0]; x.shape                                     # doctest: +SKIP
    torch.Size([300, 2048])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..optional import require
from .events import EVENT_DTYPE, bin_to_raster, event_bins, flat_raster_index
from .paths import resolve_data_dir

PathLike = str | os.PathLike[str] | None


@dataclass(frozen=True)
class TonicSpec:
    """A dataset reached through tonic: its class, sensor ``(W, H, P)`` and default binning."""

    class_name: str
    sensor_size: tuple[int, int, int]
    n_classes: int
    T: int
    dt_us: float
    source: str


TONIC_DATASETS: dict[str, TonicSpec] = {
    "nmnist": TonicSpec("NMNIST", (34, 34, 2), 10, 300, 1000.0, "Orchard et al. 2015"),
    "shd": TonicSpec("SHD", (700, 1, 1), 20, 500, 2000.0, "Cramer et al. 2022"),
    "dvsgesture": TonicSpec("DVSGesture", (128, 128, 2), 11, 300, 5000.0, "Amir et al. 2017"),
}
"""Names accepted here (the pipeline calls them ``tonic-<name>``)."""

TONIC_OPTION_KEYS = (
    "dt_us", "clamp", "binning", "denoise_us", "downsample", "merge_polarity", "spatial",
    "download",
)  # fmt: skip
"""Keys of ``data.encoding`` that :func:`load_tonic_split` takes (besides ``T``)."""


def require_tonic() -> ModuleType:
    """Import :mod:`tonic` lazily, with an error that says how to install it."""
    return require(
        "tonic",
        "the tonic datasets (tonic >= 1.4)",
        extra="tonic",
        note=". Our own loaders (DATASETS['nmnist'], ['shd']) do not need it.",
    )


def _spec(name: str) -> TonicSpec:
    if name not in TONIC_DATASETS:
        raise ValueError(f"unknown tonic dataset {name!r}; known: {', '.join(TONIC_DATASETS)}")
    return TONIC_DATASETS[name]


def downsampled_size(sensor_size: Sequence[int], factor: float | None) -> tuple[int, int, int]:
    """Sensor ``(W, H, P)`` after tonic's ``Downsample(spatial_factor=factor)`` (coordinates are
    multiplied by ``factor`` and truncated to integers): ``floor((W-1) f) + 1`` per axis."""
    w, h, p = (int(v) for v in sensor_size)
    if factor is None or factor == 1:
        return w, h, p
    if not 0 < factor <= 1:
        raise ValueError(f"downsample factor must be in (0, 1], got {factor}")
    w2 = int(np.floor((w - 1) * factor)) + 1
    h2 = int(np.floor((h - 1) * factor)) + 1 if h > 1 else h
    return w2, h2, p


def tonic_input_shape(
    name: str, downsample: float | None = None, merge_polarity: bool = False, spatial: bool = False
) -> tuple[int, ...]:
    """One sample's raster shape without ``T``: ``(C,)``, or ``(P, H, W)`` with ``spatial``."""
    w, h, p = downsampled_size(_spec(name).sensor_size, downsample)
    if merge_polarity:
        p = 1
    return (p, h, w) if spatial else (p * h * w,)


def _has(events: np.ndarray, field: str) -> bool:
    fields = events.dtype.fields or {}
    return field in fields  # names and titles (AEDAT4 events title 'p' the field 'on')


def plain_events(events: np.ndarray) -> np.ndarray:
    """Tonic-style events with plain fields ``x``, [``y``], ``t`` (int64), ``p`` (int64).

    Readers differ in field order, dtypes and titles (``tonic.io.read_aedat4`` gives
    ``t, x, y, on`` with ``p`` a title); ``ToFrame`` needs the names.
    """
    missing = [f for f in ("x", "t", "p") if not _has(events, f)]
    if missing:
        raise DataError(f"events lack fields {missing}; have {events.dtype.names}")
    keys = ["x", "y", "t", "p"] if _has(events, "y") else ["x", "t", "p"]
    out = np.empty(events.shape[0], dtype=[(k, np.int64) for k in keys])
    for k in keys:
        out[k] = np.asarray(events[k]).astype(np.int64)
    return out


def events_from_tonic(events: np.ndarray) -> np.ndarray:
    """Tonic's structured events (fields ``x``, [``y``], ``t``, ``p``) as our :data:`EVENT_DTYPE`.

    1-D sensors (SHD: ``x`` is the channel) get ``y = 0``; polarity becomes 0/1.
    """
    ev = plain_events(events)
    out = np.empty(ev.shape[0], dtype=EVENT_DTYPE)
    out["x"] = ev["x"]
    out["y"] = ev["y"] if "y" in (ev.dtype.names or ()) else 0
    out["p"] = ev["p"].astype(np.int8)
    out["t"] = ev["t"]
    return out


def _check_bounds(ev: np.ndarray, sensor: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x, y, p`` (int64) of the events, every one inside ``sensor`` ``(W, H, P)``; a one-channel
    sensor takes one polarity, read as channel 0 (as ``ToFrame`` does). Else a :class:`DataError`."""
    w, h, p = sensor
    x, y, pol = (ev[k].astype(np.int64) for k in ("x", "y", "p"))
    if p == 1 and pol.size:  # one polarity channel (SHD's p = 1)
        if np.unique(pol).size > 1:
            raise DataError("single-polarity sensor, but the events have both polarities")
        pol = np.zeros_like(pol)
    bad = (x < 0) | (x >= w) | (y < 0) | (y >= h) | (pol < 0) | (pol >= p)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"event {i} (x={x[i]}, y={y[i]}, p={pol[i]}) outside sensor {(w, h, p)}")
    return x, y, pol


def tonic_to_raster(
    events: np.ndarray,
    sensor_size: Sequence[int],
    T: int,
    dt_us: float,
    *,
    clamp: bool = True,
    binning: str = "floor",
    start_time: float = 0.0,
    spatial: bool = False,
) -> torch.Tensor:
    """Bin one sample of tonic events into a float32 raster ``[T, P*H*W]`` (or ``[T, P, H, W]``).

    ``sensor_size`` is tonic's ``(W, H, P)`` (SHD: ``(700, 1, 1)``). ``start_time`` (us) is the
    time of bin 0 (``events['t'][0]`` for recordings with absolute timestamps, e.g. AEDAT4).
    ``binning="floor"`` runs ``tonic.transforms.ToFrame``; ``"round"`` uses our
    ``round((t - start)/dt)`` binning. Events past ``T`` bins are dropped.
    """
    if T <= 0:
        raise ValueError(f"T must be > 0, got {T}")
    w, h, p = (int(v) for v in sensor_size)
    n_units = w * h * p
    if binning == "floor":
        tonic = require_tonic()
        ev = plain_events(events)  # a copy: ToFrame writes p = 0 in place on 1-polarity sensors
        # ToFrame indexes with the raw coordinates: a negative one wraps to the other side of
        # the sensor (p = -1 into the ON channel), a large one is a bare IndexError
        _check_bounds(events_from_tonic(events), (w, h, p))
        if len(ev) and np.any(np.diff(ev["t"]) < 0):
            ev = ev[np.argsort(ev["t"], kind="stable")]
        frame = tonic.transforms.ToFrame(
            sensor_size=(w, h, p), time_window=dt_us, start_time=start_time,
            end_time=start_time + T * dt_us,
        )  # fmt: skip
        if len(ev):
            frames = np.asarray(frame(ev))
        else:
            frames = np.zeros((T, p, h, w), dtype=np.int16)
        frames = frames.reshape(frames.shape[0], -1)[:T]
        counts = np.zeros((T, n_units), dtype=np.int64)
        counts[: frames.shape[0]] = frames
        raster = np.minimum(counts, 1) if clamp else counts
        out = torch.from_numpy(raster.astype(np.float32))
    elif binning == "round":
        ev = events_from_tonic(events)
        x, y, pol = _check_bounds(ev, (w, h, p))
        units = pol * (w * h) + y * w + x
        bins = event_bins(ev["t"].astype(np.float64) - start_time, dt_us, "round")
        flat = flat_raster_index(bins, units, T, n_units)
        out = torch.from_numpy(bin_to_raster(flat, T, n_units, clamp=clamp))
    else:
        raise ValueError(f"binning must be 'floor' or 'round', got {binning!r}")
    return out.reshape(T, p, h, w) if spatial else out


def _guarded(cls: type, allow_download: bool) -> type:
    """``cls`` whose ``download`` raises :class:`DataError` unless downloads are allowed.

    tonic places files under ``save_to/<class name>``, so the subclass keeps the name.
    """

    def download(self) -> None:
        if not allow_download:
            raise DataError(
                f"tonic {cls.__name__} files not found in {self.location_on_system} (tonic looks "
                f"for {getattr(self, 'filename', '?')} and its extracted folder there). Put the "
                f"files there, or pass download=True to let tonic download them from "
                f"{getattr(self, 'url', 'the official source')}."
            )
        cls.download(self)

    return type(cls.__name__, (cls,), {"download": download, "__module__": __name__})


class TonicRasterDataset(Dataset):
    """A tonic dataset yielding ``(float32 raster [T, C] or [T, P, H, W], label int)``.

    Args:
        name: ``"nmnist"``, ``"shd"`` or ``"dvsgesture"`` (:data:`TONIC_DATASETS`).
        root: data root; tonic's files are under ``<root>/tonic/<ClassName>/``.
        split: ``"train"`` or ``"test"``.
        T, dt_us: number of bins and bin width in microseconds (defaults per dataset:
            N-MNIST 300 x 1 ms, SHD 500 x 2 ms, DVS Gesture 300 x 5 ms).
        clamp, binning, spatial: see :func:`tonic_to_raster`.
        denoise_us: if set, tonic's ``Denoise(filter_time=denoise_us)`` first.
        downsample: if set, tonic's ``Downsample(spatial_factor=downsample)`` (e.g. 0.25 gives
            DVS Gesture 32 x 32).
        merge_polarity: tonic's ``MergePolarities`` (one polarity channel).
        event_transforms: further tonic transforms on the events (applied last).
        transform: applied to the raster.
        download: allow tonic to download missing files (default False: a DataError instead).
        dataset_kwargs: passed to the tonic class (e.g. ``first_saccade_only=True``).
    """

    def __init__(
        self,
        name: str,
        root: PathLike = None,
        split: str = "train",
        T: int | None = None,
        dt_us: float | None = None,
        *,
        clamp: bool = True,
        binning: str = "floor",
        spatial: bool = False,
        denoise_us: float | None = None,
        downsample: float | None = None,
        merge_polarity: bool = False,
        event_transforms: Sequence[Callable] = (),
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        download: bool = False,
        dataset_kwargs: dict[str, Any] | None = None,
    ) -> None:
        tonic = require_tonic()
        spec = _spec(name)
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
        self.name, self.split, self.spec = name, split, spec
        self.T = int(T or spec.T)
        self.dt_us = float(dt_us or spec.dt_us)
        self.clamp, self.binning, self.spatial = clamp, binning, spatial
        self.transform = transform
        tf: list[Callable] = []
        if denoise_us:
            tf.append(tonic.transforms.Denoise(filter_time=denoise_us))
        if downsample not in (None, 1, 1.0):
            tf.append(tonic.transforms.Downsample(spatial_factor=downsample))
        if merge_polarity:
            tf.append(tonic.transforms.MergePolarities())
        tf.extend(event_transforms)
        w, h, p = downsampled_size(spec.sensor_size, downsample)
        self.sensor_size = (w, h, 1 if merge_polarity else p)
        self.save_to = resolve_data_dir(root) / "tonic"
        cls = _guarded(getattr(tonic.datasets, spec.class_name), download)
        if download:
            self.save_to.mkdir(parents=True, exist_ok=True)
        try:
            self.tonic_dataset = cls(
                str(self.save_to), train=split == "train",
                transform=tonic.transforms.Compose(tf) if tf else None, **(dataset_kwargs or {}),
            )  # fmt: skip
        except DataError:
            raise
        except (OSError, KeyError, ValueError) as e:
            raise DataError(
                f"tonic {spec.class_name} under {self.save_to / spec.class_name} cannot be read "
                f"({type(e).__name__}: {e})"
            ) from e

    @property
    def input_shape(self) -> tuple[int, ...]:
        w, h, p = self.sensor_size
        return (p, h, w) if self.spatial else (p * h * w,)

    def __len__(self) -> int:
        return len(self.tonic_dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        events, label = self.tonic_dataset[i]
        x = tonic_to_raster(
            events, self.sensor_size, self.T, self.dt_us, clamp=self.clamp,
            binning=self.binning, spatial=self.spatial,
        )  # fmt: skip
        if self.transform is not None:
            x = self.transform(x)
        return x, int(np.asarray(label).reshape(-1)[0])

    def rasters(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The split (or its first ``limit`` samples) as ``(uint8 [N, T, ...], int64 labels [N])``.

        Counts saturate at 255 without ``clamp``.
        """
        n = len(self) if limit is None else min(limit, len(self))
        xs = torch.zeros((n, self.T, *self.input_shape), dtype=torch.uint8)
        ys = torch.zeros(n, dtype=torch.int64)
        for i in range(n):
            x, y = self[i]
            xs[i] = x.clamp(0, 255).to(torch.uint8)
            ys[i] = y
        return xs, ys


def load_tonic_split(
    name: str,
    root: PathLike = None,
    split: str = "train",
    T: int | None = None,
    limit: int | None = None,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as ``(uint8 [N, T, C] or [N, T, P, H, W], labels int64 [N])`` for the
    pipeline's ``raster`` encoding; ``options`` are :data:`TONIC_OPTION_KEYS`."""
    unknown = sorted(set(options) - set(TONIC_OPTION_KEYS))
    if unknown:
        raise ValueError(f"unknown tonic options {unknown}; valid: {', '.join(TONIC_OPTION_KEYS)}")
    ds = TonicRasterDataset(name, root, split, T, **options)
    return ds.rasters(limit)


__all__ = [
    "TONIC_DATASETS",
    "TONIC_OPTION_KEYS",
    "TonicRasterDataset",
    "TonicSpec",
    "downsampled_size",
    "events_from_tonic",
    "plain_events",
    "load_tonic_split",
    "require_tonic",
    "tonic_input_shape",
    "tonic_to_raster",
]
