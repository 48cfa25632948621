"""Sparse spiking gradient descent (Perez-Nieves & Goodman 2021) vs dense BPTT, on CPU or GPU.

Side by side in one run, for a 784 -> H -> H -> 10 network on latency-encoded Fashion-MNIST
(T = 100 steps, batch 256, the paper's encoding), weights in the paper's "trained" regime: the
Perez-Nieves init scaled per hidden size so that both layers' activity is closest to 1 % with
spike densities <= 2 % (the paper's trained F-MNIST nets: 1.06 / 0.87 % active):

* **hidden layer 2** forward and backward (the paper's protocol, METHODS 1(c): the layer is run
  on a detached copy of layer 1's spikes and back-propagated with the true dL/dS2 of the
  network -- dense for the dense methods; for ``sparse`` the same values at its active entries
  only, as our readout hands them over (``kernels.synapse.EventLinearActive``; building it is
  the readout's work and is timed by nobody)), and the **whole backward pass** of the network;
* methods: ``sparse`` (ours, S3GD), ``dense`` (ours, numba BPTT), ``autograd_loop`` (plain
  per-step autograd, the paper's ``SNNLayerOrig`` baseline), and snnTorch / SpikingJelly / Norse
  when importable;
* hidden sizes 200..1000 (Fig. 4C) and a B_th half-width sweep 0.05..0.95 (Fig. 5; the paper's
  "B_th = 0.95" is half-width 0.05).

Timing: every repetition runs all methods one after the other (interleaved, so load changes on
a shared machine hit all of them), after warm-up; medians and minima of wall-clock time and of
process CPU time (``time.process_time``, less sensitive to other jobs) are reported, ratios are
of medians. Memory: torch's CPU allocator events (``torch.profiler`` with ``profile_memory``)
are replayed in time order; **backward peak** = the highest net bytes allocated during the
backward call (the paper's ``max_memory_allocated - memory_allocated_before``), **held** = bytes
still allocated after the forward (saved state + output). Memory saved (eq. 14) =
``100 (dense - sparse) / dense`` of the backward peak; the same with held + backward peak is
also given. The numba kernels allocate only O(N + K) scratch per thread outside torch.

Usage::

    python benchmarks/sparse_backward.py            # full run (several minutes on 1 core)
    python benchmarks/sparse_backward.py --quick    # small smoke run
    python benchmarks/sparse_backward.py --device cuda --out benchmarks/results/gpu   # Triton

or ``from benchmarks.sparse_backward import run; run(hidden=(200,), reps=5)``.
Writes ``sparse_backward.json``, ``sparse_backward.md`` and two PNGs into ``--out``.
"""

from __future__ import annotations

# isort: off
import sparsespike  # noqa: F401 -- before torch: its process settings (runtime.tune_openmp) apply to every method
# isort: on

import argparse
import gc
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

PEERS = ("snntorch", "spikingjelly", "norse")


# ------------------------------------------------------------------------------------------ data


def load_input(batch: int, T: int, data_dir: str | None, seed: int = 0):
    """Latency-encoded Fashion-MNIST test images ``[T, B, 784]`` and labels (Perez-Nieves 1(b))."""
    from sparsespike.data.encoding import firing_time_raster
    from sparsespike.data.idx import load_fashion_mnist

    roots = [data_dir] if data_dir else []
    roots += [os.environ.get("SPARSESPIKE_DATA"), str(Path(__file__).resolve().parents[2] / "shared" / "data")]
    for r in [r for r in roots if r] + [None]:
        try:
            imgs, labels = load_fashion_mnist(root=r, train=False)
            break
        except Exception:  # noqa: BLE001 - try the next root
            continue
    else:
        raise FileNotFoundError("Fashion-MNIST not found; pass --data-dir (folder holding fashion-mnist/)")
    g = torch.Generator().manual_seed(seed)
    sel = torch.randperm(imgs.shape[0], generator=g)[:batch]
    x = firing_time_raster(imgs[sel].reshape(batch, -1), T).float()
    return x, labels[sel]


# ---------------------------------------------------------------------------------------- layers


