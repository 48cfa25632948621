"""Trainer: phases, validation, best checkpoint, atomic checkpoints, exact resume, logs.

A run directory holds ``run.json`` (config, versions, seed, git commit), ``metrics.jsonl`` (one
line per epoch), ``last.pt`` (everything needed to resume, written atomically after every epoch),
``best.pt`` (the weights with the best validation accuracy), ``curves.png`` and ``results.json``.

Reproducibility: every random draw of epoch ``e`` (shuffle order, stochastic encoders, L0 gate
samples) comes from generators seeded with ``(seed, e)``, so a run resumed from ``last.pt``
gives bit-for-bit the weights of an uninterrupted run on CPU.

Loss terms: a *regularizer* is any callable ``f(ctx: LossContext) -> Tensor`` added to the task
loss; ``ctx`` carries the epoch, the batch index, the model, the outputs and the spikes recorded
by a :class:`~sparsespike.sparsity.monitor.SpikeMonitor`. Register a named one with
:func:`register_regularizer` to use it from YAML (``train.regularizers: [{name: ..., ...}]``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import ExperimentConfig, PhaseConfig, check_value, checked_call, config_float, flat_config, refuse_changes
from .ema import EmaWeights
from .errors import ConfigError
from .kernels.sparse import spike_counts
from .metrics import MetricsRecorder
from .models import build_network
from .pipeline import DataBundle, batches, build_data
from .runtime import tune_allocator
from .sparsity.monitor import SpikeMonitor


# ---------------------------------------------------------------- loss terms
@dataclass
class LossContext:
    """What a loss term sees on one training batch."""

    epoch: int  # 0-based epoch within the phase
    n_epochs: int  # epochs in the phase
    batch: int  # 0-based batch index within the epoch
    n_batches: int
    model: nn.Module
    outputs: torch.Tensor
    targets: torch.Tensor
    monitor: SpikeMonitor | None
    global_epoch: int = 0
    extra: dict = field(default_factory=dict)


Regularizer = Callable[[LossContext], torch.Tensor]
REGULARIZERS: dict[str, Callable[..., Regularizer]] = {}


def register_regularizer(name: str):
    """Decorator: make a regularizer factory available as ``{name: ...}`` in configs."""

    def deco(factory):
        REGULARIZERS[name] = factory
        return factory

    return deco


def make_regularizer(spec: dict | Callable) -> Regularizer:
    if callable(spec):
        return spec
    spec = dict(spec)
    name = spec.pop("name", None)
    _load_plugins()
    if name not in REGULARIZERS:
        raise ConfigError(f"unknown regularizer {name!r}; known: {sorted(REGULARIZERS)}")
    try:
        return REGULARIZERS[name](**spec)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # e.g. float("abc") inside a factory
        raise ConfigError(f"regularizer {name!r}: {e}") from e


def _load_plugins() -> None:
    # modules that register regularizers on import
    import importlib

    for mod in ("sparsespike.sparsity.activity", "sparsespike.sparsity.synops", "sparsespike.sparsity.flops"):
        try:
            importlib.import_module(mod)
        except ImportError:
            pass


@register_regularizer("activity_bounds")
def activity_bounds(
    lam_up: float = 0.06, f_up: float = 1.0, p_up: float = 1.0, lam_low: float = 100.0, f_low: float = 1e-3
) -> Regularizer:
    """Zenke & Vogels-style firing bounds used by Perez-Nieves & Goodman (METHODS.md 1(a)).

    Per hidden layer with spikes ``S[T, B, N]``: ``L_up = lam_up relu(sum_{t,j} S / N - f_up)^p_up``
    and ``L_low = lam_low sum_j relu(f_low - sum_t S_j)^2 / N``, both averaged over the batch.
    """
    lam_up, f_up, p_up, lam_low, f_low = (
        config_float(v, f"activity_bounds: {k}")
        for k, v in (("lam_up", lam_up), ("f_up", f_up), ("p_up", p_up), ("lam_low", lam_low), ("f_low", f_low))
    )

    def reg(ctx: LossContext) -> torch.Tensor:
        total = torch.zeros(())
        if ctx.monitor is None:
            return total
        for recs in ctx.monitor.spikes().values():
            for s in recs:
                if s.dim() < 3:
                    continue
                per = spike_counts(s, per_sample=True)  # [B, N]; from the spike list if s has one
                n = per.shape[-1]
                up = torch.relu(per.sum(-1) / n - f_up) ** p_up
                low = (torch.relu(f_low - per) ** 2).sum(-1) / n
                total = total + lam_up * up.mean() + lam_low * low.mean()
        return total

    return reg


def task_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``ce``: cross-entropy on logits; ``mse_count``: MSE of output rates vs one-hot, averaged over
    samples *and classes* (``nn.MSELoss``), i.e. Yin et al. eq. 5 divided by the number of classes
    (:func:`~sparsespike.sparsity.yin_models.vote_mse_loss` is eq. 5 itself, summed over classes)."""
    if name == "ce":
        return nn.functional.cross_entropy
    if name == "mse_count":

        def mse(out, y):
            return nn.functional.mse_loss(out, nn.functional.one_hot(y, out.shape[-1]).to(out.dtype))

        return mse
    raise ConfigError(f"unknown loss {name!r}; use 'ce' or 'mse_count'")


