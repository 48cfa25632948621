"""Expected-SynOps penalty: activity and connectivity sparsity priced in one energy term.

A synaptic operation is one input spike delivered through one non-zero weight (DESIGN.md,
``metrics.synops``), so a gated layer with input spike counts ``n_i`` (per sample, summed over
time) and hard-concrete gates ``b_ij`` costs, in expectation over the gates,

.. math::

    \\mathbb E[\\mathrm{SynOps}] = \\sum_i n_i \\sum_j P(b_{ij} \\ne 0),\\qquad
    P(b_{ij} \\ne 0) = \\sigma\\big(\\log\\alpha_{ij} - \\beta\\log(-\\gamma/\\zeta)\\big)

(the gate probability of Yin et al. KDD'21 eq. 20 / Louizos et al. 2018 eq. 12). The L0 penalty
of eq. 20 charges every gate the same; this term charges a gate by how often its input spikes,
so it prunes the synapses that cost energy (those behind busy inputs) first and leaves those of
silent inputs, which cost nothing, to the plain L0 term. Its gradient also reaches the input
spikes of hidden layers (through the surrogate), weighted by each neuron's expected fan-out:
a spike that fans out to many synapses is penalised more -- the spike-count loss of Allred et
al. eq. 5 weighted by connectivity. ``detach_spikes=True`` keeps only the gate part.

For a ``Linear`` layer the expectation is exact. For a convolution the spike counts are kept per
input position and each position is charged its own expected fan-out: the transposed convolution
of an all-ones output with ``P(b != 0)`` (:func:`sparsespike.metrics.conv_fanout` with ``values=True``), so
borders, strides, dilation and padding are priced exactly, as ``metrics`` counts them. Grouped
convolutions are not supported.

YAML: ``train.regularizers: [{name: synops, lam: 1.0e-6}]`` beside ``model.gates``; add
``ramp_epochs: R`` to raise the weight linearly from 0 over the phase's first ``R`` epochs, or
``budget: C`` to stop pushing once the expected SynOps per sample are at or below ``C``, with
``dual_lr: eta`` to hold them at ``C`` by a Lagrange multiplier, and ``budget_epochs: R`` to lower
the budget to ``C`` gradually over the phase's first ``R`` epochs (:mod:`.gate_penalty`, "Budget"
and "Budget schedule"; the trainer logs the epoch's mean as ``train_expected_synops``).
"""

from __future__ import annotations

import contextlib
import math

import torch

from ..errors import ConfigError
from ..kernels.sparse import get_meta, spike_counts
from ..metrics import conv_fanout
from ..train import register_regularizer
from .connectivity import GatedWeight
from .gate_penalty import COST_AVG, GatedInputPenalty, prob_nonzero

__all__ = ["ExpectedSynOps", "expected_synops", "input_spike_counts"]


def input_spike_counts(x: torch.Tensor, features: int, n_samples: int, conv: bool = False) -> torch.Tensor:
    """Spikes per sample on each input feature (``[features]``; ``conv``: on each input position,
    ``[C, H, W]``) of a layer input ``x`` with any leading dims (``[T, B, ...]``, ``[B, ...]``).

    An input that carries a spike list (an encoder's raster, a sparse layer's output) is counted
    from the list (``kernels.sparse.spike_counts``), without reading the dense tensor; the
    gradient, if ``x`` needs one, is the same as the dense sum's.
    """
    unit = (features, x.shape[-2], x.shape[-1]) if conv else (features,)
    if x.dim() >= 3 and get_meta(x) is not None:
        c = spike_counts(x)  # [prod(x.shape[2:])]
        if c.numel() == math.prod(unit):
            return c.reshape(unit) / n_samples
    return x.reshape(-1, *unit).sum(0) / n_samples


def expected_synops(gw: GatedWeight, counts: torch.Tensor) -> torch.Tensor:
    """``sum_i n_i sum_j P(b_ij != 0)`` for one gated weight (see the module doc).

    A frozen gate (``connectivity.freeze_gates``) is no longer random: its ``P(b != 0)`` is the
    indicator of its test-time gate being non-zero, so the term is then the SynOps count itself
    and only the spikes receive gradient.
    """
    p = prob_nonzero(gw)
    if p.dim() == 2:  # Linear [out, in]
        fan = p.sum(0)
    elif p.dim() == 4:  # Conv2d [out, in, kh, kw]: counts [C, H, W], each position its own fan-out
        m = gw.module
        groups = getattr(m, "groups", 1)
        if groups != 1:
            raise ConfigError(f"synops penalty: grouped convolution {gw.name!r} (groups={groups}) is not supported")
        if getattr(m, "padding_mode", "zeros") != "zeros":
            raise ConfigError(f"synops penalty: {gw.name!r} pads with {m.padding_mode!r}; zero padding only")
        if counts.dim() != 3:
            raise ConfigError(f"synops penalty: {gw.name!r} needs per-position input counts [C, H, W]")
        fan = conv_fanout(p, tuple(counts.shape[1:]), m.stride, m.padding, m.dilation, values=True).to(counts.dtype)
    else:
        raise ConfigError(f"synops penalty: unsupported weight shape {tuple(p.shape)} at {gw.name!r}")
    if fan.shape != counts.shape:
        raise ConfigError(
            f"synops penalty: {gw.name!r} has {fan.numel()} inputs but its input has {counts.numel()} features"
        )
    return (counts * fan).sum()


@register_regularizer("synops")
class ExpectedSynOps(GatedInputPenalty):
    """Regularizer ``lam * E[SynOps per sample]`` over every gated layer (module doc); the hooks
    of :class:`GatedInputPenalty` keep each training batch's layer inputs.

    YAML: ``{name: synops, lam: 1.0e-6, detach_spikes: false, ramp_epochs: 0, budget: null,
    dual_lr: 0, dual_avg: 0.98, budget_epochs: 0, budget_start: null}`` (the options after
    ``detach_spikes``: :mod:`.gate_penalty`, "Ramp", "Budget" and "Budget schedule")."""

    what = "synops penalty"
    stat = "expected_synops"

    def __init__(
        self,
        lam: float = 1e-6,
        detach_spikes: bool = False,
        ramp_epochs: float = 0.0,
        budget: float | None = None,
        dual_lr: float = 0.0,
        dual_avg: float = COST_AVG,
        budget_epochs: float = 0.0,
        budget_start: float | None = None,
    ) -> None:
        super().__init__(lam, ramp_epochs, budget, dual_lr, dual_avg, budget_epochs, budget_start)
        self.detach_spikes = bool(detach_spikes)

    def _price(self, gw: GatedWeight, seen: list, n_samples: int) -> torch.Tensor:
        """``E[SynOps per sample]`` of one gated layer from its input spikes in the last pass."""
        conv = gw.gate.log_alpha.dim() == 4
        feats = gw.gate.log_alpha.shape[1]
        # detached: counted without a graph, on the inputs themselves (.detach() would drop their spike lists)
        with torch.no_grad() if self.detach_spikes else contextlib.nullcontext():
            counts = sum(input_spike_counts(x, feats, n_samples, conv) for x in seen)
        return expected_synops(gw, counts)
