"""Yin-Yang generator against the published data (Kriener et al.; METHODS.md section 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsespike.data import load_yinyang, make_yinyang
from sparsespike.data.yinyang import yinyang_class


def test_first_train_point_matches_publication() -> None:
    x, y = load_yinyang("train")
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (5000, 4) and y.shape == (5000,)
    np.testing.assert_allclose(x[0].numpy(), [0.68030754, 0.45049925, 1 - 0.68030754, 1 - 0.45049925], atol=1e-7)


@pytest.mark.parametrize(
    ("split", "counts"),
    [("train", [1681, 1702, 1617]), ("validation", [316, 336, 348]), ("test", [350, 316, 334])],
)
def test_label_counts(split: str, counts: list[int]) -> None:
    _, y = load_yinyang(split)
    assert torch.bincount(y, minlength=3).tolist() == counts


def test_points_are_consistent_with_the_rule() -> None:
    x, y = make_yinyang(500, seed=3)
    np.testing.assert_allclose(x[:, 2], 1 - x[:, 0], atol=1e-6)
    np.testing.assert_allclose(x[:, 3], 1 - x[:, 1], atol=1e-6)
    r = np.sqrt((x[:, 0] - 0.5) ** 2 + (x[:, 1] - 0.5) ** 2)
    assert (r <= 0.5 + 1e-6).all()
    # float32 rounding can move a point across a boundary only within 1e-7 of it
    agree = [yinyang_class(float(a), float(b)) == c for (a, b), c in zip(x[:, :2], y, strict=True)]
    assert np.mean(agree) > 0.99


def test_seeds_give_reproducible_and_distinct_data() -> None:
    a = make_yinyang(50, seed=1)
    b = make_yinyang(50, seed=1)
    c = make_yinyang(50, seed=2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_dot_class_inside_small_circles() -> None:
    assert yinyang_class(0.75, 0.5) == 2 and yinyang_class(0.25, 0.5) == 2
    assert yinyang_class(0.5, 0.9) == 1 - yinyang_class(0.5, 0.1)


def test_bad_split() -> None:
    with pytest.raises(ValueError, match="validation"):
        load_yinyang("val")
