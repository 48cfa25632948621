"""Parameters of the event-driven LIF engine: the neuron model and the solver's numerics.

Neuron model (Fontanini et al. 2024, eqs. 1-3; Wunderlich & Pehle 2021)::

    tau_m dV/dt = -V + R_m I,      tau_s dI/dt = -I,
    V(t_k^-) = theta  ->  spike at t_k, V(t_k^+) = 0, I unchanged;
    an input spike from n adds W[m, n] to I_m (a jump of W, not W / tau_s).

All times are in milliseconds. Defaults are Fontanini Table 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

ON_OVERFLOW = ("raise", "warn", "ignore")


@dataclass(frozen=True)
class LIFParams:
    """Current-based LIF neuron and simulation window (Fontanini Table 1).

    Attributes:
        tau_m: membrane time constant (ms), 20.
        tau_s: synaptic time constant (ms), 5. Must differ from ``tau_m`` (the closed form
            divides by ``tau_m - tau_s``).
        r_m: membrane resistance R_m, 1.
        threshold: firing threshold theta, 1.
        t_window: simulation window T (ms), 30. Spikes after T are discarded and the adjoint
            starts from lambda(T) = 0 (Fontanini eq. 6).
    """

    tau_m: float = 20.0
    tau_s: float = 5.0
    r_m: float = 1.0
    threshold: float = 1.0
    t_window: float = 30.0

    def __post_init__(self) -> None:
        for name in ("tau_m", "tau_s", "r_m", "threshold", "t_window"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"LIFParams.{name} must be a finite positive number, got {v!r}")
        if abs(self.tau_m - self.tau_s) < 1e-9 * max(self.tau_m, self.tau_s):
            raise ConfigError(
                f"LIFParams: tau_m ({self.tau_m}) must differ from tau_s ({self.tau_s}); "
                "the closed-form solution divides by tau_m - tau_s"
            )

    @property
    def w_norm(self) -> float:
        """Weight of one input spike whose PSP peak equals the threshold exactly.

        For theta = R_m = 1 this is METHODS 2(e)1 (W&P ``test_lif_layer.py``):
        ``w_norm = (tau_m - tau_s)/tau_s * f^(f/(f-1)) / (f-1)`` with ``f = tau_m/tau_s``
        (6.3496 for 20/5 ms). Computed from the peak of the closed-form PSP, so it also holds
        for other theta and R_m.
        """
        k = self.tau_s / (self.tau_m - self.tau_s)
        # single input of weight w at t = 0: V = w R k (e^{-t/tau_m} - e^{-t/tau_s})
        d_peak = math.log(self.tau_m / self.tau_s) / (1.0 / self.tau_s - 1.0 / self.tau_m)
        peak_per_w = self.r_m * k * (math.exp(-d_peak / self.tau_m) - math.exp(-d_peak / self.tau_s))
        return self.threshold / peak_per_w


@dataclass(frozen=True)
class SolverOptions:
    """Numerics of the exact simulator and of the adjoint.

    Attributes:
        max_spikes: cap on spikes per neuron per window (per sample). A neuron that reaches it
            stops (its later spikes are dropped, so the forward and the gradients stay those of
            a well-defined model: "a neuron that falls silent after ``max_spikes`` spikes");
            what happens then is ``on_overflow``.
        on_overflow: ``"raise"`` (SpikeInputError), ``"warn"`` (RuntimeWarning, the default)
            or ``"ignore"``. The number of capped neurons is always counted in the stats.
        peak_tol: an interior maximum of V makes a spike only if ``V_peak > theta + peak_tol``
            (the "V > theta + eps" rule of the reference code). A peak exactly at the
            threshold (the ``w_norm`` test) makes no spike.
        root_xtol: the crossing time is solved by Newton's method safeguarded by bisection
            until the bracket/step is below ``root_xtol`` ms (1e-12 ms by default; the result
            is accurate to ~1e-13 ms in float64 away from grazing).
        grazing_eps: in the adjoint jump ``lambda_V^- = lambda_V^+ + (theta lambda_V^+ + err)
            / (R I - theta)`` the denominator ``R I - theta = tau_m dV/dt^-`` (positive for an
            upward crossing) is clipped to at least ``grazing_eps``, bounding the gradient of a
            spike that only grazes the threshold. Exact for every spike whose crossing slope
            exceeds it.
    """

    max_spikes: int = 32
    on_overflow: str = "warn"
    peak_tol: float = 1e-10
    root_xtol: float = 1e-12
    grazing_eps: float = 1e-3

    def __post_init__(self) -> None:
        if not (isinstance(self.max_spikes, int) and self.max_spikes >= 1):
            raise ConfigError(f"SolverOptions.max_spikes must be an int >= 1, got {self.max_spikes!r}")
        if self.on_overflow not in ON_OVERFLOW:
            raise ConfigError(f"SolverOptions.on_overflow must be one of {ON_OVERFLOW}, got {self.on_overflow!r}")
        for name in ("peak_tol", "root_xtol", "grazing_eps"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"SolverOptions.{name} must be a finite number >= 0, got {v!r}")
        if self.root_xtol <= 0:
            raise ConfigError("SolverOptions.root_xtol must be > 0")
        if self.grazing_eps <= 0:  # the adjoint jump divides by max(R I - theta, grazing_eps)
            raise ConfigError("SolverOptions.grazing_eps must be > 0: it bounds the adjoint jump's denominator")


#: Fontanini Table 1 neuron and the default numerics (frozen, safe as argument defaults).
DEFAULT_PARAMS = LIFParams()
DEFAULT_SOLVER = SolverOptions()
