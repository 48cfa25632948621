"""Address-event data: the 40-bit N-MNIST event format, and binning events into spike rasters.

File format (Orchard et al., "Converting static image datasets to spiking neuromorphic
datasets using saccades", Front. Neurosci. 2015, dataset README; identical to SLAYER's
``read2Dspikes`` / ``.bs2`` files): each event is 5 bytes, i.e. one big-endian 40-bit word,

    bits 39-32  x address (8 bit)
    bits 31-24  y address (8 bit)
    bit  23     polarity (0 = OFF, 1 = ON)
    bits 22-0   timestamp in microseconds (23 bit, so at most 8.39 s)

Binning (Perez-Nieves & Goodman, NeurIPS 2021, code ``train_and_time.py:
sparse_data_generator_h5``): the time bin of an event is ``round(t / dt)`` (numpy's
round-half-to-even), events with bin >= T are dropped, input unit = ``x + W*y + W*H*p``, and a
bin holding several events of one unit is clamped to one spike. ``binning="floor"`` gives the
more common ``floor(t / dt)`` instead.

Rasters are time-major: one sample is ``[T, C]``; :func:`collate_time_major` stacks samples into
``[T, B, C]`` for the time-stepped engine.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, SpikeInputError

EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("p", np.int8), ("t", np.int64)])
"""Structured dtype of decoded events: pixel column x, row y, polarity p (0/1), time t (us)."""

BINNINGS = ("round", "floor")


def decode_events(raw: bytes | np.ndarray, source: str | os.PathLike[str] = "<bytes>") -> np.ndarray:
    """Decode a buffer of 40-bit events into a structured array with :data:`EVENT_DTYPE`."""
    b = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, bytes | bytearray) else raw
    if b.size % 5 != 0:
        raise DataError(
            f"{source}: {b.size} bytes is not a whole number of 5-byte events "
            f"({b.size % 5} trailing bytes; file truncated or not in the 40-bit event format)"
        )
    e = b.reshape(-1, 5)
    out = np.empty(e.shape[0], dtype=EVENT_DTYPE)
    out["x"] = e[:, 0]
    out["y"] = e[:, 1]
    out["p"] = e[:, 2] >> 7
    out["t"] = (e[:, 2].astype(np.int64) & 0x7F) << 16 | e[:, 3].astype(np.int64) << 8 | e[:, 4].astype(np.int64)
    return out


def read_events(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one 40-bit event file (N-MNIST ``.bin``, SLAYER ``.bs2``) into a structured array.

    Fields ``x, y, p, t`` (see :data:`EVENT_DTYPE`), times in microseconds, file order.
    Raises :class:`DataError` naming the file if it is missing, empty or has trailing bytes.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"event file not found: {p}")
    raw = p.read_bytes()
    if len(raw) == 0:
        raise DataError(f"{p}: event file is empty; expected 5-byte events")
    return decode_events(raw, p)


def encode_events(events: np.ndarray) -> bytes:
    """Inverse of :func:`decode_events`: pack events into 40-bit words (for writing test files)."""
    x, y, p, t = (np.asarray(events[k]).astype(np.int64) for k in ("x", "y", "p", "t"))
    if (x < 0).any() or (x > 255).any() or (y < 0).any() or (y > 255).any():
        raise SpikeInputError("event x and y must be in 0..255 for the 40-bit format")
    if ((p != 0) & (p != 1)).any():
        raise SpikeInputError("event polarity must be 0 or 1")
    if (t < 0).any() or (t >= 1 << 23).any():
        raise SpikeInputError("event times must be in 0..8388607 us (23 bit)")
    out = np.empty((x.size, 5), dtype=np.uint8)
    out[:, 0] = x
    out[:, 1] = y
    out[:, 2] = (p << 7) | (t >> 16)
    out[:, 3] = (t >> 8) & 0xFF
    out[:, 4] = t & 0xFF
    return out.tobytes()


def write_events(path: str | os.PathLike[str], events: np.ndarray) -> None:
    """Write events in the 40-bit format (inverse of :func:`read_events`)."""
    Path(path).write_bytes(encode_events(events))


def make_events(x: Sequence[int], y: Sequence[int], p: Sequence[int], t: Sequence[int]) -> np.ndarray:
    """Build a structured event array from four equal-length sequences."""
    n = len(t)
    if not (len(x) == len(y) == len(p) == n):
        raise SpikeInputError("x, y, p and t must have the same length")
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["x"], ev["y"], ev["p"], ev["t"] = x, y, p, t
    return ev


def event_units(
    events: np.ndarray,
    size: tuple[int, int] = (34, 34),
    polarities: int = 2,
    merge_polarity: bool = False,
) -> np.ndarray:
    """Input-unit index of each event: ``x + W*y + W*H*p`` (or ``x + W*y`` when merged).

    ``size`` is ``(W, H)`` = (width, height), as in tonic's ``sensor_size``.
    """
    w, h = size
    x = events["x"].astype(np.int64)
    y = events["y"].astype(np.int64)
    p = events["p"].astype(np.int64)
    bad = (x < 0) | (x >= w) | (y < 0) | (y >= h) | (p < 0) | (p >= polarities)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SpikeInputError(
            f"event {i} (x={x[i]}, y={y[i]}, p={p[i]}) is outside the sensor "
            f"size (W={w}, H={h}) x {polarities} polarities"
        )
    unit = x + w * y
    if not merge_polarity:
        unit = unit + (w * h) * p
    return unit


def event_bins(t: np.ndarray, dt: float, binning: str = "round") -> np.ndarray:
    """Time-bin index of each time ``t`` for bin width ``dt`` (same unit): round or floor."""
    if not 0 < dt < math.inf:  # also refuses NaN, which compares false with everything
        raise SpikeInputError(f"bin width must be a finite number > 0, got {dt}")
    q = np.asarray(t, dtype=np.float64) / float(dt)
    if binning == "round":
        return np.round(q).astype(np.int64)
    if binning == "floor":
        return np.floor(q).astype(np.int64)
    raise SpikeInputError(f"binning must be one of {BINNINGS}, got {binning!r}")


def flat_raster_index(bins: np.ndarray, units: np.ndarray, T: int, n_units: int) -> np.ndarray:
    """Flat indices ``bin * n_units + unit`` of the events with ``0 <= bin < T``."""
    keep = (bins >= 0) & (bins < T)
    return bins[keep] * n_units + units[keep]


def bin_to_raster(
    flat: np.ndarray, T: int, n_units: int, clamp: bool = True, dtype: np.dtype | type = np.float32
) -> np.ndarray:
    """Dense ``[T, n_units]`` raster from flat indices (counts, or 0/1 when ``clamp``)."""
    counts = np.bincount(flat, minlength=T * n_units)
    if clamp:
        np.minimum(counts, 1, out=counts)
    elif np.dtype(dtype) == np.uint8:
        np.minimum(counts, 255, out=counts)
    return counts.astype(dtype, copy=False).reshape(T, n_units)


def events_to_raster(
    events: np.ndarray,
    T: int,
    dt_us: float,
    size: tuple[int, int] = (34, 34),
    polarities: int = 2,
    merge_polarity: bool = False,
    clamp: bool = True,
    binning: str = "round",
) -> torch.Tensor:
    """Bin 2-D events into a time-major spike raster ``[T, C]`` (float32).

    ``C = polarities * W * H`` with unit index ``p*W*H + y*W + x``, or ``C = W*H`` with
    ``merge_polarity`` (Perez-Nieves' ``% 1156``). Events in bins ``>= T`` are dropped. With
    ``clamp`` (default) a bin is 1 however many events fall in it; otherwise it holds the count.

    Example (N-MNIST as in Perez-Nieves & Goodman: 1 ms bins, 300 steps):
        >>> ev = make_events([0, 33], [0, 33], [0, 1], [400, 2600])
        >>> r = events_to_raster(ev, T=300, dt_us=1000)
        >>> tuple(r.shape), r.sum().item(), r[0, 0].item(), r[3, 1156 + 33 * 34 + 33].item()
        ((300, 2312), 2.0, 1.0, 1.0)
    """
    if T <= 0:
        raise SpikeInputError(f"T must be > 0, got {T}")
    w, h = size
    n_units = w * h * (1 if merge_polarity else polarities)
    units = event_units(events, size, polarities, merge_polarity)
    bins = event_bins(events["t"], dt_us, binning)
    flat = flat_raster_index(bins, units, T, n_units)
    return torch.from_numpy(bin_to_raster(flat, T, n_units, clamp=clamp))


def collate_time_major(
    batch: Sequence[tuple[torch.Tensor, int | torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``DataLoader`` collate: stack ``[T, ...]`` samples into ``[T, B, ...]`` and labels to [B]."""
    xs = torch.stack([b[0] for b in batch], dim=1)
    ys = torch.as_tensor([int(b[1]) for b in batch], dtype=torch.int64)
    return xs, ys
