"""Torch autograd bridge: exact forward spike times, EventProp backward.

:func:`event_forward` runs every layer in one :class:`torch.autograd.Function`, returning the
spike times of *all* non-input layers. Its backward receives ``dL/dt`` for each layer's times
(any loss computed in torch from any of them, e.g. the SP penalty on hidden layers) and uses it
as the direct part of ``err_k`` in the adjoint jump (Fontanini eq. 5), adding what the layer
above passes down. Gradients flow to every weight matrix and, if it requires grad, to the input
spike times.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ..errors import SpikeInputError
from .adjoint import adjoint_network
from .params import DEFAULT_PARAMS, DEFAULT_SOLVER, LIFParams, SolverOptions
from .simulate import check_input_times, simulate_network

__all__ = ["EventOutput", "event_forward"]


@dataclass
class EventOutput:
    """Spike times of every non-input layer of a network.

    Attributes:
        times: per layer ``[B, N_l, S_l]`` float64 tensors, each neuron's spikes in ascending
            order, ``+inf`` padded (``S_l`` = the largest spike count in the batch, >= 1).
            Differentiable (EventProp).
        counts: per layer ``[B, N_l]`` int64 spike counts.
        n_capped: per layer, neurons (over the batch) that reached ``max_spikes``.
    """

    times: list[torch.Tensor]
    counts: list[torch.Tensor]
    n_capped: list[int] = field(default_factory=list)

    @property
    def output(self) -> torch.Tensor:
        """Spike times of the output layer, ``[B, N_O, S]``."""
        return self.times[-1]

    @property
    def first_spikes(self) -> torch.Tensor:
        """First spike time of every output neuron, ``[B, N_O]`` (``+inf`` if silent)."""
        return self.times[-1][..., 0]

    @property
    def hidden(self) -> list[torch.Tensor]:
        return self.times[:-1]

    def spikes_per_neuron(self) -> list[float]:
        """<N_S> per layer: spikes per neuron per sample (Fontanini sec. 4.1)."""
        return [float(c.double().mean()) for c in self.counts]


class _EventPropFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, params, options, record, input_times, *weights):  # noqa: D401
        x = check_input_times(input_times.detach().cpu().numpy())
        Ws = [np.ascontiguousarray(w.detach().cpu().numpy(), dtype=np.float64) for w in weights]
        layers = simulate_network(x, Ws, params, options)
        ctx.params = params
        ctx.options = options
        ctx.layers = layers
        ctx.Ws = Ws
        ctx.in_shape = tuple(input_times.shape)
        ctx.x_shape = x.shape
        ctx.dtypes = [w.dtype for w in weights]
        ctx.in_dtype = input_times.dtype
        ctx.devices = [w.device for w in weights]
        ctx.in_device = input_times.device
        record["counts"] = [torch.from_numpy(sp.counts) for _, sp in layers]
        record["n_capped"] = [sp.n_capped for _, sp in layers]
        # the simulator runs on the CPU; results go back to the input's device
        dev = input_times.device
        outs = tuple(torch.from_numpy(sp.times.copy()).to(dev) for _, sp in layers)
        return outs

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_times):
        dl_dt = [None if g is None else g.detach().cpu().numpy() for g in grad_times]
        need_x = bool(ctx.needs_input_grad[3])
        grads, g_in = adjoint_network(ctx.layers, ctx.Ws, dl_dt, ctx.x_shape, ctx.params, ctx.options,
                                      need_input_grad=need_x)  # fmt: skip
        gWs = tuple(
            torch.from_numpy(g).to(device=dv, dtype=dt)
            for g, dt, dv in zip(grads, ctx.dtypes, ctx.devices, strict=True)
        )
        g_x = None
        if need_x:
            g_x = torch.from_numpy(g_in.reshape(ctx.in_shape)).to(ctx.in_device, ctx.in_dtype)
        return (None, None, None, g_x, *gWs)


def event_forward(
    input_times: torch.Tensor,
    weights: list[torch.Tensor] | tuple[torch.Tensor, ...],
    params: LIFParams = DEFAULT_PARAMS,
    options: SolverOptions = DEFAULT_SOLVER,
) -> EventOutput:
    """Exact spike times of a feed-forward LIF network, differentiable by EventProp.

    Args:
        input_times: ``[B, N_in]`` (one spike per input neuron) or ``[B, N_in, S]`` spike times
            in ms; ``+inf`` = no spike. Must be >= 0 and not NaN.
        weights: ``weights[l]`` is ``[N_{l+1}, N_l]``; ``W[m, n]`` is the jump of ``I_m`` at a
            spike of neuron ``n`` of the layer below.

    Returns:
        :class:`EventOutput` (``times`` differentiable wrt weights and input times).

    Example:
        >>> import torch
        >>> from sparsespike.eventprop import event_forward, LIFParams
        >>> w = torch.full((1, 1), 2 * LIFParams().w_norm, dtype=torch.float64, requires_grad=True)
        >>> out = event_forward(torch.zeros(1, 1, dtype=torch.float64), [w])
        >>> out.counts[0].item()
        2
        >>> out.first_spikes.sum().backward(); bool(w.grad.item() < 0)
        True
    """
    if not isinstance(input_times, torch.Tensor):
        input_times = torch.as_tensor(np.asarray(input_times, dtype=np.float64))
    if not torch.is_floating_point(input_times) or input_times.dtype in (torch.float16, torch.bfloat16):
        input_times = input_times.to(torch.float64)  # the kernels run in float32 / float64
    if len(weights) == 0:
        raise SpikeInputError("event_forward needs at least one weight matrix")
    n_prev = input_times.shape[1] if input_times.dim() >= 2 else None
    for l, w in enumerate(weights):
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            raise SpikeInputError(f"weights[{l}] must be a 2-D tensor [N_out, N_in]")
        if w.dtype not in (torch.float32, torch.float64):
            raise SpikeInputError(f"weights[{l}] must be float32 or float64, got {w.dtype}")
        if n_prev is not None and w.shape[1] != n_prev:
            raise SpikeInputError(f"weights[{l}] has shape {tuple(w.shape)}, expected [N_out, {n_prev}]")
        n_prev = w.shape[0]
    record: dict = {}
    times = _EventPropFunction.apply(params, options, record, input_times, *weights)
    return EventOutput(list(times), record["counts"], record["n_capped"])
