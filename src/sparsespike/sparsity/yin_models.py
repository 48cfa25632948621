"""Yin et al. (KDD'21) sparse spiking CNNs: network builder, eq. 5 loss and a small trainer.

Neuron: the STBP iterative LIF (Wu et al. 2018/2019; Yin eqs. 3-4 and 21-22)

.. math::

    u^{t,n} = k_\\tau\\, u^{t-1,n} \\odot (1 - o^{t-1,n}) + W^{n-1} o^{t,n-1},\\qquad
    o^{t,n} = \\Theta(u^{t,n} - V_{th}),

i.e. :class:`~sparsespike.neurons.LIFParams` with ``beta = k_tau``, ``reset="zero"``,
``threshold = 0.5``. The spike derivative is STBP's rectangle (Wu et al. 2018 eq. 9,
``(1/a) 1[|u - V_th| < a/2]``) with Yin's ``delta`` (Table 1) as the full width ``a``:
``Rectangle(width=delta, height=1/delta)``. For MNIST (``delta = 1``) that is exactly the STBP
reference code (``lens = 0.5``, no normalisation: ``1[|u - 0.5| < 0.5]``); for ``delta = 0.5``
the reference code's convention would be ``height = 1`` (pass ``surrogate_height=1.0``).
STBP back-propagates through the reset term (Yin eq. 6's ``do^{t+1}/do^t``; the reference's
``mem * decay * (1 - spike)`` does not detach ``spike``), so ``detach_reset=False`` here.

Input: Bernoulli rate code, a fresh draw at every step (Yin sec. 5.1.1). Readout: voting, the
spike count of the 10 (11) output neurons divided by ``T`` (:class:`SpikeCountReadout`), trained
with the MSE of Yin eq. 5 against one-hot targets, ``|y - (1/T) sum_t o^{t,N}|^2`` per sample
(summed over classes, averaged over the batch). Pooling: average (STBP ``F.avg_pool2d``).
Convolutions: "same" padding ``k // 2`` and bias, as in the STBP reference code (Yin's Table 2
does not state padding; see docs/connectivity.md for what that does to the FLOP count).

Table 2 structures (``28x28`` input = one channel; Yin's "34x34x2" for CIFAR-10 is a typo for
32x32x3, METHODS.md 4(d))::

    mnist        28x28-15C5-P2-40C5-P2-300-10
    cifar10      32x32x3-32C3-P2-64C3-P2-256-10
    nmnist       34x34x2-16C5-P2-32C3-P2-64C3-10
    dvs_gesture  128x128x2-P4-16C5-P2-32C3-P2-512-11

Example::

    >>> import torch
    >>> net = build_yin_network("mnist")
    >>> net(torch.zeros(12, 2, 1, 28, 28)).shape          # T=12, batch 2 -> votes [2, 10]
    torch.Size([2, 10])
"""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import check_value, config_float, flat_config, refuse_changes
from ..errors import ConfigError
from ..layers import SeqFlatten, SeqPool2d, SpikeCountReadout, SpikingConv2d, SpikingLinear
from ..neurons import LIFParams
from ..runtime import tune_allocator
from ..surrogate import Rectangle, make_surrogate
from ..train import atomic_save, atomic_write_text, load_checkpoint, make_schedule
from .connectivity import (
    add_l0_gates,
    constrain_gates,
    count_ops,
    freeze_gates,
    gate_generators,
    gate_parameters,
    l0_penalty,
    prune,
    sparsity_report,
)

YIN_STRUCTURES: dict[str, str] = {
    "mnist": "28x28-15C5-P2-40C5-P2-300-10",
    "cifar10": "32x32x3-32C3-P2-64C3-P2-256-10",
    "nmnist": "34x34x2-16C5-P2-32C3-P2-64C3-10",
    "dvs_gesture": "128x128x2-P4-16C5-P2-32C3-P2-512-11",
}

# Yin Table 1 (T: the text's 12 for MNIST and 30 for CIFAR-10; the table has them swapped,
# METHODS.md 4(d)). N-MNIST/DVS T in 1 ms steps.
YIN_TABLE1: dict[str, dict] = {
    "mnist": {"T": 12, "k_tau": 0.1, "delta": 1.0},
    "cifar10": {"T": 30, "k_tau": 0.3, "delta": 0.5},
    "nmnist": {"T": 300, "k_tau": 0.2, "delta": 0.5},
    "dvs_gesture": {"T": 1450, "k_tau": 0.2, "delta": 0.5},
}
V_TH = 0.5
LAMBDA = 1e-3