class Net:
    """Weights of the 784 -> H -> H -> 10 network and a builder for each method's layers."""

    def __init__(self, H: int, beta: float, seed: int = 0, device: str | torch.device = "cpu"):
        g = torch.Generator().manual_seed(seed)  # the same weights on every device
        self.H, self.beta, self.device = H, beta, torch.device(device)
        std = 20 * (1 - beta)  # Perez-Nieves init N(0, 20(1-alpha)/sqrt(fan_in)), METHODS 1(b)
        self.base1 = (torch.randn(H, 784, generator=g) * std / math.sqrt(784)).to(self.device)
        self.base2 = (torch.randn(H, H, generator=g) * std / math.sqrt(H)).to(self.device)
        self.w3 = (torch.randn(10, H, generator=g) / math.sqrt(H)).to(self.device)
        self.scale = 1.0

    @property
    def w1(self):
        return self.base1 * self.scale

    @property
    def w2(self):
        return self.base2 * self.scale

    def params(self, b_th: float = 0.2):
        from sparsespike.neurons import LIFParams
        from sparsespike.surrogate import FastSigmoid

        return LIFParams(beta=self.beta, threshold=1.0, surrogate=FastSigmoid(100.0))

    def layer(self, method: str, which: int, b_th: float) -> nn.Module:
        """A module ``x[T,B,K] -> S[T,B,N]`` holding its weight (``.weight``) for ``method``, on the
        net's device."""
        return self._layer(method, which, b_th).to(self.device)

    def _layer(self, method: str, which: int, b_th: float) -> nn.Module:
        w = self.w1 if which == 1 else self.w2
        N, K = w.shape
        p = self.params()
        if method in ("sparse", "dense"):
            from sparsespike.layers import SpikingLinear

            m = SpikingLinear(K, N, p, backward=method, b_th=b_th)
            with torch.no_grad():
                m.weight.copy_(w)
            return m
        if method == "autograd_loop":
            from sparsespike.neurons import lif_sequence_loop

            class Loop(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.weight = nn.Parameter(w.clone())

                def forward(self, x):  # SNNLayerOrig: one matmul for all T, then a step loop
                    return lif_sequence_loop(x @ self.weight.t(), p)[0]

            return Loop()
        if method == "snntorch":
            from sparsespike.bench.peers import snntorch_lif

            class Snn(nn.Module):
                def __init__(self, beta):
                    super().__init__()
                    self.fc = nn.Linear(K, N, bias=False)
                    with torch.no_grad():
                        self.fc.weight.copy_(w)
                    self.weight = self.fc.weight
                    self.lif = snntorch_lif(beta)

                def forward(self, x):
                    cur = self.fc(x)
                    mem = self.lif.init_leaky()
                    out = []
                    for t in range(x.shape[0]):
                        s, mem = self.lif(cur[t], mem)
                        out.append(s)
                    return torch.stack(out)

            return Snn(self.beta)
        if method == "spikingjelly":
            from spikingjelly.activation_based import functional, layer

            from sparsespike.bench.peers import spikingjelly_lif

            class SJ(nn.Module):
                def __init__(self, beta):
                    super().__init__()
                    self.fc = layer.Linear(K, N, bias=False, step_mode="m")
                    with torch.no_grad():
                        self.fc.weight.copy_(w)
                    self.weight = self.fc.weight
                    self.lif = spikingjelly_lif(beta)

                def forward(self, x):
                    functional.reset_net(self)
                    return self.lif(self.fc(x))

            return SJ(self.beta)
        if method == "norse":
            import norse.torch as nt

            class Norse(nn.Module):
                def __init__(self, beta):
                    super().__init__()
                    dt = 1e-3
                    # v <- v + dt*tau_inv*(-v + i) = beta v + (1-beta) i: scale W by 1/(1-beta)
                    self.fc = nn.Linear(K, N, bias=False)
                    with torch.no_grad():
                        self.fc.weight.copy_(w / (1.0 - beta))
                    self.weight = self.fc.weight
                    bp = nt.LIFBoxParameters(
                        tau_mem_inv=torch.tensor((1.0 - beta) / dt),
                        v_th=torch.tensor(1.0),
                        method="super",
                        alpha=torch.tensor(100.0),
                    )
                    self.cell = nt.LIFBoxCell(p=bp, dt=dt)

                def forward(self, x):
                    cur = self.fc(x)
                    state = None
                    out = []
                    for t in range(x.shape[0]):
                        s, state = self.cell(cur[t], state)
                        out.append(s)
                    return torch.stack(out)

            return Norse(self.beta)
        raise ValueError(method)

    def readout(self):
        from sparsespike.layers import LeakyReadout

        r = LeakyReadout(self.H, 10, beta=math.exp(-1 / 10), mode="max").to(self.device)
        with torch.no_grad():
            r.weight.copy_(self.w3)
        return r


def available_methods(peers: bool = True) -> tuple[list[str], dict[str, str]]:
    methods = ["sparse", "dense", "autograd_loop"]
    skipped = {}
    if peers:
        for name in PEERS:
            try:
                __import__(name)
                methods.append(name)
            except Exception as e:  # noqa: BLE001
                skipped[name] = f"not importable: {type(e).__name__}: {e}"
    return methods, skipped


def calibrate(net: Net, x: torch.Tensor, b_th: float, act_target: float = 1.0, max_spikes_pct: float = 2.0) -> dict:
    """Weight scale of the "trained" regime: layer activity closest to ``act_target`` % with spike
    densities at most ``max_spikes_pct`` % (the paper's F-MNIST nets: activity 1.06/0.87 %, and the
    upper activity regulariser f_up = 1 allows about one spike per neuron per sample, i.e. 1 %)."""
    from sparsespike.layers import SpikingLinear  # noqa: F401 - imported for the layers below

    grid = []
    for scale in (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0):
        net.scale = scale
        l1, l2 = net.layer("sparse", 1, b_th), net.layer("sparse", 2, b_th)
        with torch.no_grad():
            s1 = l1(x)
            s2 = l2(s1)
        grid.append(
            {
                "scale": scale,
                "act1": l1.activity(),
                "act2": l2.activity(),
                "spikes1_pct": 100 * float(s1.mean()),
                "spikes2_pct": 100 * float(s2.mean()),
            }
        )
    ok = [g for g in grid if max(g["spikes1_pct"], g["spikes2_pct"]) <= max_spikes_pct] or grid[:1]
    best = min(ok, key=lambda g: abs(g["act1"] - act_target) + abs(g["act2"] - act_target))
    net.scale = best["scale"]
    return dict(best, grid=grid)


# --------------------------------------------------------------------------------------- measure


class _quiet_stderr:
    """Silence the profiler's C++ start/stop lines (written to fd 2)."""

    def __enter__(self):
        import sys

        sys.stderr.flush()
        self.saved = os.dup(2)
        self.null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self.null, 2)

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)
        os.close(self.null)


