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