def parse_structure(spec: str) -> tuple[tuple[int, int, int], list[dict]]:
    """Parse Yin's notation (``"28x28-15C5-P2-40C5-P2-300-10"``) into ``((C, H, W), layers)``.

    ``layers`` are dicts as used in the YAML configs: ``{"type": "conv", "out_channels",
    "kernel_size"}``, ``{"type": "pool", "kernel_size"}``, ``{"type": "flatten"}``,
    ``{"type": "linear", "out_features"}``.
    """
    tokens = spec.replace("×", "x").split("-")
    dims = [int(t) for t in tokens[0].lower().split("x")]
    if len(dims) == 2:
        dims.append(1)
    if len(dims) != 3:
        raise ConfigError(f"structure {spec!r}: input must be HxW or HxWxC, got {tokens[0]!r}")
    h, w, c = dims
    layers: list[dict] = []
    flat = False
    for tok in tokens[1:]:
        if m := re.fullmatch(r"(\d+)C(\d+)", tok):
            layers.append({"type": "conv", "out_channels": int(m[1]), "kernel_size": int(m[2])})
        elif m := re.fullmatch(r"P(\d+)", tok):
            layers.append({"type": "pool", "kernel_size": int(m[1])})
        elif tok.isdigit():
            if not flat:
                layers.append({"type": "flatten"})
                flat = True
            layers.append({"type": "linear", "out_features": int(tok)})
        else:
            raise ConfigError(f"structure {spec!r}: cannot parse layer {tok!r}")
    return (c, h, w), layers


def yin_neuron(
    k_tau: float,
    threshold: float = V_TH,
    delta: float = 1.0,
    surrogate_height: float | None = None,
    detach_reset: bool = False,
) -> LIFParams:
    """STBP LIF: ``beta = k_tau``, zero reset, ``Rectangle(width=delta, height=1/delta)``."""
    height = 1.0 / delta if surrogate_height is None else float(surrogate_height)
    return LIFParams(
        beta=k_tau,
        threshold=threshold,
        reset="zero",
        detach_reset=detach_reset,
        surrogate=Rectangle(width=delta, height=height),
    )


def stbp_init_(model: nn.Module, gain: float = 1.0, generator: torch.Generator | None = None) -> None:
    """STBP weight init (Wu et al. 2018; Yin sec. 5.3 "standard uniform followed by
    normalization"): ``W ~ U(-1, 1)``, then every output unit's weight vector (its row; a conv
    filter over ``C_in x k x k``) scaled to L2 norm ``gain``. Literally "standard uniform" is
    ``U(0, 1)``; we use the zero-centred ``U(-1, 1)`` on purpose (a deliberate reading, not the
    literal text; METHODS.md 4 calls the normalisation unspecified). Biases are not touched
    (a conv bias keeps PyTorch's init, a ``SpikingLinear`` bias starts at zero)."""
    for m in model.modules():
        if isinstance(m, (SpikingConv2d, SpikingLinear)):
            w = m.weight
            with torch.no_grad():
                w.copy_(torch.rand(w.shape, generator=generator, dtype=w.dtype) * 2 - 1)
                w2 = w.view(w.shape[0], -1)
                w2.div_(w2.norm(dim=1, keepdim=True).clamp_min(1e-12)).mul_(gain)


def build_network(
    input_shape: tuple[int, int, int],
    layers: list[dict],
    neuron: LIFParams | dict,
    *,
    padding: str | int = "same",
    pool: str = "avg",
    bias: bool = True,
    readout: bool = True,
    init: str = "stbp",
    init_gain: float = 1.0,
) -> nn.Sequential:
    """Build a time-major spiking CNN ``[T, B, C, H, W] -> votes [B, n_out]`` from layer dicts.

    Every conv/linear layer is a spiking layer with ``neuron``; ``readout`` appends
    :class:`SpikeCountReadout` (mean over time = Yin's voting vector) unless the list already
    ends with one (``{"type": "spike_count"}``).
    """
    if isinstance(neuron, dict):
        neuron = LIFParams(**neuron)
    c, h, w = input_shape
    mods: list[nn.Module] = []
    feat = None
    for spec in layers:
        spec = dict(spec)
        kind = spec.pop("type")
        if kind == "conv":
            k = int(spec["kernel_size"])
            pad = spec.get("padding", padding)
            pad = k // 2 if pad == "same" else (0 if pad == "valid" else int(pad))
            stride = int(spec.get("stride", 1))
            co = int(spec["out_channels"])
            mods.append(SpikingConv2d(c, co, k, neuron, stride=stride, padding=pad, bias=spec.get("bias", bias)))
            c, h, w = co, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        elif kind == "pool":
            k = int(spec["kernel_size"])
            mods.append(SeqPool2d(k, spec.get("mode", pool)))
            h, w = h // k, w // k
        elif kind == "flatten":
            mods.append(SeqFlatten())
            feat = c * h * w
        elif kind == "linear":
            if feat is None:
                mods.append(SeqFlatten())
                feat = c * h * w
            n = int(spec["out_features"])
            mods.append(SpikingLinear(feat, n, neuron, bias=spec.get("bias", bias)))
            feat = n
        elif kind in ("spike_count", "spike_count_readout"):
            mods.append(SpikeCountReadout(mean=spec.get("mean", True)))
        else:
            raise ConfigError(f"unknown layer type {kind!r}")
    if readout and not isinstance(mods[-1], SpikeCountReadout):
        mods.append(SpikeCountReadout(mean=True))
    net = nn.Sequential(*mods)
    if init == "stbp":
        stbp_init_(net, init_gain)
    elif init != "default":
        raise ConfigError(f"init must be 'stbp' or 'default' (PyTorch's), got {init!r}")
    return net


