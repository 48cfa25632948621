"""Plots: what they show and name."""

from __future__ import annotations

import random


def test_tradeoff_plot_names_only_the_baseline_and_the_front_when_crowded(tmp_path, monkeypatch):
    from sparsespike import plots
    from sparsespike.pareto import pareto_front

    seen = {}

    def keep(fig, path):
        seen["labels"] = [t.get_text() for t in fig.axes[0].texts]
        return plots.Path(path)

    monkeypatch.setattr(plots, "_save", keep)
    rng = random.Random(0)
    pts = [("base", 1e5, 0.87)] + [(f"r{i}", 1e4 * (1 + rng.random()), 0.84 + 0.02 * rng.random()) for i in range(15)]
    plots.plot_tradeoff(pts, tmp_path / "t.png")
    front = pareto_front([(a, s) for _, s, a in pts])
    assert sorted(seen["labels"]) == sorted({pts[0][0]} | {pts[i][0] for i in front})
    assert len(seen["labels"]) < len(pts)
    plots.plot_tradeoff(pts[:5], tmp_path / "t.png")
    assert sorted(seen["labels"]) == sorted(p[0] for p in pts[:5])


def test_curves_show_a_penalty_cost_against_its_budget_and_multiplier(tmp_path, monkeypatch):
    from sparsespike import plots

    seen = {}

    def keep(fig, path, suptitle=None):
        seen["axes"] = fig.axes
        return plots.Path(path)

    monkeypatch.setattr(plots, "_save", keep)
    base = [{"epoch": e, "train_loss": 1.0, "val_loss": 1.0, "train_acc": 0.5, "val_acc": 0.5} for e in (1, 2, 3)]
    plots.plot_curves(base, tmp_path / "c.png")
    assert len(seen["axes"]) == 2  # no spikes, no penalty: loss and accuracy only
    hist = [dict(h, train_spikes=10.0) for h in base]
    hist[0]["train_expected_synops"] = None  # a warm-up epoch without the penalty
    for h, cost, bud, mu in zip(hist[1:], (900.0, 500.0), (600.0, 400.0), (0.0, 0.7), strict=True):
        h.update(train_expected_synops=cost, train_expected_synops_budget=bud, train_expected_synops_mu=mu)
    plots.plot_curves(hist, tmp_path / "c.png")
    cost_ax, mu_ax = seen["axes"][3], seen["axes"][4]  # loss, accuracy, spikes, cost (+ twin)
    lines = {ln.get_label(): ln for ln in cost_ax.get_lines()}
    assert list(lines["expected SynOps"].get_xdata()) == [2, 3]
    assert list(lines["expected SynOps"].get_ydata()) == [900.0, 500.0]
    assert list(lines["budget"].get_ydata()) == [600.0, 400.0]
    assert cost_ax.get_yscale() == "log"
    assert list(mu_ax.get_lines()[0].get_ydata()) == [0.0, 0.7]
    legend = [t.get_text() for t in cost_ax.get_legend().get_texts()]
    assert legend == ["expected SynOps", "budget", "multiplier"]
