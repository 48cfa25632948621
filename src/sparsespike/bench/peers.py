"""Forward/backward time and peak memory: our dense BPTT path vs snnTorch, SpikingJelly, Norse.

Network (issue 2): 700 inputs -> 256 LIF -> 256 LIF -> 20 readout, batch 64, T = 100, inputs
Bernoulli spikes at 2 % per step; same weights in every framework; LIF with beta = 0.95,
threshold 1, subtractive reset (detached), surrogate fast sigmoid where the library has it.
Readout: a linear layer on the last spikes summed over time (identical plain torch everywhere).
Norse's sequence ``LIF`` is current-based, so ours is also timed with a synaptic current
(``alpha``) for that comparison. A plain per-step autograd loop over our neuron equations is
the reference baseline (the one Perez-Nieves & Goodman compare against).

Run: ``sparsespike bench peers [--repeats 5] [--out benchmarks/results]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from .memory import peak_memory

T, B, N_IN, N_H, N_OUT, RATE, BETA, ALPHA = 100, 64, 700, 256, 20, 0.02, 0.95, 0.8


def _weights(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(N_H, N_IN, generator=g) * (3.0 / math.sqrt(N_IN * RATE))
    w2 = torch.randn(N_H, N_H, generator=g) * (3.0 / math.sqrt(N_H * 0.05))
    w3 = torch.randn(N_OUT, N_H, generator=g) / math.sqrt(N_H)
    return w1, w2, w3


def _readout(s2: torch.Tensor, w3: nn.Parameter) -> torch.Tensor:
    return s2.sum(0) @ w3.t()


class Ours(nn.Module):
    def __init__(self, w, alpha=None, plain_loop=False):
        super().__init__()
        from ..layers import SpikingLinear
        from ..neurons import LIFParams
        from ..surrogate import FastSigmoid

        p = LIFParams(beta=BETA, alpha=alpha, threshold=1.0, surrogate=FastSigmoid(100.0))
        self.l1, self.l2 = SpikingLinear(N_IN, N_H, p), SpikingLinear(N_H, N_H, p)
        with torch.no_grad():
            self.l1.weight.copy_(w[0])
            self.l2.weight.copy_(w[1])
        self.w3 = nn.Parameter(w[2].clone())
        self.plain_loop = plain_loop
        self.p = p

    def forward(self, x):
        if self.plain_loop:
            from ..neurons import lif_sequence_loop

            s1, _ = lif_sequence_loop(x @ self.l1.weight.t(), self.p)
            s2, _ = lif_sequence_loop(s1 @ self.l2.weight.t(), self.p)
        else:
            s2 = self.l2(self.l1(x))
        return _readout(s2, self.w3)


def snntorch_lif(beta: float):
    """The closest snnTorch ``Leaky`` to our LIF: decay ``beta``, threshold 1, subtractive reset,
    fast-sigmoid surrogate of slope 100. One difference remains: snnTorch subtracts the threshold
    after the decay, ``V[t] = beta V[t-1] + I[t] - S[t-1]``, ours before it,
    ``V[t] = beta (V[t-1] - S[t-1]) + I[t]``; the cost of a step is the same (tested)."""
    import snntorch as snn
    from snntorch import surrogate

    return snn.Leaky(beta=beta, threshold=1.0, spike_grad=surrogate.fast_sigmoid(slope=100), reset_mechanism="subtract")


def spikingjelly_lif(beta: float):
    """Our LIF as a multi-step SpikingJelly ``LIFNode``: with ``decay_input=False`` and
    ``v_reset=None`` its update ``H = (1 - 1/tau) V + X`` with subtractive reset is ours for
    ``tau = 1 / (1 - beta)``."""
    from spikingjelly.activation_based import neuron, surrogate

    return neuron.LIFNode(
        tau=1.0 / (1.0 - beta),
        decay_input=False,
        v_threshold=1.0,
        v_reset=None,
        detach_reset=True,
        step_mode="m",
        surrogate_function=surrogate.Sigmoid(),
    )


class SnnTorchNet(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(N_IN, N_H, bias=False), nn.Linear(N_H, N_H, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(w[0])
            self.fc2.weight.copy_(w[1])
        self.lif1, self.lif2 = snntorch_lif(BETA), snntorch_lif(BETA)
        self.w3 = nn.Parameter(w[2].clone())

    def forward(self, x):
        m1 = self.lif1.init_leaky()
        m2 = self.lif2.init_leaky()
        out = []
        for t in range(x.shape[0]):
            s1, m1 = self.lif1(self.fc1(x[t]), m1)
            s2, m2 = self.lif2(self.fc2(s1), m2)
            out.append(s2)
        return _readout(torch.stack(out), self.w3)


class SpikingJellyNet(nn.Module):
    def __init__(self, w):
        super().__init__()
        from spikingjelly.activation_based import layer

        self.fc1 = layer.Linear(N_IN, N_H, bias=False, step_mode="m")
        self.fc2 = layer.Linear(N_H, N_H, bias=False, step_mode="m")
        with torch.no_grad():
            self.fc1.weight.copy_(w[0])
            self.fc2.weight.copy_(w[1])
        self.lif1, self.lif2 = spikingjelly_lif(BETA), spikingjelly_lif(BETA)
        self.w3 = nn.Parameter(w[2].clone())

    def forward(self, x):
        from spikingjelly.activation_based import functional

        functional.reset_net(self)
        return _readout(self.lif2(self.fc2(self.lif1(self.fc1(x)))), self.w3)


class NorseNet(nn.Module):
    def __init__(self, w):
        super().__init__()
        import norse.torch as nt

        dt = 1e-3
        p = nt.LIFParameters(
            tau_mem_inv=torch.tensor((1 - BETA) / dt),
            tau_syn_inv=torch.tensor((1 - ALPHA) / dt),
            v_th=torch.tensor(1.0),
            method="super",
            alpha=torch.tensor(100.0),
        )
        self.fc1, self.fc2 = nn.Linear(N_IN, N_H, bias=False), nn.Linear(N_H, N_H, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(w[0])
            self.fc2.weight.copy_(w[1])
        self.lif1, self.lif2 = nt.LIF(p=p, dt=dt), nt.LIF(p=p, dt=dt)
        self.w3 = nn.Parameter(w[2].clone())

    def forward(self, x):
        s1, _ = self.lif1(self.fc1(x))
        s2, _ = self.lif2(self.fc2(s1))
        return _readout(s2, self.w3)


def _candidates(w):
    yield "sparsespike (dense BPTT)", lambda: Ours(w)
    yield "sparsespike, current-based (alpha)", lambda: Ours(w, alpha=ALPHA)
    yield "plain autograd loop (ours, per step)", lambda: Ours(w, plain_loop=True)
    yield "snnTorch Leaky", lambda: SnnTorchNet(w)
    yield "SpikingJelly LIFNode (multi-step)", lambda: SpikingJellyNet(w)
    yield "Norse LIF (current-based)", lambda: NorseNet(w)


def run(repeats: int = 5, threads: int | None = None, out: str | Path = "benchmarks/results") -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    w = _weights()
    x = (torch.rand(T, B, N_IN, generator=torch.Generator().manual_seed(1)) < RATE).float()
    y = torch.randint(0, N_OUT, (B,), generator=torch.Generator().manual_seed(2))
    rows = []
    cands = []  # (name, model, state)
    for name, make in _candidates(w):
        try:
            model = make()
        except ImportError as e:
            rows.append({"name": name, "skipped": f"not installed ({e.name})"})
            continue
        cands.append((name, model, {}))

    def fwd(model, state):
        state["loss"] = nn.functional.cross_entropy(model(x), y)

    def bwd(model, state):
        model.zero_grad(set_to_none=True)
        state["loss"].backward()

    for _, model, state in cands:  # warm-up (JIT, caches)
        for _ in range(2):
            fwd(model, state)
            bwd(model, state)
    # implementations interleaved within every repetition, so that load drifts on a shared
    # machine hit all of them alike; medians of wall-clock and of process CPU time
    t_f: dict[str, list[float]] = {n: [] for n, _, _ in cands}
    t_b: dict[str, list[float]] = {n: [] for n, _, _ in cands}
    c_fb: dict[str, list[float]] = {n: [] for n, _, _ in cands}
    for _ in range(repeats):
        for name, model, state in cands:
            c0 = time.process_time()
            t0 = time.perf_counter()
            fwd(model, state)
            t1 = time.perf_counter()
            bwd(model, state)
            t2 = time.perf_counter()
            c_fb[name].append(time.process_time() - c0)
            t_f[name].append(t1 - t0)
            t_b[name].append(t2 - t1)
    for name, model, state in cands:
        mem = peak_memory(lambda model=model, state=state: (fwd(model, state), bwd(model, state)))
        with torch.no_grad():
            logits = model(x)
        f, b = statistics.median(t_f[name]), statistics.median(t_b[name])
        rows.append(
            {
                "name": name,
                "forward_s": f,
                "backward_s": b,
                "total_s": f + b,
                "cpu_total_s": statistics.median(c_fb[name]),
                "peak_mem_MiB": mem / 2**20,
                "logit_checksum": float(logits.abs().sum()),
            }
        )
        print(f"{name:45s} fwd {1e3 * f:8.1f} ms  bwd {1e3 * b:8.1f} ms  peak {mem / 2**20:7.1f} MiB", flush=True)
    ours = next(r for r in rows if r["name"].startswith("sparsespike (dense"))
    ours_a = next(r for r in rows if r["name"].startswith("sparsespike, current"))
    peers = [r for r in rows if "skipped" not in r and not r["name"].startswith(("sparsespike", "plain"))]

    def ref_of(r: dict) -> dict:  # Norse's current-based LIF against our current-based model
        return ours_a if "current-based" in r["name"] and "Norse" in r["name"] else ours

    for r in rows:
        if "skipped" in r:
            continue
        r["speedup_ours_vs_this"] = r["total_s"] / ref_of(r)["total_s"]
    fastest = min(peers, key=lambda r: r["total_s"]) if peers else None
    fref = ref_of(fastest) if fastest else None  # the summary compares with the same model as its row
    res = {
        "network": f"{N_IN}-{N_H}-{N_H}-{N_OUT}, batch {B}, T {T}, input rate {RATE}",
        "device": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": repeats,
        "rows": rows,
        "fastest_peer": fastest["name"] if fastest else None,
        "speedup_vs_fastest_peer": (fastest["total_s"] / fref["total_s"]) if fastest else None,
        "cpu_speedup_vs_fastest_peer": (fastest["cpu_total_s"] / fref["cpu_total_s"]) if fastest else None,
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bptt_vs_peers.json").write_text(json.dumps(res, indent=2))
    (out / "bptt_vs_peers.md").write_text(to_markdown(res))
    print(to_markdown(res))
    return res


def to_markdown(res: dict) -> str:
    lines = [
        f"Network {res['network']}; {res['threads']} threads, torch {res['torch']}; median of {res['repeats']} "
        f"repetitions, implementations interleaved; 1-min load average {res.get('load_avg_1min') or 0:.1f}.",
        "",
        "| implementation | forward ms | backward ms | fwd+bwd ms | fwd+bwd CPU ms | peak MiB | ours faster by |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['name']} | {r['skipped']} | | | | | |")
            continue
        lines.append(
            f"| {r['name']} | {1e3 * r['forward_s']:.1f} | {1e3 * r['backward_s']:.1f} | "
            f"{1e3 * r['total_s']:.1f} | {1e3 * r['cpu_total_s']:.1f} | {r['peak_mem_MiB']:.1f} | "
            f"{r['speedup_ours_vs_this']:.2f}x |"
        )
    if res.get("fastest_peer"):
        lines += [
            "",
            f"Fastest peer: {res['fastest_peer']}; sparsespike fwd+bwd is "
            f"{res['speedup_vs_fastest_peer']:.2f}x faster (wall-clock medians; "
            f"{res['cpu_speedup_vs_fastest_peer']:.2f}x in process CPU time).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from sparsespike.runtime import tune_allocator

    tune_allocator()  # every method gets the same allocator (runtime.py)
    ap = argparse.ArgumentParser(prog="sparsespike bench peers", description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args(argv)
    run(a.repeats, a.threads, a.out)
    return 0
