"""Random shifts and rotations of image batches, in pure torch (``affine_grid`` + ``grid_sample``).

Used for Fontanini et al. 2024's MNIST augmentation (sec. 4.2: "random shifts (horizontal and
vertical, up to 10%) and random rotations (up to 20°)"). Each image gets its own angle
``a ~ U(-max_rotation, max_rotation)`` degrees and shift ``(dx, dy) ~ U(-max_shift, max_shift)``
times ``(W, H)`` pixels, drawn from a ``torch.Generator`` so runs are reproducible.

Geometry: in pixel coordinates centred on the image, the output pixel ``p`` takes the input
value at ``R(-a) (p - d)``: the content is rotated by ``a`` about the centre (clockwise as
displayed with row 0 at the top, so ``a = 90`` equals ``torch.rot90(img, -1, (-2, -1))`` on a
square image) and then moved by ``d = (dx, dy)`` (``dx > 0`` right, ``dy > 0`` down). Values
outside the input are ``fill`` (0 = black background for MNIST); interpolation is bilinear by
default. ``uint8`` images are rounded back to ``uint8``.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.zeros(4, 28, 28, dtype=torch.uint8)
    >>> random_affine(x, max_shift=0.1, max_rotation=20.0, generator=g).shape
    torch.Size([4, 28, 28])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import SpikeInputError


def _as_nchw(images: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if not isinstance(images, torch.Tensor):
        raise SpikeInputError(f"images must be a torch tensor, got {type(images).__name__}")
    if images.dim() == 3:
        return images.unsqueeze(1), True
    if images.dim() == 4:
        return images, False
    raise SpikeInputError(f"images must be [B, H, W] or [B, C, H, W], got shape {tuple(images.shape)}")


def affine_transform(
    images: torch.Tensor,
    angles_deg: torch.Tensor,
    shifts_px: torch.Tensor,
    mode: str = "bilinear",
    fill: float = 0.0,
) -> torch.Tensor:
    """Rotate each image by ``angles_deg[b]`` about its centre, then shift by ``shifts_px[b]``.

    ``images``: ``[B, H, W]`` or ``[B, C, H, W]``, uint8 or float; ``angles_deg``: ``[B]``;
    ``shifts_px``: ``[B, 2]`` as ``(dx, dy)`` in pixels. Returns the same shape and dtype.
    """
    x, squeezed = _as_nchw(images)
    b, _, h, w = x.shape
    if angles_deg.shape != (b,) or shifts_px.shape != (b, 2):
        raise SpikeInputError(
            f"need angles_deg [B] and shifts_px [B, 2] for B={b}, got "
            f"{tuple(angles_deg.shape)} and {tuple(shifts_px.shape)}"
        )
    dtype = x.dtype
    work = x.to(torch.float32) if not x.is_floating_point() else x
    a = torch.deg2rad(angles_deg.to(device=work.device, dtype=work.dtype))
    d = shifts_px.to(device=work.device, dtype=work.dtype)
    cos, sin = torch.cos(a), torch.sin(a)
    # inverse rotation R(-a) in pixel coordinates (x right, y down): [[c, s], [-s, c]]
    sx, sy = 2.0 / w, 2.0 / h  # pixel (centred) -> normalised coordinates, align_corners=False
    theta = torch.empty(b, 2, 3, dtype=work.dtype, device=work.device)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = sin * sx / sy
    theta[:, 1, 0] = -sin * sy / sx
    theta[:, 1, 1] = cos
    theta[:, 0, 2] = -sx * (cos * d[:, 0] + sin * d[:, 1])
    theta[:, 1, 2] = -sy * (-sin * d[:, 0] + cos * d[:, 1])
    grid = F.affine_grid(theta, list(work.shape), align_corners=False)
    if fill != 0.0:
        work = work - fill
    out = F.grid_sample(work, grid, mode=mode, padding_mode="zeros", align_corners=False)
    if fill != 0.0:
        out = out + fill
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        out = out.round().clamp(info.min, info.max).to(dtype)
    return out.squeeze(1) if squeezed else out


def random_affine(
    images: torch.Tensor,
    max_shift: float = 0.1,
    max_rotation: float = 20.0,
    generator: torch.Generator | None = None,
    mode: str = "bilinear",
    fill: float = 0.0,
) -> torch.Tensor:
    """Random rotation (``±max_rotation`` degrees) and shift (``±max_shift`` of the size) per image.

    Defaults are Fontanini et al.'s MNIST augmentation (±10 %, ±20°). The draws come from
    ``generator`` (CPU), three uniforms per image: angle, dx, dy.
    """
    x, _ = _as_nchw(images)
    if not (0.0 <= max_shift < 1.0) or not (0.0 <= max_rotation <= 180.0) or math.isnan(max_shift):
        raise SpikeInputError(f"need 0 <= max_shift < 1 and 0 <= max_rotation <= 180, got {max_shift}, {max_rotation}")
    b, _, h, w = x.shape
    u = torch.rand(b, 3, generator=generator) * 2.0 - 1.0
    angles = u[:, 0] * max_rotation
    shifts = torch.stack([u[:, 1] * max_shift * w, u[:, 2] * max_shift * h], dim=1)
    return affine_transform(images, angles, shifts, mode=mode, fill=fill)


class RandomAffine:
    """Callable batch augmentation with its own seeded generator.

    >>> aug = RandomAffine(max_shift=0.1, max_rotation=20.0, seed=1)
    >>> aug(torch.zeros(2, 28, 28)).shape
    torch.Size([2, 28, 28])
    """

    def __init__(
        self,
        max_shift: float = 0.1,
        max_rotation: float = 20.0,
        seed: int = 0,
        mode: str = "bilinear",
        fill: float = 0.0,
    ) -> None:
        self.max_shift = max_shift
        self.max_rotation = max_rotation
        self.mode = mode
        self.fill = fill
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return random_affine(images, self.max_shift, self.max_rotation, self.generator, self.mode, self.fill)
