"""Pins found by mutation testing of the data encoders, augmentation, event binning, splits,
Yin-Yang, IDX reading, NIR export/import and the Pareto front.

Each test checks behaviour against an independent reference: a hand count, a hand-derived
pixel map, the documented equation evaluated directly, or a documented boundary (``<`` vs
``<=``) probed exactly on it. The mutant each one kills is named in its docstring.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from idx_files import idx_bytes
from torch import nn

from sparsespike.data import (
    affine_transform,
    events_to_raster,
    latency_raster,
    latency_times,
    make_events,
    nmnist_rasters,
    random_affine,
    train_val_split,
)
from sparsespike.data.events import bin_to_raster, flat_raster_index
from sparsespike.data.idx import load_idx_dataset, parse_idx
from sparsespike.data.nmnist import check_nmnist_events, read_label_file
from sparsespike.data.yinyang import make_yinyang
from sparsespike.errors import DataError, SpikeInputError
from sparsespike.export import export_nir, import_nir, lif_to_nir, simulate_nir
from sparsespike.layers import SeqFlatten, SeqPool2d, SpikingConv2d, SpikingLinear
from sparsespike.neurons import LIFParams, lif_sequence_loop


# ------------------------------------------------------------------------------- encoding
def test_linear_latency_silent_below_is_strict() -> None:
    """``silent_below``: values ``< silent_below`` are silent, a value equal to it spikes
    (mutant: ``x <= silent_below``)."""
    x = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    t = latency_times(x, 0.0, 20.0, silent_below=0.5)
    assert math.isinf(t[0].item())
    assert t[1:].tolist() == [10.0, 5.0]  # t = 20 (1 - x)
    r = latency_raster(x, T=21, silent_below=0.5)
    assert r.sum(0).tolist() == [0.0, 1.0, 1.0]
    assert r[10, 1] == 1 and r[5, 2] == 1


def test_current_latency_offset_defaults_and_boundary() -> None:
    """``kind='current'``: ``t = t_min + tau ln(x / (x - thr))`` (Perez-Nieves & Goodman 2021,
    ``current2firing_time``), defaults tau = 20, thr = 0.2 (METHODS.md 1(b)); a spike exactly at
    ``t_max`` is kept (no spike only for ``t > t_max``). Mutants: ``t_min`` dropped, default
    threshold changed, ``t < t_max``, ``tau <= 0`` accepted."""
    x = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    t = latency_times(x, 5.0, 100.0, kind="current")
    assert t[0].item() == pytest.approx(5.0 + 20.0 * math.log(1.0 / 0.8), rel=1e-12)
    assert t[1].item() == pytest.approx(5.0 + 20.0 * math.log(0.5 / 0.3), rel=1e-12)
    assert t[2].item() == pytest.approx(5.0 + 20.0 * math.log(0.25 / 0.05), rel=1e-12)  # 0.25 > 0.2 spikes
    # x = 1, thr = 0.5: x / (x - thr) = 2 exactly, so t = tau ln 2; at t_max exactly it spikes
    one = torch.tensor([1.0], dtype=torch.float64)
    t_edge = float(20.0 * torch.log(torch.tensor([2.0], dtype=torch.float64))[0])
    assert latency_times(one, 0.0, t_edge, kind="current", tau=20.0, thr=0.5).item() == t_edge
    assert math.isinf(latency_times(one, 0.0, t_edge * (1 - 1e-12), kind="current", tau=20.0, thr=0.5).item())
    for bad_tau in (0.0, -1.0):
        with pytest.raises(SpikeInputError):
            latency_times(one, kind="current", tau=bad_tau)


def test_latency_refuses_t_max_just_below_t_min() -> None:
    """``need finite t_min <= t_max``: t_max = 0.5 < t_min = 1 is refused (mutant: off by one)."""
    with pytest.raises(SpikeInputError):
        latency_times(torch.rand(3), t_min=1.0, t_max=0.5)
    assert latency_times(torch.tensor([0.5]), t_min=1.0, t_max=1.0).item() == 1.0  # equal is fine


# ------------------------------------------------------------------------------- augmentation
def test_affine_90_degrees_on_a_non_square_image() -> None:
    """Docstring geometry: output pixel p takes the input at ``R(-a) p`` in centred pixel
    coordinates (x right, y down). On H = 12, W = 16 with a = 90: centred (x, y) = (j - 7.5,
    i - 5.5) reads (x', y') = (y, -x), i.e. ``out[i, j] = in[13 - j, i + 2]`` (zero outside).
    Mutants: the aspect factors ``sx/sy`` of the rotation swapped (only seen on non-square)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 12, 16, generator=g)
    out = affine_transform(x, torch.full((2,), 90.0), torch.zeros(2, 2))
    ref = torch.zeros_like(x)
    for i in range(12):
        for j in range(16):
            r, c = 13 - j, i + 2
            if 0 <= r < 12 and 0 <= c < 16:
                ref[:, i, j] = x[:, r, c]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_affine_rotation_then_shift() -> None:
    """Rotation about the centre first, then the shift ``d``: a = 90 and d = (1, 2) equals
    ``rot90(x, -1)`` moved 1 px right and 2 px down (mutants: signs of the rotated shift)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 16, 16, generator=g)
    out = affine_transform(x, torch.full((3,), 90.0), torch.tensor([[1.0, 2.0]] * 3))
    rot = torch.rot90(x, -1, (-2, -1))
    ref = torch.zeros_like(x)
    ref[:, 2:, 1:] = rot[:, :-2, :-1]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_affine_fill_value() -> None:
    """``fill``: pixels from outside the input take the fill value (mutant: fill not added back)."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 6, 8, generator=g)
    out = affine_transform(x, torch.zeros(2), torch.tensor([[1.0, 0.0]] * 2), fill=0.25)
    torch.testing.assert_close(out[:, :, 1:], x[:, :, :-1], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, :, 0], torch.full((2, 6), 0.25), atol=1e-6, rtol=0)


