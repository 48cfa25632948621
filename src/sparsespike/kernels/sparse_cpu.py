"""Numba CPU kernels of the sparse spiking backward (Perez-Nieves & Goodman 2021, S3GD).

Compact formats (all per batch element ``b``, "b-major"):

* **active set** of a layer with ``N`` neurons: ``ptr[B+1]`` (int64 offsets) and ``idx[n]``
  (int32 ``t*N + j``), sorted by ``(t, j)`` inside each ``b``; entries ``|V - thr| < b_th``
  (eq. 7). Beside it the saved value ``d = V - thr`` or the surrogate ``g(d)`` (eq. 8).
* **spike list** of an input with ``K`` features: the same ``ptr``/``idx`` (``t*K + i``) over the
  non-zeros, plus their values when the input is not binary.

Kernels (``prange`` over batch chunks or over blocks of weight columns, so threads never write
the same location):

* :func:`fused_forward` -- synaptic input from the spike list + LIF recurrence (subtractive,
  detached reset, no synaptic current) in one pass; writes ``S`` and records the active entries
  and the output spikes. The dense membrane and the dense synaptic current are never stored.
* :func:`weight_grad_active` -- eqs. 9-10: weight gradient from active entries x input trace,
  the trace rebuilt on the fly from the spike list; blocks of input columns in parallel.
* :func:`input_grad_active` -- eqs. 11-12: input gradient at the previous layer's active
  entries only, the Prop. 1 recurrence carried backwards in time; batch chunks in parallel.

Decays between events (Prop. 1: ``delta[t] = beta**n delta[t+n]`` across ``n`` inactive steps)
cost nothing: the walks keep their accumulator relative to a base step (``x * beta**-(t - tb)``,
tables ``powb[n] = beta**n`` and ``ipow[n] = beta**-n``) and rescale it only every ``L`` steps,
with ``beta**-L <= 2**20`` so that float32 stays exact to round-off.

Every parallel kernel is a thin ``prange`` over a separately compiled ``_..._part`` function:
numba's parallel lowering of a large loop body loses the inner-loop vectorisation (measured 6-8x
slower for the weight gradient), a plain ``@njit`` callee keeps it.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .cpu import parallel_kernel
from .simd import axpy, dot

# no nnan/ninf: b_th may legitimately be +inf ("every neuron active")
FM = {"contract", "arcp", "reassoc", "nsz"}


@njit(inline="always")
def _split(n, parts, c):
    """Bounds of part ``c`` of ``parts`` equal slices of ``range(n)``."""
    return c * n // parts, (c + 1) * n // parts


# --------------------------------------------------------------------------- compaction


@njit(cache=True)
def _scan_counts_part(x, b0, b1, counts, nonbinary):
    _, T, K = x.shape
    for b in range(b0, b1):
        c = 0
        nb = 0
        for t in range(T):
            for i in range(K):
                v = x[b, t, i]
                nz = v != 0
                c += nz
                nb |= nz & (v != 1)
        counts[b] = c
        nonbinary[b] = nb


@parallel_kernel
def scan_counts(x, counts, nonbinary):
    """Per batch element: number of non-zeros of a b-major ``x[B, T, K]`` (any strides, so a
    transposed view of a time-major raster or a sample-major ``uint8`` batch) and whether any
    is not 1."""
    B = x.shape[0]
    nchunk = min(B, 16)
    for c in prange(nchunk):
        b0, b1 = _split(B, nchunk, c)
        _scan_counts_part(x, b0, b1, counts, nonbinary)


@njit(cache=True)
def _scan_fill_part(x, b0, b1, ptr, idx, vals, store_vals):
    _, T, K = x.shape
    for b in range(b0, b1):
        p = ptr[b]
        for t in range(T):
            for i in range(K):
                v = x[b, t, i]
                if v != 0:
                    idx[p] = t * K + i
                    if store_vals:
                        vals[p] = v
                    p += 1


@parallel_kernel
def scan_fill(x, ptr, idx, vals, store_vals):
    """Fill the b-major spike list (``idx = t*K + i``) of a b-major ``x[B, T, K]``; values if asked."""
    B = x.shape[0]
    nchunk = min(B, 16)
    for c in prange(nchunk):
        b0, b1 = _split(B, nchunk, c)
        _scan_fill_part(x, b0, b1, ptr, idx, vals, store_vals)


@njit(cache=True)
def _scan_words_part(w, b0, b1, counts, nonbinary, ptr, idx, vals, store_vals, fill):
    """One walk for both passes over rows of bytes seen as ``uint64`` words: an all-zero word
    (8 silent inputs) costs one compare. Little-endian: byte ``j`` of word ``q`` is the flat
    position ``8*q + j = t*K + i``. ``fill`` False: count (:func:`scan_word_counts`); True:
    write the list (:func:`scan_word_fill`)."""
    W = w.shape[1]
    for b in range(b0, b1):
        p = ptr[b] if fill else 0
        nb = 0
        for q in range(W):
            word = w[b, q]
            if word == 0:
                continue
            for j in range(8):
                v = (word >> np.uint64(8 * j)) & np.uint64(0xFF)
                if v != 0:
                    if fill:
                        idx[p] = 8 * q + j
                        if store_vals:
                            vals[p] = v
                    else:
                        nb |= v != 1
                    p += 1
        if not fill:
            counts[b] = p
            nonbinary[b] = nb


@parallel_kernel
def scan_word_counts(w, counts, nonbinary):
    """:func:`scan_counts` of a contiguous ``uint8`` batch ``[B, T*K]`` viewed as ``uint64
    [B, T*K/8]``: at ~1 % activity most words are zero, so this reads 8 inputs per compare."""
    B = w.shape[0]
    nchunk = min(B, 16)
    for c in prange(nchunk):
        b0, b1 = _split(B, nchunk, c)
        _scan_words_part(w, b0, b1, counts, nonbinary, counts, counts, counts, False, False)  # ptr, idx, vals unused


@parallel_kernel
def scan_word_fill(w, ptr, idx, vals, store_vals):
    """:func:`scan_fill` of the ``uint64`` word view of a contiguous ``uint8`` batch."""
    B = w.shape[0]
    nchunk = min(B, 16)
    for c in prange(nchunk):
        b0, b1 = _split(B, nchunk, c)
        _scan_words_part(w, b0, b1, ptr, ptr, ptr, idx, vals, store_vals, True)  # counts, nonbinary unused


@njit(cache=True)
def _mask_counts_part(mask, b0, b1, counts):
    T, _, F = mask.shape
    for b in range(b0, b1):
        c = 0
        for t in range(T):
            for i in range(F):
                c += mask[t, b, i] != 0
        counts[b] = c


@parallel_kernel
def mask_counts(mask, counts):
    """Per batch element: number of non-zeros of a ``uint8`` mask ``[T, B, F]``."""
    B = mask.shape[1]
    nchunk = min(B, 16)
    for c in prange(nchunk):
        b0, b1 = _split(B, nchunk, c)
        _mask_counts_part(mask, b0, b1, counts)


@njit(cache=True)
def _mask_fill_part(mask, b0, b1, ptr, idx):
    T, _, F = mask.shape
    for b in range(b0, b1):
        p = ptr[b]
        for t in range(T):
            for i in range(F):
                if mask[t, b, i] != 0:
                    idx[p] = t * F + i
                    p += 1


@parallel_kernel
def mask_fill(mask, ptr, idx):
    """Fill the b-major index list (``t*F + i``) of the non-zeros of a mask ``[T, B, F]``."""
    B = mask.shape[1]
    nchunk = min(B, 16)
    for c in prange(nchunk):
        b0, b1 = _split(B, nchunk, c)
        _mask_fill_part(mask, b0, b1, ptr, idx)


@parallel_kernel
def compact_rows(buf, cnt, ptr, out):
    """Concatenate the first ``cnt[r]`` entries of every row of ``buf`` at ``ptr[r]``."""
    R = buf.shape[0]
    for r in prange(R):
        o = ptr[r]
        c = cnt[r]
        out[o : o + c] = buf[r, :c]  # a slice copy: faster than an element loop (17 against 23 us)


@parallel_kernel
def coo_indices(ptr, idx, F, out):
    """``[3, n]`` int64 COO indices ``(t, b, i)`` of a b-major compact set over ``[T, B, F]``."""
    B = ptr.shape[0] - 1
    for b in prange(B):
        for p in range(ptr[b], ptr[b + 1]):
            f = idx[p]
            t = f // F
            out[0, p] = t
            out[1, p] = b
            out[2, p] = f - t * F


@njit(cache=True)
def _gather_part(ptr, idx, dense, b0, b1, out):
    T = dense.shape[0]
    F = dense.shape[2]
    cur = ptr[b0:b1].copy()
    for t in range(T):
        lim = (t + 1) * F
        base = t * F
        for k in range(b1 - b0):
            b = b0 + k
            p = cur[k]
            pe = ptr[b + 1]
            while p < pe and idx[p] < lim:
                out[p] = dense[t, b, idx[p] - base]
                p += 1
            cur[k] = p


@parallel_kernel
def gather_bmajor(ptr, idx, dense, out):
    """``out[p] = dense[t, b, i]`` for the compact set (``idx = t*F + i``) over ``dense[T, B, F]``.

    Visits the entries time step by time step (one cursor per batch element), so ``dense`` is
    read front to back.
    """
    B = ptr.shape[0] - 1
    nchunk = min(B, 8)
    for c in prange(nchunk):
        b0, b1 = _split(B, nchunk, c)
        _gather_part(ptr, idx, dense, b0, b1, out)


# --------------------------------------------------------------------------- forward


@njit(cache=True, fastmath=FM)
def _forward_part(
    blist,
    r0,
    r1,
    sp_ptr,
    sp_idx,
    sp_val,
    has_val,
    wt,
    bias,
    has_bias,
    beta_,
    thr_,
    bth_,
    s_out,
    a_idx,
    a_d,
    a_cnt,
    o_idx,
    o_cnt,
    n_nan,
):
    T, _, N = s_out.shape
    K = wt.shape[0]
    cap_a = a_idx.shape[1]
    cap_o = o_idx.shape[1]
    dt = s_out.dtype
    zero = dt.type(0)
    nr = r1 - r0
    u = np.zeros((nr, N), dtype=dt)
    cur = np.empty(N, dtype=dt)
    dd = np.empty(N, dtype=dt)
    na = np.zeros(nr, dtype=np.int64)
    no = np.zeros(nr, dtype=np.int64)
    pp = np.empty(nr, dtype=np.int64)
    NW = (N + 7) // 8
    fl = np.zeros(NW * 8, dtype=np.uint8)  # padding stays 0
    fl64 = fl.view(np.uint64)
    for k in range(nr):
        pp[k] = sp_ptr[blist[r0 + k]]
    for t in range(T):
        lim = (t + 1) * K
        base = t * N
        for k in range(nr):
            r = r0 + k
            b = blist[r]
            if has_bias:
                for j in range(N):
                    cur[j] = bias[j]
            else:
                for j in range(N):
                    cur[j] = zero
            p = pp[k]
            pe = sp_ptr[b + 1]
            while p < pe and sp_idx[p] < lim:
                i = sp_idx[p] - t * K
                if has_val:
                    w = sp_val[p]
                    for j in range(N):
                        cur[j] += w * wt[i, j]
                else:
                    for j in range(N):
                        cur[j] += wt[i, j]
                p += 1
            pp[k] = p
            for j in range(N):
                v = beta_ * u[k, j] + cur[j]
                d = v - thr_
                s = d > zero
                s_out[t, b, j] = s
                u[k, j] = v - thr_ * s
                dd[j] = d
                fl[j] = (abs(d) < bth_) + 2 * s
            ma = na[k]
            mo = no[k]
            for w8 in range(NW):  # skip 8 neurons at a time when nothing is to be recorded
                if fl64[w8] == 0:
                    continue
                for j in range(8 * w8, 8 * w8 + 8):
                    f = fl[j]
                    if f & 1:
                        if ma < cap_a:
                            a_idx[r, ma] = base + j
                            a_d[r, ma] = dd[j]
                        ma += 1
                    if f & 2:
                        if mo < cap_o:
                            o_idx[r, mo] = base + j
                        mo += 1
            na[k] = ma
            no[k] = mo
    for k in range(nr):
        a_cnt[r0 + k] = na[k]
        o_cnt[r0 + k] = no[k]
        # a non-finite membrane never recovers (V = beta U + I stays inf or NaN, and so does
        # U), so the final state shows every one: O(N) per row instead of a check per step
        m = 0
        for j in range(N):
            if not np.isfinite(u[k, j]):
                m += 1
        n_nan[r0 + k] = m


@parallel_kernel
def fused_forward(
    blist,
    nchunk,
    sp_ptr,
    sp_idx,
    sp_val,
    has_val,
    wt,
    bias,
    has_bias,
    beta,
    thr,
    b_th,
    s_out,
    a_idx,
    a_d,
    a_cnt,
    o_idx,
    o_cnt,
    n_nan,
):
    """Synaptic input + LIF recurrence for the batch elements ``blist``, one pass over time.

    ``I[t] = sum_{i in spikes(b, t)} val * W[:, i] (+ bias)``; ``V[t] = beta*U[t-1] + I[t]``;
    ``S[t] = 1[V - thr > 0]``; ``U[t] = V[t] - thr*S[t]`` (reset detached; Perez-Nieves eq. 2
    with our no-delay indexing). Writes ``S`` into ``s_out[T, B, N]``; for row ``r`` of ``blist``
    records up to ``a_idx.shape[1]`` active entries (``t*N + j``, ``d = V - thr``;
    ``|d| < b_th``, eq. 7) and up to ``o_idx.shape[1]`` output spikes; ``a_cnt``/``o_cnt`` get
    the true counts (larger than the capacity means: run again with more room), ``n_nan`` the
    number of non-finite (inf/NaN) membranes left at the end, i.e. of neurons whose synaptic
    input ever overflowed.
    Threads take contiguous chunks of ``blist``; time is the outer loop inside a chunk so that
    ``S[t]`` is written row after row.
    """
    dt = s_out.dtype
    beta_ = dt.type(beta)
    thr_ = dt.type(thr)
    bth_ = dt.type(b_th)
    R = blist.shape[0]
    for c in prange(nchunk):
        r0, r1 = _split(R, nchunk, c)
        _forward_part(
            blist, r0, r1, sp_ptr, sp_idx, sp_val, has_val, wt, bias, has_bias, beta_, thr_, bth_, s_out, a_idx, a_d,
            a_cnt, o_idx, o_cnt, n_nan,
        )  # fmt: skip


# --------------------------------------------------------------------------- backward


@njit(inline="always", fastmath=FM)
def _scale(v, f):
    for k in range(v.shape[0]):
        v[k] *= f


@njit(cache=True, fastmath=FM)
def _weight_grad_part(
    k0, k1, b0, b1, T, N, K, a_ptr, a_idx, e, sp_ptr, sp_idx, sp_val, has_val, powb, ipow, L, geo, need_dw, need_db,
    dw, db, fuse_e, gs, g,
):  # fmt: skip
    zero = e.dtype.type(0)
    nk = k1 - k0
    # tr holds sum_{t' <= t} x[t'] * beta**(tb - t') for a base step tb; the trace at step t is
    # beta**(t - tb) * tr, so no decay is applied between events (only a rescale every L steps).
    tr = np.zeros(max(nk, 1), dtype=e.dtype)
    dwf = dw.reshape(-1)
    lanes = 32 // tr.itemsize
    nvec = nk // lanes
    for b in range(b0, b1):
        a0 = a_ptr[b]
        a1 = a_ptr[b + 1]
        if a1 == a0:
            continue
        for k in range(nk):
            tr[k] = zero
        tb = -1
        p = sp_ptr[b]
        pe = sp_ptr[b + 1]
        a = a0
        # time cursors instead of integer divisions (idx = t*N + j is walked in order)
        ta = 0
        taN = 0
        ts = 0
        tsK = 0
        while a < a1:
            fa = a_idx[a]
            while fa >= taN + N:
                ta += 1
                taN += N
            lim = (ta + 1) * K
            while p < pe and sp_idx[p] < lim:
                f = sp_idx[p]
                while f >= tsK + K:
                    ts += 1
                    tsK += K
                i = f - tsK
                if i >= k0 and i < k1:
                    if tb < 0:
                        tb = ts
                    elif ts - tb > L:
                        _scale(tr, powb[ts - tb])
                        tb = ts
                    if has_val:
                        tr[i - k0] += sp_val[p] * ipow[ts - tb]
                    else:
                        tr[i - k0] += ipow[ts - tb]
                p += 1
            alim = taN + N
            cb = powb[ta - tb] if tb >= 0 else zero
            while a < a1 and a_idx[a] < alim:
                j = a_idx[a] - taN
                if fuse_e:  # e = dL/dS * g read here: the cache misses overlap the arithmetic
                    ev = gs[ta, b, j] * g[a]
                    e[a] = ev
                else:
                    ev = e[a]
                if ev != zero:
                    if need_db:
                        db[j] += ev * geo[ta]
                    if need_dw and tb >= 0:
                        c = ev * cb
                        w0 = j * K + k0
                        axpy(nvec, c, tr, 0, dwf, w0)
                        for k in range(nvec * lanes, nk):
                            dwf[w0 + k] += c * tr[k]
                a += 1


@parallel_kernel
def weight_grad_active(
    nblk, kb, T, N, K, a_ptr, a_idx, e, sp_ptr, sp_idx, sp_val, has_val, powb, ipow, L, geo, need_dw, need_db, dw, db,
    fuse_e, gs, g,
):  # fmt: skip
    """Eqs. 9-10 (eq. 9's ``S_i[t]`` read as ``S_i[k]``, METHODS 1(d)) from the active entries only.

    ``dW[j, i] += e[b,k,j] * trace[b,k,i]`` with ``trace[b,k,i] = sum_{t<=k} beta**(k-t) x[b,t,i]``
    rebuilt walking forwards through the spike list (no stored trace), and the bias gradient
    ``db[j] += e[b,k,j] * geo[k]`` (``geo[k] = sum_{m<=k} beta**m``, computed by block 0). Block
    ``c`` owns input columns ``[c*kb, (c+1)*kb)`` of ``dw``: no two threads write the same entry,
    so there is no reduction. ``dw``/``db`` must be zeroed. ``powb[n] = beta**n`` (n <= T),
    ``ipow[n] = beta**-n`` (n <= L), ``L`` the longest span before the accumulator is rescaled.
    With ``fuse_e`` (one block only) ``e[a] = gs[t, b, j] * g[a]`` is computed and stored on the
    way from the dense incoming gradient ``gs[T, B, N]``; otherwise ``e`` is given.
    """
    B = a_ptr.shape[0] - 1
    for c in prange(nblk):
        k0 = c * kb
        k1 = min(K, k0 + kb)
        _weight_grad_part(
            k0, k1, 0, B, T, N, K, a_ptr, a_idx, e, sp_ptr, sp_idx, sp_val, has_val, powb, ipow, L, geo, need_dw,
            need_db and c == 0, dw, db, fuse_e and c == 0, gs, g,
        )  # fmt: skip


@njit(cache=True, fastmath=FM)
def _delta_walk_part(
    b0, b1, n0, n1, T, N, K, a_ptr, a_idx, e, p_ptr, p_idx, p_val, has_val, powb, ipow, L, wt, dx_vals, dwt, to_dw
):  # fmt: skip
    """Prop. 1 carried backwards in time for batch elements ``[b0, b1)`` and output neurons
    ``[n0, n1)``, visiting the entries ``p`` of a b-major list over ``[T, B, K]``: at each, with
    ``delta = delta[b, t, n0:n1]``,

    * ``to_dw=False`` (eq. 12): ``dx_vals[p] += W^T[i, n0:n1] . delta`` (``wt = W^T``, ``[K, N]``);
    * ``to_dw=True`` (eqs. 9-10 over input spikes): ``dwt[i, n0:n1] += x_p * delta``.
    """
    zero = e.dtype.type(0)
    nn = n1 - n0
    # D holds sum_{k >= t} e[k] * beta**(k - tb) for a base step tb >= t; delta[t] is
    # beta**(tb - t) * D (Prop. 1 without per-step decays; rescaled when tb - k exceeds L)
    D = np.zeros(max(nn, 1), dtype=e.dtype)
    wtf = wt.reshape(-1)
    lanes = 32 // D.itemsize
    nvec = nn // lanes
    for b in range(b0, b1):
        a0 = a_ptr[b]
        a = a_ptr[b + 1] - 1
        q0 = p_ptr[b]
        q = p_ptr[b + 1] - 1
        if a < a0 or q < q0:
            continue
        for j in range(nn):
            D[j] = zero
        tb = -1
        # time cursors instead of integer divisions (idx = t*N + j is walked in order)
        ta = T - 1
        taN = ta * N
        tq = T - 1
        tqK = tq * K
        while q >= q0:
            fq = p_idx[q]
            while fq < tqK:
                tq -= 1
                tqK -= K
            lo = tq * N
            while a >= a0 and a_idx[a] >= lo:
                f = a_idx[a]
                while f < taN:
                    ta -= 1
                    taN -= N
                j = f - taN
                if j >= n0 and j < n1:
                    if tb < 0:
                        tb = ta
                    elif tb - ta > L:
                        _scale(D, powb[tb - ta])
                        tb = ta
                    D[j - n0] += e[a] * ipow[tb - ta]
                a -= 1
            if tb < 0:
                while q >= q0 and p_idx[q] >= tqK:
                    q -= 1
                continue
            c = powb[tb - tq]
            while q >= q0 and p_idx[q] >= tqK:
                i = p_idx[q] - tqK
                if to_dw:
                    v = c * p_val[q] if has_val else c
                    row = dwt[i, n0:n1]
                    for j in range(nn):
                        row[j] += v * D[j]
                else:
                    # W^T row i . D: vector part with 4 accumulators (simd.dot), scalar tail
                    w0 = i * N + n0
                    acc = dot(nvec, wtf, w0, D, 0)
                    for j in range(nvec * lanes, nn):
                        acc += wtf[w0 + j] * D[j]
                    dx_vals[q] += c * acc
                q -= 1


@parallel_kernel
def input_grad_active(nchunk, nb, T, N, K, a_ptr, a_idx, e, wt, p_ptr, p_idx, powb, ipow, L, dx_vals):
    """Eqs. 11-12: the input gradient only at the previous layer's active entries.

    Walking backwards in time, ``delta[b,t,:] = e[b,t,:] + beta*delta[b,t+1,:]`` (Prop. 1; the
    decays are folded into a rescaled accumulator, so steps without events cost nothing); at every
    needed entry ``(b,t,i)``, ``dx += sum_j W[j, i] delta[b,t,j]``. Output neurons are processed
    in blocks of ``nb``; batch chunks run in parallel and write disjoint entries of ``dx_vals``
    (zeroed by the caller). Tables as in :func:`weight_grad_active`.
    """
    B = a_ptr.shape[0] - 1
    nnb = (N + nb - 1) // nb
    for q_blk in range(nnb):
        n0 = q_blk * nb
        n1 = min(N, n0 + nb)
        for c in prange(nchunk):
            b0, b1 = _split(B, nchunk, c)
            _delta_walk_part(
                b0, b1, n0, n1, T, N, K, a_ptr, a_idx, e, p_ptr, p_idx, e[:0], False, powb, ipow, L, wt, dx_vals,
                wt[:0], False,
            )  # fmt: skip


@njit(cache=True, fastmath=FM)
def _bias_grad_part(n0, n1, b0, b1, N, a_ptr, a_idx, e, geo, db):
    """``db[j] += e[b,t,j] * geo[t]`` for ``j`` in ``[n0, n1)`` and ``b`` in ``[b0, b1)`` (eq. 10's bias term)."""
    for b in range(b0, b1):
        ta = 0
        taN = 0
        for p in range(a_ptr[b], a_ptr[b + 1]):
            f = a_idx[p]
            while f >= taN + N:
                ta += 1
                taN += N
            j = f - taN
            if j >= n0 and j < n1:
                db[j] += e[p] * geo[ta]


@parallel_kernel
def weight_grad_inputs(
    nblk, T, N, K, a_ptr, a_idx, e, sp_ptr, sp_idx, sp_val, has_val, powb, ipow, L, geo, need_db, dwt, db
):  # fmt: skip
    """Eqs. 9-10 walked over the *input spikes* instead of the active entries (same sum):
    ``dW^T[i, :] += x[b,t,i] * delta[b,t,:]`` with ``delta`` the Prop. 1 recurrence of the active
    entries' ``e`` carried backwards in time (the walk of :func:`input_grad_active`). Costs
    ``n_inputs x N`` instead of :func:`weight_grad_active`'s ``n_active x K``: the cheaper one for
    an input layer with many inputs (N-MNIST: K = 2312). Writes the *transposed* gradient
    ``dwt[K, N]`` (zeroed by the caller) and ``db``; block ``c`` owns output columns
    ``[c*N/nblk, (c+1)*N/nblk)``, so threads never write the same entry.
    """
    B = a_ptr.shape[0] - 1
    for c in prange(nblk):
        n0, n1 = _split(N, nblk, c)
        _input_walk_part(
            0, B, n0, n1, T, N, K, a_ptr, a_idx, e, sp_ptr, sp_idx, sp_val, has_val, powb, ipow, L, geo, need_db, dwt,
            db,
        )  # fmt: skip


@njit(cache=True)
def _input_walk_part(
    b0, b1, n0, n1, T, N, K, a_ptr, a_idx, e, sp_ptr, sp_idx, sp_val, has_val, powb, ipow, L, geo, need_db, dwt, db
):  # fmt: skip
    """:func:`weight_grad_inputs` for samples ``[b0, b1)`` and output neurons ``[n0, n1)``: the
    bias term, then the delta walk over the input spikes into ``dwt``."""
    if need_db:
        _bias_grad_part(n0, n1, b0, b1, N, a_ptr, a_idx, e, geo, db)
    _delta_walk_part(
        b0, b1, n0, n1, T, N, K, a_ptr, a_idx, e, sp_ptr, sp_idx, sp_val, has_val, powb, ipow, L, dwt, e[:0], dwt, True
    )  # fmt: skip


@parallel_kernel
def weight_grad_batched(
    nbat, by_inputs, T, N, K, a_ptr, a_idx, e, sp_ptr, sp_idx, sp_val, has_val, powb, ipow, L, geo, need_dw, need_db,
    dwp, dbp, fuse_e, gs, g,
):  # fmt: skip
    """Eqs. 9-10 with the batch split over threads: chunk ``c`` of the batch accumulates into its
    own ``dwp[c]`` and ``dbp[c]`` (zeroed here, by the thread that uses them), and
    :func:`sum_chunks` adds them up. Each thread walks only its own samples and writes only its
    own rows, so nothing is walked twice and no cache line is shared, unlike column blocks
    (:func:`weight_grad_active`), where every thread walks every entry and the two threads' parts
    of a ``dW`` row meet inside one cache line (measured on 2 cores: 1.3-2.9 ms against 0.65 ms
    serial at H = 200). ``by_inputs``: :func:`weight_grad_inputs`'s walk (``dwp[c]`` is then
    ``[K, N]``), else :func:`weight_grad_active`'s (``[N, K]``). With ``fuse_e`` every chunk also
    stores ``e = gs * g`` for its own entries.
    """
    B = a_ptr.shape[0] - 1
    for c in prange(nbat):
        b0, b1 = _split(B, nbat, c)
        if need_dw:
            dwp[c].fill(0)
        if need_db:
            dbp[c].fill(0)
        if by_inputs:
            _input_walk_part(
                b0, b1, 0, N, T, N, K, a_ptr, a_idx, e, sp_ptr, sp_idx, sp_val, has_val, powb, ipow, L, geo, need_db,
                dwp[c], dbp[c],
            )  # fmt: skip
        else:
            _weight_grad_part(
                0, K, b0, b1, T, N, K, a_ptr, a_idx, e, sp_ptr, sp_idx, sp_val, has_val, powb, ipow, L, geo, need_dw,
                need_db, dwp[c], dbp[c], fuse_e, gs, g,
            )  # fmt: skip


@parallel_kernel
def sum_chunks(parts, nrow_blk):
    """``parts[0] += parts[1] + ... + parts[C-1]`` over ``parts[C, R, F]``, blocks of rows in
    parallel (the reduction after :func:`weight_grad_batched`)."""
    C, R, _ = parts.shape
    for q in prange(nrow_blk):
        r0, r1 = _split(R, nrow_blk, q)
        for c in range(1, C):
            for r in range(r0, r1):
                parts[0, r, :] += parts[c, r, :]


@njit(cache=True, fastmath=FM)
def _delta_dense_part(b0, b1, a_ptr, a_idx, e, beta_, out):
    T, _, N = out.shape
    D = np.zeros(N, dtype=out.dtype)
    for b in range(b0, b1):
        for j in range(N):
            D[j] = 0
        a0 = a_ptr[b]
        a = a_ptr[b + 1] - 1
        for t in range(T - 1, -1, -1):
            for j in range(N):
                D[j] *= beta_
            lo = t * N
            while a >= a0 and a_idx[a] >= lo:
                D[a_idx[a] - lo] += e[a]
                a -= 1
            for j in range(N):
                out[t, b, j] = D[j]


@parallel_kernel
def delta_dense(a_ptr, a_idx, e, beta, out):
    """Dense ``delta[T, B, N]`` (Prop. 1 run over every step) from the compact ``e``.

    Used only when the input needs a gradient but carries no active set (dense fallback).
    """
    B = out.shape[1]
    beta_ = out.dtype.type(beta)
    nchunk = min(B, 16)
    for c in prange(nchunk):
        b0, b1 = _split(B, nchunk, c)
        _delta_dense_part(b0, b1, a_ptr, a_idx, e, beta_, out)


@njit(cache=True)
def one_spike_list(steps, valid, T, ptr, idx):
    """b-major spike list (``idx = t*K + i``, sorted) of a one-spike-per-input raster from the
    spike step ``steps[b, i]`` of every input (``valid[b, i]``: it spikes at all): a counting sort
    over the ``T`` steps, ``O(K + T)`` per sample. ``ptr[B+1]`` must hold the offsets."""
    B, K = steps.shape
    cnt = np.zeros(T + 1, dtype=np.int64)
    for b in range(B):
        for t in range(T + 1):
            cnt[t] = 0
        for i in range(K):
            if valid[b, i]:
                cnt[steps[b, i] + 1] += 1
        for t in range(T):
            cnt[t + 1] += cnt[t]
        base = ptr[b]
        for i in range(K):  # ascending i inside each step: the list is sorted by t*K + i
            if valid[b, i]:
                t = steps[b, i]
                idx[base + cnt[t]] = t * K + i
                cnt[t] += 1


@njit(cache=True)
def list_to_time_major_csr(ptr, idx, F, T, indptr, indices):
    """Time-major CSR (rows ``t*B + b``, column ``i``) of a b-major spike list (``idx = t*F + i``,
    sorted per sample): a counting sort over the ``T*B`` rows, ``O(nnz + T*B)`` -- instead of a
    scan of the ``T*B*F`` raster. Columns stay ascending inside each row (the list is sorted).
    ``indptr[T*B+1]`` and ``indices[nnz]`` are written."""
    B = ptr.shape[0] - 1
    R = T * B
    for r in range(R + 1):
        indptr[r] = 0
    for b in range(B):
        for p in range(ptr[b], ptr[b + 1]):
            t = idx[p] // F
            indptr[t * B + b + 1] += 1
    for r in range(R):
        indptr[r + 1] += indptr[r]
    fill = indptr[:R].copy()
    for b in range(B):
        for p in range(ptr[b], ptr[b + 1]):
            f = idx[p]
            t = f // F
            r = t * B + b
            indices[fill[r]] = f - t * F
            fill[r] += 1


@njit(cache=True)
def list_counts(ptr, idx, vals, has_val, F, out):
    """``out[b, i] = `` number of entries (or sum of ``vals``) of sample ``b`` at feature ``i`` of
    a b-major list over ``[T, B, F]`` (``idx = t*F + i``); ``out`` must be zeroed. O(entries)."""
    B = ptr.shape[0] - 1
    for b in range(B):
        for p in range(ptr[b], ptr[b + 1]):
            i = idx[p] % F
            if has_val:
                out[b, i] += vals[p]
            else:
                out[b, i] += 1.0


@njit(cache=True)
def add_count_grad(ptr, idx, F, gc, e):
    """``e[p] += gc[b, i]`` for every entry ``p`` (sample ``b``, feature ``i = idx[p] % F``) of a
    b-major set: the gradient of per-sample spike counts reaching every step (O(entries))."""
    B = ptr.shape[0] - 1
    for b in range(B):
        for p in range(ptr[b], ptr[b + 1]):
            e[p] += gc[b, idx[p] % F]
