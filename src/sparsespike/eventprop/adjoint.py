"""EventProp backward pass: adjoint variables integrated backwards in closed form.

Adjoint system (Fontanini et al. 2024 eqs. 4-6; Wunderlich & Pehle 2021; METHODS.md 2(b)),
written in forward time and solved backwards from ``lambda_V(T) = lambda_I(T) = 0``::

    tau_m d(lambda_V)/dt = lambda_V,     tau_s d(lambda_I)/dt = lambda_I - R_m lambda_V.

Going backwards by ``Delta`` from (lV, lI) the closed form is::

    lambda_V = lV e^{-Delta/tau_m},
    lambda_I = lI e^{-Delta/tau_s}
               + lV R_m tau_m/(tau_m - tau_s) (e^{-Delta/tau_m} - e^{-Delta/tau_s}).

At the k-th spike of neuron n (time t_k, current I = I(t_k), which a spike leaves unchanged)::

    lambda_V^- = (R_m I lambda_V^+ + err_k) / (R_m I - theta)          (eq. 5)
               = lambda_V^+ + (theta lambda_V^+ + err_k) / (R_m I - theta),
    lambda_I^- = lambda_I^+,
    err_k = dL/dt_k + sum_m W[m, n] (R_m lambda_V,m - lambda_I,m)(t_k)   (next layer's term).

``R_m I - theta = tau_m dV/dt(t_k^-)`` is positive for an upward crossing; it is clipped to at
least ``SolverOptions.grazing_eps`` so that a spike that only grazes the threshold cannot make
the gradient blow up (exact for every spike whose crossing slope exceeds the clip).

At each input spike (time t_i, source n) received by neuron m (no jump: the input's effect on
the state does not depend on the state)::

    dL/dW[m, n] += -tau_s lambda_I,m(t_i)                              (eq. 8)
    err_i        += W[m, n] (R_m lambda_V,m(t_i) - lambda_I,m(t_i))    (passed to the layer below)

``err_i`` is also exactly dL/dt_i, the derivative of the loss wrt the time of input spike i,
so the same quantity gives the gradient wrt the network's input spike times.

Neurons of a layer are independent given the errors of their own spikes. Within a sample the
kernels walk the input events backwards in the outer loop and the neurons in the inner one
(:func:`_sample_lanes`), so that consecutive iterations are independent. Samples run in
parallel, with per-sample weight gradients summed afterwards in sample order; the first layer
of a network whose input times need no gradient runs blocks of neurons in parallel instead and
adds each sample's part in the same order. Either way the result does not depend on the thread
count, to the bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..kernels.cpu import parallel_kernel
from .params import DEFAULT_PARAMS, DEFAULT_SOLVER, LIFParams, SolverOptions
from .simulate import PARALLEL_MIN_WORK, EventList, LayerSpikes, _gap_factors, gap_decays

__all__ = ["adjoint_layer", "scatter_event_errors", "adjoint_network"]


@njit(cache=True, inline="always")
def _decay(lv, li, em, es, kb):
    """The adjoint's closed form going back over a gap (module docstring): ``(lambda_V, lambda_I)``."""
    return lv * em, li * es + lv * kb * (em - es)


@njit(cache=True)
def _back(lv, li, D, shared, dm, ds, b, g, tau_m, tau_s, kb):
    """Go back over a gap of ``D`` ms: with the input gap ``g``'s shared factors ``dm[b, g]``,
    ``ds[b, g]`` when ``shared``, else its own exponentials; nothing moves for ``D <= 0`` or
    lambda = 0."""
    if D > 0.0 and (lv != 0.0 or li != 0.0):
        em, es = _gap_factors(shared, dm, ds, b, g, D, tau_m, tau_s)
        return _decay(lv, li, em, es, kb)
    return lv, li


@njit(cache=True)
def _spike_jump(lv, err, current, r_m, theta, grazing_eps):
    """lambda_V just before a spike of the neuron (Fontanini eq. 5), the slope clipped for grazing."""
    den = r_m * current - theta
    if den < grazing_eps:
        den = grazing_eps
    return lv + (theta * lv + err) / den


