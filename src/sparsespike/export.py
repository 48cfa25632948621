"""Export time-stepped sparsespike models to NIR, import NIR graphs back, and simulate NIR graphs.

NIR (the Neuromorphic Intermediate Representation; Pedersen et al., "Neuromorphic intermediate
representation: a unified instruction set for interoperable brain-inspired computing",
Nat. Commun. 15:8122, 2024) describes a network as a graph of *continuous-time* primitives
(``Linear``, ``Conv2d``, ``LIF``, ``CubaLIF``, ``LI``, ...). Our layers are discrete-time
(:mod:`sparsespike.neurons`), so an export has to say which discretisation of the NIR
equations reproduces our recurrence. With ``dt`` the step and NIR's

.. math::

    \\tau_{syn}\\dot I = -I + w_{in} S,\\qquad \\tau\\dot v = (v_{leak} - v) + R I,\\qquad
    z = H(v - v_{thr}),\\ v \\leftarrow v_{reset}\\ \\text{where}\\ z = 1

two mappings are provided (``mapping=``); both use ``R = 1/(1-beta)`` and
``w_in = 1/(1-alpha)`` so that one step has unit gain, ``v_leak = v_reset = 0``:

================  ======================  ==========================  ==========================
ours              NIR field               ``"euler"`` (default)       ``"exp"``
================  ======================  ==========================  ==========================
``beta``          ``tau`` / ``tau_mem``   ``dt / (1 - beta)``         ``-dt / ln(beta)``
``alpha``         ``tau_syn``             ``dt / (1 - alpha)``        ``-dt / ln(alpha)``
(unit gain)       ``r``                   ``1 / (1 - beta)``          ``1 / (1 - beta)``
(unit gain)       ``w_in``                ``1 / (1 - alpha)``         ``1 / (1 - alpha)``
``threshold``     ``v_threshold``         ``threshold``               ``threshold``
``reset``         ``v_reset``             ``0`` (see below)           ``0``
``beta = 1``      ``IF`` / ``I``          ``r = 1/dt``                ``r = 1/dt``
================  ======================  ==========================  ==========================

* ``"euler"`` is exact when the graph is simulated with **forward Euler** at step ``dt``,
  ``v += dt/tau (v_leak - v + R I)``, the synaptic current updated first and used in the same
  step: that is what snnTorch (``snntorch/import_nir.py``: ``beta = 1 - dt/tau``, ``dt = 1e-4``),
  Norse (``LIFBoxCell``/``LIBoxCell``, ``dt`` an argument of ``from_nir``) and nirtorch-based
  importers do, and the inverse of snnTorch's own exporter (``tau = dt/(1-beta)``,
  ``r = tau/dt``). Use ``dt=1e-4`` for snnTorch, which hard-codes it.
* ``"exp"`` is exact for an **exponential-Euler / zero-order-hold** simulator
  (``v = v_leak + (v - v_leak) e^{-dt/tau} + (1 - e^{-dt/tau}) R I``), i.e. our own
  ``beta = exp(-dt/tau)`` convention (:meth:`LIFParams.from_taus`). It is *not* an exact
  continuous-time equivalent with Dirac input spikes (that would need ``R = tau/dt`` and, for
  ``CubaLIF``, has a one-step delay from current to membrane that our recurrence lacks).

**Reset.** NIR 1.0 neurons reset *to* ``v_reset``: our ``reset="zero"`` is exact. NIR 1.0 has no
subtractive reset; a ``reset="subtract"`` layer is exported with ``v_reset = 0`` and the node's
metadata ``reset: "subtract"`` (as the NIR paper's Braille benchmark carried it out of band), with
a warning (``subtract_reset="error"`` refuses): simulators that ignore the metadata (snnTorch,
Norse) reset to zero and may spike differently. Our importer and :func:`simulate_nir` honour it.

**Exactness that holds whatever the consumer does.** Weights and biases are copied as float32,
pruned weights stay exact zeros (L0-gated models are pruned with their deterministic test-time
gates first); every neuron node carries our discrete constants (``beta``, ``alpha``,
``threshold``, ``reset``, ``dt``, ``mapping``) in its metadata, so :func:`import_nir` rebuilds
bit-identical layers. Max pooling has no NIR primitive; it is exported as ``SumPool2d`` followed
by ``Threshold(0.5)``, which equals max pooling for binary (spike) inputs.

Example::

    >>> import torch                                                   # doctest: +SKIP
    >>> from sparsespike.layers import SpikingLinear, LeakyReadout
    >>> from sparsespike.export import export_nir, import_nir, simulate_nir
    >>> net = torch.nn.Sequential(SpikingLinear(20, 32), LeakyReadout(32, 3))
    >>> g = export_nir(net, (20,), "net.nir")                          # writes an HDF5 .nir file
    >>> net2 = import_nir("net.nir")                                    # same layers, same weights
    >>> out = simulate_nir(g, torch.zeros(10, 4, 20))                   # reference NIR simulator
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import SparseSpikeError
from .optional import require

if TYPE_CHECKING:  # torch and the layers are imported where used: `sparsespike --help` stays fast
    import torch
    from torch import nn

    from .layers import SpikingConv2d
    from .neurons import LIFParams

Mapping = Literal["euler", "exp"]
MAPPINGS: tuple[str, ...] = ("euler", "exp")
MAXPOOL_THRESHOLD = 0.5
"""Threshold of the ``Threshold`` node after ``SumPool2d`` that stands for max pooling."""
_GAIN_RTOL = 1e-6
PathLike = str | os.PathLike[str]


class ExportError(SparseSpikeError, ValueError):
    """A model or graph cannot be converted (unsupported layer, parameter or structure)."""


def require_nir() -> ModuleType:
    """Import :mod:`nir` lazily, with an error that says how to install it."""
    return require("nir", "NIR export/import (nir >= 1.0)", extra="nir")


# ------------------------------------------------------------------ parameter mapping
def _check_mapping(mapping: str) -> None:
    if mapping not in MAPPINGS:
        raise ExportError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")


def _check_dt(dt: float) -> None:
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):  # IF/I nodes write r = 1/dt
        raise ExportError(f"dt must be a finite number > 0, got {dt!r}")


def decay_to_tau(decay: float, dt: float = 1.0, mapping: Mapping = "euler") -> float:
    """Time constant of a per-step decay in ``[0, 1)``: ``dt/(1-d)`` (euler) or ``-dt/ln d`` (exp)."""
    _check_mapping(mapping)
    _check_dt(dt)
    if not 0.0 <= decay < 1.0:
        raise ExportError(f"a decay must be in [0, 1) to have a finite time constant, got {decay}")
    if mapping == "euler":
        return dt / (1.0 - decay)
    if decay == 0.0:
        raise ExportError(
            "decay 0 has time constant 0 under mapping='exp' (no NIR simulator accepts tau = 0); use mapping='euler'"
        )
    return -dt / math.log(decay)


def tau_to_decay(tau: np.ndarray | float, dt: float = 1.0, mapping: Mapping = "euler") -> np.ndarray:
    """Inverse of :func:`decay_to_tau`: ``1 - dt/tau`` (euler) or ``exp(-dt/tau)`` (exp)."""
    _check_mapping(mapping)
    tau = np.asarray(tau, dtype=np.float64)
    return 1.0 - dt / tau if mapping == "euler" else np.exp(-dt / tau)


def step_gain(tau: np.ndarray | float, r: np.ndarray | float, dt: float, mapping: Mapping) -> np.ndarray:
    """Input-to-state gain of one step: ``r dt/tau`` (euler) or ``r (1 - exp(-dt/tau))`` (exp)."""
    tau = np.asarray(tau, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    return r * dt / tau if mapping == "euler" else r * (1.0 - np.exp(-dt / tau))


def lif_to_nir(
    p: LIFParams,
    shape: tuple[int, ...],
    dt: float = 1.0,
    mapping: Mapping = "euler",
    lif_as_cubalif: bool = False,
) -> tuple[str, dict[str, np.ndarray]]:
    """NIR node type and fields for :class:`LIFParams` over neurons of ``shape``.

    ``alpha = None`` or ``0`` gives ``LIF`` (identical dynamics), else ``CubaLIF``; ``beta = 1``
    gives ``IF``. ``lif_as_cubalif`` writes a leaky ``LIF`` as a ``CubaLIF`` with ``alpha = 0``
    (``tau_syn = dt``, ``w_in = 1``; exact under forward Euler only). Returns
    ``(type name, keyword arguments)``.
    """
    _check_dt(dt)
    ones = np.ones(shape, dtype=np.float64)
    zero = np.zeros(shape, dtype=np.float64)
    thr = p.threshold * ones
    if lif_as_cubalif and (p.alpha is None or p.alpha == 0.0) and p.beta < 1.0:
        if mapping != "euler":
            raise ExportError("lif_as_cubalif needs mapping='euler' (alpha = 0 is tau_syn = 0 under 'exp')")
        p = p.replace(alpha=0.0)
    elif p.alpha is None or p.alpha == 0.0:
        if p.beta == 1.0:
            return "IF", {"r": ones / dt, "v_threshold": thr, "v_reset": zero}
        tau = decay_to_tau(p.beta, dt, mapping)
        return "LIF", {
            "tau": tau * ones, "r": ones / (1.0 - p.beta), "v_leak": zero,
            "v_threshold": thr, "v_reset": zero,
        }  # fmt: skip
    if p.beta == 1.0:
        raise ExportError(
            "a current-based LIF with beta = 1 (no membrane leak) has no NIR primitive (CubaLIF needs a finite tau_mem)"
        )
    return "CubaLIF", {
        "tau_syn": decay_to_tau(p.alpha, dt, mapping) * ones,
        "tau_mem": decay_to_tau(p.beta, dt, mapping) * ones,
        "r": ones / (1.0 - p.beta), "v_leak": zero, "v_threshold": thr, "v_reset": zero,
        "w_in": ones / (1.0 - p.alpha),
    }  # fmt: skip


def readout_to_nir(
    beta: float, shape: tuple[int, ...], dt: float = 1.0, mapping: Mapping = "euler"
) -> tuple[str, dict[str, np.ndarray]]:
    """NIR node for the leaky readout ``V[t] = beta V[t-1] + I[t]``: ``LI`` (or ``I`` if beta = 1)."""
    _check_dt(dt)
    ones = np.ones(shape, dtype=np.float64)
    if beta == 1.0:
        return "I", {"r": ones / dt}
    tau = decay_to_tau(beta, dt, mapping)
    return "LI", {"tau": tau * ones, "r": ones / (1.0 - beta), "v_leak": np.zeros(shape)}


# ------------------------------------------------------------------ helpers
def _node(nir: ModuleType, type_name: str, metadata: dict | None = None, **kw) -> Any:
    """Construct ``nir.<type_name>(**kw)``, with metadata where this nir version supports it."""
    cls = getattr(nir, type_name)
    if metadata:
        try:
            return cls(**kw, metadata=metadata)
        except TypeError:  # nir versions without node metadata
            pass
    return cls(**kw)


def _np32(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy().copy()


def _flat_modules(model: nn.Module) -> list[nn.Module]:
    from torch import nn

    if isinstance(model, nn.Sequential):
        out: list[nn.Module] = []
        for m in model:
            out.extend(_flat_modules(m))
        return out
    if isinstance(model, (nn.Identity, nn.Dropout)):
        return []
    return [model]


def _prod(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _conv_out(size: tuple[int, int], conv: nn.Conv2d) -> tuple[int, int]:
    if isinstance(conv.padding, str):
        if conv.padding == "same":
            return size
        pad = (0, 0)
    else:
        pad = _pair(conv.padding)
    k, s, d = _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.dilation)
    return tuple(  # type: ignore[return-value]
        (size[i] + 2 * pad[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2)
    )


def _meta_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf8")
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v[()]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _metadata(node: Any) -> dict:
    md = getattr(node, "metadata", None) or {}
    return {str(k): _meta_value(v) for k, v in md.items()} if isinstance(md, dict) else {}


def _neuron_metadata(p: LIFParams, module: str, dt: float, mapping: str) -> dict:
    md: dict[str, Any] = {
        "sparsespike_module": module,
        "beta": float(p.beta),
        "threshold": float(p.threshold),
        "reset": p.reset.value,
        "dt": float(dt),
        "mapping": mapping,
    }
    if p.alpha is not None:
        md["alpha"] = float(p.alpha)
    return md


def _maybe_prune(model: nn.Module) -> nn.Module:
    """A pruned deep copy if ``model`` carries L0 gates (exact zeros baked in), else ``model``."""
    try:
        from .sparsity.connectivity import gated_weights, prune
    except ImportError:  # pragma: no cover
        return model
    if not gated_weights(model):
        return model
    return prune(copy.deepcopy(model))


# ------------------------------------------------------------------ export
def export_nir(
    model: nn.Module,
    input_shape: Iterable[int],
    path: PathLike | None = None,
    *,
    dt: float = 1.0,
    mapping: Mapping = "euler",
    subtract_reset: Literal["warn", "error", "ignore"] = "warn",
    always_affine: bool = False,
    lif_as_cubalif: bool = False,
) -> Any:
    """Convert a feed-forward time-stepped sparsespike model into a ``nir.NIRGraph``.

    Args:
        model: an ``nn.Sequential`` (e.g. from :func:`~sparsespike.models.build_network`) of
            :class:`SpikingLinear`, :class:`SpikingConv2d`, :class:`SeqPool2d`,
            :class:`SeqFlatten`, :class:`LeakyReadout`, :class:`SpikeCountReadout` (last).
            L0-gated weights are pruned (deterministic gates, exact zeros) on a copy first.
        input_shape: one sample's input without time and batch, e.g. ``(700,)`` or ``(2, 34, 34)``.
        path: if given, the graph is also written there with ``nir.write`` (HDF5).
        dt: the step the NIR time constants are expressed in (1.0 = time in steps; snnTorch's
            importer assumes 1e-4).
        mapping: ``"euler"`` or ``"exp"`` (see the module docstring for exactness).
        subtract_reset: what to do with ``reset="subtract"`` layers, which NIR 1.0 cannot
            express: ``"warn"`` (export ``v_reset = 0`` plus metadata), ``"error"``, ``"ignore"``.
        always_affine: write bias-free linear layers as ``Affine`` with a zero bias instead of
            ``Linear`` (some importers handle ``Affine`` only).
        lif_as_cubalif: write plain LIF layers as ``CubaLIF`` with ``alpha = 0`` (``tau_syn = dt``,
            ``w_in = 1``), identical under forward Euler, for importers that ignore ``LIF.r``
            (Norse 1.1's ``from_nir`` does; its ``CubaLIF`` applies ``r`` and ``w_in``).

    Node names: ``input``, ``fc<i>``/``conv<i>`` (synapses) and ``lif<i>``/``li<i>`` (neurons)
    with ``i`` the module's index, ``pool<i>``(+``pool<i>_thr``), ``flat<i>``, ``output``. The
    graph output is the last layer's spikes ``[T, ...]``, or the readout membrane ``V[t]``; the
    reduction over time of :class:`LeakyReadout` (``mode``) and :class:`SpikeCountReadout` is
    recorded in the graph metadata (``readout_mode``, ``count_readout``).
    """
    from .layers import (
        LeakyReadout,
        SeqFlatten,
        SeqPool2d,
        SpikeCountReadout,
        SpikingConv2d,
        SpikingLinear,
    )
    from .neurons import Reset

    nir = require_nir()
    _check_mapping(mapping)
    _check_dt(dt)
    if subtract_reset not in ("warn", "error", "ignore"):
        raise ExportError(f"subtract_reset must be 'warn', 'error' or 'ignore', got {subtract_reset!r}")
    model = _maybe_prune(model)
    mods = _flat_modules(model)
    if not mods:
        raise ExportError("export_nir: the model has no layers")
    shape = tuple(int(s) for s in input_shape)
    nodes: dict[str, Any] = {"input": nir.Input(input_type={"input": np.array(shape)})}
    edges: list[tuple[str, str]] = []
    prev = ["input"]
    gmeta: dict[str, Any] = {
        "source": "sparsespike",
        "sparsespike_version": _version(),
        "dt": float(dt),
        "mapping": mapping,
        "layout": "time-major [T, B, ...]; NIR shapes exclude T and B",
    }
    subtract_layers: list[str] = []

    def add(name: str, node: Any) -> None:
        nodes[name] = node
        edges.append((prev[0], name))
        prev[0] = name

    def add_fc(i: int, m: Any, shape: tuple, where: str) -> tuple[int]:
        """Flatten (when the input is not already flat), then the affine map of a linear layer."""
        if shape != (m.in_features,):
            if _prod(shape) != m.in_features:
                raise ExportError(f"{where}: expects {m.in_features} inputs, gets shape {shape}")
            add(f"flat{i}", nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1))
        add(f"fc{i}", _affine(nir, m.weight, m.bias, always_affine))
        return (m.out_features,)

    last = len(mods) - 1
    # what the current tensor holds: spikes (after a spiking layer, or a max pool of them),
    # analog values (after an average pool) or the graph input (unknown)
    held = "input"
    for i, m in enumerate(mods):
        where = f"layer {i} ({type(m).__name__})"
        if isinstance(m, (SpikingLinear, SpikingConv2d)):
            held = "spikes"
        elif isinstance(m, SeqPool2d) and m.mode == "avg":
            held = "analog"
        if isinstance(m, SeqPool2d) and m.mode == "max" and held != "spikes":
            # NIR has no max pooling: SumPool2d + Threshold(0.5) equals max only on 0/1 inputs
            if held == "analog":
                raise ExportError(f"{where}: max pooling of average-pooled values has no NIR equivalent")
            warnings.warn(
                f"{where}: max pooling of the network input is exported as SumPool2d + Threshold, which "
                "equals max only if the input is binary (spikes)",
                stacklevel=2,
            )
        if isinstance(m, SpikingLinear):
            shape = add_fc(i, m, shape, where)
            add(f"lif{i}", _neuron_node(nir, m.neuron, "SpikingLinear", shape, dt, mapping, lif_as_cubalif))
            if m.neuron.reset is Reset.SUBTRACT:
                subtract_layers.append(f"lif{i}")
        elif isinstance(m, SpikingConv2d):
            conv = m.conv
            if len(shape) != 3 or shape[0] != conv.in_channels:
                raise ExportError(f"{where}: expects [{conv.in_channels}, H, W] inputs, gets {shape}")
            if conv.padding_mode != "zeros":  # NIR's Conv2d pads with zeros only
                raise ExportError(f"{where}: padding_mode {conv.padding_mode!r} has no NIR equivalent (zeros only)")
            w = conv.weight
            bias = _np32(conv.bias) if conv.bias is not None else np.zeros(conv.out_channels, np.float32)
            hw = (shape[1], shape[2])
            add(f"conv{i}", _node(
                nir, "Conv2d", {"sparsespike_module": "SpikingConv2d", "bias": int(conv.bias is not None)},
                input_shape=hw, weight=_np32(w), stride=_pair(conv.stride),
                padding=conv.padding if isinstance(conv.padding, str) else _pair(conv.padding),
                dilation=_pair(conv.dilation), groups=int(conv.groups), bias=bias,
            ))  # fmt: skip
            shape = (conv.out_channels, *_conv_out(hw, conv))
            add(f"lif{i}", _neuron_node(nir, m.neuron, "SpikingConv2d", shape, dt, mapping, lif_as_cubalif))
            if m.neuron.reset is Reset.SUBTRACT:
                subtract_layers.append(f"lif{i}")
        elif isinstance(m, SeqPool2d):
            if len(shape) != 3:
                raise ExportError(f"{where}: expects [C, H, W] inputs, gets {shape}")
            k = int(m.kernel_size)
            kw = {"kernel_size": np.array([k, k]), "stride": np.array([k, k]), "padding": np.array([0, 0])}
            shape = (shape[0], shape[1] // k, shape[2] // k)
            if m.mode == "avg":
                add(f"pool{i}", _node(nir, "AvgPool2d", {"sparsespike_module": "SeqPool2d:avg"}, **kw))
            else:
                add(f"pool{i}", _node(nir, "SumPool2d", {"sparsespike_module": "SeqPool2d:max"}, **kw))
                add(f"pool{i}_thr", _node(
                    nir, "Threshold", {"sparsespike_module": "SeqPool2d:max"},
                    threshold=np.full(shape, MAXPOOL_THRESHOLD),
                ))  # fmt: skip
        elif isinstance(m, SeqFlatten):
            add(f"flat{i}", nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1))
            shape = (_prod(shape),)
        elif isinstance(m, LeakyReadout):
            if i != last and not (i == last - 1 and isinstance(mods[last], SpikeCountReadout)):
                raise ExportError(f"{where}: a LeakyReadout reduces over time and must be the last layer")
            shape = add_fc(i, m, shape, where)
            kind, kw = readout_to_nir(m.beta, shape, dt, mapping)
            md = {"sparsespike_module": "LeakyReadout", "beta": float(m.beta), "mode": m.mode,
                  "dt": float(dt), "mapping": mapping}  # fmt: skip
            add(f"li{i}", _node(nir, kind, md, **kw))
            gmeta["readout_mode"] = m.mode
        elif isinstance(m, SpikeCountReadout):
            if i != last:
                raise ExportError(f"{where}: a SpikeCountReadout must be the last layer")
            gmeta["count_readout"] = "mean" if m.mean else "sum"
        else:
            raise ExportError(
                f"{where}: no NIR export for {type(m).__name__}; supported: SpikingLinear, "
                "SpikingConv2d, SeqPool2d, SeqFlatten, LeakyReadout, SpikeCountReadout"
            )
    nodes["output"] = nir.Output(output_type={"output": np.array(shape)})
    edges.append((prev[0], "output"))
    if subtract_layers and subtract_reset != "ignore":
        msg = (
            f"NIR 1.0 has no subtractive reset: {', '.join(subtract_layers)} are exported with "
            "v_reset = 0 and metadata reset='subtract'; sparsespike's import_nir/simulate_nir "
            "honour it, other simulators (snnTorch, Norse, hardware) reset to zero and may "
            "spike differently. Train with reset='zero' for an exact NIR model."
        )
        if subtract_reset == "error":
            raise ExportError(msg)
        warnings.warn(msg, stacklevel=2)
    try:
        graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata=gmeta)
    except TypeError:  # pragma: no cover - nir without graph metadata
        graph = nir.NIRGraph(nodes=nodes, edges=edges)
    if path is not None:
        nir.write(str(path), graph)
    return graph


def _version() -> str:
    from . import __version__

    return __version__


def _affine(nir: ModuleType, weight: torch.Tensor, bias: torch.Tensor | None, always_affine: bool):
    if bias is None and not always_affine:
        return nir.Linear(weight=_np32(weight))
    b = _np32(bias) if bias is not None else np.zeros(weight.shape[0], np.float32)
    return nir.Affine(weight=_np32(weight), bias=b)


def _neuron_node(nir, p: LIFParams, module: str, shape, dt, mapping, lif_as_cubalif=False):
    kind, kw = lif_to_nir(p, shape, dt, mapping, lif_as_cubalif)
    return _node(nir, kind, _neuron_metadata(p, module, dt, mapping), **kw)


def write_nir(graph: Any, path: PathLike) -> None:
    """``nir.write(path, graph)``."""
    require_nir().write(str(path), graph)


def read_nir(path: PathLike) -> Any:
    """``nir.read(path)`` with an error that names the file."""
    nir = require_nir()
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"NIR file not found: {p}")
    try:
        return nir.read(str(p))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{p}: cannot be read as a NIR graph ({type(e).__name__}: {e})") from e


# ------------------------------------------------------------------ graph walking
_NEURONS = ("LIF", "CubaLIF", "IF", "LI", "I", "CubaLI")


def _tname(node: Any) -> str:
    return type(node).__name__


def _topo_order(graph: Any) -> list[str]:
    names = list(graph.nodes)
    indeg = {n: 0 for n in names}
    succ: dict[str, list[str]] = {n: [] for n in names}
    for a, b in graph.edges:
        if a not in indeg or b not in indeg:
            raise ExportError(f"edge ({a!r}, {b!r}) names a node that is not in the graph")
        succ[a].append(b)
        indeg[b] += 1
    ready = [n for n in names if indeg[n] == 0]
    order = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for m in succ[n]:
            indeg[m] -= 1
            if indeg[m] == 0:
                ready.append(m)
    if len(order) != len(names):
        raise ExportError("the NIR graph has a cycle (recurrent connection); only feed-forward graphs are supported")
    return order


def _chain(graph: Any) -> list[tuple[str, Any]]:
    """The nodes between the single Input and the single Output of a chain-shaped graph."""
    nir = require_nir()
    succ: dict[str, list[str]] = {n: [] for n in graph.nodes}
    pred: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for a, b in graph.edges:
        succ[a].append(b)
        pred[b].append(a)
    inputs = [k for k, v in graph.nodes.items() if isinstance(v, nir.Input)]
    if len(inputs) != 1:
        raise ExportError(f"import_nir needs exactly one Input node, found {len(inputs)}")
    chain, cur, seen = [], inputs[0], {inputs[0]}
    while True:
        nxt = succ[cur]
        if len(nxt) != 1:
            raise ExportError(
                f"node {cur!r} has {len(nxt)} successors; import_nir supports chains "
                "(each node feeding exactly one next node)"
            )
        cur = nxt[0]
        if len(pred[cur]) != 1 or cur in seen:
            raise ExportError(f"node {cur!r} has {len(pred[cur])} inputs or closes a cycle; chains only")
        seen.add(cur)
        node = graph.nodes[cur]
        if isinstance(node, nir.Output):
            break
        if isinstance(node, nir.NIRGraph):
            raise ExportError(f"node {cur!r} is a subgraph (e.g. a recurrent layer); not supported")
        chain.append((cur, node))
    if len(seen) != len(graph.nodes):
        raise ExportError(f"nodes {sorted(set(graph.nodes) - seen)} are not on the Input-Output chain")
    return chain


def _graph_settings(graph: Any, dt: float | None, mapping: str | None) -> tuple[float, str]:
    gm = _metadata(graph)
    if dt is None:
        dt = gm.get("dt")
    if mapping is None:
        mapping = gm.get("mapping", "euler")
    if dt is None:
        # a node of ours may still say it
        for node in graph.nodes.values():
            md = _metadata(node)
            if "dt" in md:
                dt = md["dt"]
                mapping = md.get("mapping", mapping)
                break
    if dt is None:
        raise ExportError(
            "the NIR graph does not say its time step (no sparsespike metadata): pass dt=... "
            "(the step it was exported for: snnTorch uses 1e-4, Norse 1e-3) and mapping='euler'"
        )
    _check_mapping(mapping)
    return float(dt), str(mapping)


def _arr(node: Any, field: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    v = np.asarray(getattr(node, field), dtype=np.float64)
    return np.broadcast_to(v, shape).copy() if shape is not None and v.shape != shape else v


def _uniform(a: np.ndarray, what: str, name: str, rtol: float = 1e-6) -> float:
    a = np.asarray(a, dtype=np.float64)
    v = float(a.reshape(-1)[0])
    if not np.allclose(a, v, rtol=rtol, atol=0.0):
        raise ExportError(
            f"node {name!r}: {what} differs between neurons (from {a.min():.6g} to {a.max():.6g}); "
            "sparsespike layers share one value per layer"
        )
    return v


def _neuron_dynamics(name: str, node: Any, dt: float, mapping: str) -> dict:
    """Discrete constants of a NIR neuron node: beta, alpha, threshold, gain (per neuron)."""
    t = _tname(node)
    shape = None
    for f in ("v_threshold", "tau", "tau_mem", "r"):
        if hasattr(node, f):
            shape = np.asarray(getattr(node, f)).shape
            if len(shape):
                break
    shape = tuple(shape or ())
    if hasattr(node, "v_leak") and not np.allclose(np.asarray(node.v_leak, dtype=np.float64), 0.0):
        raise ExportError(f"node {name!r}: v_leak != 0 is not supported (our neurons leak to 0)")
    if getattr(node, "v_reset", None) is not None and not np.allclose(np.asarray(node.v_reset, dtype=np.float64), 0.0):
        raise ExportError(f"node {name!r}: v_reset != 0 is not supported (our reset is to 0)")
    out: dict[str, Any] = {"alpha": None, "shape": shape}
    for f in ("tau", "tau_syn", "tau_mem"):  # NIR's tau < 0 is a growing membrane: nothing of ours
        if hasattr(node, f) and not np.all(np.asarray(getattr(node, f), dtype=np.float64) > 0):
            raise ExportError(f"node {name!r}: {f} must be > 0, got {np.asarray(getattr(node, f)).reshape(-1)[:4]}")
    if t in ("LIF", "LI"):
        tau, r = _arr(node, "tau", shape), _arr(node, "r", shape)
        out["beta"] = _uniform(tau_to_decay(tau, dt, mapping), "tau", name)
        out["gain"] = step_gain(tau, r, dt, mapping)
    elif t in ("IF", "I"):
        out["beta"] = 1.0
        out["gain"] = _arr(node, "r", shape) * dt
    elif t in ("CubaLIF", "CubaLI"):
        ts, tm = _arr(node, "tau_syn", shape), _arr(node, "tau_mem", shape)
        r, w_in = _arr(node, "r", shape), _arr(node, "w_in", shape)
        out["alpha"] = _uniform(tau_to_decay(ts, dt, mapping), "tau_syn", name)
        out["beta"] = _uniform(tau_to_decay(tm, dt, mapping), "tau_mem", name)
        out["gain"] = step_gain(ts, w_in, dt, mapping) * step_gain(tm, r, dt, mapping)
    else:  # pragma: no cover
        raise ExportError(f"node {name!r}: {t} is not a neuron")
    if hasattr(node, "v_threshold"):
        out["thr"] = _arr(node, "v_threshold", shape)
    return out


def _resolve_neuron(name: str, node: Any, dt: float, mapping: str, reset: str | None) -> tuple[dict, np.ndarray | None]:
    """Our constants for a neuron node and the per-neuron input scale to fold into the weights.

    Our metadata (exact discrete constants) wins when it agrees with the node's own fields.
    """
    dyn = _neuron_dynamics(name, node, dt, mapping)
    md = _metadata(node)
    thr_arr = dyn.get("thr")
    beta, alpha = dyn["beta"], dyn["alpha"]
    if thr_arr is not None and not np.all(thr_arr > 0):  # folding thr/thr_j flips or breaks v > thr
        raise ExportError(f"node {name!r}: v_threshold must be > 0 for every neuron (ours spike at v > thr > 0)")
    thr = None if thr_arr is None else float(thr_arr.reshape(-1)[0])
    scale = dyn["gain"] if thr_arr is None else dyn["gain"] * thr / thr_arr
    if "beta" in md:
        ok = abs(md["beta"] - beta) <= 1e-6 and np.allclose(scale, 1.0, rtol=_GAIN_RTOL, atol=0)
        if thr is not None:
            ok = ok and np.allclose(thr_arr, md.get("threshold", thr), rtol=1e-12, atol=0)
        if alpha is not None or "alpha" in md:
            a_md = md.get("alpha", 0.0)
            ok = ok and abs(a_md - (alpha or 0.0)) <= 1e-6
        if ok:
            beta = float(md["beta"])
            alpha = float(md["alpha"]) if "alpha" in md else None
            thr = float(md["threshold"]) if thr is not None else None
            scale = None
        else:
            warnings.warn(
                f"node {name!r}: its sparsespike metadata disagrees with its NIR fields (edited "
                "graph?); the NIR fields are used",
                stacklevel=3,
            )
    if scale is not None and np.allclose(scale, 1.0, rtol=_GAIN_RTOL, atol=0):
        scale = None
    params = {"beta": min(beta, 1.0), "alpha": alpha, "threshold": thr,
              "reset": reset or md.get("reset", "zero")}  # fmt: skip
    return params, scale


# ------------------------------------------------------------------ import
def import_nir(
    graph: Any,
    *,
    dt: float | None = None,
    mapping: Mapping | None = None,
    reset: Literal["zero", "subtract"] | None = None,
    readout_mode: str | None = None,
    backward: str = "dense",
    b_th: float | None = None,
    impl: str = "auto",
) -> nn.Sequential:
    """Rebuild a sparsespike ``nn.Sequential`` from a chain-shaped NIR graph (or a ``.nir`` path).

    Supported node sequences: ``Linear|Affine`` + ``LIF|CubaLIF|IF`` (:class:`SpikingLinear`),
    ``Conv2d`` + neuron (:class:`SpikingConv2d`), ``AvgPool2d`` and ``SumPool2d``+``Threshold``
    (max pooling of spikes) (:class:`SeqPool2d`), ``Flatten``, and a final ``Linear|Affine`` +
    ``LI|I`` (:class:`LeakyReadout`). ``dt``/``mapping`` default to the graph's metadata (graphs
    from other tools need ``dt``). A step gain other than 1 (e.g. ``r`` not ``1/(1-beta)``) or
    per-neuron thresholds are folded exactly into the preceding weights. ``reset`` overrides the
    reset (default: node metadata, else NIR's reset to zero). ``readout_mode`` defaults to the
    graph metadata, else ``"max"``; a ``count_readout`` in the metadata appends a
    :class:`SpikeCountReadout`.
    """
    import torch
    from torch import nn

    from .layers import LeakyReadout, SeqFlatten, SeqPool2d, SpikeCountReadout, SpikingLinear

    nir = require_nir()
    if isinstance(graph, (str, os.PathLike)):
        graph = read_nir(graph)
    dt, mapping = _graph_settings(graph, dt, mapping)
    gmeta = _metadata(graph)
    chain = _chain(graph)
    in_nodes = [v for v in graph.nodes.values() if isinstance(v, nir.Input)]
    shape = tuple(int(s) for s in np.asarray(list(in_nodes[0].input_type.values())[0]).reshape(-1))
    mods: list[nn.Module] = []
    i = 0
    common = {"backward": backward, "b_th": b_th, "impl": impl}
    while i < len(chain):
        name, node = chain[i]
        t = _tname(node)
        nxt = chain[i + 1] if i + 1 < len(chain) else (None, None)
        if t in ("Linear", "Affine", "Conv2d"):
            nname, nnode = nxt
            if nnode is None or _tname(nnode) not in _NEURONS:
                raise ExportError(
                    f"node {name!r} ({t}) is not followed by a neuron node; sparsespike layers "
                    "pair a synapse with a neuron"
                )
            nt = _tname(nnode)
            params, scale = _resolve_neuron(nname, nnode, dt, mapping, reset)
            weight = np.asarray(node.weight, dtype=np.float32)
            bias = np.asarray(node.bias, dtype=np.float32) if t in ("Affine", "Conv2d") else None
            if t == "Conv2d":
                if len(shape) != 3:
                    raise ExportError(f"node {name!r}: Conv2d needs [C, H, W] input, has {shape}")
                m = _conv_from_nir(name, node, weight, bias, params, shape, common)
                if nt in ("LI", "I", "CubaLI"):
                    raise ExportError(f"node {nname!r}: a non-spiking {nt} after Conv2d is not supported")
                if scale is not None:
                    sc = np.asarray(scale, dtype=np.float64)  # per channel x position, or one value
                    s = (
                        np.full((weight.shape[0], 1), float(sc.reshape(-1)[0]))
                        if sc.size == 1
                        else sc.reshape(weight.shape[0], -1)
                    )
                    if not np.allclose(s, s[:, :1], rtol=_GAIN_RTOL, atol=0):
                        raise ExportError(f"node {nname!r}: gain/threshold varies within a channel")
                    _fold(m.conv.weight, m.conv.bias, s[:, 0])
                out_shape = (m.conv.out_channels, *_conv_out((shape[1], shape[2]), m.conv))
            else:
                if len(shape) != 1:
                    mods.append(SeqFlatten())
                    shape = (_prod(shape),)
                if weight.ndim != 2 or weight.shape[1] != shape[0]:
                    raise ExportError(f"node {name!r}: weight {weight.shape} does not take {shape[0]} inputs")
                n_out = weight.shape[0]
                has_bias = bias is not None  # Affine: keep the (maybe zero) bias
                if nt in ("LI", "I"):
                    if i + 2 != len(chain):
                        raise ExportError(f"node {nname!r}: a leaky readout ({nt}) must be last")
                    mode = readout_mode or gmeta.get("readout_mode") or _metadata(nnode).get("mode") or "max"
                    try:
                        m = LeakyReadout(shape[0], n_out, beta=params["beta"], mode=mode, bias=has_bias)
                    except ValueError as e:  # e.g. tau < dt under 'euler': a negative decay
                        raise ExportError(f"node {nname!r}: {e}") from e
                elif nt == "CubaLI":
                    raise ExportError(f"node {nname!r}: CubaLI (current-based readout) is not supported")
                else:
                    m = SpikingLinear(shape[0], n_out, _lif_params(nname, params), bias=has_bias, **common)
                with torch.no_grad():
                    m.weight.copy_(torch.from_numpy(weight))
                    if has_bias:
                        m.bias.copy_(torch.from_numpy(bias))
                if scale is not None:
                    _fold(m.weight, m.bias, np.asarray(scale).reshape(-1))
                out_shape = (n_out,)
            mods.append(m)
            shape = out_shape
            i += 2
        elif t == "Flatten":
            mods.append(SeqFlatten())
            shape = (_prod(shape),)
            i += 1
        elif t in ("AvgPool2d", "SumPool2d"):
            k, s_, pad = (_pair(np.asarray(getattr(node, f)).reshape(-1).tolist() * 2)
                          for f in ("kernel_size", "stride", "padding"))  # fmt: skip
            if k[0] != k[1] or s_ != k or pad != (0, 0):
                raise ExportError(
                    f"node {name!r}: only square pooling with stride = kernel and no padding is "
                    f"supported (kernel {k}, stride {s_}, padding {pad})"
                )
            if len(shape) != 3:
                raise ExportError(f"node {name!r}: pooling needs [C, H, W] input, has {shape}")
            if t == "AvgPool2d":
                mods.append(SeqPool2d(k[0], "avg"))
                i += 1
            else:
                tn, tnode = nxt
                if tnode is None or _tname(tnode) != "Threshold":
                    raise ExportError(
                        f"node {name!r}: SumPool2d is only supported followed by Threshold (max pooling of spikes)"
                    )
                thr = np.asarray(tnode.threshold, dtype=np.float64)
                if not (np.all(thr >= 0) and np.all(thr < 1)):
                    raise ExportError(
                        f"node {tn!r}: SumPool2d + Threshold equals max pooling of spikes only for "
                        "a threshold in [0, 1)"
                    )
                mods.append(SeqPool2d(k[0], "max"))
                i += 2
            shape = (shape[0], shape[1] // k[0], shape[2] // k[0])
        else:
            raise ExportError(
                f"node {name!r}: {t} cannot be imported here (supported chains: Linear/Affine/Conv2d "
                "+ LIF/CubaLIF/IF, Linear/Affine + LI/I last, Flatten, AvgPool2d, SumPool2d+Threshold)"
            )
    if "count_readout" in gmeta:
        mods.append(SpikeCountReadout(mean=gmeta["count_readout"] == "mean"))
    return nn.Sequential(*mods)


def _lif_params(name: str, params: dict) -> LIFParams:
    from .neurons import LIFParams

    try:
        return LIFParams(
            beta=params["beta"], alpha=params["alpha"], threshold=params["threshold"],
            reset=params["reset"],
        )  # fmt: skip
    except ValueError as e:
        raise ExportError(f"node {name!r}: {e}") from e


def _fold(weight: torch.Tensor, bias: torch.Tensor | None, scale: np.ndarray) -> None:
    import torch

    s = torch.from_numpy(np.asarray(scale, dtype=np.float64))
    with torch.no_grad():
        shape = (-1,) + (1,) * (weight.dim() - 1)
        weight.copy_((weight.double() * s.reshape(shape)).to(weight.dtype))
        if bias is not None:
            bias.copy_((bias.double() * s).to(bias.dtype))


def _conv_from_nir(name, node, weight, bias, params, shape, common) -> SpikingConv2d:
    import torch

    from .layers import SpikingConv2d

    if int(np.asarray(node.groups)) != 1:
        raise ExportError(f"node {name!r}: grouped convolutions are not supported")
    dil = _pair(np.asarray(node.dilation).reshape(-1).tolist() * 2)
    if dil != (1, 1):
        raise ExportError(f"node {name!r}: dilated convolutions are not supported")
    c_out, c_in, kh, kw = weight.shape
    if c_in != shape[0]:
        raise ExportError(f"node {name!r}: weight takes {c_in} channels, input has {shape[0]}")
    pad = node.padding
    if isinstance(pad, bytes):
        pad = pad.decode()
    if not isinstance(pad, str):
        pad = _pair(np.asarray(pad).reshape(-1).tolist() * 2)
        pad = pad[0] if pad[0] == pad[1] else pad
    stride = _pair(np.asarray(node.stride).reshape(-1).tolist() * 2)
    stride = stride[0] if stride[0] == stride[1] else stride
    k = kh if kh == kw else (kh, kw)
    has_bias = bool(np.any(bias != 0)) or bool(_metadata(node).get("bias", False))
    m = SpikingConv2d(c_in, c_out, k, _lif_params(name, params), stride=stride, padding=pad,
                      bias=has_bias, **common)  # fmt: skip
    with torch.no_grad():
        m.conv.weight.copy_(torch.from_numpy(weight))
        if has_bias:
            m.conv.bias.copy_(torch.from_numpy(bias))
    return m


# ------------------------------------------------------------------ reference simulator
def simulate_nir(
    graph: Any,
    x: torch.Tensor | np.ndarray,
    *,
    dt: float | None = None,
    mapping: Mapping | None = None,
    reset: Literal["nir", "metadata"] = "metadata",
) -> dict[str, np.ndarray]:
    """A small float64 reference simulator of a feed-forward NIR graph on a time grid.

    ``x`` is ``[T, B, *input_shape]`` (time-major, as our layers). Every step, nodes run in
    topological order, each on the sum of its predecessors' outputs of the same step (no edge
    delays), with the NIR equations integrated by forward Euler (``mapping="euler"``) or by
    exponential Euler / zero-order hold (``"exp"``), the synaptic current of ``CubaLIF``/``CubaLI``
    updated before the membrane; spikes are ``v > v_threshold`` and reset the membrane to
    ``v_reset`` (``reset="nir"``), or by subtracting the threshold where a node's metadata says
    ``reset: subtract`` (``reset="metadata"``, default). Supports Input, Output, Linear, Affine,
    Scale, Conv2d, Flatten, AvgPool2d, SumPool2d, Threshold, LIF, CubaLIF, IF, LI, CubaLI, I.

    Returns every node's output over time, ``{name: ndarray [T, B, ...]}`` (``"output"`` etc.).
    """
    import torch

    nir = require_nir()
    if isinstance(graph, (str, os.PathLike)):
        graph = read_nir(graph)
    dt, mapping = _graph_settings(graph, dt, mapping)
    xs = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if xs.dim() < 2:
        raise ExportError(f"simulate_nir: x must be [T, B, ...], got shape {tuple(xs.shape)}")
    order = _topo_order(graph)
    preds: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for a, b in graph.edges:
        preds[b].append(a)
    inputs = [n for n in order if isinstance(graph.nodes[n], nir.Input)]
    if len(inputs) != 1:
        raise ExportError(f"simulate_nir needs exactly one Input node, found {len(inputs)}")
    state: dict[str, dict[str, torch.Tensor]] = {n: {} for n in order}
    record: dict[str, list[torch.Tensor]] = {n: [] for n in order}
    for t in range(xs.shape[0]):
        out: dict[str, torch.Tensor] = {}
        for n in order:
            node = graph.nodes[n]
            if n == inputs[0]:
                y = xs[t]
            else:
                ins = [out[p] for p in preds[n]]
                if not ins:
                    raise ExportError(f"node {n!r} has no input")
                u = ins[0]
                for v in ins[1:]:
                    u = u + v
                y = _sim_node(n, node, u, state[n], dt, mapping, reset)
            out[n] = y
            record[n].append(y)
    return {n: torch.stack(v).numpy() for n, v in record.items()}


def _t(a: Any) -> torch.Tensor:
    import torch

    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def _sim_node(name, node, u, st, dt, mapping, reset_mode) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    t = _tname(node)
    if t == "Output":
        return u
    if t == "Linear":
        return u @ _t(node.weight).T
    if t == "Affine":
        return u @ _t(node.weight).T + _t(node.bias)
    if t == "Scale":
        return u * _t(node.scale)
    if t == "Flatten":
        s, e = int(node.start_dim), int(node.end_dim)
        return u.flatten(s + 1 if s >= 0 else s, e + 1 if e >= 0 else e)
    if t == "Conv2d":
        pad = node.padding
        pad = pad.decode() if isinstance(pad, bytes) else pad
        if not isinstance(pad, str):
            pad = _pair(np.asarray(pad).reshape(-1).tolist() * 2)
        return F.conv2d(
            u, _t(node.weight), _t(node.bias),
            stride=_pair(np.asarray(node.stride).reshape(-1).tolist() * 2), padding=pad,
            dilation=_pair(np.asarray(node.dilation).reshape(-1).tolist() * 2),
            groups=int(np.asarray(node.groups)),
        )  # fmt: skip
    if t in ("AvgPool2d", "SumPool2d"):
        k, s, p = (_pair(np.asarray(getattr(node, f)).reshape(-1).tolist() * 2)
                   for f in ("kernel_size", "stride", "padding"))  # fmt: skip
        div = 1 if t == "SumPool2d" else None
        return F.avg_pool2d(u, k, s, p, divisor_override=div)
    if t == "Threshold":
        return (u > _t(node.threshold)).to(u.dtype)
    if t not in _NEURONS:
        raise ExportError(f"simulate_nir: node {name!r} of type {t} is not supported")

    def integrate(v, tau, inp):  # tau dv/dt = -v + inp over one step
        if mapping == "euler":
            return v + dt / tau * (inp - v)
        d = torch.exp(-dt / tau)
        return v * d + (1 - d) * inp

    if t in ("CubaLIF", "CubaLI"):
        i_syn = st.get("i", torch.zeros_like(u))
        i_syn = integrate(i_syn, _t(node.tau_syn), _t(node.w_in) * u)
        st["i"] = i_syn
        u = i_syn
        tau, leak = _t(node.tau_mem), _t(node.v_leak)
    elif t in ("LIF", "LI"):
        tau, leak = _t(node.tau), _t(node.v_leak)
    v = st.get("v", torch.zeros_like(u))
    if t in ("IF", "I"):
        v = v + dt * _t(node.r) * u
    else:
        v = integrate(v - leak, tau, _t(node.r) * u) + leak
    if t in ("LI", "I", "CubaLI"):
        st["v"] = v
        return v
    thr = _t(node.v_threshold)
    z = (v > thr).to(v.dtype)
    if reset_mode == "metadata" and _metadata(node).get("reset") == "subtract":
        st["v"] = v - thr * z
    else:
        v_reset = _t(node.v_reset) if getattr(node, "v_reset", None) is not None else torch.zeros(())
        st["v"] = torch.where(z > 0, v_reset.to(v.dtype), v)
    return z


# ------------------------------------------------------------------ run directories, CLI
def dataset_input_shape(cfg: Any) -> tuple[int, ...] | None:
    """One sample's model input shape for a run's :class:`~sparsespike.config.DataConfig`, or None."""
    data = cfg.data
    ds, enc = data.dataset, dict(data.encoding or {})
    if ds == "yinyang":
        return (5,) if enc.get("bias_spike") else (4,)
    if ds in ("mnist", "fashion-mnist"):
        return (1, 28, 28)
    if ds == "cifar10":
        return (3, 32, 32)
    if ds == "nmnist-small":
        c = 1 if enc.get("merge_polarity") else 2
        return (c, 34, 34) if enc.get("conv") else (c * 34 * 34,)
    if ds == "shd":
        return (700,)
    if ds.startswith("tonic-"):
        try:
            from .data.tonic_data import tonic_input_shape

            return tonic_input_shape(ds[len("tonic-") :], **_tonic_opts(enc))
        except (ImportError, ValueError, TypeError):
            return None
    return None


def _tonic_opts(enc: dict) -> dict:
    keys = ("downsample", "merge_polarity", "spatial")
    return {k: enc[k] for k in keys if k in enc}


def _shape_from_state(state: dict) -> tuple[int, ...] | None:
    for k, v in state.items():
        if k.endswith("weight") or k.endswith("weight.original"):
            if v.dim() == 2:
                return (int(v.shape[1]),)
            return None
    return None


def _load_yin(path: Path, input_shape: Iterable[int] | None) -> tuple[nn.Module, tuple[int, ...], Any]:
    """A Yin run's pruned network from its ``model.pt`` (config inside), its input shape and a
    config-like object with ``name``."""
    from types import SimpleNamespace

    from .sparsity.yin_models import YIN_STRUCTURES, load_yin_model, parse_structure

    model, cfg = load_yin_model(path)
    mcfg = cfg.get("model") or {}
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
    elif "input_shape" in mcfg:
        shape = tuple(int(s) for s in mcfg["input_shape"])
    else:
        shape = parse_structure(mcfg.get("structure") or YIN_STRUCTURES[mcfg.get("name", "mnist")])[0]
    return model, shape, SimpleNamespace(name=cfg.get("name", path.parent.name))


def load_trained_model(
    path: PathLike,
    checkpoint: Literal["best", "last"] = "best",
    input_shape: Iterable[int] | None = None,
) -> tuple[nn.Module, tuple[int, ...], Any]:
    """Rebuild a trained model from a run directory (or one of its ``.pt`` checkpoints).

    Reads ``run.json`` (the config), builds the network, re-attaches L0 gates if the run had them,
    loads ``best.pt`` (or ``last.pt``) and prunes the gates into exact zeros. Returns
    ``(model in eval mode, input_shape, config)``. A Yin run (``engine: yin``, or a ``model.pt``
    written by ``train_yin``) gives its pruned ``model.pt`` instead (``checkpoint`` does not
    apply) and its config as a dict.
    """
    from .config import ExperimentConfig, from_dict
    from .models import build_network
    from .train import load_checkpoint, run_engine

    p = Path(path)
    if p.name == "model.pt":
        return _load_yin(p, input_shape)
    engine = run_engine(p if p.is_dir() else p.parent) if p.exists() else None
    if engine == "yin":  # a Yin run exports its pruned model.pt, whichever file was named
        return _load_yin((p if p.is_dir() else p.parent) / "model.pt", input_shape)
    if engine == "eventprop":
        raise ExportError(
            f"{p} is an EventProp run (exact event-driven simulation): NIR export covers the "
            "time-stepped engine's models and Yin runs; use the run's weights.pt from Python instead"
        )
    if p.is_dir():
        run_dir = p
        ckpt = p / f"{checkpoint}.pt"
        if not ckpt.is_file():
            other = p / ("last.pt" if checkpoint == "best" else "best.pt")
            if not other.is_file():
                raise ExportError(f"no checkpoint in {p} (looked for best.pt and last.pt)")
            ckpt = other
    elif p.is_file():
        run_dir, ckpt = p.parent, p
    else:
        raise ExportError(f"run directory or checkpoint not found: {p}")
    info_p = run_dir / "run.json"
    if not info_p.is_file():
        raise ExportError(f"{info_p} not found: export needs the run's config (run.json beside the checkpoint)")
    try:
        cfg = from_dict(ExperimentConfig, json.loads(info_p.read_text())["config"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ExportError(f"{info_p}: no readable 'config' ({e})") from e
    full = load_checkpoint(ckpt)
    state = full.get("model", full)
    shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
    shape = shape or dataset_input_shape(cfg) or _shape_from_state(state)
    if shape is None:
        raise ExportError(f"cannot tell the input shape of dataset {cfg.data.dataset!r}: pass --input-shape")
    m = cfg.model
    model = build_network(m.layers, shape, m.neuron, m.backward, m.b_th, m.weight_scale)
    if m.gates:
        from .sparsity.connectivity import add_l0_gates_from_config

        add_l0_gates_from_config(model, m.gates)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ExportError(
            f"{ckpt}: weights do not fit the network built from {info_p} with input shape "
            f"{shape} ({str(e).splitlines()[0]}); pass the right --input-shape"
        ) from e
    if full.get("ema"):  # a run with train.ema: its averaged weights are the result (as load_run)
        from .ema import EmaWeights

        ema = EmaWeights(model, full["ema"]["decay"])
        ema.load_state_dict(full["ema"])
        ema.copy_to(model)
    if m.gates:
        from .sparsity.connectivity import prune

        prune(model)
    return model.eval(), shape, cfg


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``sparsespike export`` to a CLI's sub-parsers (``set_defaults(func=cmd_export)``)."""
    e = subparsers.add_parser(
        "export",
        help="export a trained run (or checkpoint) to NIR (.nir, HDF5)",
        description="Export a trained, possibly pruned, time-stepped model to NIR. "
        "See docs/export.md for the parameter mapping and its exactness.",
    )
    e.add_argument("run", help="run directory (run.json + best.pt/last.pt) or a checkpoint .pt in one")
    e.add_argument("--out", help="output .nir file (default RUN/model.nir)")
    e.add_argument("--checkpoint", choices=["best", "last"], default="best")
    e.add_argument("--input-shape", help="one sample's input shape, e.g. 2,34,34 (default: from the dataset)")
    e.add_argument("--dt", type=float, default=1.0, help="time step of the NIR time constants (default 1)")
    e.add_argument("--mapping", choices=MAPPINGS, default="euler", help="beta -> tau mapping (default euler)")
    e.add_argument("--strict", action="store_true", help="refuse subtractive-reset layers (not exact in NIR)")
    e.add_argument("--always-affine", action="store_true", help="write Linear layers as Affine (zero bias)")
    e.add_argument(
        "--lif-as-cubalif",
        action="store_true",
        help="write LIF layers as CubaLIF with alpha = 0 (for Norse 1.1, which ignores LIF.r)",
    )
    e.set_defaults(func=cmd_export)
    return e


