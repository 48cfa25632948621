"""Shared machinery of the penalties that price L0 gates by what their layer's inputs cost.

:class:`~.synops.ExpectedSynOps` (input spikes) and :class:`~.flops.ExpectedFlops` (input
shapes) both watch the inputs of every gated layer during training-mode forward passes and turn
them, with each gate's probability of being non-zero (Yin et al. KDD'21 eq. 20 / Louizos et al.
2018 eq. 12), into an expected cost. :class:`GatedInputPenalty` holds the hooks, the
bookkeeping and ``lam``; a subclass says what it keeps of an input (:meth:`_record`) and how it
prices a layer (:meth:`_price`).

**Ramp.** ``ramp_epochs = R > 0`` raises the weight linearly, batch by batch, from 0 to ``lam``
over the first ``R`` epochs of the training phase (``lam * min(1, (e + (b + 1) / n_b) / R)`` at
batch ``b`` of the phase's 0-based epoch ``e``), then holds it. Sparsifying gradually gives the
network time to adapt to the synapses and spikes it loses, the way gradual pruning does (Zhu &
Gupta 2017, "To prune, or not to prune"); a constant ``lam`` (``R = 0``, the default) strikes
at full strength from the first batch. The ramp is applied when the penalty is called with the
trainer's :class:`~sparsespike.train.LossContext` (which carries the epoch and batch);
:meth:`GatedInputPenalty.value` is always the un-ramped ``lam * cost``. It is not one of the
spike-count schedules of ``sparsity/activity.py`` (Allred et al. eqs. 5-8): those step once per
epoch and span the whole phase, whereas the ramp is per batch and reaches ``lam`` after ``R``
epochs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import config_float
from ..errors import ConfigError
from ..train import LossContext
from .connectivity import GatedWeight, gated_weights

__all__ = ["GatedInputPenalty", "prob_nonzero"]


def prob_nonzero(gw: GatedWeight) -> torch.Tensor:
    """``P(b != 0)`` of every gate of ``gw`` (eq. 20). A frozen gate (``connectivity.freeze_gates``)
    is no longer random: its probability is the indicator of its test-time gate being non-zero."""
    g = gw.gate
    return (g.test_gate() != 0).to(g.log_alpha.dtype) if g.frozen else g.prob_nonzero()


class GatedInputPenalty:
    """Regularizer ``lam * sum(terms(batch))`` over the gated layers of a model (module doc).

    ``attach(model)`` (called by the trainer) registers forward pre-hooks on the gated modules
    that keep :meth:`_record` of each training-mode input (every call, so a model stepped
    through time one call per step is counted over all steps; eval-mode passes are not recorded)
    until :meth:`value` prices and forgets them; ``release()`` removes the hooks.
    """

    #: name used in error messages
    what = "gate penalty"

    def __init__(self, lam: float, ramp_epochs: float = 0.0) -> None:
        self.lam = config_float(lam, f"{self.what}: lam")
        self.ramp_epochs = config_float(ramp_epochs, f"{self.what}: ramp_epochs")
        self._seen: dict[int, list] = {}
        self._gated: list[GatedWeight] = []
        self._handles: list = []

    def _record(self, x: torch.Tensor):
        """What the hook keeps of one layer input."""
        return x

    def _check(self, gw: GatedWeight) -> None:
        """Raise :class:`ConfigError` for a gated layer this penalty cannot price (the common
        conv cases here; subclasses add their own)."""
        m = gw.module
        if isinstance(m, nn.modules.conv._ConvNd):
            if m.transposed or m.groups != 1:
                raise ConfigError(f"{self.what}: {gw.name!r} is a transposed or grouped convolution (not supported)")
            if m.padding_mode != "zeros":
                raise ConfigError(f"{self.what}: {gw.name!r} pads with {m.padding_mode!r}; zero padding only")

    def attach(self, model: nn.Module):
        self.release()
        self._gated = gated_weights(model)
        if not self._gated:
            raise ConfigError(f"{self.what} needs L0 gates (model.gates / connectivity.l0) on the model")
        for gw in self._gated:  # every layer checked before any hook is registered
            self._check(gw)
        for gw in self._gated:
            key = id(gw.module)

            def hook(mod, args, key=key):
                if mod.training and args:  # a per-step loop calls the module T times
                    self._seen.setdefault(key, []).append(self._record(args[0]))

            self._handles.append(gw.module.register_forward_pre_hook(hook))
        return self

    def release(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._seen.clear()

    def _price(self, gw: GatedWeight, seen: list, n_samples: int) -> torch.Tensor:
        """Expected cost per sample of one gated layer from what its hooks kept (``seen``)."""
        raise NotImplementedError

    def terms(self, n_samples: int) -> dict[str, torch.Tensor]:
        """The expected cost per sample of each gated layer seen since the last :meth:`value`."""
        out = {}
        for gw in self._gated:
            seen = self._seen.get(id(gw.module))
            if seen:
                out[gw.name] = self._price(gw, seen, n_samples)
        return out

    def value(self, n_samples: int) -> torch.Tensor:
        """``lam * sum(terms)`` of the forward passes since the last call (then forgets them)."""
        if not self._handles:
            raise RuntimeError(f"{self.what}: call attach(model) before the forward pass (the trainer does)")
        parts = self.terms(max(1, int(n_samples)))
        self._seen.clear()
        if not parts:
            return torch.zeros(())
        return self.lam * torch.stack(list(parts.values())).sum()

    def ramp(self, epoch: int, batch: int, n_batches: int) -> float:
        """The share of ``lam`` applied at ``batch`` (0-based) of the phase's 0-based ``epoch``
        (module doc, "Ramp"): 1 without a ramp."""
        if self.ramp_epochs <= 0:
            return 1.0
        return min(1.0, (epoch + (batch + 1) / max(1, n_batches)) / self.ramp_epochs)

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        return self.ramp(ctx.epoch, ctx.batch, ctx.n_batches) * self.value(len(ctx.targets))