# ---------------------------------------------------------------- helpers
@contextlib.contextmanager
def _atomic_file(path: Path, mode: str):
    """A file object on ``path + ".tmp"``; on success it is flushed, fsynced and renamed over
    ``path`` (and the rename made durable), so a crash leaves the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # the directory entry too (POSIX); not possible on every platform / filesystem
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj, path: Path) -> None:
    """Write with ``torch.save`` to a temporary file, fsync, then rename over ``path``."""
    with _atomic_file(path, "wb") as f:
        torch.save(obj, f)


def atomic_write_text(path: Path, text: str) -> None:
    """``Path.write_text`` made atomic like :func:`atomic_save` (run files that a resume or
    ``sparsespike evaluate`` reads back)."""
    with _atomic_file(path, "w") as f:
        f.write(text)


def load_checkpoint(path: Path) -> dict:
    """``torch.load(..., weights_only=True)`` with an error naming the file if it is unreadable."""
    from .errors import DataError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # load_state_dict moves it
    except Exception as e:  # noqa: BLE001
        raise DataError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from e


def run_engine(run: str | Path) -> str | None:
    """The engine that wrote run folder ``run``, from its ``run.json``: ``eventprop`` (``final``
    results), ``yin`` (``engine: yin`` or ``results``), ``time-stepped`` (its ``engine`` or a
    ``results.json``), or None when the folder holds neither."""
    run = Path(run)
    try:
        info = json.loads((run / "run.json").read_text())
    except FileNotFoundError:
        info = {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"{run / 'run.json'} is not valid JSON ({e})") from None
    engine = (info.get("config") or {}).get("engine")
    if "final" in info:
        return "eventprop"
    if engine == "yin" or "results" in info:
        return "yin"
    if engine == "time-stepped" or (run / "results.json").exists():
        return "time-stepped"
    return None


def load_run(run: str | Path, data_dir: str | Path | None = None, last: bool = False) -> tuple[Trainer, dict, Path]:
    """A finished (or interrupted) run: its Trainer with the checkpoint's weights, the checkpoint
    dict and its path (``best.pt``, or ``last.pt`` with ``last``). Reads ``RUN/run.json``."""
    from .config import ExperimentConfig, from_dict

    run = Path(run)
    info_p = run / "run.json"
    if not info_p.exists():
        raise ConfigError(f"no run.json in {run}: not a run directory")
    cfg = from_dict(ExperimentConfig, json.loads(info_p.read_text())["config"])
    if str(cfg.train.device).startswith("cuda") and not torch.cuda.is_available():
        cfg.train.device = "cpu"  # trained on a GPU, evaluated here: the weights load on the CPU
    tr = Trainer(cfg, run, data_dir, progress=False)
    ck = run / ("last.pt" if last else "best.pt")
    state = load_checkpoint(ck)
    tr.model.load_state_dict(state["model"])
    if last and state.get("ema"):  # a run with train.ema: its averaged weights are the result
        ema = EmaWeights(tr.model, state["ema"]["decay"])
        ema.load_state_dict(state["ema"])
        ema.copy_to(tr.model)
    return tr, state, ck


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


def versions() -> dict:
    import numpy

    v = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        import numba

        v["numba"] = numba.__version__
    except ImportError:
        pass
    from . import __version__

    v["sparsespike"] = __version__
    return v


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 12345) % (2**63 - 1)


def make_optimizer(params, spec: dict, lr: float | None = None) -> torch.optim.Optimizer:
    """The optimizer ``spec['name']`` (``train.optimizer``), with learning rate ``lr`` when given
    (a phase's own); a learning rate must be ``> 0`` (0 would train nothing)."""
    spec = dict(spec)
    name = spec.pop("name", "adam").lower()
    if lr is not None:
        spec["lr"] = lr
    if "lr" in spec:
        spec["lr"] = config_float(spec["lr"], "train.optimizer.lr (or a phase's lr)", strict=True)
    if "betas" in spec:
        spec["betas"] = tuple(spec["betas"])
    opts = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax, "sgd": torch.optim.SGD}
    if name not in opts:
        raise ConfigError(f"unknown optimizer {name!r}; use {sorted(opts)}")
    return checked_call(opts[name], spec, "train.optimizer", params)


