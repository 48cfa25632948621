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

For a ``Linear`` layer the expectation is exact. For a convolution it charges each input spike
the full kernel fan-out ``sum_{o,kh,kw} P(b_{o,c,kh,kw} != 0)``, an upper bound that ignores the
positions a kernel loses at the borders (exact for interior positions). Grouped convolutions
are not supported.

YAML: ``train.regularizers: [{name: synops, lam: 1.0e-6}]`` beside ``model.gates``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..train import LossContext, register_regularizer
from .connectivity import GatedWeight, gated_weights

__all__ = ["ExpectedSynOps", "expected_synops", "input_spike_counts"]


def input_spike_counts(x: torch.Tensor, features: int, n_samples: int, conv: bool = False) -> torch.Tensor:
    """Spikes per sample on each input feature (``conv``: on each input channel, summed over
    space) of a layer input ``x`` with any leading dims (``[T, B, ...]``, ``[B, ...]``).

    An input that carries a spike list (an encoder's raster) is counted from the list without
    reading the dense raster; it needs no gradient.
    """
    if not x.requires_grad and not conv and x.device.type == "cpu":
        from ..kernels.sparse import get_meta

        meta = get_meta(x)
        lst = meta.spike_list() if meta is not None else None
        if lst is not None and lst.F == features:
            i = (lst.idx % features).long()
            return torch.bincount(i, weights=lst.vals, minlength=features).to(x.dtype) / n_samples
    if conv:
        xs = x.reshape(-1, features, x.shape[-2] * x.shape[-1]).sum((0, 2))
    else:
        xs = x.reshape(-1, features).sum(0)
    return xs / n_samples


def expected_synops(gw: GatedWeight, counts: torch.Tensor) -> torch.Tensor:
    """``sum_i n_i sum_j P(b_ij != 0)`` for one gated weight (see the module doc).

    A frozen gate (``connectivity.freeze_gates``) is no longer random: its ``P(b != 0)`` is the
    indicator of its test-time gate being non-zero, so the term is then the SynOps count itself
    and only the spikes receive gradient.
    """
    g = gw.gate
    p = (g.test_gate() != 0).to(counts.dtype) if g.frozen else g.prob_nonzero()
    if p.dim() == 2:  # Linear [out, in]
        fan = p.sum(0)
    elif p.dim() == 4:  # Conv2d [out, in, kh, kw]
        groups = getattr(gw.module, "groups", 1)
        if groups != 1:
            raise ConfigError(f"synops penalty: grouped convolution {gw.name!r} (groups={groups}) is not supported")
        fan = p.sum((0, 2, 3))
    else:
        raise ConfigError(f"synops penalty: unsupported weight shape {tuple(p.shape)} at {gw.name!r}")
    if fan.shape != counts.shape:
        raise ConfigError(
            f"synops penalty: {gw.name!r} has {fan.numel()} inputs but its input has {counts.numel()} features"
        )
    return (counts * fan).sum()


class ExpectedSynOps:
    """Regularizer ``lam * E[SynOps per sample]`` over every gated layer (module doc).

    ``attach(model)`` (called by the trainer) registers forward pre-hooks on the gated modules
    that keep each training batch's layer inputs (every call, so a model stepped through time
    one call per step is counted over all steps) until the term is evaluated; eval-mode passes
    are not recorded.
    """

    def __init__(self, lam: float = 1e-6, detach_spikes: bool = False) -> None:
        try:
            lam = float(lam)  # YAML reads 1e-6 (no dot) as a string
        except (TypeError, ValueError):
            raise ConfigError(f"synops penalty: lam must be a number, got {lam!r}") from None
        if not lam >= 0:
            raise ConfigError(f"synops penalty: lam must be >= 0, got {lam}")
        self.lam = lam
        self.detach_spikes = bool(detach_spikes)
        self._inputs: dict[int, list[torch.Tensor]] = {}
        self._gated: list[GatedWeight] = []
        self._handles: list = []

    def attach(self, model: nn.Module) -> ExpectedSynOps:
        self.release()
        self._gated = gated_weights(model)
        if not self._gated:
            raise ConfigError("synops penalty needs L0 gates (model.gates) on the model")
        for gw in self._gated:
            key = id(gw.module)

            def hook(mod, args, key=key):
                if mod.training and args:  # a per-step loop calls the module T times
                    self._inputs.setdefault(key, []).append(args[0])

            self._handles.append(gw.module.register_forward_pre_hook(hook))
        return self

    def release(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._inputs.clear()

    def terms(self, n_samples: int) -> dict[str, torch.Tensor]:
        """``E[SynOps per sample]`` of each gated layer seen in the last training forward pass."""
        out = {}
        for gw in self._gated:
            xs = self._inputs.get(id(gw.module))
            if not xs:
                continue
            conv = gw.gate.log_alpha.dim() == 4
            feats = gw.gate.log_alpha.shape[1]
            counts = sum(
                input_spike_counts(x.detach() if self.detach_spikes else x, feats, n_samples, conv) for x in xs
            )
            out[gw.name] = expected_synops(gw, counts)
        return out

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        if not self._handles:
            raise RuntimeError("synops penalty: call attach(model) before the forward pass (the trainer does)")
        n = max(1, len(ctx.targets))
        parts = self.terms(n)
        self._inputs.clear()
        if not parts:
            return torch.zeros(())
        return self.lam * torch.stack(list(parts.values())).sum()


@register_regularizer("synops")
def synops_regularizer(lam: float = 1e-6, detach_spikes: bool = False) -> ExpectedSynOps:
    """YAML: ``{name: synops, lam: 1.0e-6, detach_spikes: false}`` (module doc)."""
    return ExpectedSynOps(lam, detach_spikes)
