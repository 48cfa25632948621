"""Exact event-driven forward simulation of feed-forward current-based LIF layers.

Model (Fontanini et al. 2024 eqs. 1-3; METHODS.md 2(a))::

    tau_m dV/dt = -V + R_m I,   tau_s dI/dt = -I,   V(0) = I(0) = 0,
    input spike from n at t:  I_m(t+) = I_m(t-) + W[m, n],
    V_m(t_k-) = theta:        spike, V_m(t_k+) = 0, I_m unchanged.

Between two input events, with state (V0, I0) at t0, Delta = t - t0 and
``k = tau_s / (tau_m - tau_s)``, the closed form is::

    I(t) = I0 e^{-Delta/tau_s},
    V(t) = (V0 + k R I0) e^{-Delta/tau_m} - k R I0 e^{-Delta/tau_s}.

V has at most one stationary point, at
``Delta* = ln(k R I0 tau_m / ((V0 + k R I0) tau_s)) / (1/tau_s - 1/tau_m)``. A spike exists in
the interval ``(t0, t1]`` when ``V(Delta*) > theta + peak_tol`` with ``Delta*`` inside it, or when
``V(t1) > theta``; the crossing is then bracketed on ``[t0, t0 + Delta*]`` (resp. ``[t0, t1]``),
where ``V - theta`` has exactly one root, and solved by Newton's method safeguarded by
bisection (Numerical Recipes ``rtsafe``) to ``root_xtol`` (1e-12 ms). After a spike V is reset
and the scan restarts from the spike time in the same interval, so a neuron can fire several
times between two inputs. This mirrors ``compute_spikes`` of the reference code
(``eventprop/eventprop: src/eventprop_cpp.cpp``), which uses Boost ``toms748_solve``.

Data layout
-----------
* :class:`LayerSpikes` (a layer's output): ``times [B, N, S]`` float64, each neuron's spikes in
  ascending order, padded with ``+inf``; ``counts [B, N]``; ``currents [B, N, S]`` = I at each
  spike (needed by the adjoint jump). ``S`` is trimmed to the largest count in the batch
  (at least 1).
* :class:`EventList` (a layer's input): the spikes of the layer below merged per sample into
  one time-sorted list, padded: ``times [B, K]`` (``+inf`` padding), ``neuron [B, K]`` (source
  neuron), ``index [B, K]`` (which of its spikes, i.e. position along the source's ``S`` axis),
  ``count [B]``. Ties are ordered by (neuron, index), so results are deterministic.

The cost is O(sum over neurons of (#input events + #own spikes)) per sample: it grows with the
number of events, not with a time grid. Kernels run in numba, parallel over (sample, neuron).

Inputs that arrive together
---------------------------
Simultaneous input events leave no time for the state to move between them: the closed form
advances by 0, so their jumps simply add up. When a sample's longest run of equal event times
is long (:data:`BULK_MIN`; MNIST's background pixels, ~70 % of the 784 inputs, all spike at
``t_max``), :func:`merge_events` records it (``EventList.bulk_*``): the forward pass adds the
run's summed weights ``sum_n M[b, n] W[m, n]`` (one matrix product for the batch) as one jump,
and the adjoint samples ``lambda_I`` once for the run, whose weight gradient (Fontanini eq. 8,
the same value for every input of the run) is added back as ``gtot^T M``. Exact up to the
order of floating-point summation; the loops then cost O(#distinct input times) per neuron.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from ..errors import SpikeInputError
from ..kernels.cpu import parallel_kernel
from .params import DEFAULT_PARAMS, DEFAULT_SOLVER, LIFParams, SolverOptions

__all__ = [
    "EventList",
    "LayerSpikes",
    "check_input_times",
    "merge_events",
    "simulate_layer",
    "simulate_network",
    "membrane_potential",
]


#: Below this many (sample x neuron x event) steps a kernel runs its serial build
#: (``kernels.cpu.Kernel``): launching the numba thread pool costs more than it saves on small
#: batches (and far more on a loaded machine).
PARALLEL_MIN_WORK = 100_000

#: A run of equal input-event times in a sample is treated as one jump (module docstring,
#: "Inputs that arrive together") when it is at least this long and at least 1/32 of the
#: layer's inputs (below that the matrix product costs more than the loop iterations it saves).
BULK_MIN = 16


# ----------------------------------------------------------------------------------------------
# numba kernels
# ----------------------------------------------------------------------------------------------
@njit(cache=True, fastmath=False)
def _v_and_dv(x, a, b, theta, tau_m, tau_s):
    """f(x) = V(x) - theta and f'(x) for V = a e^{-x/tau_m} - b e^{-x/tau_s}."""
    em = math.exp(-x / tau_m)
    es = math.exp(-x / tau_s)
    return a * em - b * es - theta, -a * em / tau_m + b * es / tau_s


