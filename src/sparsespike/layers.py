"""Sequence-in, sequence-out spiking modules. Tensors are time-major ``[T, B, ...]``.

Each spiking layer computes its synaptic input for all ``T`` steps in one matmul/conv (or one
event-driven pass over the input spikes, :mod:`sparsespike.kernels.synapse`), then runs the LIF
recurrence (:mod:`sparsespike.neurons`) over time in one kernel
(:mod:`sparsespike.kernels.recurrence`). The module only *chooses* the kernel: ``backward="dense"``
or ``"sparse"`` (Perez-Nieves & Goodman 2021, active neurons only, :mod:`sparsespike.kernels.sparse`).

Example::

    >>> import torch
    >>> from sparsespike.layers import SpikingLinear, LeakyReadout
    >>> net = torch.nn.Sequential(SpikingLinear(20, 32), LeakyReadout(32, 3))
    >>> net(torch.zeros(10, 4, 20)).shape   # T=10 steps, batch 4 -> logits [4, 3]
    torch.Size([4, 3])
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from .errors import SpikeInputError
from .kernels import lif_recurrence
from .kernels.sparse import attach_spike_list, get_meta
from .kernels.synapse import synaptic_linear
from .neurons import LIFParams

BackwardMode = Literal["dense", "sparse"]
DEFAULT_B_TH = 0.2  # Perez-Nieves & Goodman Def. 1 half-width (METHODS.md sec. 1(a))


def check_time_major(x: torch.Tensor, rank: int, features: tuple[int, ...], who: str) -> None:
    """Raise :class:`SpikeInputError` unless ``x`` is ``[T, B, *features]`` floating point."""
    if not isinstance(x, torch.Tensor):
        raise SpikeInputError(f"{who}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != rank:
        raise SpikeInputError(
            f"{who}: expected a time-major tensor of rank {rank} [T, B, {', '.join(map(str, features))}]"
            f", got shape {tuple(x.shape)}"
        )
    if tuple(x.shape[2:]) != tuple(features):
        raise SpikeInputError(
            f"{who}: expected trailing dims {tuple(features)} after [T, B], got shape {tuple(x.shape)}"
            " (inputs are time-major [T, B, ...]; transpose batch-major data with x.transpose(0, 1))"
        )
    if not x.is_floating_point():
        raise SpikeInputError(f"{who}: expected a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise SpikeInputError(f"{who}: no time steps (T = 0) in input of shape {tuple(x.shape)}")


def check_spikes(x: torch.Tensor, who: str) -> None:
    """Raise :class:`SpikeInputError` unless ``x`` holds only 0s and 1s (no NaN)."""
    if torch.isnan(x).any():
        raise SpikeInputError(f"{who}: spike tensor contains NaN")
    if not bool(((x == 0) | (x == 1)).all()):
        bad = x[(x != 0) & (x != 1)][:3].tolist()
        raise SpikeInputError(f"{who}: expected binary spikes (0 or 1), found values such as {bad}")


def _as_params(neuron: LIFParams | dict | None) -> LIFParams:
    if neuron is None:
        return LIFParams()
    if isinstance(neuron, dict):
        return LIFParams(**neuron)
    return neuron


# kernel choices of the spiking layers ("auto": numba on CPU, Triton on CUDA, else torch)
_IMPLS = ("auto", "numba", "triton", "torch", "fallback")


class _SpikingBase(nn.Module):
    """Shared neuron handling of the spiking layers."""

    emits_spikes = True

    def __init__(self, neuron, backward: BackwardMode, b_th: float | None, impl: str) -> None:
        super().__init__()
        self.neuron = _as_params(neuron)
        if backward not in ("dense", "sparse"):
            raise ValueError(f"backward must be 'dense' or 'sparse', got {backward!r}")
        self.backward = backward
        self.b_th = DEFAULT_B_TH if b_th is None else float(b_th)
        if not self.b_th > 0:  # also refuses NaN
            raise ValueError(f"b_th must be > 0, got {self.b_th}")
        if impl not in _IMPLS:
            raise ValueError(f"impl must be one of {', '.join(_IMPLS)}, got {impl!r}")
        self.impl = impl
        self.last_stats: dict = {}

    def _recur(self, current: torch.Tensor) -> torch.Tensor:
        stats: dict = {}
        if self.backward == "sparse":
            from .kernels.sparse import lif_recurrence_masked

            s = lif_recurrence_masked(current, self.neuron, b_th=self.b_th, stats=stats, impl=self.impl)
        else:
            s = lif_recurrence(current, self.neuron, impl=self.impl, b_th=self.b_th, stats=stats)
        self.last_stats = stats
        return s

    def activity(self) -> float:
        """Activity % of the last forward: ``100 * #(|V-thr| < b_th) / (T*B*N)`` (Perez-Nieves eq. 13)."""
        st = self.last_stats
        return 100.0 * st.get("n_active", 0) / max(1, st.get("n_total", 0))

    def extra_repr(self) -> str:
        return f"neuron={self.neuron}, backward={self.backward!r}, b_th={self.b_th}"


