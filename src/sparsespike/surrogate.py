"""Spike function with surrogate derivatives.

The forward pass of every spiking neuron is the Heaviside step ``S = H(V - thr)`` (strict ``>``).
Its derivative is replaced in the backward pass by a *surrogate* ``g(x)`` of ``x = V - thr``:

* :class:`FastSigmoid` -- SuperSpike, ``g(x) = 1 / (scale*|x| + 1)**2`` (Zenke & Ganguli 2018;
  Perez-Nieves & Goodman 2021, code ``SurrGradSpike`` with ``scale = 100``).
* :class:`Triangle` -- piecewise linear, ``g(x) = height * max(0, 1 - |x| / width)``
  (Allred et al., sec. 2.1; the width is unstated there).
* :class:`Rectangle` -- STBP, ``g(x) = height * 1[|x| < width/2]`` (Wu et al. 2018 eq. 9; Yin et al.
  2021 Table 1 ``delta`` is the full width; the reference STBP code uses ``height = 1``).

Each surrogate is a small frozen dataclass: ``grad(x)`` evaluates ``g`` on a torch tensor (used by
the pure-torch reference and by any custom surrogate a user writes) and ``kernel_code`` /
``kernel_params`` let the compiled kernels evaluate the same function without Python.
A user-defined surrogate is any object with ``grad(x) -> Tensor``; layers using it fall back to
the pure-torch kernel.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch

# codes understood by the compiled kernels (kernels/cpu.py, kernels/triton_gpu.py)
FAST_SIGMOID, TRIANGLE, RECTANGLE = 0, 1, 2


@runtime_checkable
class Surrogate(Protocol):
    """Anything with ``grad(x)``: the surrogate derivative of ``H(x)`` at ``x = V - thr``."""

    def grad(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class FastSigmoid:
    """SuperSpike surrogate ``1/(scale*|x|+1)^2`` (Zenke & Ganguli 2018; Perez-Nieves eq. 4)."""

    scale: float = 100.0
    kernel_code: ClassVar[int] = FAST_SIGMOID  # which compiled formula: not a setting

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"FastSigmoid.scale must be > 0, got {self.scale}")

    @property
    def kernel_params(self) -> tuple[float, float]:
        return (float(self.scale), 1.0)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return 1.0 / (self.scale * x.abs() + 1.0) ** 2


@dataclass(frozen=True)
class Triangle:
    """Piecewise-linear surrogate ``height*max(0, 1-|x|/width)`` (Allred et al. sec. 2.1)."""

    width: float = 1.0
    height: float = 1.0
    kernel_code: ClassVar[int] = TRIANGLE  # which compiled formula: not a setting

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"Triangle.width must be > 0, got {self.width}")

    @property
    def kernel_params(self) -> tuple[float, float]:
        return (float(self.width), float(self.height))

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return self.height * torch.clamp(1.0 - x.abs() / self.width, min=0.0)


@dataclass(frozen=True)
class Rectangle:
    """STBP rectangular surrogate ``height*1[|x| < width/2]`` (Wu et al. 2018 eq. 9; Yin et al.)."""

    width: float = 1.0
    height: float = 1.0
    kernel_code: ClassVar[int] = RECTANGLE  # which compiled formula: not a setting

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"Rectangle.width must be > 0, got {self.width}")

    @property
    def kernel_params(self) -> tuple[float, float]:
        return (float(self.width), float(self.height))

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return self.height * (x.abs() < 0.5 * self.width).to(x.dtype)


SURROGATES = {"fast_sigmoid": FastSigmoid, "triangle": Triangle, "rectangle": Rectangle}


def make_surrogate(spec: Surrogate | str | dict | None) -> Surrogate:
    """Build a surrogate from an instance, a name, or a config dict ``{"name": ..., **params}``."""
    if spec is None:
        return FastSigmoid()
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, dict):
        params = dict(spec)
        name = params.pop("name", None)
        if name not in SURROGATES:
            raise ValueError(f"unknown surrogate {name!r}; choose one of {sorted(SURROGATES)}")
        valid = [f.name for f in dataclasses.fields(SURROGATES[name])]
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ValueError(f"surrogate {name!r}: unknown key(s) {unknown}; valid keys: {valid}")
        return SURROGATES[name](**params)
    if not isinstance(spec, Surrogate):
        raise TypeError(f"surrogate must have a grad(x) method, got {type(spec).__name__}")
    return spec


class _SpikeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.grad(x), None


def spike(x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
    """Heaviside ``H(x) = 1[x > 0]`` with the surrogate derivative in the backward pass.

    >>> import torch
    >>> spike(torch.tensor([-0.1, 0.2]), FastSigmoid())
    tensor([0., 1.])
    """
    return _SpikeFn.apply(x, surrogate)
