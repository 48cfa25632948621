"""The Yin-Yang data set, generated exactly as the reference generator does.

Source: Kriener, Göltz & Petrovici, "The Yin-Yang dataset", NICE 2022 (arXiv:2102.08211),
reference code ``lkriener/yin_yang_data_set: dataset.py`` (see METHODS.md section 3).

For each sample, with a per-split ``np.random.RandomState(seed)``:

1. draw the goal class ``c = rng.randint(3)``;
2. repeat: draw ``x, y = rng.rand(2) * 2 * r_big``; reject points outside the big circle
   (``sqrt((x - r_big)^2 + (y - r_big)^2) > r_big``); classify; accept when the class is ``c``;
3. output ``(x, y, 1 - x, 1 - y)`` with label ``c``.

Classification, with ``d_r`` / ``d_l`` the distances to the right / left dot centres
``(1.5 r_big, r_big)`` / ``(0.5 r_big, r_big)``:
``is_yin = d_r <= r_small or r_small < d_l <= 0.5 r_big or (y > r_big and d_r > 0.5 r_big)``;
class 2 (dot) if ``d_r < r_small or d_l < r_small``, else ``int(is_yin)``
(0 = yin, 1 = yang, 2 = dot).

The published splits are train 5000 / seed 42, validation 1000 / seed 41, test 1000 / seed 40;
this generator reproduces ``publication_data/*.npy`` bit for bit (before the float32 cast).

Example:
    >>> x, y = load_yinyang("train")
    >>> tuple(x.shape), tuple(y.shape)
    ((5000, 4), (5000,))
"""

from __future__ import annotations

import math

import numpy as np
import torch

CLASS_NAMES = ("yin", "yang", "dot")
SPLITS: dict[str, tuple[int, int]] = {
    "train": (5000, 42),
    "validation": (1000, 41),
    "test": (1000, 40),
}


def yinyang_class(x: float, y: float, r_small: float = 0.1, r_big: float = 0.5) -> int:
    """Class of the point (x, y): 0 yin, 1 yang, 2 dot (reference ``which_class``)."""
    d_right = math.sqrt((x - 1.5 * r_big) ** 2 + (y - r_big) ** 2)
    d_left = math.sqrt((x - 0.5 * r_big) ** 2 + (y - r_big) ** 2)
    if d_right < r_small or d_left < r_small:
        return 2
    is_yin = d_right <= r_small or (r_small < d_left <= 0.5 * r_big) or (y > r_big and d_right > 0.5 * r_big)
    return int(is_yin)


def make_yinyang(n: int, seed: int, r_small: float = 0.1, r_big: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` Yin-Yang samples with ``np.random.RandomState(seed)``.

    Returns ``(features float32 [n, 4] = (x, y, 1-x, 1-y), labels int64 [n])``.
    The random stream is consumed exactly as in the reference (class first, then pairs of
    uniforms until acceptance), so the same seed gives the published data.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not (0 < r_small < 0.5 * r_big):
        raise ValueError(f"need 0 < r_small < r_big / 2, got r_small={r_small}, r_big={r_big}")
    rng = np.random.RandomState(seed)
    feats = np.empty((n, 4), dtype=np.float64)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        goal = rng.randint(3)
        while True:
            x, y = rng.rand(2) * 2.0 * r_big
            if math.sqrt((x - r_big) ** 2 + (y - r_big) ** 2) > r_big:
                continue
            if yinyang_class(x, y, r_small, r_big) == goal:
                break
        feats[i] = (x, y, 1.0 - x, 1.0 - y)
        labels[i] = goal
    return feats.astype(np.float32), labels


def load_yinyang(split: str = "train", r_small: float = 0.1, r_big: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """The published split (``'train'`` 5000/42, ``'validation'`` 1000/41, ``'test'`` 1000/40).

    Returns ``(features float32 [N, 4], labels int64 [N])`` as torch tensors.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown Yin-Yang split {split!r}; expected one of {sorted(SPLITS)}")
    n, seed = SPLITS[split]
    x, y = make_yinyang(n, seed, r_small=r_small, r_big=r_big)
    return torch.from_numpy(x), torch.from_numpy(y)
