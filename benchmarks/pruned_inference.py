"""Dense vs pruned inference of Yin et al.'s MNIST spiking CNN, side by side and interleaved in one run.

For each case the same input batch (Bernoulli-coded MNIST test images, T steps) goes through
four versions of the pruned network, interleaved round-robin (the order rotates every repetition)
so that a change of machine load hits all of them alike:

* ``library`` -- the pruned network as trained (library layers, training LIF kernel, torch pooling);
* ``dense`` -- its inference twin ``sparse_inference_model(net, kernels="dense")``: oneDNN conv,
  MKL / event-driven linear, zeros multiplied like any weight -- the cost of the *un-pruned*
  network; forward-only LIF with the pooling fused into it (the same non-synaptic code as ``sparse``);
* ``sparse`` -- ``sparse_inference_model(net, example_input=x)``: each layer's kernel tuned on
  this input (weight-sparse register-tiled ``taps``/``csr``, event-driven ``event``/``event_vec``,
  or ``dense``);
* ``densified`` (control) -- the same network with every pruned weight set to ``1e-30`` instead
  of 0, tuned like ``sparse``: what the same kernel set achieves when nothing is pruned (same
  activity, no zero to skip). ``densified / sparse`` is the part of the speedup that comes from
  the pruning alone, as opposed to event-driven kernels that also exploit the spike sparsity.

The headline is ``speedup = dense / sparse`` (medians of process CPU time; wall-clock alongside),
checked against the target ``speedup >= FLOP reduction / 2`` (issue 6). FLOPs and SynOps are per
sample over all T steps (:func:`~sparsespike.sparsity.connectivity.count_ops`: 2 x MACs over
non-zero weights, conv taps on padding not counted).

Cases: ``--checkpoint`` files written by ``train_yin`` (``model.pt``; an L0 run's weights are
already pruned, a dense run's are magnitude-pruned to each of ``--densities``) and, without
checkpoints or with ``--synthetic``, a randomly initialised network (STBP init) magnitude-pruned
per layer to each of ``--densities``.

    python benchmarks/pruned_inference.py                                   # synthetic, ~2 min, 1 thread
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/pruned_inference.py --densities 1,0.25,0.1 \\
        --checkpoint runs/yin_small_dense/model.pt --checkpoint runs/yin_small_l0/model.pt

``--threads 2`` needs ``NUMBA_NUM_THREADS >= 2`` in the environment. Writes
``benchmarks/results/pruned_inference.json`` and ``.md`` (``--out`` to change; ``--append`` adds
the rows to an existing JSON, e.g. a 2-thread run to a 1-thread one, and rewrites the table).
"""

from __future__ import annotations

# isort: off
import sparsespike  # noqa: F401 -- before torch: its process settings (runtime.tune_openmp) apply to every method
# isort: on

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparsespike.bench import refuse_mixed_settings
from sparsespike.sparse_inference import kernel_report, sparse_inference_model
from sparsespike.sparsity.connectivity import count_ops, sparsity_report
from sparsespike.sparsity.yin_models import build_yin_network, load_yin_model

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("library", "dense", "sparse", "densified")
TINY = 1e-30  # a "pruned" weight in the densified control: non-zero, numerically irrelevant


def _weights(model: nn.Module):
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(w, nn.Parameter) and w.dim() >= 2:
            yield w


def magnitude_prune_(model: nn.Module, density: float) -> None:
    """Keep the ``density`` share of largest-|w| weights in every conv/linear layer."""
    if density >= 1.0:
        return
    for w in _weights(model):
        k = max(1, int(round(density * w.numel())))
        thr = w.detach().abs().flatten().kthvalue(w.numel() - k + 1).values
        with torch.no_grad():
            w.mul_((w.abs() >= thr).to(w.dtype))