@njit(cache=True)
def _sample_lanes(
    b, m0, L, e_last, g_first, g_end, ev_t, ev_n, dm, ds, WT, out_t, out_i, out_count, err_spk,
    tau_m, tau_s, r_m, theta, grazing_eps, need_err, G, err_row, grad_bulk,
    lv, li, tc, p, nxt, prev, flag,
):  # fmt: skip
    """The adjoint of neurons ``m0 .. m0+L-1`` for sample ``b`` (module docstring), input events
    backwards from ``e_last`` in the outer loop and the neurons in the inner one, so that
    consecutive iterations are independent neurons. A neuron with a spike of its own between
    this input and the previous one (rare) takes those spikes' jumps (eq. 5) one by one; every
    other neuron decays over the gap in one branch-free loop with the gap's shared factors. A
    neuron whose last spike is not reached yet holds lambda = 0, which stays 0 and adds 0.

    Adds eq. 8 to ``G[n, l]``; with ``need_err``, the error of input event ``e`` (summed over
    the neurons in order) to ``err_row[e]``. A run of simultaneous inputs ``g_first .. g_end-1``
    (``-1``: none) is sampled once, into ``grad_bulk[b, m]``. ``lv .. flag`` are the caller's
    lane buffers."""
    kb = r_m * tau_m / (tau_m - tau_s)
    g_last = g_end - 1 if g_first >= 0 else -2
    for l in range(L):
        m = m0 + l
        lv[l] = 0.0
        li[l] = 0.0
        prev[l] = 0
        p[l] = out_count[b, m] - 1
        nxt[l] = out_t[b, m, p[l]] if p[l] >= 0 else -np.inf  # next own spike going backwards
        tc[l] = nxt[l] if p[l] >= 0 else 0.0
    e = e_last
    first = True
    while e >= 0:
        te = ev_t[b, e]
        for l in range(L):
            flag[l] = nxt[l] > te
        if not first:  # every unflagged neuron has just stepped over input e + 1
            em0 = dm[b, e + 1]
            es0 = ds[b, e + 1]
            if ev_t[b, e + 1] - te > 0.0:
                for l in range(L):  # branch-free
                    nlv, nli = _decay(lv[l], li[l], em0, es0, kb)
                    keep = flag[l] != 0
                    li[l] = li[l] if keep else nli
                    lv[l] = lv[l] if keep else nlv
        for l in range(L):
            if flag[l]:  # its own spikes after this input, one by one
                m = m0 + l
                lvl = lv[l]
                lil = li[l]
                tcl = tc[l]
                pp = p[l]
                prv = prev[l] != 0
                while pp >= 0 and out_t[b, m, pp] > te:
                    tp = out_t[b, m, pp]
                    lvl, lil = _back(lvl, lil, tcl - tp, False, dm, ds, b, 0, tau_m, tau_s, kb)
                    tcl = tp
                    lvl = _spike_jump(lvl, err_spk[b, m, pp], out_i[b, m, pp], r_m, theta, grazing_eps)
                    pp -= 1
                    prv = False
                lvl, lil = _back(lvl, lil, tcl - te, prv, dm, ds, b, e + 1, tau_m, tau_s, kb)
                lv[l] = lvl
                li[l] = lil
                p[l] = pp
                nxt[l] = out_t[b, m, pp] if pp >= 0 else -np.inf
                prev[l] = 1
        for l in range(L):
            tc[l] = te
        if e == g_last:  # the run of simultaneous inputs: sampled once
            for l in range(L):
                grad_bulk[b, m0 + l] += -tau_s * li[l]
            e = g_first - 1
        else:
            n = ev_n[b, e]
            for l in range(L):
                G[n, l] += -tau_s * li[l]
            if need_err:
                acc = err_row[e]
                for l in range(L):  # in neuron order (a sequential sum: the same bits on any run)
                    acc += WT[n, m0 + l] * (r_m * lv[l] - li[l])
                err_row[e] = acc
            e -= 1
        first = False


