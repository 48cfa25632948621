"""Shared by the sweep tests: run a sweep with one worker, SIGKILL that worker once its trial has
finished an epoch, and check the trial was re-queued and completed (a killed worker loses
nothing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def kill_worker_mid_trial(spec, spec_path: Path, out: Path, data_dir: Path):
    """Launch ``python -m sparsespike.sweep spec_path`` with one worker, SIGKILL the worker of the
    first running trial that has finished an epoch, let the launcher finish; return
    ``(killed trial, retried trials, study, launcher log + worker logs)``."""
    from optuna.trial import TrialState

    from sparsespike.sweep import default_storage, make_storage, open_study

    cmd = [sys.executable, "-m", "sparsespike.sweep", str(spec_path), "--out", str(out), "--workers", "1"]
    launcher = subprocess.Popen(
        [*cmd, "--data-dir", str(data_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    killed = None
    deadline = time.time() + 240
    while time.time() < deadline and killed is None:
        time.sleep(0.5)
        if not (out / "study.db").exists():
            continue
        try:
            study = open_study(spec, make_storage(default_storage(out)), create=False)
        except Exception:  # noqa: BLE001 - not created yet
            continue
        for t in study.get_trials(states=(TrialState.RUNNING,)):
            if t.user_attrs.get("epochs_done", 0) >= 1 and "pid" in t.user_attrs:
                killed = t
                os.kill(int(t.user_attrs["pid"]), signal.SIGKILL)
                break
    assert killed is not None, "no trial reached epoch 1 in time"
    log, _ = launcher.communicate(timeout=600)
    wl = "".join(p.read_text() for p in (out / "workers").glob("*.log"))
    assert launcher.returncode == 0, log[-3000:] + wl[-6000:]
    study = open_study(spec, make_storage(default_storage(out)), create=False)
    assert study.get_trials()[killed.number].state == TrialState.FAIL
    retried = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == killed.number]
    assert retried and retried[-1].state == TrialState.COMPLETE
    return killed, retried, study, log + wl
