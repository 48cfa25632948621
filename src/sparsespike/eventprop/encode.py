"""Time-to-first-spike input encodings (Fontanini et al. 2024, secs. 3.3-3.4), times in ms."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import SpikeInputError

__all__ = ["encode_yinyang", "encode_mnist"]


def _as_float_tensor(x, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dtype == torch.uint8:
        return t.to(torch.float64)
    if not (torch.is_floating_point(t) or t.dtype in (torch.int32, torch.int64)):
        raise SpikeInputError(f"{name} must be numeric, got dtype {t.dtype}")
    t = t.to(torch.float64)
    if torch.isnan(t).any():
        raise SpikeInputError(f"{name} contains NaN")
    return t


def encode_yinyang(features, t_min: float = 0.0, t_max: float = 20.0, bias_time: float | None = 0.0) -> torch.Tensor:
    """Yin-Yang points to 5 input spike times.

    ``t = t_min + v (t_max - t_min)`` for ``v`` in ``(x, y, 1-x, 1-y)``, plus a bias spike at
    ``bias_time`` (``t_min`` = 0 ms in the paper) as the 5th input; ``bias_time=None`` omits it.

    Args:
        features: ``[n, 4]`` = (x, y, 1-x, 1-y) as from ``sparsespike.data.yinyang``, or
            ``[n, 2]`` = (x, y) (the duals are added). Values should lie in [0, 1].

    Returns:
        float64 ``[n, 5]`` (or ``[n, 4]`` without bias) spike times in ms.

    >>> encode_yinyang(torch.tensor([[0.25, 0.5, 0.75, 0.5]])).tolist()
    [[5.0, 10.0, 15.0, 10.0, 0.0]]
    """
    x = _as_float_tensor(features, "features")
    if x.dim() != 2 or x.shape[1] not in (2, 4):
        raise SpikeInputError(f"Yin-Yang features must be [n, 4] or [n, 2], got {tuple(x.shape)}")
    if x.shape[1] == 2:
        x = torch.cat([x, 1.0 - x], dim=1)
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise SpikeInputError("Yin-Yang features must lie in [0, 1]")
    t = t_min + x * (t_max - t_min)
    if bias_time is not None:
        t = torch.cat([t, torch.full((t.shape[0], 1), float(bias_time), dtype=t.dtype)], dim=1)
    return t


def encode_mnist(
    images,
    t_min: float = 0.0,
    t_max: float = 20.0,
    bright_early: bool = True,
    min_intensity: float | None = None,
) -> torch.Tensor:
    """One spike per pixel, linear in intensity over ``[t_min, t_max]`` ms.

    ``p`` = intensity in [0, 1] (uint8 images are divided by 255). Bright pixels spike early by
    default: ``t = t_min + (1 - p)(t_max - t_min)``; ``bright_early=False`` gives
    ``t = t_min + p (t_max - t_min)``. The paper does not state the direction (METHODS 2(d)).
    All pixels spike (the background too, at ``t_max`` with the default) unless
    ``min_intensity`` is given: pixels with ``p < min_intensity`` then emit no spike (``+inf``).

    Args:
        images: ``[n, 28, 28]`` (or any ``[n, ...]``) uint8 or float in [0, 1].

    Returns:
        float64 ``[n, n_pixels]`` spike times in ms.
    """
    x = _as_float_tensor(images, "images")
    if (
        isinstance(images, torch.Tensor)
        and images.dtype == torch.uint8
        or (isinstance(images, np.ndarray) and images.dtype == np.uint8)
    ):
        x = x / 255.0
    if x.dim() < 2:
        raise SpikeInputError(f"images must be [n, ...], got shape {tuple(x.shape)}")
    x = x.flatten(1)  # also for n = 0 (an empty split), where reshape(0, -1) is ambiguous
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise SpikeInputError("image intensities must lie in [0, 1] (or be uint8)")
    v = (1.0 - x) if bright_early else x
    t = t_min + v * (t_max - t_min)
    if min_intensity is not None:
        t = torch.where(x < min_intensity, torch.full_like(t, float("inf")), t)
    return t
