"""The peer neurons the benchmarks time are our LIF in the peer's terms: same spikes."""

from __future__ import annotations

import pytest
import torch

from sparsespike.bench.peers import snntorch_lif, spikingjelly_lif
from sparsespike.neurons import LIFParams, lif_sequence_loop
from sparsespike.surrogate import FastSigmoid

BETA = 0.9


def _ours(cur: torch.Tensor) -> torch.Tensor:
    p = LIFParams(beta=BETA, threshold=1.0, surrogate=FastSigmoid(100.0))
    return lif_sequence_loop(cur, p)[0]


def _current(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(40, 8, 30, generator=g, dtype=torch.float64) * 0.6  # [T, B, N], a few spikes each


def test_snntorch_leaky_is_the_stated_recurrence():
    """snnTorch subtracts the threshold after the decay (the docstring of ``snntorch_lif``):
    ``V[t] = beta V[t-1] + I[t] - S[t-1]``, ``S[t] = V[t] > 1``; ours subtracts it before."""
    pytest.importorskip("snntorch")
    cur = _current()
    lif = snntorch_lif(BETA)
    mem = lif.init_leaky()
    out = []
    for t in range(cur.shape[0]):
        s, mem = lif(cur[t], mem)
        out.append(s)
    v = torch.zeros_like(cur[0])
    s_prev = torch.zeros_like(cur[0])
    want = []
    for t in range(cur.shape[0]):
        v = BETA * v + cur[t] - s_prev
        s_prev = (v > 1.0).to(cur.dtype)
        want.append(s_prev)
    want = torch.stack(want)
    assert want.sum() > 0 and want.sum() < want.numel() / 2
    torch.testing.assert_close(torch.stack(out).to(want.dtype), want)
    assert not torch.equal(want, _ours(cur))  # the one difference to our LIF


def test_spikingjelly_lifnode_matches_our_lif():
    pytest.importorskip("spikingjelly")
    cur = _current(1)
    got = spikingjelly_lif(BETA)(cur)
    want = _ours(cur)
    assert want.sum() > 0
    torch.testing.assert_close(got.to(want.dtype), want)
