"""Fontanini losses (eqs. 9-15) vs hand computations; prediction/accuracy policy; encoders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparsespike.errors import ConfigError, SpikeInputError
from sparsespike.eventprop import (
    EventOutput,
    FontaniniLoss,
    as_loss,
    ce_loss,
    correct,
    cs_loss,
    encode_mnist,
    encode_yinyang,
    make_loss,
    predict,
    sp_loss,
)

INF = float("inf")
TAU0, TAU1, T = 0.5, 6.4, 30.0


def _first():
    # sample 0: neuron 2 silent; sample 1: all spike
    return torch.tensor([[1.0, 2.0, INF], [3.0, 1.5, 2.5]], dtype=torch.float64, requires_grad=True)


def test_ce_value_and_gradient_by_hand():
    t = _first()
    y = torch.tensor([0, 2])
    loss = ce_loss(t, y)
    z0 = [-1.0 / TAU0, -2.0 / TAU0, -T / TAU0]  # silent -> T
    z1 = [-3.0 / TAU0, -1.5 / TAU0, -2.5 / TAU0]

    def nll(z, k):
        return -(z[k] - math.log(sum(math.exp(v) for v in z)))

    assert loss.item() == pytest.approx((nll(z0, 0) + nll(z1, 2)) / 2, rel=1e-12)
    loss.backward()
    p0 = np.exp(z0) / np.exp(z0).sum()
    p1 = np.exp(z1) / np.exp(z1).sum()
    g = (
        np.array(
            [
                [(1 - p0[0]) / TAU0, -p0[1] / TAU0, 0.0],  # no gradient to the silent neuron
                [-p1[0] / TAU0, -p1[1] / TAU0, (1 - p1[2]) / TAU0],
            ]
        )
        / 2
    )
    np.testing.assert_allclose(t.grad.numpy(), g, rtol=1e-12, atol=1e-15)


def test_cs_as_values_and_gradients_by_hand():
    t = _first()
    y = torch.tensor([1, 0])
    cs = cs_loss(t, y)
    assert cs.item() == pytest.approx((math.expm1(2.0 / TAU1) + math.expm1(3.0 / TAU1)) / 2)
    cs.backward()
    g = np.zeros((2, 3))
    g[0, 1] = math.exp(2.0 / TAU1) / TAU1 / 2
    g[1, 0] = math.exp(3.0 / TAU1) / TAU1 / 2
    np.testing.assert_allclose(t.grad.numpy(), g, rtol=1e-12)

    t = _first()
    a = as_loss(t)
    vals = [1.0, 2.0, T, 3.0, 1.5, 2.5]
    assert a.item() == pytest.approx(sum(math.expm1(v / TAU1) for v in vals) / 6)
    a.backward()
    g = np.array([[math.exp(v / TAU1) / TAU1 / 6 for v in row] for row in ([1, 2, T], [3, 1.5, 2.5])])
    g[0, 2] = 0.0  # silent: constant
    np.testing.assert_allclose(t.grad.numpy(), g, rtol=1e-12)


def test_as_equals_cs_over_no_plus_nontarget_terms():
    """Fontanini eq. 15."""
    t = torch.tensor([[4.0, 6.0, 9.0], [5.0, 2.0, 7.0]], dtype=torch.float64)
    y = torch.tensor([2, 1])
    nt = sum(math.expm1(float(t[b, a]) / TAU1) for b in range(2) for a in range(3) if a != y[b])
    assert float(as_loss(t)) == pytest.approx(float(cs_loss(t, y)) / 3 + nt / 6, rel=1e-12)


def test_sp_value_and_gradient_by_hand():
    # layer A: neuron 0 spikes at 1, 2, 4; neuron 1 once; sample 1: neuron 1 at 5, 5.5
    la = torch.tensor(
        [[[1.0, 2.0, 4.0], [3.0, INF, INF]], [[INF, INF, INF], [5.0, 5.5, INF]]],
        dtype=torch.float64,
        requires_grad=True,
    )
    lb = torch.tensor([[[2.0, 6.0]], [[1.0, INF]]], dtype=torch.float64, requires_grad=True)
    sp = sp_loss([la, lb])
    want = ((1 / 1 + 1 / 3 + 1 / 4) + (1 / 0.5)) / 2
    assert sp.item() == pytest.approx(want, rel=1e-12)
    sp.backward()
    ga = np.zeros((2, 2, 3))
    ga[0, 0] = [1 + 1 / 9, -1.0, -1 / 9]
    ga[1, 1, :2] = [1 / 0.25, -1 / 0.25]
    gb = np.zeros((2, 1, 2))
    gb[0, 0] = [1 / 16, -1 / 16]
    np.testing.assert_allclose(la.grad.numpy(), ga / 2, rtol=1e-12)
    np.testing.assert_allclose(lb.grad.numpy(), gb / 2, rtol=1e-12)
    assert sp_loss([la, lb], per_neuron=True).item() == pytest.approx(want / 3, rel=1e-12)
    # a layer in which nobody spikes twice adds nothing
    assert float(sp_loss(torch.tensor([[[1.0], [INF]]], dtype=torch.float64))) == 0.0


def test_combined_losses():
    times = [
        torch.tensor([[[1.0, 2.0], [3.0, INF]]], dtype=torch.float64),
        torch.tensor([[[2.0, INF], [4.0, 5.0], [3.0, INF]]], dtype=torch.float64),
    ]
    out = EventOutput(times, [(torch.isfinite(t)).sum(-1) for t in times])
    y = torch.tensor([0])
    first = out.first_spikes
    ce = float(ce_loss(first, y))
    cs = float(cs_loss(first, y))
    as_ = float(as_loss(first))
    sp = float(sp_loss(out))
    assert sp == pytest.approx(1.0 + 1.0)
    lw, parts = FontaniniLoss.l_w(3e-3)(out, y)
    assert float(lw) == pytest.approx(ce + 3e-3 * cs) and "sp" not in parts
    l_, _ = make_loss("L", 5e-3, 0.2)(out, y)
    assert float(l_) == pytest.approx(ce + 5e-3 * cs + 0.2 * sp)
    la, parts = make_loss("L_A", 3.5e-3, 0.4)(out, y)
    assert float(la) == pytest.approx(ce + 3.5e-3 * as_ + 0.4 * sp)
    assert parts["total"] == pytest.approx(float(la))
    with pytest.raises(ConfigError):
        make_loss("L_X")


def test_prediction_and_accuracy_policy():
    t = torch.tensor(
        [[1.0, 2.0, 3.0], [INF, 2.0, 3.0], [INF, INF, INF], [2.0, 2.0, 5.0], [4.0, 1.0, INF]],
        dtype=torch.float64,
    )
    assert predict(t).tolist() == [0, 1, -1, 0, 1]
    y = torch.tensor([0, 0, 1, 0, 1])
    # silent target -> wrong; all silent -> wrong; exact tie -> wrong
    assert correct(t, y).tolist() == [True, False, False, False, True]


def test_loss_bad_inputs():
    t = torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(SpikeInputError):
        ce_loss(t, torch.tensor([0, 3]))
    with pytest.raises(SpikeInputError):
        ce_loss(t, torch.tensor([0]))
    with pytest.raises(SpikeInputError):
        ce_loss(t, torch.tensor([0.0, 1.0]))
    with pytest.raises(SpikeInputError, match="NaN"):
        cs_loss(torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]))
    with pytest.raises(SpikeInputError):
        as_loss(torch.ones(3))
    with pytest.raises(SpikeInputError):
        sp_loss(torch.ones(2, 3))


def test_encode_yinyang():
    x = torch.tensor([[0.25, 0.5, 0.75, 0.5], [0.0, 1.0, 1.0, 0.0]])
    t = encode_yinyang(x)
    assert t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), [[5, 10, 15, 10, 0], [0, 20, 20, 0, 0]])
    np.testing.assert_allclose(encode_yinyang(x[:, :2]).numpy(), t.numpy())
    assert encode_yinyang(x, bias_time=None).shape == (2, 4)
    with pytest.raises(SpikeInputError):
        encode_yinyang(torch.ones(2, 3))
    with pytest.raises(SpikeInputError):
        encode_yinyang(torch.tensor([[1.5, 0.2]]))


def test_encode_mnist():
    img = torch.tensor([[[0, 255], [51, 255]]], dtype=torch.uint8)
    t = encode_mnist(img)
    np.testing.assert_allclose(t.numpy(), [[20.0, 0.0, 16.0, 0.0]])
    t2 = encode_mnist(img, bright_early=False)
    np.testing.assert_allclose(t2.numpy(), [[0.0, 20.0, 4.0, 20.0]])
    t3 = encode_mnist(img, min_intensity=0.1)
    assert math.isinf(t3[0, 0]) and float(t3[0, 2]) == pytest.approx(16.0)
    with pytest.raises(SpikeInputError):
        encode_mnist(torch.full((1, 2, 2), 2.0))


def test_encode_mnist_real_images(data_dir):
    from sparsespike.data.idx import load_mnist

    images, labels = load_mnist(data_dir, train=False)
    t = encode_mnist(images[:8])
    assert t.shape == (8, 784)
    assert float(t.min()) >= 0.0 and float(t.max()) <= 20.0
    assert (t == 20.0).float().mean() > 0.5  # mostly background, which spikes last


def test_silent_target_skip_drops_only_samples_whose_target_is_silent():
    """W&P's rule: a silent target adds no CE error and no gradient; other samples as before."""
    from sparsespike.eventprop.losses import ce_loss

    inf = float("inf")
    t = torch.tensor([[3.0, 5.0, inf], [inf, 4.0, 6.0], [2.0, 2.5, 7.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 2])  # sample 1's target is silent
    win = ce_loss(t, y)
    (g_win,) = torch.autograd.grad(win, t)
    skip = ce_loss(t, y, silent_target="skip")
    (g_skip,) = torch.autograd.grad(skip, t)
    per = torch.nn.functional.cross_entropy(-torch.nan_to_num(t.detach(), posinf=30.0) / 0.5, y, reduction="none")
    assert float(win) == pytest.approx(float(per.mean()))
    assert float(skip) == pytest.approx(float((per[0] + per[2]) / 3))
    assert torch.equal(g_skip[1], torch.zeros(3, dtype=torch.float64))
    assert g_win[1, 1] < 0  # the window rule: descent moves the spiking non-target later
    assert torch.allclose(g_skip[[0, 2]], g_win[[0, 2]])
    with pytest.raises(ConfigError, match="silent_target"):
        ce_loss(t, y, silent_target="drop")


def test_fontanini_loss_reports_window_ce_under_skip():
    from sparsespike.eventprop.losses import FontaniniLoss

    inf = float("inf")
    first = torch.tensor([[inf, 4.0, 6.0], [2.0, 3.0, 4.0]], dtype=torch.float64)
    out = EventOutput([first[..., None]], [torch.isfinite(first).long()])
    y = torch.tensor([0, 0])
    total_w, parts_w = FontaniniLoss.l_w(0.0)(out, y)
    total_s, parts_s = FontaniniLoss.l_w(0.0, silent_target="skip")(out, y)
    assert parts_s["ce"] == parts_w["ce"] == pytest.approx(float(total_w))
    assert float(total_s) < float(total_w)
    with pytest.raises(ConfigError, match="silent_target"):
        FontaniniLoss(silent_target="nan")