def _centre_of_mass(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = a.shape[-2:]
    m = a.sum((-2, -1))
    cy = (a.sum(-1) * torch.arange(float(h))).sum(-1) / m
    cx = (a.sum(-2) * torch.arange(float(w))).sum(-1) / m
    return cy, cx


def test_random_shift_ranges_follow_width_and_height() -> None:
    """Shifts ``(dx, dy) ~ U(-max_shift, max_shift) * (W, H)``: on a 12 x 60 image with 25 %,
    |dx| reaches ~15 px both ways and |dy| stays <= 3 px (mutants: W and H swapped, draws in
    [0, 1) instead of [-1, 1))."""
    x = torch.zeros(200, 12, 60)
    x[:, 5:7, 29:31] = 1.0  # 2x2 blob at the centre (5.5, 29.5)
    out = random_affine(x, max_shift=0.25, max_rotation=0.0, generator=torch.Generator().manual_seed(0))
    cy, cx = _centre_of_mass(out)
    dy, dx = cy - 5.5, cx - 29.5
    assert dy.abs().max() <= 3.0 + 1e-4 and dx.abs().max() <= 15.0 + 1e-4
    assert dx.max() > 10.0 and dx.min() < -10.0
    assert dy.max() > 2.0 and dy.min() < -2.0


def _bar_angle_deg(a: torch.Tensor) -> torch.Tensor:
    """Orientation of the principal axis of each image's mass (degrees, in (-90, 90])."""
    h, w = a.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
    m = a.sum((-2, -1))
    cx, cy = (a * xx).sum((-2, -1)) / m, (a * yy).sum((-2, -1)) / m
    dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
    vxx, vyy, vxy = ((a * dx * dx).sum((-2, -1)), (a * dy * dy).sum((-2, -1)), (a * dx * dy).sum((-2, -1)))
    return torch.rad2deg(0.5 * torch.atan2(2 * vxy, vxx - vyy))


def test_random_rotation_range() -> None:
    """Angles ``a ~ U(-max_rotation, max_rotation)``: a centred horizontal bar rotated with
    max 60 degrees reaches beyond +-50 both ways and never beyond 60 (mutants: half the range,
    one-sided draws)."""
    x = torch.zeros(200, 41, 41)
    x[:, 20, 8:33] = 1.0
    out = random_affine(x, max_shift=0.0, max_rotation=60.0, generator=torch.Generator().manual_seed(0))
    ang = _bar_angle_deg(out)
    assert ang.abs().max() <= 62.0
    assert ang.max() > 50.0 and ang.min() < -50.0


def test_random_affine_bounds_are_inclusive_where_documented() -> None:
    """``0 <= max_shift < 1`` and ``0 <= max_rotation <= 180`` (mutants: ``< 180``, ``<= 1``)."""
    x = torch.zeros(2, 8, 8)
    assert random_affine(x, max_shift=0.0, max_rotation=180.0).shape == x.shape
    with pytest.raises(SpikeInputError):
        random_affine(x, max_shift=1.0)


# ------------------------------------------------------------------------------- split
def test_split_sizes_round_to_nearest() -> None:
    """``round(n * val_fraction)`` validation samples, per class when stratified (hand counts:
    10 * 0.37 = 3.7 -> 4; classes of 9 and 11 at 0.3 -> 2.7 -> 3 and 3.3 -> 3). Mutant: floor."""
    tr, va = train_val_split(10, 0.37, seed=0)
    assert len(va) == 4 and len(tr) == 6
    labels = torch.tensor([0] * 9 + [1] * 11)
    _, va = train_val_split(20, 0.3, seed=0, labels=labels)
    assert torch.bincount(labels[va]).tolist() == [3, 3]


def test_stratified_split_depends_on_the_seed() -> None:
    """A stratified split is a random draw per class, not the first members (mutant: no shuffle)."""
    labels = torch.tensor([0, 1] * 50)
    va = [train_val_split(100, 0.2, seed=s, labels=labels)[1] for s in (0, 1)]
    assert not torch.equal(va[0], va[1])
    assert all(torch.bincount(labels[v]).tolist() == [10, 10] for v in va)
    first = torch.cat([torch.arange(0, 20, 2), torch.arange(1, 21, 2)]).sort().values
    assert not torch.equal(va[0], first)


# ------------------------------------------------------------------------------- Yin-Yang
def test_yinyang_refuses_overlapping_dots() -> None:
    """``need 0 < r_small < r_big / 2`` (mutant: r_small up to r_big accepted)."""
    for r_small in (0.25, 0.3):
        with pytest.raises(ValueError):
            make_yinyang(3, 0, r_small=r_small, r_big=0.5)


# ------------------------------------------------------------------------------- events
def test_event_units_on_a_non_square_sensor() -> None:
    """Unit ``x + W*y + W*H*p`` with ``size = (W, H) = (5, 3)``: hand counts 4 + 5*2 + 15 = 29,
    n_units = 30; y = 3 is outside (H = 3) even though y < W. Mutants: ``W*W*p``, ``y >= W``."""
    ev = make_events([4, 1], [2, 0], [1, 0], [0, 1000])
    r = events_to_raster(ev, T=2, dt_us=1000, size=(5, 3))
    assert r.shape == (2, 30)
    assert r[0, 29] == 1 and r[1, 1] == 1 and r.sum() == 2
    with pytest.raises(SpikeInputError, match="outside the sensor"):
        events_to_raster(make_events([0], [3], [0], [0]), T=2, dt_us=1000, size=(5, 3))


def test_polarity_count_and_range() -> None:
    """``C = polarities * W * H``; a polarity >= polarities is refused (mutants: C always 2*W*H,
    polarity not range-checked)."""
    ev = make_events([1], [1], [0], [0])
    assert events_to_raster(ev, T=3, dt_us=1000, size=(4, 4), polarities=1).shape == (3, 16)
    with pytest.raises(SpikeInputError, match="outside the sensor"):
        events_to_raster(make_events([0], [0], [2], [0]), T=10, dt_us=1000, size=(4, 4))


def test_negative_time_bins_are_dropped() -> None:
    """Only bins ``0 <= bin < T`` are kept: t = -600 us rounds to bin -1 (dropped), t = -400 us
    to bin 0 (kept). Mutant: the ``bin >= 0`` test removed."""
    ev = make_events([0, 1], [0, 0], [0, 0], [-600, -400])
    r = events_to_raster(ev, T=4, dt_us=1000, size=(2, 1), polarities=1)
    assert r.tolist() == [[0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    assert flat_raster_index(np.array([-1, 0, 3, 4]), np.array([1, 1, 1, 1]), 4, 2).tolist() == [1, 7]


def test_uint8_counts_saturate_at_255() -> None:
    """Without clamp, uint8 counts saturate at 255 (300 events in one bin give 255, not 300 mod
    256 = 44). Mutant: no saturation."""
    assert bin_to_raster(np.zeros(300, dtype=np.int64), 1, 2, clamp=False, dtype=np.uint8).tolist() == [[255, 0]]
    ev = make_events([0] * 300, [0] * 300, [0] * 300, [0] * 300)
    assert int(nmnist_rasters([ev], T=2, clamp=False)[0, 0, 0]) == 255


def test_nmnist_event_checks() -> None:
    """N-MNIST events must fit the 34 x 34 sensor and be time-ordered; labels are 0-9
    (mutants: x = 34 accepted, time order not checked, label 10 accepted)."""
    ok = make_events([33], [33], [1], [5])
    assert check_nmnist_events(ok, "ok") is ok
    with pytest.raises(DataError, match="x, y < 34"):
        check_nmnist_events(make_events([34], [0], [0], [0]), "x34")
    with pytest.raises(DataError, match="decrease"):
        check_nmnist_events(make_events([0, 0], [0, 0], [0, 0], [10, 9]), "back")


def test_label_file_refuses_label_10(tmp_path: Path) -> None:
    """``<sample id> <class 0-9>`` (mutant: 10 accepted)."""
    p = tmp_path / "labels.txt"
    p.write_text("#sample #class\n1 9\n")
    assert read_label_file(p)[1].tolist() == [9]
    p.write_text("#sample #class\n1 10\n")
    with pytest.raises(DataError):
        read_label_file(p)


# ------------------------------------------------------------------------------- IDX
def test_parse_idx_refuses_bad_headers_and_trailing_bytes() -> None:
    """The magic is ``0x00 0x00 TT NN`` with NN >= 1; the payload is exactly the header's size.
    Mutants: trailing bytes accepted, 0 dimensions accepted, second magic byte not checked."""
    good = idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert parse_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(DataError, match="payload"):
        parse_idx(good + b"\x00")
    with pytest.raises(DataError, match="magic"):
        parse_idx(b"\x00\x00\x08\x00\x05")
    with pytest.raises(DataError, match="magic"):
        parse_idx(b"\x00\x01" + good[2:])


def test_idx_dataset_refuses_label_10(tmp_path: Path) -> None:
    """MNIST labels are 0..9 (mutant: 10 accepted). Uncompressed files, no digest involved."""
    d = tmp_path / "mnist"
    d.mkdir()
    (d / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((10000, 28, 28), np.uint8)))
    labels = np.zeros(10000, np.uint8)
    (d / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    _, y = load_idx_dataset(tmp_path, "mnist", train=False)
    assert int(y.max()) == 0
    labels[17] = 10
    (d / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(DataError, match="out of range"):
        load_idx_dataset(tmp_path, "mnist", train=False)


# ------------------------------------------------------------------------------- NIR export
def _nir() -> Any:
    """The ``nir`` package, or skip (it is an optional dependency)."""
    return pytest.importorskip("nir", reason="the optional 'nir' package is not installed")


def _spikes(shape: tuple[int, ...], T: int = 20, B: int = 3, p: float = 0.4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, *shape, generator=g) < p).float()


def _chain(*nodes: tuple[str, object], n_in: int, n_out: int) -> Any:
    nir = _nir()
    names = ["in", *(n for n, _ in nodes), "out"]
    all_nodes = {
        "in": nir.Input(input_type={"input": np.array([n_in])}),
        **dict(nodes),
        "out": nir.Output(output_type={"output": np.array([n_out])}),
    }
    return nir.NIRGraph(nodes=all_nodes, edges=list(zip(names, names[1:], strict=False)))


def test_if_layer_with_dt_not_one_round_trips_through_the_nir_equations() -> None:
    """beta = 1 is an ``IF`` node with ``r = 1/dt`` (export docstring table), simulated as
    ``v += dt R I``: with dt = 1e-3 the NIR equations give our spikes (Yin et al. eqs. 3-4 with
    beta = 1). Mutants: ``r = dt``, the simulator's ``dt`` factor dropped."""
    _nir()
    torch.manual_seed(0)
    net = nn.Sequential(
        SpikingLinear(6, 5, LIFParams(beta=1.0, threshold=1.0, reset="zero"), impl="torch", weight_scale=2.0)
    )
    kind, kw = lif_to_nir(LIFParams(beta=1.0), (2,), dt=1e-3)
    assert kind == "IF" and np.allclose(kw["r"] * 1e-3, 1.0)
    g = export_nir(net, (6,), dt=1e-3)
    x = _spikes((6,))
    with torch.no_grad():
        y = net(x)
    assert y.sum() > 0
    assert np.array_equal(simulate_nir(g, x, reset="nir")["lif0"], y.numpy())


def test_foreign_if_and_cubalif_gains_fold_into_the_weights() -> None:
    """A foreign graph (r = 1, w_in = 1, so per-step gains ``dt R`` for IF and
    ``(dt w_in / tau_syn)(dt R / tau_mem)`` for CubaLIF under forward Euler) imports exactly:
    its spikes equal the NIR reference simulation. Mutants: IF gain without ``dt``, the
    synaptic gain of CubaLIF dropped."""
    nir = _nir()
    rng = np.random.default_rng(1)
    dt = 1e-3
    w1 = rng.normal(0, 1.0, (5, 4)).astype(np.float32)
    w2 = rng.normal(0, 1.0, (3, 5)).astype(np.float32)
    g = _chain(
        ("a", nir.Linear(weight=w1)),
        ("b", nir.IF(r=np.full(5, 200.0), v_threshold=np.full(5, 0.3), v_reset=np.zeros(5))),
        ("c", nir.Linear(weight=w2)),
        ("d", nir.CubaLIF(tau_syn=np.full(3, 4e-3), tau_mem=np.full(3, 5e-3), r=np.ones(3), v_leak=np.zeros(3),
                          v_threshold=np.full(3, 0.02), v_reset=np.zeros(3), w_in=np.ones(3))),
        n_in=4, n_out=3,
    )  # fmt: skip
    net = import_nir(g, dt=dt, impl="torch")
    assert net[0].neuron.beta == 1.0
    assert net[1].neuron.alpha == pytest.approx(0.75) and net[1].neuron.beta == pytest.approx(0.8)
    x = _spikes((4,), T=30, p=0.5, seed=2)
    sim = simulate_nir(g, x, dt=dt, mapping="euler")
    with torch.no_grad():
        h = net[0](x)
        y = net[1](h)
    assert h.sum() > 0 and y.sum() > 0
    assert np.array_equal(h.numpy(), sim["b"]) and np.array_equal(y.numpy(), sim["d"])


def test_foreign_affine_bias_is_scaled_with_the_gain() -> None:
    """With a step gain ``dt R / tau`` != 1 the bias of an ``Affine`` is folded like the weights
    (mutant: only the weights scaled)."""
    nir = _nir()
    rng = np.random.default_rng(3)
    dt = 1e-3
    w = rng.normal(0, 1.0, (4, 3)).astype(np.float32)
    b = np.array([0.3, -0.2, 0.25, 0.1], dtype=np.float32)
    g = _chain(
        ("a", nir.Affine(weight=w, bias=b)),
        ("b", nir.LIF(tau=np.full(4, 5e-3), r=np.ones(4), v_leak=np.zeros(4), v_threshold=np.full(4, 0.1),
                      v_reset=np.zeros(4))),
        n_in=3, n_out=4,
    )  # fmt: skip
    net = import_nir(g, dt=dt, impl="torch")
    x = _spikes((3,), T=25, p=0.3, seed=4)
    with torch.no_grad():
        y = net[0](x)
    assert y.sum() > 0
    assert np.array_equal(y.numpy(), simulate_nir(g, x, dt=dt, mapping="euler")["b"])


def test_spike_needs_v_strictly_above_threshold_in_the_reference_simulator() -> None:
    """Spikes are ``v > v_threshold`` (simulate_nir docstring; ours: S = H(V - thr) with
    H(0) = 0). beta = 0.5, thr = 1, weight 1 (tau = 2, R = 2): an input spike makes
    v = 0 + 0.5 (2 * 1 - 0) = 1 exactly, no spike; then v = 0.5, and the next input spike gives
    1.25, a spike (hand count). Mutant: ``v >= thr``."""
    _nir()
    net = nn.Sequential(SpikingLinear(1, 1, LIFParams(beta=0.5, threshold=1.0, reset="zero"), impl="torch"))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    g = export_nir(net, (1,))
    x = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0]).reshape(5, 1, 1)
    with torch.no_grad():
        y = net(x)
    assert y.reshape(-1).tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert simulate_nir(g, x, reset="nir")["lif0"].reshape(-1).tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_simulator_leaks_towards_v_leak() -> None:
    """NIR LI: ``tau dv/dt = (v_leak - v) + R I``; forward Euler with dt = 1, tau = 2, no input:
    v = 0.5, 0.75, 0.875 for v_leak = 1 (hand count). Mutant: v_leak ignored."""
    nir = _nir()
    g = _chain(
        ("a", nir.Linear(weight=np.zeros((1, 1), np.float32))),
        ("b", nir.LI(tau=np.full(1, 2.0), r=np.ones(1), v_leak=np.ones(1))),
        n_in=1, n_out=1,
    )  # fmt: skip
    v = simulate_nir(g, np.zeros((3, 1, 1)), dt=1.0, mapping="euler")["b"].reshape(-1)
    assert v.tolist() == [0.5, 0.75, 0.875]


def test_import_refuses_leak_potential_and_non_max_pooling() -> None:
    """Our neurons leak to 0 (``v_leak != 0`` refused); pooling needs stride = kernel; a
    SumPool2d + Threshold is max pooling of spikes only for a threshold in [0, 1) (at 1 it needs
    two spikes). Mutants: the v_leak check, the stride check, ``thr <= 1``."""
    nir = _nir()
    o = np.ones(3)
    leaky = _chain(
        ("a", nir.Linear(weight=np.ones((3, 4), np.float32))),
        ("b", nir.LIF(tau=5 * o, r=o, v_leak=0.1 * o, v_threshold=o, v_reset=0 * o)),
        n_in=4, n_out=3,
    )  # fmt: skip
    with pytest.raises(Exception, match="v_leak"):
        import_nir(leaky, dt=1.0)
    net = nn.Sequential(
        SpikingConv2d(1, 2, 3, LIFParams(beta=0.5, reset="zero"), padding=1, impl="torch"),
        SeqPool2d(2, "max"),
        SeqFlatten(),
    )
    g = export_nir(net, (1, 4, 4))
    import_nir(g)  # as exported: fine
    g.nodes["pool1_thr"] = nir.Threshold(threshold=np.ones_like(np.asarray(g.nodes["pool1_thr"].threshold)))
    with pytest.raises(Exception, match=r"\[0, 1\)"):
        import_nir(g)
    net = nn.Sequential(
        SpikingConv2d(1, 2, 3, LIFParams(beta=0.5, reset="zero"), padding=1, impl="torch"),
        SeqPool2d(2, "avg"),
        SeqFlatten(),
    )
    g = export_nir(net, (1, 4, 4))
    p = g.nodes["pool1"]
    g.nodes["pool1"] = nir.AvgPool2d(kernel_size=p.kernel_size, stride=np.array([1, 1]), padding=p.padding)
    with pytest.raises(Exception, match="stride"):
        import_nir(g)


def test_edited_fields_win_over_stale_metadata() -> None:
    """Metadata is used only when it agrees with the node's fields; an edited tau or threshold
    makes the importer warn and follow the fields (mutants: the beta / threshold agreement
    checks dropped)."""
    nir = _nir()
    net = nn.Sequential(SpikingLinear(4, 3, LIFParams(beta=0.9, threshold=0.5, reset="zero"), impl="torch"))
    g = export_nir(net, (4,))
    lif = g.nodes["lif0"]
    g.nodes["lif0"] = nir.LIF(tau=np.full(3, 5.0), r=np.full(3, 5.0), v_leak=lif.v_leak, v_threshold=lif.v_threshold,
                              v_reset=lif.v_reset, metadata=dict(lif.metadata))  # fmt: skip
    with pytest.warns(UserWarning, match="disagrees"):
        m = import_nir(g)
    assert m[0].neuron.beta == pytest.approx(0.8)  # 1 - dt / tau
    g = export_nir(net, (4,))
    lif = g.nodes["lif0"]
    g.nodes["lif0"] = nir.LIF(tau=lif.tau, r=lif.r, v_leak=lif.v_leak, v_threshold=np.full(3, 0.7),
                              v_reset=lif.v_reset, metadata=dict(lif.metadata))  # fmt: skip
    with pytest.warns(UserWarning, match="disagrees"):
        m = import_nir(g)
    assert m[0].neuron.threshold == pytest.approx(0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert import_nir(export_nir(net, (4,)))[0].neuron.threshold == 0.5  # unedited: no warning


# ------------------------------------------------------------------------------- Pareto report
def test_finalize_pareto_front_order_first_completion_and_reference_dominance(tmp_path: Path, monkeypatch) -> None:
    """Hand-built study (accuracy, SynOps): slots t0 (0.9, 300), t1 (0.5, 50), t2 failed and
    retried twice, both retries finishing ((0.7, 100) first, (0.1, 10) later), t3 (0.4, 200).
    A slot's point is its first COMPLETE trial, so the front is t1, first retry, t0 (ordered by
    SynOps; t3 is dominated by the retry); reference (0.3, 400) is dominated by the front,
    reference (0.95, 20) is not. Mutants: the last completion wins, the front in slot order,
    the dominance test reversed."""
    optuna = pytest.importorskip("optuna")
    from optuna.trial import TrialState

    import sparsespike.pareto as pareto
    from sparsespike.sweep import _retry

    spec = pareto.ParetoSpec.from_dict(
        {
            "name": "pins_pareto",
            "kind": "pareto",
            "config": "demo_yinyang",
            "seed": 0,
            "trials": 4,
            "space": {"model.b_th": {"uniform": [0.1, 0.4]}},
            "references": {"dense_ce": {"model.gates": None}, "l0_only": {"train.regularizers": []}},
        }
    )
    study = optuna.create_study(directions=["maximize", "minimize"])

    def finish(t: Any, acc: float, syn: float, ref: str | None = None) -> None:
        if ref is None:
            spec.space["model.b_th"].suggest(t, "model.b_th")
        else:
            t.set_user_attr("reference", ref)
        t.set_user_attr("epochs", [{"epoch": 1, "val_acc": acc, "val_synops": syn, "val_spikes": 1.0}])
        t.set_user_attr("run_dir", str(tmp_path / "trials" / f"n{t.number}"))
        study.tell(t, [acc, syn])

    finish(study.ask(), 0.9, 300.0)  # trial 0
    finish(study.ask(), 0.5, 50.0)  # trial 1
    failed = study.ask()  # trial 2
    spec.space["model.b_th"].suggest(failed, "model.b_th")
    study.tell(failed, state=TrialState.FAIL)
    finish(study.ask(), 0.4, 200.0)  # trial 3
    frozen = study.get_trials()[failed.number]
    _retry(study, frozen, 2)
    _retry(study, frozen, 2)
    first_retry, second_retry = study.ask(), study.ask()  # trials 4, 5
    finish(first_retry, 0.7, 100.0)
    finish(second_retry, 0.1, 10.0)
    finish(study.ask(), 0.3, 400.0, ref="dense_ce")
    finish(study.ask(), 0.95, 20.0, ref="l0_only")

    def fake_eval(spec: Any, cfg: Any, run_dir: Any, epoch: int, data_dir: Any = None) -> dict:
        return {"test_acc": 0.5, "test_spikes": 1.0, "test_synops": 1.0, "test_ns": 1.0, "test_samples": 10}

    monkeypatch.setattr(pareto, "evaluate_run", fake_eval)
    res = pareto.finalize_pareto(spec, tmp_path, study, log=lambda *a: None)
    assert res["front"] == [1, first_retry.number, 0]
    slot2 = next(p for p in res["points"] if p["slot"] == "t0002")
    assert (slot2["val_acc"], slot2["val_synops"], slot2["trial"]) == (0.7, 100.0, first_retry.number)
    refs = {p["reference"]: p["dominated_by_front"] for p in res["points"] if p["role"] == "reference"}
    assert refs == {"dense_ce": True, "l0_only": False}


def test_search_sampler_draws_a_new_point_per_trial() -> None:
    """Each search trial gets its own sampler seed, derived from (spec seed, trial number): the
    random start samples distinct points, and the same spec seed repeats them (mutant: the seed
    ignores the trial number, so every trial sampled the same parameters)."""
    optuna = pytest.importorskip("optuna")
    import sparsespike.pareto as pareto

    def draws(seed: int) -> list[tuple[float, float]]:
        spec = pareto.ParetoSpec.from_dict(
            {
                "name": "pins_sampler",
                "kind": "pareto",
                "config": "demo_yinyang",
                "seed": seed,
                "trials": 12,
                "sampler": "nsga2",
                "space": {"model.b_th": {"uniform": [0.1, 0.4]}, "train.optimizer.lr": {"log": [1e-4, 1e-1]}},
            }
        )
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=spec.make_sampler())
        out = []
        for _ in range(3):
            t = study.ask()
            p = {k: d.suggest(t, k) for k, d in spec.space.items()}
            out.append((p["model.b_th"], p["train.optimizer.lr"]))
            study.tell(t, [0.5, 1.0])
        return out

    a = draws(0)
    assert len(set(a)) == 3
    assert draws(0) == a and draws(1) != a


# ------------------------------------------------------------------------------- sparse inference
@pytest.mark.parametrize("reset,alpha", [("zero", None), ("subtract", None), ("subtract", 0.5), ("zero", 0.5)])
def test_inference_lif_kernels_do_not_spike_at_exact_threshold(reset: str, alpha: float | None) -> None:
    """Dyadic currents (multiples of 1/8, beta = alpha = 0.5, thr = 0.5) make ``V == thr``
    exactly at many steps; the forward-only kernels must not spike there, as the README
    recurrence ``S = H(V - thr)`` with H(0) = 0 (reference: the per-step loop
    ``lif_sequence_loop``, itself pinned at the tie in test_pins_kernels; the random currents of
    the other tests never hit the tie). Mutants: ``v - thr >= 0`` in the inference
    LIF kernels."""
    from sparsespike.sparse_inference import lif_inference, lif_pool_inference

    g = torch.Generator().manual_seed(0)
    cur = torch.randint(0, 5, (10, 2, 3, 4, 4), generator=g).double() * 0.125
    p = LIFParams(beta=0.5, alpha=alpha, threshold=0.5, reset=reset)
    ref, v = lif_sequence_loop(cur, p)
    assert int((v == 0.5).sum()) > 20 and ref.sum() > 20
    assert torch.equal(lif_inference(cur, p), ref)
    assert torch.equal(lif_pool_inference(cur, p, 1), ref)
    pooled = ref.reshape(20, 3, 2, 2, 2, 2).sum((3, 5)).reshape(10, 2, 3, 2, 2) / 4
    assert torch.equal(lif_pool_inference(cur, p, 2, "avg"), pooled)


@pytest.mark.parametrize("mode", ["max", "mean", "sum", "last"])
def test_sparse_twin_of_a_leaky_readout_equals_the_dense_model(mode: str) -> None:
    """A pruned SpikingLinear + LeakyReadout (beta = 0.8) and its sparse inference twin give the
    same logits with every kernel, for every readout mode (no other test converts a
    LeakyReadout; mutant: the twin ignores the layer's readout mode)."""
    from sparsespike.layers import LeakyReadout
    from sparsespike.sparse_inference import SparseLeakyReadout, sparse_inference_model

    torch.manual_seed(0)
    net = nn.Sequential(
        SpikingLinear(12, 10, LIFParams(beta=0.9, threshold=0.5, reset="zero"), weight_scale=3.0),
        LeakyReadout(10, 4, beta=0.8, mode=mode),
    ).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net:
            m.weight.mul_((torch.rand(m.weight.shape, generator=g) < 0.4).double())
    x = (torch.rand(15, 3, 12, generator=g) < 0.3).double()
    with torch.no_grad():
        ref = net(x)
        assert net[0](x).sum() > 0
    for k in ("dense", "csr", "event", "event_vec"):
        fast = sparse_inference_model(net, kernels=k)
        assert isinstance(fast[1], SparseLeakyReadout)
        torch.testing.assert_close(fast(x), ref, rtol=0, atol=1e-12)