@njit(cache=True)
def _solve_crossing(a, b, theta, tau_m, tau_s, lo, hi, xtol):
    """Root of V(x) - theta on [lo, hi] with f(lo) <= 0 < f(hi): safeguarded Newton (rtsafe)."""
    flo, _ = _v_and_dv(lo, a, b, theta, tau_m, tau_s)
    fhi, _ = _v_and_dv(hi, a, b, theta, tau_m, tau_s)
    if flo >= 0.0:
        return lo
    # start from the secant (regula falsi) point
    x = lo + (hi - lo) * (-flo) / (fhi - flo)
    dxold = hi - lo
    dx = dxold
    for _ in range(200):
        f, df = _v_and_dv(x, a, b, theta, tau_m, tau_s)
        if f == 0.0:
            return x
        if f < 0.0:
            lo = x
        else:
            hi = x
        # Newton step if it stays in the bracket and shrinks fast enough, else bisection
        newton_ok = df > 0.0
        if newton_ok:
            xn = x - f / df
            if not (lo < xn < hi) or abs(2.0 * f) > abs(dxold * df):
                newton_ok = False
        dxold = dx
        if newton_ok:
            dx = xn - x
            x = xn
        else:
            dx = 0.5 * (hi - lo)
            x = lo + dx
        if abs(dx) < xtol or hi - lo < xtol:
            return x
    return x


@njit(cache=True)
def _next_crossing(V0, I0, D, em, es, tau_m, tau_s, r_m, theta, k, peak_tol, xtol):
    """Offset in (0, D] of the first upward crossing of theta from state (V0 < theta, I0), or -1.

    ``em = exp(-D/tau_m)``, ``es = exp(-D/tau_s)`` are passed in (shared by all neurons when the
    interval is a gap between two input events). V has at most one stationary point, so:
    ``V(D) > theta`` -> one crossing in (0, D]; else an interior maximum exists iff
    ``V'(0) > 0 > V'(D)`` (``tau_m V' = R I - V``), and makes a spike iff it exceeds
    ``theta + peak_tol``; otherwise ``max V = max(V0, V(D)) <= theta``.
    """
    if D <= 0.0:
        return -1.0
    b = k * r_m * I0
    a = V0 + b
    fend = a * em - b * es - theta
    if fend > 0.0:
        return _solve_crossing(a, b, theta, tau_m, tau_s, 0.0, D, xtol)
    if r_m * I0 > V0 and r_m * I0 * es < fend + theta:
        ratio = (b * tau_m) / (a * tau_s)
        if ratio > 0.0:
            dstar = math.log(ratio) / (1.0 / tau_s - 1.0 / tau_m)
            if 0.0 < dstar < D:
                fpk, _ = _v_and_dv(dstar, a, b, theta, tau_m, tau_s)
                if fpk > peak_tol:
                    return _solve_crossing(a, b, theta, tau_m, tau_s, 0.0, dstar, xtol)
    return -1.0


@parallel_kernel(min_work=PARALLEL_MIN_WORK)
def _gap_decays_kernel(ev_t, ev_count, t_window, tau_m, tau_s, dm, ds):
    """Per sample: decay factors over the gap before each input event (t_{-1} = 0)."""
    B = ev_t.shape[0]
    for b in prange(B):
        prev = 0.0
        for e in range(ev_count[b]):
            t = min(ev_t[b, e], t_window)
            dm[b, e] = math.exp(-(t - prev) / tau_m)
            ds[b, e] = math.exp(-(t - prev) / tau_s)
            prev = t


