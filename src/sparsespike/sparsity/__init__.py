"""The sparsity tools: activity (spike-count loss), connectivity (L0 gates), SpikeMonitor."""

from .monitor import SpikeMonitor

__all__ = ["SpikeMonitor"]