def _mem_events(fn, device: torch.device) -> tuple[int, int]:
    """(peak, final) net bytes allocated by torch's allocator of ``device`` while ``fn()`` runs."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base, torch.cuda.memory_allocated(device) - base
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    evs = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    evs.sort(key=lambda e: e.start_ns())
    run = peak = 0
    for e in evs:
        if not str(e.device_type()).endswith("CPU"):
            continue
        run += e.nbytes()
        peak = max(peak, run)
    return peak, run


def _stats(ts: list[tuple[float, float]]) -> dict:
    """Wall-clock and process-CPU-time statistics of ``(wall, cpu)`` samples (ms)."""
    wall = [w for w, _ in ts]
    cpu = [c for _, c in ts]
    return {
        "median_ms": 1e3 * statistics.median(wall),
        "min_ms": 1e3 * min(wall),
        "cpu_median_ms": 1e3 * statistics.median(cpu),
        "cpu_min_ms": 1e3 * min(cpu),
        "n": len(ts),
    }


def _clock(sync=None):
    """(wall, process CPU) time; ``sync`` (``torch.cuda.synchronize``) first waits for the GPU."""
    if sync is not None:
        sync()
    return time.perf_counter(), time.process_time()


def _syncer(x: torch.Tensor):
    return torch.cuda.synchronize if x.is_cuda else None


def _since(a, b):
    return b[0] - a[0], b[1] - a[1]


def _incoming_grad(out: torch.Tensor, G2: torch.Tensor) -> torch.Tensor:
    """dL/dS2 as the network's readout hands it to a sparse layer: only at its active entries, a
    sparse COO tensor on the active set's own indices (``kernels.synapse.EventLinearActive``).
    The values are those of the dense ``G2``; building it is the readout's work, not timed."""
    from sparsespike.kernels.sparse import active_set

    act = active_set(out)
    return act.sparse_tensor(act.gather(G2))


