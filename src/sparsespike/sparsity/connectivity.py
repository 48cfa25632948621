"""Connectivity sparsity: hard-concrete L0 gates on any Linear/Conv weight (Yin et al. 2021).

Every gated weight is re-parametrised as (Yin et al. KDD'21 eq. 8, after Louizos et al. 2018)

.. math::

    W = \\tilde W \\odot b,\\qquad b_{ij} \\in [0, 1],\\ \\text{one gate per weight,}

with the gate drawn from the *hard-concrete* distribution (Yin eqs. 17-19 = 23-25; Louizos
eqs. 10-11; the reference ``L0_regularization/l0_layers.py: quantile_concrete``):

.. math::

    u &\\sim U(\\epsilon, 1 - \\epsilon),\\qquad
    s = \\sigma\\big((\\log u - \\log(1-u) + \\log\\alpha)/\\beta\\big),\\\\
    \\bar s &= s(\\zeta - \\gamma) + \\gamma,\\qquad b = \\min(1, \\max(0, \\bar s)),

``beta = 2/3``, ``gamma = -0.1``, ``zeta = 1.1``, ``eps = 1e-6``. The penalty is the expected
number of non-zero gates (Yin eq. 20, which omits the factor ``lambda`` of eq. 14):

.. math::

    L_C = \\lambda \\sum_{ij} \\sigma\\big(\\log\\alpha_{ij} - \\beta \\log(-\\gamma/\\zeta)\\big)
        = \\lambda \\sum_{ij} P(b_{ij} \\ne 0).

At test time the gate is deterministic (Louizos sec. 3 / reference ``sample_z(sample=False)``;
Yin is silent): ``b = min(1, max(0, sigmoid(log_alpha) (zeta - gamma) + gamma))``. A weight is
pruned iff ``sigmoid(log_alpha) <= 1/12``, i.e. ``log_alpha <= -ln 11``.

**One gate sample per mini-batch** (Yin sec. 5.3), shared by all samples and all ``T`` steps of
a forward pass. The gate keeps its uniform noise ``u`` (a non-persistent buffer) and rebuilds
``b`` from ``u`` and ``log_alpha`` on every access of ``module.weight`` (so gradients reach
``log_alpha`` however often the weight is read), and ``u`` only changes when it is resampled:

* ``add_l0_gates(model, resample="forward")`` (default) registers a forward pre-hook on
  ``model`` that draws new noise for all its gates whenever ``model`` is *called* in training
  mode. Any model whose ``forward`` covers all ``T`` steps works: our time-major layers, and
  snnTorch/Norse models that loop over time inside ``forward``.
* ``resample="manual"``: nothing is automatic; call :func:`resample_gates` once per mini-batch
  in the training loop. Use this when the *training loop* calls the model once per time step
  (``for t in range(T): out = net(x[t])``) -- the pre-hook would then resample every step.
  A gate that has never been sampled draws its noise lazily on first use, then keeps it.

In eval mode the deterministic gate is used and nothing is sampled. Sampling draws from a
``torch.Generator`` shared by all gates of one :func:`add_l0_gates` call (``seed=``), in module
order, so a fixed seed gives the same masks; ``seed=None`` uses torch's global RNG.

Example (any PyTorch model)::

    >>> import torch
    >>> from torch import nn
    >>> from sparsespike.sparsity.connectivity import add_l0_gates, l0_penalty, prune
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    >>> gates = add_l0_gates(net, lam=1e-3, seed=0)
    >>> len(gates)
    2
    >>> loss = net(torch.rand(8, 1, 8, 8)).pow(2).mean() + l0_penalty(net)
    >>> loss.backward()
    >>> net = prune(net)                   # exact zeros, plain nn.Conv2d / nn.Linear again
    >>> isinstance(net[0].weight, nn.Parameter)
    True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..layers import LeakyReadout, SpikingLinear
from ..metrics import refuse_inference_twins

# Louizos et al. 2018 / Yin et al. 2021 Table 1 constants
BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1
EPS = 1e-6
LOG_ALPHA_MIN = math.log(0.01)  # reference constrain_parameters()
LOG_ALPHA_MAX = math.log(100.0)


def _make_generator(seed: int | torch.Generator | None) -> torch.Generator | None:
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed))


class HardConcreteGate(nn.Module):
    """``torch.nn.utils.parametrize`` parametrization ``W = W_tilde * b`` with one hard-concrete
    gate per weight (Yin et al. eqs. 8, 17-19; Louizos et al. 2018).

    Args:
        shape: shape of the gated tensor.
        init_mean, init_std: ``log_alpha ~ N(init_mean, init_std)`` (Yin sec. 5.3: mean 1,
            std 0.01; the Louizos reference uses ``mean = log((1-p)/p)`` for drop rate ``p``).
        beta, gamma, zeta: temperature and stretch of the hard-concrete distribution.
        eps: the uniform noise is drawn from ``U(eps, 1 - eps)``.
        lam: this gate's penalty weight ``lambda`` (used by :func:`l0_penalty`).
        generator: ``torch.Generator`` for init and sampling (CPU); ``None`` = global RNG.

    ``forward(w)`` returns ``w * b``: in training mode ``b`` is the current *sample* (the noise
    ``u`` is drawn once and kept until :meth:`resample`), in eval mode the deterministic
    test-time gate :meth:`test_gate`. A *frozen* gate (:func:`freeze_gates`) applies the
    test-time gate in training mode too and learns nothing: the weights then train against the
    exact mask that :func:`prune` will bake in (a fine-tuning phase after the gates have
    settled).
    """

    def __init__(
        self,
        shape: torch.Size | tuple[int, ...],
        *,
        init_mean: float = 1.0,
        init_std: float = 0.01,
        beta: float = BETA,
        gamma: float = GAMMA,
        zeta: float = ZETA,
        eps: float = EPS,
        lam: float = 1e-3,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if not (beta > 0 and gamma < 0 and zeta > 1):
            raise ValueError(f"need beta > 0, gamma < 0, zeta > 1; got {beta}, {gamma}, {zeta}")
        if not 0 < eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps}")
        if not (math.isfinite(lam) and lam >= 0):  # a negative weight would reward dense gates
            raise ValueError(f"lam must be a finite number >= 0, got {lam}")
        if not (math.isfinite(init_mean) and math.isfinite(init_std) and init_std >= 0):
            raise ValueError(f"init_mean must be finite and init_std finite and >= 0, got {init_mean}, {init_std}")
        self.beta, self.gamma, self.zeta, self.eps = float(beta), float(gamma), float(zeta), eps
        self.lam = float(lam)
        self.generator = generator
        la = torch.empty(tuple(shape), dtype=torch.float32)
        la.normal_(init_mean, init_std, generator=generator)
        self.log_alpha = nn.Parameter(la.to(dtype=dtype or torch.get_default_dtype(), device=device))
        self.register_buffer("u", None, persistent=False)
        self.frozen = False

    # -- sampling ---------------------------------------------------------------------------
    def resample(self, generator: torch.Generator | None = None) -> None:
        """Draw new noise ``u ~ U(eps, 1-eps)``; the sample stays fixed until the next call."""
        gen = generator if generator is not None else self.generator
        la = self.log_alpha
        if gen is not None and la.device.type != "cpu":
            u = torch.rand(la.shape, generator=gen, dtype=la.dtype).to(la.device)
        else:
            u = torch.rand(la.shape, generator=gen, dtype=la.dtype, device=la.device)
        self.u = self.eps + (1.0 - 2.0 * self.eps) * u

    def sample(self) -> torch.Tensor:
        """The gate ``b`` for the current noise (Yin eqs. 17-19); differentiable in ``log_alpha``."""
        if self.u is None or self.u.shape != self.log_alpha.shape:
            self.resample()
        u = self.u.to(self.log_alpha.dtype)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        return torch.clamp(s * (self.zeta - self.gamma) + self.gamma, 0.0, 1.0)

    def test_gate(self) -> torch.Tensor:
        """Deterministic test-time gate ``clamp(sigmoid(log_alpha)(zeta-gamma)+gamma, 0, 1)``."""
        s = torch.sigmoid(self.log_alpha)
        return torch.clamp(s * (self.zeta - self.gamma) + self.gamma, 0.0, 1.0)

    def gate(self) -> torch.Tensor:
        """The gate this module applies now: :meth:`sample` in training, :meth:`test_gate` in eval
        or when frozen."""
        return self.sample() if self.training and not self.frozen else self.test_gate()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.gate()

    # -- penalty ----------------------------------------------------------------------------
    def prob_nonzero(self) -> torch.Tensor:
        """``P(b != 0) = sigmoid(log_alpha - beta log(-gamma/zeta))`` per gate (Yin eq. 20)."""
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-self.gamma / self.zeta))

    def expected_l0(self) -> torch.Tensor:
        """Expected number of non-zero gates, ``sum P(b != 0)``."""
        return self.prob_nonzero().sum()

    def constrain(self, lo: float = LOG_ALPHA_MIN, hi: float = LOG_ALPHA_MAX) -> None:
        """Clamp ``log_alpha`` into ``[lo, hi]`` in place (reference ``constrain_parameters``)."""
        with torch.no_grad():
            self.log_alpha.clamp_(lo, hi)

    def extra_repr(self) -> str:
        return (
            f"shape={tuple(self.log_alpha.shape)}, beta={self.beta:.4g}, gamma={self.gamma}, "
            f"zeta={self.zeta}, lam={self.lam:g}"
        )


# -- which modules get gates ------------------------------------------------------------------
GATEABLE_TYPES: tuple[type, ...] = (
    nn.Linear,
    nn.modules.conv._ConvNd,  # Conv1d/2d/3d and transposed (SpikingConv2d.conv)
    SpikingLinear,
    LeakyReadout,
)


def is_gateable(module: nn.Module) -> bool:
    """Default selection: ``nn.Linear``, ``nn.ConvNd``, :class:`SpikingLinear`,
    :class:`LeakyReadout` (a :class:`SpikingConv2d` is covered through its ``.conv``)."""
    w = getattr(module, "weight", None)
    return isinstance(module, GATEABLE_TYPES) and isinstance(w, torch.Tensor) and w.dim() >= 2


@dataclass
class GatedWeight:
    """One gated tensor: ``module.<tensor_name>`` with its gate; ``name`` is the module's path."""

    name: str
    module: nn.Module
    tensor_name: str
    gate: HardConcreteGate

    @property
    def original(self) -> torch.Tensor:
        """``W_tilde``, the un-gated weight."""
        return self.module.parametrizations[self.tensor_name].original