def build_yin_network(
    name: str = "mnist",
    k_tau: float | None = None,
    *,
    delta: float | None = None,
    threshold: float = V_TH,
    surrogate_height: float | None = None,
    detach_reset: bool = False,
    padding: str | int = "same",
    pool: str = "avg",
    bias: bool = True,
    structure: str | None = None,
    init: str = "stbp",
    init_gain: float = 1.0,
) -> nn.Sequential:
    """Yin Table 2 network ``name`` (mnist, cifar10, nmnist, dvs_gesture) with Table 1 neurons.

    ``k_tau``/``delta`` default to Table 1; ``structure`` overrides the layer string.
    """
    if name not in YIN_STRUCTURES and structure is None:
        raise ConfigError(f"unknown Yin network {name!r}; choose one of {sorted(YIN_STRUCTURES)}")
    t1 = YIN_TABLE1.get(name, {"k_tau": 0.2, "delta": 0.5})
    neuron = yin_neuron(
        t1["k_tau"] if k_tau is None else k_tau,
        threshold,
        t1["delta"] if delta is None else delta,
        surrogate_height,
        detach_reset,
    )
    shape, layers = parse_structure(structure or YIN_STRUCTURES[name])
    return build_network(shape, layers, neuron, padding=padding, pool=pool, bias=bias, init=init, init_gain=init_gain)


def vote_mse_loss(
    votes: torch.Tensor, labels: torch.Tensor, n_classes: int | None = None, reduction: str = "sum"
) -> torch.Tensor:
    """Yin eq. 5: ``|y - (1/T) sum_t M o^{t,N}|^2`` with one-hot ``y`` and ``M = I``.

    ``votes`` are the time-averaged output spikes ``[B, n_classes]``. ``reduction="sum"`` sums
    the squared error over classes (eq. 5) and averages over the batch; ``"mean"`` averages over
    classes too (``nn.MSELoss``, as the STBP reference code).
    """
    n = votes.shape[-1] if n_classes is None else n_classes
    y = nn.functional.one_hot(labels, n).to(votes.dtype)
    se = (votes - y) ** 2
    return se.sum(1).mean() if reduction == "sum" else se.mean()


# -- data ---------------------------------------------------------------------------------------
def _dt_us(cfg: dict) -> float | None:
    """``encoding.dt_us`` (event-bin width in microseconds) checked, or None when unset."""
    dt_us = (cfg.get("encoding") or {}).get("dt_us")
    return None if dt_us is None else config_float(dt_us, "encoding.dt_us (bin width in microseconds)", strict=True)


def _load_dataset(data: dict, T: int, seed: int, dt_us: float | None = None):
    """Returns ``(x_train, y_train, x_test, y_test, encode)``; ``encode(xb, gen) -> [T,B,C,H,W]``.

    ``dt_us`` is the event datasets' bin width (N-MNIST default 1 ms, so ``T`` bins cover
    ``T * dt_us``); it has no meaning for the rate-coded static datasets and must then be unset.
    """
    from ..data.encoding import rate_raster

    name = data.get("dataset", "mnist")
    root = data.get("root")
    if name in ("mnist", "fashion_mnist", "fashion-mnist", "cifar10"):
        if dt_us is not None:
            raise ConfigError(f"encoding.dt_us is the event-bin width of event datasets; {name!r} is rate coded")
        if name == "cifar10":
            from ..data.cifar import load_cifar10 as load
        elif name == "mnist":
            from ..data.idx import load_mnist as load
        else:
            from ..data.idx import load_fashion_mnist as load
        xtr, ytr = load(root, train=True)
        xte, yte = load(root, train=False)
        if xtr.dim() == 3:
            xtr, xte = xtr.unsqueeze(1), xte.unsqueeze(1)

        def encode(xb, gen):
            return rate_raster(xb, T, generator=gen)

    elif name in ("nmnist_small", "nmnist"):
        from ..data.nmnist import NMNISTDataset, nmnist_rasters

        full = name == "nmnist"
        rk = {} if dt_us is None else {"dt_us": dt_us}
        tr = NMNISTDataset(root, "train", T=T, full=full)
        te = NMNISTDataset(root, "test", T=T, full=full)
        xtr, ytr = nmnist_rasters(tr.events, T=T, **rk), tr.labels
        xte, yte = nmnist_rasters(te.events, T=T, **rk), te.labels

        def encode(xb, gen):  # [B, T, 2312] uint8 -> [T, B, 2, 34, 34]
            return xb.float().transpose(0, 1).reshape(T, xb.shape[0], 2, 34, 34).contiguous()

    else:
        raise ConfigError(
            f"train_yin: dataset {name!r} is not wired (mnist, fashion_mnist, cifar10, "
            "nmnist_small, nmnist); DVS-Gesture needs the labelled DvsGesture release"
        )
    g = torch.Generator().manual_seed(seed)
    n_tr = data.get("train_subset")
    if n_tr:
        if data.get("balanced", False):
            idx = _balanced_subset(ytr, int(n_tr), g)
        else:
            idx = torch.randperm(len(ytr), generator=g)[: int(n_tr)]
        xtr, ytr = xtr[idx], ytr[idx]
    n_te = data.get("test_subset")
    if n_te:
        idx = torch.randperm(len(yte), generator=g)[: int(n_te)]
        xte, yte = xte[idx], yte[idx]
    return xtr, ytr, xte, yte, encode


