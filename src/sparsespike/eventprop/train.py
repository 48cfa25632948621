"""Training loop of the EventProp engine (Fontanini et al. 2024 protocol).

Adam (0.9, 0.999, 1e-8), learning rate x ``lr_decay`` (0.95) after every epoch, one or more
phases run in sequence on the same weights (each phase: its own loss, learning rate, epochs,
and a fresh Adam state). The 2-phase schedule is ``L_A`` then ``L`` (Yin-Yang: lr 5e-3 then
2e-4, batch 32; MNIST: lr 2e-3 both, batch 20). Validation after every epoch; the test split
once at the end, for the final weights and for the weights of the last phase's best validation
epoch (highest validation accuracy, ties to the lower validation CE): model selection on the
validation split, never on the test split.

Small function-based API for the CLI::

    results = train_eventprop("experiments/eventprop_yinyang_2phase.yaml")
    results = train_eventprop({"dataset": "yinyang", "phases": [...]}, seed=3)

``results`` is a JSON-ready dict (config, per-epoch history, final validation/test metrics,
timings, versions). With ``out_dir`` set, ``run.json`` and ``metrics.jsonl`` (one line per
epoch) are written there as well (DESIGN.md conventions), ``curves.png`` at the end (loss,
accuracy and <N_S> per epoch), and ``last.pt`` after every epoch
(atomically: network, Adam and schedule state, phase and epoch counters, the data generator's
state and the history). ``resume=True`` continues such a run exactly where it stopped: the
result equals an uninterrupted run's. Phases may be lengthened on resume (more epochs);
anything else that shapes the run (sizes, data, batch, seed, losses, learning rates) must match.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
import torch

from ..config import check_value, refuse_changes
from ..errors import ConfigError, SpikeInputError
from ..runtime import tune_allocator
from .encode import encode_mnist, encode_yinyang
from .losses import LOSS_NAMES, SILENT_TARGET_RULES, make_loss
from .metrics import BatchStats, evaluate
from .network import MNIST_INIT_RANGES, EventNetwork, default_init_ranges
from .params import LIFParams, SolverOptions

__all__ = ["PhaseConfig", "EventPropConfig", "load_config", "train_eventprop", "augment_images"]


ADAM_MODES = ("fresh", "keep")


@dataclass
class PhaseConfig:
    """One training phase: loss ``name`` in {CE, L_W, L, L_A}, its alpha / eta (ms), lr, epochs,
    optionally its own ``silent_bump`` (``None``: the run's :attr:`EventPropConfig.silent_bump`;
    e.g. bump in phase 1, where neurons die, and not in phase 2), and ``adam``: ``"fresh"`` (our
    default: a new Adam state) or ``"keep"`` (Adam's moments and step counts go on from the
    previous phase, only the learning rate restarts at ``lr``). Fontanini et al. say only that the
    learning rate "has been changed between the first and the second phase" (sec. 3.4)."""

    loss: str = "L_W"
    alpha: float = 3e-3
    eta: float = 0.0
    lr: float = 5e-3
    epochs: int = 100
    silent_bump: float | None = None
    adam: str = field(default="fresh", metadata={"choices": ADAM_MODES})

    def __post_init__(self) -> None:
        if self.loss not in LOSS_NAMES:
            raise ConfigError(f"phase loss must be one of {LOSS_NAMES}, got {self.loss!r}")
        if self.epochs < 0 or self.lr <= 0 or self.alpha < 0 or self.eta < 0:
            raise ConfigError(f"bad phase settings: {self}")
        if self.silent_bump is not None and not self.silent_bump >= 0:
            raise ConfigError(f"phase silent_bump must be >= 0 (or null: the run's), got {self.silent_bump}")
        if self.adam not in ADAM_MODES:
            raise ConfigError(f"phase adam must be one of {ADAM_MODES}, got {self.adam!r}")


@dataclass
class EventPropConfig:
    """Everything a run needs; YAML files map onto it key by key (unknown keys are errors)."""

    name: str = "eventprop"
    dataset: str = "yinyang"  # "yinyang" | "mnist"
    data_dir: str | None = None
    sizes: list[int] = field(default_factory=lambda: [5, 40, 25, 13, 3])
    init_ranges: list[list[float]] | None = None  # None: dataset default (Fontanini Table 2)
    phases: list[PhaseConfig] = field(default_factory=lambda: [PhaseConfig()])
    batch_size: int = 32
    lr_decay: float = 0.95
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    grad_clip: float | None = None  # max grad norm, off by default (the paper uses none)
    # not in the paper (off by default): after each step, add this to the input weights of every
    # neuron that fired in no sample of the batch ("weight bumping", Goeltz et al. 2021), so that
    # a silent neuron, which gets no gradient (Fontanini eq. 8), can come back
    silent_bump: float = 0.0
    seed: int = 0
    threads: int = 1
    # neuron / solver / loss constants (Fontanini Table 1)
    tau_m: float = 20.0
    tau_s: float = 5.0
    threshold: float = 1.0
    t_window: float = 30.0
    tau0: float = 0.5
    tau1: float = 6.4
    sp_per_neuron: bool = False  # SP divided by the number of neurons (see losses.sp_loss)
    # a sample whose target output is silent: CE with the window end as its time ("window", our
    # default) or no CE error at all ("skip", Wunderlich & Pehle's code); losses.py docstring
    silent_target: str = field(default="window", metadata={"choices": SILENT_TARGET_RULES})
    max_spikes: int = 32
    grazing_eps: float = 1e-3
    # data and encoding
    t_min: float = 0.0
    t_max: float = 20.0
    bright_early: bool = True  # MNIST encoding direction
    augment: bool = False  # MNIST: random shifts +-10 %, rotations +-20 deg
    n_train: int | None = None  # use a subset (first n after a seeded shuffle); None = all
    n_val: int | None = None
    n_test: int | None = None
    # held out from the MNIST training set; 0: train on all 60,000 as the paper does (sec. 3.4),
    # with no validation set: each epoch then records the test split (as their Fig. 12), for
    # monitoring only, and no best-validation epoch is chosen
    mnist_val_size: int = 5000
    eval_test: bool = True
    eval_batch_size: int = 500
    out_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.phases = [p if isinstance(p, PhaseConfig) else PhaseConfig(**_checked(PhaseConfig, p))
                       for p in self.phases]  # fmt: skip
        if self.dataset not in ("yinyang", "mnist"):
            raise ConfigError(f"dataset must be 'yinyang' or 'mnist', got {self.dataset!r}")
        if len(self.sizes) < 2:
            raise ConfigError(f"sizes must have >= 2 entries, got {self.sizes}")
        if self.silent_bump < 0:
            raise ConfigError(f"silent_bump must be >= 0, got {self.silent_bump}")
        if self.batch_size < 1 or self.threads < 1:
            raise ConfigError("batch_size and threads must be >= 1")
        if not self.phases:
            raise ConfigError("at least one phase is needed")
        if self.phases[0].adam == "keep":
            raise ConfigError("phase 1 has adam: keep, but there is no earlier phase whose Adam state it could keep")
        self._check_values()

    def _check_values(self) -> None:
        """Refuse values that would run but silently compute something else (a negative decay
        turns training into gradient ascent, a negative clip flips the gradient, ``tau0 = 0``
        makes every loss NaN, a negative ``n_train`` drops one sample through a negative slice)."""
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.sizes):
            raise ConfigError(f"sizes must be positive integers, got {self.sizes}")
        positive = ("tau_m", "tau_s", "threshold", "t_window", "tau0", "tau1", "lr_decay", "adam_eps")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"grad_clip must be > 0 (or null: no clipping), got {self.grad_clip!r}")
        for name in ("eval_batch_size", "max_spikes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("n_train", "n_val", "n_test"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be >= 1 (or null: the whole split), got {v!r}")
        if not 0 <= self.mnist_val_size < 60000:
            raise ConfigError(f"mnist_val_size must be in [0, 60000) (MNIST has 60,000 training images), "
                              f"got {self.mnist_val_size!r}")  # fmt: skip
        if not 0 <= self.t_min < self.t_max <= self.t_window:
            raise ConfigError(
                f"the input encoding needs 0 <= t_min < t_max <= t_window, got t_min={self.t_min}, "
                f"t_max={self.t_max}, t_window={self.t_window} (input spikes after the window are never seen)"
            )
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        if not self.grazing_eps > 0:
            raise ConfigError(f"grazing_eps must be > 0 (it bounds a division), got {self.grazing_eps!r}")
        if self.augment and self.dataset != "mnist":  # shifts and rotations of images
            raise ConfigError(f"augment works on MNIST images only, not on {self.dataset!r}")


def _checked(cls, d: dict) -> dict:
    if not isinstance(d, dict):
        raise ConfigError(f"{cls.__name__} must be a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} key(s): {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    # types (int, float, str, bool, optional) as for the time-stepped configs (config.check_value)
    return {k: check_value(v, hints[k], k, **fields[k].metadata) for k, v in d.items()}


def load_config(source: str | os.PathLike | dict | EventPropConfig, **overrides) -> EventPropConfig:
    """Build an :class:`EventPropConfig` from a YAML path, a dict or a config, plus overrides."""
    if isinstance(source, EventPropConfig):
        d = dataclasses.asdict(source)
    elif isinstance(source, dict):
        d = dict(source)
    else:
        import yaml

        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        with open(path) as f:
            d = yaml.safe_load(f) or {}
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        d = dict(d)
        d.pop("engine", None)  # "engine: eventprop" lets a generic CLI dispatch on the file
    d.update(overrides)
    return EventPropConfig(**_checked(EventPropConfig, d))


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def _subset(x, y, n, gen):
    if n is None or n >= x.shape[0]:
        return x, y
    idx = torch.randperm(x.shape[0], generator=gen)[:n]
    return x[idx], y[idx]


def _load_data(cfg: EventPropConfig, gen: torch.Generator):
    """Returns (train_raw, train_y, encode_fn, val_times, val_y, test_times, test_y)."""
    if cfg.dataset == "yinyang":
        from ..data.yinyang import load_yinyang

        def enc(x):
            return encode_yinyang(x, cfg.t_min, cfg.t_max, bias_time=cfg.t_min)

        xtr, ytr = load_yinyang("train")
        xva, yva = load_yinyang("validation")
        xte, yte = load_yinyang("test")
    else:
        from ..data.idx import load_mnist

        def enc(x):
            return encode_mnist(x, cfg.t_min, cfg.t_max, bright_early=cfg.bright_early)

        xall, yall = load_mnist(cfg.data_dir, train=True)
        perm = torch.randperm(xall.shape[0], generator=torch.Generator().manual_seed(12345))
        nv = cfg.mnist_val_size
        xva, yva = xall[perm[:nv]], yall[perm[:nv]]
        xtr, ytr = xall[perm[nv:]], yall[perm[nv:]]
        xte, yte = load_mnist(cfg.data_dir, train=False)
    xtr, ytr = _subset(xtr, ytr, cfg.n_train, gen)
    xva, yva = _subset(xva, yva, cfg.n_val, gen)
    xte, yte = _subset(xte, yte, cfg.n_test, gen)
    return xtr, ytr, enc, enc(xva), yva, enc(xte), yte


def augment_images(images: torch.Tensor, gen: torch.Generator, shift: float = 0.1,
                   degrees: float = 20.0) -> torch.Tensor:  # fmt: skip
    """Random shifts (up to ``shift`` of the size) and rotations (up to ``degrees``) of
    ``[B, H, W]`` images (uint8 or float in [0, 1]); returns float in [0, 1] (Fontanini 3.4)."""
    x = images.to(torch.float32)
    if images.dtype == torch.uint8:
        x = x / 255.0
    elif x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):  # 0-255 floats: all would clamp to 1
        raise SpikeInputError(f"images must be uint8 or lie in [0, 1], got {images.dtype} values in "
                              f"[{float(x.min())}, {float(x.max())}]")  # fmt: skip
    B = x.shape[0]
    ang = (torch.rand(B, generator=gen) * 2 - 1) * math.radians(degrees)
    tx = (torch.rand(B, generator=gen) * 2 - 1) * shift * 2  # grid coords span [-1, 1]
    ty = (torch.rand(B, generator=gen) * 2 - 1) * shift * 2
    c, s = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([torch.stack([c, -s, tx], 1), torch.stack([s, c, ty], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, (B, 1, *x.shape[1:]), align_corners=False)
    out = torch.nn.functional.grid_sample(x[:, None], grid, align_corners=False, padding_mode="zeros")
    return out[:, 0].clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def bump_silent(weights, counts: list[torch.Tensor], bump: float) -> list[int]:
    """Weight bumping (Goeltz et al. 2021, not part of Fontanini et al.): ``W_l[m, :] += bump``
    for every neuron ``m`` of layer ``l`` with no spike in any sample of the batch (``counts[l]``
    ``[B, N_l]``). Silent neurons get no gradient (eq. 8: it is sampled at spikes), so without
    this a neuron that stops firing never fires again. Returns the number bumped per layer."""
    n = []
    for w, c in zip(weights, counts, strict=True):
        silent = c.sum(0) == 0
        k = int(silent.sum())
        if k:
            w[silent] += bump
        n.append(k)
    return n


def _snapshot(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``net``'s state dict that later training steps do not change."""
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _versions() -> dict:
    v = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
    }
    try:
        from .. import __version__

        v["sparsespike"] = __version__
    except Exception:  # pragma: no cover
        pass
    try:
        v["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or None  # fmt: skip
    except Exception:  # pragma: no cover
        v["git_commit"] = None
    return v


def _json_safe(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    return o


class EventPropTraining:
    """One EventProp training run, one epoch at a time.

    ``epochs()`` is a generator that trains the configured phases and yields each epoch's
    record (also appended to ``results["history"]``); between two epochs the network ``net`` can
    be inspected or evaluated. ``finish()`` evaluates the final network and returns the results
    dict. :func:`train_eventprop` runs both; ``benchmarks/eventprop_bench.py`` interleaves the
    epochs with another engine's.

    ``train_data``: raw ``(x, y)`` training samples to use instead of the configured dataset's
    training split (validation and test splits stay the configured ones).
    """

    def __init__(
        self, config: str | os.PathLike | dict | EventPropConfig, train_data=None, *, resume: bool = False, **overrides
    ) -> None:
        cfg = load_config(config, **overrides)
        self.cfg = cfg
        tune_allocator()  # as the Trainer: large freed temporaries stay in the heap (runtime.py)
        torch.set_num_threads(cfg.threads)
        numba.set_num_threads(min(cfg.threads, numba.config.NUMBA_NUM_THREADS))
        self.gen = torch.Generator().manual_seed(cfg.seed)
        np.random.seed(cfg.seed)

        xtr, ytr, self.enc, self.xva, self.yva, self.xte, self.yte = _load_data(cfg, self.gen)
        if train_data is not None:
            xtr, ytr = train_data
        self.xtr, self.ytr = xtr, ytr
        self.has_val = self.xva.shape[0] > 0  # mnist_val_size: 0 trains on all 60,000, without one
        self.train_times = None if (cfg.dataset == "mnist" and cfg.augment) else self.enc(xtr)

        self.n_layers = len(cfg.sizes) - 1
        if cfg.init_ranges is not None:
            init = cfg.init_ranges
        elif cfg.dataset == "mnist" and self.n_layers == len(MNIST_INIT_RANGES):
            init = MNIST_INIT_RANGES
        else:
            init = default_init_ranges(self.n_layers)
        params = LIFParams(tau_m=cfg.tau_m, tau_s=cfg.tau_s, threshold=cfg.threshold, t_window=cfg.t_window)
        solver = SolverOptions(max_spikes=cfg.max_spikes, on_overflow="ignore", grazing_eps=cfg.grazing_eps)
        self.net = EventNetwork(cfg.sizes, init, params, solver, generator=self.gen)

        self.out_dir = Path(cfg.out_dir) if cfg.out_dir else None
        self.results: dict = {
            "config": dataclasses.asdict(cfg),
            "versions": _versions(),
            "history": [],
            "timing": {},
        }
        self.t_start = time.perf_counter()
        self.train_time = 0.0
        self.epoch_global = 0
        self._start = (0, 0)  # (phase index, epochs done in it)
        self._opt_state = None  # Adam + schedule state of the resumed phase
        self.resumed_from: int | None = None
        # best validation epoch of the last phase: (accuracy, -CE) key, epoch, weights, val record
        self.best: dict | None = None
        if resume:
            self._resume()
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            lines = "".join(json.dumps(r) + "\n" for r in self.results["history"])
            from ..train import atomic_write_text

            atomic_write_text(self.out_dir / "metrics.jsonl", lines)  # a resumed run keeps its epochs

    # settings that do not change what a run computes: free to differ on resume
    _RESUME_FREE = ("name", "data_dir", "threads", "eval_test", "eval_batch_size", "out_dir", "progress")

    def _fingerprint(self) -> dict:
        """The config as a checkpoint records it: every field but the free ones, and of each phase
        everything but its length (phases may grow)."""
        fp = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in self._RESUME_FREE}
        fp["phases"] = [{k: v for k, v in p.items() if k != "epochs"} for p in fp["phases"]]
        return _json_safe(fp)

    @classmethod
    def _comparable(cls, fp: dict, started: int) -> dict:
        """What a resumed run must share with its checkpoint: a fingerprint without the free fields
        (older checkpoints recorded the name) and with only the ``started`` phases; later ones may
        change (a run may branch at a phase boundary: several phase 2s from one phase-1 checkpoint)."""
        out = {k: v for k, v in fp.items() if k not in cls._RESUME_FREE}
        out["phases"] = fp["phases"][:started]
        return out

    def _resume(self) -> None:
        from ..train import load_checkpoint

        if self.out_dir is None:
            raise ConfigError("resume needs out_dir (the run's folder holding last.pt)")
        path = self.out_dir / "last.pt"
        if not path.is_file():
            raise ConfigError(f"resume: no checkpoint at {path}")
        ck = load_checkpoint(path)
        old = json.loads(ck["fingerprint"])
        # checkpoints from before the fingerprint held whole phases list them as [loss, alpha, eta, lr]
        old["phases"] = [
            dict(zip(("loss", "alpha", "eta", "lr"), p, strict=True)) if isinstance(p, list) else p
            for p in old.get("phases", [])
        ]
        old.setdefault("silent_bump", 0.0)  # checkpoints from before these options ran without them
        for p in old["phases"]:
            p.setdefault("silent_bump", None)
            p.setdefault("adam", "fresh")
        old.setdefault("silent_target", "window")
        ph_i, done = int(ck["phase"]), int(ck["phase_epoch"])
        started = ph_i + 1
        if len(self.cfg.phases) < started:
            raise ConfigError(f"resume: {path} has run {started} phase(s), the config has only {len(self.cfg.phases)}")
        now = json.loads(json.dumps(self._fingerprint()))
        refuse_changes(self._comparable(old, started), self._comparable(now, started), path,
                       "phase lengths and the phases that have not started")  # fmt: skip
        if done > self.cfg.phases[ph_i].epochs:
            raise ConfigError(
                f"resume: {path} has {done} epochs of phase {ph_i + 1}, the config only {self.cfg.phases[ph_i].epochs}"
            )
        history = json.loads(ck["history"])
        for i in range(ph_i):  # a finished phase cannot change length: its epochs have been run
            ran = sum(1 for r in history if int(r["phase"]) == i + 1)
            if ran != self.cfg.phases[i].epochs:
                raise ConfigError(
                    f"resume: phase {i + 1} of {path} is finished after {ran} epochs, the config gives it "
                    f"{self.cfg.phases[i].epochs}; only the phase the run stopped in (phase {ph_i + 1}) and later "
                    "ones may be lengthened"
                )
        self.net.load_state_dict(ck["net"])
        self.gen.set_state(ck["gen"])
        self._start = (ph_i, done)
        self._opt_state = (ck["opt"], ck["sched"])
        self.epoch_global = int(ck["epoch_global"])
        self.train_time = float(ck["train_time"])
        self.results["history"] = history
        self.resumed_from = self.epoch_global
        if ck.get("best") is not None:  # checkpoints from before best-val selection have none
            self.best = {**ck["best"], "val": json.loads(ck["best"]["val"])}

    def _checkpoint(self, ph_i: int, done: int, opt, sched) -> None:
        from ..train import atomic_save

        atomic_save(
            {
                "format": 1,
                "fingerprint": json.dumps(self._fingerprint()),
                "phase": ph_i,
                "phase_epoch": done,
                "epoch_global": self.epoch_global,
                "train_time": self.train_time,
                "net": self.net.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "gen": self.gen.get_state(),
                "history": json.dumps(self.results["history"]),
                "best": {**self.best, "val": json.dumps(_json_safe(self.best["val"]))} if self.best else None,
            },
            self.out_dir / "last.pt",
        )

    def _loss(self, ph: PhaseConfig):
        c = self.cfg
        return make_loss(ph.loss, ph.alpha, ph.eta, tau0=c.tau0, tau1=c.tau1, silent_time=c.t_window,
                         sp_per_neuron=c.sp_per_neuron, silent_target=c.silent_target)  # fmt: skip

    def epochs(self):
        """Train every phase; yield each epoch's record after its validation pass."""
        cfg, net, gen = self.cfg, self.net, self.gen
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover
            tqdm = None
        ph0, ep0 = self._start
        prev_opt = None  # the Adam state at the end of the previous phase (for adam: keep)
        for ph_i, ph in enumerate(cfg.phases):
            if ph_i < ph0:
                continue
            loss_fn = self._loss(ph)
            bump = cfg.silent_bump if ph.silent_bump is None else ph.silent_bump
            opt = torch.optim.Adam(net.parameters(), lr=ph.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps)
            resumed = ph_i == ph0 and self._opt_state is not None
            if resumed:
                opt.load_state_dict(self._opt_state[0])
            elif ph.adam == "keep" and prev_opt is not None:
                opt.load_state_dict(prev_opt)  # moments and step counts go on
                for g in opt.param_groups:  # the learning rate restarts at this phase's
                    g["lr"] = ph.lr
                    g.pop("initial_lr", None)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=cfg.lr_decay)
            if resumed:
                sched.load_state_dict(self._opt_state[1])
            for ep in range(ep0 if ph_i == ph0 else 0, ph.epochs):
                t0 = time.perf_counter()
                perm = torch.randperm(self.xtr.shape[0], generator=gen)
                stats = BatchStats(self.n_layers)
                batches = range(0, len(perm), cfg.batch_size)
                bar = None
                if cfg.progress and tqdm is not None:
                    bar = tqdm(batches, desc=f"phase {ph_i + 1} ({ph.loss}) epoch {ep + 1}/{ph.epochs}",
                               leave=False)  # fmt: skip
                for i in bar if bar is not None else batches:
                    idx = perm[i : i + cfg.batch_size]
                    if self.train_times is None:
                        x = self.enc(augment_images(self.xtr[idx], gen))
                    else:
                        x = self.train_times[idx]
                    y = self.ytr[idx]
                    out = net(x)
                    loss, parts = loss_fn(out, y)
                    opt.zero_grad(set_to_none=True)
                    if loss.requires_grad:
                        loss.backward()
                        if cfg.grad_clip:
                            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                        opt.step()
                    if bump:
                        bump_silent(net.weights, out.counts, bump)
                    stats.update(out, y, parts)
                    if bar is not None and (i // cfg.batch_size) % 20 == 0:
                        bar.set_postfix(loss=f"{parts['total']:.3f}", acc=f"{stats.n_correct / stats.n:.3f}")
                if bar is not None:
                    bar.close()
                lr_used = opt.param_groups[0]["lr"]
                sched.step()
                t_ep = time.perf_counter() - t0
                self.train_time += t_ep
                tr = stats.result()
                self.epoch_global += 1
                rec = {
                    "epoch": self.epoch_global,
                    "phase": ph_i + 1,
                    "phase_epoch": ep + 1,
                    "loss_name": ph.loss,
                    "lr": lr_used,
                    "train": tr,
                }
                if self.has_val:
                    rec["val"] = evaluate(net, self.xva, self.yva, loss_fn, cfg.eval_batch_size)
                    if ph_i == len(cfg.phases) - 1:
                        self._track_best(rec["val"])
                elif cfg.eval_test:  # no validation set: monitor the test split, never select on it
                    rec["test"] = evaluate(net, self.xte, self.yte, loss_fn, cfg.eval_batch_size)
                rec["epoch_time_s"] = t_ep
                self.results["history"].append(_json_safe(rec))
                if self.out_dir:
                    with open(self.out_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(_json_safe(rec)) + "\n")
                    self._checkpoint(ph_i, ep + 1, opt, sched)
                if cfg.progress:
                    split = "val" if "val" in rec else "test" if "test" in rec else None
                    ev = rec.get(split) if split else None
                    shown = (
                        f"{split} acc {ev['accuracy']:.4f} CE {ev.get('loss_ce', float('nan')):.4f} "
                        f"<N_S> {ev['n_s']:.3f} {[round(v, 2) for v in ev['n_s_per_layer']]} "
                        f"silent {ev['silent_neurons_per_layer']}"
                        if ev
                        else "no validation set"
                    )
                    print(
                        f"[{cfg.name}] phase {ph_i + 1} {ph.loss} ep {ep + 1}/{ph.epochs}: "
                        f"train acc {tr['accuracy']:.4f} "
                        f"loss {tr.get('loss_total', float('nan')):.4f} | {shown} | {t_ep:.1f}s",
                        flush=True,
                    )
                yield rec
            prev_opt = opt.state_dict()

    @staticmethod
    def _val_key(va: dict) -> tuple[float, float]:
        ce = va.get("loss_ce")
        return (va["accuracy"], -ce if ce is not None and math.isfinite(ce) else -math.inf)

    def _track_best(self, va: dict) -> None:
        """Keep the weights of the best validation epoch so far (last phase only)."""
        if self.best is None or self._val_key(va) > self._val_key(self.best["val"]):
            self.best = {"epoch": self.epoch_global, "state": _snapshot(self.net), "val": va}

    def finish(self) -> dict:
        """Final validation (and test) evaluation, timings, run files; the results dict.

        ``results["final"]`` holds the final weights' ``val`` (and ``test``) metrics and, when the
        last phase ran at least one epoch, ``best_val``: the epoch of the last phase with the best
        validation accuracy (ties to the lower CE) and that network's ``val`` and ``test`` metrics.
        """
        cfg, net, results = self.cfg, self.net, self.results
        last_loss = self._loss(cfg.phases[-1])
        final = {"val": evaluate(net, self.xva, self.yva, last_loss, cfg.eval_batch_size)} if self.has_val else {}
        if cfg.eval_test:
            t0 = time.perf_counter()
            final["test"] = evaluate(net, self.xte, self.yte, last_loss, cfg.eval_batch_size)
            results["timing"]["test_eval_s"] = time.perf_counter() - t0
        if self.best is not None:
            last_state = _snapshot(net)
            net.load_state_dict(self.best["state"])
            sel = {"epoch": self.best["epoch"], "val": self.best["val"]}  # validated when it was kept
            if cfg.eval_test:
                sel["test"] = evaluate(net, self.xte, self.yte, last_loss, cfg.eval_batch_size)
            if self.out_dir:
                from ..train import atomic_save

                atomic_save({"sizes": cfg.sizes, "state_dict": net.state_dict(), "epoch": self.best["epoch"]},
                            self.out_dir / "weights_best_val.pt")  # fmt: skip
            net.load_state_dict(last_state)
            final["best_val"] = sel
        results["final"] = _json_safe(final)
        n_ep = max(self.epoch_global, 1)
        results["timing"].update(
            {
                "train_s": self.train_time,
                "total_s": time.perf_counter() - self.t_start,
                "train_s_per_epoch": self.train_time / n_ep,
                "train_us_per_sample": 1e6 * self.train_time / (n_ep * max(self.xtr.shape[0], 1)),
                "threads": cfg.threads,
                "resumed_from_epoch": self.resumed_from,
            }
        )
        if self.out_dir:
            run = {k: v for k, v in results.items() if k != "history"}
            from ..train import atomic_save, atomic_write_text

            atomic_write_text(self.out_dir / "run.json", json.dumps(_json_safe(run), indent=1))

            atomic_save({"sizes": cfg.sizes, "state_dict": net.state_dict()}, self.out_dir / "weights.pt")
            if results["history"]:
                from ..plots import plot_eventprop_curves

                plot_eventprop_curves({cfg.name: results["history"]}, self.out_dir / "curves.png", cfg.name)
        return results


def train_eventprop(config: str | os.PathLike | dict | EventPropConfig, *, resume: bool = False, **overrides) -> dict:
    """Train an :class:`EventNetwork` as configured and return the results dict.

    ``overrides`` replace config keys (e.g. ``seed=2``, ``n_train=500``, ``progress=False``).
    ``resume``: continue from ``out_dir/last.pt`` (see the module doc).
    """
    run = EventPropTraining(config, resume=resume, **overrides)
    for _ in run.epochs():
        pass
    return run.finish()
