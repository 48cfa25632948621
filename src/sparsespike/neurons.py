"""Discrete-time leaky integrate-and-fire (LIF) dynamics as pure functions over typed parameters.

One step of the (optionally current-based) LIF neuron, with ``V`` the membrane *before* reset:

.. math::

    I_s[t] &= \\alpha I_s[t-1] + X[t]              &\\text{(synaptic current, if alpha is set)}\\\\
    V[t]   &= \\beta U[t-1] + I_s[t]               &\\text{(membrane; } I_s = X \\text{ without alpha)}\\\\
    S[t]   &= H(V[t] - \\vartheta)                 &\\\\
    U[t]   &= V[t] - \\vartheta S[t] \\;\\text{(subtract)}\\quad\\text{or}\\quad V[t](1 - S[t])\\;\\text{(zero)}

with ``X[t]`` the synaptic input (``W x[t]``), ``U[-1] = I_s[-1] = 0``. This is the discretised
LIF of Neftci, Mostafa & Zenke 2019 (eqs. 4-6, SpyTorch), the STBP neuron of Wu et al. 2018 eq. 7
with zero reset (Yin et al. eq. 1), and Perez-Nieves & Goodman eq. 1 with subtractive reset
(their reset is applied one step later, outside the decay; see the README's design notes).
By default the reset is *detached* (``S`` in the reset term carries no gradient), as in all
four papers' code. ``beta = exp(-dt/tau_mem)``, ``alpha = exp(-dt/tau_syn)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum

import torch

from .surrogate import FastSigmoid, Surrogate, make_surrogate, spike


class Reset(str, Enum):
    """How the membrane is reset after a spike."""

    SUBTRACT = "subtract"  # U = V - thr*S
    ZERO = "zero"  # U = V*(1 - S)


@dataclass(frozen=True)
class LIFParams:
    """Parameters of a discrete-time (current-based) LIF neuron.

    Args:
        beta: membrane decay per step, in (0, 1].
        alpha: synaptic-current decay per step in [0, 1), or ``None`` for no synaptic current.
        threshold: firing threshold ``thr`` (> 0).
        reset: :class:`Reset` (``"subtract"`` or ``"zero"``).
        detach_reset: if True the reset term carries no gradient.
        surrogate: surrogate derivative of the spike function.
    """

    beta: float = 0.9
    alpha: float | None = None
    threshold: float = 1.0
    reset: Reset = Reset.SUBTRACT
    detach_reset: bool = True
    surrogate: Surrogate = field(default_factory=FastSigmoid)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "reset", Reset(self.reset))
        except ValueError:
            raise ValueError(f"reset must be one of {[r.value for r in Reset]}, got {self.reset!r}") from None
        object.__setattr__(self, "surrogate", make_surrogate(self.surrogate))
        if not (0.0 < self.beta <= 1.0):
            raise ValueError(f"beta must be in (0, 1], got {self.beta}")
        if self.alpha is not None and not (0.0 <= self.alpha < 1.0):
            raise ValueError(f"alpha must be in [0, 1) or None, got {self.alpha}")
        if not self.threshold > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")

    @classmethod
    def from_taus(cls, tau_mem: float, dt: float = 1.0, tau_syn: float | None = None, **kw):
        """``beta = exp(-dt/tau_mem)``, ``alpha = exp(-dt/tau_syn)`` (Neftci et al. 2019 eq. 5)."""
        alpha = None if tau_syn is None else math.exp(-dt / tau_syn)
        return cls(beta=math.exp(-dt / tau_mem), alpha=alpha, **kw)

    def replace(self, **kw) -> LIFParams:
        return replace(self, **kw)


@dataclass
class LIFState:
    """Neuron state between steps: membrane after reset ``u`` and synaptic current ``i``."""

    u: torch.Tensor
    i: torch.Tensor | None = None


def lif_step(x: torch.Tensor, state: LIFState | None, p: LIFParams) -> tuple[torch.Tensor, torch.Tensor, LIFState]:
    """One LIF step (equations in the module docstring). Returns ``(S[t], V[t], new state)``.

    Differentiable with plain autograd; this is the per-step reference the kernels are tested
    against.
    """
    if state is None:
        state = LIFState(torch.zeros_like(x), torch.zeros_like(x) if p.alpha is not None else None)
    if p.alpha is not None:
        i_syn = p.alpha * state.i + x
    else:
        i_syn = x
    v = p.beta * state.u + i_syn
    s = spike(v - p.threshold, p.surrogate)
    s_r = s.detach() if p.detach_reset else s
    if p.reset is Reset.SUBTRACT:
        u = v - p.threshold * s_r
    else:
        u = v * (1.0 - s_r)
    return s, v, LIFState(u, i_syn if p.alpha is not None else None)


def lif_sequence_loop(x: torch.Tensor, p: LIFParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive per-step autograd loop over a time-major input ``[T, ...]``: ``(S, V)``, both ``[T, ...]``."""
    state = None
    spikes, mems = [], []
    for t in range(x.shape[0]):
        s, v, state = lif_step(x[t], state, p)
        spikes.append(s)
        mems.append(v)
    return torch.stack(spikes), torch.stack(mems)
