"""Activity sparsity: an explicit spike-count loss with an epoch-dependent weight (Allred et al.).

Allred, Spencer, Srinivasan & Roy, "Explicitly trained spiking sparsity in spiking neural
networks with backpropagation" (preliminary draft; METHODS.md sec. 5). The total loss is

.. math::

    L_\\text{total} = L_\\text{classification} + \\sigma(\\text{spikeCount}, n)
    \\qquad\\text{(eqs. 2-3)}

where ``spikeCount`` is the mean number of spikes per sample of all spiking (hidden and output)
neurons over all time steps (DESIGN.md "Spike count", read from a
:class:`~sparsespike.sparsity.monitor.SpikeMonitor`) and ``sigma = w(n, N) * spikeCount`` with the
weight ``w`` given by a *schedule* of the epoch ``n`` out of ``N``:

=======================  ============================  ==========
schedule                 ``w(n, N)``                   equation
=======================  ============================  ==========
``constant``             ``s0``                        (4)
``linear``               ``s0 * n / N``                (5)
``quadratic``            ``s0 * n**2 / N`` (printed)   (6)
``alternating``          ``A(n) * s0``                 (7)
``alternating_linear``   ``A(n) * s0 * n / N``         (8)
=======================  ============================  ==========

**Epochs are 1-based**, as in the paper: ``n = 1`` is the first epoch and ``n = N`` the last, so
``linear`` reaches ``s0`` exactly at the last epoch. The Trainer counts epochs from 0
(``LossContext.epoch``); :class:`SpikeCountLoss` uses ``n = ctx.epoch + 1`` and
``N = ctx.n_epochs`` (the epochs of the current training phase).

**Quadratic, as printed.** Eq. 6 reads ``s0 * n^2 / N``, *not* ``s0 * (n / N)^2``: at ``n = N`` its
weight is ``s0 * N``. The printed form is the default because the paper's tuned value
(``s0 = 8e-6`` at ``N = 20``, mid-training weight ``4e-5``, comparable to linear's ``3e-5``) fits
it; ``quadratic(s0, normalized=True)`` gives ``s0 * (n / N)^2``.

**The alternation A(n)** is not specified beyond "the portion of epochs in which the sparsity
loss is included increases linearly during training from zero-inclusion during the first epoch to
always-included in the last epoch". We use the deterministic rule (:func:`alternation`): with
``p_n = (n - 1) / (N - 1)`` (0 at the first epoch, 1 at the last), epoch ``n`` is included iff the
running sum ``sum_{k <= n} p_k`` crosses an integer at ``n``:

.. math::

    A(n) = \\left\\lfloor \\frac{n(n-1)}{2(N-1)} \\right\\rfloor
         > \\left\\lfloor \\frac{(n-1)(n-2)}{2(N-1)} \\right\\rfloor

so ``A(1) = 0``, ``A(N) = 1``, exactly ``floor(N / 2)`` of the ``N`` epochs are included, and the
share of included epochs over any window follows ``p_n`` (an error-diffusion dither of the linear
ramp). With ``per_batch=True`` the alternation is within every epoch instead
(:func:`alternation_batch`, METHODS.md 5(d)2): a fraction ``p_n`` of the batches, spread evenly,
batch ``b`` (0-based) included iff ``floor((b + 1) p_n) > floor(b p_n)``. ``N = 1`` counts as the
last epoch (always included).

A schedule is any callable ``w(n, N) -> float``, so users add their own; one that also accepts
the keywords ``batch`` and ``n_batches`` receives the 0-based batch index and the batches per epoch.

Example (with the :class:`~sparsespike.train.Trainer`, from YAML)::

    train:
      regularizers:
        - {name: spike_count, schedule: alternating, s0: 1.5e-3}

Example (standalone, on any model that emits spikes)::

    >>> import torch
    >>> from sparsespike.layers import SpikingLinear, LeakyReadout
    >>> from sparsespike.sparsity.monitor import SpikeMonitor
    >>> from sparsespike.sparsity.activity import SpikeCountLoss, linear
    >>> net = torch.nn.Sequential(SpikingLinear(4, 16), LeakyReadout(16, 2))
    >>> mon, reg = SpikeMonitor(net), SpikeCountLoss(linear(1e-3))
    >>> mon.reset(); out = net(torch.rand(10, 8, 4).round())
    >>> loss = torch.nn.functional.cross_entropy(out, torch.zeros(8, dtype=torch.long))
    >>> loss = loss + reg.penalty(mon.spike_count(), n=3, N=10)   # 1e-3 * 3/10 * spikeCount
    >>> loss.backward()
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import check_value, config_float
from ..errors import ConfigError
from ..train import LossContext, register_regularizer

Schedule = Callable[..., float]

__all__ = [
    "SCHEDULES",
    "Alternating",
    "AlternatingLinear",
    "Constant",
    "Linear",
    "Quadratic",
    "SpikeCountLoss",
    "alternating",
    "alternating_linear",
    "alternation",
    "alternation_batch",
    "constant",
    "linear",
    "make_schedule",
    "quadratic",
    "spike_count_regularizer",
]


def _check_epoch(n: int, N: int) -> None:
    if N < 1:
        raise ValueError(f"the number of epochs N must be >= 1, got {N}")
    if not 1 <= n <= N:
        raise ValueError(f"epoch n must be in 1..N (1-based; N = {N}), got {n}")


# ---------------------------------------------------------------- the alternation A(n)
def alternation(n: int, N: int) -> bool:
    """``A(n)`` of Allred et al. eqs. 7-8, per epoch (1-based ``n`` of ``N``); see module docstring.

    Included iff ``floor(n(n-1) / (2(N-1))) > floor((n-1)(n-2) / (2(N-1)))``: the running sum of
    ``p_k = (k-1)/(N-1)`` crosses an integer at ``n``. ``A(1) = 0`` (for ``N > 1``), ``A(N) = 1``,
    ``sum_n A(n) = floor(N/2)``. Exact integer arithmetic.
    """
    _check_epoch(n, N)
    if N == 1:
        return True
    d = N - 1
    return (n * (n - 1) // 2) // d > ((n - 1) * (n - 2) // 2) // d


def alternation_batch(n: int, N: int, batch: int, n_batches: int) -> bool:
    """Per-batch ``A``: in epoch ``n`` a fraction ``p_n = (n-1)/(N-1)`` of the batches, spread evenly.

    Batch ``b`` (0-based) is included iff ``floor((b+1) p_n) > floor(b p_n)`` (METHODS.md 5(d)2),
    so no batch of the first epoch and every batch of the last one is included, and epoch ``n``
    includes ``floor(n_batches * p_n)`` batches. Exact integer arithmetic.
    """
    _check_epoch(n, N)
    if not 0 <= batch < max(1, n_batches):
        raise ValueError(f"batch must be in 0..n_batches-1 ({n_batches}), got {batch}")
    if N == 1:
        return True
    d = N - 1
    return ((batch + 1) * (n - 1)) // d > (batch * (n - 1)) // d


def _included(n: int, N: int, per_batch: bool, batch: int | None, n_batches: int | None) -> bool:
    if not per_batch:
        return alternation(n, N)
    if batch is None or n_batches is None:
        raise ValueError("a per-batch alternating schedule needs batch= and n_batches=")
    return alternation_batch(n, N, batch, n_batches)


# ---------------------------------------------------------------- schedules
@dataclass(frozen=True)
class Constant:
    """``w(n, N) = s0`` (Allred et al. eq. 4)."""

    s0: float

    def __call__(self, n: int, N: int) -> float:
        _check_epoch(n, N)
        return float(self.s0)


@dataclass(frozen=True)
class Linear:
    """``w(n, N) = s0 * n / N`` (Allred et al. eq. 5; ``s0`` at the last epoch)."""

    s0: float

    def __call__(self, n: int, N: int) -> float:
        _check_epoch(n, N)
        return float(self.s0) * n / N


@dataclass(frozen=True)
class Quadratic:
    """``w(n, N) = s0 * n**2 / N`` as printed (Allred et al. eq. 6), or ``s0 * (n/N)**2`` if normalized.

    The printed form is *not* ``(n/N)^2``: it ends at ``s0 * N``. See the module docstring.
    """

    s0: float
    normalized: bool = False

    def __call__(self, n: int, N: int) -> float:
        _check_epoch(n, N)
        if self.normalized:
            return float(self.s0) * (n / N) ** 2
        return float(self.s0) * n * n / N


@dataclass(frozen=True)
class Alternating:
    """``w(n, N) = A(n) * s0`` (Allred et al. eq. 7); ``A`` per epoch or, with ``per_batch``, per batch."""

    s0: float
    per_batch: bool = False

    def __call__(self, n: int, N: int, batch: int | None = None, n_batches: int | None = None) -> float:
        return float(self.s0) if _included(n, N, self.per_batch, batch, n_batches) else 0.0


@dataclass(frozen=True)
class AlternatingLinear:
    """``w(n, N) = A(n) * s0 * n / N`` (Allred et al. eq. 8); ``A`` as in :class:`Alternating`."""

    s0: float
    per_batch: bool = False

    def __call__(self, n: int, N: int, batch: int | None = None, n_batches: int | None = None) -> float:
        if not _included(n, N, self.per_batch, batch, n_batches):
            return 0.0
        return float(self.s0) * n / N


def constant(s0: float) -> Constant:
    """Eq. 4: ``s0``."""
    return Constant(s0)


def linear(s0: float) -> Linear:
    """Eq. 5: ``s0 * n / N``."""
    return Linear(s0)


def quadratic(s0: float, normalized: bool = False) -> Quadratic:
    """Eq. 6 as printed, ``s0 * n^2 / N``; ``normalized=True``: ``s0 * (n/N)^2``."""
    return Quadratic(s0, normalized)


def alternating(s0: float, per_batch: bool = False) -> Alternating:
    """Eq. 7: ``A(n) * s0``."""
    return Alternating(s0, per_batch)


def alternating_linear(s0: float, per_batch: bool = False) -> AlternatingLinear:
    """Eq. 8: ``A(n) * s0 * n / N``."""
    return AlternatingLinear(s0, per_batch)


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "constant": constant,
    "linear": linear,
    "quadratic": quadratic,
    "alternating": alternating,
    "alternating_linear": alternating_linear,
}


def make_schedule(name: str, s0: float, *, per_batch: bool = False, normalized: bool = False) -> Schedule:
    """The named schedule; ``per_batch`` applies to the alternating ones, ``normalized`` to quadratic.

    ``s0`` must be a finite number ``>= 0`` and the flags real booleans (the string ``'false'``
    would be true), set only for the schedules they shape: a :class:`ConfigError` naming the key
    otherwise.
    """
    if name not in SCHEDULES:
        raise ConfigError(f"unknown spike-count schedule {name!r}; use one of {sorted(SCHEDULES)}")
    s0 = config_float(s0, "spike_count regularizer: s0")
    per_batch = check_value(per_batch, bool, "spike_count regularizer: per_batch")
    normalized = check_value(normalized, bool, "spike_count regularizer: normalized")
    if per_batch and name not in ("alternating", "alternating_linear"):
        raise ConfigError(f"spike_count regularizer: per_batch shapes the alternating schedules, not {name!r}")
    if normalized and name != "quadratic":
        raise ConfigError(f"spike_count regularizer: normalized shapes the quadratic schedule, not {name!r}")
    if name == "quadratic":
        return quadratic(s0, normalized=normalized)
    if name in ("alternating", "alternating_linear"):
        return SCHEDULES[name](s0, per_batch=per_batch)
    return SCHEDULES[name](s0)


def _takes_batch(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return "batch" in params and "n_batches" in params


# ---------------------------------------------------------------- the loss term
class SpikeCountLoss:
    """``sigma(spikeCount, n) = w(n, N) * spikeCount`` (Allred et al. eqs. 3-8).

    ``spikeCount`` is the differentiable mean number of spikes per sample recorded by a
    :class:`~sparsespike.sparsity.monitor.SpikeMonitor` (all spiking modules, all steps), so the
    gradient flows through the surrogate derivative of every spike.

    Use it as a :class:`~sparsespike.train.Trainer` regularizer (``Trainer(...,
    regularizers=[SpikeCountLoss(linear(1e-4))])``; it reads ``ctx.monitor``, ``ctx.epoch + 1``,
    ``ctx.n_epochs``, ``ctx.batch``, ``ctx.n_batches``), or standalone with :meth:`penalty` (or
    :meth:`from_monitor`) in any training loop.

    Args:
        schedule: any callable ``w(n, N) -> float`` (1-based epoch ``n`` of ``N``), e.g.
            :func:`linear`; one that accepts ``batch=`` and ``n_batches=`` gets them too.
        monitor: the default monitor for :meth:`from_monitor` (the Trainer passes its own).
    """

    def __init__(self, schedule: Schedule, monitor=None) -> None:
        if not callable(schedule):
            raise TypeError(f"schedule must be callable w(n, N), got {type(schedule).__name__}")
        self.schedule = schedule
        self.monitor = monitor
        self._batch_kw = _takes_batch(schedule)
        self.last_weight: float | None = None

    def weight(self, n: int, N: int, batch: int | None = None, n_batches: int | None = None) -> float:
        """The schedule's weight ``w(n, N)`` at 1-based epoch ``n`` (and 0-based ``batch``)."""
        if self._batch_kw:
            return float(self.schedule(n, N, batch=batch, n_batches=n_batches))
        return float(self.schedule(n, N))

    def penalty(
        self,
        spike_count: torch.Tensor,
        n: int,
        N: int,
        batch: int | None = None,
        n_batches: int | None = None,
    ) -> torch.Tensor:
        """``w(n, N) * spike_count`` (a zero tensor without graph when the weight is 0)."""
        w = self.weight(n, N, batch, n_batches)
        self.last_weight = w
        if w == 0.0:
            return torch.zeros((), dtype=spike_count.dtype, device=spike_count.device)
        return w * spike_count

    def from_monitor(
        self, n: int, N: int, batch: int | None = None, n_batches: int | None = None, monitor=None
    ) -> torch.Tensor:
        """:meth:`penalty` of ``monitor.spike_count()`` (default: the monitor given at construction)."""
        mon = monitor if monitor is not None else self.monitor
        if mon is None:
            raise ValueError("SpikeCountLoss.from_monitor: no SpikeMonitor given")
        return self.penalty(mon.spike_count(), n, N, batch, n_batches)

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        """Trainer regularizer: 1-based epoch ``ctx.epoch + 1`` of the phase's ``ctx.n_epochs``."""
        mon = ctx.monitor if ctx.monitor is not None else self.monitor
        if mon is None:
            raise ConfigError(
                "spike_count regularizer: the model has no spiking modules to monitor "
                "(no module with emits_spikes = True); pass a SpikeMonitor(model, modules=...)"
            )
        return self.from_monitor(ctx.epoch + 1, ctx.n_epochs, ctx.batch, ctx.n_batches, mon)

    def __repr__(self) -> str:
        return f"SpikeCountLoss({self.schedule!r})"


@register_regularizer("spike_count")
def spike_count_regularizer(
    schedule: str = "constant",
    s0: float = 1e-4,
    per_batch: bool = False,
    normalized: bool = False,
) -> SpikeCountLoss:
    """YAML: ``{name: spike_count, schedule: constant|linear|quadratic|alternating|alternating_linear,
    s0: ..., per_batch: false, normalized: false}`` (Allred et al. eqs. 4-8)."""
    return SpikeCountLoss(make_schedule(schedule, s0, per_batch=per_batch, normalized=normalized))