@parallel_kernel(min_work=PARALLEL_MIN_WORK)
def _adjoint_layer_kernel(
    ev_t, ev_n, e_last, dm, ds, WT, out_t, out_i, out_count, err_spk,
    tau_m, tau_s, r_m, theta, grazing_eps, bulk_s, bulk_e,
    gradT_b, err_in, grad_bulk,
):  # fmt: skip
    """Samples in parallel, every neuron of the layer as one block (:func:`_sample_lanes`):
    per-sample gradients ``gradT_b [B, N_in, N_out]`` (summed by the caller in sample order)
    and per-event errors ``err_in [B, K]``."""
    B = ev_t.shape[0]
    N = WT.shape[1]
    # lane buffers, one row per sample (allocated once per call, not per sample)
    fbuf = np.empty((4, B, N))
    ibuf = np.empty((B, N), dtype=np.int64)
    ubuf = np.empty((2, B, N), dtype=np.uint8)
    for b in prange(B):
        _sample_lanes(
            b, 0, N, e_last[b], bulk_s[b], bulk_e[b], ev_t, ev_n, dm, ds, WT, out_t, out_i, out_count, err_spk,
            tau_m, tau_s, r_m, theta, grazing_eps, True, gradT_b[b], err_in[b], grad_bulk,
            fbuf[0, b], fbuf[1, b], fbuf[2, b], ibuf[b], fbuf[3, b], ubuf[0, b], ubuf[1, b],
        )  # fmt: skip


#: neurons per block of the weight-gradient kernel (its per-sample scratch is N_in x LANES)
LANES = 32


@parallel_kernel(min_work=PARALLEL_MIN_WORK)
def _adjoint_weights_kernel(
    ev_t, ev_n, e_last, dm, ds, WT, out_t, out_i, out_count, err_spk,
    tau_m, tau_s, r_m, theta, grazing_eps, bulk_s, bulk_e,
    gradT, grad_bulk,
):  # fmt: skip
    """Weight gradient only (no input errors; the first layer), without a per-sample buffer:
    blocks of ``LANES`` neurons in parallel, samples in order (:func:`_sample_lanes`). Each
    sample's contributions are gathered in a scratch and added in sample order, as summing
    per-sample gradients over the batch axis does: :func:`_adjoint_layer_kernel`'s result to the
    bit. ``gradT`` is ``[N_in, N_out]``."""
    B = ev_t.shape[0]
    K_in, N = WT.shape
    n_blocks = (N + LANES - 1) // LANES
    no_err = np.zeros(1)
    for blk in prange(n_blocks):
        m0 = blk * LANES
        L = min(LANES, N - m0)
        lv = np.zeros(L)
        li = np.zeros(L)
        tc = np.zeros(L)
        p = np.zeros(L, dtype=np.int64)
        nxt = np.zeros(L)
        prev = np.zeros(L, dtype=np.uint8)
        flag = np.zeros(L, dtype=np.uint8)
        scratch = np.zeros((K_in, L))
        for b in range(B):
            _sample_lanes(
                b, m0, L, e_last[b], bulk_s[b], bulk_e[b], ev_t, ev_n, dm, ds, WT, out_t, out_i, out_count, err_spk,
                tau_m, tau_s, r_m, theta, grazing_eps, False, scratch, no_err, grad_bulk,
                lv, li, tc, p, nxt, prev, flag,
            )  # fmt: skip
            e = 0
            while e <= e_last[b]:  # add this sample's entries in sample order and clear them
                if e == bulk_s[b]:
                    e = bulk_e[b]
                    continue
                n = ev_n[b, e]
                for l in range(L):
                    v = scratch[n, l]
                    if v != 0.0:
                        gradT[n, m0 + l] += v
                        scratch[n, l] = 0.0
                e += 1