def _balanced_subset(y: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    classes = torch.unique(y)
    per = n // len(classes)
    out = []
    for c in classes:
        idx = (y == c).nonzero().flatten()
        out.append(idx[torch.randperm(len(idx), generator=g)[:per]])
    return torch.cat(out)[torch.randperm(per * len(classes), generator=g)]


@torch.no_grad()
def evaluate(model: nn.Module, x, y, encode, T: int, batch_size: int = 200, seed: int = 1234) -> float:
    """Test accuracy (%) in eval mode (deterministic gates), fixed encoding seed."""
    was = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)  # encoding on the CPU: the same raster on every device
    dev = next(model.parameters()).device
    correct = 0
    for i in range(0, len(y), batch_size):
        votes = model(encode(x[i : i + batch_size], gen).to(dev, non_blocking=True))
        correct += int((votes.argmax(1).cpu() == y[i : i + batch_size]).sum())
    model.train(was)
    return 100.0 * correct / max(1, len(y))


def network_from_config(cfg: dict) -> tuple[nn.Module, int]:
    """The spiking network of a Yin config (``model`` and ``encoding`` sections) and its ``T``.

    Neuron constants default to the dataset's Table 1 row (``model.name``); ``model.layers`` (with
    ``input_shape``) or ``model.structure`` (their notation, e.g. ``28x28-15C5-P2-40C5-P2-300-10``).
    No L0 gates: :func:`train_yin` adds them when ``connectivity.l0`` is set.
    """
    mcfg = dict(cfg.get("model", {}))
    name = mcfg.get("name", "mnist")
    t1 = YIN_TABLE1.get(name, {})
    enc = cfg.get("encoding", {})
    T = int(enc.get("T", t1.get("T", 12)))
    ncfg = dict(mcfg.get("neuron", {}))
    neuron = yin_neuron(
        float(ncfg.get("k_tau", t1.get("k_tau", 0.2))),
        float(ncfg.get("threshold", V_TH)),
        float(ncfg.get("delta", t1.get("delta", 0.5))),
        ncfg.get("surrogate_height"),
        bool(ncfg.get("detach_reset", False)),
    )
    if ncfg.get("surrogate") is not None:  # an explicit surrogate wins over delta
        neuron = neuron.replace(surrogate=make_surrogate(ncfg["surrogate"]))
    if "layers" in mcfg:
        shape = tuple(mcfg["input_shape"])
        layers = mcfg["layers"]
    else:
        shape, layers = parse_structure(mcfg.get("structure", YIN_STRUCTURES[name]))
    model = build_network(
        shape,
        layers,
        neuron,
        padding=mcfg.get("padding", "same"),
        pool=mcfg.get("pool", "avg"),
        bias=mcfg.get("bias", True),
        init=mcfg.get("init", "stbp"),
        init_gain=float(mcfg.get("init_gain", 1.0)),
    )
    return model, T


def load_yin_model(path: str | Path) -> tuple[nn.Module, dict]:
    """``(model in eval mode, config)`` from a ``model.pt`` written by :func:`train_yin` (pruned weights)."""
    ck = _read_model_pt(Path(path), "load_yin_model")
    model, _ = network_from_config(ck["config"])
    model.load_state_dict(ck["state_dict"])
    return model.eval(), ck["config"]


def evaluate_model_pt(
    path: str | Path, split: str = "test", data_dir: str | Path | None = None, limit: int | None = None
) -> dict:
    """Accuracy of a ``model.pt`` written by :func:`train_yin` on the data its config names (the
    same seed, so the same subsets; ``data_dir`` replaces ``data.root``), tested as
    :func:`train_yin` tests: eval mode, pruned weights, the fixed encoding seed. ``split`` is
    ``test`` or ``train`` (the run's training subset; Yin runs have no validation split); ``limit``
    keeps the first samples. Returns ``{"acc" (fraction), "samples", "T"}``."""
    if split not in ("test", "train"):
        raise ConfigError(f"Yin runs have a test and a train split (no validation split), got {split!r}")
    model, cfg = load_yin_model(path)
    _, T = network_from_config(cfg)
    data = dict(cfg.get("data") or {})
    if data_dir:
        data["root"] = str(data_dir)
    xtr, ytr, xte, yte, encode = _load_dataset(data, T, int(cfg.get("seed", 0)), _dt_us(cfg))
    x, y = (xte, yte) if split == "test" else (xtr, ytr)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return {"acc": evaluate(model, x, y, encode, T) / 100.0, "samples": len(y), "T": T}


