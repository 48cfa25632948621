"""Dense vs pruned inference of Yin et al.'s MNIST spiking CNN, side by side in one run.

For each case the same input batch (Bernoulli-coded MNIST test images, T steps) goes through
the pruned network three ways:

* ``library model`` -- as trained (library layers and their training LIF kernel);
* ``dense kernels`` -- its inference twin ``sparse_inference_model(net, kernels="dense")``:
  forward-only LIF kernel, oneDNN conv / MKL or event-driven linear, zeros multiplied like any
  weight -- the cost of the *un-pruned* network;
* ``sparse kernels`` -- ``sparse_inference_model(net, example_input=x)``: the same twin with each
  layer's kernel tuned on this input.

The headline speedup is dense kernels / sparse kernels: same network, same activity, same LIF
kernel, only the synaptic kernels differ. "synaptic layers only" is the same ratio for the sum
of the conv/linear layers alone (from the tuning times), i.e. without the fixed cost of the LIF
recurrence and pooling.

Cases: ``--checkpoint`` files written by ``train_yin`` (``model.pt``: a trained network; an L0
run's weights are already pruned, a dense run's are magnitude-pruned to ``--densities``), and
without checkpoints a randomly initialised network (STBP init, ``--init-gain``) magnitude-pruned
per layer to each of ``--densities``. Reported per case: dense FLOPs, FLOPs over non-zero
weights, SynOps (per sample, all T steps; :func:`~sparsespike.sparsity.connectivity.count_ops`),
wall-clock (best of ``--reps``), speedups, agreement of the outputs, and per-layer kernel choice.

    python benchmarks/pruned_inference.py                       # synthetic, ~2 min on 1 thread
    python benchmarks/pruned_inference.py --synthetic --densities 1,0.25,0.1 \
        --checkpoint runs/yin_small_dense/model.pt --checkpoint runs/yin_small_l0/model.pt

Writes ``benchmarks/results/pruned_inference.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from sparsespike.sparse_inference import kernel_report, sparse_inference_model
from sparsespike.sparsity.connectivity import count_ops, sparsity_report
from sparsespike.sparsity.yin_models import build_network, build_yin_network, parse_structure, yin_neuron

ROOT = Path(__file__).resolve().parents[1]


def magnitude_prune_(model: nn.Module, density: float) -> None:
    """Keep the ``density`` share of largest-|w| weights in every conv/linear layer."""
    if density >= 1.0:
        return
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(w, nn.Parameter) and w.dim() >= 2:
            k = max(1, int(round(density * w.numel())))
            thr = w.detach().abs().flatten().kthvalue(w.numel() - k + 1).values
            with torch.no_grad():
                w.mul_((w.abs() >= thr).to(w.dtype))


def load_checkpoint(path: Path) -> tuple[nn.Module, dict]:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    cfg = ck["config"]
    mcfg = cfg.get("model", {})
    ncfg = mcfg.get("neuron", {})
    neuron = yin_neuron(
        float(ncfg.get("k_tau", 0.1)),
        float(ncfg.get("threshold", 0.5)),
        float(ncfg.get("delta", 1.0)),
        ncfg.get("surrogate_height"),
        bool(ncfg.get("detach_reset", False)),
    )
    if "layers" in mcfg:
        shape, layers = tuple(mcfg["input_shape"]), mcfg["layers"]
    else:
        shape, layers = parse_structure(mcfg.get("structure") or "28x28-15C5-P2-40C5-P2-300-10")
    net = build_network(
        shape,
        layers,
        neuron,
        padding=mcfg.get("padding", "same"),
        pool=mcfg.get("pool", "avg"),
        bias=mcfg.get("bias", True),
    )
    net.load_state_dict(ck["state_dict"])
    return net.eval(), cfg


def best_time(fn, reps: int) -> tuple[float, float]:
    """Best-of-``reps`` (process CPU time, wall-clock) after one warm-up call.

    CPU time is the headline: the machines these runs share are loaded by other jobs, which
    inflates wall-clock at random; with one thread the two agree on an idle machine.
    """
    fn()
    cpu, wall = [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return min(cpu), min(wall)


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


def run_case(label: str, pruned: nn.Module, x: torch.Tensor, reps: int) -> dict:
    """Time the pruned network three ways on ``x``: as a library model, and as its inference
    twin with dense kernels and with tuned sparse kernels (same LIF kernel, same activity)."""
    with torch.no_grad():
        ref = pruned(x)
    dense = sparse_inference_model(pruned, kernels="dense")
    fast = sparse_inference_model(pruned, example_input=x)
    with torch.no_grad():
        out = fast(x)
        out_dense = dense(x)
        (t_lib, w_lib), (t_dense, w_dense), (t_sp, w_sp) = (
            best_time(lambda: pruned(x), reps),
            best_time(lambda: dense(x), reps),
            best_time(lambda: fast(x), reps),
        )
    ops = count_ops(pruned, x)
    rep = sparsity_report(pruned)
    row = {
        "case": label,
        "density": rep["total"]["density"],
        "layer_density": [round(r["density"], 4) for r in rep["layers"]],
        "input_activity": [round(a, 4) for a in layer_activity(pruned, x)],
        "flops_dense": ops["flops_dense"],
        "flops": ops["flops"],
        "synops": ops["synops"],
        "flop_reduction": ops["flops_dense"] / max(1.0, ops["flops"]),
        "t_library_ms": 1e3 * t_lib,
        "t_dense_kernels_ms": 1e3 * t_dense,
        "t_sparse_kernels_ms": 1e3 * t_sp,
        "speedup": t_dense / t_sp,
        "speedup_vs_library": t_lib / t_sp,
        "wall_library_ms": 1e3 * w_lib,
        "wall_dense_kernels_ms": 1e3 * w_dense,
        "wall_sparse_kernels_ms": 1e3 * w_sp,
        "wall_speedup": w_dense / w_sp,
        "outputs_equal": bool(torch.equal(out, ref)),
        "dense_twin_equal": bool(torch.equal(out_dense, ref)),
        "max_abs_diff": float((out - ref).abs().max()),
        "predictions_agree": float((out.argmax(1) == ref.argmax(1)).float().mean()),
        "synaptic_ms_dense": sum(min(k["timings_ms"].get("dense", 0.0), 1e9) for k in kernel_report(fast)),
        "synaptic_ms_sparse": sum(k["timings_ms"].get(k["kernel"], 0.0) for k in kernel_report(fast)),
        "kernels": kernel_report(fast),
    }
    row["speedup_vs_target"] = row["speedup"] / (0.5 * row["flop_reduction"])
    row["synaptic_speedup"] = row["synaptic_ms_dense"] / max(1e-9, row["synaptic_ms_sparse"])
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", default=[], type=Path)
    ap.add_argument("--densities", default="1.0,0.5,0.25,0.1")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--T", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--init-gain", type=float, default=1.0)
    ap.add_argument(
        "--synthetic", action="store_true", help="also run the randomly initialised network when checkpoints are given"
    )
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pruned_inference")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import numba

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    try:
        from sparsespike.data.encoding import rate_raster
        from sparsespike.data.idx import load_mnist

        data_dir = args.data_dir or (ROOT.parent / "shared" / "data")
        imgs, _ = load_mnist(data_dir, train=False)
        x = rate_raster(imgs[: args.batch].unsqueeze(1), args.T, generator=gen)
        source = f"MNIST test images 0..{args.batch - 1}, Bernoulli rate code"
    except Exception as e:  # no data: random input at MNIST's mean pixel intensity
        x = (torch.rand(args.T, args.batch, 1, 28, 28, generator=gen) < 0.13).float()
        source = f"random Bernoulli(0.13) input ({type(e).__name__}: MNIST not found)"
    densities = [float(d) for d in args.densities.split(",")]
    rows = []
    for ck in args.checkpoint:
        net, cfg = load_checkpoint(ck)
        if (cfg.get("connectivity") or {}).get("l0"):
            rows.append(run_case(f"{ck.parent.name} (trained, L0-pruned)", net, x, args.reps))
        else:
            for d in densities:
                p = copy.deepcopy(net)
                magnitude_prune_(p, d)
                rows.append(run_case(f"{ck.parent.name} (trained) magnitude {d:g}", p, x, args.reps))
    if not args.checkpoint or args.synthetic:
        base = build_yin_network("mnist", init_gain=args.init_gain).eval()
        for d in densities:
            p = copy.deepcopy(base)
            magnitude_prune_(p, d)
            rows.append(run_case(f"random init, magnitude {d:g}", p, x, args.reps))
    meta = {
        "benchmark": "pruned_inference",
        "network": "Yin MNIST SCNN 28x28-15C5-P2-40C5-P2-300-10 (same padding, avg pool)",
        "input": source,
        "batch": args.batch,
        "T": args.T,
        "threads": args.threads,
        "reps": args.reps,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "timing": "best of reps of process CPU time (wall-clock in the JSON), full forward under "
        "no_grad, after one warm-up call",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        f"# Pruned inference: {meta['network']}",
        "",
        f"Input: {source}; batch {args.batch}, T = {args.T}; {args.threads} thread(s); "
        f"{meta['timing']}; torch {torch.__version__}, {meta['cpu']}.",
        "FLOPs and SynOps are per sample over all T steps (2 x MACs over non-zero weights; "
        "conv taps on padding not counted).",
        "",
        "| case | non-zero weights | MFLOPs dense | MFLOPs pruned | FLOP reduction | MSynOps | "
        "library model ms | dense kernels ms | sparse kernels ms | **speedup** | speedup / (FLOP red./2) | "
        "synaptic layers only | wall speedup | outputs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        eq = (
            "identical"
            if r["outputs_equal"]
            else (f"max diff {r['max_abs_diff']:.2g}, argmax agree {100 * r['predictions_agree']:.1f}%")
        )
        lines.append(
            f"| {r['case']} | {100 * r['density']:.1f}% | {r['flops_dense'] / 1e6:.2f} | "
            f"{r['flops'] / 1e6:.2f} | {r['flop_reduction']:.2f}x | {r['synops'] / 1e6:.3f} | "
            f"{r['t_library_ms']:.1f} | {r['t_dense_kernels_ms']:.1f} | {r['t_sparse_kernels_ms']:.1f} | "
            f"**{r['speedup']:.2f}x** | {r['speedup_vs_target']:.2f} | {r['synaptic_speedup']:.2f}x | "
            f"{r['wall_speedup']:.2f}x | {eq} |"
        )
    lines += ["", "Per-layer kernel choice (tuning time in ms for each candidate on this input):", ""]
    for r in rows:
        lines.append(
            f"- **{r['case']}** (input activity per weight layer "
            f"{', '.join(f'{100 * a:.1f}%' for a in r['input_activity'])}): "
            + "; ".join(
                f"`{k['name']}` d={100 * k['density']:.0f}% -> **{k['kernel']}** ("
                + ", ".join(f"{n} {t:.2f}" for n, t in k["timings_ms"].items())
                + ")"
                for k in r["kernels"]
            )
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