def _hc_gate(module: nn.Module, tensor_name: str) -> HardConcreteGate | None:
    if not parametrize.is_parametrized(module, tensor_name):
        return None
    for p in module.parametrizations[tensor_name]:
        if isinstance(p, HardConcreteGate):
            return p
    return None


def gated_weights(model: nn.Module) -> list[GatedWeight]:
    """All hard-concrete gated tensors in ``model``, in module order."""
    out = []
    for name, m in model.named_modules():
        if not parametrize.is_parametrized(m):
            continue
        for tname in list(m.parametrizations.keys()):
            g = _hc_gate(m, tname)
            if g is not None:
                out.append(GatedWeight(name, m, tname, g))
    return out


def gates(model: nn.Module) -> list[HardConcreteGate]:
    """All :class:`HardConcreteGate` modules of ``model``."""
    return [m for m in model.modules() if isinstance(m, HardConcreteGate)]


def _select(model: nn.Module, modules) -> list[tuple[str, nn.Module]]:
    named = list(model.named_modules())
    if modules is None:
        return [(n, m) for n, m in named if is_gateable(m)]
    if callable(modules) and not isinstance(modules, nn.Module):
        return [(n, m) for n, m in named if modules(m)]
    if isinstance(modules, (nn.Module, str)):
        modules = [modules]
    wanted = list(modules)
    out = []
    by_name = dict(named)
    for w in wanted:
        if isinstance(w, str):
            if w not in by_name:
                raise KeyError(f"add_l0_gates: model has no submodule named {w!r}")
            out.append((w, by_name[w]))
        else:
            hits = [(n, m) for n, m in named if m is w]
            if not hits:
                raise KeyError(f"add_l0_gates: {type(w).__name__} is not a submodule of the model")
            out.append(hits[0])
    return out