def densify(model: nn.Module) -> nn.Module:
    """Copy of ``model`` with every zero weight replaced by ``TINY`` (no weight left to skip)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for w in _weights(m):
            w.add_((w == 0).to(w.dtype) * TINY)
    return m


def interleaved_times(fns: dict, reps: int) -> dict[str, dict[str, list[float]]]:
    """Process CPU time and wall-clock (s) of each callable, ``reps`` rounds, round-robin with a
    rotating start so that no variant always runs first/last; one warm-up call each first."""
    names = list(fns)
    for n in names:
        fns[n]()
    out = {n: {"cpu": [], "wall": []} for n in names}
    for r in range(reps):
        for i in range(len(names)):
            n = names[(r + i) % len(names)]
            c0, t0 = time.process_time(), time.perf_counter()
            fns[n]()
            out[n]["cpu"].append(time.process_time() - c0)
            out[n]["wall"].append(time.perf_counter() - t0)
    return out


def layer_activity(model: nn.Module, x: torch.Tensor) -> list[float]:
    """Share of non-zero entries in the input of every weight layer."""
    acts: list[float] = []
    hooks = [
        m.register_forward_pre_hook(lambda m, a: acts.append(float((a[0] != 0).float().mean())))
        for m in model.modules()
        if type(m).__name__ in ("Conv2d", "SpikingLinear")
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return acts


def run_case(label: str, pruned: nn.Module, x: torch.Tensor, reps: int, tune_reps: int, threads: int) -> dict:
    """Build the four variants of ``pruned`` and time them interleaved on ``x``."""
    with torch.no_grad():
        ref = pruned(x)
    models = {
        "library": pruned,
        "dense": sparse_inference_model(pruned, kernels="dense"),
        "sparse": sparse_inference_model(pruned, example_input=x, reps=tune_reps),
        "densified": sparse_inference_model(densify(pruned), example_input=x, reps=tune_reps),
    }
    with torch.no_grad():
        outs = {k: m(x) for k, m in models.items()}
        load0 = os.getloadavg()[0]
        t = interleaved_times({k: (lambda m=m: m(x)) for k, m in models.items()}, reps)
        load1 = os.getloadavg()[0]
    med = {k: {c: float(np.median(v[c])) for c in ("cpu", "wall")} for k, v in t.items()}
    ops = count_ops(pruned, x)
    rep = sparsity_report(pruned)
    fr = ops["flops_dense"] / max(1.0, ops["flops"])

    def ratio(a: str, b: str, clock: str) -> float:
        return med[a][clock] / med[b][clock]

    def paired(a: str, b: str, clock: str) -> float:  # median of the per-round ratios
        return float(np.median(np.array(t[a][clock]) / np.array(t[b][clock])))

    row = {
        "case": label,
        "threads": threads,
        "density": rep["total"]["density"],
        "layer_density": [round(r["density"], 4) for r in rep["layers"]],
        "input_activity": [round(a, 4) for a in layer_activity(pruned, x)],
        "flops_dense": ops["flops_dense"],
        "flops": ops["flops"],
        "synops": ops["synops"],
        "flop_reduction": fr,
        "target_speedup": 0.5 * fr,
        "ms": {k: {c: 1e3 * v for c, v in d.items()} for k, d in med.items()},
        "ms_min": {k: {c: 1e3 * min(v[c]) for c in ("cpu", "wall")} for k, v in t.items()},
        "speedup": ratio("dense", "sparse", "cpu"),
        "speedup_wall": ratio("dense", "sparse", "wall"),
        "speedup_paired": paired("dense", "sparse", "cpu"),
        "speedup_paired_wall": paired("dense", "sparse", "wall"),
        "speedup_vs_library": ratio("library", "sparse", "cpu"),
        "speedup_vs_library_wall": ratio("library", "sparse", "wall"),
        "pruning_only_speedup": ratio("densified", "sparse", "cpu"),
        "load_avg": [load0, load1],
        "reps": reps,
        "outputs_equal": bool(torch.equal(outs["sparse"], ref)),
        "dense_twin_equal": bool(torch.equal(outs["dense"], ref)),
        "densified_equal": bool(torch.equal(outs["densified"], ref)),
        "max_abs_diff": float((outs["sparse"] - ref).abs().max()),
        "predictions_agree": float((outs["sparse"].argmax(1) == ref.argmax(1)).float().mean()),
        "kernels": kernel_report(models["sparse"]),
        "kernels_densified": kernel_report(models["densified"]),
    }
    row["speedup_vs_target"] = row["speedup"] / row["target_speedup"]
    row["meets_target"] = bool(row["speedup"] >= row["target_speedup"] and row["speedup_wall"] >= row["target_speedup"])
    return row


def add_unpruned_reference(rows: list[dict]) -> None:
    """For magnitude series (``<name> magnitude <d>``) that include ``d = 1``: ``vs_unpruned_best`` =
    sparse-twin time of the un-pruned network / sparse-twin time of this one (both with tuned kernels,
    each at its own activity; not interleaved with each other, so only indicative)."""
    for r in rows:
        base, sep, _ = r["case"].rpartition(" magnitude ")
        ref = next(
            (q for q in rows if sep and q["case"] == f"{base} magnitude 1" and q["threads"] == r["threads"]),
            None,
        )
        if ref is not None:
            r["vs_unpruned_best"] = ref["ms"]["sparse"]["cpu"] / r["ms"]["sparse"]["cpu"]


def load_input(args) -> tuple[torch.Tensor, str]:
    if args.input is not None:
        x = torch.load(args.input, weights_only=True)
        return x, f"{args.input} ({tuple(x.shape)})"
    gen = torch.Generator().manual_seed(args.seed)
    try:
        from sparsespike.data.encoding import rate_raster
        from sparsespike.data.idx import load_mnist

        data_dir = args.data_dir or (ROOT.parent / "shared" / "data")
        imgs, _ = load_mnist(data_dir, train=False)
        x = rate_raster(imgs[: args.batch].unsqueeze(1), args.T, generator=gen)
        return x, f"MNIST test images 0..{args.batch - 1}, Bernoulli rate code (seed {args.seed})"
    except Exception as e:  # no data: random input at MNIST's mean pixel intensity
        x = (torch.rand(args.T, args.batch, 1, 28, 28, generator=gen) < 0.13).float()
        return x, f"random Bernoulli(0.13) input ({type(e).__name__}: MNIST not found)"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_table(path: Path, meta: dict, rows: list[dict]) -> str:
    lines = [
        f"# Pruned inference: {meta['network']}",
        "",
        f"Input: {meta['input']}; batch {meta['batch']}, T = {meta['T']}; torch {meta['torch']}, {meta['cpu']} "
        f"({meta['cores']} cores). {meta['timing']}",
        "",
        "FLOPs are per sample over all T steps (2 x MACs over non-zero weights; conv taps on padding not "
        "counted). **speedup** = dense / sparse twin (process CPU time, medians); target = FLOP reduction / 2. "
        "*pruning only* = densified / sparse (same kernel set with the pruned weights set to 1e-30 instead "
        "of 0: same activity, nothing to skip). *vs un-pruned, best kernels* = sparse twin of the density-1 "
        "network of the same series / this sparse twin (each at its own activity). Times in ms (CPU time; "
        "wall-clock in brackets).",
        "",
        "| case | threads | non-zero weights | FLOP reduction | target | library ms | dense ms | sparse ms | "
        "densified ms | **speedup** (wall) | speedup / target | met? | vs library | pruning only | vs un-pruned, "
        "best kernels | load | outputs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms = r["ms"]
        eq = (
            "identical"
            if r["outputs_equal"]
            else f"max diff {r['max_abs_diff']:.2g}, argmax agree {100 * r['predictions_agree']:.1f}%"
        )
        unp = f"{r['vs_unpruned_best']:.2f}x" if "vs_unpruned_best" in r else "-"
        lines.append(
            f"| {r['case']} | {r['threads']} | {100 * r['density']:.1f}% | {r['flop_reduction']:.2f}x | "
            f"{r['target_speedup']:.2f}x | {ms['library']['cpu']:.1f} ({ms['library']['wall']:.1f}) | "
            f"{ms['dense']['cpu']:.1f} ({ms['dense']['wall']:.1f}) | {ms['sparse']['cpu']:.1f} "
            f"({ms['sparse']['wall']:.1f}) | {ms['densified']['cpu']:.1f} | **{r['speedup']:.2f}x** "
            f"({r['speedup_wall']:.2f}x) | {r['speedup_vs_target']:.2f} | {'yes' if r['meets_target'] else 'no'} | "
            f"{r['speedup_vs_library']:.2f}x | {r['pruning_only_speedup']:.2f}x | "
            f"{unp} | {r['load_avg'][0]:.1f}-{r['load_avg'][1]:.1f} | {eq} |"
        )
    lines += ["", "Per-layer kernel choice (tuning times in ms of each candidate on this input; for spiking convs "
              "the whole layer: conv + LIF + pooling):", ""]  # fmt: skip
    for r in rows:
        lines.append(
            f"- **{r['case']}**, {r['threads']} thread(s) (input activity per weight layer "
            f"{', '.join(f'{100 * a:.1f}%' for a in r['input_activity'])}): "
            + "; ".join(
                f"`{k['name']}` d={100 * k['density']:.0f}% -> **{k['kernel']}** ("
                + ", ".join(f"{n} {t:.2f}" for n, t in k["timings_ms"].items())
                + ")"
                for k in r["kernels"]
            )
            + "; densified control: "
            + ", ".join(f"`{k['name']}` {k['kernel']}" for k in r["kernels_densified"])
        )
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main(argv=None) -> None:
    from sparsespike.runtime import tune_allocator

    tune_allocator()  # every method gets the same allocator (runtime.py)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", default=[], type=Path)
    ap.add_argument("--densities", default="1.0,0.5,0.25,0.1")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--T", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=15, help="interleaved rounds per case")
    ap.add_argument("--tune-reps", type=int, default=3)
    ap.add_argument("--init-gain", type=float, default=1.0)
    ap.add_argument(
        "--synthetic", action="store_true", help="also run the randomly initialised network when checkpoints are given"
    )
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--input", type=Path, default=None, help="a saved input tensor [T, B, 1, 28, 28] (torch.save)")
    ap.add_argument("--save-input", type=Path, default=None, help="save the input tensor used")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--append", action="store_true", help="add the rows to the existing JSON")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pruned_inference")
    args = ap.parse_args(argv)
    import numba

    if args.threads > numba.config.NUMBA_NUM_THREADS:
        ap.error(f"--threads {args.threads} needs NUMBA_NUM_THREADS >= {args.threads} in the environment")
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x, source = load_input(args)
    if args.save_input is not None:
        torch.save(x, args.save_input)
    densities = [float(d) for d in args.densities.split(",")]
    json_path = args.out.with_suffix(".json")
    if args.append and json_path.exists():  # checked before anything is timed
        now = {"batch": int(x.shape[1]), "T": int(x.shape[0]), "input": source}
        refuse_mixed_settings(
            json_path, json.loads(json_path.read_text())["meta"], now, "--append: write to another --out"
        )
    rows = []
    for ck in args.checkpoint:
        net, cfg = load_yin_model(ck)
        if (cfg.get("connectivity") or {}).get("l0"):
            rows.append(run_case(f"{ck.parent.name} (trained, L0-pruned)", net, x, args.reps, args.tune_reps,
                                 args.threads))  # fmt: skip
        else:
            for d in densities:
                p = copy.deepcopy(net)
                magnitude_prune_(p, d)
                rows.append(run_case(f"{ck.parent.name} (trained) magnitude {d:g}", p, x, args.reps, args.tune_reps,
                                     args.threads))  # fmt: skip
        print(f"{rows[-1]['case']}: speedup {rows[-1]['speedup']:.2f}x (target {rows[-1]['target_speedup']:.2f}x)",
              flush=True)  # fmt: skip
    if not args.checkpoint or args.synthetic:
        base = build_yin_network("mnist", init_gain=args.init_gain).eval()
        for d in densities:
            p = copy.deepcopy(base)
            magnitude_prune_(p, d)
            rows.append(run_case(f"random init, magnitude {d:g}", p, x, args.reps, args.tune_reps, args.threads))
            print(f"{rows[-1]['case']}: speedup {rows[-1]['speedup']:.2f}x", flush=True)
    add_unpruned_reference(rows)
    meta = {
        "benchmark": "pruned_inference",
        "network": "Yin MNIST SCNN 28x28-15C5-P2-40C5-P2-300-10 (same padding, avg pool)",
        "input": source,
        "batch": int(x.shape[1]),
        "T": int(x.shape[0]),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "numba": numba.__version__,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER")},
        "timing": "Full forward under no_grad; the four variants interleaved round-robin (rotating order), "
        "one warm-up call each, medians over the rounds; load = 1-min load average before/after timing.",
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    if args.append and json_path.exists():
        old = json.loads(json_path.read_text())
        rows = old["rows"] + rows
        meta["runs"] = old["meta"].get("runs", [old["meta"]]) + [meta.copy()]
    json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(write_table(args.out.with_suffix(".md"), meta, rows))


if __name__ == "__main__":
    main()
