"""Plots written by runs and benchmarks (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Training curves: loss, accuracy (train/validation) and spikes per sample over epochs."""
    path = Path(path)
    ep = [h["epoch"] for h in history]
    has_spk = any(h.get("train_spikes") is not None for h in history)
    fig, axes = plt.subplots(1, 3 if has_spk else 2, figsize=(12 if has_spk else 8, 3.4))
    axes[0].plot(ep, [h["train_loss"] for h in history], label="train")
    axes[0].plot(ep, [h["val_loss"] for h in history], label="validation")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[1].plot(ep, [100 * h["train_acc"] for h in history], label="train")
    axes[1].plot(ep, [100 * h["val_acc"] for h in history], label="validation")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("accuracy %")
    axes[1].legend()
    if has_spk:
        axes[2].plot(ep, [h.get("train_spikes") or 0 for h in history])
        axes[2].set_xlabel("epoch")
        axes[2].set_ylabel("spikes / sample (train)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
