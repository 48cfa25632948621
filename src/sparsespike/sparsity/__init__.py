"""The sparsity tools: activity (spike-count loss), connectivity (L0 gates), SpikeMonitor."""

from .monitor import SpikeMonitor

__all__ = ["SpikeMonitor"]

# connectivity sparsity (hard-concrete L0 gates, Yin et al. 2021)
from .connectivity import (  # noqa: E402
    HardConcreteGate,
    add_l0_gates,
    constrain_gates,
    count_ops,
    expected_l0,
    gate_parameters,
    l0_penalty,
    prune,
    resample_gates,
    sparsity_report,
)

__all__ += [
    "HardConcreteGate",
    "add_l0_gates",
    "constrain_gates",
    "count_ops",
    "expected_l0",
    "gate_parameters",
    "l0_penalty",
    "prune",
    "resample_gates",
    "sparsity_report",
]