def gap_decays(events, params, work: int | None = None):
    """``(dm, ds)`` ``[B, K]``: ``exp(-(t_e - t_{e-1})/tau)`` for the merged input events.
    ``work``: that of the layer kernel they serve, which picks the build (``Kernel.select``)."""
    dm = np.ones(events.times.shape)
    ds = np.ones(events.times.shape)
    _gap_decays_kernel.select(work)(events.times, events.count, float(params.t_window), float(params.tau_m),
                                    float(params.tau_s), dm, ds)  # fmt: skip
    return dm, ds


@njit(cache=True, inline="always")
def _gap_factors(shared, dm, ds, b, g, D, tau_m, tau_s):
    """``(e^{-D/tau_m}, e^{-D/tau_s})``: the shared factors of input gap ``g`` (``dm[b, g]``,
    ``ds[b, g]``) when ``shared``, else computed for this ``D``."""
    if shared:
        return dm[b, g], ds[b, g]
    return math.exp(-D / tau_m), math.exp(-D / tau_s)


@njit(cache=True, inline="always")
def _step(Vm, Im, em, es, kr):
    """The closed form (module docstring) over a gap with decay factors ``em``, ``es``: ``(V, I)``."""
    bb = kr * Im
    return (Vm + bb) * em - bb * es, Im * es


@njit(cache=True, inline="always")
def _lane_interval(
    b, m, e, last, t1, V, I, t0, dirty, live, cnt, dm, ds,
    tau_m, tau_s, r_m, theta, k, kr, peak_tol, xtol, out_t, out_i, capped,
):  # fmt: skip
    """Neuron ``m`` of sample ``b`` over ``(t0[m], t1]``: its spikes there (several allowed),
    then, unless ``last``, its state advanced to ``t1`` (the jump of the input is the caller's)."""
    if not live[m]:
        return
    S = out_t.shape[2]
    Vm = V[m]
    Im = I[m]
    t0m = t0[m]
    cl = dirty[m] == 0  # t0 is the previous input time (no spike since): gap decays apply
    c = cnt[m]
    while True:
        # cheap exclusion (tau_m > tau_s): V <= V0 + k R I0 when I0 > 0, V <= max(V0, 0)
        # when I0 <= 0, and V only decays until the next input
        if k > 0.0 and (Im <= 0.0 or Vm + kr * Im <= theta):
            break
        D = t1 - t0m
        if D <= 0.0:
            break
        em, es = _gap_factors(cl and not last, dm, ds, b, e, D, tau_m, tau_s)
        d = _next_crossing(Vm, Im, D, em, es, tau_m, tau_s, r_m, theta, k, peak_tol, xtol)
        if d < 0.0:
            break
        if c >= S:
            capped[b, m] = 1
            live[m] = 0  # the neuron stops here
            cnt[m] = c
            return
        ts = t0m + d
        Im = Im * math.exp(-d / tau_s)
        out_t[b, m, c] = ts
        out_i[b, m, c] = Im
        c += 1
        Vm = 0.0
        t0m = ts
        cl = False
    if not last:
        # advance the closed form to the input event
        D = t1 - t0m
        if D > 0.0:
            em, es = _gap_factors(cl, dm, ds, b, e, D, tau_m, tau_s)
            Vm, Im = _step(Vm, Im, em, es, kr)
        t0m = t1
        cl = True
    V[m] = Vm
    I[m] = Im
    t0[m] = t0m
    dirty[m] = 0 if cl else 1
    cnt[m] = c


@njit(cache=True, inline="always")
def _advance(Vm, Im, em, es, k, kr, r_m, theta, peak_margin):
    """A neuron's state after a gap with decay factors ``em``, ``es`` (the closed form, exactly
    as :func:`_lane_interval` advances it), and whether it may cross the threshold in the gap:
    what :func:`_lane_interval` tests - the exclusion, ``V(t1) > theta``, and an interior maximum,
    which is ``R I(t*) <= R I0`` (V' = 0 there), so not above theta unless ``R I0`` is (with a
    margin far above rounding, so the test stays conservative). Branch-free."""
    vn, inn = _step(Vm, Im, em, es, kr)
    ri = r_m * Im
    excl = (k > 0.0) & ((Im <= 0.0) | (Vm + kr * Im <= theta))
    peak = (ri > Vm) & (ri * es < (vn - theta) + theta) & (ri > theta - peak_margin)
    return vn, inn, (~excl) & ((vn > theta) | peak)