def adjoint_layer(
    events: EventList,
    weight: np.ndarray,
    spikes: LayerSpikes,
    err_spikes: np.ndarray,
    params: LIFParams = DEFAULT_PARAMS,
    options: SolverOptions = DEFAULT_SOLVER,
    need_input_errors: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Backward pass of one layer.

    Args:
        events: the layer's input events (from the forward pass).
        weight: ``[N_out, N_in]`` weights used in the forward pass.
        spikes: the layer's output spikes (from the forward pass).
        err_spikes: ``[B, N_out, S]`` total error of each output spike, ``err_k`` above
            (direct ``dL/dt_k`` plus what the next layer passed down); padding is ignored.

        need_input_errors: False skips ``err_events`` (returned as None): the first layer of a
            network whose input times need no gradient. Only then is a run of simultaneous
            inputs (``events.bulk_*``) sampled once instead of event by event.

    Returns:
        ``(grad_W [N_out, N_in], err_events [B, K])``: the weight gradient summed over the batch
        and ``dL/dt`` of every input event (to be scattered onto the layer below).
    """
    W = np.ascontiguousarray(weight, dtype=np.float64)
    err = np.ascontiguousarray(err_spikes, dtype=np.float64)
    if err.shape != spikes.times.shape:
        raise ValueError(f"err_spikes has shape {err.shape}, expected {spikes.times.shape}")
    B, K = events.times.shape
    # per-event errors are needed for every input event: runs are then walked event by event
    bulk = not need_input_errors and events.bulk_mult is not None
    bulk_s, bulk_e = events.bulk_arrays(use=bulk)
    grad_bulk = np.zeros((B, W.shape[0]))
    p = params
    work = B * W.shape[0] * K
    dm, ds = gap_decays(events, params, work)
    # the last event before T per sample (inputs at or after T never act: no gradient, no error)
    e_last = np.minimum((events.times < p.t_window).sum(axis=1), events.count) - 1
    args = (
        events.times, events.neuron, e_last, dm, ds, np.ascontiguousarray(W.T), spikes.times, spikes.currents,
        spikes.counts, err, float(p.tau_m), float(p.tau_s), float(p.r_m), float(p.threshold),
        float(options.grazing_eps), bulk_s, bulk_e,
    )  # fmt: skip
    if need_input_errors:
        gradT_b = np.zeros((B, W.shape[1], W.shape[0]))
        err_in = np.zeros((B, K))
        _adjoint_layer_kernel.select(work)(*args, gradT_b, err_in, grad_bulk)
        grad = np.ascontiguousarray(gradT_b.sum(axis=0).T)  # in sample order
    else:
        gradT = np.zeros((W.shape[1], W.shape[0]))
        _adjoint_weights_kernel.select(work)(*args, gradT, grad_bulk)
        grad = np.ascontiguousarray(gradT.T)
    if bulk:
        grad += grad_bulk.T @ events.bulk_mult  # eq. 8 for every input of each sample's run
    return grad, (err_in if need_input_errors else None)


def scatter_event_errors(events: EventList, err_events: np.ndarray, shape: tuple) -> np.ndarray:
    """Map per-event errors ``[B, K]`` back onto the source layer's spike array ``shape``."""
    out = np.zeros(shape)
    valid = events.neuron >= 0
    b_idx = np.broadcast_to(np.arange(events.times.shape[0])[:, None], events.times.shape)
    np.add.at(out, (b_idx[valid], events.neuron[valid], events.index[valid]), err_events[valid])
    return out


def _valid_mask(spikes: LayerSpikes) -> np.ndarray:
    S = spikes.times.shape[2]
    return np.arange(S)[None, None, :] < spikes.counts[:, :, None]


def adjoint_network(
    layers: list[tuple[EventList, LayerSpikes]],
    weights: list[np.ndarray],
    dl_dt: list[np.ndarray | None],
    input_shape: tuple,
    params: LIFParams = DEFAULT_PARAMS,
    options: SolverOptions = DEFAULT_SOLVER,
    need_input_grad: bool = True,
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Backward pass through all layers, output first.

    ``dl_dt[l]`` is ``dL/dt`` for the spikes of layer ``l`` (shape of its ``times``) or None.
    Entries beyond a neuron's spike count (padding) are ignored, whatever they hold.
    Returns ``(weight gradients, dL/d(input times) of shape input_shape as [B, N_in, S])``; the
    latter is None with ``need_input_grad=False``, which lets the first layer skip it.
    """
    grads: list[np.ndarray] = [None] * len(layers)  # type: ignore[list-item]
    err_above: np.ndarray | None = None
    for l in range(len(layers) - 1, -1, -1):
        ev, sp = layers[l]
        valid = _valid_mask(sp)
        g = dl_dt[l]
        if g is None:
            err = np.zeros(sp.times.shape)
        else:
            err = np.where(valid, np.asarray(g, dtype=np.float64), 0.0)
        if err_above is not None:
            err = err + err_above
        need = l > 0 or need_input_grad
        gW, err_ev = adjoint_layer(ev, weights[l], sp, err, params, options, need_input_errors=need)
        grads[l] = gW
        if need:
            shape_below = layers[l - 1][1].times.shape if l > 0 else input_shape
            err_above = scatter_event_errors(ev, err_ev, shape_below)
        else:
            err_above = None
    return grads, err_above