def make_schedule(opt, spec: dict | None, epochs: int):
    """The learning-rate schedule of ``train.lr_schedule`` (or a phase's ``lr_schedule``), stepped once
    per epoch; defaults in brackets: ``exponential`` (``gamma`` 0.95: lr x gamma per epoch),
    ``cosine`` (``eta_min`` 0; from lr to eta_min over the phase's ``epochs``), ``step`` (``step`` 10
    epochs, ``gamma`` 0.1). ``None`` for no schedule."""
    if not spec:
        return None
    spec = dict(spec)
    name = spec.pop("name", None)
    keys = {"exponential": ("gamma",), "cosine": ("eta_min",), "step": ("step", "gamma")}
    if name not in keys:
        raise ConfigError(f"unknown lr_schedule {name!r}; use exponential, cosine or step")
    extra = sorted(set(spec) - set(keys[name]))
    if extra:  # a misspelled key would otherwise be dropped silently
        raise ConfigError(
            f"unknown key {extra[0]!r} in lr_schedule {name!r}; it takes {', '.join(keys[name])} (and name)"
        )
    sched = torch.optim.lr_scheduler
    where = f"lr_schedule {name!r}"
    if name == "exponential":
        return sched.ExponentialLR(opt, gamma=config_float(spec.get("gamma", 0.95), f"{where}.gamma"))
    if name == "cosine":
        return sched.CosineAnnealingLR(
            opt, T_max=max(1, epochs), eta_min=config_float(spec.get("eta_min", 0.0), f"{where}.eta_min")
        )
    step = check_value(spec.get("step", 10), int, f"{where}.step (epochs between decays)", min=1)
    return sched.StepLR(opt, step_size=step, gamma=config_float(spec.get("gamma", 0.1), f"{where}.gamma"))