def _read_model_pt(path: Path, what: str) -> dict:
    """The ``{"state_dict", "config"}`` of a ``model.pt`` written by :func:`train_yin`, read by
    :func:`sparsespike.train.load_checkpoint` (weights only; a missing or unreadable file is a
    ``DataError`` naming it)."""
    ck = load_checkpoint(path)
    if not (isinstance(ck, dict) and "state_dict" in ck and "config" in ck):
        raise ConfigError(f"{what}: {path} is not a model.pt written by train_yin (no state_dict/config)")
    return ck


# the keys train_yin reads, per section ("" = top level); a key not listed is refused (a misspelled
# one would otherwise fall back to its default in silence)
YIN_KEYS: dict[str, tuple[str, ...]] = {
    "": (
        "engine", "name", "paper", "notes", "seed", "model", "data", "encoding", "loss", "connectivity",
        "optimizer", "epochs", "eval_every", "init_from", "resume", "out_dir", "verbose", "progress",
        "device", "threads",
    ),
    "model": ("name", "structure", "neuron", "bias", "init", "init_gain", "padding", "pool", "layers", "input_shape"),
    # Yin's neuron: reset to zero (only "zero" is accepted), decay k_tau, rectangle surrogate
    "model.neuron": ("k_tau", "threshold", "delta", "surrogate_height", "detach_reset", "surrogate", "reset"),
    "data": ("dataset", "root", "train_subset", "test_subset", "balanced"),
    "encoding": ("kind", "T", "dt_us"),
    "loss": ("name", "reduction"),
    "connectivity": (
        "l0", "lam", "init_mean", "init_std", "beta", "gamma", "zeta", "constrain", "penalty", "freeze_after",
    ),
    "optimizer": ("name", "lr", "gate_lr", "batch_size", "weight_decay", "lr_schedule"),
}  # fmt: skip
# integer settings: (section, key) -> smallest value; None allowed where the key is optional
_YIN_INTS = {
    ("", "seed"): 0, ("", "epochs"): 1, ("", "eval_every"): 1, ("", "threads"): 1,
    ("data", "train_subset"): 1, ("data", "test_subset"): 1, ("encoding", "T"): 1,
    ("optimizer", "batch_size"): 1,
}  # fmt: skip
_YIN_FLOATS = (("optimizer", "lr", False), ("optimizer", "gate_lr", False), ("connectivity", "lam", False))