@parallel_kernel(min_work=PARALLEL_MIN_WORK)
def _forward_layer_kernel(
    ev_t, ev_n, ev_count, dm, ds, WT, bulk_s, bulk_e, bulk_w,
    tau_m, tau_s, r_m, theta, t_window, peak_tol, xtol, exact,
    out_t, out_i, out_count, capped,
):  # fmt: skip
    """Samples in parallel; within a sample, input events in the outer loop and neurons in the
    inner one. Each gap is first advanced for every neuron at once in a branch-free (vectorised)
    loop, which also flags the neurons that may cross the threshold in it: ``V(t1) > theta``, or
    an interior maximum (``V'`` positive at the start and negative at the end; the tests of
    :func:`_next_crossing`, on the same numbers), or a spike since the last input. Only those take
    the exact per-neuron path (:func:`_lane_interval`); every other one provably has no spike in
    the gap, and its advanced state is the value the per-neuron path computes, to the bit.
    ``WT`` is ``[N_in, N_out]``; ``exact`` sends every neuron down the exact path (tests)."""
    B = ev_t.shape[0]
    N = WT.shape[1]
    k = tau_s / (tau_m - tau_s)
    kr = k * r_m
    peak_margin = 1e-9 * max(1.0, abs(theta))
    # per-sample state, one row per sample (allocated once per call, not per sample)
    V_ = np.zeros((B, N))
    I_ = np.zeros((B, N))
    t0_ = np.zeros((B, N))  # per neuron: the time its state is at
    dirty_ = np.zeros((B, N), dtype=np.uint8)  # spiked since the previous input: t0 is its spike
    live_ = np.ones((B, N), dtype=np.uint8)  # 0 once max_spikes is reached
    cnt_ = np.zeros((B, N), dtype=np.int64)
    Vn_ = np.empty((B, N))
    In_ = np.empty((B, N))
    flag_ = np.empty((B, N), dtype=np.uint8)
    for b in prange(B):
        V = V_[b]
        I = I_[b]
        t0 = t0_[b]
        dirty = dirty_[b]
        live = live_[b]
        cnt = cnt_[b]
        Vn = Vn_[b]
        In = In_[b]
        flag = flag_[b]
        K = ev_count[b]
        gs = bulk_s[b]  # events gs .. bulk_e[b]-1 share one time: one jump bulk_w[b, m] (-1: none)
        t_prev = 0.0
        e = 0
        while e < K and ev_t[b, e] < t_window:
            t1 = ev_t[b, e]
            em0 = dm[b, e]
            es0 = ds[b, e]
            wrow = bulk_w[b] if e == gs else WT[ev_n[b, e]]
            moved = t1 - t_prev > 0.0  # else simultaneous with the previous input: no time passes
            if moved:
                for m in range(N):  # branch-free: every neuron advanced, possible crossings flagged
                    vn, inn, fl = _advance(V[m], I[m], em0, es0, k, kr, r_m, theta, peak_margin)
                    Vn[m] = vn
                    In[m] = inn
                    flag[m] = fl | (dirty[m] != 0) | (live[m] == 0) | exact
            for m in range(N):
                if flag[m] != 0 if moved else dirty[m] != 0:  # (if no time passed: since a spike)
                    _lane_interval(
                        b, m, e, False, t1, V, I, t0, dirty, live, cnt, dm, ds,
                        tau_m, tau_s, r_m, theta, k, kr, peak_tol, xtol, out_t, out_i, capped,
                    )  # fmt: skip
                elif moved:
                    V[m] = Vn[m]
                    I[m] = In[m]
                    t0[m] = t1
                I[m] += wrow[m]
            t_prev = t1
            e = bulk_e[b] if e == gs else e + 1
        for m in range(N):  # the rest of the window
            _lane_interval(b, m, e, True, t_window, V, I, t0, dirty, live, cnt, dm, ds,
                           tau_m, tau_s, r_m, theta, k, kr, peak_tol, xtol, out_t, out_i, capped)  # fmt: skip
            out_count[b, m] = cnt[m]


