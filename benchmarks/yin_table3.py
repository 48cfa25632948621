"""Yin et al. KDD'21 Table 3 (few training samples: does the sparse network generalise better?),
as a paired experiment over seeds.

Per seed (the seed also draws the 1,000 training samples, the Bernoulli rasters and the batch
order):

1. ``dense``: the dense SCNN trained on the small training set (the config's ``epochs``).
2. From the dense weights (``init_from``, fresh Adam), ``--more`` further epochs each of
   * ``ctrl``: the dense network trained on (the control: same extra steps, no gates);
   * ``l0-<lam>``: hard-concrete gates with Yin's eq. 20 penalty (one run per ``--lam-l0``), learned
     for ``--freeze`` epochs at gate lr ``--gate-lr``, then frozen (exact zeros) while the weights
     fine-tune;
   * ``flops-<lam>``: the same with the expected-FLOPs penalty (``connectivity.penalty: flops``,
     one run per ``--lam-flops``).

Each (variant, seed) is one ``train_yin`` run in ``RUNS/<variant>_s<seed>``; a finished run (its
``run.json`` holds results) is kept and one cut off mid-way continues from its ``last.pt``,
so a killed experiment resumes, and two processes with different
``--seeds`` (or, for one seed, different ``--only`` variants once its dense run has finished) can
share the work. The same script runs Yin's Fig. 4 on full MNIST (docs/connectivity.md, "Fig. 4,
second seed, with a dense control"). The table pairs every pruned run with the control of its own
seed (same data, same extra epochs), on the full 10,000-image test set.

    NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/yin_table3.py \\
        experiments/yin_mnist_small.yaml --data-dir ../shared/data --seeds 0 1 2

Writes ``--out`` (JSON), a markdown table beside it (``.md``) and a plot (``.png``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

from sparsespike.sparsity.yin_models import load_config, train_yin

BASE = ("dense", "ctrl")


def variants(lams_l0: list[float], lams_flops: list[float]) -> list[str]:
    """Run names: the dense network, its control, then one pruned run per penalty and lambda."""
    return [*BASE, *(f"l0-{lam:g}" for lam in lams_l0), *(f"flops-{lam:g}" for lam in lams_flops)]


def variant_config(base: dict, variant: str, seed: int, runs: Path, args: argparse.Namespace) -> dict:
    """The ``train_yin`` config of one (variant, seed) run."""
    cfg = copy.deepcopy(base)
    cfg.update(seed=seed, verbose=False, out_dir=str(runs / f"{variant}_s{seed}"))
    conn = cfg.setdefault("connectivity", {})
    if variant == "dense":
        conn["l0"] = False
        return cfg
    cfg.update(init_from=str(runs / f"dense_s{seed}" / "model.pt"), epochs=args.more, eval_every=args.eval_every)
    if variant == "ctrl":
        conn["l0"] = False
        return cfg
    penalty, sep, lam = variant.partition("-")
    if penalty not in ("l0", "flops") or not sep:
        raise ValueError(f"unknown variant {variant!r} (dense, ctrl, l0-<lam> or flops-<lam>)")
    conn.update(l0=True, init_mean=args.init_mean, freeze_after=args.freeze, penalty=penalty, lam=float(lam))
    cfg.setdefault("optimizer", {})["gate_lr"] = args.gate_lr
    return cfg


def read_run(run_dir: Path) -> dict | None:
    """The figures of a finished run, or None while it has no ``run.json`` with results
    (``train_yin`` writes it last, after ``model.pt``). A folder holding only a run's logs (as in
    docs/results/) counts as finished, so ``--collect`` can tabulate recorded runs."""
    path = run_dir / "run.json"
    try:
        res = json.loads(path.read_text())["results"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return None
    return {
        "test_acc": res["test_acc_pruned"],
        "density": res["sparsity"]["total"]["density"],
        "layer_density": {r["name"]: r["density"] for r in res["sparsity"]["layers"]},
        "flops_ratio": res["flops_ratio"],
        "train_time_s": res["train_time_s"],
    }


def summarise(rows: dict[str, dict[int, dict]], seeds: list[int]) -> dict:
    """Per variant: accuracies per seed, mean / std, and the paired differences to the seed's
    control and (Fig. 4's comparison) to the seed's dense run."""
    out = {}
    ctrl = rows.get("ctrl", {})
    dense = rows.get("dense", {})
    for v, by_seed in rows.items():
        accs = [by_seed[s]["test_acc"] for s in seeds if s in by_seed]
        entry = {
            "seeds": [s for s in seeds if s in by_seed],
            "test_acc": accs,
            "mean": statistics.fmean(accs) if accs else None,
            "std": statistics.stdev(accs) if len(accs) > 1 else None,
            "density": [by_seed[s]["density"] for s in seeds if s in by_seed],
            "flops_ratio": [by_seed[s]["flops_ratio"] for s in seeds if s in by_seed],
        }
        if v not in BASE:
            diffs = [by_seed[s]["test_acc"] - ctrl[s]["test_acc"] for s in seeds if s in by_seed and s in ctrl]
            entry["minus_ctrl"] = diffs
            entry["minus_ctrl_mean"] = statistics.fmean(diffs) if diffs else None
            dd = [by_seed[s]["test_acc"] - dense[s]["test_acc"] for s in seeds if s in by_seed and s in dense]
            entry["minus_dense"] = dd
            entry["minus_dense_mean"] = statistics.fmean(dd) if dd else None
        out[v] = entry
    return out


def table(rows: dict[str, dict[int, dict]], seeds: list[int]) -> str:
    """Markdown: one line per (run, seed), pruned runs with their differences to the seed's
    control and dense run."""
    lines = [
        "| run | seed | test acc. % | minus control (points) | minus dense (points) | non-zero weights % "
        "| per layer % | FLOPs / dense |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]

    def minus(v: str, s: int, ref: str) -> str:
        base = rows.get(ref, {}).get(s)
        return f"{rows[v][s]['test_acc'] - base['test_acc']:+.2f}" if v not in BASE and base else ""

    for v in rows:
        for s in seeds:
            r = rows.get(v, {}).get(s)
            if r is None:
                continue
            per = " / ".join(f"{100 * d:.0f}" for d in r["layer_density"].values())
            lines.append(
                f"| {v} | {s} | {r['test_acc']:.2f} | {minus(v, s, 'ctrl')} | {minus(v, s, 'dense')} "
                f"| {100 * r['density']:.1f} | {per} | {r['flops_ratio']:.3f} |"
            )
    return "\n".join(lines)


def plot(rows: dict[str, dict[int, dict]], seeds: list[int], path: Path, title: str) -> None:
    """Test accuracy per run and seed; grey lines join one seed's control and pruned runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 1.5, 4))

    def x_of(k: int, i: int) -> float:  # seeds side by side around each run's tick
        return k + 0.08 * (i - (len(seeds) - 1) / 2)

    for k, v in enumerate(names):
        pts = [(i, s, rows[v][s]) for i, s in enumerate(seeds) if s in rows.get(v, {})]
        if not pts:
            continue
        ax.scatter([x_of(k, i) for i, _, _ in pts], [r["test_acc"] for _, _, r in pts], s=28, label=v)
        for i, s, r in pts:
            ax.annotate(f"s{s}", (x_of(k, i), r["test_acc"]), fontsize=6, xytext=(3, 0), textcoords="offset points")
    for i, s in enumerate(seeds):  # connect each seed's control and pruned runs
        ks = [k for k, v in enumerate(names) if k >= 1 and s in rows.get(v, {})]
        if len(ks) > 1:
            ys = [rows[names[k]][s]["test_acc"] for k in ks]
            ax.plot([x_of(k, i) for k in ks], ys, color="0.7", lw=0.7, zorder=0)
    label = {"dense": "dense", "ctrl": "dense + more\n(control)"}
    for v in names[len(BASE) :]:
        pen, _, lam = v.partition("-")
        density = statistics.fmean(r["density"] for r in rows[v].values()) if rows[v] else float("nan")
        label[v] = f"{'L0 eq. 20' if pen == 'l0' else 'FLOPs'} {lam}\n({100 * density:.0f} % weights)"
    ax.set_xticks(range(len(names)), [label[v] for v in names], fontsize=7)
    ax.set_ylabel("test accuracy % (10,000 images)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


DEFAULT_OUT = Path("benchmarks/results/yin_table3.json")


def _report_config(path: Path) -> str | None:
    """The config a report file was made from (its first argument), or None if there is none."""
    try:
        argv = json.loads(path.read_text()).get("argv") or []
    except (OSError, ValueError, AttributeError):
        return None
    return str(argv[0]) if argv else None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--set", action="append", default=[], help="dotted.key=value (YAML) for every run, repeatable")
    ap.add_argument("--runs", type=Path, default=Path("runs/yin_table3"), help="one folder per (variant, seed)")
    ap.add_argument("--more", type=int, default=20, help="epochs of the control and pruned runs")
    ap.add_argument("--freeze", type=int, default=8, help="epochs the gates learn before they freeze")
    ap.add_argument("--gate-lr", type=float, default=0.1)
    ap.add_argument("--init-mean", type=float, default=2.0, help="initial log alpha of the gates")
    ap.add_argument("--lam-l0", type=float, nargs="*", default=[1e-4], help="one pruned run per value")
    ap.add_argument("--lam-flops", type=float, nargs="*", default=[9e-8], help="one pruned run per value")
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--collect", action="store_true", help="only read the finished runs and write the report")
    ap.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="VARIANT",
        help="train only these variants (e.g. ctrl flops-5e-08) and read the others' finished runs, so that a "
        "second process can take a seed's control while the first trains its pruned run",
    )
    ap.add_argument("--title", default="Yin Table 3: 1,000 MNIST training samples, per seed", help="plot title")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"report file (default {DEFAULT_OUT}, refused there when it holds another config's report)",
    )
    args = ap.parse_args(argv)
    if args.freeze > args.more:
        raise SystemExit(f"--freeze {args.freeze} must not exceed --more {args.more}")
    if args.out is None:
        args.out = DEFAULT_OUT
        other = _report_config(args.out)
        if other is not None and Path(other).name != Path(args.config).name:
            # checked before any training: a second config's runs must not replace the recorded report
            raise SystemExit(
                f"{args.out} holds the report of {other}, not of {args.config}: pass --out for this config's report"
            )
    base = load_config(args.config, args.set, args.data_dir)
    names = variants(args.lam_l0, args.lam_flops)
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        raise SystemExit(f"--only {' '.join(unknown)}: not among this run's variants {', '.join(names)}")
    rows: dict[str, dict[int, dict]] = {v: {} for v in names}
    for seed in args.seeds:
        for v in names:
            run_dir = args.runs / f"{v}_s{seed}"
            done = read_run(run_dir)
            if done is None and not args.collect and (args.only is None or v in args.only):
                if v != "dense" and not (args.runs / f"dense_s{seed}" / "model.pt").exists():
                    raise SystemExit(
                        f"{v} seed {seed} starts from dense_s{seed}/model.pt, which does not exist "
                        "(the dense run has not finished, or its folder holds only its logs)"
                    )
                cfg = variant_config(base, v, seed, args.runs, args)
                # a run cut off between epochs continues from its last.pt instead of starting over
                cfg["resume"] = (run_dir / "last.pt").exists()
                print(f"{v} seed {seed}: {'resuming' if cfg['resume'] else 'training'} in {run_dir} ...", flush=True)
                train_yin(cfg)
                done = read_run(run_dir)
            if done is not None:
                rows[v][seed] = done
                print(
                    f"{v} seed {seed}: test {done['test_acc']:.2f} %, non-zero {100 * done['density']:.1f} %",
                    flush=True,
                )
    summary = summarise(rows, args.seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    used = sys.argv[1:] if argv is None else [str(a) for a in argv]
    payload = {"argv": used, "runs": {v: {str(s): r for s, r in by.items()} for v, by in rows.items()}}
    payload["summary"] = summary
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(args.out)
    md = table(rows, args.seeds)

    def mean_text(v: str, e: dict) -> str:
        pairs = (("minus_ctrl_mean", "control"), ("minus_dense_mean", "dense"))
        vs = [f"{e[k]:+.2f} vs {ref}" for k, ref in pairs if e.get(k) is not None]
        return f"{v} {e['mean']:.2f} %" + (f" ({', '.join(vs)})" if vs else "")

    means = ", ".join(mean_text(v, e) for v, e in summary.items() if e["mean"] is not None)
    args.out.with_suffix(".md").write_text(
        f"`python benchmarks/yin_table3.py {' '.join(used)}`\n\n{md}\n\nMeans: {means}\n"
    )
    plot(rows, args.seeds, args.out.with_suffix(".png"), args.title)
    print(md)
    print("Means:", means)
    return payload


if __name__ == "__main__":
    main()
