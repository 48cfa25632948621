"""Benchmarks behind ``sparsespike bench``: ratios measured side by side in one run."""

from __future__ import annotations

from pathlib import Path


def refuse_mixed_settings(path: Path, was: dict, now: dict, hint: str) -> None:
    """A benchmark adding to an existing results file: only if the settings in ``now`` (thread
    count, batch, T, input, ...) equal those the file states in ``was`` -- one file states one of
    each, so rows or parts measured otherwise would look alike. Else ``SystemExit`` naming them."""
    clash = [k for k in now if k in was and was[k] != now[k]]
    if clash:
        old = ", ".join(f"{k}={was[k]!r}" for k in clash)
        new = ", ".join(f"{k}={now[k]!r}" for k in clash)
        raise SystemExit(f"{path} was measured with {old}, this run with {new}: {hint}")
