"""runtime.tune_allocator: applies once on glibc Linux, honours the opt-out."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from sparsespike.runtime import tune_allocator


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tune_allocator_applies_once():
    assert tune_allocator() is True
    assert tune_allocator() is True  # idempotent


def test_tune_allocator_opt_out():
    code = "from sparsespike.runtime import tune_allocator; print(tune_allocator())"
    env = dict(os.environ, SPARSESPIKE_TUNE_MALLOC="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_trainer_tunes_the_allocator(tmp_path):
    """A script that trains through the Python API gets the allocator of the CLI commands: the
    ``Trainer`` applies it (in a fresh process, where nothing else has), and the opt-out holds."""
    code = (
        "import sparsespike.runtime as r\n"
        "from sparsespike.config import ExperimentConfig, from_dict\n"
        "from sparsespike.train import Trainer\n"
        "assert r._done is None\n"
        "cfg = from_dict(ExperimentConfig, {'data': {'dataset': 'yinyang', 'train_subset': 20, 'test_subset': 20},"
        " 'model': {'layers': [{'type': 'readout', 'out': 3}]}})\n"
        f"Trainer(cfg, {str(tmp_path / 'r')!r}, progress=False)\n"
        "print(r._done)\n"
    )
    for env_val, want in (("1", "True"), ("0", "False")):
        env = dict(os.environ, SPARSESPIKE_TUNE_MALLOC=env_val)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == want
