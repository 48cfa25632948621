"""SpikeMonitor: record the spikes of any module that emits them, through forward hooks.

Model code stays free of bookkeeping (the sinabs ``hooks.py`` pattern): the monitor keeps, for
the last forward pass, each spiking module's output *with its autograd graph*, so a spike-count
loss (Allred et al. eq. 4) can be differentiated through the surrogate, and metrics can be read.

Which modules emit spikes: by default every module with ``emits_spikes = True`` (all
sparsespike spiking layers). For other libraries pass ``modules=`` (a list, or a predicate on the
module) and, if the module returns a tuple (snnTorch's ``Leaky`` returns ``(spk, mem)``),
``extract=`` to pick the spike tensor (default: the first tensor of a tuple). Per-step models
(called once per time step) are handled: each call's output is appended.

Example::

    >>> import torch
    >>> from sparsespike.layers import SpikingLinear
    >>> from sparsespike.sparsity.monitor import SpikeMonitor
    >>> net = torch.nn.Sequential(SpikingLinear(4, 8), SpikingLinear(8, 2))
    >>> with SpikeMonitor(net) as mon:
    ...     _ = net(torch.ones(5, 3, 4))
    ...     n = mon.spike_count()      # mean spikes per sample, differentiable
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..kernels.sparse import spike_counts


def _default_extract(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    raise TypeError(f"cannot find a spike tensor in module output of type {type(out).__name__}")


class SpikeMonitor:
    """Record spikes of the spiking modules of ``model`` on every forward pass.

    Args:
        model: any ``nn.Module``.
        modules: which modules emit spikes: ``None`` (those with ``emits_spikes = True``), an
            iterable of modules, or a predicate ``module -> bool``.
        extract: picks the spike tensor from a module's output.
        batch_dim: the batch dimension of the recorded tensors (1 for time-major ``[T, B, ...]``,
            0 for per-step ``[B, ...]`` outputs).
    """

    def __init__(
        self,
        model: nn.Module,
        modules: Iterable[nn.Module] | Callable[[nn.Module], bool] | None = None,
        extract: Callable = _default_extract,
        batch_dim: int = 1,
    ) -> None:
        if modules is None:
            chosen = [m for m in model.modules() if getattr(m, "emits_spikes", False)]
        elif callable(modules) and not isinstance(modules, nn.Module):
            chosen = [m for m in model.modules() if modules(m)]
        else:
            chosen = list(modules)
        if not chosen:
            raise ValueError("SpikeMonitor: no spiking modules found; pass modules=")
        names = {m: n for n, m in model.named_modules()}
        self.modules = chosen
        self.names = [names.get(m, type(m).__name__) for m in chosen]
        self.extract = extract
        self.batch_dim = batch_dim
        self.records: dict[str, list[torch.Tensor]] = {n: [] for n in self.names}
        self._handles: list = []
        self.attach()

    def attach(self) -> SpikeMonitor:
        if self._handles:
            return self
        for name, m in zip(self.names, self.modules, strict=True):
            self._handles.append(m.register_forward_hook(self._make_hook(name)))
        return self

    def _make_hook(self, name: str):
        def hook(module, inputs, output):
            self.records[name].append(self.extract(output))

        return hook

    def reset(self) -> None:
        """Forget what was recorded (call before each forward pass of a training step)."""
        for v in self.records.values():
            v.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> SpikeMonitor:
        self.reset()
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()

    def spikes(self) -> dict[str, list[torch.Tensor]]:
        """Recorded spike tensors per module name (one entry per forward call)."""
        return self.records

    def spike_counts(self, check: bool = False) -> dict[str, torch.Tensor]:
        """Mean spikes per sample of each module (differentiable; DESIGN.md 'Spike count').

        ``check=True`` raises :class:`~sparsespike.errors.SpikeInputError` if a recorded tensor
        is not binary or holds NaN (a module that does not emit spikes was monitored).
        """
        out = {}
        for name, recs in self.records.items():
            if not recs:
                continue
            if check:
                from ..layers import check_spikes

                for r in recs:
                    check_spikes(r.detach(), f"SpikeMonitor[{name}]")
            if recs[0].dim() == 2 and self.batch_dim == 1:  # [B, N] per step: dim 1 is the neurons
                raise ValueError(
                    f"SpikeMonitor[{name}]: records are 2-D {tuple(recs[0].shape)} (a per-step model, "
                    "[B, N] each call), so the batch is dim 0: create the monitor with batch_dim=0"
                )
            total = sum(spike_counts(r).sum() if r.dim() >= 3 else r.sum() for r in recs)
            batch = recs[0].shape[self.batch_dim] if recs[0].dim() > self.batch_dim else 1
            out[name] = total / batch
        return out

    def spike_count(self) -> torch.Tensor:
        """Mean spikes per sample over all recorded modules (hidden and output, not input)."""
        counts = self.spike_counts()
        if not counts:
            raise RuntimeError("SpikeMonitor: nothing recorded; run a forward pass first")
        return sum(counts.values())
