"""Test accuracy against FLOPs for two or more lambda sweeps (``yin_lambda_sweep.py`` JSONs), e.g.
the L0 penalty of Yin eq. 20 against the expected-FLOPs penalty (``sparsity/flops.py``).

    python benchmarks/yin_penalty_front.py \\
        "L0 (eq. 20)=benchmarks/results/yin_lambda_sweep.json" \\
        "expected FLOPs=benchmarks/results/yin_flops_sweep.json" \\
        --out benchmarks/results/yin_penalty_front.png

Writes the plot and a markdown table beside it (``.md``). The dense row (lambda 0) of the first
sweep is the reference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(spec: str) -> tuple[str, list[dict]]:
    label, sep, path = spec.partition("=")
    if not sep:
        raise SystemExit(f"{spec!r}: expected LABEL=PATH")
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"{label}: no sweep results at {p}")
    rows = json.loads(p.read_text())["rows"]
    return label, sorted(rows, key=lambda r: r["lam"])


def table(sweeps: list[tuple[str, list[dict]]]) -> str:
    dense = next((r for r in sweeps[0][1] if r["lam"] == 0), None)
    lines = [
        "| penalty | lambda | test acc. % | vs dense (points) | non-zero % | FLOPs / dense |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, rows in sweeps:
        for r in rows:
            if r["lam"] == 0 and label != sweeps[0][0]:
                continue
            d = f"{r['test_acc'] - dense['test_acc']:+.2f}" if dense else "-"
            name = "dense" if r["lam"] == 0 else label
            acc, nz = f"{r['test_acc']:.2f}", f"{100 * r['density']:.1f}"
            lines.append(f"| {name} | {r['lam']:g} | {acc} | {d} | {nz} | {r['flops_ratio']:.3f} |")
    return "\n".join(lines)


def plot(sweeps: list[tuple[str, list[dict]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, (label, rows) in enumerate(sweeps):
        rows = [r for r in rows if r["lam"] > 0]
        xs = [r["flops_ratio"] for r in rows]
        ys = [r["test_acc"] for r in rows]
        ax.plot(xs, ys, "o-", color=f"C{i}", label=label)
        for r in rows:
            ax.annotate(f"{r['lam']:g}", (r["flops_ratio"], r["test_acc"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color=f"C{i}")  # fmt: skip
    dense = next((r for r in sweeps[0][1] if r["lam"] == 0), None)
    if dense:
        ax.plot([1.0], [dense["test_acc"]], "k*", ms=12, label="dense")
    ax.axvline(1 / 3, color="gray", ls=":", lw=1)
    ax.text(1 / 3, ax.get_ylim()[0], " 1/3 of the FLOPs", fontsize=7, color="gray", va="bottom")
    ax.set_xlabel("FLOPs of the pruned network / dense")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("MNIST SCNN: accuracy against FLOPs, by penalty")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="+", help="LABEL=PATH of a yin_lambda_sweep.py JSON")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/yin_penalty_front.png"))
    args = ap.parse_args(argv)
    sweeps = [load(s) for s in args.sweeps]
    md = table(sweeps)
    args.out.with_suffix(".md").parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(md + "\n")
    plot(sweeps, args.out)
    print(md)
    return md


if __name__ == "__main__":
    main()