def add_l0_gates(
    model: nn.Module,
    modules: None | Callable[[nn.Module], bool] | Iterable[str | nn.Module] = None,
    *,
    lam: float = 1e-3,
    tensor_name: str = "weight",
    init_mean: float = 1.0,
    init_std: float = 0.01,
    beta: float = BETA,
    gamma: float = GAMMA,
    zeta: float = ZETA,
    eps: float = EPS,
    seed: int | torch.Generator | None = None,
    resample: str = "forward",
) -> list[GatedWeight]:
    """Attach a :class:`HardConcreteGate` to ``<module>.weight`` of the selected modules.

    Args:
        model: any ``nn.Module``.
        modules: ``None`` (every :func:`is_gateable` module), a predicate ``f(module) -> bool``,
            or an iterable of submodule names / submodules.
        lam: penalty weight ``lambda`` stored on each gate (Yin Table 1: 1e-3).
        init_mean, init_std: ``log_alpha ~ N(init_mean, init_std)`` (Yin sec. 5.3).
        beta, gamma, zeta, eps: hard-concrete constants (Louizos et al. 2018).
        seed: int or ``torch.Generator`` for init and sampling of all these gates; ``None`` = global RNG.
        resample: ``"forward"`` (a pre-hook on ``model`` draws new noise at every training-mode
            call of ``model``) or ``"manual"`` (call :func:`resample_gates` per mini-batch).

    Returns the list of :class:`GatedWeight` created. Already-gated tensors are skipped.
    """
    if resample not in ("forward", "manual"):
        raise ValueError(f"resample must be 'forward' or 'manual', got {resample!r}")
    gen = _make_generator(seed)
    created = []
    for name, m in _select(model, modules):
        w = getattr(m, tensor_name, None)
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"add_l0_gates: {name or type(m).__name__} has no tensor {tensor_name!r}")
        if _hc_gate(m, tensor_name) is not None:
            continue
        gate = HardConcreteGate(
            w.shape,
            init_mean=init_mean,
            init_std=init_std,
            beta=beta,
            gamma=gamma,
            zeta=zeta,
            eps=eps,
            lam=lam,
            generator=gen,
            dtype=w.dtype,
            device=w.device,
        )
        parametrize.register_parametrization(m, tensor_name, gate)
        created.append(GatedWeight(name, m, tensor_name, gate))
    if resample == "forward" and created and not resamples_on_forward(model):
        model.register_forward_pre_hook(_resample_hook)
    return created


