"""build_data / make_encoder: encoding keys checked by name, steps T as produced, non-empty splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from sparsespike.config import DataConfig
from sparsespike.errors import ConfigError
from sparsespike.pipeline import build_data, make_encoder


@pytest.fixture(scope="module")
def nmnist_root(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A 10-train / 4-test copy of nmnist-small (a few ms to bin, whatever T)."""
    src = data_dir / "nmnist-small"
    root = tmp_path_factory.mktemp("data")
    dst = root / "nmnist-small"
    dst.mkdir()
    for name, n in (("train1K.txt", 10), ("test100.txt", 4)):
        lines = (src / name).read_text().splitlines()
        (dst / name).write_text("\n".join(lines[: n + 1]) + "\n")
        for line in lines[1 : n + 1]:
            sid = line.split()[0]
            shutil.copy(src / f"{sid}.bs2", dst / f"{sid}.bs2")
    return root


def _nmnist(root: Path, val_fraction: float = 0.2, **enc):
    return build_data(
        DataConfig(dataset="nmnist-small", encoding={"name": "raster", **enc}, val_fraction=val_fraction), root, 0
    )


def test_conv_false_is_accepted_and_must_be_a_bool(nmnist_root: Path) -> None:
    assert _nmnist(nmnist_root, T=20, conv=False).input_shape == (2312,)
    data = _nmnist(nmnist_root, T=20, conv=True)
    assert data.input_shape == (2, 34, 34) and data.train.x.shape[1:] == (20, 2, 34, 34)
    with pytest.raises(ConfigError, match="data.encoding.conv must be a bool, got 'false'"):
        _nmnist(nmnist_root, T=20, conv="false")


def test_raster_T_is_the_datasets_default_and_the_datas_own(nmnist_root: Path) -> None:
    """Without ``T`` the rasters are binned into N-MNIST's 300 steps: the bundle says so too."""
    data = _nmnist(nmnist_root)
    assert data.T == 300 == data.train.x.shape[1] == data.test.x.shape[1]
    assert data.description.endswith("T = 300")
    data = _nmnist(nmnist_root, T=20)
    assert data.T == 20 == data.train.x.shape[1]
    assert data.encode(data.test.x[:2], None).shape[0] == 20


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("abc", "must be an int, got 'abc'"),
        (2.5, "must be an int, got 2.5"),
        (True, "must be an int, got True"),
        (0, "must be >= 1, got 0"),
        (-5, "must be >= 1, got -5"),
    ],
)
def test_bad_T_is_named(nmnist_root: Path, value, match: str) -> None:
    with pytest.raises(ConfigError, match="data.encoding.T " + match):
        make_encoder({"name": "rate", "T": value}, "static")
    with pytest.raises(ConfigError, match="data.encoding.T " + match):
        _nmnist(nmnist_root, T=value)


@pytest.mark.parametrize(
    ("enc", "match"),
    [
        ({"name": "rate", "gain": "abc"}, "data.encoding.gain must be a number, got 'abc'"),
        ({"name": "rate", "gain": float("inf")}, "data.encoding.gain must be a finite number > 0"),
        ({"name": "rate", "gain": 0}, "data.encoding.gain must be a finite number > 0"),
        ({"name": "firing_time", "tau_eff": "abc"}, "data.encoding.tau_eff must be a number"),
        ({"name": "firing_time", "tau_eff": 0.0}, "data.encoding.tau_eff must be a finite number > 0"),
        ({"name": "firing_time", "thr": -0.1}, "data.encoding.thr must be a finite number >= 0"),
        ({"name": "firing_time", "thr": 1.0}, "data.encoding.thr must be < 1.0"),
        ({"name": "firing_time", "thr": float("nan")}, "data.encoding.thr must be a finite number"),
    ],
)
def test_encoder_parameters_are_checked_by_name(enc: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_encoder(enc, "static")


def test_good_encoder_parameters_are_parsed() -> None:
    """PyYAML reads ``2e0`` as a string: it is parsed, and the encoders run."""
    f, T = make_encoder({"name": "rate", "T": 5, "gain": "2e0"}, "static")
    assert T == 5 and f(torch.rand(3, 4), torch.Generator().manual_seed(0)).shape == (5, 3, 4)
    f, T = make_encoder({"name": "firing_time", "T": 7, "tau_eff": 10, "thr": "1e-1"}, "static")
    assert f(torch.full((2, 4), 200, dtype=torch.uint8)).shape == (7, 2, 4)


@pytest.mark.parametrize(("fraction", "part"), [(0.01, "validation"), (0.99, "training")])
def test_a_val_fraction_that_empties_a_split_is_refused(nmnist_root: Path, fraction: float, part: str) -> None:
    """10 samples: 1 % gives no validation sample, 99 % no training sample (0 / 0 after an epoch)."""
    with pytest.raises(ConfigError, match=rf"data.val_fraction = {fraction} of 10 samples leaves the {part} split"):
        _nmnist(nmnist_root, val_fraction=fraction, T=10)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [("max_rotation", "abc", "max_rotation must be a number"), ("max_rotation", None, "max_rotation must be a number"),
     ("max_rotation", True, "max_rotation must be a number"), ("max_shift", -0.1, "max_shift must be a finite")],
)  # fmt: skip
def test_augment_values_are_checked_by_name(key, value, match):
    """float() ran before any check: a raw ValueError/TypeError, and True read as 1 degree."""
    from sparsespike.pipeline import make_augment

    with pytest.raises(ConfigError, match=f"data.augment.{match}"):
        make_augment({"name": "affine", key: value}, "mnist")
