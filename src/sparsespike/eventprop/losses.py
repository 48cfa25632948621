"""Losses on spike times (Fontanini et al. 2024, eqs. 9-15), all times in ms.

With ``t_{b,1(a)}`` the first spike of output neuron ``a`` in sample ``b``, ``T`` the target::

    CE = -1/N_b sum_b log softmax(-t_{b,1(.)}/tau_0)[T]                    (eq. 10, tau_0 = 0.5 ms)
    CS = 1/N_b sum_b [exp(t_{b,1(T)}/tau_1) - 1]                           (eq. 10, tau_1 = 6.4 ms)
    AS = 1/(N_O N_b) sum_b sum_a [exp(t_{b,1(a)}/tau_1) - 1]               (eq. 14)
    SP = 1/N_b sum_b sum_{neurons a} sum_{p>=2} 1/(t_{b,p(a)} - t_{b,1(a)})  (eq. 12, ms^-1)
    L_W = CE + alpha CS,   L = CE + alpha CS + eta SP,   L_A = CE + alpha AS + eta SP
                                                        (eqs. 9, 11, 13; eta in ms)

SP runs over *all* spiking neurons, hidden and output (pass every layer's times); its
gradient is ``-1/(t_p - t_1)^2`` wrt ``t_p`` (p >= 2) and ``+sum_p 1/(t_p - t_1)^2`` wrt ``t_1``.

Silent neurons and ties (our documented policy)
----------------------------------------------
* A silent output neuron has first-spike time ``+inf`` in the simulator's output. In CE, CS
  and AS it is replaced by ``silent_time`` (default: the window end T = 30 ms) as a *constant*:
  the loss stays finite and comparable, and no gradient flows to a spike that does not exist.
  A silent non-target neuron then contributes ``e^{-T/tau_0} ~ 1e-26`` to the softmax
  (negligible); a silent target contributes ``T/tau_0 + log(...)`` to CE and ``e^{T/tau_1} - 1``
  to CS, both without gradient wrt the target (the "silent neuron" problem of the paper that
  AS and the 2-phase schedule address). Option ``silent_target="skip"`` (:class:`FontaniniLoss`,
  the EventProp config's ``silent_target``) follows Wunderlich & Pehle's reference code
  instead: a sample whose target is silent adds no CE error (and so no gradient that pushes the
  other outputs later); the reported ``ce`` part stays in the ``"window"`` convention so that runs
  compare. Fontanini et al. do not say which rule they use.
* Prediction = the output neuron that spikes first; ``-1`` if all are silent. A sample is
  counted correct only if the target spikes and its first spike is *strictly* earlier than
  every other output neuron's first spike (exact ties, e.g. two silent neurons, count as
  wrong; W&P count ties as correct).
* SP ignores padding (``+inf``) entries: a neuron with <= 1 spike adds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError, SpikeInputError
from .functional import EventOutput

__all__ = [
    "first_spike_times",
    "ce_loss",
    "cs_loss",
    "as_loss",
    "sp_loss",
    "FontaniniLoss",
    "make_loss",
    "predict",
    "correct",
    "LOSS_NAMES",
]

TAU0 = 0.5  # ms, Fontanini Table 1
TAU1 = 6.4  # ms, Fontanini Table 1
T_WINDOW = 30.0  # ms


def first_spike_times(x: EventOutput | torch.Tensor) -> torch.Tensor:
    """``[B, N]`` first spike times from an :class:`EventOutput` (output layer) or a
    ``[B, N, S]`` times tensor; a ``[B, N]`` tensor is returned unchanged."""
    if isinstance(x, EventOutput):
        return x.first_spikes
    if not isinstance(x, torch.Tensor):
        raise SpikeInputError(f"expected a tensor of spike times, got {type(x).__name__}")
    if x.dim() == 3:
        return x[..., 0]
    if x.dim() == 2:
        return x
    raise SpikeInputError(f"spike times must be [B, N] or [B, N, S], got shape {tuple(x.shape)}")


def _check(first: torch.Tensor, labels: torch.Tensor | None = None, allow_empty: bool = False) -> torch.Tensor:
    if first.dim() != 2:
        raise SpikeInputError(f"first-spike times must be [B, N_O], got shape {tuple(first.shape)}")
    if first.shape[0] == 0 and not allow_empty:  # a batch mean over no samples would be NaN
        raise SpikeInputError("empty batch: the losses are means over samples, B must be >= 1")
    if torch.isnan(first).any():
        raise SpikeInputError("first-spike times contain NaN")
    if labels is not None:
        if labels.dim() != 1 or labels.shape[0] != first.shape[0]:
            raise SpikeInputError(f"labels must be [B] with B={first.shape[0]}, got shape {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise SpikeInputError(f"labels must be an integer tensor, got {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= first.shape[1]):
            raise SpikeInputError(
                f"labels must lie in [0, {first.shape[1] - 1}], got range [{int(labels.min())}, {int(labels.max())}]"
            )
    return first


def _finite_or(first: torch.Tensor, silent_time: float) -> torch.Tensor:
    """Replace +inf (silent) by the constant ``silent_time``; no gradient reaches those entries."""
    return torch.where(torch.isfinite(first), first, torch.full_like(first, float(silent_time)))


def _positive(where: str, **values: float) -> None:
    """Time constants and the silent time must be > 0 (a zero ``tau`` makes the loss NaN, a
    negative one reverses it)."""
    for name, v in values.items():
        if not v > 0:  # also refuses NaN
            raise ConfigError(f"{where}: {name} must be > 0, got {v!r}")


SILENT_TARGET_RULES = ("window", "skip")


def _check_rule(silent_target: str) -> str:
    if silent_target not in SILENT_TARGET_RULES:
        raise ConfigError(f"silent_target must be one of {SILENT_TARGET_RULES}, got {silent_target!r}")
    return silent_target


def _ce_terms(first, labels: torch.Tensor, tau0: float, silent_time: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample CE of eq. 10 (silent outputs at ``silent_time``) and whether each target spiked."""
    raw = _check(first_spike_times(first), labels)
    labels = labels.long()
    per = torch.nn.functional.cross_entropy(-_finite_or(raw, silent_time) / tau0, labels, reduction="none")
    return per, torch.isfinite(raw.gather(1, labels[:, None])[:, 0])