def check_config(cfg: dict) -> None:
    """Refuse a Yin config with an unknown key (:data:`YIN_KEYS`), a section that is not a mapping,
    or an integer / rate setting of the wrong type or range; the error names the key."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"a Yin config must be a mapping, got {type(cfg).__name__}")
    for sec, keys in YIN_KEYS.items():
        d = cfg
        for part in sec.split(".") if sec else ():
            d = d.get(part) if isinstance(d, dict) else None
        if d is None:
            continue
        if not isinstance(d, dict):
            raise ConfigError(f"config section {sec!r} must be a mapping, got {d!r}")
        for k in d:
            if k not in keys:
                where = f"{sec}.{k}" if sec else k
                raise ConfigError(f"unknown config key {where!r}; valid keys here: {', '.join(sorted(keys))}")
    for (sec, k), lo in _YIN_INTS.items():
        d = cfg if not sec else (cfg.get(sec) or {})
        check_value(d.get(k), int | None, f"{sec}.{k}" if sec else k, min=lo)
    for sec, k, strict in _YIN_FLOATS:
        v = (cfg.get(sec) or {}).get(k)
        if v is not None:
            config_float(v, f"{sec}.{k}", strict=strict)
    neuron = (cfg.get("model") or {}).get("neuron") or {}
    if neuron.get("reset", "zero") != "zero":  # yin_neuron resets to zero (Yin et al. eq. 2)
        raise ConfigError(f"model.neuron.reset must be 'zero' (Yin's neuron), got {neuron['reset']!r}")
    check_value(neuron.get("detach_reset", False), bool, "model.neuron.detach_reset")
    for k, strict in (("k_tau", False), ("threshold", True), ("delta", True)):
        if neuron.get(k) is not None:
            config_float(neuron[k], f"model.neuron.{k}", strict=strict)


def train_yin(config: dict) -> dict:
    """Train a Yin et al. spiking CNN, dense or with L0 gates, from a config dict (the YAML shape).

    Keys (all optional except ``model``): ``seed``, ``threads``, ``model`` (``name`` of a Table 2
    network and/or ``layers``/``input_shape``, ``neuron``: ``k_tau``, ``threshold``, ``delta``,
    ``surrogate_height``, ``detach_reset``; ``padding``, ``pool``, ``bias``), ``data``
    (``dataset``, ``root``, ``train_subset``, ``test_subset``, ``balanced``), ``encoding``
    (``T``; for event datasets ``dt_us``, the bin width, default 1 ms), ``loss`` (``reduction``),
    ``connectivity`` (``l0``, ``lam``, ``init_mean``, ``init_std``, ``constrain``, ``penalty``:
    ``l0`` (eq. 20, default) or ``flops`` (the expected-FLOPs penalty of :mod:`.flops`; ``lam``
    is then per FLOP), ``freeze_after``: after that many epochs the gates are frozen at their
    test-time values and only the weights train),
    ``optimizer`` (``lr``, ``gate_lr`` for ``log_alpha``, ``batch_size``, ``weight_decay``,
    ``lr_schedule``: stepped once per epoch, the trainer's ``exponential`` / ``cosine`` / ``step``
    of :func:`sparsespike.train.make_schedule`; it scales the gates' rate too),
    ``epochs``, ``eval_every``, ``out_dir``, ``progress`` (a progress bar per epoch; off with
    ``verbose: false``), ``device`` (``cpu`` default, ``cuda``: the model and each batch move
    there; the Bernoulli encoding is drawn on the CPU so a seed gives the same rasters on every
    device), ``resume`` (continue from ``out_dir/last.pt``), ``init_from`` (the weights of a
    trained ``model.pt`` of the same network, dense or pruned, loaded before the gates are added:
    prune a trained network instead of training weights and gates from scratch).

    With ``out_dir``, ``last.pt`` (weights, gates, optimizer, history, data and gate generators)
    is written atomically after every epoch; ``resume: true`` continues from it, so a run cut
    off between epochs loses nothing and ends as the uninterrupted run would.

    Returns a dict with the per-epoch history (``silent_output_pct``: the share of training samples
    whose readout never spiked; a ``RuntimeWarning`` when it is all of them), final test accuracy
    (gated model in eval mode and after :func:`prune`, which must agree), :func:`sparsity_report`,
    :func:`count_ops` before (``ops_dense``) and after pruning, wall time. With ``out_dir`` writes ``run.json``,
    ``metrics.jsonl``, the pruned ``model.pt`` and ``curves.png`` (:func:`~sparsespike.plots.plot_yin_curves`)
    there.
    """
    cfg = dict(config)
    check_config(cfg)
    tune_allocator()  # as the Trainer: large freed temporaries stay in the heap (runtime.py)
    seed = int(cfg.get("seed", 0))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    device = _device(cfg.get("device"))
    torch.manual_seed(seed)
    model, T = network_from_config(cfg)
    if cfg.get("init_from"):
        _init_weights_from(model, Path(cfg["init_from"]))
    ccfg = cfg.get("connectivity", {}) or {}
    use_l0 = bool(ccfg.get("l0", False))
    if use_l0:
        add_l0_gates(
            model,
            lam=float(ccfg.get("lam", LAMBDA)),
            init_mean=float(ccfg.get("init_mean", 1.0)),
            init_std=float(ccfg.get("init_std", 0.01)),
            seed=seed + 1,
            beta=float(ccfg.get("beta", 2.0 / 3.0)),
            gamma=float(ccfg.get("gamma", -0.1)),
            zeta=float(ccfg.get("zeta", 1.1)),
        )
    epochs = int(cfg.get("epochs", 1))
    kind = ccfg.get("penalty", "l0")
    if kind not in ("l0", "flops"):
        raise ConfigError(f"connectivity.penalty must be 'l0' (Yin eq. 20) or 'flops', got {kind!r}")
    freeze_after = ccfg.get("freeze_after")
    if freeze_after is not None and not (use_l0 and 0 <= int(freeze_after) <= epochs):
        raise ConfigError(
            f"connectivity.freeze_after={freeze_after!r} needs l0: true and 0 <= freeze_after <= epochs ({epochs})"
        )
    # penalty(batch size) while the gates learn; None without gates and once they are frozen
    penalty, flops_term = None, None
    if use_l0 and kind == "flops":  # lam * E[dense FLOPs per sample] (sparsity/flops.py)
        from .flops import ExpectedFlops

        flops_term = ExpectedFlops(float(ccfg.get("lam", LAMBDA))).attach(model)
        penalty = flops_term.value
    elif use_l0:
        penalty = lambda n: l0_penalty(model)  # noqa: E731
    model.to(device)  # the gates' noise is still drawn from their CPU generator (then moved)
    xtr, ytr, xte, yte, encode = _load_dataset(cfg.get("data", {}), T, seed, _dt_us(cfg))
    ocfg = cfg.get("optimizer", {})
    bs = int(ocfg.get("batch_size", 100))
    lr = float(ocfg.get("lr", 1e-3))
    gate_ids = {id(p) for p in gate_parameters(model)}
    groups = [{"params": [p for p in model.parameters() if id(p) not in gate_ids]}]
    if gate_ids:  # log_alpha: own learning rate (default: lr), never weight decay
        groups.append({"params": gate_parameters(model), "weight_decay": 0.0, "lr": float(ocfg.get("gate_lr") or lr)})
    opt = torch.optim.Adam(groups, lr=lr, weight_decay=float(ocfg.get("weight_decay", 0.0)))
    sched = make_schedule(opt, ocfg.get("lr_schedule"), epochs)
    reduction = cfg.get("loss", {}).get("reduction", "sum")
    eval_every = int(cfg.get("eval_every", 1))
    constrain = bool(ccfg.get("constrain", True))
    gen = torch.Generator().manual_seed(seed + 2)
    out_dir = Path(cfg["out_dir"]) if cfg.get("out_dir") else None
    history: list[dict] = []
    start, t_before = 1, 0.0
    if cfg.get("resume"):
        if out_dir is None or not (out_dir / "last.pt").exists():
            raise ConfigError(f"resume: true needs out_dir with a last.pt (looked in {out_dir})")
        start, history, t_before = _load_yin_checkpoint(out_dir / "last.pt", model, opt, sched, gen, cfg)
        if start > epochs + 1:
            raise ConfigError(f"resume: {out_dir}/last.pt is at epoch {start - 1}, past epochs={epochs}")
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    t_start = time.perf_counter() - t_before
    for epoch in range(start, epochs + 1):
        if freeze_after is not None and epoch > int(freeze_after) and penalty is not None:
            # fine-tune the weights against the final mask: test-time gates, no penalty, no gate
            # updates (also the first thing a run resumed past freeze_after does)
            freeze_gates(model)
            if flops_term is not None:
                flops_term.release()  # its hooks record every forward pass
            penalty = None
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(ytr), generator=gen)
        tot_loss = tot_pen = 0.0
        correct = silent = 0
        batches = tqdm(
            range(0, len(ytr), bs),
            desc=f"epoch {epoch}/{epochs}",
            leave=False,
            disable=not (cfg.get("progress", True) and cfg.get("verbose", True)),
        )
        for i in batches:
            idx = perm[i : i + bs]
            xb = encode(xtr[idx], gen).to(device, non_blocking=True)
            yb = ytr[idx].to(device, non_blocking=True)
            votes = model(xb)
            loss_e = vote_mse_loss(votes, yb, reduction=reduction)
            pen = penalty(len(idx)) if penalty is not None else torch.zeros(())
            loss = loss_e + pen
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if penalty is not None and constrain:
                constrain_gates(model)
            tot_loss += float(loss_e.detach()) * len(idx)
            tot_pen += float(pen.detach())
            correct += int((votes.argmax(1) == yb).sum())
            silent += int((votes.detach() == 0).all(1).sum())
        n_batches = math.ceil(len(ytr) / bs)
        row = {
            "epoch": epoch,
            "loss": tot_loss / len(ytr),
            "l0_penalty": tot_pen / n_batches,
            "train_acc": 100.0 * correct / len(ytr),
            "silent_output_pct": 100.0 * silent / len(ytr),
            "density": sparsity_report(model)["total"]["density"],
            "train_time_s": time.perf_counter() - t0,
        }
        if silent == len(ytr):
            warnings.warn(
                f"train_yin epoch {epoch}: the output layer did not spike for any training sample; the task "
                "loss reaches the weights only through the surrogate window and training may stall. Start "
                "the gates more open (connectivity.init_mean, e.g. 3.0), lower model.neuron.threshold, or "
                "warm-start from a dense model (init_from)",
                RuntimeWarning,
                stacklevel=2,
            )
        if epoch % eval_every == 0 or epoch == epochs:
            row["test_acc"] = evaluate(model, xte, yte, encode, T)
        row["lr"] = opt.param_groups[0]["lr"]
        history.append(row)
        if sched is not None:
            sched.step()
        if out_dir:
            with open(out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            _save_yin_checkpoint(
                out_dir / "last.pt", model, opt, sched, gen, epoch, history, time.perf_counter() - t_start, cfg
            )
        if cfg.get("verbose", True):
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    train_time = time.perf_counter() - t_start
    probe = encode(xte[:20], torch.Generator().manual_seed(7))
    acc_gated = history[-1]["test_acc"]
    model.cpu()  # reports, op counts and pruning on the CPU; the pruned test on ``device``
    rep = sparsity_report(model)
    ops_model = count_ops(model, probe)
    if use_l0:
        prune(model)
    ops_pruned = count_ops(model, probe)
    acc_pruned = evaluate(model.to(device), xte, yte, encode, T)
    model.cpu()
    dense_flops = ops_pruned["flops_dense"]
    res = {
        "config": cfg,
        "history": history,
        "test_acc": acc_gated,
        "test_acc_pruned": acc_pruned,
        "sparsity": rep,
        "ops": ops_pruned,
        "flops_ratio": ops_pruned["flops"] / dense_flops,
        "train_time_s": train_time,
        "n_train": len(ytr),
        "n_test": len(yte),
        "T": T,
    }
    assert abs(ops_model["flops"] - ops_pruned["flops"]) <= 1e-6 * max(1.0, dense_flops)
    if out_dir:
        import platform

        atomic_write_text(
            out_dir / "run.json",
            json.dumps(
                {
                    "config": cfg,
                    "seed": seed,
                    "versions": {"torch": torch.__version__, "python": platform.python_version()},
                    "results": {k: v for k, v in res.items() if k not in ("config", "history")},
                },
                indent=1,
            ),
        )
        atomic_save({"state_dict": model.state_dict(), "config": cfg}, out_dir / "model.pt")
        from ..plots import plot_yin_curves

        res["curves"] = str(
            plot_yin_curves({cfg.get("name", "yin"): history}, out_dir / "curves.png", cfg.get("name", ""))
        )
    return res


def _init_weights_from(model: nn.Module, path: Path) -> None:
    """Load the weights of a ``model.pt`` (written by :func:`train_yin`) into ``model`` (no gates yet)."""
    state = _read_model_pt(path, "init_from")["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(f"init_from: {path} holds a different network than this config's model ({e})") from e


def _device(name) -> torch.device:
    dev = torch.device(name or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda asked for, but torch sees no CUDA device (use device: cpu)")
    return dev


def _gate_generator(model: nn.Module) -> torch.Generator | None:
    gs = gate_generators(model)
    return gs[0] if gs else None


# keys a resumed run may change: how long it runs, where and how it reports, which device
_RESUMABLE = ("epochs", "eval_every", "resume", "out_dir", "verbose", "progress", "device", "threads", "data.root")


def _flat(d: dict) -> dict:
    return flat_config(d, _RESUMABLE)


def _save_yin_checkpoint(
    path: Path, model, opt, sched, gen, epoch: int, history: list, elapsed: float, cfg: dict
) -> None:
    """``last.pt`` after ``epoch``: everything :func:`_load_yin_checkpoint` needs to go on exactly."""
    ggen = _gate_generator(model)
    atomic_save(
        {
            "config_json": json.dumps(_flat(cfg), sort_keys=True),
            "epoch": epoch,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "data_rng": gen.get_state(),
            "gate_rng": ggen.get_state() if ggen is not None else None,
            "history_json": json.dumps(history),
            "elapsed_s": float(elapsed),
        },
        path,
    )


def _load_yin_checkpoint(path: Path, model, opt, sched, gen, cfg: dict) -> tuple[int, list, float]:
    """Restore ``last.pt`` into ``model``/``opt``/``sched``/``gen``; returns (next epoch, history, seconds spent).

    Refuses a config that differs from the checkpoint's in anything but :data:`_RESUMABLE`."""
    ck = load_checkpoint(path)  # weights_only; an unreadable file is a DataError naming it
    try:
        epoch = int(ck["epoch"])
        history = json.loads(ck["history_json"])
        saved = json.loads(ck["config_json"])
    except (KeyError, TypeError, ValueError) as e:  # a torch file, but not ours
        raise ConfigError(f"resume: {path} is not a Yin checkpoint (no {e})") from e
    refuse_changes(saved, _flat(cfg), path, ", ".join(_RESUMABLE))
    span = (ck.get("scheduler") or {}).get("T_max")  # a cosine schedule's length, in its own state
    if span is not None and span != getattr(sched, "T_max", span):
        raise ConfigError(
            f"resume: a cosine lr_schedule spans the epochs it started with ({span}); "
            f"epochs={cfg.get('epochs')} would bend it (use an exponential or step schedule to extend runs)"
        )
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    if sched is not None:
        sched.load_state_dict(ck["scheduler"])
    gen.set_state(ck["data_rng"])
    ggen = _gate_generator(model)
    if ggen is not None and ck.get("gate_rng") is not None:
        ggen.set_state(ck["gate_rng"])
    return epoch + 1, history, float(ck.get("elapsed_s", 0.0))


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), data_dir: str | None = None) -> dict:
    """Read a YAML config (``experiments/yin_*.yaml``) into a dict, then apply ``overrides``
    (``dotted.key=value``, the value YAML-parsed) and, if given, ``data_dir`` as ``data.root``."""
    import yaml

    from ..config import parse_overrides, set_dotted

    with open(path) as f:
        cfg = yaml.safe_load(f)
    for key, val in parse_overrides(overrides).items():
        set_dotted(cfg, key, val)
    if data_dir:
        cfg.setdefault("data", {})["root"] = data_dir
    return cfg


def main(argv: list[str] | None = None) -> None:
    """``python -m sparsespike.sparsity.yin_models CONFIG.yaml [key=value ...]`` (dotted keys)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value (YAML-parsed)")
    args = ap.parse_args(argv)
    res = train_yin(load_config(args.config, args.overrides))
    summary = {k: res[k] for k in ("test_acc", "test_acc_pruned", "flops_ratio", "train_time_s")}
    summary["density"] = res["sparsity"]["total"]["density"]
    summary["flops"] = res["ops"]["flops"]
    summary["flops_dense"] = res["ops"]["flops_dense"]
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
