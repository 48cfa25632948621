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

**Budget.** ``budget = C`` states the cost a run may spend per sample, in two forms:

* ``dual_lr = 0`` (default): a hinge, ``lam * max(0, cost - C)``. It pushes with the plain
  term's gradient while the expected cost is above ``C`` and not at all below, so a run that
  prunes past ``C`` stops there (budget-aware regularisation in its simplest form, Lemaire et
  al., CVPR 2019). It cannot push harder than the plain term: a run whose plain penalty levels
  off above ``C`` never reaches it.
* ``dual_lr = eta > 0``: a constraint ``cost <= C`` held by a Lagrange multiplier (Gallego-Posada
  et al., "Controlled sparsity via constrained optimization", NeurIPS 2022, for the L0 gates of
  Louizos et al.): the term is ``lam * mu * (cost - C)``, and after every batch the multiplier
  steps by :func:`dual_step`: ``mu <- mu + eta * min(avg / C - 1, 1)`` while the run is over
  budget, ``mu <- 0`` (their *dual restart*) as soon as it is not, where ``avg`` is a running
  mean of the batches' costs, ``avg <- dual_avg avg + (1 - dual_avg) cost`` (default 0.98,
  :data:`COST_AVG`; their L0 expectation has no input noise, ours has). It starts at ``mu = 1``, the
  plain term. While a run stays over budget the pressure grows without bound, so it gets there
  even where the plain term would level off above ``C``; once there, the restart drops the
  pressure at once, so the gates are not pushed on by a multiplier built up on the way (a gate
  whose samples are all clamped to zero gets no task gradient and would not come back). ``mu`` is saved in
  ``last.pt`` (:meth:`GatedInputPenalty.checkpoint_state`), so a resumed run continues exactly;
  under DDP every rank steps ``mu`` with the cost averaged over all ranks, so they keep one
  multiplier.

**Budget schedule.** ``budget_epochs = R > 0`` lowers the budget gradually instead of setting
it from the first batch: over the first ``R`` epochs of the phase it follows Zhu & Gupta's cubic
sparsity schedule ("To prune, or not to prune", 2017, eq. 1) written for a cost,
``C_p = C + (C_0 - C) (1 - p)^3`` with ``p = min(1, (e + (b + 1) / n_b) / R)`` (the ramp's
progress above) and ``C_0`` the expected cost of the first batch priced (the un-pruned network;
``budget_start`` sets it instead), and holds ``C`` after that (:func:`scheduled_budget`). Both
forms then act against ``C_p``. The schedule prunes fast while there is much to prune and slowly
near the end, and it sets the pace: in the dual form the multiplier starts at 0 instead of 1, so
that the plain term does not prune ahead of the schedule, and it grows only while the run lags
behind it. ``C_0`` is saved with the multiplier, so a resumed run follows the same schedule.

The cost is the training-time expectation (gate probabilities, training inputs), so the
test-time count (deterministic gates, test inputs) lands near ``C``, not on it.
:meth:`GatedInputPenalty.epoch_stats` gives the epoch's mean expected cost (un-hinged), which
the trainer logs as ``train_expected_synops`` / ``train_expected_flops``, with the multiplier
as ``train_expected_synops_mu`` (dual form) and the budget in force at the epoch's end (a
schedule's value then) as ``train_expected_synops_budget``; ``curves.png`` plots them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import config_float
from ..errors import ConfigError
from ..train import LossContext
from .connectivity import GatedWeight, gated_weights

__all__ = ["COST_AVG", "GatedInputPenalty", "dual_step", "prob_nonzero", "scheduled_budget"]


#: default ``dual_avg``: the multiplier is stepped with a running mean of the batches' costs,
#: ``avg <- 0.98 avg + 0.02 cost`` (about the last 50 batches). A batch's cost varies with its
#: inputs' spike counts by several per cent, and a dual restart on every batch that happens to
#: dip under the budget kept the multiplier near 0 while an F-MNIST run as a whole stayed 10 %
#: over it. The mean lags by about ``1 / (1 - dual_avg)`` batches, and the multiplier goes on
#: pushing for that long after the run crosses the budget: keep it well under an epoch.
COST_AVG = 0.98