@parallel_kernel(min_work=PARALLEL_MIN_WORK)
def _count_finite(times, counts):
    B, N, S = times.shape
    for b in prange(B):
        c = 0
        for n in range(N):
            for p in range(S):
                if math.isfinite(times[b, n, p]):
                    c += 1
        counts[b] = c


@parallel_kernel(min_work=PARALLEL_MIN_WORK)
def _merge_kernel(times, counts, ev_t, ev_n, ev_p):
    B, N, S = times.shape
    for b in prange(B):
        K = counts[b]
        bt = np.empty(K, dtype=np.float64)
        bn = np.empty(K, dtype=np.int64)
        bp = np.empty(K, dtype=np.int64)
        c = 0
        for n in range(N):
            for p in range(S):
                t = times[b, n, p]
                if math.isfinite(t):
                    bt[c] = t
                    bn[c] = n
                    bp[c] = p
                    c += 1
        order = np.argsort(bt, kind="mergesort")
        for i in range(K):
            o = order[i]
            ev_t[b, i] = bt[o]
            ev_n[b, i] = bn[o]
            ev_p[b, i] = bp[o]


@njit(cache=True)
def _bulk_kernel(ev_t, ev_count, min_len, bulk_s, bulk_e):
    """Per sample, the bounds of the longest run of equal (finite) event times if it is at least
    ``min_len`` long; whether any sample has one."""
    B = ev_t.shape[0]
    found = False
    for b in range(B):
        K = ev_count[b]
        best_s = -1
        best_len = 0
        e = 0
        while e < K:
            f = e + 1
            while f < K and ev_t[b, f] == ev_t[b, e]:
                f += 1
            if f - e > best_len:
                best_len = f - e
                best_s = e
            e = f
        if best_len >= min_len:
            bulk_s[b] = best_s
            bulk_e[b] = best_s + best_len
            found = True
    return found


@njit(cache=True)
def _bulk_mult_kernel(ev_n, bulk_s, bulk_e, mult):
    """``mult[b, n]``: how many events of sample ``b``'s run come from input ``n``."""
    for b in range(ev_n.shape[0]):
        for i in range(bulk_s[b], bulk_e[b]):  # empty for -1 .. -1
            mult[b, ev_n[b, i]] += 1.0


