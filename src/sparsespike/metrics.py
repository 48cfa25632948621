"""Energy metrics, exactly as DESIGN.md defines them, recorded through forward hooks.

* **Spike count**: spikes of all spiking (non-input) neurons per sample.
* **<N_S>**: spikes per neuron per sample, per layer and overall (Fontanini et al. sec. 3).
* **Activity %**: ``100 * #(|V - thr| < B_th) / (B*T*N)`` (Perez-Nieves & Goodman eq. 13).
* **SynOps**: for every input spike of a synaptic layer, the number of *non-zero* outgoing
  synapses it drives. Linear: the number of non-zero entries in the spike's column of ``W``.
  Conv: the (output position x output channel) pairs it reaches through non-zero kernel taps,
  counted exactly with borders, strides and padding by one transposed convolution of the
  non-zero mask (:func:`conv_fanout`).
* **Dense FLOPs**: ``2 x`` (multiply-accumulates per time step over non-zero weights) ``x T``;
  conv MACs counted exactly per output position (Yin et al. sec. 5.4: one FLOP per multiply and
  one per add).
* **Energy estimate**: ``SynOps x E_AC + non-spiking MACs x E_MAC``; non-spiking MACs are the
  dense MACs of layers whose input is not binary. Defaults: 45 nm CMOS, 32-bit float,
  ``E_AC = 0.9 pJ``, ``E_MAC = 4.6 pJ`` (Horowitz, ISSCC 2014, "Computing's energy problem").

All counts are per sample (totals divided by the number of samples seen).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

E_AC_PJ = 0.9
E_MAC_PJ = 4.6


# ---------------------------------------------------------------- pure counting functions
def linear_fanout(weight: torch.Tensor) -> torch.Tensor:
    """Non-zero outgoing synapses of each input unit of a linear layer ``W[out, in]``: ``[in]``."""
    return (weight.detach() != 0).sum(0).to("cpu", torch.float64)


def conv_fanout(
    weight: torch.Tensor,
    in_hw: tuple[int, int],
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    values: bool = False,
) -> torch.Tensor:
    """Exact fan-out ``[C_in, H, W]`` of every input position of a 2-D convolution.

    Entry ``(c, y, x)`` is the number of (output channel, output position) pairs whose receptive
    field uses input ``(c, y, x)`` through a non-zero weight: the transposed convolution of an
    all-ones output with the non-zero mask of ``weight``. Its sum is the layer's exact MAC count.
    Positions a stride never reaches, or that only padding would cover, get 0.

    ``values=True`` sums ``weight``'s own entries instead of its non-zero mask, differentiably
    (the expected-SynOps penalty passes the gates' ``P(b != 0)``: the expected fan-out).
    """
    if not values:
        mask = (weight.detach() != 0).to("cpu", torch.float64)
        with torch.no_grad():
            return conv_fanout(mask, in_hw, stride, padding, dilation, groups, values=True)
    h, w = in_hw
    k = weight.shape[2:]
    pair = nn.modules.utils._pair
    stride, dilation = pair(stride), pair(dilation)
    if isinstance(padding, str):  # "valid" / "same" (odd effective kernels: symmetric padding)
        if padding == "valid":
            padding = (0, 0)
        else:
            span = [d * (kk - 1) for d, kk in zip(dilation, k, strict=True)]
            if any(s % 2 for s in span):
                raise ValueError(
                    f"conv_fanout: padding='same' with an even effective kernel {tuple(k)} is not supported"
                )
            padding = tuple(s // 2 for s in span)
    padding = pair(padding)
    geom = list(zip((h, w), stride, padding, dilation, k, strict=True))
    out_hw = [(n + 2 * p - d * (kk - 1) - 1) // s + 1 for n, s, p, d, kk in geom]
    if min(out_hw) < 1:
        return weight.new_zeros(weight.shape[1] * groups, h, w)
    # rows/columns past the last one a stride reaches ((h + 2p - d(k-1) - 1) % s of them) get
    # fan-out 0: output_padding makes the transposed map cover the whole input
    full = [(o - 1) * s - 2 * p + d * (kk - 1) + 1 for o, (_, s, p, d, kk) in zip(out_hw, geom, strict=True)]
    extra = tuple(max(0, n - f) for n, f in zip((h, w), full, strict=True))
    ones = weight.new_ones(1, weight.shape[0], *out_hw)
    fan = nn.functional.conv_transpose2d(
        ones, weight, stride=stride, padding=padding, output_padding=extra, dilation=dilation, groups=groups
    )
    return fan[0, :, :h, :w]


def synops(spikes_per_unit: torch.Tensor, fanout: torch.Tensor) -> float:
    """``sum_i spikes_i * fanout_i``: synaptic events driven by the given spike totals."""
    return float((spikes_per_unit.to(torch.float64) * fanout).sum())


def energy_pj(synops_: float, nonspiking_macs: float, e_ac: float = E_AC_PJ, e_mac: float = E_MAC_PJ) -> float:
    """Energy estimate in picojoules: ``SynOps*E_AC + MACs*E_MAC`` (DESIGN.md)."""
    return synops_ * e_ac + nonspiking_macs * e_mac


def _input_totals(x: torch.Tensor, unit: torch.Size, frames: int) -> tuple[torch.Tensor, bool]:
    """Spikes (values) of ``x`` summed over its ``frames`` leading entries, shaped ``unit``, on the
    CPU, and whether ``x`` is binary. When a sparse layer or an encoder attached a spike list to
    ``x`` (``kernels.sparse.SpikeMeta``), both come from it in O(spikes)
    (:func:`~sparsespike.kernels.sparse.spike_counts`); else from ``x`` itself (three passes)."""
    from .kernels.sparse import get_meta, spike_counts

    meta = get_meta(x) if x.dim() >= 3 and x.device.type == "cpu" else None
    lst = meta.spike_list() if meta is not None else None
    if lst is not None and lst.F == unit.numel():
        binary = lst.vals is None or bool((lst.vals == 1).all())
        return spike_counts(x).reshape(unit), binary
    binary = bool(((x == 0) | (x == 1)).all())
    return x.reshape(frames, *unit).sum(0).cpu(), binary


# ---------------------------------------------------------------- records
@dataclass
class LayerRecord:
    """Per-layer totals over everything seen (divide by samples for per-sample values)."""

    name: str
    kind: str
    spikes: float = 0.0
    n_active: int = 0
    n_entries: int = 0
    synops: float = 0.0
    dense_macs: float = 0.0
    nonspiking_macs: float = 0.0
    input_spikes: float = 0.0
    binary_input: bool = True
    widths: set = field(default_factory=set)  # per-sample widths of the outputs it emitted
    first_call: int | None = None  # order of its first synaptic call (execution, not declaration)

    @property
    def neurons(self) -> int:
        """Neurons per sample: each width the module emitted, counted once (see the recorder)."""
        return sum(self.widths)


@dataclass
class MetricsReport:
    """Per-sample metrics of a network (DESIGN.md definitions)."""

    samples: int
    layers: list[dict] = field(default_factory=list)
    spike_count: float = 0.0
    input_spikes: float = 0.0
    ns: float = 0.0
    synops: float = 0.0
    dense_flops: float = 0.0
    nonspiking_macs: float = 0.0
    energy_pj: float = 0.0
    e_ac_pj: float = E_AC_PJ
    e_mac_pj: float = E_MAC_PJ

    def as_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """A markdown table, one row per layer plus the total."""
        head = "| layer | neurons | spikes/sample | <N_S> | activity % | SynOps | dense FLOPs |\n"
        head += "|---|---:|---:|---:|---:|---:|---:|\n"
        rows = []
        for r in self.layers:
            act = "" if r["activity_pct"] is None else f"{r['activity_pct']:.2f}"
            ns = "" if r["ns"] is None else f"{r['ns']:.3f}"
            sp = "" if r["neurons"] == 0 else f"{r['spikes']:.1f}"
            rows.append(
                f"| {r['name']} | {r['neurons'] or ''} | {sp} | {ns} | {act} | "
                f"{r['synops']:.4g} | {r['dense_flops']:.4g} |"
            )
        rows.append(
            f"| **total** | | {self.spike_count:.1f} | {self.ns:.3f} | | {self.synops:.4g} | {self.dense_flops:.4g} |"
        )
        return (
            head
            + "\n".join(rows)
            + (
                f"\n\nEnergy estimate: {self.energy_pj / 1e6:.4g} uJ per sample "
                f"(SynOps x {self.e_ac_pj} pJ + non-spiking MACs x {self.e_mac_pj} pJ; 45 nm, Horowitz 2014)."
            )
        )


def refuse_inference_twins(model: nn.Module, what: str) -> None:
    """Counting a model converted by :func:`sparsespike.sparse_inference.sparse_inference_model`
    would see none of its layers (their weights are buffers of fused kernels, and a spiking conv
    may have absorbed its pooling), so the totals would silently be 0: refuse it."""
    twins = [name or type(m).__name__ for name, m in model.named_modules() if getattr(m, "inference_twin", False)]
    if twins:
        raise ValueError(
            f"{what}: {twins[:3]}{' ...' if len(twins) > 3 else ''} are sparse-inference twins "
            "(sparse_inference_model); count the model before conversion: it gives the same outputs"
        )


def _is_synaptic(m: nn.Module) -> bool:
    """A layer whose SynOps and FLOPs are counted (Linear and zero-padded Conv2d); other weight
    layers raise, so that no total silently leaves one out."""
    from .layers import LeakyReadout, SpikingConv2d, SpikingLinear

    if isinstance(m, (SpikingLinear, LeakyReadout, nn.Linear, SpikingConv2d)):
        return True
    if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros":
        return True
    if isinstance(m, (nn.modules.conv._ConvNd, nn.Bilinear, nn.Embedding, nn.RNNBase)):
        raise ValueError(
            f"measure counts SynOps and FLOPs of Linear and zero-padded Conv2d layers; {type(m).__name__} "
            f"({'padding_mode=' + repr(m.padding_mode) if isinstance(m, nn.Conv2d) else 'this layer type'}) "
            "is not supported, and leaving it out would understate the totals"
        )
    return False


class MetricsRecorder:
    """Hooks on a model that accumulate spikes, activity, SynOps and FLOPs per layer.

    Works on sparsespike models and on any model built from ``nn.Linear``/``nn.Conv2d`` plus
    modules that emit spikes (``spiking=`` a predicate, as for :class:`SpikeMonitor`).
    Time-major inputs ``[T, B, ...]`` are assumed for the sample count (``batch_dim=1``); pass
    ``samples=`` to :meth:`report` for other layouts. ``batch_dim`` also locates the batch dim
    of the spike outputs: the neurons of a layer are the dims after it (``batch_dim=0`` for a
    model called once per step on ``[B, ...]`` inputs, with ``samples=`` the true sample count).
    A spiking module that emits several widths (one activation shared by layers of different
    sizes) counts each width once; give layers of the same width their own modules.

    Example::

        rec = MetricsRecorder(net)
        with torch.no_grad():
            for x, y in loader: net(x)
        print(rec.report().table())
        rec.remove()
    """

    def __init__(self, model: nn.Module, spiking=None, extract=None, batch_dim: int = 1) -> None:
        from .layers import SpikingConv2d

        refuse_inference_twins(model, "MetricsRecorder")
        self.model = model
        self.batch_dim = batch_dim
        self.samples = 0
        self._calls = 0  # synaptic layers seen so far, in the order they first ran
        self.records: dict[str, LayerRecord] = {}
        self._handles = []
        if spiking is None:
            spiking = lambda m: getattr(m, "emits_spikes", False)  # noqa: E731
        self.extract = extract
        self._handles.append(model.register_forward_pre_hook(self._count_samples))
        wrapped = {id(m.conv) for m in model.modules() if isinstance(m, SpikingConv2d)}
        for name, m in model.named_modules():
            if id(m) in wrapped:
                continue  # counted through its SpikingConv2d
            if m is model and not name:
                name = type(m).__name__
            if spiking(m):
                rec = self.records.setdefault(name, LayerRecord(name, type(m).__name__))
                self._handles.append(m.register_forward_hook(self._spike_hook(rec, m)))
            if _is_synaptic(m):
                inner = m.conv if isinstance(m, SpikingConv2d) else m
                rec = self.records.setdefault(name, LayerRecord(name, type(m).__name__))
                self._handles.append(m.register_forward_hook(self._syn_hook(rec, m, inner)))

    # -- hooks
    def _count_samples(self, module, inputs):
        x = inputs[0] if inputs else None
        if isinstance(x, torch.Tensor) and x.dim() > self.batch_dim:
            self.samples += x.shape[self.batch_dim]

    def _spike_hook(self, rec: LayerRecord, module: nn.Module):
        def hook(mod, inputs, output):
            from .sparsity.monitor import _default_extract

            s = (self.extract or _default_extract)(output)
            with torch.no_grad():
                rec.spikes += float(s.sum())
                # neurons per sample: the dims after the batch dim ([T, B, ...] by default, per-step
                # [B, ...] outputs with batch_dim=0); a module that emits several widths (one
                # activation shared by layers of different sizes) drives all of them, each counted
                # once (calls of one width are indistinguishable from a loop over time steps)
                bd = self.batch_dim
                rec.widths.add(int(s.shape[bd + 1 :].numel()) if s.dim() > bd + 1 else int(s.shape[-1]))
            st = getattr(mod, "last_stats", None)
            if st:
                rec.n_active += st.get("n_active", 0)
                rec.n_entries += st.get("n_total", 0)

        return hook

    def _syn_hook(self, rec: LayerRecord, module: nn.Module, inner: nn.Module):
        def hook(mod, inputs, output):
            x = inputs[0]
            if rec.first_call is None:
                rec.first_call = self._calls
                self._calls += 1
            with torch.no_grad():
                w = inner.weight
                if isinstance(inner, nn.Conv2d):
                    unit = x.shape[-3:]
                    fan = conv_fanout(w, tuple(unit[1:]), inner.stride, inner.padding, inner.dilation, inner.groups)
                else:
                    unit = x.shape[-1:]
                    fan = linear_fanout(w)
                frames = x.numel() // unit.numel()
                xs, binary = _input_totals(x, unit, frames)
                macs = float(fan.sum()) * frames
                rec.dense_macs += macs
                if binary:
                    rec.synops += synops(xs, fan)
                    rec.input_spikes += float(xs.sum())
                else:
                    rec.binary_input = False
                    rec.nonspiking_macs += macs

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def reset(self) -> None:
        self.samples = 0
        self._calls = 0
        for r in self.records.values():
            keep = (r.name, r.kind)
            r.__init__(*keep)

    # -- report
    def report(self, samples: int | None = None, e_ac: float = E_AC_PJ, e_mac: float = E_MAC_PJ) -> MetricsReport:
        n = samples if samples is not None else self.samples
        if n <= 0:
            raise RuntimeError("MetricsRecorder: no samples seen; run the model or pass samples=")
        layers = []
        tot_spk = tot_neurons = 0.0
        syn = flops = nsm = 0.0
        first_input_spikes = None
        for r in self.records.values():
            spk = r.spikes / n
            ns = spk / r.neurons if r.neurons else None
            if r.neurons:
                tot_spk += spk
                tot_neurons += r.neurons
            act = 100.0 * r.n_active / r.n_entries if r.n_entries else None
            layers.append(
                dict(
                    name=r.name,
                    kind=r.kind,
                    neurons=r.neurons,
                    spikes=spk,
                    ns=ns,
                    activity_pct=act,
                    synops=r.synops / n,
                    dense_flops=2.0 * r.dense_macs / n,
                    nonspiking_macs=r.nonspiking_macs / n,
                    binary_input=r.binary_input,
                )
            )
            syn += r.synops / n
            flops += 2.0 * r.dense_macs / n
            nsm += r.nonspiking_macs / n
        # the network's input spikes: those of the first synaptic layer to run
        ran = [r for r in self.records.values() if r.dense_macs > 0 and r.first_call is not None]
        first_input_spikes = min(ran, key=lambda r: r.first_call).input_spikes / n if ran else None
        return MetricsReport(
            samples=n,
            layers=layers,
            spike_count=tot_spk,
            input_spikes=first_input_spikes or 0.0,
            ns=tot_spk / tot_neurons if tot_neurons else 0.0,
            synops=syn,
            dense_flops=flops,
            nonspiking_macs=nsm,
            energy_pj=energy_pj(syn, nsm, e_ac, e_mac),
            e_ac_pj=e_ac,
            e_mac_pj=e_mac,
        )


@torch.no_grad()
def measure(model: nn.Module, batches, **kw) -> MetricsReport:
    """Run ``model`` over an iterable of input batches (time-major) and report the metrics."""
    was = model.training
    model.eval()
    rec = MetricsRecorder(model, **kw)
    try:
        for x in batches:
            model(x)
        return rec.report()
    finally:
        rec.remove()
        model.train(was)