# keys of a config's ``model.gates`` that the trainer reads itself (penalty weight, gate learning
# rate); the rest are :func:`add_l0_gates` arguments
TRAINER_GATE_KEYS = ("lam", "lr")


def add_l0_gates_from_config(model: nn.Module, gates_cfg: dict) -> list[GatedWeight]:
    """:func:`add_l0_gates` with a config's ``model.gates`` mapping (the trainer's own keys,
    :data:`TRAINER_GATE_KEYS`, left out): one rule for training, export and evaluation."""
    from ..config import checked_call

    kwargs = {k: v for k, v in gates_cfg.items() if k not in TRAINER_GATE_KEYS}
    return checked_call(add_l0_gates, kwargs, "model.gates", model, also_valid=TRAINER_GATE_KEYS)


def resamples_on_forward(model: nn.Module) -> bool:
    """Whether ``model`` draws new gate noise itself on every training-mode call (the pre-hook of
    ``add_l0_gates(..., resample="forward")``); if not, call :func:`resample_gates` per batch."""
    return any(h is _resample_hook for h in model._forward_pre_hooks.values())


def _resample_hook(module: nn.Module, args) -> None:
    if module.training:
        resample_gates(module)


def gate_generators(model: nn.Module) -> list[torch.Generator]:
    """The distinct own generators of ``model``'s gates (``add_l0_gates(seed=...)`` gives all
    its gates one); gates on the global RNG have none."""
    return list({id(g.generator): g.generator for g in gates(model) if g.generator is not None}.values())