# ---------------------------------------------------------------- data parallel
def init_distributed() -> tuple[int, int]:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1): gloo on CPU, NCCL on GPU.

    Returns ``(rank, world_size)``; ``(0, 1)`` when not distributed.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_sum(values: list[float], world: int) -> list[float]:
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------- trainer
class Trainer:
    """Train ``cfg`` into ``out_dir``. ``fit()`` returns the results dict (also in results.json)."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        out_dir: str | Path,
        data_dir: str | Path | None = None,
        *,
        resume: bool = False,
        progress: bool | None = None,
        data: DataBundle | None = None,
        model: nn.Module | None = None,
        regularizers: list[Regularizer] | None = None,
    ) -> None:
        self.cfg = cfg
        # keep each batch's large freed temporaries in the heap (runtime.py): a script that trains
        # through this class gets the allocator of the `sparsespike` commands (~25 % faster epochs)
        tune_allocator()
        self.rank, self.world = init_distributed()
        self.out = Path(out_dir)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        self.resume = resume
        self.progress = progress
        if cfg.train.num_threads:
            torch.set_num_threads(int(cfg.train.num_threads))
        torch.manual_seed(cfg.seed)
        self.data = data or build_data(cfg.data, data_dir, cfg.seed)
        self.model = model or build_network(
            cfg.model.layers,
            self.data.input_shape,
            cfg.model.neuron,
            cfg.model.backward,
            cfg.model.b_th,
            cfg.model.weight_scale,
        )
        if cfg.model.gates:
            from .sparsity.connectivity import add_l0_gates_from_config

            if "lam" in cfg.model.gates:  # (the L0 term's weight: a negative one rewards dense gates)
                config_float(cfg.model.gates["lam"], "model.gates.lam")
            add_l0_gates_from_config(self.model, cfg.model.gates)
        from .sparsity.connectivity import gates as _gates

        # gated by the config or by the caller (a model= with add_l0_gates): either way the gate
        # noise is drawn per batch, reseeded per epoch, and gates can be frozen by a phase
        self.gated = bool(_gates(self.model))
        # the trainer draws the gate noise per batch only for a model that does not draw it itself
        # on every training call (gates added with resample="forward"): a second draw would be waste
        self.manual_resample = False
        if self.gated:
            from .sparsity.connectivity import resamples_on_forward

            self.manual_resample = not resamples_on_forward(self.model)
        dev = cfg.train.device
        if dev == "auto":
            dev = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(dev)
        except RuntimeError as e:
            raise ConfigError(f"train.device: {e}") from e
        self.model.to(self.device)
        self.phases = cfg.phases()
        if "lr" in cfg.train.optimizer:  # checked before any epoch runs, as the phases' ones
            config_float(cfg.train.optimizer["lr"], "train.optimizer.lr", strict=True)
        if (cfg.model.gates or {}).get("lr") is not None:
            config_float(cfg.model.gates["lr"], "model.gates.lr", strict=True)
        for i, ph in enumerate(self.phases):
            if ph.lr is not None:
                config_float(ph.lr, f"train.phases[{i}].lr", strict=True)
            if ph.gates not in ("learn", "freeze"):
                raise ConfigError(f"train.phases[{ph.name!r}].gates must be 'learn' or 'freeze', got {ph.gates!r}")
            if ph.gates == "freeze" and not self.gated:
                raise ConfigError(f"phase {ph.name!r} has gates: freeze but the model has no L0 gates (model.gates)")
            for r in self._phase_regs(ph):
                # a budget schedule longer than its phase never puts the budget itself in force
                be = r.get("budget_epochs") if isinstance(r, dict) else None
                if isinstance(be, int | float) and be > ph.epochs:
                    raise ConfigError(
                        f"phase {ph.name!r}: {r.get('name')} budget_epochs {be} is longer than the phase "
                        f"({ph.epochs} epochs), so the budget {r.get('budget')} would never be in force"
                    )
        self.extra_regs = regularizers or []
        self.ema = None  # EmaWeights when train.ema is set (built by epochs())
        self.history: list[dict] = []
        self.net: nn.Module = self.model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

    def _param_groups(self, lr: float | None):
        """All parameters in one group, or the L0 gates' ``log_alpha`` in a second group with
        their own learning rate (``model.gates.lr``; with Adam the pruning speed is set by the
        gate learning rate, not by lambda: docs/connectivity.md)."""
        gate_lr = (self.cfg.model.gates or {}).get("lr")
        if gate_lr is None:
            return self.model.parameters()
        gates = [p for n, p in self.model.named_parameters() if n.endswith("log_alpha")]
        ids = {id(p) for p in gates}
        rest = [p for p in self.model.parameters() if id(p) not in ids]
        if not gates:
            raise ConfigError("model.gates.lr is set but the model has no L0 gates (log_alpha parameters)")
        return [{"params": rest}, {"params": gates, "lr": config_float(gate_lr, "model.gates.lr", strict=True)}]

    # -- one phase, one epoch
    def _set_gates(self, ph: PhaseConfig) -> None:
        """Freeze the L0 gates for a ``gates: freeze`` phase, let them learn otherwise."""
        if not self.gated:
            return
        from .sparsity.connectivity import freeze_gates

        freeze_gates(self.model, ph.gates == "freeze")
        if self.world > 1:  # DDP fixes the set of parameters that receive gradients when it is built
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

    def _phase_regs(self, ph: PhaseConfig) -> list:
        """The regularizer specs in force in phase ``ph``: its own, or the run's."""
        return ph.regularizers if ph.regularizers is not None else self.cfg.train.regularizers

    def _phase_terms(self, ph: PhaseConfig):
        loss_name = ph.loss or self.cfg.train.loss
        terms = [make_regularizer(r) for r in self._phase_regs(ph)] + list(self.extra_regs)
        for t in terms:  # terms that watch layer inputs (sparsity/synops.py) hook into the model
            if hasattr(t, "attach"):
                t.attach(self.model)
        if self.cfg.model.gates and self.cfg.model.gates.get("lam") and ph.gates != "freeze":
            from .sparsity.connectivity import l0_penalty

            lam = config_float(self.cfg.model.gates["lam"], "model.gates.lam")
            terms.append(lambda ctx: l0_penalty(ctx.model, lam))
        return task_loss(loss_name), terms

    def _train_epoch(self, ph, e_in_phase, global_epoch, opt, loss_fn, terms) -> dict:
        gen = torch.Generator().manual_seed(epoch_seed(self.cfg.seed, global_epoch))
        torch.manual_seed(epoch_seed(self.cfg.seed, global_epoch) + 1)
        if self.gated:  # gates with their own generator (model.gates.seed) draw from (seed, epoch) too
            from .sparsity.connectivity import reseed_gates

            reseed_gates(self.model, epoch_seed(self.cfg.seed, global_epoch) + 2)
        self.model.train()
        bs = self.cfg.data.batch_size
        n_batches = math.ceil(len(self.data.train) / bs)
        mon = SpikeMonitor(self.model) if any(getattr(m, "emits_spikes", False) for m in self.model.modules()) else None
        tot_loss = tot_task = correct = seen = 0.0
        spikes = 0.0
        act_sum: dict[str, float] = {}
        act_n = 0
        bar = tqdm(
            batches(self.data.train, bs, gen, shuffle=True),
            total=n_batches,
            desc=f"{ph.name} epoch {e_in_phase + 1}/{ph.epochs}",
            leave=False,
            disable=None if self.progress is None else not self.progress,
        )
        try:  # the monitor's hook is removed even when an epoch raises (a non-finite loss)
            for b, (xb, yb) in enumerate(bar):
                if self.data.augment is not None:
                    xb = self.data.augment(xb, gen)
                x = self.data.encode(xb, gen).to(self.device, non_blocking=True)
                yb = yb.to(self.device)
                n_global = len(yb)
                if self.world > 1:
                    # every rank encodes the same global batch (same random draws) and takes its shard
                    lo = self.rank * n_global // self.world
                    hi = (self.rank + 1) * n_global // self.world
                    x, yb = x[:, lo:hi], yb[lo:hi]
                if self.manual_resample:
                    from .sparsity.connectivity import resample_gates

                    resample_gates(self.model)
                if mon is not None:
                    mon.reset()
                out = self.net(x)
                if len(yb) == 0:
                    # an empty shard (a global batch smaller than the world): it must still run the
                    # forward and backward, for DDP's gradient all-reduce, but adds nothing (weight 0
                    # below); a mean over no samples would be NaN. Every parameter gets a zero grad.
                    task = loss = out.sum() * 0.0 + sum(q.sum() for q in self.model.parameters()) * 0.0
                else:
                    task = loss_fn(out, yb)
                    loss = task
                    if terms:
                        ctx = LossContext(e_in_phase, ph.epochs, b, n_batches, self.model, out, yb, mon, global_epoch)
                        for t in terms:
                            loss = loss + t(ctx)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite loss {float(loss)} at epoch {global_epoch + 1}, batch {b}; lower the learning rate"
                    )
                opt.zero_grad(set_to_none=True)
                if self.world > 1:
                    # DDP averages gradients over ranks; weight each shard so the result is the
                    # gradient of the global-batch mean even when shards differ in size
                    (loss * (len(yb) * self.world / n_global)).backward()
                else:
                    loss.backward()
                if self.cfg.train.grad_clip:
                    nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
                opt.step()
                if self.gated:
                    from .sparsity.connectivity import constrain_gates

                    constrain_gates(self.model)
                if self.ema is not None:
                    self.ema.update(self.model)
                n = len(yb)
                seen += n
                tot_loss += float(loss.detach()) * n
                tot_task += float(task.detach()) * n
                correct += float((out.argmax(-1) == yb).sum())
                if mon is not None and n:
                    spikes += float(mon.spike_count().detach()) * n
                me = self.cfg.train.measure_every
                if me and b % me == 0:
                    # weighted by the shard's samples and summed over ranks below: the activity of
                    # the whole global batch, as one process measures it
                    for name, m in self.model.named_modules():
                        if hasattr(m, "activity") and getattr(m, "last_stats", None):
                            act_sum[name] = act_sum.get(name, 0.0) + m.activity() * n
                    act_n += n
                bar.set_postfix(loss=f"{tot_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
        finally:
            if mon is not None:
                mon.remove()
        seen, tot_loss, tot_task, correct, spikes = _all_reduce_sum(
            [seen, tot_loss, tot_task, correct, spikes], self.world
        )
        if self.cfg.train.measure_every:
            names = sorted({name for name, m in self.model.named_modules() if hasattr(m, "activity")})
            sums = _all_reduce_sum([act_sum.get(k, 0.0) for k in names] + [act_n], self.world)
            act_sum = {k: v for k, v in zip(names, sums[:-1], strict=True) if k in act_sum or v}
            act_n = sums[-1]
        rec = dict(
            train_loss=tot_loss / seen,
            train_task_loss=tot_task / seen,
            train_acc=correct / seen,
            train_spikes=spikes / seen if mon is not None else None,
        )
        if act_n:
            rec["activity_pct"] = {k: v / act_n for k, v in act_sum.items()}
        # penalties that price the gates (sparsity/gate_penalty.py) log their mean expected cost
        stats = [(t.stat, t.epoch_stats()) for t in terms if hasattr(t, "epoch_stats")]
        if stats:
            sums = _all_reduce_sum([v for _, pair in stats for v in pair], self.world)
            for i, (key, _) in enumerate(stats):
                name = f"train_{key}" if f"train_{key}" not in rec else f"train_{key}_{i}"
                rec[name] = sums[2 * i] / sums[2 * i + 1] if sums[2 * i + 1] else None
        for t in terms:  # a budget's Lagrange multiplier and scheduled value (the same on every rank)
            if getattr(t, "mu", None) is not None:
                rec[f"train_{t.stat}_mu"] = t.mu
            if getattr(t, "budget", None) is not None:  # scheduled: the value at the epoch's end
                rec[f"train_{t.stat}_budget"] = t.in_force
        return rec

    @torch.no_grad()
    def evaluate(self, split, seed_offset: int = 10**6, metrics: bool = False) -> dict:
        """Accuracy and task loss on ``split`` (deterministic encoder draws); optional metrics.
        An empty split is refused (its accuracy would be 0 / 0)."""
        if len(split) == 0:
            raise ConfigError(
                "cannot evaluate on an empty split (0 samples); check data.val_fraction and data.test_subset"
            )
        self.model.eval()
        gen = torch.Generator().manual_seed(epoch_seed(self.cfg.seed, seed_offset))
        loss_fn = task_loss(self.phases[-1].loss or self.cfg.train.loss)
        rec = MetricsRecorder(self.model) if metrics else None
        correct = tot = 0.0
        n = 0
        try:
            for xb, yb in batches(split, self.cfg.data.eval_batch_size):
                yb = yb.to(self.device)
                out = self.model(self.data.encode(xb, gen).to(self.device))
                tot += float(loss_fn(out, yb)) * len(yb)
                correct += float((out.argmax(-1) == yb).sum())
                n += len(yb)
            res = {"acc": correct / n, "loss": tot / n}
            if rec is not None:
                res["metrics"] = rec.report(samples=n).as_dict()
            return res
        finally:
            if rec is not None:
                rec.remove()
            self.model.train()

    def _averaged(self):
        """Context in which the model holds its EMA weights (``train.ema``), else a no-op."""
        return self.ema.swapped(self.model) if self.ema is not None else contextlib.nullcontext()

    # -- checkpoints
    # settings that do not change what a run computes: free to differ on resume (phase lengths too)
    _RESUME_FREE = (
        "name",
        "notes",
        "data.eval_batch_size",
        "train.num_threads",
        "train.device",
        "train.measure_every",
        "train.epochs",
    )

    def _fingerprint(self) -> dict:
        """What a resumed run must share with its checkpoint: the config without the free keys
        and without the phases' lengths (a run may be lengthened)."""
        fp = flat_config(self.cfg.to_dict(), self._RESUME_FREE)
        if fp.get("train.phases"):
            fp["train.phases"] = [{k: v for k, v in p.items() if k != "epochs"} for p in fp["train.phases"]]
        return fp

    def _check_resume(self, ckpt: dict, last: Path) -> None:
        """Refuse a checkpoint written under another config, or one further on than the config's phases."""
        if "config" in ckpt:  # checkpoints from before 2026-11-23 hold no config: nothing to compare
            allowed = "the phases' lengths and " + ", ".join(self._RESUME_FREE)
            refuse_changes(json.loads(ckpt["config"]), self._fingerprint(), last, allowed)
        pi, done = int(ckpt["phase"]), int(ckpt["epoch_in_phase"])
        if pi < len(self.phases) and done > self.phases[pi].epochs:
            raise ConfigError(
                f"--resume: {last} holds {done} epochs of phase {self.phases[pi].name!r}, "
                f"the config gives it only {self.phases[pi].epochs}"
            )
        if pi >= len(self.phases):  # a checkpoint's phase index is always one of its config's phases
            raise ConfigError(f"--resume: {last} stopped in phase {pi + 1}, the config has {len(self.phases)} phase(s)")
        # the phases' lengths when the checkpoint was written, up to the stopped one (checkpoints
        # from before 2026-11-24 do not record them)
        ran = ckpt.get("phase_lengths") or []
        was = ran[pi] if pi < len(ran) else None
        if was is not None and pi < len(self.phases) and self.phases[pi].epochs != int(was):
            ph = self.phases[pi]
            dep = [r.get("schedule") for r in self._phase_regs(ph)
                   if isinstance(r, dict) and r.get("name") == "spike_count"
                   and r.get("schedule", "constant") != "constant"]  # fmt: skip
            if dep:  # w(n, N) of Allred et al. eqs. 5-8: the epochs already run used the old N
                raise ConfigError(
                    f"--resume: phase {ph.name!r} has a spike-count schedule ({dep[0]!r}) whose weights depend "
                    f"on the phase's length: {int(was)} -> {ph.epochs} epochs would change those of the epochs "
                    "already run (a constant schedule can be lengthened)"
                )
        for i in range(min(pi, len(self.phases), len(ran))):
            if int(ran[i]) != self.phases[i].epochs:  # a finished phase's epochs have all been run
                raise ConfigError(
                    f"--resume: phase {self.phases[i].name!r} of {last} is finished after {ran[i]} epochs, the "
                    f"config gives it {self.phases[i].epochs}; only the phase the run stopped in and later ones "
                    "may be lengthened"
                )

    def _elapsed(self) -> float:
        """Training time so far, across resumes (``epochs()`` sets the clock)."""
        prior, t0 = self._clock
        return prior + time.perf_counter() - t0

    def _state(self, phase_idx, epoch_in_phase, global_epoch, opt, sched, best, terms=()) -> dict:
        return {
            # loss terms with state (a budget's multiplier), by position in the phase's list
            "terms": [t.checkpoint_state() if hasattr(t, "checkpoint_state") else None for t in terms],
            "train_s": self._elapsed(),
            "config": json.dumps(self._fingerprint()),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "model": self.model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else {},
            "phase": phase_idx,
            "epoch_in_phase": epoch_in_phase,
            "phase_lengths": [ph.epochs for ph in self.phases[: phase_idx + 1]],  # finished + the current one
            "global_epoch": global_epoch,
            "best": best,
            "history": json.dumps(self.history),
        }

    def _write_run_json(self, resumed_from: int | None) -> None:
        if self.rank != 0:
            return
        info = {
            "name": self.cfg.name,
            "config": self.cfg.to_dict(),
            "seed": self.cfg.seed,
            "versions": versions(),
            "git_commit": _git_commit(),
            "threads": torch.get_num_threads(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "data": self.data.description,
            "resumed_from_epoch": resumed_from,
            "model": str(self.model),
            "world_size": self.world,
        }
        atomic_write_text(self.out / "run.json", json.dumps(info, indent=2, default=str))

    def fit(self) -> dict:
        """Train every phase (resuming from ``last.pt`` with ``resume``), test, write results."""
        for _ in self.epochs():
            pass
        return self._finish(self._best, self._train_s)

    def epochs(self):
        """Generator behind :meth:`fit`: trains, validates and checkpoints one epoch per step and
        yields its log record; between two steps the model may be inspected or evaluated
        (``benchmarks/eventprop_bench.py`` interleaves two engines this way). Afterwards
        ``_best`` and ``_train_s`` hold what :meth:`_finish` needs."""
        last = self.out / "last.pt"
        start_phase, start_epoch, global_epoch = 0, 0, 0
        best = {"val_acc": -1.0, "epoch": -1}
        ckpt = None
        self.ema = EmaWeights(self.model, self.cfg.train.ema) if self.cfg.train.ema is not None else None
        if self.resume:
            if not last.exists():
                raise ConfigError(f"--resume: no checkpoint at {last}")
            ckpt = load_checkpoint(last)
            self._check_resume(ckpt, last)
            self.model.load_state_dict(ckpt["model"])
            if self.ema is not None:
                if not ckpt.get("ema"):
                    raise ConfigError(f"--resume with train.ema: {last} holds no EMA weights")
                self.ema.load_state_dict(ckpt["ema"])
            start_phase, start_epoch = int(ckpt["phase"]), int(ckpt["epoch_in_phase"])
            global_epoch, best = int(ckpt["global_epoch"]), dict(ckpt["best"])
            self.history = json.loads(ckpt["history"])
            # training time before the restart (older checkpoints: the logged epochs' sum)
            prior_s = float(ckpt.get("train_s", sum(r.get("epoch_time_s", 0.0) for r in self.history)))
            if self.rank == 0:  # drop lines of epochs logged after last.pt was written (a crash between)
                lines = "".join(json.dumps(r) + "\n" for r in self.history)
                atomic_write_text(self.out / "metrics.jsonl", lines)
        elif self.rank == 0 and (self.out / "metrics.jsonl").exists():
            (self.out / "metrics.jsonl").unlink()
        self._write_run_json(global_epoch if ckpt else None)
        # train_time_s spans restarts: the time before the last one is carried in last.pt
        self._clock = (prior_s if ckpt is not None else 0.0, time.perf_counter())
        for pi in range(start_phase, len(self.phases)):
            ph = self.phases[pi]
            lr = ph.lr if ph.lr is not None else self.cfg.train.optimizer.get("lr")
            opt = make_optimizer(self._param_groups(lr), self.cfg.train.optimizer, lr)
            sched = make_schedule(opt, ph.lr_schedule or self.cfg.train.lr_schedule, ph.epochs)
            e0 = 0
            if ckpt is not None and pi == start_phase:
                opt.load_state_dict(ckpt["optimizer"])
                span = (ckpt["scheduler"] or {}).get("T_max")  # a cosine schedule's length, in its state
                if span is not None and span != getattr(sched, "T_max", span):
                    raise ConfigError(
                        f"--resume: phase {ph.name!r}'s cosine lr_schedule spans the {span} epochs it started "
                        f"with; {ph.epochs} would bend it (use an exponential or step schedule to extend runs)"
                    )
                if sched is not None and ckpt["scheduler"]:
                    sched.load_state_dict(ckpt["scheduler"])
                e0 = start_epoch
            self._set_gates(ph)
            loss_fn, terms = self._phase_terms(ph)
            if ckpt is not None and pi == start_phase:
                saved = ckpt.get("terms") or []
                for i, t in enumerate(terms):
                    if hasattr(t, "restore_state"):
                        t.restore_state(saved[i] if i < len(saved) and saved[i] is not None else {})
            try:
                for e in range(e0, ph.epochs):
                    t0 = time.perf_counter()
                    rec = self._train_epoch(ph, e, global_epoch, opt, loss_fn, terms)
                    train_time = time.perf_counter() - t0
                    # with several phases only the last one competes for the best checkpoint: the
                    # phases are one recipe (e.g. a dense warm-up before sparsification), and an
                    # earlier phase's network is not the one the recipe produces
                    with self._averaged():  # validated (and kept as best) with EMA weights if any
                        val = self.evaluate(self.data.val)
                        improved = pi == len(self.phases) - 1 and val["acc"] > best["val_acc"]
                        if improved and self.rank == 0:  # checkpoints are written by rank 0 only
                            atomic_save(
                                {"model": self.model.state_dict(), "epoch": global_epoch + 1}, self.out / "best.pt"
                            )
                    rec.update(
                        epoch=global_epoch + 1,
                        phase=ph.name,
                        lr=opt.param_groups[0]["lr"],
                        val_acc=val["acc"],
                        val_loss=val["loss"],
                        epoch_time_s=train_time,
                    )
                    if sched is not None:
                        sched.step()
                    global_epoch += 1
                    self.history.append(rec)
                    if improved:
                        best = {"val_acc": val["acc"], "epoch": global_epoch}
                    if self.rank == 0:  # metrics and checkpoints are written by rank 0 only
                        with open(self.out / "metrics.jsonl", "a") as f:
                            f.write(json.dumps(rec) + "\n")
                        # "epoch e + 1 of phase pi done", also at a phase's end: a resume with that
                        # phase lengthened goes on in it, with its optimizer state
                        atomic_save(self._state(pi, e + 1, global_epoch, opt, sched, best, terms), last)
                        tqdm.write(
                            f"[{self.cfg.name}] epoch {global_epoch} ({ph.name}) loss {rec['train_loss']:.4f} "
                            f"train acc {rec['train_acc']:.4f} val acc {val['acc']:.4f} ({train_time:.1f}s)"
                        )
                    yield rec
            finally:
                for t in terms:  # remove the hooks of terms that watched layer inputs
                    if hasattr(t, "release"):
                        t.release()
            ckpt = None
        self._best = best
        self._train_s = self._elapsed()

    def _finish(self, best: dict, train_time: float) -> dict:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()  # rank 0 has written best.pt
        with self._averaged():
            final = self.evaluate(self.data.test, metrics=True)
        res = {
            "name": self.cfg.name,
            "seed": self.cfg.seed,
            "epochs": len(self.history),
            "test_acc_last": final["acc"],
            "metrics_last": final["metrics"],
            "best_val_acc": best["val_acc"],
            "best_epoch": best["epoch"],
            "train_time_s": train_time,
        }
        if self.cfg.train.select_best and (self.out / "best.pt").exists():
            self.model.load_state_dict(load_checkpoint(self.out / "best.pt")["model"])
            bt = self.evaluate(self.data.test, metrics=True)
            res["test_acc"] = bt["acc"]
            res["metrics"] = bt["metrics"]
        else:
            res["test_acc"] = final["acc"]
            res["metrics"] = final["metrics"]
            if self.ema is not None:  # the averaged weights are the run's result
                self.ema.copy_to(self.model)
        if self.rank != 0:
            return res
        return self._write_results(res)

    def _write_results(self, res: dict) -> dict:
        """``results.json`` and the training curves (``curves.png``) of a finished run."""
        atomic_write_text(self.out / "results.json", json.dumps(res, indent=2))
        try:
            from .plots import plot_curves

            res["curves"] = str(plot_curves(self.history, self.out / "curves.png", self.cfg.name))
        except Exception as e:  # noqa: BLE001 - a plot must never lose a finished run
            res["curves_error"] = str(e)
        return res
