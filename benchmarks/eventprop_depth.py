"""Depth study like Fontanini et al. 2024 Fig. 11: <N_S> (and accuracy) against network depth on
Yin-Yang, for L_W and the 2-phase training.

Reads the per-seed results that ``benchmarks/eventprop_train.py`` wrote for the three depths
(5-40-20-3, 5-40-25-13-3, 5-40-33-25-13-3), prints a table and draws the figure::

    for c in depth2h_lw lw depth4h_lw depth2h_2phase 2phase depth4h_2phase; do
      NUMBA_NUM_THREADS=1 python benchmarks/eventprop_train.py experiments/eventprop_yinyang_$c.yaml \\
          --seeds 0 1 2 --out benchmarks/results/eventprop_yinyang_$c.json
    done
    python benchmarks/eventprop_depth.py

Writes ``benchmarks/results/eventprop_depth.{json,md,png}``. A depth whose JSON is missing is
left out of the table and the plot (and named).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEPTHS = {"2h": ("depth2h", 2), "3h": ("", 3), "4h": ("depth4h", 4)}
RECIPES = {"L_W": "lw", "2-phase": "2phase"}


def _file(results: Path, depth_tag: str, recipe: str) -> Path:
    stem = f"eventprop_yinyang_{depth_tag}_{recipe}" if depth_tag else f"eventprop_yinyang_{recipe}"
    return results / f"{stem}.json"


def collect(results: Path = RESULTS) -> dict:
    """``{recipe: [{depth, hidden_layers, seeds, n_s, acc, n_s_median, acc_median, sizes}]}``."""
    out: dict[str, list] = {}
    missing = []
    for recipe, rtag in RECIPES.items():
        rows = []
        for _, (dtag, hidden) in DEPTHS.items():
            f = _file(results, dtag, rtag)
            if not f.exists():
                missing.append(f.name)
                continue
            runs = json.loads(f.read_text())["runs"]
            if not runs:
                missing.append(f.name)
                continue
            n_s = [float(r["test_n_s"]) for r in runs]
            acc = [float(r["test_accuracy"]) for r in runs]
            rows.append(
                {
                    "hidden_layers": hidden,
                    "file": f.name,
                    "seeds": [int(r["seed"]) for r in runs],
                    "n_s": n_s,
                    "acc": acc,
                    "n_s_median": statistics.median(n_s),
                    "acc_median": statistics.median(acc),
                    "n_s_per_layer_seed0": runs[0].get("test_n_s_per_layer"),
                }
            )
        out[recipe] = rows
    out["missing"] = missing
    return out


def table(res: dict) -> str:
    lines = [
        "| recipe | hidden layers | seeds | median test acc. | median <N_S> | <N_S> per seed |",
        "|---|---:|---|---:|---:|---|",
    ]
    for recipe in RECIPES:
        for r in res.get(recipe, []):
            per = ", ".join(f"{v:.2f}" for v in r["n_s"])
            lines.append(
                f"| {recipe} | {r['hidden_layers']} | {len(r['seeds'])} | {100 * r['acc_median']:.2f} % | "
                f"{r['n_s_median']:.2f} | {per} |"
            )
    if res.get("missing"):
        lines.append("")
        lines.append("not run: " + ", ".join(res["missing"]))
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for recipe, color in zip(RECIPES, ("tab:blue", "tab:orange"), strict=True):
        rows = res.get(recipe, [])
        if not rows:
            continue
        d = [r["hidden_layers"] for r in rows]
        a1.plot(d, [r["n_s_median"] for r in rows], "o-", color=color, label=f"{recipe} (median)")
        a2.plot(d, [100 * r["acc_median"] for r in rows], "o-", color=color, label=f"{recipe} (median)")
        for r in rows:
            a1.scatter([r["hidden_layers"]] * len(r["n_s"]), r["n_s"], color=color, alpha=0.35, s=12)
            a2.scatter([r["hidden_layers"]] * len(r["acc"]), [100 * a for a in r["acc"]], color=color, alpha=0.35, s=12)
    for ax, lab in ((a1, "<N_S> (spikes per neuron per sample)"), (a2, "test accuracy (%)")):
        ax.set_xlabel("hidden layers (5-40-20-3, 5-40-25-13-3, 5-40-33-25-13-3)")
        ax.set_ylabel(lab)
        ax.set_xticks([2, 3, 4])
        ax.grid(alpha=0.3)
        ax.legend()
    a1.set_title("Yin-Yang: activity against depth (Fontanini Fig. 11)")
    a2.set_title("accuracy against depth")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder with the eventprop_yinyang_*.json files")
    ap.add_argument("--out", type=Path, default=None, help="output stem (default RESULTS/eventprop_depth)")
    args = ap.parse_args(argv)
    res = collect(args.results)
    stem = args.out or args.results / "eventprop_depth"
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(res, indent=1))
    md = table(res)
    Path(f"{stem}.md").write_text(md + "\n")
    plot(res, Path(f"{stem}.png"))
    print(md)
    return res


if __name__ == "__main__":
    main()
