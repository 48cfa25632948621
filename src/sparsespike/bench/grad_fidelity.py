"""How close the sparse backward's weight gradients are to the dense ones (issue 3).

Perez-Nieves & Goodman (2021, sec. 3.2 and Fig. 3B) keep the surrogate only inside the active
window ``|V - thr| < B_th`` (eq. 8), so the sparse weight gradient (eqs. 9-10) differs from the
dense BPTT gradient by the terms of the inactive entries. This module measures that difference as
the cosine similarity between the two gradients of every weight, on the same batch and the same
forward spikes (the forward pass is identical in both modes).

CLI: ``sparsespike bench grad-cosine RUN_DIR [--batches 10]`` loads a finished run's best
checkpoint and writes ``grad_cosine.json`` into the run directory.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from ..layers import set_backward, spiking_layers


def _grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def gradient_cosine(
    model: nn.Module,
    data: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
    b_th: float | None = None,
) -> dict[str, dict[str, float]]:
    """Cosine similarity of sparse vs dense gradients, per parameter, over batches ``(x, y)``.

    Gradients are summed over the batches before the cosine is taken (what an epoch of SGD sees);
    the per-batch mean and minimum are reported too. The model's backward modes are restored.

    Returns ``{param: {"cosine": c, "batch_mean": m, "batch_min": lo, "norm_ratio": |g_s|/|g_d|}}``.
    """
    layers = spiking_layers(model)
    if not layers:
        raise ValueError("gradient_cosine needs a model with sparsespike spiking layers")
    saved = [(m.backward, m.b_th) for m in layers]
    tot_d: dict[str, torch.Tensor] = {}
    tot_s: dict[str, torch.Tensor] = {}
    per_batch: dict[str, list[float]] = {}
    was_training = model.training
    model.train()
    try:
        for x, y in data:
            # both passes must see the same random draws (L0 gate noise, dropout): the RNG states
            # before the dense pass are restored before the sparse one
            rng = _rng_states(model)
            set_backward(model, "dense")
            gd = _grads(model, x, y, loss_fn)
            _set_rng_states(model, rng)
            for m, (_, bt) in zip(layers, saved, strict=True):
                m.backward, m.b_th = "sparse", float(b_th if b_th is not None else bt)
            gs = _grads(model, x, y, loss_fn)
            for n, g in gd.items():
                tot_d[n] = tot_d.get(n, 0) + g
                tot_s[n] = tot_s.get(n, 0) + gs[n]
                per_batch.setdefault(n, []).append(_cos(gs[n], g))
    finally:
        for m, (bw, bt) in zip(layers, saved, strict=True):
            m.backward, m.b_th = bw, bt
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {
        n: {
            "cosine": _cos(tot_s[n], tot_d[n]),
            "batch_mean": sum(per_batch[n]) / len(per_batch[n]),
            "batch_min": min(per_batch[n]),
            "norm_ratio": float(tot_s[n].norm() / tot_d[n].norm().clamp_min(1e-30)),
        }
        for n in tot_d
    }


def _rng_states(model: nn.Module) -> tuple:
    from ..sparsity.connectivity import gate_generators

    return torch.get_rng_state(), [(g, g.get_state()) for g in gate_generators(model)]


def _set_rng_states(model: nn.Module, states: tuple) -> None:
    torch.set_rng_state(states[0])
    for g, s in states[1]:
        g.set_state(s)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    den = a.norm() * b.norm()
    return float(a @ b / den) if den > 0 else float("nan")


def main(argv: list[str] | None = None) -> int:
    from ..pipeline import batches
    from ..train import load_run, task_loss

    ap = argparse.ArgumentParser(prog="sparsespike bench grad-cosine", description=__doc__)
    ap.add_argument("run", help="run directory with run.json and best.pt")
    ap.add_argument("--data-dir")
    ap.add_argument("--batches", type=int, default=10, help="test batches to average over")
    ap.add_argument("--b-th", type=float, help="active-window half-width (default: the run's)")
    ap.add_argument("--last", action="store_true", help="use last.pt")
    a = ap.parse_args(argv)
    run = Path(a.run)
    from ..train import run_engine

    engine = run_engine(run)
    if engine in ("yin", "eventprop"):
        raise SystemExit(
            f"grad-cosine compares the time-stepped engine's sparse and dense backward passes; "
            f"{run} is {dict(yin='a Yin', eventprop='an EventProp')[engine]} run"
        )
    tr, _, ck = load_run(run, a.data_dir, a.last)
    cfg = tr.cfg
    gen = torch.Generator().manual_seed(0)
    data = []
    for i, (xb, yb) in enumerate(batches(tr.data.test, cfg.data.batch_size)):
        if i >= a.batches:
            break
        data.append((tr.data.encode(xb, gen), yb))
    loss_fn = task_loss(cfg.train.loss)
    res = gradient_cosine(tr.model, data, loss_fn, a.b_th)
    b_th = a.b_th if a.b_th is not None else cfg.model.b_th
    out = {
        "run": str(run),
        "checkpoint": ck.name,
        "b_th": b_th,
        "batches": len(data),
        "batch_size": cfg.data.batch_size,
        "params": res,
    }
    (run / "grad_cosine.json").write_text(json.dumps(out, indent=2))
    print(f"[{cfg.name}] sparse vs dense weight gradients, B_th half-width {b_th}, {len(data)} test batches")
    print("| parameter | cosine (summed) | per-batch mean | per-batch min | norm sparse/dense |")
    print("|---|---:|---:|---:|---:|")
    for n, r in res.items():
        print(f"| {n} | {r['cosine']:.4f} | {r['batch_mean']:.4f} | {r['batch_min']:.4f} | {r['norm_ratio']:.3f} |")
    print(f"written to {run / 'grad_cosine.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
