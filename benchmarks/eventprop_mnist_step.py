"""EventProp MNIST training step: time per batch of the 784-280-160-70-10 network, side by side
for one or more source trees of sparsespike (e.g. this checkout and a worktree of an older
commit), so that an engine change is measured as a ratio in one run.

Each measurement runs in its own process that imports ``sparsespike`` from the given tree:
the same augmented training images (batch 20, the paper's MNIST batch), the same weights
(``--checkpoint``: the ``last.pt`` of an EventProp MNIST run, so that the network spikes as a
trained one does; default: the initialisation of Fontanini Table 2), loss L (alpha 3e-3,
eta 3 ms), forward and EventProp backward, best of ``--reps`` passes over ``--batches``
batches after a warm-up. The trees alternate over ``--rounds`` rounds (the shared machine's
load moves; the ratios much less).

Usage::

    git worktree add /tmp/old <commit>
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/eventprop_mnist_step.py \\
        --src /tmp/old --src . --checkpoint runs/<run>/last.pt --data-dir ../shared/data

Writes ``benchmarks/results/eventprop_mnist_step.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "eventprop_mnist_step.json"


def _worker(src: str, data_dir: str, checkpoint: str | None, batches: int, reps: int, threads: int) -> dict:
    """Time the training step with the sparsespike of ``src`` (runs in a child process)."""
    sys.path.insert(0, str(Path(src).resolve() / "src"))
    import numba
    import torch

    import sparsespike
    from sparsespike.eventprop.train import EventPropTraining, augment_images

    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    cfg = {
        "dataset": "mnist", "data_dir": data_dir, "sizes": [784, 280, 160, 70, 10], "batch_size": 20,
        "augment": True, "sp_per_neuron": True, "progress": False, "threads": threads, "n_train": 20 * (batches + 3),
        "phases": [{"loss": "L", "alpha": 3e-3, "eta": 3.0, "lr": 2e-3, "epochs": 1}],
    }  # fmt: skip
    tr = EventPropTraining(cfg)
    if checkpoint:
        tr.net.load_state_dict(torch.load(checkpoint, weights_only=True)["net"])
    net, loss_fn = tr.net, tr._loss(tr.cfg.phases[0])
    gen = torch.Generator().manual_seed(0)
    xs = [tr.enc(augment_images(tr.xtr[i * 20 : (i + 1) * 20], gen)) for i in range(batches + 3)]
    ys = [tr.ytr[i * 20 : (i + 1) * 20] for i in range(batches + 3)]

    def step(i: int) -> int:
        out = net(xs[i])
        loss, _ = loss_fn(out, ys[i])
        net.zero_grad(set_to_none=True)
        loss.backward()
        return sum(int(c.sum()) for c in out.counts)

    for i in range(3):  # compile / warm up
        step(i)
    best, spikes = float("inf"), 0
    for _ in range(reps):
        t0 = time.perf_counter()
        spikes = sum(step(i) for i in range(3, batches + 3))
        best = min(best, (time.perf_counter() - t0) / batches)
    return {
        "src": str(Path(src).resolve()),
        "module": sparsespike.__file__,
        "ms_per_batch": best * 1e3,
        "us_per_sample": best * 1e6 / 20,
        "spikes_per_sample": spikes / (20 * batches),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", action="append", default=None, help="source tree (repeatable; default: this one)")
    ap.add_argument("--checkpoint", default=None, help="last.pt of an EventProp MNIST run (weights)")
    ap.add_argument("--data-dir", default=os.environ.get("SPARSESPIKE_DATA", "../shared/data"))
    ap.add_argument("--batches", type=int, default=57)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(_worker(a.worker, a.data_dir, a.checkpoint, a.batches, a.reps, a.threads)))
        return 0
    srcs = a.src or [str(Path(__file__).resolve().parent.parent)]
    for s in srcs:
        if not (Path(s) / "src" / "sparsespike" / "__init__.py").is_file():
            ap.error(f"--src {s}: no src/sparsespike/__init__.py there")
    if a.checkpoint and not Path(a.checkpoint).is_file():
        ap.error(f"--checkpoint {a.checkpoint}: no such file")
    times: dict[str, list[float]] = {s: [] for s in srcs}
    rows: dict[str, dict] = {}
    for r in range(a.rounds):
        for s in srcs:
            cmd = [sys.executable, __file__, "--worker", s, "--data-dir", a.data_dir, "--batches", str(a.batches),
                   "--reps", str(a.reps), "--threads", str(a.threads)]  # fmt: skip
            if a.checkpoint:
                cmd += ["--checkpoint", a.checkpoint]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                print(res.stderr, file=sys.stderr)
                raise SystemExit(f"worker for {s} failed (exit {res.returncode})")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            times[s].append(row["ms_per_batch"])
            rows[s] = row
            print(f"round {r + 1}: {s}: {row['ms_per_batch']:.1f} ms per batch", flush=True)
    base = statistics.median(times[srcs[0]])
    table = []
    for s in srcs:
        med = statistics.median(times[s])
        table.append({**rows[s], "ms_per_batch_rounds": times[s], "ms_per_batch": med, "speedup_vs_first": base / med})
    print(f"\n{'source':<40} {'ms/batch':>9} {'us/sample':>10} {'spikes/sample':>14} {'speedup':>8}")
    for t in table:
        print(f"{t['src'][-40:]:<40} {t['ms_per_batch']:>9.1f} {t['ms_per_batch'] * 50:>10.0f} "
              f"{t['spikes_per_sample']:>14.1f} {t['speedup_vs_first']:>7.2f}x")  # fmt: skip
    out = {
        "device": f"CPU ({platform.machine()}), {a.threads} thread(s)",
        "checkpoint": a.checkpoint,
        "batch": 20,
        "batches": a.batches,
        "reps": a.reps,
        "rounds": a.rounds,
        "results": table,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
