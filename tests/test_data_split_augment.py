"""Train/validation split and the shift/rotation augmentation."""

from __future__ import annotations

import pytest
import torch

from sparsespike.data import RandomAffine, affine_transform, random_affine, train_val_split
from sparsespike.errors import SpikeInputError


def test_split_deterministic_disjoint_covering() -> None:
    tr, va = train_val_split(1000, 0.1, seed=7)
    assert len(va) == 100 and len(tr) == 900 and tr.dtype == torch.int64
    assert torch.equal(torch.sort(torch.cat([tr, va])).values, torch.arange(1000))
    tr2, va2 = train_val_split(1000, 0.1, seed=7)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert not torch.equal(va, train_val_split(1000, 0.1, seed=8)[1])
    assert len(train_val_split(10, 0.0, seed=0)[1]) == 0


def test_split_pinned_values() -> None:
    """RandomState's stream is frozen, so these indices hold on every platform."""
    _, va = train_val_split(10, 0.3, seed=0)
    assert va.tolist() == [2, 4, 8]  # RandomState(0).permutation(10)[:3]


def test_stratified_split() -> None:
    labels = torch.tensor([0] * 80 + [1] * 20)
    _, va = train_val_split(100, 0.25, seed=1, labels=labels)
    assert torch.bincount(labels[va]).tolist() == [20, 5]
    with pytest.raises(ValueError):
        train_val_split(99, 0.25, seed=1, labels=labels)
    with pytest.raises(ValueError):
        train_val_split(10, 1.0, seed=1)


def test_affine_identity_and_exact_pixel_shift() -> None:
    x = torch.randint(0, 256, (3, 28, 20), dtype=torch.uint8)
    assert torch.equal(affine_transform(x, torch.zeros(3), torch.zeros(3, 2)), x)
    right = affine_transform(x, torch.zeros(3), torch.tensor([[1.0, 0.0]] * 3))
    assert torch.equal(right[:, :, 1:], x[:, :, :-1]) and (right[:, :, 0] == 0).all()
    down = affine_transform(x, torch.zeros(3), torch.tensor([[0.0, 2.0]] * 3))
    assert torch.equal(down[:, 2:], x[:, :-2]) and down.dtype == torch.uint8


def test_affine_rotation_direction() -> None:
    x = torch.rand(2, 1, 16, 16)
    r = affine_transform(x, torch.full((2,), 90.0), torch.zeros(2, 2))
    assert torch.allclose(r, torch.rot90(x, -1, (-2, -1)), atol=1e-5)
    y = torch.rand(2, 12, 16)
    r = affine_transform(y, torch.full((2,), 180.0), torch.zeros(2, 2))
    assert torch.allclose(r, torch.rot90(y, 2, (-2, -1)), atol=1e-5)


def test_random_affine_seeded_and_bounded() -> None:
    x = torch.zeros(16, 28, 28)
    x[:, 12:16, 12:16] = 1.0  # a blob at the centre
    a = random_affine(x, 0.1, 20.0, torch.Generator().manual_seed(0))
    b = random_affine(x, 0.1, 20.0, torch.Generator().manual_seed(0))
    c = random_affine(x, 0.1, 20.0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)
    # shifts of at most 10 % (2.8 px) keep the blob's centre of mass within 3 px of 13.5
    grid = torch.arange(28.0)
    cy = (a.sum(2) * grid).sum(1) / a.sum((1, 2))
    cx = (a.sum(1) * grid).sum(1) / a.sum((1, 2))
    assert ((cy - 13.5).abs() <= 3.0).all() and ((cx - 13.5).abs() <= 3.0).all()
    assert torch.equal(random_affine(x, 0.0, 0.0), x)
    aug = RandomAffine(seed=3)
    assert aug(torch.zeros(2, 1, 28, 28)).shape == (2, 1, 28, 28)


def test_augment_rejects_bad_input() -> None:
    with pytest.raises(SpikeInputError):
        random_affine(torch.zeros(28, 28, 1, 1, 1))
    with pytest.raises(SpikeInputError):
        random_affine(torch.zeros(2, 28, 28), max_shift=1.5)
    with pytest.raises(SpikeInputError):
        affine_transform(torch.zeros(2, 28, 28), torch.zeros(3), torch.zeros(2, 2))


def test_config_augment_wired_into_training_batches() -> None:
    """``data.augment`` shifts/rotates training images (seeded), and bad specs are named."""
    from sparsespike.errors import ConfigError
    from sparsespike.pipeline import make_augment

    assert make_augment(None, "mnist") is None
    aug = make_augment({"name": "affine", "max_shift": 0.1, "max_rotation": 20}, "mnist")
    img = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    img[:, :, 10:18, 12:16] = 255
    a = aug(img, torch.Generator().manual_seed(0))
    b = aug(img, torch.Generator().manual_seed(0))
    assert a.dtype == torch.uint8 and a.shape == img.shape
    assert torch.equal(a, b) and not torch.equal(a, img)
    for spec, ds, msg in [
        ({"name": "mixup"}, "mnist", "unknown data.augment name"),
        ({"max_shift": 0.1}, "yinyang", "image datasets"),
        ({"shift": 0.1}, "mnist", "unknown data.augment keys"),
        ({"max_shift": 1.5}, "mnist", "max_shift"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            make_augment(spec, ds)


def test_trainer_applies_augment(tmp_path) -> None:
    """The trainer passes every training batch (and only those) through ``data.augment``."""
    from sparsespike import pipeline
    from sparsespike.config import ExperimentConfig, from_dict
    from sparsespike.pipeline import Split
    from sparsespike.train import Trainer

    seen = []

    def fake_data():
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(40, 1, 28, 28, generator=g) * 255).to(torch.uint8)
        y = torch.randint(0, 10, (40,), generator=g)
        enc, T = pipeline.make_encoder({"name": "latency", "T": 5}, "static")

        def aug(xb, gen):
            seen.append(len(xb))
            return xb

        return pipeline.DataBundle(
            Split(x[:30], y[:30]), Split(x[30:], y[30:]), Split(x[30:], y[30:]), (1, 28, 28), 10, T, enc, "fake", aug
        )

    cfg = from_dict(
        ExperimentConfig,
        {
            "name": "aug",
            "data": {"batch_size": 10},
            "model": {"layers": [{"type": "flatten"}, {"type": "linear", "out": 8}, {"type": "readout", "out": 10}]},
            "train": {"epochs": 1},
        },
    )
    Trainer(cfg, tmp_path, None, progress=False, data=fake_data()).fit()
    assert seen == [10, 10, 10]
