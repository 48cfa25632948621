"""Lambda sweep of the L0 gates, like Yin et al. KDD'21 Fig. 9: share of non-zero weights per
layer (left: at one lambda, each layer's bar as wide as its weight count) and overall (right)
against lambda, with the test accuracy and the FLOP ratio of each pruned network.

One ``train_yin`` run per lambda (same seed, data and schedule; the dense network is lambda = 0
with the gates off). Finished lambdas are kept in the JSON, so a killed sweep resumes.

    NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/yin_lambda_sweep.py \\
        experiments/yin_mnist_scnn.yaml --lams 0 1e-4 1e-3 1e-2 \\
        --set data.train_subset=10000 --set epochs=5 --set optimizer.gate_lr=0.01 \\
        --out benchmarks/results/yin_lambda_sweep.json

Writes the JSON, a markdown table beside it (``.md``) and the plot (``.png``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from sparsespike.sparsity.yin_models import load_config, train_yin


def _row(lam: float, res: dict) -> dict:
    return {
        "lam": lam,
        "test_acc": res["test_acc_pruned"],
        "density": res["sparsity"]["total"]["density"],
        "layers": [
            {"name": r["name"], "type": r["type"], "weights": r["weights"], "density": r["density"]}
            for r in res["sparsity"]["layers"]
        ],
        "flops": res["ops"]["flops"],
        "flops_dense": res["ops"]["flops_dense"],
        "flops_ratio": res["flops_ratio"],
        "train_time_s": res["train_time_s"],
        "epochs": len(res["history"]),
    }


def table(rows: list[dict]) -> str:
    names = [layer["name"] for layer in rows[0]["layers"]]
    head = "| lambda | test acc. % | non-zero % | " + " | ".join(f"{n} %" for n in names) + " | FLOPs / dense |"
    lines = [head, "|" + "---|" * (4 + len(names))]
    for r in rows:
        per = " | ".join(f"{100 * layer['density']:.1f}" for layer in r["layers"])
        lines.append(
            f"| {r['lam']:g} | {r['test_acc']:.2f} | {100 * r['density']:.1f} | {per} | {r['flops_ratio']:.3f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, ref_lam: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    ref = min((r for r in rows if r["lam"] > 0), key=lambda r: abs(r["lam"] - ref_lam), default=rows[0])
    x = 0.0
    total = sum(layer["weights"] for layer in ref["layers"])
    for k, layer in enumerate(ref["layers"]):
        w = max(layer["weights"] / total, 0.03)  # a small layer stays visible
        a.bar(x, 100, width=w, align="edge", color="0.9", edgecolor="0.5")
        a.bar(x, 100 * layer["density"], width=w, align="edge", color="tab:blue")
        label = f"{layer['type'].lower()} {k + 1}: {100 * layer['density']:.0f}%"
        a.text(x + w / 2, 3, label, ha="center", va="bottom", rotation=90, fontsize=7, color="k")
        x += w + 0.01
    a.set_xticks([])
    a.set_ylim(0, 115)
    a.set_ylabel("non-zero weights %")
    a.set_title(f"per layer, lambda = {ref['lam']:g} (width ~ weights)")
    gated = [r for r in rows if r["lam"] > 0]
    b.semilogx([r["lam"] for r in gated], [100 * r["density"] for r in gated], "o-", label="non-zero weights %")
    b.semilogx([r["lam"] for r in gated], [100 * r["flops_ratio"] for r in gated], "s--", label="FLOPs % of dense")
    b.set_xlabel("lambda")
    b.set_ylabel("%")
    b2 = b.twinx()
    b2.semilogx([r["lam"] for r in gated], [r["test_acc"] for r in gated], "^:", color="tab:green", label="test acc.")
    dense = [r for r in rows if r["lam"] == 0]
    if dense:
        b2.axhline(dense[0]["test_acc"], color="tab:green", lw=0.8, alpha=0.6, label="dense test acc.")
    b2.set_ylabel("test accuracy %")
    h1, l1 = b.get_legend_handles_labels()
    h2, l2 = b2.get_legend_handles_labels()
    b.legend(h1 + h2, l1 + l2, fontsize=7, loc="center left")
    b.set_title("overall, against lambda")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _save(out: Path, stamp: dict, rows: list[dict], done: dict[float, dict], lams: list[float]) -> None:
    """Atomically write every finished lambda: this run's rows and earlier ones not asked for again."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    keep = [r for k, r in done.items() if k not in lams]
    tmp.write_text(json.dumps({"stamp": stamp, "rows": rows + keep}, indent=1))
    tmp.replace(out)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--lams", type=float, nargs="+", default=[0.0, 1e-4, 1e-3, 1e-2])
    ap.add_argument("--set", action="append", default=[], help="dotted.key=value (YAML), repeatable")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--ref-lam", type=float, default=1e-3, help="lambda of the per-layer panel (paper: 1e-3)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/yin_lambda_sweep.json"))
    args = ap.parse_args(argv)
    base = load_config(args.config, args.set, args.data_dir)
    stamp = {"config": args.config, "set": sorted(args.set)}
    done: dict[float, dict] = {}
    if args.out.exists():
        prev = json.loads(args.out.read_text())
        if prev.get("stamp") == stamp:
            done = {r["lam"]: r for r in prev["rows"]}
    rows = []
    for lam in args.lams:
        if lam in done:
            print(f"lambda {lam:g}: kept from {args.out}", flush=True)
            rows.append(done[lam])
            continue
        cfg = copy.deepcopy(base)
        conn = cfg.setdefault("connectivity", {})
        conn["l0"] = lam > 0
        if lam > 0:
            conn["lam"] = lam
        cfg["verbose"] = False
        print(f"lambda {lam:g}: training ...", flush=True)
        row = _row(lam, train_yin(cfg))
        print(
            f"lambda {lam:g}: test {row['test_acc']:.2f} %, non-zero {100 * row['density']:.1f} %, "
            f"FLOPs {row['flops_ratio']:.3f} of dense ({row['train_time_s']:.0f} s)",
            flush=True,
        )
        rows.append(row)
        _save(args.out, stamp, rows, done, args.lams)
    _save(args.out, stamp, rows, done, args.lams)  # also the rows kept after the last one trained
    rows.sort(key=lambda r: r["lam"])
    md = table(rows)
    args.out.with_suffix(".md").write_text(f"`{' '.join(sys.argv)}`\n\n{md}\n")
    plot(rows, args.out.with_suffix(".png"), args.ref_lam)
    print(md)
    return rows


if __name__ == "__main__":
    main()