def layer2_bench(net: Net, methods, x, y, b_th, reps, warmup, memory=True) -> dict:
    """Forward/backward time of hidden layer 2 (detached input, true dL/dS2) for every method."""
    from sparsespike.kernels.sparse import active_set, share_active_set

    l1 = net.layer("sparse", 1, b_th)
    l2s = net.layer("sparse", 2, b_th)
    ro = net.readout()
    with torch.no_grad():
        s1 = l1(x)
    s1r = s1.detach().requires_grad_()
    share_active_set(s1, s1r)
    s2 = l2s(s1r)
    s2d = s2.detach().requires_grad_()
    loss = nn.functional.cross_entropy(ro(s2d), y)
    (G2,) = torch.autograd.grad(loss, s2d)
    act2 = l2s.activity()
    layers = {m: net.layer(m, 2, b_th) for m in methods}
    # only the sparse method's input carries layer 1's active set (as in a sparse network); the
    # others get a plain tensor, as in their own dense network (our dense layer would otherwise
    # also compute its input gradient at layer 1's active entries only: EventLinearActive)
    inputs = {m: s1.detach().requires_grad_() for m in methods}
    share_active_set(s1, inputs["sparse"])
    act_in = active_set(inputs["sparse"])

    def fresh():
        # as in training, where every step has new active sets: the COO indices that carry the
        # input gradient (built lazily on first use, then cached on the set) are built by the
        # backward every time, and counted in its time and memory
        act_in._coo = None

    res = {m: {"fwd": [], "bwd": []} for m in methods}
    sync = _syncer(x)
    for r in range(warmup + reps):
        for m in methods:
            lay = layers[m]
            inp = inputs[m]
            inp.grad = None
            lay.weight.grad = None
            t0 = _clock(sync)
            out = lay(inp)
            t1 = _clock(sync)
            g = _incoming_grad(out, G2) if m == "sparse" else G2  # the readout's work: not timed
            fresh()
            t1b = _clock(sync)
            out.backward(g)
            t2 = _clock(sync)
            del out
            if r >= warmup:
                res[m]["fwd"].append(_since(t0, t1))
                res[m]["bwd"].append(_since(t1b, t2))
    rows = {}
    for m in methods:
        rows[m] = {"forward": _stats(res[m]["fwd"]), "backward": _stats(res[m]["bwd"])}
        if memory:
            lay = layers[m]
            inp = inputs[m]
            holder = {}

            def fwd(lay=lay, holder=holder, inp=inp):
                holder["out"] = lay(inp)

            def bwd(holder=holder, lay=lay, inp=inp):
                inp.grad = None
                lay.weight.grad = None
                holder["out"].backward(holder["g"])

            inp.grad = None
            _, held = _mem_events(fwd, x.device)
            holder["g"] = _incoming_grad(holder["out"], G2) if m == "sparse" else G2
            fresh()
            peak_b, _ = _mem_events(bwd, x.device)
            holder.clear()
            inp.grad = None
            rows[m]["held_bytes"] = held
            rows[m]["bwd_peak_bytes"] = peak_b
    return {"activity2_pct": act2, "methods": rows}


def whole_bench(net: Net, methods, x, y, b_th, reps, warmup) -> dict:
    """Time of ``loss.backward()`` through layer 1, layer 2 and the readout, per method."""
    nets = {}
    for m in methods:
        nets[m] = (net.layer(m, 1, b_th), net.layer(m, 2, b_th), net.readout())
    res = {m: {"fwd": [], "bwd": []} for m in methods}
    sync = _syncer(x)
    for r in range(warmup + reps):
        for m in methods:
            a, b, ro = nets[m]
            for mod in (a, b, ro):
                mod.weight.grad = None
            t0 = _clock(sync)
            loss = nn.functional.cross_entropy(ro(b(a(x))), y)
            t1 = _clock(sync)
            loss.backward()
            t2 = _clock(sync)
            del loss
            if r >= warmup:
                res[m]["fwd"].append(_since(t0, t1))
                res[m]["bwd"].append(_since(t1, t2))
    return {m: {"forward": _stats(res[m]["fwd"]), "backward": _stats(res[m]["bwd"])} for m in methods}


def _ratios(rows: dict, key: str = "backward", stat: str = "median_ms") -> dict:
    """Time of each method / time of ``sparse`` (medians; ``stat="cpu_median_ms"`` for CPU time)."""
    sp = rows["sparse"][key][stat]
    out = {f"{m}_over_sparse": rows[m][key][stat] / sp for m in rows if m != "sparse"}
    peers = [m for m in rows if m in PEERS]
    if peers:
        best = min(peers, key=lambda m: rows[m][key][stat])
        out["fastest_peer"] = best
        out["fastest_peer_over_sparse"] = rows[best][key][stat] / sp
    return out