def _parse_shape(s: str | None) -> tuple[int, ...] | None:
    if not s:
        return None
    try:
        return tuple(int(v) for v in s.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise ExportError(f"--input-shape expects integers like 2,34,34, got {s!r}") from None


def cmd_export(args: argparse.Namespace) -> int:
    """``sparsespike export RUN --out model.nir``: write the NIR file and print a summary."""
    model, shape, cfg = load_trained_model(args.run, args.checkpoint, _parse_shape(args.input_shape))
    run = Path(args.run)
    out = Path(args.out) if args.out else (run if run.is_dir() else run.parent) / "model.nir"
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = export_nir(
            model, shape, out, dt=args.dt, mapping=args.mapping,
            subtract_reset="error" if args.strict else "warn", always_affine=args.always_affine,
            lif_as_cubalif=getattr(args, "lif_as_cubalif", False),
        )  # fmt: skip
    for w in caught:
        print(f"warning: {w.message}")
    n_w = n_nz = 0
    for node in graph.nodes.values():
        w = getattr(node, "weight", None)
        if w is not None:
            w = np.asarray(w)
            n_w += w.size
            n_nz += int(np.count_nonzero(w))
    kinds = ", ".join(f"{k}:{type(v).__name__}" for k, v in graph.nodes.items())
    print(f"[{cfg.name}] input {shape}, dt {args.dt}, mapping {args.mapping}")
    print(f"nodes   {kinds}")
    if n_w:
        print(f"weights {n_nz} non-zero of {n_w} ({100 * (1 - n_nz / n_w):.1f} % zeros, kept exactly)")
    print(f"wrote   {out}")
    return 0


__all__ = [
    "MAPPINGS",
    "ExportError",
    "add_export_parser",
    "cmd_export",
    "dataset_input_shape",
    "decay_to_tau",
    "export_nir",
    "import_nir",
    "lif_to_nir",
    "load_trained_model",
    "read_nir",
    "readout_to_nir",
    "require_nir",
    "simulate_nir",
    "step_gain",
    "tau_to_decay",
    "write_nir",
]
