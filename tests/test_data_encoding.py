"""Spike encodings: Perez-Nieves' firing-time code, linear latency, Bernoulli rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparsespike.data import (
    firing_time_raster,
    firing_times,
    latency_raster,
    latency_times,
    rate_raster,
)
from sparsespike.errors import SpikeInputError


def _reference_current2firing_time(x, tau=20.0, thr=0.2, tmax=1.0, epsilon=1e-7):
    """npvoid/SparseSpikingBackprop train_and_time.py, reproduced for comparison."""
    idx = x < thr
    x = np.clip(x, thr + epsilon, 1e9)
    t = tau * np.log(x / (x - thr))
    t[idx] = tmax
    return t


def test_firing_time_raster_matches_reference_for_every_pixel_value() -> None:
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 256)
    r = firing_time_raster(pixels, T=100)
    assert r.shape == (100, 1, 256) and r.dtype == torch.float32
    ref = np.array(_reference_current2firing_time(np.arange(256) / 255, tmax=100), dtype=int)
    spikes = r.sum(0)[0]
    assert torch.equal(spikes > 0, torch.from_numpy(ref < 100))
    assert spikes.max() == 1  # at most one spike per pixel
    steps = r[:, 0].argmax(0)
    assert torch.equal(steps[ref < 100], torch.from_numpy(ref[ref < 100]))
    assert steps[255] == 4 and steps[52] == 79 and spikes[:52].sum() == 0


def test_firing_time_raster_on_images_and_floats() -> None:
    img = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    r = firing_time_raster(img.view(5, -1), T=100)
    assert r.shape == (100, 5, 784)
    assert torch.equal(r.sum(0) > 0, img.view(5, -1) > 51)
    assert torch.equal(firing_time_raster(img.float() / 255, T=100), firing_time_raster(img))
    short = firing_time_raster(img, T=10)  # late spikes dropped, not moved to T-1
    assert torch.equal(short.sum(0) > 0, firing_times(img) < 10)
    assert math.isinf(firing_times(torch.tensor([0.2], dtype=torch.float64)).item())


def test_linear_latency_times() -> None:
    x = torch.tensor([0.0, 0.25, 1.0])
    assert latency_times(x, 0.0, 20.0).tolist() == [20.0, 15.0, 0.0]
    assert latency_times(x, 2.0, 30.0, direction="bright_late").tolist() == [2.0, 9.0, 30.0]
    t = latency_times(x, 0.0, 20.0, silent_below=0.1)
    assert math.isinf(t[0].item()) and t[2].item() == 0.0
    img = torch.tensor([255, 0], dtype=torch.uint8)
    assert latency_times(img, 0.0, 20.0).tolist() == [0.0, 20.0]


def test_current_latency_times() -> None:
    x = torch.tensor([1.0, 0.5, 0.2, 0.1], dtype=torch.float64)
    t = latency_times(x, 0.0, 100.0, kind="current", tau=20.0, thr=0.2)
    assert t[0].item() == pytest.approx(20 * math.log(1 / 0.8))
    assert t[1].item() == pytest.approx(20 * math.log(0.5 / 0.3))
    assert math.isinf(t[2].item()) and math.isinf(t[3].item())
    with pytest.raises(SpikeInputError):
        latency_times(x, kind="current", direction="bright_late")


def test_latency_raster() -> None:
    x = torch.rand(3, 7)
    r = latency_raster(x, T=21)
    assert r.shape == (21, 3, 7) and torch.equal(r.sum(0), torch.ones(3, 7))
    expected = torch.floor(latency_times(x, 0.0, 20.0))
    assert torch.equal(r.argmax(0).float(), expected)
    r2 = latency_raster(x, T=21, silent_below=0.5)
    assert torch.equal(r2.sum(0) > 0, x >= 0.5)


def test_rate_raster_seeded_and_unbiased() -> None:
    x = torch.tensor([[0.0, 0.1, 0.5, 1.0]])
    g1 = torch.Generator().manual_seed(123)
    g2 = torch.Generator().manual_seed(123)
    a, b = rate_raster(x, 4000, g1), rate_raster(x, 4000, g2)
    assert a.shape == (4000, 1, 4) and torch.equal(a, b)
    rate = a.mean(0)[0]
    assert rate[0] == 0 and rate[3] == 1
    assert abs(rate[1] - 0.1) < 0.02 and abs(rate[2] - 0.5) < 0.03
    c = rate_raster(x, 4000, torch.Generator().manual_seed(124))
    assert not torch.equal(a, c)


@pytest.mark.parametrize(
    "bad",
    [torch.tensor([0.5, float("nan")]), torch.tensor([1.5]), torch.tensor([-0.1]),
     torch.tensor([1, 2]), torch.tensor([0.5, float("inf")])],
)  # fmt: skip
def test_invalid_inputs(bad: torch.Tensor) -> None:
    with pytest.raises(SpikeInputError):
        rate_raster(bad, 5)
    with pytest.raises(SpikeInputError):
        latency_times(bad)


def test_invalid_arguments() -> None:
    x = torch.rand(3)
    with pytest.raises(SpikeInputError):
        latency_times(x, direction="sideways")
    with pytest.raises(SpikeInputError):
        latency_times(x, t_min=5.0, t_max=1.0)
    with pytest.raises(SpikeInputError):
        rate_raster(x, 0)
    with pytest.raises(SpikeInputError):
        latency_raster(x, T=0)


def test_raster_carries_its_spike_list():
    """The one-spike-per-input raster attaches the spike list a sparse first layer would scan
    for (same pointers and indices), and that layer gives the same spikes and gradients with it."""
    from sparsespike.kernels.sparse import get_meta, spike_list
    from sparsespike.layers import SpikingLinear
    from sparsespike.neurons import LIFParams

    g = torch.Generator().manual_seed(1)
    imgs = (torch.rand(9, 60, generator=g) * 255).to(torch.uint8)
    imgs[3] = 0  # a sample without spikes
    x = firing_time_raster(imgs, T=40)
    meta = get_meta(x)
    assert meta is not None and meta.active is None
    ref = spike_list(x.clone())  # a copy carries no list: scanned
    assert torch.equal(meta.spike_list().ptr, ref.ptr) and torch.equal(meta.spike_list().idx, ref.idx)
    assert int(meta.spike_list().ptr[4] - meta.spike_list().ptr[3]) == 0
    lay = SpikingLinear(60, 12, LIFParams(beta=0.9), backward="sparse", b_th=0.3)
    with torch.no_grad():
        lay.weight.mul_(4)
    outs = []
    for inp in (x, x.clone()):
        s = lay(inp)
        (gw,) = torch.autograd.grad((s * torch.arange(12.0)).sum(), lay.weight)
        outs.append((s, gw))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.allclose(outs[0][1], outs[1][1])
    x.add_(0)  # an in-place change invalidates the attached list
    assert get_meta(x) is None


def test_image_raster_list_survives_flatten():
    """``[B, H, W]`` images: the list is over the flattened features and follows ``SeqFlatten``."""
    from sparsespike.kernels.sparse import get_meta, spike_list
    from sparsespike.layers import SeqFlatten

    g = torch.Generator().manual_seed(2)
    x = firing_time_raster((torch.rand(5, 6, 10, generator=g) * 255).to(torch.uint8), T=30)
    assert x.shape == (30, 5, 6, 10) and get_meta(x).shape[2] == 60 and get_meta(x).spike_list().F == 60
    y = SeqFlatten()(x)
    ref = spike_list(y.clone())
    assert get_meta(y) is not None and torch.equal(get_meta(y).spike_list().idx, ref.idx)


def test_event_raster_batch_list_from_uint8():
    """``raster_batch``: the float time-major raster of a ``uint8 [B, T, *features]`` batch,
    with the spike list built from the bytes (8 per word read when ``T*K`` is a multiple of 8,
    a byte scan otherwise) -- equal to scanning the float raster, including counts above 1
    (kept as values) and a sample without events."""
    from sparsespike.data.encoding import raster_batch
    from sparsespike.kernels.sparse import get_meta, spike_list

    g = torch.Generator().manual_seed(3)
    for shape in ((6, 25, 2, 4, 4), (5, 7, 3)):
        x = (torch.rand(*shape, generator=g) < 0.05).to(torch.uint8)
        x[1] = 0
        x[2, 3].view(-1)[-1] = 3  # two events in one bin
        x[-1, -1].view(-1)[-1] = 255
        T, B, K = shape[1], shape[0], x[0, 0].numel()
        out = raster_batch(x)
        assert out.shape == (T, B, *shape[2:]) and out.dtype == torch.float32 and out.is_contiguous()
        assert torch.equal(out, x.transpose(0, 1).float())
        lst = get_meta(out).spike_list()
        ref = spike_list(out.reshape(T, B, K).clone())
        assert torch.equal(lst.ptr, ref.ptr) and torch.equal(lst.idx, ref.idx)
        assert lst.vals is not None and torch.equal(lst.vals, ref.vals) and lst.vals.dtype == torch.float32
        assert int(lst.ptr[2] - lst.ptr[1]) == 0 and float(lst.vals.max()) == 255.0
        assert int(lst.ptr[-1]) == int((x != 0).sum())
    with pytest.raises(SpikeInputError, match="B, T"):
        raster_batch(torch.zeros(4, 5))


@pytest.mark.parametrize("T", [4, 52, 100, 256])
def test_latency_raster_floors_the_exact_time(T):
    """floor(t) of the exact t = (1 - p/255)(T - 1): in float32, times that are whole steps came
    out a hair low and landed a step early (pixels 85 and 170 at T = 4; 159 of 256 at T = 256)."""
    from fractions import Fraction

    from sparsespike.data.encoding import latency_raster

    p = torch.arange(256, dtype=torch.uint8)
    want = [math.floor((1 - Fraction(v, 255)) * (T - 1)) for v in range(256)]
    for x in (p, p.numpy()):
        got = latency_raster(x, T=T).argmax(0)
        assert got.tolist() == want
    late = latency_raster(p, T=T, direction="bright_late").argmax(0)
    assert late.tolist() == [math.floor(Fraction(v, 255) * (T - 1)) for v in range(256)]


def test_raster_batch_list_follows_the_raster_not_the_callers_buffer():
    """The lazy spike list was built from the caller's x: reusing that buffer before a consumer
    asked for the list made it describe data that was gone."""
    from sparsespike.data.encoding import raster_batch
    from sparsespike.kernels.sparse import spike_counts

    buf = (torch.rand(2, 5, 4, generator=torch.Generator().manual_seed(0)) < 0.3).to(torch.uint8)
    r = raster_batch(buf)
    buf.zero_()
    assert float(spike_counts(r).sum()) == float(r.sum()) > 0
    for dt in (torch.float16, torch.bfloat16):  # the kernels read no half types: built from the raster
        h = raster_batch((torch.rand(2, 5, 4) < 0.3).to(dt))
        torch.testing.assert_close(spike_counts(h, per_sample=True), h.sum(0))


def test_encoded_rasters_save_and_deepcopy_without_stale_lists(tmp_path):
    """The spike-list metadata made torch.save of any encoded raster fail (a closure in the
    tensor's __dict__), and a deep copy revived a list that an in-place edit had invalidated."""
    import copy

    from sparsespike.data.encoding import firing_time_raster, raster_batch
    from sparsespike.kernels.sparse import get_meta, spike_counts

    u8 = (torch.rand(3, 10) * 255).to(torch.uint8)
    for r in (firing_time_raster(u8, T=20), raster_batch((torch.rand(2, 5, 4) < 0.5).to(torch.uint8))):
        torch.save(r, tmp_path / "r.pt")
        back = torch.load(tmp_path / "r.pt", weights_only=True)
        assert torch.equal(back, r) and get_meta(back) is None
        r.zero_()
        c = copy.deepcopy(r)
        assert get_meta(c) is None and float(spike_counts(c).sum()) == 0.0