def _reduce_ce(per: torch.Tensor, target_spiked: torch.Tensor, silent_target: str) -> torch.Tensor:
    """Batch mean of the per-sample CE; ``"skip"`` zeroes the samples whose target is silent (the
    rule is checked by the callers: :func:`ce_loss` and :class:`FontaniniLoss`)."""
    if silent_target == "skip":
        per = torch.where(target_spiked, per, torch.zeros_like(per))
    return per.mean()


def ce_loss(
    first: torch.Tensor,
    labels: torch.Tensor,
    tau0: float = TAU0,
    silent_time: float = T_WINDOW,
    silent_target: str = "window",
) -> torch.Tensor:
    """Cross-entropy of ``softmax(-t_1/tau_0)`` (Fontanini eq. 10), mean over the batch.

    Gradient: ``(1 - p_T)/tau_0`` wrt the target's first spike, ``-p_a/tau_0`` wrt the others.
    ``silent_target="skip"``: samples whose target is silent add 0 (Wunderlich & Pehle's rule; the
    mean is still over the whole batch, so the other samples' gradients are unchanged).
    """
    _check_rule(silent_target)
    _positive("ce_loss", tau0=tau0, silent_time=silent_time)
    return _reduce_ce(*_ce_terms(first, labels, tau0, silent_time), silent_target)


def cs_loss(
    first: torch.Tensor, labels: torch.Tensor, tau1: float = TAU1, silent_time: float = T_WINDOW
) -> torch.Tensor:
    """Classification spike term ``mean_b[exp(t_{b,1(T)}/tau_1) - 1]`` (Fontanini eq. 10)."""
    _positive("cs_loss", tau1=tau1, silent_time=silent_time)
    first = _finite_or(_check(first_spike_times(first), labels), silent_time)
    t_target = first.gather(1, labels.long()[:, None])[:, 0]
    return torch.expm1(t_target / tau1).mean()


def as_loss(first: torch.Tensor, tau1: float = TAU1, silent_time: float = T_WINDOW) -> torch.Tensor:
    """Additional-spikes term, mean over all output neurons and samples (Fontanini eq. 14)."""
    _positive("as_loss", tau1=tau1, silent_time=silent_time)
    first = _finite_or(_check(first_spike_times(first)), silent_time)
    return torch.expm1(first / tau1).mean()


def sp_loss(times: EventOutput | torch.Tensor | Sequence[torch.Tensor], per_neuron: bool = False) -> torch.Tensor:
    """Spike penalty ``1/N_b sum_b sum_a sum_{p>=2} 1/(t_p - t_1)`` (Fontanini eq. 12), in 1/ms.

    ``times``: an :class:`EventOutput` (all layers are used), one ``[B, N, S]`` tensor, or a
    sequence of them (one per layer; pass every hidden layer and the output layer to penalise
    all neurons as in the paper).

    ``per_neuron=True`` divides by the number of neurons N_n as well (a mean over neurons, like
    AS's ``1/N_O``). Eq. 12 as printed has no such factor, but with it the paper's eta values
    train (see docs/eventprop.md, "SP normalisation"); without it eta = 0.4 ms silences the
    Yin-Yang network within one epoch in our runs.
    """
    if isinstance(times, EventOutput):
        layers = list(times.times)
    elif isinstance(times, torch.Tensor):
        layers = [times]
    else:
        layers = list(times)
    if not layers:
        raise SpikeInputError("sp_loss needs at least one layer of spike times")
    total = None
    for t in layers:
        if t.dim() != 3:
            raise SpikeInputError(f"sp_loss expects [B, N, S] spike times, got {tuple(t.shape)}")
        if torch.isnan(t).any():
            raise SpikeInputError("sp_loss: spike times contain NaN")
        B = t.shape[0]
        if B == 0:  # as the other terms: a batch mean over no samples is undefined
            raise SpikeInputError("sp_loss: empty batch, B must be >= 1")
        if t.shape[2] < 2:
            term = t.new_zeros(())  # no neuron spiked twice
        else:
            later = t[..., 1:]
            valid = torch.isfinite(later)
            diff = torch.where(valid, later - t[..., :1], torch.ones_like(later))
            term = torch.where(valid, 1.0 / diff, torch.zeros_like(later)).sum() / B
        total = term if total is None else total + term
    if per_neuron:
        total = total / sum(t.shape[1] for t in layers)
    return total


