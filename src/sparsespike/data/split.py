"""Deterministic train/validation splits.

The permutation comes from ``np.random.RandomState(seed)``, whose stream numpy keeps frozen
across versions and platforms, so a (n, val_fraction, seed) triple names the same split
everywhere (DESIGN.md "Randomness comes from an explicit seed"). The validation set has
``round(n * val_fraction)`` samples; with ``labels`` the split is stratified (each class gives
``round(n_c * val_fraction)``), which keeps class balance on small sets. Indices are returned
sorted, as int64 tensors usable with ``torch.utils.data.Subset`` or tensor indexing.

Example:
    >>> tr, va = train_val_split(10, 0.2, seed=0)
    >>> len(tr), len(va), sorted(set(tr.tolist()) | set(va.tolist())) == list(range(10))
    (8, 2, True)
"""

from __future__ import annotations

import numpy as np
import torch


def train_val_split(
    n: int,
    val_fraction: float,
    seed: int,
    labels: torch.Tensor | np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into ``(train_idx, val_idx)``, sorted int64 tensors, disjoint, covering.

    ``val_fraction`` must be in [0, 1). The same arguments always give the same split.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.RandomState(seed)
    if labels is None:
        perm = rng.permutation(n)
        n_val = int(round(n * val_fraction))
        val = perm[:n_val]
    else:
        lab = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
        if lab.shape[0] != n:
            raise ValueError(f"labels has {lab.shape[0]} entries, expected n={n}")
        parts = []
        for c in np.unique(lab):
            members = np.flatnonzero(lab == c)
            members = members[rng.permutation(members.size)]
            parts.append(members[: int(round(members.size * val_fraction))])
        val = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    mask = np.zeros(n, dtype=bool)
    mask[val] = True
    return (
        torch.from_numpy(np.flatnonzero(~mask).astype(np.int64)),
        torch.from_numpy(np.flatnonzero(mask).astype(np.int64)),
    )
