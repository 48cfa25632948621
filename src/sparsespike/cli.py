"""Command line: ``sparsespike demo | train | evaluate | report | compare | bench | sweep | export``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib import resources
from pathlib import Path

from .errors import ConfigError, SparseSpikeError


def _builtin_config(name: str) -> Path:
    return Path(str(resources.files("sparsespike") / "experiments" / f"{name}.yaml"))


def _parse_overrides(items: list[str] | None) -> dict:
    from .config import parse_overrides

    try:
        return parse_overrides(items)
    except ConfigError as e:
        raise SystemExit(str(e)) from None


def cmd_demo(args) -> int:
    import torch

    from .config import load_config
    from .train import Trainer

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    cfg = load_config(_builtin_config("demo_yinyang"), _parse_overrides(args.set))
    out = Path(args.out or "runs/demo")
    print(f"sparsespike demo: {cfg.notes.strip()}")
    t0 = time.perf_counter()
    res = Trainer(cfg, out, args.data_dir, progress=not args.quiet).fit()
    m = res["metrics"]
    print()
    print(f"test accuracy        {100 * res['test_acc']:.2f} % (best validation epoch {res['best_epoch']})")
    print(f"spike count          {m['spike_count']:.1f} spikes / sample (<N_S> {m['ns']:.3f})")
    print(f"input spikes         {m['input_spikes']:.1f} / sample")
    print(f"SynOps               {m['synops']:.0f} / sample (dense FLOPs {m['dense_flops']:.0f})")
    print(f"energy estimate      {m['energy_pj'] / 1e3:.2f} nJ / sample (45 nm: E_AC 0.9 pJ, E_MAC 4.6 pJ)")
    print(f"training time        {res['train_time_s']:.1f} s ({time.perf_counter() - t0:.1f} s in all)")
    print(f"training curves      {res.get('curves', '(plot failed: ' + res.get('curves_error', '') + ')')}")
    print(f"run directory        {out.resolve()}")
    return 0


def _engine(path: str) -> str:
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return "time-stepped"  # load_config reports the problem with the file's name
    return raw.get("engine", "time-stepped") if isinstance(raw, dict) else "time-stepped"


def cmd_train(args) -> int:
    from .config import load_config
    from .train import Trainer

    engine = _engine(args.config)
    if engine in ("eventprop", "yin") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # every rank would train the whole run and write the same files
        raise SystemExit(
            f"sparsespike train: data-parallel training (torchrun) is for the time-stepped engine; "
            f"{args.config} is a {engine} config: run it in one process"
        )
    if engine == "eventprop":
        from .eventprop.train import load_config as ep_config
        from .eventprop.train import train_eventprop

        ov = dict(_parse_overrides(args.set))
        if args.seed is not None:
            ov["seed"] = args.seed
        if args.data_dir:
            ov["data_dir"] = args.data_dir
        if args.quiet:
            ov["progress"] = False
        cfg = ep_config(args.config, **ov)
        # as for time-stepped runs: runs/<name>_seed<seed> unless --out or the config says otherwise
        cfg.out_dir = args.out or cfg.out_dir or str(Path("runs") / f"{cfg.name}_seed{cfg.seed}")
        res = train_eventprop(cfg, resume=args.resume)
        fin = res.get("final", {})
        split = "test" if "test" in fin else "val"
        m = fin.get(split, {})
        summary = {
            f"{split}_accuracy": m.get("accuracy"),
            f"{split}_ce": m.get("loss_ce"),
            "n_s": m.get("n_s"),
            "n_s_per_layer": m.get("n_s_per_layer"),
            "silent_neurons_per_layer": m.get("silent_neurons_per_layer"),
            "out_dir": cfg.out_dir,
        }
        if "best_val" in fin:  # the last phase's best-validation epoch
            bv = fin["best_val"]
            summary["best_val"] = {"epoch": bv.get("epoch"), f"{split}_accuracy": bv.get(split, {}).get("accuracy")}
        print(json.dumps(summary, indent=1, default=str))
        return 0
    if engine == "yin":
        from .sparsity.yin_models import load_config as yin_config
        from .sparsity.yin_models import train_yin

        raw = yin_config(args.config, args.set or (), args.data_dir)
        if args.seed is not None:
            raw["seed"] = args.seed
        raw["out_dir"] = args.out or str(Path("runs") / f"{raw.get('name', 'yin')}_seed{raw.get('seed', 0)}")
        if args.resume:
            raw["resume"] = True
        if args.quiet:
            raw["progress"] = False
        res = train_yin(raw)
        keys = ("test_acc", "test_acc_pruned", "flops_ratio", "train_time_s")
        print(json.dumps({k: res[k] for k in keys if k in res}))
        return 0
    if engine != "time-stepped":
        raise SystemExit(f"{args.config}: unknown engine {engine!r} (time-stepped, eventprop or yin)")
    ov = _parse_overrides(args.set)
    if args.seed is not None:
        ov["seed"] = args.seed
    cfg = load_config(args.config, ov)
    out = Path(args.out or Path("runs") / f"{cfg.name}_seed{cfg.seed}")
    tr = Trainer(cfg, out, args.data_dir, resume=args.resume, progress=not args.quiet)
    res = tr.fit()
    if tr.rank != 0:
        return 0
    m = res["metrics"]
    print(
        f"[{cfg.name}] test accuracy {100 * res['test_acc']:.2f} % | spikes/sample {m['spike_count']:.1f} | "
        f"SynOps {m['synops']:.4g} | dense FLOPs {m['dense_flops']:.4g} | results in {out}"
    )
    return 0


def cmd_evaluate(args) -> int:
    """Accuracy and metrics of a run's best (or last) checkpoint on its test split (or on its
    validation or training split: the training accuracy with the test-time gates and encoder
    tells under-fitting from over-fitting), e.g. of an interrupted run."""
    import torch

    from .train import load_run

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    run = Path(args.run)
    from .train import run_engine

    engine = run_engine(run)
    if engine == "yin":
        return _evaluate_yin(run, _run_json(run), args)
    if engine == "eventprop":
        raise SystemExit(
            f"{run} is an EventProp run: it was tested at the end of training (and on validation every "
            f"epoch); its figures are in run.json: `sparsespike report {run}`"
        )
    tr, state, ck = load_run(run, args.data_dir, args.last)
    cfg = tr.cfg
    split = getattr(tr.data, args.split)
    if args.limit is not None:
        split = split.subset(torch.arange(min(args.limit, len(split))))
    res = tr.evaluate(split, metrics=True)
    epochs = len((run / "metrics.jsonl").read_text().splitlines()) if (run / "metrics.jsonl").exists() else None
    out = {
        "name": cfg.name,
        "seed": cfg.seed,
        "checkpoint": ck.name,
        "checkpoint_epoch": state.get("epoch", state.get("global_epoch")),  # best.pt / last.pt
        "epochs_logged": epochs,
        "split": args.split,
        "samples": len(split),
        "acc": res["acc"],
        "loss": res["loss"],
        "metrics": res["metrics"],
    }
    if args.split == "test":
        out["test_acc"] = res["acc"]
    # the whole test split keeps its old file name; other splits and --limit get their own
    n = "" if args.limit is None else len(split)
    part = "" if args.split == "test" and args.limit is None else f"_{args.split}{n}"
    dest = run / f"evaluate_{ck.stem}{part}.json"
    dest.write_text(json.dumps(out, indent=2))
    m = res["metrics"]
    print(
        f"[{cfg.name}] {ck.name} (epoch {state.get('epoch', state.get('global_epoch'))}, {epochs} epochs logged): "
        f"{args.split} accuracy "
        f"{100 * res['acc']:.2f} % (loss {res['loss']:.4f}, {len(split)} samples) | spikes/sample "
        f"{m['spike_count']:.1f} | SynOps {m['synops']:.4g} -> {dest}"
    )
    return 0


def _run_file(run: Path, name: str) -> dict:
    """``run/name`` read as JSON: ``{}`` when absent, a :class:`SystemExit` naming it when corrupt."""
    p = run / name
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"{p} is not valid JSON ({e})") from None


def _run_json(run: Path) -> dict:
    return _run_file(run, "run.json")


def _results_json(run: Path) -> dict:
    return _run_file(run, "results.json")


def _log(run: Path) -> list[dict]:
    """The per-epoch records of ``metrics.jsonl``; a cut-off last line (a crash mid-append) is
    skipped with a note, a corrupt line elsewhere is an error naming it."""
    p = run / "metrics.jsonl"
    if not p.exists():
        return []
    lines = [(i, s) for i, s in enumerate(p.read_text().splitlines(), 1) if s.strip()]
    out = []
    for j, (i, s) in enumerate(lines):
        try:
            out.append(json.loads(s))
        except json.JSONDecodeError as e:
            if j == len(lines) - 1:
                print(f"note: {p}:{i} is cut off (skipped)", file=sys.stderr)
                break
            raise SystemExit(f"{p}:{i} is not valid JSON ({e})") from None
    return out


def finished_engine(run: Path) -> str:
    """The engine of a *finished* run folder (:func:`sparsespike.train.run_engine`), or a
    :class:`SystemExit` naming the folder: time-stepped runs finish with ``results.json``, Yin runs
    with results in ``run.json``, EventProp runs with ``final`` there."""
    from .train import run_engine

    if not run.is_dir():
        raise SystemExit(f"{run}: no such run folder")
    engine = run_engine(run)
    if engine == "time-stepped" and not (run / "results.json").exists():
        engine = None
    if engine is None:
        raise SystemExit(
            f"no finished run in {run}: no results.json (time-stepped runs), and no run.json with results "
            "(Yin runs) or final (EventProp runs); unfinished? `sparsespike train ... --resume` continues it"
        )
    return engine


def _evaluate_yin(run: Path, info: dict, args) -> int:
    """``evaluate`` for a Yin run: its pruned ``model.pt`` (no best/last choice: Yin runs test the
    final network) on the test or training split."""
    from .sparsity.yin_models import evaluate_model_pt

    if args.last:
        raise SystemExit("--last: a Yin run keeps one network, model.pt (the final, pruned one)")
    res = evaluate_model_pt(run / "model.pt", args.split, args.data_dir, args.limit)
    cfg = info.get("config") or {}
    out = {
        "name": cfg.get("name", run.name),
        "seed": cfg.get("seed"),
        "checkpoint": "model.pt",
        "epochs_logged": len(_log(run)),
        "split": args.split,
        "samples": res["samples"],
        "acc": res["acc"],
    }
    if args.split == "test":
        out["test_acc"] = res["acc"]
    n = "" if args.limit is None else res["samples"]
    part = "" if args.split == "test" and args.limit is None else f"_{args.split}{n}"
    dest = run / f"evaluate_model{part}.json"
    dest.write_text(json.dumps(out, indent=2))
    print(
        f"[{out['name']}] model.pt: {args.split} accuracy {100 * res['acc']:.2f} % ({res['samples']} samples) -> {dest}"
    )
    return 0


def cmd_report(args) -> int:
    run = Path(args.run)
    engine = finished_engine(run)
    if engine != "time-stepped":
        w = _run_row(run)
        print(f"# {w['name']} (seed {w['seed']}, {engine} engine)\n")
        acc, last = w["val_acc"] if w.get("val_acc") else (w["acc"], w["acc_last"])
        what = "validation accuracy (no test run)" if w.get("val_acc") else "test accuracy"
        sel = "" if acc == last else f" (at the best-validation epoch: {100 * acc:.2f} %)"
        print(f"{what} {100 * last:.2f} %{sel} after {w['epochs']} epochs, training {w['train_s']:.0f} s\n")
        for k, v in w["extra"].items():
            print(f"- {k}: {v}")
        return 0
    res = _results_json(run)
    from .metrics import MetricsReport

    print(f"# {res.get('name', run.name)} (seed {res.get('seed')})\n")
    print(f"test accuracy {100 * res['test_acc']:.2f} %, best validation epoch {res.get('best_epoch')}\n")
    if res.get("metrics"):
        print(MetricsReport(**res["metrics"]).table())
    else:  # e.g. a sweep trial, which records accuracy and SynOps per epoch in epochs.jsonl instead
        print(f"(no energy metrics in {run / 'results.json'}: spikes, SynOps and energy were not measured)")
    return 0


def _yin_row(run: Path, info: dict) -> dict:
    """A Yin run (``train_yin``): accuracy after ``prune``, FLOPs and SynOps from ``count_ops``."""
    cfg, res, log = info.get("config", {}), info["results"], _log(run)
    conn = cfg.get("connectivity") or {}
    ops = res.get("ops") or {}
    nan = float("nan")
    ep_t = [r["train_time_s"] for r in log if "train_time_s" in r]
    dens = (res.get("sparsity") or {}).get("total", {}).get("density")
    return {
        "name": cfg.get("name", run.name),
        "seed": info.get("seed", cfg.get("seed")),
        "dir": run.name,
        "backward": "dense",
        "gates": "L0" if conn.get("l0") else "-",
        "regs": f"{conn.get('penalty', 'l0')} {conn.get('lam')}" if conn.get("l0") else "-",
        "epochs": len(log),
        "acc": res["test_acc_pruned"] / 100,  # train_yin reports percent
        "acc_last": res["test_acc_pruned"] / 100,  # no validation split: the final network is the one tested
        "spikes": nan,
        "synops": ops.get("synops", nan),
        "flops": ops.get("flops", nan),
        "energy_nj": nan,
        "epoch_s": (sum(ep_t) / len(ep_t)) if ep_t else nan,
        "train_s": res.get("train_time_s", nan),
        "act": "-",
        "extra": {
            "non-zero weights": f"{100 * dens:.1f} %" if dens is not None else "-",
            "dense FLOPs / sample": f"{ops.get('flops', nan):.4g} of {ops.get('flops_dense', nan):.4g} "
            f"({res.get('flops_ratio', nan):.3f}x)",
            "SynOps / sample": f"{ops.get('synops', nan):,.0f}",
        },
    }


def _eventprop_row(run: Path, info: dict) -> dict:
    """An EventProp run: first-spike accuracy, spikes and <N_S> on the test split."""
    cfg, log = info.get("config", {}), _log(run)
    final = info["final"] or {}
    # a run with eval_test: false has validation figures only: shown as such, never as "test"
    split = "test" if final.get("test") else "validation"
    test = final.get("test") or final.get("val") or {}
    bv = final.get("best_val") or {}
    sel = bv.get("test") or bv.get("val") or test  # the last phase's best-validation epoch
    timing = info.get("timing") or {}
    nan = float("nan")
    return {
        "name": cfg.get("name", run.name),
        "seed": cfg.get("seed"),
        "dir": run.name,
        "backward": "EventProp",
        "gates": "-",
        "regs": " -> ".join(str(p.get("loss")) for p in cfg.get("phases") or []) or "-",
        "epochs": len(log),
        "acc": sel.get("accuracy", nan) if split == "test" else nan,
        "acc_last": test.get("accuracy", nan) if split == "test" else nan,
        "acc_split": split,
        "val_acc": (sel.get("accuracy", nan), test.get("accuracy", nan)) if split != "test" else None,
        "spikes": test.get("spikes_per_sample", nan),
        "synops": nan,
        "flops": nan,
        "energy_nj": nan,
        "epoch_s": timing.get("train_s_per_epoch", nan),
        "train_s": timing.get("train_s", nan),
        "act": "-",
        "extra": {
            "<N_S> overall / per layer": f"{test.get('n_s', nan):.3f} / "
            + ", ".join(f"{v:.3f}" for v in test.get("n_s_per_layer", [])),
            "silent neurons per layer": ", ".join(str(v) for v in test.get("silent_neurons_per_layer", [])),
            "first output spike (ms)": f"{test.get('latency_ms', nan):.2f}",
            f"{split} samples": test.get("n_samples", "-"),
        },
    }


def _run_row(run: Path) -> dict:
    """What :func:`compare_runs` shows of one finished run directory, of any engine (metrics an
    engine does not record are NaN, shown as ``nan``)."""
    engine = finished_engine(run)
    if engine == "yin":
        return _yin_row(run, _run_json(run))
    if engine == "eventprop":
        return _eventprop_row(run, _run_json(run))
    res = _results_json(run)
    cfg = _run_json(run).get("config", {})
    log = _log(run)
    ep_t = [r["epoch_time_s"] for r in log if "epoch_time_s" in r]
    acts: dict[str, list[float]] = {}
    for r in log:
        for k, v in (r.get("activity_pct") or {}).items():
            acts.setdefault(k, []).append(v)
    m = res.get("metrics") or res.get("metrics_last") or {}
    model = cfg.get("model", {})
    regs = [r.get("name", "?") for r in (cfg.get("train", {}).get("regularizers") or [])]
    nan = float("nan")
    return {
        "name": res["name"],
        "dir": run.name,
        "backward": model.get("backward", "-"),
        "gates": "L0" if model.get("gates") else "-",
        "regs": ", ".join(regs) or "-",
        "epochs": res.get("epochs", len(log)),
        "acc": res.get("test_acc", res.get("test_acc_last", nan)),
        "acc_last": res.get("test_acc_last", nan),
        "spikes": m.get("spike_count", nan),
        "synops": m.get("synops", nan),
        "flops": m.get("dense_flops", nan),
        "energy_nj": m.get("energy_pj", nan) / 1e3,
        "epoch_s": (sum(ep_t) / len(ep_t)) if ep_t else nan,
        "train_s": res.get("train_time_s", nan),
        "act": " / ".join(f"{sum(v) / len(v):.2f}" for v in acts.values()) or "-",
    }


def compare_runs(runs: list[Path]) -> str:
    """Markdown table of finished runs side by side: test accuracy, spikes, SynOps, dense FLOPs,
    energy estimate, epoch and training time, activity; ratios (SynOps and FLOPs "x fewer", epoch
    time "x faster") are against the first run."""
    head = (
        "| run | backward | gates | regularizers | epochs | test acc. (best val) | test acc. (last) | "
        "spikes / sample | SynOps / sample | dense FLOPs / sample | energy nJ / sample | mean epoch s | train s | "
        "mean activity % per layer |"
    )
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    rows = [_run_row(r) for r in runs]
    ref = rows[0] if rows else {}

    def rel(v: float, key: str, fewer: bool) -> str:
        r = ref.get(key, float("nan"))
        if not rows or v != v or r != r or v <= 0 or len(rows) == 1:
            return ""
        if r >= v:
            return f" ({r / v:.1f}x {'fewer' if fewer else 'faster'})"
        return f" ({v / r:.1f}x {'more' if fewer else 'slower'})" if r > 0 else ""

    def label(w: dict) -> str:  # the run folder's name too when it is not the config's name
        return w["name"] if w["dir"] == w["name"] else f"{w['name']} ({w['dir']})"

    for w in rows:
        lines.append(
            f"| {label(w)} | {w['backward']} | {w['gates']} | {w['regs']} | {w['epochs']} | "
            f"{100 * w['acc']:.2f} % | {100 * w['acc_last']:.2f} % | {w['spikes']:.1f} | "
            f"{w['synops']:,.0f}{rel(w['synops'], 'synops', True)} | "
            f"{w['flops']:.3g}{rel(w['flops'], 'flops', True)} | "
            f"{w['energy_nj']:.1f} | {w['epoch_s']:.1f}{rel(w['epoch_s'], 'epoch_s', False)} | {w['train_s']:.0f} | "
            f"{w['act']} |"
        )
    return "\n".join(lines)


def cmd_compare(args) -> int:
    runs = [Path(r) for r in args.runs]
    print(compare_runs(runs))
    if args.plot:
        from .plots import plot_tradeoff

        rows = [_run_row(r) for r in runs]
        missing = [w["dir"] for w in rows if w["synops"] != w["synops"]]
        if missing:
            raise SystemExit(f"--plot: no SynOps recorded for {', '.join(missing)} (EventProp runs count spikes only)")
        pts = [(w["dir"], w["synops"], w["acc"]) for w in rows]
        print(f"\nplot: {plot_tradeoff(pts, args.plot, title=args.title or 'accuracy against SynOps')}")
    return 0


BENCHES = {
    "peers": "bptt_vs_peers.py",
    "sparse-backward": "sparse_backward.py",
    "eventprop": "eventprop_bench.py",
    "pruned-inference": "pruned_inference.py",
    "grad-cosine": None,  # sparsespike.bench.grad_fidelity (installed module)
}


def cmd_bench(args) -> int:
    """Run a benchmark script of ``benchmarks/`` (in a clone of the repository) with its own flags."""
    import runpy

    if args.which == "peers":
        from .bench import peers

        return peers.main(args.rest or [])
    if args.which == "grad-cosine":
        from .bench import grad_fidelity

        return grad_fidelity.main(args.rest or [])
    script = Path(__file__).resolve().parents[2] / "benchmarks" / BENCHES[args.which]
    if not script.exists():
        raise SystemExit(f"benchmark script {script} not found: benchmarks run from a clone of the repository")
    old = sys.argv
    sys.argv = [str(script), *(args.rest or [])]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        if isinstance(e.code, str):  # a script's refusal: its message, not a ValueError from int()
            print(e.code, file=sys.stderr)
            return 1
        return int(e.code or 0)
    finally:
        sys.argv = old
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="sparsespike", description=__doc__)
    p.add_argument("--version", action="version", version=f"sparsespike {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="train a small SNN on Yin-Yang (< 2 min) and print a report")
    d.add_argument("--out", help="run directory (default runs/demo)")
    d.add_argument("--data-dir", help="data root (default $SPARSESPIKE_DATA or ~/.cache/sparsespike)")
    d.add_argument("--threads", type=int)
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="run a configured experiment (YAML)")
    t.add_argument("config", help="experiment YAML file (the shipped ones are in experiments/)")
    t.add_argument("--data-dir", help="data root (default $SPARSESPIKE_DATA or ~/.cache/sparsespike)")
    t.add_argument("--out", help="run directory (default runs/<name>_seed<seed>)")
    t.add_argument("--seed", type=int, help="override the config's seed")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (dotted)")
    t.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="test accuracy and metrics of a run's best checkpoint")
    ev.add_argument("run")
    ev.add_argument("--data-dir")
    ev.add_argument("--last", action="store_true", help="use last.pt instead of best.pt")
    ev.add_argument(
        "--split",
        choices=("test", "val", "train"),
        default="test",
        help="split to evaluate (train: training accuracy with the test-time gates, no augmentation)",
    )
    ev.add_argument("--limit", type=int, help="only the first N samples of the split")
    ev.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("report", help="print the metrics table of a finished run")
    r.add_argument("run")
    r.set_defaults(func=cmd_report)

    c = sub.add_parser("compare", help="finished runs side by side as a markdown table")
    c.add_argument("runs", nargs="+")
    c.add_argument("--plot", metavar="PNG", help="also draw test accuracy against SynOps, the first run as baseline")
    c.add_argument("--title", default="", help="title of the --plot figure")
    c.set_defaults(func=cmd_compare)

    b = sub.add_parser("bench", help="benchmarks: peers | sparse-backward | grad-cosine | eventprop | pruned-inference")
    b.add_argument("which", choices=sorted(BENCHES))
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench)

    from .sweep import add_sweep_parser

    add_sweep_parser(sub)

    from .export import add_export_parser  # light: torch is imported only when it runs

    add_export_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .runtime import tune_allocator

    tune_allocator()  # keep large freed blocks for the next batch (runtime.py)
    try:
        return args.func(args)
    except SparseSpikeError as e:
        print(f"sparsespike: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
