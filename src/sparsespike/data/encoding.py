"""Encoding analogue inputs as spikes: latency (one spike, time from value), rate (Bernoulli).

All inputs are values in [0, 1] (a ``uint8`` tensor is read as ``pixel / 255``); anything else,
NaN or infinity included, is a :class:`~sparsespike.errors.SpikeInputError`. Rasters are
time-major ``[T, *x.shape]`` (``[T, B, ...]`` for a batch) float32 tensors of 0/1.

* **Linear latency** (Fontanini et al. 2024, sec. 4 "Encodings"; Wunderlich & Pehle 2021,
  ``eventprop/yinyang.py``): ``t = t_min + v (t_max - t_min)`` with ``v = 1 - x`` for
  ``direction='bright_early'`` (bright pixels spike first, the default for MNIST, METHODS.md
  section 2 pitfalls) or ``v = x`` for ``'bright_late'`` (Yin-Yang coordinates, as in W&P).
* **Current-to-firing-time** (Perez-Nieves & Goodman 2021, code ``current2firing_time``, after
  Zenke & Ganguli's SpyTorch tutorial; METHODS.md 1(b)): a LIF neuron driven by a constant
  current ``x`` fires at ``t = tau_eff * ln(x / (x - thr))`` if ``x > thr`` and never otherwise.
  :func:`firing_time_raster` puts the spike at step ``int(t)`` (truncation, as the reference's
  ``np.array(..., dtype=int)``) and drops spikes at step ``>= T``; with ``tau_eff = 20``,
  ``thr = 0.2`` and 8-bit pixels the latest spike is at step 79, so T = 100 loses none.
* **Rate** (Bernoulli): at every step, spike with probability ``x``, from a ``torch.Generator``.

Example:
    >>> x = torch.tensor([[0.0, 0.5, 1.0]])
    >>> latency_times(x, t_min=0.0, t_max=20.0)
    tensor([[20., 10.,  0.]])
    >>> firing_time_raster(torch.tensor([[255, 0]], dtype=torch.uint8), T=100).nonzero().tolist()
    [[4, 0, 0]]
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..errors import SpikeInputError

DIRECTIONS = ("bright_early", "bright_late")
KINDS = ("linear", "current")


def as_unit_interval(x: torch.Tensor | np.ndarray, name: str = "x") -> torch.Tensor:
    """Return ``x`` as a float tensor in [0, 1]; uint8 is divided by 255; else SpikeInputError."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise SpikeInputError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255.0
    if not x.is_floating_point():
        raise SpikeInputError(f"{name} must be a float tensor with values in [0, 1] (or uint8 pixels), got {x.dtype}")
    if x.numel() == 0:
        return x
    if not bool(torch.isfinite(x).all()):
        raise SpikeInputError(f"{name} contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise SpikeInputError(f"{name} must lie in [0, 1], got values in [{lo}, {hi}]")
    return x


def latency_times(
    x: torch.Tensor,
    t_min: float = 0.0,
    t_max: float = 20.0,
    direction: str = "bright_early",
    kind: str = "linear",
    tau: float = 20.0,
    thr: float = 0.2,
    silent_below: float | None = None,
) -> torch.Tensor:
    """Spike time of each input value (same shape as ``x``), ``+inf`` where no spike.

    ``kind='linear'``: ``t = t_min + v (t_max - t_min)`` with ``v = 1 - x`` (``bright_early``) or
    ``v = x`` (``bright_late``); every value spikes unless ``silent_below`` is given, in which
    case values ``< silent_below`` do not. ``kind='current'``: ``t = t_min + tau ln(x/(x-thr))``
    for ``x > thr``, no spike otherwise or when ``t > t_max`` (bright_early only).
    Times are in the caller's unit (ms for the event engine). Output dtype follows ``x``
    (float32 for uint8 input).
    """
    x = as_unit_interval(x)
    if direction not in DIRECTIONS:
        raise SpikeInputError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if kind not in KINDS:
        raise SpikeInputError(f"kind must be one of {KINDS}, got {kind!r}")
    if not math.isfinite(t_min) or math.isnan(t_max) or t_max < t_min:
        raise SpikeInputError(f"need finite t_min <= t_max, got t_min={t_min}, t_max={t_max}")
    if kind == "linear" and not math.isfinite(t_max):
        raise SpikeInputError(f"kind='linear' needs a finite t_max, got {t_max}")
    inf = torch.full_like(x, math.inf)
    if kind == "linear":
        v = 1.0 - x if direction == "bright_early" else x
        t = t_min + v * (t_max - t_min)
        if silent_below is not None:
            t = torch.where(x < silent_below, inf, t)
        return t
    if direction != "bright_early":
        raise SpikeInputError("kind='current' is bright-early by construction; use direction='bright_early'")
    if tau <= 0 or not 0 < thr < 1:
        raise SpikeInputError(f"need tau > 0 and 0 < thr < 1, got tau={tau}, thr={thr}")
    above = x > thr
    safe = torch.where(above, x, torch.ones_like(x))
    t = t_min + tau * torch.log(safe / (safe - thr))
    return torch.where(above & (t <= t_max), t, inf)


def times_to_raster(steps: torch.Tensor, T: int) -> torch.Tensor:
    """One-hot spike raster ``[T, *steps.shape]`` from integer-valued spike steps.

    Entries that are not finite, negative or ``>= T`` give no spike.
    """
    if T <= 0:
        raise SpikeInputError(f"T must be > 0, got {T}")
    return _one_hot_raster(*_steps_in_range(steps, T), T)


def _steps_in_range(steps: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 steps (0 where there is no spike) and the mask of the finite steps in ``[0, T)``."""
    valid = torch.isfinite(steps) & (steps >= 0) & (steps < T)
    return torch.where(valid, steps, torch.zeros_like(steps)).long(), valid


def _one_hot_raster(idx: torch.Tensor, valid: torch.Tensor, T: int) -> torch.Tensor:
    """The raster of :func:`times_to_raster` from in-range int64 steps ``idx`` and their mask."""
    out = torch.zeros((T, *idx.shape), dtype=torch.float32, device=idx.device)
    out.scatter_(0, idx.unsqueeze(0), valid.unsqueeze(0).to(torch.float32))
    if idx.dim() >= 2 and idx.device.type == "cpu" and T * idx[0].numel() < 2**31:
        _attach_spike_list(out, idx.reshape(idx.shape[0], -1), valid.reshape(idx.shape[0], -1))
    return out


def _attach_spike_list(out: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor) -> None:
    """Attach the b-major spike list (``t*K + i`` sorted per sample, features flattened) of a
    one-spike-per-input raster ``out[T, B, *features]``, built from the spike steps by a counting
    sort over the steps, ``O(B (K + T))`` (``kernels.sparse_cpu.one_spike_list``), when a sparse
    first layer first asks for it -- so it does not scan the ``T*B*K`` raster (kernels/sparse.py
    ``attach_spike_list``); a dense layer never builds it."""
    from ..kernels.sparse import ActiveSet, attach_spike_list
    from ..kernels.sparse_cpu import one_spike_list

    T, B, K = out.shape[0], out.shape[1], idx.shape[1]

    def build() -> ActiveSet:
        ptr = torch.zeros(B + 1, dtype=torch.int64)
        torch.cumsum(valid.sum(1), 0, out=ptr[1:])
        flat = torch.empty(int(ptr[-1]), dtype=torch.int32)
        one_spike_list(idx.contiguous().numpy(), valid.contiguous().numpy(), T, ptr.numpy(), flat.numpy())
        return ActiveSet(T, B, K, ptr, flat)

    attach_spike_list(out, build, (T, B, K))


_LIST_DTYPES = (
    torch.uint8,
    torch.bool,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float32,
    torch.float64,
)


def raster_batch(x: torch.Tensor) -> torch.Tensor:
    """A batch of binned event rasters ``x[B, T, *features]`` (any dtype, e.g. ``uint8``) as the
    time-major ``float32`` input ``[T, B, *features]`` of a network, in one contiguous copy.

    On CPU the result carries its spike list, built on first use straight from ``x`` (a quarter
    of the bytes of the float raster for ``uint8``), so a sparse first layer neither scans nor
    copies the float raster; a dense layer never builds it.
    """
    if x.dim() < 3:
        raise SpikeInputError(f"event raster batch must be [B, T, *features], got shape {tuple(x.shape)}")
    B, T = x.shape[0], x.shape[1]
    out = torch.empty((T, B, *x.shape[2:]), dtype=torch.float32, device=x.device)
    out.copy_(x.transpose(0, 1))
    K = out[0, 0].numel()
    if x.device.type == "cpu" and B and T * K < 2**31:
        from ..kernels.sparse import attach_spike_list, spike_list

        xb = x.reshape(B, T, K)
        v0 = x._version

        def build():
            # from the caller's x while it is unchanged (a quarter of the bytes for uint8); if the
            # caller has since written into it (a reused batch buffer), or the kernels cannot read
            # its dtype (float16), from the raster itself, which x no longer describes
            if x._version == v0 and x.dtype in _LIST_DTYPES:
                return spike_list(xb, batch_first=True, dtype=torch.float32)
            return spike_list(out.reshape(T, B, K))

        attach_spike_list(out, build, (T, B, K))
    return out


def latency_raster(
    x: torch.Tensor,
    T: int,
    t_min: float = 0.0,
    t_max: float | None = None,
    direction: str = "bright_early",
    kind: str = "linear",
    tau: float = 20.0,
    thr: float = 0.2,
    silent_below: float | None = None,
) -> torch.Tensor:
    """Latency code as a time-major raster ``[T, *x.shape]``, at most one spike per input.

    Times are in steps (``t_max`` defaults to ``T - 1``) from :func:`latency_times`; the spike
    goes to step ``floor(t)`` of the exact ``t``: computed in float64 (``uint8`` pixels exactly
    as ``p / 255``), and a time within ``1e-9`` (relative) below a whole step counts as that step
    (in float32, 2/3 * 3 came out as 1.9999999, a step early).
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    xd = x.to(torch.float64) / 255.0 if x.dtype == torch.uint8 else as_unit_interval(x).to(torch.float64)
    t_hi = float(T - 1) if t_max is None else t_max
    t = latency_times(xd, t_min, t_hi, direction, kind, tau, thr, silent_below)
    return times_to_raster(torch.floor(t + 1e-9 * t.abs().clamp(min=1.0)), T)


def firing_times(images: torch.Tensor, tau_eff: float = 20.0, thr: float = 0.2) -> torch.Tensor:
    """Perez-Nieves' continuous firing times ``tau_eff ln(x/(x-thr))`` (float64, inf if x <= thr).

    ``images`` are uint8 pixels (divided by 255) or floats in [0, 1]; computed in float64 like
    the numpy reference so that ``int()`` of the result matches it exactly.
    """
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        x = images.to(torch.float64) / 255.0
    else:
        x = as_unit_interval(images, "images").to(torch.float64)
    return latency_times(x, 0.0, math.inf, "bright_early", "current", tau_eff, thr)


def firing_time_raster(images: torch.Tensor, T: int = 100, tau_eff: float = 20.0, thr: float = 0.2) -> torch.Tensor:
    """Perez-Nieves & Goodman's F-MNIST encoding as a raster ``[T, *images.shape]`` (float32).

    Step ``int(tau_eff ln(x/(x-thr)))`` for ``x > thr`` (``x = pixel/255``), one spike at most,
    none for ``x <= thr`` or step ``>= T``. Defaults: T = 100 steps of 1 ms, tau_eff = 20 steps,
    thr = 0.2 (METHODS.md 1(b)). Flatten images to ``[B, 784]`` first for a dense network.
    """
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and T > 0:
        # a uint8 pixel has 256 possible values: look its step up instead of taking logs per
        # pixel (the same steps, computed by the same function, once per setting)
        idx_lut, valid_lut = _uint8_firing_steps(int(T), float(tau_eff), float(thr), str(images.device))
        px = images.long()
        return _one_hot_raster(idx_lut[px], valid_lut[px], T)
    return times_to_raster(torch.floor(firing_times(images, tau_eff, thr)), T)


@functools.lru_cache(maxsize=16)
def _uint8_firing_steps(T: int, tau_eff: float, thr: float, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Step (int64, 0 where none) and spike mask of :func:`times_to_raster` for the pixel values
    ``0..255``, from ``floor(firing_times(v))``."""
    return _steps_in_range(
        torch.floor(firing_times(torch.arange(256, dtype=torch.uint8, device=device), tau_eff, thr)), T
    )


def rate_raster(x: torch.Tensor, T: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bernoulli rate code ``[T, *x.shape]``: spike at each step with probability ``x``.

    Draws ``torch.rand((T, *x.shape), generator=generator)`` on the generator's device (then
    moves it to ``x``'s), so a seeded generator gives the same raster every time.
    """
    x = as_unit_interval(x)
    if T <= 0:
        raise SpikeInputError(f"T must be > 0, got {T}")
    dev = generator.device if generator is not None else x.device
    u = torch.rand((T, *x.shape), generator=generator, device=dev, dtype=torch.float32)
    return (u.to(x.device) < x.to(torch.float32)).to(torch.float32)