def reseed_gates(model: nn.Module, seed: int) -> int:
    """Reseed every :func:`gate_generators` generator with ``seed``; gates on the global RNG are
    left alone. Returns the number reseeded. The trainer calls this at the start of every epoch
    with a seed derived from ``(seed, epoch)``, so that a resumed run draws the same gate noise
    as an uninterrupted one."""
    gens = gate_generators(model)
    for gen in gens:
        gen.manual_seed(int(seed))
    return len(gens)


def resample_gates(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """Draw one new gate sample for every gate in ``model`` (call once per mini-batch)."""
    for g in gates(model):
        g.resample(generator)


def freeze_gates(model: nn.Module, frozen: bool = True) -> int:
    """Freeze (or unfreeze) every hard-concrete gate of ``model``; returns how many.

    A frozen gate applies its deterministic test-time gate in training mode as well (exact
    zeros where :func:`prune` will put them) and its ``log_alpha`` stops requiring gradients,
    so an optimizer skips it. Used by the trainer's ``gates: freeze`` phase: train the weights
    against the final mask after the gates have been learned, which removes the mismatch
    between the noisy training gates and the deterministic test gates.
    """
    gs = gates(model)
    for g in gs:
        g.frozen = bool(frozen)
        g.log_alpha.requires_grad_(not frozen)
    return len(gs)


def l0_penalty(model: nn.Module, lam: float | None = None) -> torch.Tensor:
    """``L_C = sum_gates lambda * sum_ij sigmoid(log_alpha_ij - beta log(-gamma/zeta))``
    (Yin eq. 20 with the ``lambda`` of eq. 14). ``lam=None`` uses each gate's own ``lam``."""
    total = None
    for g in gates(model):
        term = g.expected_l0() * (g.lam if lam is None else lam)
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total


def expected_l0(model: nn.Module) -> torch.Tensor:
    """Expected number of non-zero gated weights of ``model`` (eq. 20 without ``lambda``)."""
    return l0_penalty(model, lam=1.0)


def constrain_gates(model: nn.Module, lo: float = LOG_ALPHA_MIN, hi: float = LOG_ALPHA_MAX) -> None:
    """Clamp every ``log_alpha`` to ``[ln 0.01, ln 100]`` (call after each optimiser step;
    Louizos reference ``constrain_parameters``, optional)."""
    for g in gates(model):
        g.constrain(lo, hi)


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The ``log_alpha`` parameters (e.g. for their own optimiser group)."""
    return [g.log_alpha for g in gates(model)]


def prune(model: nn.Module) -> nn.Module:
    """Bake the deterministic test-time gates into the weights and remove the gates.

    Each gated tensor becomes a plain ``nn.Parameter`` ``W_tilde * b_test`` with exact zeros
    where ``b_test = 0`` (``parametrize.remove_parametrizations(..., leave_parametrized=True)``);
    the resample hook is removed. Works in place and returns ``model``. If other
    parametrizations are stacked on the same tensor they are baked in too (with a warning).
    """
    for gw in gated_weights(model):
        m, tname, g = gw.module, gw.tensor_name, gw.gate
        if len(m.parametrizations[tname]) > 1:
            warnings.warn(
                f"prune: {gw.name}.{tname} has other parametrizations besides the L0 gate; "
                "they are baked into the weight too",
                stacklevel=2,
            )
        # the zeros of the weight as used at test time (with other parametrizations stacked, those
        # of the final weight: one applied after the gate may move entries)
        zero = _effective_weight(m, tname) == 0
        was = g.training
        g.eval()
        try:
            _own_class(m)
            # (not under no_grad: with a multi-tensor parametrization stacked, e.g. weight_norm,
            # torch keeps the baked weight a Parameter only if it requires grad)
            parametrize.remove_parametrizations(m, tname, leave_parametrized=True)
        finally:
            g.train(was)
        with torch.no_grad():
            getattr(m, tname).masked_fill_(zero, 0.0)  # +0.0 rather than -0.0 where W_tilde < 0
    for mod in model.modules():
        for key, h in list(mod._forward_pre_hooks.items()):
            if h is _resample_hook:
                del mod._forward_pre_hooks[key]
    return model


def _own_class(m: nn.Module) -> None:
    """Give ``m`` a private copy of its ``Parametrized<Cls>`` class before removing a
    parametrization: ``copy.deepcopy`` of a parametrized module shares that class with the
    original, and ``remove_parametrizations`` deletes the weight property *from the class*, which
    would silently break the other copy (torch 2.x behaviour)."""
    cls = m.__class__
    ns = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    m.__class__ = type(cls.__name__, cls.__bases__, ns)


# -- reports ------------------------------------------------------------------------------------
def _effective_weight(m: nn.Module, tname: str = "weight") -> torch.Tensor:
    """The weight as used at test time (deterministic gate for gated tensors)."""
    g = _hc_gate(m, tname)
    if g is None:
        return getattr(m, tname).detach()
    with torch.no_grad():
        if len(m.parametrizations[tname]) == 1:
            return m.parametrizations[tname].original.detach() * g.test_gate()
        was = g.training  # other parametrizations stacked: the final weight, gate at test time
        g.eval()
        try:
            return getattr(m, tname).detach()
        finally:
            g.train(was)


def _other_gated(model: nn.Module) -> list[GatedWeight]:
    """Gates on tensors other than ``weight`` (which the Linear/Conv counters do not know)."""
    return [g for g in gated_weights(model) if g.tensor_name != "weight"]


def sparsity_report(model: nn.Module) -> dict:
    """Share of non-zero weights per gate-able/gated layer and overall (test-time gates).

    Returns ``{"layers": [{"name", "type", "shape", "weights", "nonzero", "density"}, ...],
    "total": {"weights", "nonzero", "density"}}``; ``density`` = non-zero / weights.
    """
    # (row name, module, tensor, gated): every gate-able/gated layer's weight, then gates on other
    # tensors (e.g. an LSTM's weight_ih_l0)
    targets = [
        (name, m, "weight", _hc_gate(m, "weight") is not None)
        for name, m in model.named_modules()
        if _hc_gate(m, "weight") is not None or is_gateable(m)
    ]
    targets += [(f"{g.name}.{g.tensor_name}", g.module, g.tensor_name, True) for g in _other_gated(model)]
    rows = []
    for name, m, tname, gated in targets:
        w = _effective_weight(m, tname)
        nnz = int((w != 0).sum())
        rows.append(
            {
                "name": name,
                "type": type(m).__name__.replace("Parametrized", ""),
                "shape": list(w.shape),
                "weights": w.numel(),
                "nonzero": nnz,
                "density": nnz / max(1, w.numel()),
                "gated": gated,
            }
        )
    tot_w = sum(r["weights"] for r in rows)
    tot_nz = sum(r["nonzero"] for r in rows)
    return {
        "layers": rows,
        "total": {"weights": tot_w, "nonzero": tot_nz, "density": tot_nz / max(1, tot_w)},
    }


def format_sparsity_report(rep: dict) -> str:
    """A small text table of :func:`sparsity_report`."""
    lines = [f"{'layer':<24}{'shape':<20}{'non-zero':>12}{'density':>10}"]
    for r in rep["layers"]:
        lines.append(
            f"{r['name'] or '<root>':<24}{str(tuple(r['shape'])):<20}{r['nonzero']:>12d}{100 * r['density']:>9.2f}%"
        )
    t = rep["total"]
    lines.append(f"{'total':<44}{t['nonzero']:>12d}{100 * t['density']:>9.2f}%")
    return "\n".join(lines)


# -- FLOPs and SynOps (until sparsespike.metrics lands) ------------------------------------------
def tap_use_counts(conv: nn.modules.conv._ConvNd, spatial: tuple[int, ...], what: str = "count_ops") -> torch.Tensor:
    """Output positions at which each kernel tap reads a real input pixel, for one input frame of
    spatial size ``spatial``; shape ``kernel_size`` (the same for every in/out channel pair).

    It is the gradient of ``sum(conv(ones, ones))`` with respect to a one-channel kernel: each
    tap's derivative counts the input ones it multiplies. ``what`` names the caller in errors.
    Used by :func:`count_ops` (FLOPs = 2 x sum of non-zero taps x their counts) and by the
    expected-FLOPs penalty (:mod:`.flops`).
    """
    if conv.transposed or conv.groups != 1:
        raise ConfigError(f"{what}: transposed or grouped convolutions are not supported")
    if conv.padding_mode != "zeros":
        raise ConfigError(f"{what}: padding_mode {conv.padding_mode!r} is not supported")
    nd = len(spatial)
    fn = {1: nn.functional.conv1d, 2: nn.functional.conv2d, 3: nn.functional.conv3d}[nd]
    k = torch.ones((1, 1, *conv.kernel_size), dtype=torch.float64, requires_grad=True)
    x = torch.ones((1, 1, *spatial), dtype=torch.float64)
    with torch.enable_grad():  # count_ops runs under no_grad
        out = fn(x, k, stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
        (g,) = torch.autograd.grad(out.sum(), k)
    return g[0, 0]


def count_ops(
    model: nn.Module,
    x,
    *,
    batch_size: int | None = None,
    time_steps: int | None = None,
    forward: Callable[[nn.Module, object], object] | None = None,
) -> dict:
    """Per-sample dense FLOPs and SynOps of every weight layer for one forward of ``x``.

    Conventions (DESIGN.md "Definitions"):

    * ``flops`` = 2 x (multiply-accumulates over *non-zero* weights), one FLOP per multiply and
      one per add (Yin et al. sec. 5.4), summed over all calls (all ``T`` steps). Convolutions
      are counted exactly: a non-zero tap counts at the output positions where it reads a real
      input pixel (taps reading zero padding are not counted). Biases are not counted.
    * ``flops_dense`` = the same with every weight counted (the un-pruned layer).
    * ``events`` = for every non-zero input entry, the number of non-zero outgoing synapses it
      drives (conv: output positions x channels reached through non-zero taps): the work of an
      event-driven kernel.
    * ``synops`` = ``events`` of the layers whose input is binary (spikes), DESIGN.md's SynOps,
      as :mod:`sparsespike.metrics` counts them; a layer fed non-binary values (average-pooled
      spikes, analog pixels) adds its multiply-accumulates over non-zero weights to
      ``nonspiking_macs`` instead.

    Layers are found with :func:`is_gateable` (a :class:`SpikingConv2d` through its ``.conv``);
    gated layers count their test-time gates. ``x`` is fed as ``model(x)`` (or
    ``forward(model, x)``); ``batch_size`` defaults to ``x.shape[1]`` (time-major ``[T, B, ...]``)
    and ``time_steps`` to ``x.shape[0]``. Runs in eval mode under ``no_grad``.

    Returns ``{"layers": [{"name", "flops", "flops_dense", "synops", "events", "nonspiking_macs",
    "calls"}...], "flops", "flops_dense", "synops", "events", "nonspiking_macs", "flops_per_step",
    "flops_dense_per_step", "batch_size", "time_steps"}``. Models converted by
    :func:`sparsespike.sparse_inference.sparse_inference_model` are refused: count the model
    before conversion (same outputs).
    """
    if batch_size is None:
        batch_size = int(x.shape[1])
    if time_steps is None:
        time_steps = int(x.shape[0])
    stats: dict[str, dict] = {}
    handles = []

    def make_hook(name):
        def hook(mod, args, out):
            inp = args[0]
            w = _effective_weight(mod)
            nzw = (w != 0).to(torch.float64)
            xin = inp.detach()
            st = stats.setdefault(
                name,
                {"flops": 0.0, "flops_dense": 0.0, "synops": 0.0, "events": 0.0, "nonspiking_macs": 0.0, "calls": 0},
            )
            st["calls"] += 1
            # DESIGN.md: a SynOp is a spike reaching a synapse; a non-binary input (e.g. average
            # pooled spikes) drives multiply-accumulates instead, as in sparsespike.metrics
            binary = bool(((xin == 0) | (xin == 1)).all())
            if isinstance(mod, nn.modules.conv._ConvNd):
                nd = w.dim() - 2
                taps = tap_use_counts(mod, tuple(xin.shape[-nd:]), what=f"count_ops ({name})").to(nzw)
                conv = {1: nn.functional.conv1d, 2: nn.functional.conv2d, 3: nn.functional.conv3d}[nd]
                kw = dict(stride=mod.stride, padding=mod.padding, dilation=mod.dilation)
                frames = xin.shape[0] if xin.dim() == nd + 2 else 1
                flops = 2.0 * frames * float((nzw * taps).sum())
                st["flops_dense"] += 2.0 * frames * float(taps.sum()) * nzw.shape[0] * nzw.shape[1]
                xs = (xin != 0).to(torch.float64).reshape(-1, *xin.shape[-nd - 1 :])
                events = float(conv(xs, nzw, **kw).sum())
            else:
                rows = xin.numel() // xin.shape[-1]
                flops = 2.0 * rows * float(nzw.sum())
                st["flops_dense"] += 2.0 * rows * float(nzw.numel())
                xs = (xin != 0).to(torch.float64).reshape(-1, xin.shape[-1])
                events = float((xs.sum(0) * nzw.sum(0)).sum())
            st["flops"] += flops
            st["events"] += events
            if binary:
                st["synops"] += events
            else:
                st["nonspiking_macs"] += flops / 2.0

        return hook

    other = [f"{g.name}.{g.tensor_name}" for g in _other_gated(model)]
    if other:
        raise ConfigError(f"count_ops: gated tensors other than Linear/Conv weights cannot be counted: {other}")
    refuse_inference_twins(model, "count_ops")
    for name, m in model.named_modules():
        if is_gateable(m) or _hc_gate(m, "weight") is not None:
            if not isinstance(m, GATEABLE_TYPES):  # e.g. a gated nn.Embedding: no Linear/Conv count
                raise ConfigError(
                    f"count_ops: {name!r} ({type(m).__name__}) has a gated weight but is not a Linear "
                    "or Conv layer, so its FLOPs and SynOps cannot be counted"
                )
            handles.append(m.register_forward_hook(make_hook(name)))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            if forward is None:
                model(x)
            else:
                forward(model, x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    layers = []
    for name, st in stats.items():
        layers.append(
            {
                "name": name,
                "calls": st["calls"],
                "flops": st["flops"] / batch_size,
                "flops_dense": st["flops_dense"] / batch_size,
                "synops": st["synops"] / batch_size,
                "events": st["events"] / batch_size,
                "nonspiking_macs": st["nonspiking_macs"] / batch_size,
            }
        )
    out = {
        "layers": layers,
        "batch_size": batch_size,
        "time_steps": time_steps,
    }
    for k in ("flops", "flops_dense", "synops", "events", "nonspiking_macs"):
        out[k] = sum(r[k] for r in layers)
    out["flops_per_step"] = out["flops"] / time_steps
    out["flops_dense_per_step"] = out["flops_dense"] / time_steps
    return out


__all__ = [
    "TRAINER_GATE_KEYS",
    "add_l0_gates_from_config",
    "reseed_gates",
    "gate_generators",
    "BETA",
    "GAMMA",
    "ZETA",
    "GatedWeight",
    "HardConcreteGate",
    "add_l0_gates",
    "constrain_gates",
    "count_ops",
    "expected_l0",
    "format_sparsity_report",
    "freeze_gates",
    "gate_parameters",
    "gated_weights",
    "gates",
    "is_gateable",
    "l0_penalty",
    "prune",
    "resample_gates",
    "resamples_on_forward",
    "sparsity_report",
]