class SpikingLinear(_SpikingBase):
    """Fully connected LIF layer: ``[T, B, in_features] -> spikes [T, B, out_features]``.

    Args:
        neuron: :class:`~sparsespike.neurons.LIFParams` (or a dict of its fields).
        backward: ``"dense"`` BPTT or ``"sparse"`` (active neurons only).
        b_th: active-window half-width ``|V - thr| < b_th`` (activity, sparse backward).
        weight_scale: if given, ``W ~ N(0, weight_scale / sqrt(in_features))`` (Perez-Nieves init
            with ``weight_scale = 20 (1 - beta)``); else PyTorch's default uniform.
        event_driven: ``None`` = automatic event-driven synaptic input for sparse binary inputs.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        neuron: LIFParams | dict | None = None,
        *,
        bias: bool = False,
        backward: BackwardMode = "dense",
        b_th: float | None = None,
        weight_scale: float | None = None,
        impl: str = "auto",
        event_driven: bool | None = None,
    ) -> None:
        super().__init__(neuron, backward, b_th, impl)
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.event_driven = event_driven
        _init_weight(self.weight, in_features, weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_time_major(x, 3, (self.in_features,), type(self).__name__)
        if self.backward == "sparse" and self.neuron.alpha is None and self.impl != "torch":
            from .kernels.sparse import sparse_spiking_linear

            stats: dict = {}
            s = sparse_spiking_linear(x, self.weight, self.bias, self.neuron, self.b_th, stats, impl=self.impl)
            self.last_stats = stats
            return s
        current = synaptic_linear(x, self.weight, self.bias, event_driven=self.event_driven)
        return self._recur(current)


class SpikingConv2d(_SpikingBase):
    """Convolutional LIF layer: ``[T, B, C, H, W] -> spikes [T, B, C_out, H', W']``.

    The convolution runs once over all ``T*B`` frames; the recurrence then runs over time.
    ``weight_scale`` sets the weight init as for :class:`SpikingLinear`; a bias (``bias=True``)
    keeps ``nn.Conv2d``'s default uniform init, whereas :class:`SpikingLinear` starts its bias
    at zero (kept so that the recorded Yin runs, which use conv biases, rerun exactly).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        neuron: LIFParams | dict | None = None,
        *,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        backward: BackwardMode = "dense",
        b_th: float | None = None,
        weight_scale: float | None = None,
        impl: str = "auto",
    ) -> None:
        super().__init__(neuron, backward, b_th, impl)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.in_channels = in_channels
        if weight_scale is not None:
            _init_weight(self.conv.weight, self.conv.weight[0].numel(), weight_scale)  # fan-in C_in*kh*kw

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[2] != self.in_channels:
            raise SpikeInputError(
                f"{type(self).__name__}: expected [T, B, {self.in_channels}, H, W], got shape {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise SpikeInputError(f"{type(self).__name__}: no time steps (T = 0) in input of shape {tuple(x.shape)}")
        T, B = x.shape[:2]
        current = self.conv(x.reshape(T * B, *x.shape[2:]))
        return self._recur(current.reshape(T, B, *current.shape[1:]))


class SeqPool2d(nn.Module):
    """Max or average pooling applied to every frame of ``[T, B, C, H, W]``.

    Max pooling keeps spikes binary; average pooling (STBP, Yin et al.) gives fractional inputs.
    """

    def __init__(self, kernel_size: int, mode: Literal["max", "avg"] = "max") -> None:
        super().__init__()
        if mode not in ("max", "avg"):
            raise ValueError(f"pool mode must be 'max' or 'avg', got {mode!r}")
        self.kernel_size, self.mode = kernel_size, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise SpikeInputError(f"SeqPool2d: expected [T, B, C, H, W], got shape {tuple(x.shape)}")
        T, B = x.shape[:2]
        f = nn.functional.max_pool2d if self.mode == "max" else nn.functional.avg_pool2d
        y = f(x.reshape(T * B, *x.shape[2:]), self.kernel_size)
        return y.reshape(T, B, *y.shape[1:])

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, mode={self.mode!r}"


class SeqFlatten(nn.Module):
    """``[T, B, ...] -> [T, B, features]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.reshape(x.shape[0], x.shape[1], -1)
        meta = get_meta(x)
        if meta is not None and meta.active is None and y is not x:  # an input's spike list
            attach_spike_list(y, meta.spikes, meta.shape)
        return y


ReadoutMode = Literal["max", "mean", "last", "sum"]


class LeakyReadout(nn.Module):
    """Non-spiking leaky integrator: ``V[t] = beta V[t-1] + W S[t] (+ b)``, logits over time.

    ``mode``: ``"max"`` (max over time; Perez-Nieves F-MNIST/N-MNIST), ``"mean"``, ``"sum"``
    (SHD) or ``"last"``. Returns ``[B, out_features]``.
    """

    emits_spikes = False

    def __init__(
        self,
        in_features: int,
        out_features: int,
        beta: float = 0.9,
        mode: ReadoutMode = "max",
        *,
        bias: bool = False,
        weight_scale: float | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("max", "mean", "last", "sum"):
            raise ValueError(f"readout mode must be max/mean/last/sum, got {mode!r}")
        if not (0.0 <= beta <= 1.0):
            raise ValueError(f"readout beta must be in [0, 1], got {beta}")
        self.in_features, self.out_features = in_features, out_features
        self.beta, self.mode = float(beta), mode
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        _init_weight(self.weight, in_features, weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_time_major(x, 3, (self.in_features,), type(self).__name__)
        return reduce_over_time(leaky_integrate(synaptic_linear(x, self.weight, self.bias), self.beta), self.mode)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, beta={self.beta}, mode={self.mode!r}"


class _LeakyIntegrate(torch.autograd.Function):
    """``V[t] = beta V[t-1] + I[t]``; backward ``dI[t] = dV[t] + beta dI[t+1]`` in one sweep."""

    @staticmethod
    def forward(ctx, current: torch.Tensor, beta: float) -> torch.Tensor:  # type: ignore[override]
        ctx.beta = beta
        return _leaky_scan(current, beta, reverse=False)

    @staticmethod
    def backward(ctx, gv: torch.Tensor):  # type: ignore[override]
        return _leaky_scan(gv, ctx.beta, reverse=True), None


def _leaky_scan(x: torch.Tensor, beta: float, reverse: bool) -> torch.Tensor:
    """``out[t] = beta out[t -/+ 1] + x[t]`` over time: a numba kernel for CPU float tensors
    (``kernels.cpu.leaky_scan``), else a loop of torch ops (any device, same order of operations)."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() >= 1 and x.numel():
        from .kernels import cpu

        xc = x.detach().contiguous()
        out = torch.empty_like(xc)
        cpu.leaky_scan(xc.reshape(x.shape[0], -1).numpy(), float(beta), reverse, out.reshape(x.shape[0], -1).numpy())
        return out
    out = torch.empty_like(x)
    acc = torch.zeros_like(x[0])
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    for t in steps:
        acc = acc.mul_(beta).add_(x[t])
        out[t] = acc
    return out


def leaky_integrate(current: torch.Tensor, beta: float) -> torch.Tensor:
    """``V[t] = beta V[t-1] + current[t]`` over time-major ``current``, differentiable.

    One autograd node for the whole sequence (a Python loop of indexed steps would make the
    backward allocate a full-size gradient per step: O(T^2) memory traffic).
    """
    return _LeakyIntegrate.apply(current, float(beta))


def reduce_over_time(v: torch.Tensor, mode: str) -> torch.Tensor:
    """Readout logits from the membrane ``v[T, B, C]``: max, mean or sum over time, or the last step."""
    if mode == "max":
        return v.max(0).values
    if mode == "mean":
        return v.mean(0)
    if mode == "sum":
        return v.sum(0)
    return v[-1]


class SpikeCountReadout(nn.Module):
    """Spike counts over time of the previous spiking layer: ``[T, B, N] -> [B, N]``.

    With ``mean=True`` the count is divided by ``T`` (the firing rate; Yin et al. eq. 5 voting).
    """

    def __init__(self, mean: bool = True, check: bool = True) -> None:
        super().__init__()
        self.mean = mean
        self.check = check

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise SpikeInputError(f"SpikeCountReadout: expected [T, B, ...], got {tuple(x.shape)}")
        if self.check:
            check_spikes(x, "SpikeCountReadout")
        return x.mean(0) if self.mean else x.sum(0)


def _init_weight(w: torch.Tensor, fan_in: int, weight_scale: float | None) -> None:
    with torch.no_grad():
        if weight_scale is None:
            bound = 1.0 / math.sqrt(fan_in)
            w.uniform_(-bound, bound)
        else:
            w.normal_(0.0, weight_scale / math.sqrt(fan_in))


def spiking_layers(model: nn.Module) -> list[_SpikingBase]:
    """All sparsespike spiking layers in ``model``, in registration order."""
    return [m for m in model.modules() if isinstance(m, _SpikingBase)]


def set_backward(model: nn.Module, backward: BackwardMode, b_th: float | None = None) -> None:
    """Network-wide backward mode (and optionally the active-window half-width ``b_th``)."""
    if backward not in ("dense", "sparse"):
        raise ValueError(f"backward must be 'dense' or 'sparse', got {backward!r}")
    if b_th is not None and not float(b_th) > 0:  # as the layers' constructor
        raise ValueError(f"b_th must be > 0, got {b_th}")
    for m in spiking_layers(model):
        m.backward = backward
        if b_th is not None:
            m.b_th = float(b_th)