def dual_step(mu: float, cost: float, budget: float, lr: float) -> float:
    """One step of the multiplier of ``cost <= budget`` (module doc, "Budget"): gradient ascent
    on the defect normalised by the budget and clipped at 1, ``mu + lr * min(cost / budget - 1, 1)``,
    while the constraint is violated, and a *dual restart* to 0 as soon as it holds
    (Gallego-Posada et al., NeurIPS 2022, sec. 4 and Algorithm 1; the normalisation and the clip
    are ours: they make ``lr`` independent of the budget's units and bound ``mu``'s growth while
    the cost is still many times the budget)."""
    if cost <= budget:
        return 0.0
    return mu + lr * min(cost / budget - 1.0, 1.0)


def scheduled_budget(final: float, start: float, progress: float) -> float:
    """The budget at ``progress`` (0 to 1) of its schedule (module doc, "Budget schedule"): Zhu &
    Gupta's cubic schedule (2017, eq. 1, there for the share of pruned weights) applied to the
    cost, ``final + (start - final) * (1 - progress)**3``; ``final`` from ``progress >= 1`` on,
    and never below ``final`` when ``start`` is (a network already cheaper than its budget)."""
    p = min(max(progress, 0.0), 1.0)
    return final + max(start - final, 0.0) * (1.0 - p) ** 3


