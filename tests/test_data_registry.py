"""Data root resolution, checksum cache and the DATASETS registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparsespike.data import DATASETS, find_dataset_dir, load_dataset, resolve_data_dir
from sparsespike.data import paths as paths_mod
from sparsespike.errors import DataError


def test_resolve_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPARSESPIKE_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("SPARSESPIKE_DATA")
    assert resolve_data_dir(None) == Path.home() / ".cache" / "sparsespike"
    assert resolve_data_dir("~/x") == Path.home() / "x"


def test_find_dataset_dir(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    assert find_dataset_dir(tmp_path, "mnist") == tmp_path / "mnist"
    with pytest.raises(DataError) as e:
        find_dataset_dir(tmp_path, "shd", ["shd_train.h5", "shd_test.h5"])
    assert str(tmp_path / "shd") in str(e.value) and "shd_train.h5, shd_test.h5" in str(e.value)


def test_md5_is_cached(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert paths_mod.file_md5(p) == "900150983cd24fb0d6963f7d28e17f72"
    assert any(k[0] == str(p.resolve()) for k in paths_mod._MD5_CACHE)
    with pytest.raises(DataError, match="expected 00000000000000000000000000000000"):
        paths_mod.verify_md5(p, "0" * 32)


def test_registry_contents() -> None:
    for name in ("yinyang", "mnist", "fashion-mnist", "nmnist-small", "cifar10", "shd"):
        info = DATASETS[name]
        assert info.name == name and callable(info.load) and "train" in info.splits
    assert DATASETS["shd"].n_classes == 20 and DATASETS["nmnist-small"].input_shape == (2, 34, 34)


def test_registry_loads_real_data(data_dir: Path) -> None:
    x, y = load_dataset("fashion-mnist", data_dir, "test")
    assert x.shape == (10000, 28, 28)
    ev, y = DATASETS["nmnist-small"](data_dir, "test")
    assert len(ev) == 100 and y.dtype == torch.int64
    x, y = DATASETS["yinyang"].load(split="validation")
    assert x.shape == (1000, 4)


def test_registry_missing_data_names_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data_batch_1"):
        load_dataset("cifar10", tmp_path, "train")
    with pytest.raises(DataError, match="shd_train.h5"):
        load_dataset("shd", tmp_path, "train")
    with pytest.raises(ValueError, match="known"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(ValueError, match="splits"):
        load_dataset("mnist", tmp_path, "validation")