LOSS_NAMES = ("CE", "L_W", "L", "L_A")


@dataclass(frozen=True)
class FontaniniLoss:
    """``CE + alpha * (AS if augmented else CS) + eta * SP`` (Fontanini eqs. 9, 11, 13).

    ``sp_per_neuron`` selects the SP normalisation (see :func:`sp_loss`).
    Use the constructors :meth:`l_w`, :meth:`l`, :meth:`l_a`. Calling it returns
    ``(total, parts)`` with ``parts`` the detached float values of ``ce``, ``cs``/``as``, ``sp``.
    """

    alpha: float = 0.0
    eta: float = 0.0
    augmented: bool = False
    tau0: float = TAU0
    tau1: float = TAU1
    silent_time: float = T_WINDOW
    sp_per_neuron: bool = False
    silent_target: str = "window"  # or "skip" (see the module docstring)

    def __post_init__(self) -> None:
        _check_rule(self.silent_target)
        _positive("FontaniniLoss", tau0=self.tau0, tau1=self.tau1, silent_time=self.silent_time)
        for name in ("alpha", "eta"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"FontaniniLoss.{name} must be >= 0, got {getattr(self, name)!r}")

    @classmethod
    def l_w(cls, alpha: float, **kw) -> FontaniniLoss:
        """L_W = CE + alpha CS (eq. 9)."""
        return cls(alpha=alpha, eta=0.0, augmented=False, **kw)

    @classmethod
    def l(cls, alpha: float, eta: float, **kw) -> FontaniniLoss:  # noqa: E743
        """L = CE + alpha CS + eta SP (eq. 11)."""
        return cls(alpha=alpha, eta=eta, augmented=False, **kw)

    @classmethod
    def l_a(cls, alpha: float, eta: float, **kw) -> FontaniniLoss:
        """L_A = CE + alpha AS + eta SP (eq. 13)."""
        return cls(alpha=alpha, eta=eta, augmented=True, **kw)

    def __call__(self, out: EventOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        first = out.first_spikes
        per, target_spiked = _ce_terms(first, labels, self.tau0, self.silent_time)
        ce = _reduce_ce(per, target_spiked, self.silent_target)
        # reported in the "window" convention whatever the training rule, so that runs compare
        parts = {"ce": float(per.detach().mean())}
        total = ce
        if self.alpha:
            if self.augmented:
                aux = as_loss(first, self.tau1, self.silent_time)
                parts["as"] = float(aux.detach())
            else:
                aux = cs_loss(first, labels, self.tau1, self.silent_time)
                parts["cs"] = float(aux.detach())
            total = total + self.alpha * aux
        if self.eta:
            sp = sp_loss(out.times, per_neuron=self.sp_per_neuron)
            parts["sp"] = float(sp.detach())
            total = total + self.eta * sp
        parts["total"] = float(total.detach())
        return total, parts


def make_loss(name: str, alpha: float = 0.0, eta: float = 0.0, **kw) -> FontaniniLoss:
    """Loss by its paper name: ``"CE"``, ``"L_W"``, ``"L"`` or ``"L_A"`` (for YAML configs)."""
    if name == "CE":
        return FontaniniLoss(**kw)
    if name == "L_W":
        return FontaniniLoss.l_w(alpha, **kw)
    if name == "L":
        return FontaniniLoss.l(alpha, eta, **kw)
    if name == "L_A":
        return FontaniniLoss.l_a(alpha, eta, **kw)
    raise ConfigError(f"unknown loss {name!r}; expected one of {LOSS_NAMES}")


def predict(first: torch.Tensor) -> torch.Tensor:
    """Index of the first output neuron to spike, ``[B]`` int64; ``-1`` if all are silent."""
    first = first_spike_times(first).detach()
    pred = first.argmin(dim=1)
    return torch.where(torch.isfinite(first.min(dim=1).values), pred, torch.full_like(pred, -1))


def correct(first: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: the target spikes and strictly before every other output neuron."""
    first = _check(first_spike_times(first).detach(), labels, allow_empty=True)
    labels = labels.long()
    t_target = first.gather(1, labels[:, None])
    others = first.clone()
    others.scatter_(1, labels[:, None], float("inf"))
    return torch.isfinite(t_target[:, 0]) & (t_target[:, 0] < others.min(dim=1).values)