def _global_mean(cost: float, n: int) -> float:
    """The sample-weighted mean of ``cost`` over the ranks of an initialised process group (the
    batch's cost on one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return cost
    t = torch.tensor([cost * n, float(n)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0] / t[1])


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
    #: key of the epoch's mean expected cost in the trainer's epoch record (``train_<key>``)
    stat = "expected_cost"

    def __init__(
        self,
        lam: float,
        ramp_epochs: float = 0.0,
        budget: float | None = None,
        dual_lr: float = 0.0,
        dual_avg: float = COST_AVG,
        budget_epochs: float = 0.0,
        budget_start: float | None = None,
    ) -> None:
        self.lam = config_float(lam, f"{self.what}: lam")
        self.ramp_epochs = config_float(ramp_epochs, f"{self.what}: ramp_epochs")
        self.budget = None if budget is None else config_float(budget, f"{self.what}: budget", strict=True)
        self.dual_lr = config_float(dual_lr, f"{self.what}: dual_lr")
        self.dual_avg = config_float(dual_avg, f"{self.what}: dual_avg")
        if self.dual_avg >= 1:
            raise ConfigError(f"{self.what}: dual_avg must be in [0, 1), got {dual_avg!r}")
        if self.dual_lr > 0 and self.budget is None:
            raise ConfigError(f"{self.what}: dual_lr needs a budget (the constraint cost <= budget it enforces)")
        self.budget_epochs = config_float(budget_epochs, f"{self.what}: budget_epochs")
        if (self.budget_epochs > 0 or budget_start is not None) and self.budget is None:
            raise ConfigError(f"{self.what}: budget_epochs and budget_start schedule a budget; set budget too")
        #: ``C_0`` of the budget schedule (module doc, "Budget schedule"): set, or taken from the
        #: first batch priced
        self.start: float | None = (
            None if budget_start is None else config_float(budget_start, f"{self.what}: budget_start", strict=True)
        )
        if self.start is not None and self.budget_epochs <= 0:
            raise ConfigError(f"{self.what}: budget_start needs budget_epochs (the epochs it falls over)")
        #: Lagrange multiplier of the dual form (module doc, "Budget"); ``None`` otherwise. With a
        #: budget schedule it starts at 0: the schedule sets the pace, not the plain term.
        self.mu: float | None = (0.0 if self.budget_epochs > 0 else 1.0) if self.dual_lr > 0 else None
        #: running mean of the batches' costs that steps the multiplier (``None`` before the first)
        self.avg: float | None = None
        #: the budget the last batch was priced against (``C_p`` of a schedule)
        self.in_force: float | None = self.budget
        self._cost_sum = 0.0
        self._cost_n = 0
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

    def budget_at(self, progress: float = 1.0) -> float | None:
        """The budget in force at ``progress`` of the schedule (``budget`` without one, or before
        ``C_0`` is known)."""
        if self.budget is None or self.budget_epochs <= 0 or self.start is None:
            return self.budget
        return scheduled_budget(self.budget, self.start, progress)

    def value(self, n_samples: int, progress: float = 1.0) -> torch.Tensor:
        """``lam * sum(terms)`` of the forward passes since the last call (then forgets them);
        with a budget the hinge or, with ``dual_lr``, the Lagrangian term, whose multiplier then
        takes its step (module doc, "Budget"), against the budget in force at ``progress`` of a
        budget schedule (its end, ``budget`` itself, by default)."""
        if not self._handles:
            raise RuntimeError(f"{self.what}: call attach(model) before the forward pass (the trainer does)")
        n = max(1, int(n_samples))
        parts = self.terms(n)
        self._seen.clear()
        if not parts:
            return torch.zeros(())
        cost = torch.stack(list(parts.values())).sum()
        c = float(cost.detach())
        self._cost_sum += c * n
        self._cost_n += n
        if self.budget is None:
            return self.lam * cost
        if self.budget_epochs > 0 or self.mu is not None:
            c = _global_mean(c, n)  # one schedule and one multiplier on every rank
        if self.budget_epochs > 0 and self.start is None:
            self.start = c
        budget = self.in_force = self.budget_at(progress)
        if self.mu is None:
            return self.lam * torch.clamp(cost - budget, min=0.0)
        out = (self.lam * self.mu) * (cost - budget)
        self.avg = c if self.avg is None else self.dual_avg * self.avg + (1.0 - self.dual_avg) * c
        self.mu = dual_step(self.mu, self.avg, budget, self.dual_lr)
        return out

    def checkpoint_state(self) -> dict:
        """What a resumed run needs: the dual form's multiplier and the budget schedule's ``C_0``
        (``{}`` for neither)."""
        out = {} if self.mu is None else {"mu": float(self.mu), "avg": self.avg}
        if self.budget_epochs > 0:
            out["start"] = self.start
        return out

    def restore_state(self, state: dict) -> None:
        if self.mu is not None:
            if "mu" not in state:
                raise ConfigError(f"{self.what}: the checkpoint holds no multiplier for the budget's dual_lr")
            self.mu = float(state["mu"])
            self.avg = None if state.get("avg") is None else float(state["avg"])
        if self.budget_epochs > 0:
            if "start" not in state:
                raise ConfigError(f"{self.what}: the checkpoint holds no start cost for the budget schedule")
            self.start = None if state["start"] is None else float(state["start"])

    def epoch_stats(self) -> tuple[float, float]:
        """``(sum of cost x samples, samples)`` priced since the last call (then reset): the
        trainer sums them over ranks and logs the mean as ``train_<stat>``."""
        out = (self._cost_sum, float(self._cost_n))
        self._cost_sum, self._cost_n = 0.0, 0
        return out

    @staticmethod
    def _progress(epoch: int, batch: int, n_batches: int, epochs: float) -> float:
        """Share of ``epochs`` done after ``batch`` (0-based) of the phase's 0-based ``epoch``."""
        return min(1.0, (epoch + (batch + 1) / max(1, n_batches)) / epochs)

    def ramp(self, epoch: int, batch: int, n_batches: int) -> float:
        """The share of ``lam`` applied at ``batch`` (0-based) of the phase's 0-based ``epoch``
        (module doc, "Ramp"): 1 without a ramp."""
        if self.ramp_epochs <= 0:
            return 1.0
        return self._progress(epoch, batch, n_batches, self.ramp_epochs)

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        progress = 1.0
        if self.budget_epochs > 0:
            progress = self._progress(ctx.epoch, ctx.batch, ctx.n_batches, self.budget_epochs)
        return self.ramp(ctx.epoch, ctx.batch, ctx.n_batches) * self.value(len(ctx.targets), progress)
