"""Expected-FLOPs penalty: an L0 term that charges each gate what its weight costs.

Yin et al. (KDD'21) report their connectivity result in FLOPs (Fig. 4: 4.68 against 16.26
MFLOPs), but the L0 penalty of their eq. 20 charges every gate alike. In a spiking CNN the
weights and the FLOPs sit in different layers: in ``28x28-15C5-P2-40C5-P2-300-10`` fc1 holds 97 %
of the weights and conv2 74 % of the FLOPs, so eq. 20 prunes fc1 first and leaves the FLOPs
nearly where they were (docs/connectivity.md, lambda sweep). This term is the expected dense
FLOP count under the gates (our addition, not in the paper):

.. math::

    \\mathbb E[\\mathrm{FLOPs}] = \\sum_{\\text{layers}} \\sum_{ij} 2\\,u_{ij}\\,P(b_{ij} \\ne 0),
    \\qquad P(b_{ij} \\ne 0) = \\sigma\\big(\\log\\alpha_{ij} - \\beta\\log(-\\gamma/\\zeta)\\big),

with ``u_ij`` the number of multiply-accumulates weight ``ij`` takes part in per sample (all
time steps): for a ``Linear`` layer one per input row, for a convolution one per output position
at which the tap reads a real input pixel (taps that read zero padding are not counted). It is
exactly the expectation of :func:`count_ops`' ``flops`` (DESIGN.md: 2 x MACs over non-zero
weights, biases not counted) over the gate distribution, because that count is linear in the
indicators ``b_ij != 0``. A frozen gate contributes its test-time indicator, as in
:mod:`.synops`.

YAML (time-stepped engine): ``train.regularizers: [{name: flops, lam: 1.0e-9}]`` beside
``model.gates`` (``budget: C``, optionally with ``dual_lr``: keep the expected FLOPs per sample
at or under ``C``, :mod:`.gate_penalty`, "Budget"); Yin engine: ``connectivity: {penalty: flops, lam: ...}``.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch import nn

from ..errors import ConfigError
from ..train import register_regularizer
from .connectivity import GatedWeight, tap_use_counts
from .gate_penalty import GatedInputPenalty, prob_nonzero

__all__ = ["ExpectedFlops", "tap_use_counts"]


@register_regularizer("flops")
class ExpectedFlops(GatedInputPenalty):
    """Regularizer ``lam * E[dense FLOPs per sample]`` over every gated layer (module doc); the
    hooks of :class:`GatedInputPenalty` keep the shape of every training-mode layer input.

    YAML: ``{name: flops, lam: 1.0e-9, ramp_epochs: 0, budget: null, dual_lr: 0, dual_avg:
    0.98, budget_epochs: 0, budget_start: null}`` (the options after ``lam``:
    :mod:`.gate_penalty`, "Ramp", "Budget" and "Budget schedule")."""

    what = "flops penalty"
    stat = "expected_flops"

    def __init__(self, lam: float = 1e-9, **options: float | None) -> None:
        """``options``: ``ramp_epochs``, ``budget``, ``dual_lr``, ``dual_avg``, ``budget_epochs``,
        ``budget_start`` of :class:`GatedInputPenalty`."""
        super().__init__(lam, **options)
        self._taps: dict[tuple, torch.Tensor] = {}

    def _record(self, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(x.shape)

    def _check(self, gw: GatedWeight) -> None:
        super()._check(gw)
        if not isinstance(gw.module, nn.modules.conv._ConvNd) and gw.gate.log_alpha.dim() != 2:
            raise ConfigError(f"flops penalty: {gw.name!r} is neither a convolution nor a [out, in] weight")

    def _uses(self, gw: GatedWeight, shape: tuple[int, ...]) -> tuple[float, torch.Tensor | None]:
        """(frames in one call, per-tap use counts per frame or ``None`` for a Linear layer)."""
        mod = gw.module
        if not isinstance(mod, nn.modules.conv._ConvNd):  # Linear, SpikingLinear, LeakyReadout: [out, in]
            return float(math.prod(shape[:-1])), None
        nd = mod.weight.dim() - 2
        spatial = tuple(shape[-nd:])
        key = (id(mod), spatial)
        if key not in self._taps:
            self._taps[key] = tap_use_counts(mod, spatial, what="flops penalty")
        return float(math.prod(shape[: -nd - 1])), self._taps[key]

    def _price(self, gw: GatedWeight, seen: list, n_samples: int) -> torch.Tensor:
        """``E[FLOPs per sample]`` of one gated layer from the input shapes of its calls."""
        p = prob_nonzero(gw)
        total = p.new_zeros(())
        for shape, calls in Counter(seen).items():  # a per-step loop gives T equal shapes: price once
            frames, taps = self._uses(gw, shape)
            per_frame = p.sum() if taps is None else (p * taps.to(p)).sum()
            total = total + 2.0 * calls * frames / n_samples * per_frame
        return total