# ----------------------------------------------------------------------------------------------
# containers and numpy-level API
# ----------------------------------------------------------------------------------------------
@dataclass
class EventList:
    """Time-sorted input events of one layer, per sample (see module docstring)."""

    times: np.ndarray  # [B, K] float64, +inf padded
    neuron: np.ndarray  # [B, K] int64 source neuron, -1 padded
    index: np.ndarray  # [B, K] int64 spike index of the source neuron, -1 padded
    count: np.ndarray  # [B] int64
    # the longest run of equal event times per sample, when long (module docstring, "Inputs that
    # arrive together"): events bulk_start[b] .. bulk_end[b]-1 (-1: none); bulk_mult [B, N_in]
    # counts its events per source neuron. None: no sample has one (the loops see every event).
    bulk_start: np.ndarray | None = None
    bulk_end: np.ndarray | None = None
    bulk_mult: np.ndarray | None = None

    def bulk_arrays(self, use: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(bulk_start, bulk_end)`` for the kernels: ``-1`` everywhere when there is no run, or
        when the caller walks runs event by event (``use=False``)."""
        if self.bulk_start is None or not use:
            none = np.full(self.times.shape[0], -1, dtype=np.int64)
            return none, none
        return self.bulk_start, self.bulk_end


@dataclass
class LayerSpikes:
    """Output spikes of one layer (see module docstring)."""

    times: np.ndarray  # [B, N, S] float64, ascending per neuron, +inf padded
    counts: np.ndarray  # [B, N] int64
    currents: np.ndarray  # [B, N, S] float64, I at each spike (0 padded)
    n_capped: int  # neurons (over the batch) that hit max_spikes


def check_input_times(times: np.ndarray, name: str = "input_times") -> np.ndarray:
    """Validate spike times and return them as C-contiguous float64 ``[B, N, S]``.

    Accepts ``[B, N]`` (at most one spike per input neuron) or ``[B, N, S]``. ``+inf`` means
    "no spike"; NaN, ``-inf`` and negative times are errors (the state starts at 0 at t = 0).
    """
    arr = np.asarray(times)
    if arr.dtype.kind not in "fiu":
        raise SpikeInputError(f"{name} must be a real array of spike times, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise SpikeInputError(f"{name} must have shape [batch, neurons] or [batch, neurons, spikes], got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if np.isnan(arr).any():
        raise SpikeInputError(f"{name} contains NaN spike times (use +inf for 'no spike')")
    if (arr < 0).any():
        bad = float(arr[arr < 0].min())
        raise SpikeInputError(f"{name} contains negative (or -inf) spike times, e.g. {bad}")
    return arr


def merge_events(times: np.ndarray) -> EventList:
    """Merge per-neuron spike times ``[B, N, S]`` (``+inf`` = none) into sorted event lists."""
    times = np.ascontiguousarray(times, dtype=np.float64)
    B = times.shape[0]
    counts = np.zeros(B, dtype=np.int64)
    _count_finite.select(times.size)(times, counts)
    K = int(counts.max()) if B else 0
    K = max(K, 1)
    ev_t = np.full((B, K), np.inf)
    ev_n = np.full((B, K), -1, dtype=np.int64)
    ev_p = np.full((B, K), -1, dtype=np.int64)
    _merge_kernel.select(times.size)(times, counts, ev_t, ev_n, ev_p)
    ev = EventList(ev_t, ev_n, ev_p, counts)
    n_in = times.shape[1]
    bs = np.full(B, -1, dtype=np.int64)
    be = np.full(B, -1, dtype=np.int64)
    if B and _bulk_kernel(ev_t, counts, max(BULK_MIN, n_in // 32), bs, be):
        mult = np.zeros((B, n_in))
        _bulk_mult_kernel(ev_n, bs, be, mult)
        ev.bulk_start, ev.bulk_end, ev.bulk_mult = bs, be, mult
    return ev


def simulate_layer(
    events: EventList,
    weight: np.ndarray,
    params: LIFParams = DEFAULT_PARAMS,
    options: SolverOptions = DEFAULT_SOLVER,
    layer_name: str = "layer",
    _exact: bool = False,
) -> LayerSpikes:
    """Exact spike times of one layer of ``weight.shape[0]`` neurons driven by ``events``.

    ``weight`` is ``[N_out, N_in]`` (``W[m, n]`` is the jump of ``I_m`` at a spike of input
    ``n``). Returns :class:`LayerSpikes` with ``S`` trimmed to the largest spike count.
    """
    W = np.ascontiguousarray(weight, dtype=np.float64)
    if W.ndim != 2:
        raise SpikeInputError(f"{layer_name}: weight must be 2-D [N_out, N_in], got {W.shape}")
    B = events.times.shape[0]
    N = W.shape[0]
    if B and int(events.count.max(initial=0)) > 0:
        used = events.neuron[events.neuron >= 0]
        if used.size and int(used.max()) >= W.shape[1]:
            raise SpikeInputError(
                f"{layer_name}: input neuron index {int(used.max())} out of range for weight with {W.shape[1]} inputs"
            )
    if not np.isfinite(W).all():
        raise SpikeInputError(f"{layer_name}: weight contains NaN or inf")
    S = options.max_spikes
    out_t = np.full((B, N, S), np.inf)
    out_i = np.zeros((B, N, S))
    out_c = np.zeros((B, N), dtype=np.int64)
    capped = np.zeros((B, N), dtype=np.int8)
    p = params
    work = B * N * (events.times.shape[1] + 1)
    dm, ds = gap_decays(events, params, work)
    bulk_s, bulk_e = events.bulk_arrays()
    # each sample's run of simultaneous inputs as one jump: sum_n mult[b, n] W[m, n]
    bulk_w = events.bulk_mult @ W.T if events.bulk_mult is not None else np.zeros((B, 1))
    _forward_layer_kernel.select(work)(
        events.times, events.neuron, events.count, dm, ds, np.ascontiguousarray(W.T), bulk_s, bulk_e, bulk_w,
        float(p.tau_m), float(p.tau_s), float(p.r_m), float(p.threshold), float(p.t_window),
        float(options.peak_tol), float(options.root_xtol), bool(_exact),
        out_t, out_i, out_c, capped,
    )  # fmt: skip
    n_capped = int(capped.sum())
    if n_capped:
        msg = (
            f"{layer_name}: {n_capped} neuron(s) reached max_spikes={S} in the window "
            f"(T={p.t_window} ms); their later spikes were dropped"
        )
        if options.on_overflow == "raise":
            raise SpikeInputError(msg + " (SolverOptions.on_overflow='raise')")
        if options.on_overflow == "warn":
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
    s_used = max(1, int(out_c.max(initial=0)))
    return LayerSpikes(
        np.ascontiguousarray(out_t[:, :, :s_used]),
        out_c,
        np.ascontiguousarray(out_i[:, :, :s_used]),
        n_capped,
    )


def simulate_network(
    input_times: np.ndarray,
    weights: list[np.ndarray],
    params: LIFParams = DEFAULT_PARAMS,
    options: SolverOptions = DEFAULT_SOLVER,
) -> list[tuple[EventList, LayerSpikes]]:
    """Simulate a feed-forward network layer by layer.

    ``input_times``: ``[B, N_in]`` or ``[B, N_in, S]`` (``+inf`` = no spike). ``weights[l]`` is
    ``[N_{l+1}, N_l]``. Returns, per non-input layer, its input :class:`EventList` and its
    output :class:`LayerSpikes`; each layer's output spikes are the next layer's input events.
    """
    x = check_input_times(input_times)
    out: list[tuple[EventList, LayerSpikes]] = []
    prev = x
    n_prev = x.shape[1]
    for l, W in enumerate(weights):
        W = np.asarray(W)
        if W.ndim != 2 or W.shape[1] != n_prev:
            raise SpikeInputError(f"weights[{l}] has shape {tuple(W.shape)}, expected [N_out, {n_prev}]")
        ev = merge_events(prev)
        sp = simulate_layer(ev, W, params, options, layer_name=f"layer {l + 1}")
        out.append((ev, sp))
        prev = sp.times
        n_prev = W.shape[0]
    return out


def membrane_potential(
    t: np.ndarray,
    in_times: np.ndarray,
    in_weights: np.ndarray,
    out_times: np.ndarray,
    params: LIFParams = DEFAULT_PARAMS,
) -> np.ndarray:
    """V(t) of one neuron from its inputs and its own spikes (superposition of the closed form).

    ``V(t) = sum_i w_i R k (e^{-(t-t_i)/tau_m} - e^{-(t-t_i)/tau_s})
    - theta sum_{t_k < t} e^{-(t-t_k)/tau_m}`` (the reset subtracts theta at each spike; this
    is the ``sum0``/``sum1`` form of the reference code). For plots and tests.
    """
    p = params
    k = p.tau_s / (p.tau_m - p.tau_s)
    t = np.asarray(t, dtype=np.float64)[..., None]
    ti = np.asarray(in_times, dtype=np.float64)
    wi = np.asarray(in_weights, dtype=np.float64)
    m = np.isfinite(ti)
    ti, wi = ti[m], wi[m]
    dt = t - ti
    psp = np.where(dt > 0, wi * p.r_m * k * (np.exp(-dt / p.tau_m) - np.exp(-dt / p.tau_s)), 0.0)
    to = np.asarray(out_times, dtype=np.float64)
    to = to[np.isfinite(to)]
    do = t - to
    rst = np.where(do > 0, p.threshold * np.exp(-do / p.tau_m), 0.0)
    return psp.sum(-1) - rst.sum(-1)


def set_num_threads(n: int) -> None:
    """Set the numba thread count used by the kernels (<= NUMBA_NUM_THREADS)."""
    numba.set_num_threads(int(n))
