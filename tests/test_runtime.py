"""runtime: tune_allocator applies once on glibc Linux and honours the opt-out; tune_openmp sets
libgomp's spin count before torch loads, and only then."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from sparsespike.runtime import tune_allocator


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tune_allocator_applies_once():
    assert tune_allocator() is True
    assert tune_allocator() is True  # idempotent


@pytest.mark.parametrize("value", ["0", "false", "Off"])
def test_tune_allocator_opt_out(value):
    code = "from sparsespike.runtime import tune_allocator; print(tune_allocator())"
    env = dict(os.environ, SPARSESPIKE_TUNE_MALLOC=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_tune_allocator_refuses_thresholds_that_wrap_as_c_ints():
    """mallopt takes a C int: 1 << 31 was passed and wrapped to a negative threshold."""
    code = "from sparsespike.runtime import tune_allocator; tune_allocator(trim_threshold=1 << 32)"
    env = dict(os.environ, SPARSESPIKE_TUNE_MALLOC="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if sys.platform.startswith("linux"):
        assert out.returncode != 0 and "thresholds must lie in" in out.stderr


ROOT = Path(__file__).resolve().parents[1]

# each training entry point, started in a fresh process (where nothing else has tuned the
# allocator) on a tiny config; {out} and {data} are filled in by the test
_ENTRY_POINTS = {
    "Trainer": (
        "from sparsespike.config import ExperimentConfig, from_dict\n"
        "from sparsespike.train import Trainer\n"
        "cfg = from_dict(ExperimentConfig, {{'data': {{'dataset': 'yinyang', 'train_subset': 20, 'test_subset': 20}},"
        " 'model': {{'layers': [{{'type': 'readout', 'out': 3}}]}}}})\n"
        "Trainer(cfg, {out!r}, progress=False)\n"
    ),
    "train_eventprop": (
        "from sparsespike.eventprop.train import EventPropTraining\n"
        "EventPropTraining({cfg!r}, n_train=32, progress=False)\n"
    ),
    "train_yin": (
        "from sparsespike.sparsity.yin_models import load_config, train_yin\n"
        "cfg = load_config({yin!r})\n"
        "cfg['data'] = {{**cfg['data'], 'root': {data!r}, 'train_subset': 20, 'test_subset': 20}}\n"
        "cfg.update(epochs=1, eval_every=1, out_dir={out!r}, progress=False)\n"
        "train_yin(cfg)\n"
    ),
}


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("entry", sorted(_ENTRY_POINTS))
def test_training_entry_points_tune_the_allocator(tmp_path, data_dir, entry):
    """A script that trains through the Python API gets the allocator of the CLI commands: each
    training entry point applies it, and the opt-out holds."""
    body = _ENTRY_POINTS[entry].format(
        out=str(tmp_path / "r"),
        data=str(data_dir),
        cfg=str(ROOT / "experiments" / "eventprop_yinyang_lw.yaml"),
        yin=str(ROOT / "experiments" / "yin_mnist_small.yaml"),
    )
    code = "import sparsespike.runtime as r\nassert r._done is None\n" + body + "print(r._done)\n"
    for env_val, want in (("1", "True"), ("0", "False")):
        env = dict(os.environ, SPARSESPIKE_TUNE_MALLOC=env_val, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == want


def _spincount_seen_by(code: str, **env_over) -> str:
    """``GOMP_SPINCOUNT`` in a fresh interpreter after ``code`` (the user's own variables removed)."""
    mine = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "SPARSESPIKE_TUNE_OMP")
    env = {k: v for k, v in os.environ.items() if k not in mine}
    env.update(env_over)
    code += "; import os; print(os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_tune_openmp_sets_the_spin_count_before_torch_loads():
    """Importing sparsespike first sets it, and torch's libgomp then runs with it."""
    assert _spincount_seen_by("import sparsespike") == "10000"
    # libgomp reads the variable when torch loads it: too late once torch is imported
    assert _spincount_seen_by("import torch; import sparsespike") == "None"


@pytest.mark.parametrize(
    ("env", "want"),
    [({"GOMP_SPINCOUNT": "5"}, "5"), ({"OMP_WAIT_POLICY": "PASSIVE"}, "None"), ({"SPARSESPIKE_TUNE_OMP": "0"}, "None")],
)
def test_tune_openmp_leaves_the_users_settings_alone(env, want):
    assert _spincount_seen_by("import sparsespike", **env) == want