def _mem_saved(rows: dict, ref: str = "dense") -> dict:
    if "bwd_peak_bytes" not in rows.get("sparse", {}):
        return {}
    d, s = rows[ref], rows["sparse"]
    return {
        "bwd_peak_saved_pct": 100 * (d["bwd_peak_bytes"] - s["bwd_peak_bytes"]) / max(1, d["bwd_peak_bytes"]),
        "held_plus_bwd_saved_pct": 100
        * ((d["held_bytes"] + d["bwd_peak_bytes"]) - (s["held_bytes"] + s["bwd_peak_bytes"]))
        / max(1, d["held_bytes"] + d["bwd_peak_bytes"]),
    }


# ------------------------------------------------------------------------------------------- run


def run(
    hidden=(200, 400, 600, 800, 1000),
    batch: int = 256,
    T: int = 100,
    b_th: float = 0.2,
    bth_sweep=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
    bth_hidden: int = 400,
    reps: int = 5,
    sweep_reps: int = 3,
    warmup: int = 2,
    threads: int = 1,
    peers: bool = True,
    whole_sizes=(200,),
    data_dir: str | None = None,
    out: str | Path | None = "benchmarks/results",
    verbose: bool = True,
    device: str = "cpu",
) -> dict:
    """Run the benchmark; returns the result dict (also written to ``out`` unless ``None``).

    ``device="cuda"`` runs every method on the GPU (ours: the Triton kernels, sparse and dense),
    timed with ``torch.cuda.synchronize`` around each call, memory from ``torch.cuda``'s
    allocator statistics."""
    import numba

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is visible to torch")
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    torch.manual_seed(0)
    beta = math.exp(-1 / 10)  # tau_mem = 10 ms, dt = 1 ms
    x, y = load_input(batch, T, data_dir)
    x, y = x.to(dev), y.to(dev)
    methods, skipped = available_methods(peers)
    say = print if verbose else (lambda *a, **k: None)
    say(f"input: F-MNIST latency code, T={T}, batch={batch}, density {100 * float(x.mean()):.3f} %; methods {methods}")
    result = {
        "config": {
            "batch": batch,
            "T": T,
            "b_th_half_width": b_th,
            "threads": threads,
            "reps": reps,
            "sweep_reps": sweep_reps,
            "warmup": warmup,
            "beta": beta,
            "surrogate": "fast sigmoid, scale 100",
            "input_density_pct": 100 * float(x.mean()),
            "bth_hidden": bth_hidden,
            "device": str(dev),
        },
        "env": {
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "triton": _version("triton"),
            "numba": numba.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "load_avg_start": _load(),
            "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        },
        "skipped": skipped,
        "hidden": [],
        "bth_sweep": [],
    }
    for H in hidden:
        net = Net(H, beta, device=dev)
        cal = calibrate(net, x, b_th)
        r = reps if H == hidden[0] else sweep_reps
        lb = layer2_bench(net, methods, x, y, b_th, r, warmup if H == hidden[0] else 1)
        row = {
            "H": H,
            "calibration": cal,
            "layer2": lb,
            "layer2_ratios": _ratios(lb["methods"]),
            "layer2_ratios_cpu": _ratios(lb["methods"], stat="cpu_median_ms"),
            "layer2_forward_ratios": _ratios(lb["methods"], "forward"),
            "memory": _mem_saved(lb["methods"]),
        }
        if H in whole_sizes:
            wb = whole_bench(net, methods, x, y, b_th, r, 1)
            row["whole"] = wb
            row["whole_ratios"] = _ratios(wb)
            row["whole_ratios_cpu"] = _ratios(wb, stat="cpu_median_ms")
        result["hidden"].append(row)
        m = lb["methods"]
        say(
            f"H={H:5d} act {cal['act1']:.2f}/{lb['activity2_pct']:.2f} %  layer-2 bwd ms: "
            + ", ".join(f"{k} {v['backward']['median_ms']:.2f}" for k, v in m.items())
            + f"  | dense/sparse x{row['layer2_ratios']['dense_over_sparse']:.1f}"
            + f", loop/sparse x{row['layer2_ratios']['autograd_loop_over_sparse']:.1f}"
            + (
                f", best peer/sparse x{row['layer2_ratios']['fastest_peer_over_sparse']:.1f}"
                if "fastest_peer" in row["layer2_ratios"]
                else ""
            )
            + f"  mem saved {row['memory'].get('bwd_peak_saved_pct', float('nan')):.1f} %"
        )
        if "whole" in row:
            say(
                "        whole backward ms: "
                + ", ".join(f"{k} {v['backward']['median_ms']:.1f}" for k, v in row["whole"].items())
            )
    if bth_sweep:
        net = Net(bth_hidden, beta, device=dev)
        cal = calibrate(net, x, b_th)
        for hw in bth_sweep:
            lb = layer2_bench(net, ["sparse", "dense"], x, y, hw, sweep_reps, 1)
            row = {
                "half_width": hw,
                "paper_b_th": 1.0 - hw,
                "activity2_pct": lb["activity2_pct"],
                "layer2": lb,
                "speedup": _ratios(lb["methods"])["dense_over_sparse"],
                "speedup_cpu": _ratios(lb["methods"], stat="cpu_median_ms")["dense_over_sparse"],
                "memory": _mem_saved(lb["methods"]),
            }
            result["bth_sweep"].append(row)
            say(
                f"B_th half-width {hw:.2f} (paper b_th {1 - hw:.2f}): activity {row['activity2_pct']:.2f} %, "
                f"speedup x{row['speedup']:.1f}, mem saved {_saved(row, 'bwd_peak_saved_pct'):.1f} %"
            )
        result["bth_calibration"] = cal
    result["env"]["load_avg_end"] = _load()
    if out is not None:
        write(result, Path(out))
    return result


def _saved(row: dict, key: str) -> float:
    return row["memory"].get(key, float("nan"))


def _version(pkg: str) -> str | None:
    try:
        return __import__(pkg).__version__
    except Exception:  # noqa: BLE001
        return None


def _load():
    try:
        return os.getloadavg()
    except OSError:
        return None


# ----------------------------------------------------------------------------------------- report


def markdown(res: dict) -> str:
    c = res["config"]
    la, lb_ = res["env"]["load_avg_start"], res["env"]["load_avg_end"]
    fmt_load = lambda v: "n/a" if not v else f"{v[0]:.1f}"  # noqa: E731
    gpu = res["env"].get("gpu")
    where = f"GPU ({gpu}, Triton {res['env'].get('triton')})" if gpu else "CPU"
    lines = [
        f"# Sparse backward (S3GD) vs dense BPTT on {where}",
        "",
        f"784-H-H-10, F-MNIST latency code (T={c['T']}, batch {c['batch']}, input density "
        f"{c['input_density_pct']:.2f} %), B_th half-width {c['b_th_half_width']}, fast sigmoid (100), "
        f"{c['threads']} CPU thread(s); median of {c['reps']} runs (first size) / {c['sweep_reps']} (others) after "
        f"warm-up, methods interleaved. 1-min load average at start / end: {fmt_load(la)} / {fmt_load(lb_)} "
        "(shared machine; CPU-time ratios, from `time.process_time`, are the less load-sensitive figure). "
        f"OpenMP: GOMP_SPINCOUNT={res['env'].get('gomp_spincount')}, "
        f"OMP_WAIT_POLICY={res['env'].get('omp_wait_policy')} "
        "(`sparsespike.runtime.tune_openmp`; the same for every method).",
        "",
        "## Hidden layer 2: backward time (ms, wall-clock median) and ratios to sparse",
        "",
    ]
    rows = res["hidden"]

    def rat(r, key):
        w = r["layer2_ratios"].get(key)
        cp = r["layer2_ratios_cpu"].get(key)
        if key == "fastest_peer_over_sparse" and w is not None:  # the CPU ratio of the same peer
            cp = r["layer2_ratios_cpu"].get(f"{r['layer2_ratios']['fastest_peer']}_over_sparse", cp)
        return "n/a" if w is None else f"{w:.1f}x ({cp:.1f}x)"

    if rows:
        methods = list(rows[0]["layer2"]["methods"].keys())
        lines.append(
            "| H | act. L1/L2 % | "
            + " | ".join(methods)
            + " | dense/sparse wall (CPU) | loop/sparse | fastest peer/sparse"
            + " | mem saved, bwd peak | mem saved, held+bwd |"
        )
        lines.append("|---" * (len(methods) + 7) + "|")
        for r in rows:
            m = r["layer2"]["methods"]
            ra = r["layer2_ratios"]
            peer = f"{rat(r, 'fastest_peer_over_sparse')} {ra['fastest_peer']}" if "fastest_peer" in ra else "n/a"
            lines.append(
                f"| {r['H']} | {r['calibration']['act1']:.2f}/{r['layer2']['activity2_pct']:.2f} | "
                + " | ".join(f"{m[k]['backward']['median_ms']:.2f}" for k in methods)
                + f" | {rat(r, 'dense_over_sparse')} | {rat(r, 'autograd_loop_over_sparse')} | {peer} | "
                + f"{_saved(r, 'bwd_peak_saved_pct'):.1f} % | {_saved(r, 'held_plus_bwd_saved_pct'):.1f} % |"
            )
        lines += ["", "Same, process CPU time (ms, median):", ""]
        lines.append("| H | " + " | ".join(methods) + " |")
        lines.append("|---" * (len(methods) + 1) + "|")
        for r in rows:
            m = r["layer2"]["methods"]
            lines.append(
                f"| {r['H']} | " + " | ".join(f"{m[k]['backward']['cpu_median_ms']:.2f}" for k in methods) + " |"
            )
        lines += ["", "Forward time of hidden layer 2 (ms, wall-clock median):", ""]
        lines.append("| H | " + " | ".join(methods) + " |")
        lines.append("|---" * (len(methods) + 1) + "|")
        for r in rows:
            m = r["layer2"]["methods"]
            lines.append(f"| {r['H']} | " + " | ".join(f"{m[k]['forward']['median_ms']:.2f}" for k in methods) + " |")
        lines += [
            "",
            "Memory of hidden layer 2 (MiB): held after forward (saved state + output spikes) / "
            "peak allocated during backward:",
            "",
        ]
        lines.append("| H | " + " | ".join(methods) + " |")
        lines.append("|---" * (len(methods) + 1) + "|")
        for r in rows:
            m = r["layer2"]["methods"]
            lines.append(
                f"| {r['H']} | "
                + " | ".join(
                    f"{m[k].get('held_bytes', 0) / 2**20:.1f} / {m[k].get('bwd_peak_bytes', 0) / 2**20:.2f}"
                    for k in methods
                )
                + " |"
            )
        for r in rows:
            if "whole" in r:
                w = r["whole"]
                lines += ["", f"## Whole network (H={r['H']}): forward and `loss.backward()` (ms, median)", ""]
                lines.append("| method | forward | backward | backward CPU | backward / sparse wall (CPU) |")
                lines.append("|---|---|---|---|---|")
                sp, spc = w["sparse"]["backward"]["median_ms"], w["sparse"]["backward"]["cpu_median_ms"]
                for k, v in w.items():
                    b = v["backward"]
                    lines.append(
                        f"| {k} | {v['forward']['median_ms']:.1f} | {b['median_ms']:.1f} | {b['cpu_median_ms']:.1f} | "
                        f"{b['median_ms'] / sp:.1f}x ({b['cpu_median_ms'] / spc:.1f}x) |"
                    )
    if res["bth_sweep"]:
        lines += [
            "",
            f"## B_th sweep, hidden {c.get('bth_hidden')} (cf. Fig. 5; the paper's b_th = 1 - half-width)",
            "",
        ]
        lines.append(
            "| half-width | paper b_th | activity L2 % | sparse bwd ms | dense bwd ms | speedup wall (CPU)"
            " | mem saved, bwd peak |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for r in res["bth_sweep"]:
            m = r["layer2"]["methods"]
            lines.append(
                f"| {r['half_width']:.2f} | {r['paper_b_th']:.2f} | {r['activity2_pct']:.2f} | "
                f"{m['sparse']['backward']['median_ms']:.2f} | "
                f"{m['dense']['backward']['median_ms']:.2f} | {r['speedup']:.1f}x ({r['speedup_cpu']:.1f}x) | "
                f"{r['memory'].get('bwd_peak_saved_pct', float('nan')):.1f} % |"
            )
    if res["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in res["skipped"].items())]
    return "\n".join(lines) + "\n"


def plots(res: dict, out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001
        return []
    files = []
    rows = res["hidden"]
    if rows:
        Hs = [r["H"] for r in rows]
        fig, ax = plt.subplots(1, 3, figsize=(15, 4))
        for m in rows[0]["layer2"]["methods"]:
            ax[0].plot(Hs, [r["layer2"]["methods"][m]["backward"]["median_ms"] for r in rows], "o-", label=m)
        ax[0].set_yscale("log")
        ax[0].set_xlabel("hidden neurons")
        ax[0].set_ylabel("layer-2 backward (ms)")
        ax[0].legend(fontsize=8)
        ax[1].plot(Hs, [r["layer2_ratios"]["dense_over_sparse"] for r in rows], "o-", label="vs dense (ours)")
        ax[1].plot(Hs, [r["layer2_ratios"]["autograd_loop_over_sparse"] for r in rows], "s-", label="vs autograd loop")
        if "fastest_peer" in rows[0]["layer2_ratios"]:
            ax[1].plot(
                Hs, [r["layer2_ratios"]["fastest_peer_over_sparse"] for r in rows], "^-", label="vs fastest peer"
            )
        ax[1].set_yscale("log")
        ax[1].set_xlabel("hidden neurons")
        ax[1].set_ylabel("backward speedup (x)")
        ax[1].legend(fontsize=8)
        ax[2].plot(Hs, [r["memory"].get("bwd_peak_saved_pct", float("nan")) for r in rows], "o-", label="backward peak")
        ax[2].plot(
            Hs, [r["memory"].get("held_plus_bwd_saved_pct", float("nan")) for r in rows], "s-", label="held + backward"
        )
        ax[2].set_ylim(0, 100)
        ax[2].set_xlabel("hidden neurons")
        ax[2].set_ylabel("memory saved vs dense (%)")
        ax[2].legend(fontsize=8)
        where = "GPU" if res["env"].get("gpu") else "CPU"
        fig.suptitle(f"S3GD on {where}, hidden layer 2 (cf. Perez-Nieves & Goodman Fig. 4C)")
        fig.tight_layout()
        f = out / "sparse_backward_hidden.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(str(f))
    sw = res["bth_sweep"]
    if sw:
        hw = [r["half_width"] for r in sw]
        fig, ax = plt.subplots(1, 3, figsize=(15, 4))
        ax[0].plot(hw, [r["activity2_pct"] for r in sw], "o-")
        ax[0].set_ylabel("layer-2 activity (%)")
        ax[1].plot(hw, [r["speedup"] for r in sw], "o-")
        ax[1].set_yscale("log")
        ax[1].set_ylabel("backward speedup vs dense (x)")
        ax[2].plot(hw, [r["memory"].get("bwd_peak_saved_pct", float("nan")) for r in sw], "o-")
        ax[2].set_ylim(0, 100)
        ax[2].set_ylabel("memory saved (%)")
        for a in ax:
            a.set_xlabel("B_th half-width (paper's b_th = 1 - half-width)")
        fig.suptitle("B_th sweep (cf. Fig. 5C)")
        fig.tight_layout()
        f = out / "sparse_backward_bth.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(str(f))
    return files


def write(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    res["plots"] = plots(res, out)
    (out / "sparse_backward.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "sparse_backward.md").write_text(markdown(res))


def main(argv=None) -> int:
    from sparsespike.runtime import tune_allocator

    tune_allocator()  # every method gets the same allocator (runtime.py)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[200, 400, 600, 800, 1000])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--b-th", type=float, default=0.2, help="active-window half-width")
    ap.add_argument(
        "--bth-sweep", type=float, nargs="*", default=[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    )
    ap.add_argument("--bth-hidden", type=int, default=400)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sweep-reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--whole", type=int, nargs="*", default=[200], help="hidden sizes to time the whole backward at")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument(
        "--out", default=None, help="default benchmarks/results (benchmarks/results/quick with --quick: a smoke run "
        "never replaces the full results)"
    )  # fmt: skip
    ap.add_argument(
        "--quick", action="store_true", help="H=200 only, batch 64, short sweep (flags given explicitly are kept)"
    )
    ap.add_argument("--device", default="cpu", help="cpu (numba kernels) or cuda (Triton kernels)")
    a = ap.parse_args(argv)
    if a.quick:  # smoke-run sizes for the flags left at their defaults
        quick = {"hidden": [200], "batch": 64, "bth_sweep": [0.05, 0.2, 0.5], "reps": 3, "sweep_reps": 2, "warmup": 1}
        for k, v in quick.items():
            if getattr(a, k) == ap.get_default(k):
                setattr(a, k, v)
    if a.out is None:
        a.out = "benchmarks/results/quick" if a.quick else "benchmarks/results"
    run(
        hidden=tuple(a.hidden),
        batch=a.batch,
        T=a.T,
        b_th=a.b_th,
        bth_sweep=tuple(a.bth_sweep),
        bth_hidden=a.bth_hidden,
        reps=a.reps,
        sweep_reps=a.sweep_reps,
        warmup=a.warmup,
        threads=a.threads,
        peers=not a.no_peers,
        whole_sizes=tuple(a.whole),
        data_dir=a.data_dir,
        out=a.out,
        device=a.device,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
