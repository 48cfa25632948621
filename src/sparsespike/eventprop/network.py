"""``EventNetwork``: a feed-forward LIF network simulated exactly, trained with EventProp.

A thin module over :func:`~sparsespike.eventprop.functional.event_forward`: it only holds the
weights, the neuron parameters and the solver options.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ConfigError
from .functional import EventOutput, event_forward
from .params import LIFParams, SolverOptions

__all__ = ["EventNetwork", "YINYANG_INIT_RANGES", "MNIST_INIT_RANGES", "default_init_ranges"]

#: Fontanini et al. 2024, Table 2 (uniform init ranges per layer, layer 1 first).
YINYANG_INIT_RANGES: tuple[tuple[float, float], ...] = (
    (1.0, 3.0),
    (0.2, 1.0),
    (0.0, 1.0),
    (0.0, 1.0),
)
MNIST_INIT_RANGES: tuple[tuple[float, float], ...] = (
    (-0.01, 0.03),
    (-0.05, 0.15),
    (-0.2, 0.6),
    (-0.4, 0.8),
)


def default_init_ranges(n_layers: int) -> list[tuple[float, float]]:
    """Yin-Yang ranges extended to any depth: [1, 3], [0.2, 1], then [0, 1] for every further
    layer (our assumption for the depth study 5-40-20-3 / 5-40-33-25-13-3, which the paper
    does not tabulate)."""
    base = [YINYANG_INIT_RANGES[0], YINYANG_INIT_RANGES[1]]
    return (base + [(0.0, 1.0)] * max(0, n_layers - 2))[:n_layers]


class EventNetwork(torch.nn.Module):
    """Feed-forward current-based LIF network with exact spike times.

    Args:
        sizes: neurons per layer including the input, e.g. ``[5, 40, 25, 13, 3]``.
        init_ranges: per non-input layer ``(low, high)`` of the uniform weight init;
            default :func:`default_init_ranges` (Fontanini Table 2 for Yin-Yang).
        params: neuron model (:class:`LIFParams`, Fontanini Table 1 defaults).
        solver: numerics (:class:`SolverOptions`).
        dtype: weight dtype, float64 by default (the simulator always computes in float64).
        generator: optional ``torch.Generator`` for the init.

    ``forward(input_times)`` returns an :class:`EventOutput`: spike times of all layers.

    Example:
        >>> import torch
        >>> from sparsespike.eventprop import EventNetwork, encode_yinyang, ce_loss
        >>> net = EventNetwork([5, 40, 25, 13, 3], generator=torch.Generator().manual_seed(0))
        >>> x = encode_yinyang(torch.tensor([[0.2, 0.7, 0.8, 0.3]]))
        >>> out = net(x)
        >>> loss = ce_loss(out.first_spikes, torch.tensor([1]))
        >>> loss.backward()
        >>> net.weights[0].grad.shape
        torch.Size([40, 5])
    """

    def __init__(
        self,
        sizes: Sequence[int],
        init_ranges: Sequence[Sequence[float]] | None = None,
        params: LIFParams | None = None,
        solver: SolverOptions | None = None,
        dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ConfigError(f"sizes must list >= 2 positive layer sizes, got {sizes}")
        n_layers = len(sizes) - 1
        if init_ranges is None:
            init_ranges = default_init_ranges(n_layers)
        init_ranges = [tuple(float(v) for v in r) for r in init_ranges]
        if len(init_ranges) != n_layers or any(len(r) != 2 or r[0] > r[1] for r in init_ranges):
            raise ConfigError(
                f"init_ranges must give (low, high) with low <= high for each of the {n_layers} "
                f"non-input layers, got {init_ranges}"
            )
        self.sizes = sizes
        self.init_ranges = init_ranges
        self.params = params if params is not None else LIFParams()
        self.solver = solver if solver is not None else SolverOptions()
        self.weights = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.empty(sizes[l + 1], sizes[l], dtype=dtype)) for l in range(n_layers)]
        )
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for w, (lo, hi) in zip(self.weights, self.init_ranges, strict=True):
            w.uniform_(lo, hi, generator=generator)

    def forward(self, input_times: torch.Tensor) -> EventOutput:
        return event_forward(input_times, list(self.weights), self.params, self.solver)

    def extra_repr(self) -> str:
        p = self.params
        return f"sizes={self.sizes}, tau_m={p.tau_m}, tau_s={p.tau_s}, T={p.t_window}"
