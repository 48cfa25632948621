"""Plots written by runs and benchmarks (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: Path, suptitle: str | None = None) -> Path:
    """Title (optional), lay out, write ``path`` as a 110-dpi PNG and free the figure."""
    if suptitle is not None:
        fig.suptitle(suptitle)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_cost(ax, history: list[dict], stat: str) -> None:
    """The epoch's mean expected cost of a gate penalty (``train_<stat>``, log scale), the budget in
    force (``train_<stat>_budget``, dashed) and the dual multiplier (``train_<stat>_mu``, right
    axis) where they were logged."""

    def series(key: str) -> list[tuple]:
        return [(h["epoch"], h[key]) for h in history if h.get(key) is not None]

    pts = series(f"train_{stat}")
    label = stat.replace("expected_", "expected ").replace("synops", "SynOps").replace("flops", "FLOPs")
    ax.plot(*zip(*pts, strict=True), color="C0", label=label)
    bud = series(f"train_{stat}_budget")
    if bud:
        ax.plot(*zip(*bud, strict=True), color="C0", ls="--", label="budget")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{label} / sample (train)")
    handles, labels = ax.get_legend_handles_labels()
    mu = series(f"train_{stat}_mu")
    if mu:
        ax2 = ax.twinx()
        ax2.plot(*zip(*mu, strict=True), color="C3", lw=1, label="multiplier")
        ax2.set_ylabel("multiplier", color="C3")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize="small")


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Training curves: loss, accuracy (train/validation) and spikes per sample over epochs, and,
    for runs with a gate penalty, its expected cost against its budget (:func:`_plot_cost`)."""
    path = Path(path)
    ep = [h["epoch"] for h in history]
    has_spk = any(h.get("train_spikes") is not None for h in history)
    costs = [s for s in ("expected_synops", "expected_flops") if any(h.get(f"train_{s}") is not None for h in history)]
    n = 2 + has_spk + len(costs)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.4))
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
    for ax, stat in zip(axes[2 + has_spk :], costs, strict=True):
        _plot_cost(ax, history, stat)
    return _save(fig, path, title)


def plot_eventprop_curves(runs: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """EventProp training curves of one or more runs (label -> ``metrics.jsonl`` records):
    cross-entropy, accuracy and <N_S> (spikes per neuron per sample, Fontanini eq. 16) per epoch,
    training (dashed) and validation (solid), or test (dash-dot) for a run with no validation set
    (monitored, not selected on); dotted verticals mark the start of each later phase."""
    path = Path(path)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = (("loss_ce", "cross-entropy", 1.0), ("accuracy", "accuracy %", 100.0), ("n_s", "<N_S>", 1.0))
    for k, (label, hist) in enumerate(runs.items()):
        color = f"C{k}"
        ep = [h["epoch"] for h in hist]
        for ax, (key, ylabel, scale) in zip(axes, panels, strict=True):
            for split, style in (("train", "--"), ("val", "-"), ("test", "-.")):
                if not any(split in h for h in hist):
                    continue
                ys = [scale * h[split][key] if key in h.get(split, {}) else float("nan") for h in hist]
                ax.plot(ep, ys, style, color=color, label=f"{label} ({'validation' if split == 'val' else split})")
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            for a, b in zip(hist, hist[1:], strict=False):
                if b["phase"] != a["phase"]:
                    ax.axvline(b["epoch"] - 0.5, color=color, ls=":", lw=1)
    axes[1].legend(fontsize=7)
    axes[2].set_yscale("log")
    axes[2].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes[2].yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    return _save(fig, path, title)


def plot_tradeoff(
    points: list[tuple[str, float, float]],
    path: str | Path,
    title: str = "",
    acc_drop: float = 0.01,
    synops_factor: float = 10.0,
    max_labels: int = 12,
) -> Path:
    """Test accuracy against SynOps per sample (log axis) for finished runs; the first point is
    the baseline (star). The shaded box is the target region of issue 7 relative to it: at least
    ``synops_factor`` x fewer SynOps with at most ``acc_drop`` accuracy lost. The non-dominated
    runs (``pareto.pareto_front``) are joined by a line. With more than ``max_labels`` points
    only the baseline and the front are named (the rest would overlap; the table names them).

    ``points``: ``[(label, synops, accuracy in [0, 1]), ...]``.
    """
    from .pareto import pareto_front

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    if points:
        _, s0, a0 = points[0]
        ax.fill_between(
            [min(p[1] for p in points) * 0.5, s0 / synops_factor],
            100 * (a0 - acc_drop),
            100 * max(a0, max(p[2] for p in points)) + 0.5,
            color="tab:green",
            alpha=0.12,
            label=f">= {synops_factor:g}x fewer SynOps, <= {100 * acc_drop:g} pt lost",
        )
        front = pareto_front([(a, s) for _, s, a in points])
        fp = sorted((points[i][1], 100 * points[i][2]) for i in front)
        ax.plot([f[0] for f in fp], [f[1] for f in fp], "-", color="tab:gray", alpha=0.6, label="front")
        for i, (lab, s, a) in enumerate(points):
            ax.scatter(
                [s],
                [100 * a],
                marker="*" if i == 0 else "o",
                s=140 if i == 0 else 40,
                color="black" if i == 0 else ("tab:blue" if i in front else "tab:orange"),
                zorder=3,
            )
            if len(points) <= max_labels or i == 0 or i in front:
                ax.annotate(lab, (s, 100 * a), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("SynOps per sample (test)")
    ax.set_ylabel("test accuracy %")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title)
    return _save(fig, path)


def plot_yin_curves(runs: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """Yin-engine training curves of one or more runs (label -> ``metrics.jsonl`` records): test
    (solid, markers where evaluated) and training (dashed) accuracy, and the share of weights whose
    test-time gate is non-zero, per epoch; a dotted vertical marks where the gates froze."""
    path = Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, (label, hist) in enumerate(runs.items()):
        color = f"C{k}"
        ep = [h["epoch"] for h in hist]
        ev = [h for h in hist if "test_acc" in h]
        axes[0].plot(
            [h["epoch"] for h in ev], [h["test_acc"] for h in ev], "o-", ms=3, color=color, label=f"{label} (test)"
        )
        axes[0].plot(ep, [h["train_acc"] for h in hist], "--", color=color, alpha=0.6, label=f"{label} (train)")
        axes[1].plot(ep, [100.0 * h["density"] for h in hist], color=color, label=label)
        frozen = [
            b["epoch"] for a, b in zip(hist, hist[1:], strict=False) if a["l0_penalty"] > 0 and b["l0_penalty"] == 0
        ]
        for e in frozen:
            axes[1].axvline(e - 0.5, color=color, ls=":", lw=1)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("accuracy %")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("non-zero weights %")
    axes[1].set_ylim(0, 105)
    axes[1].legend(fontsize=7)
    return _save(fig, path, title)
