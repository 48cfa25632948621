"""``sparsespike sweep SWEEP.yaml``: the Allred et al. search over the spike-count weight ``s0``.

Protocol (Allred et al. sec. 2.4 and 3; METHODS.md sec. 5):

1. 20 % of the training set is held out for validation (``data.val_fraction = 0.2``).
2. One training run (an Optuna *trial*) per grid point ``(schedule, s0[, seed])``, plus the
   cross-entropy-only baseline (``schedule = baseline``, ``s0 = 0``). Every run trains for the
   configured ``N`` epochs; after every epoch it records validation accuracy *and* the validation
   spike count (mean spikes per sample, :class:`~sparsespike.metrics.MetricsRecorder`) and keeps a
   checkpoint of the weights (``trials/<run>/epochs/epoch_NNN.pt``).
3. Selection on validation, over every (s0, epoch) of each method, epoch count included:

   * reference = the best validation accuracy of the CE-only baseline over its epochs;
   * **Table 1** (iso-accuracy): ``val_acc >= reference`` ("no increase in validation error");
   * **Table 2**: ``val_acc >= reference - tolerance`` (default 0.01 = one percentage point,
     "less than 1 % reduction in validation accuracy");
   * among the admissible points the fewest validation spikes wins ("best spiking sparsity");
     ties go to the larger ``s0``, then the fewer epochs. The same rules pick the baseline's own
     row (Table 1: its best epoch; Table 2: its sparsest epoch within the tolerance), which is
     why the paper's two baselines differ (7 vs 6 epochs);
   * with several seeds, a point is the mean over seeds, and only points that hold every seed of
     the spec compete (reference included): a seed that failed or diverged before that epoch
     leaves the point ``complete: false``, kept in the results and listed in the report.
4. The selected checkpoints are evaluated once on the test set (accuracy, spike count, SynOps).

**Epochs are chosen from per-epoch checkpoints, not by retraining.** The schedules depend on the
horizon ``N`` (``s0 n / N``), so "the run stopped at epoch n* of a schedule over N epochs" and
"a run retrained for N = n* epochs" are different models; the validation numbers were measured on
the former, so the former is what is tested (and a retrain with the same ``N`` stopped at ``n*`` is
bit-identical on CPU anyway).

Engine: an Optuna study over RDB storage (default ``sqlite:///<out>/study.db``, so a crashed
sweep resumes where it stopped; ``--storage URL`` for a shared database and ``--worker`` to add
workers on other machines). The sampler is :class:`optuna.samplers.GridSampler` over the
categorical ``setting = "schedule:s0"`` (one value per grid point, since each schedule has its own
``s0`` grid) and ``seed``. Objectives: final validation accuracy (max) and validation spike count
(min); the per-epoch records are stored as the trial's user attribute ``epochs``.

Fault tolerance: trials record their host and pid and beat a heartbeat
(``RDBStorage(heartbeat_interval, grace_period)``); a trial left RUNNING by a dead worker is
failed (immediately if its pid is dead on this host, else once its heartbeat is older than the
grace period) and re-queued by :class:`optuna.storages.RetryHeartbeatStaleTrialCallback`
(``--max-retry``). A re-queued trial resumes from the run's ``last.pt`` (Trainer resume), so
only the interrupted epoch is repeated. A failed trial is never dropped silently: it is retried
up to ``max_retry`` times, then its grid point is listed once as failed in the report. Two
retries queued for one point by processes reconciling at once: the later one is pruned
(:func:`claim_slot`).

Spec (YAML)::

    name: allred_fmnist_sweep
    config: allred_fmnist_lenet.yaml   # experiment config: a path (relative to this file) or a built-in name
    set: {train.epochs: 8}             # dotted overrides of the config
    val_fraction: 0.2
    val_subset: 2000                   # validate on the first k held-out samples (null: all)
    seeds: [0]
    tolerance: 0.01                    # Table 2
    per_batch: false                   # A(n) per batch instead of per epoch
    normalized: false                  # quadratic as s0 (n/N)^2 instead of the printed s0 n^2/N
    schedules:                         # s0 grid per schedule; the baseline is always added
      constant: [1.0e-5, 3.0e-5]
      linear: [3.0e-5, 1.0e-4]

**Multi-objective search.** A spec with ``kind: pareto`` is a different sweep: a seeded NSGA-II or
TPE search over any config keys, for validation accuracy (max) and validation SynOps per sample
(min), reporting the Pareto front (:mod:`sparsespike.pareto`, docs/sweep.md). Both kinds share
this module's engine: storage, study creation, workers, heartbeats, retries, resume. A spec
object tells the engine what differs (:class:`SweepSpec` for the grid): its sampler, its trial
keys and status, its objective, and its report.

Command line (see :func:`add_sweep_parser`)::

    sparsespike sweep SPEC.yaml [--out runs/NAME] [--workers 2] [--storage URL] [--threads 1]
    sparsespike sweep SPEC.yaml --worker --storage URL --out SHARED_DIR   # one more worker
    sparsespike sweep SPEC.yaml --report-only                              # selection + tables only
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import ExperimentConfig, check_value, config_float, load_config
from .errors import ConfigError

# torch and the Trainer are imported lazily, so that ``sparsespike --help`` stays fast

BASELINE = "baseline"
SCHEDULE_NAMES = ("constant", "linear", "quadratic", "alternating", "alternating_linear")


# ================================================================ spec
@dataclass
class SweepSpec:
    """A sweep: which experiment, which grid, which selection rules (see module docstring)."""

    name: str
    config: Path
    schedules: dict[str, list[float]]
    set: dict = field(default_factory=dict)
    val_fraction: float = 0.2
    val_subset: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    tolerance: float = 0.01
    per_batch: bool = False
    normalized: bool = False
    source: Path | None = None

    KEYS = (
        "name",
        "config",
        "schedules",
        "set",
        "val_fraction",
        "val_subset",
        "seeds",
        "tolerance",
        "per_batch",
        "normalized",
    )

    kind = "grid"  # the ``kind:`` of the spec (not a dataclass field)
    metric_names = ("val_acc", "val_spikes")

    @classmethod
    def load(cls, path: str | Path) -> SweepSpec:
        raw, p = read_spec_yaml(path)
        return cls.from_dict(raw, p)

    @classmethod
    def from_dict(cls, raw: dict, source: Path | None = None) -> SweepSpec:
        raw = dict(raw)
        kind = raw.pop("kind", "grid")
        if kind != "grid":
            raise ConfigError(f"sweep spec: kind {kind!r} is not a grid sweep (load it with sweep.load_spec)")
        unknown = sorted(set(raw) - set(cls.KEYS))
        if unknown:
            raise ConfigError(f"sweep spec: unknown keys {unknown}; valid keys: {', '.join(cls.KEYS)}")
        for k in ("name", "config", "schedules"):
            if k not in raw:
                raise ConfigError(f"sweep spec: missing key {k!r}")
        cfg = resolve_config(raw["config"], source)
        set_ = raw.get("set") or {}
        if not isinstance(set_, dict):
            raise ConfigError(f"sweep spec: set must map dotted config keys to values, got {set_!r}")
        vf = check_value(raw.get("val_fraction", 0.2), float, "sweep spec: val_fraction")
        if not 0 < vf < 1:
            raise ConfigError(f"sweep spec: val_fraction must be in (0, 1), got {vf!r}")
        tol = check_value(raw.get("tolerance", 0.01), float, "sweep spec: tolerance")
        if not 0 <= tol < 1:
            raise ConfigError(f"sweep spec: tolerance is a fraction of accuracy in [0, 1), got {tol!r}")
        return cls(
            name=str(raw["name"]),
            config=cfg,
            schedules=_parse_schedules(raw["schedules"]),
            set=dict(set_),
            val_fraction=float(vf),
            val_subset=check_value(raw.get("val_subset"), int | None, "sweep spec: val_subset", min=1),
            seeds=_parse_seeds(raw.get("seeds", [0])),
            tolerance=float(tol),
            per_batch=check_value(raw.get("per_batch", False), bool, "sweep spec: per_batch"),
            normalized=check_value(raw.get("normalized", False), bool, "sweep spec: normalized"),
            source=source,
        )

    def write(self, path: Path) -> Path:
        """A self-contained copy (absolute config path): what worker processes load."""
        d = {k: getattr(self, k) for k in self.KEYS}
        d["config"] = str(Path(self.config).resolve())
        Path(path).write_text(yaml.safe_dump(d, sort_keys=False))
        return Path(path)

    # -- the grid
    def settings(self) -> list[str]:
        """Grid values of the categorical parameter ``setting``: ``"schedule:s0"``, baseline first."""
        out = [setting_key(BASELINE, 0.0)]
        for name in SCHEDULE_NAMES:
            for s0 in self.schedules.get(name, []):
                out.append(setting_key(name, s0))
        return out

    def search_space(self) -> dict[str, list]:
        return {"setting": self.settings(), "seed": list(self.seeds)}

    def n_points(self) -> int:
        return len(self.settings()) * len(self.seeds)

    def fingerprint(self) -> str:
        d = {k: getattr(self, k) for k in self.KEYS if k != "config"}
        cfg = load_config(self.config).to_dict()
        cfg.pop("notes", None)  # comments may change; the experiment may not
        d["config"] = cfg
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    # -- what the shared engine asks of a spec (ParetoSpec answers the same questions)
    def make_sampler(self):
        """The study's sampler: a grid over ``setting`` x ``seed`` (seed 0 in every process)."""
        import optuna

        return optuna.samplers.GridSampler(self.search_space(), seed=0)

    def study_attrs(self) -> dict:
        """Study user attributes written once, when the study is created."""
        return {"search_space": self.search_space()}

    def describe(self) -> str:
        return f"{self.n_points()} grid points"

    def status(self, study) -> dict:
        return grid_status(study, self)

    def trial_key(self, trial):
        return grid_key(trial)

    def prepare(self, study, log=print) -> None:
        """Nothing to enqueue: the GridSampler hands out the grid points."""

    def objective(self, out: Path, data_dir, threads: int | None, log=print):
        return _Objective(self, out, data_dir, threads, log)

    def finalize(self, out: Path, study, *, data_dir=None, log=print) -> dict:
        return finalize_grid(self, out, study, data_dir=data_dir, log=log)

    # -- one run
    def trial_config(self, schedule: str, s0: float, seed: int) -> ExperimentConfig:
        """The experiment config of one grid point (CE only for the baseline)."""
        ov = dict(self.set)
        ov["seed"] = int(seed)
        ov["data.val_fraction"] = self.val_fraction
        regs = []
        if schedule != BASELINE:
            reg = {"name": "spike_count", "schedule": schedule, "s0": float(s0)}
            if schedule in ("alternating", "alternating_linear"):  # the flags of the schedules they shape
                reg["per_batch"] = self.per_batch
            if schedule == "quadratic":
                reg["normalized"] = self.normalized
            regs = [reg]
        ov["train.regularizers"] = regs  # replaces the config's: the baseline is CE only
        cfg = load_config(self.config, ov)
        cfg.name = f"{cfg.name}_{run_name(schedule, s0, seed)}"
        if cfg.train.phases:
            raise ConfigError("sweep: the experiment config must have a single phase (no train.phases)")
        return cfg


def read_spec_yaml(path: str | Path) -> tuple[dict, Path]:
    """The raw mapping of a spec file (a path, or a built-in name) and the file it came from."""
    p = Path(path)
    if not p.is_file():
        builtin = _builtin(str(path))
        if builtin is None:
            raise ConfigError(f"sweep spec not found: {p}")
        p = builtin
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a sweep spec is a mapping, got {type(raw).__name__}")
    return raw, p


def _parse_schedules(raw) -> dict[str, list[float]]:
    """The ``schedules:`` of a grid spec: schedule name -> distinct finite ``s0 > 0`` (a list, or
    one number); the baseline is always added, so a ``baseline`` entry is ignored."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"sweep spec: schedules must map schedule names to s0 lists (e.g. {{constant: [1.0e-5]}}), got {raw!r}"
        )
    out: dict[str, list[float]] = {}
    for name, grid in raw.items():
        if name not in SCHEDULE_NAMES and name != BASELINE:
            raise ConfigError(f"sweep spec: unknown schedule {name!r}; use {', '.join(SCHEDULE_NAMES)}")
        if name == BASELINE:
            continue
        where = f"sweep spec: s0 of schedules.{name} (the baseline is added by itself)"
        vals = [config_float(v, where, strict=True) for v in (grid if isinstance(grid, (list, tuple)) else [grid])]
        if len(set(vals)) != len(vals):
            raise ConfigError(f"sweep spec: s0 values of schedules.{name} repeat: {vals}")
        out[name] = vals
    return out


def _parse_seeds(raw) -> list[int]:
    """The ``seeds:`` of a grid spec: a non-empty list of distinct integers in numpy's seed range
    (``null``: ``[0]``)."""
    if raw is None:
        return [0]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ConfigError(f"sweep spec: seeds must be a non-empty list of integers, got {raw!r}")
    seeds = [check_value(s, int, "sweep spec: seeds", min=0, below=2**32) for s in raw]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"sweep spec: seeds repeat: {seeds}")
    return seeds


SPEC_KINDS = ("grid", "pareto")


def load_spec(path: str | Path):
    """A sweep spec of either kind: :class:`SweepSpec` (``kind: grid`` or no ``kind``) or
    :class:`~sparsespike.pareto.ParetoSpec` (``kind: pareto``)."""
    raw, p = read_spec_yaml(path)
    kind = raw.get("kind", "grid")
    if kind == "grid":
        return SweepSpec.from_dict(raw, p)
    if kind == "pareto":
        from .pareto import ParetoSpec

        return ParetoSpec.from_dict(raw, p)
    raise ConfigError(f"sweep spec {p}: unknown kind {kind!r}; use {' or '.join(SPEC_KINDS)}")


def resolve_config(name, source: Path | None) -> Path:
    """The experiment config a spec names: a path (relative to the spec file) or a built-in name."""
    cfg = Path(str(name))
    if cfg.is_absolute():
        if not cfg.is_file():
            raise ConfigError(f"sweep spec: experiment config {str(name)!r} not found")
        return cfg
    cand = (source.parent / cfg) if source is not None else cfg
    if cand.is_file():
        return cand
    builtin = _builtin(str(name))
    if builtin is not None:
        return builtin
    raise ConfigError(f"sweep spec: experiment config {str(name)!r} not found")


def _builtin(name: str) -> Path | None:
    from importlib import resources

    base = Path(str(resources.files("sparsespike") / "experiments"))
    for cand in (base / name, base / f"{name}.yaml"):
        if cand.is_file():
            return cand
    return None


def setting_key(schedule: str, s0: float) -> str:
    return f"{schedule}:{float(s0)!r}"


def parse_setting(key: str) -> tuple[str, float]:
    name, s0 = key.split(":", 1)
    return name, float(s0)


def run_name(schedule: str, s0: float, seed: int) -> str:
    return f"{schedule}_s0={float(s0):g}_seed{int(seed)}"


# ================================================================ trainer with per-epoch records
_EPOCH_TRAINER = None


def _epoch_trainer_cls():
    """:class:`EpochTrainer`, defined on first use (it subclasses the torch-importing Trainer)."""
    global _EPOCH_TRAINER
    if _EPOCH_TRAINER is not None:
        return _EPOCH_TRAINER
    from .train import Trainer, atomic_save, atomic_write_text, load_checkpoint

    class EpochTrainer(Trainer):
        """A :class:`~sparsespike.train.Trainer` that, after every epoch, also

        * measures the validation spike count (``evaluate(val, metrics=True)``),
        * writes ``epochs.jsonl`` (epoch, val acc/loss, val spikes, SynOps, <N_S>) and
          ``epochs/epoch_NNN.pt`` (the weights after that epoch),

        and skips the test-set evaluation at the end (the sweep tests only the selected checkpoints).
        """

        def __init__(self, *args, on_epoch=None, **kw) -> None:
            super().__init__(*args, **kw)
            self.on_epoch = on_epoch
            self._fitting = False

        def fit(self) -> dict:
            if not self.resume:
                (self.out / "epochs.jsonl").unlink(missing_ok=True)
                ck = self.out / "epochs"
                if ck.is_dir():
                    for f in ck.glob("epoch_*.pt"):
                        f.unlink()
            elif (self.out / "last.pt").exists():  # (no last.pt: the Trainer refuses the resume)
                self._trim_epochs(int(load_checkpoint(self.out / "last.pt")["global_epoch"]))
            self._fitting = True
            try:
                return super().fit()
            finally:
                self._fitting = False

        def _trim_epochs(self, done: int) -> None:
            """Rewrite ``epochs.jsonl`` (atomically) with its readable records of epochs ``<= done``,
            the checkpoint's epoch: a resume repeats the epochs after it, and a line cut by the
            crash would otherwise swallow the next record appended to it (as ``Trainer`` does
            for ``metrics.jsonl``)."""
            recs = _read_jsonl(self.out / "epochs.jsonl")
            text = "".join(json.dumps(recs[e]) + "\n" for e in sorted(recs) if e <= done)
            atomic_write_text(self.out / "epochs.jsonl", text)

        def evaluate(self, split, seed_offset: int = 10**6, metrics: bool = False) -> dict:
            if not (self._fitting and split is self.data.val and not metrics):
                return super().evaluate(split, seed_offset, metrics)
            res = super().evaluate(split, seed_offset, metrics=True)
            epoch = len(self.history) + 1  # the Trainer appends this epoch's record after evaluating
            m = res["metrics"]
            rec = {
                "epoch": epoch,
                "val_acc": res["acc"],
                "val_loss": res["loss"],
                "val_spikes": m["spike_count"],
                "val_synops": m["synops"],
                "val_ns": m["ns"],
            }
            (self.out / "epochs").mkdir(exist_ok=True)
            atomic_save(
                {"model": self.model.state_dict(), "epoch": epoch}, self.out / "epochs" / f"epoch_{epoch:03d}.pt"
            )
            with open(self.out / "epochs.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            if self.on_epoch is not None:
                self.on_epoch(rec)
            return res

        def _finish(self, best: dict, train_time: float) -> dict:
            res = {
                "name": self.cfg.name,
                "seed": self.cfg.seed,
                "epochs": len(self.history),
                "best_val_acc": best["val_acc"],
                "best_epoch": best["epoch"],
                "train_time_s": train_time,
            }
            return self._write_results(res)

    _EPOCH_TRAINER = EpochTrainer
    return EpochTrainer


def __getattr__(name):
    if name == "EpochTrainer":
        return _epoch_trainer_cls()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _read_jsonl(path: Path) -> dict[int, dict]:
    """Records by epoch (a line repeated after a resume: the last one wins)."""
    out: dict[int, dict] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if isinstance(r, dict) and isinstance(r.get("epoch"), int):
            out[r["epoch"]] = r
    return out


def epoch_records(run_dir: Path) -> list[dict]:
    """Per-epoch records of a run: validation (``epochs.jsonl``) merged with training (``metrics.jsonl``)."""
    val = _read_jsonl(run_dir / "epochs.jsonl")
    tr = _read_jsonl(run_dir / "metrics.jsonl")
    out = []
    for e in sorted(val):
        r = dict(val[e])
        t = tr.get(e, {})
        for k in ("train_loss", "train_task_loss", "train_acc", "train_spikes", "epoch_time_s"):
            if k in t:
                r[k] = t[k]
        out.append(r)
    return out


# ================================================================ data cache (per process)
_DATA: dict = {}


def sweep_data(spec, cfg: ExperimentConfig, data_dir):
    """The data bundle of ``cfg`` (validation cut to ``spec.val_subset``), cached per process."""
    from .pipeline import Split, build_data

    key = (json.dumps(cfg.to_dict()["data"], sort_keys=True, default=str), cfg.seed, str(data_dir))
    if key not in _DATA:
        data = build_data(cfg.data, data_dir, cfg.seed)
        if spec.val_subset:
            k = int(spec.val_subset)
            data.val = Split(data.val.x[:k], data.val.y[:k])
            data.description += f" (validation cut to {len(data.val)} by the sweep)"
        _DATA.clear()
        _DATA[key] = data
    return _DATA[key]


# ================================================================ Optuna plumbing
def default_storage(out: Path) -> str:
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def _retry_base():
    import optuna

    return optuna.storages.RetryHeartbeatStaleTrialCallback


class RetryTrial:
    """Optuna's :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`, minus the dead worker's identity.

    The re-queued trial keeps params, grid id and retry history, but not the ``host``/``pid``/
    ``error`` user attributes of the failed one (the new worker writes its own).
    """

    WORKER_ATTRS = ("host", "pid", "error", "traceback", "epochs_done")

    def __init__(self, max_retry: int | None = 2) -> None:
        self.max_retry = max_retry
        self._cb = _retry_base()(max_retry=max_retry)

    def __call__(self, study, trial) -> None:
        import copy

        t = copy.deepcopy(trial)
        t.user_attrs = {k: v for k, v in t.user_attrs.items() if k not in self.WORKER_ATTRS}
        t.user_attrs["retry_of"] = trial.number
        self._cb(study, t)


def make_storage(url: str, heartbeat: int = 20, grace: int = 120, max_retry: int = 2):
    import optuna

    kw = {}
    if url.startswith("sqlite"):
        kw["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=int(heartbeat),
        grace_period=int(grace),
        heartbeat_stale_trial_callback=RetryTrial(max_retry=max_retry),
        **kw,
    )


def open_study(spec, storage, create: bool = True):
    """Create (or load) the study; refuse a database holding a different sweep under the same name.

    The sampler comes from ``spec.make_sampler()``. For the grid, every process must use the same
    GridSampler seed: the sampler shuffles the grid with it, and ``grid_id`` (stored in the
    trials) must name the same point in every worker.
    """
    import optuna

    sampler = spec.make_sampler()
    if create:
        study = optuna.create_study(
            study_name=spec.name,
            storage=storage,
            sampler=sampler,
            directions=["maximize", "minimize"],
            load_if_exists=True,
        )
    else:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler)
    fp = spec.fingerprint()
    old = study.user_attrs.get("spec_fingerprint")
    if old is None and create:
        study.set_user_attr("spec_fingerprint", fp)
        for k, v in spec.study_attrs().items():
            study.set_user_attr(k, v)
        study.set_metric_names(list(spec.metric_names))
    elif old is not None and old != fp:
        raise ConfigError(
            f"study {spec.name!r} in this storage was created from a different sweep spec or config "
            f"(fingerprint {old} != {fp}); use another --out/--storage or restore the spec"
        )
    return study


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _retry(study, frozen, max_retry: int) -> None:
    RetryTrial(max_retry)(study, frozen)


def grid_key(trial) -> tuple | None:
    """The grid point of a trial, ``(setting, seed)``; ``None`` before it has its parameters."""
    if "setting" not in trial.params:
        return None
    return (trial.params["setting"], trial.params.get("seed"))


def reconcile(study, max_retry: int = 2, log=print, min_age: float = 10.0, key=grid_key) -> int:
    """Fail trials left RUNNING by dead workers and re-queue every failure that has no retry yet.

    * RUNNING trials (started more than ``min_age`` seconds ago) whose recorded pid is dead on
      this host: failed now (no need to wait for the heartbeat grace period), then re-queued.
    * RUNNING trials with a stale heartbeat (any host): failed and re-queued by Optuna
      (:func:`optuna.storages.fail_stale_trials` with the storage's retry callback).
    * FAIL trials of a grid point with no COMPLETE, RUNNING or WAITING trial (e.g. a worker
      stopped by Ctrl-C, or a process that failed a stale trial without the callback): re-queued
      until ``max_retry`` retries are used up. ``key(frozen_trial)`` names the point a trial
      belongs to (``None``: ignore the trial); ``spec.trial_key`` of the sweep's spec.

    Returns the number of trials re-queued.
    """
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    host = socket.gethostname()
    n = 0
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        ua = t.user_attrs
        old = t.datetime_start is not None and (now - t.datetime_start).total_seconds() >= min_age
        if old and ua.get("host") == host and "pid" in ua and not _pid_alive(int(ua["pid"])):
            try:
                storage.set_trial_user_attr(t._trial_id, "error", f"worker pid {ua['pid']} died")
                ok = storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                ok = False  # another process got there first
            if ok:
                k = key(t)
                if k is not None and _slot_busy(study, k, key):  # another process re-queued it meanwhile
                    log(f"sweep: trial {t.number} ({t.params}) lost its worker (pid {ua['pid']}); already re-queued")
                    continue
                _retry(study, storage.get_trial(t._trial_id), max_retry)
                log(f"sweep: trial {t.number} ({t.params}) lost its worker (pid {ua['pid']}); re-queued")
                n += 1
    with contextlib.suppress(Exception):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            optuna.storages.fail_stale_trials(study)
            n += len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) - before
    # failures with no retry in flight
    by_key: dict[tuple, list] = {}
    for t in study.get_trials(deepcopy=False):
        k = key(t)
        if k is not None:
            by_key.setdefault(k, []).append(t)
    for k, ts in by_key.items():
        states = {t.state for t in ts}
        if states & {TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING}:
            continue
        failed = [t for t in ts if t.state == TrialState.FAIL]
        if not failed:
            continue
        last = max(failed, key=lambda t: t.number)
        if len(last.system_attrs.get("retry_history", [])) < max_retry:
            if _slot_busy(study, k, key):  # read again: another process may have re-queued it meanwhile
                continue
            _retry(study, storage.get_trial(last._trial_id), max_retry)
            log(f"sweep: re-queued failed trial {last.number} {k}")
            n += 1
    return n


def _slot_busy(study, k: tuple, key) -> bool:
    """Whether slot ``k`` has a COMPLETE trial or one WAITING or RUNNING, read afresh from the
    storage (what :func:`reconcile` checks just before it queues a retry, so that two processes
    reconciling at once rarely queue two; the objectives prune the rest, :func:`claim_slot`)."""
    from optuna.trial import TrialState

    busy = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    return any(key(t) == k for t in study.get_trials(deepcopy=False, states=busy))


def claim_slot(trial, key, k: tuple, *, running: bool = True) -> None:
    """Prune ``trial`` (user attribute ``duplicate_of``) when another trial holds its slot ``k``
    (``key(frozen_trial) == k``): a COMPLETE one, or with ``running`` a RUNNING one with a lower
    number. Such duplicates come from races between processes: GridSampler handing out a grid
    point twice, or two retries queued for one slot. Called before a trial trains, and again with
    ``running=False`` once it holds the run directory's lock (a duplicate that started first and
    finished while this one waited for the lock)."""
    import optuna
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.RUNNING) if running else (TrialState.COMPLETE,)
    for t in trial.study.get_trials(deepcopy=False, states=states):
        if t.number != trial.number and key(t) == k:
            if t.state == TrialState.COMPLETE or t.number < trial.number:
                trial.set_user_attr("duplicate_of", t.number)
                raise optuna.TrialPruned(f"slot {k} already taken by trial {t.number}")


def slot_status(trials, keys: set, key_of) -> dict:
    """Counts of the slots ``keys`` by the states of the trials claiming them (``key_of(trial)``):
    done, running, unstarted, failed (retries used up; WAITING ones are neither), and
    ``waiting`` = the number of WAITING trials."""
    from optuna.trial import TrialState

    seen: dict[tuple, set] = {}
    waiting = 0
    for t in trials:
        if t.state == TrialState.WAITING:
            waiting += 1
        k = key_of(t)
        if k in keys:
            seen.setdefault(k, set()).add(t.state)
    st = {"done": 0, "running": 0, "waiting": waiting, "unstarted": 0, "failed": 0, "total": len(keys)}
    for k in keys:
        s = seen.get(k)
        if not s:
            st["unstarted"] += 1
        elif TrialState.COMPLETE in s:
            st["done"] += 1
        elif TrialState.RUNNING in s:
            st["running"] += 1
        elif TrialState.WAITING not in s:
            st["failed"] += 1
    return st


def grid_status(study, spec: SweepSpec) -> dict:
    """Counts of grid points by state: done, running, waiting, unstarted, failed (retries used up)."""

    keys = {(s, seed) for s in spec.settings() for seed in spec.seeds}
    return slot_status(study.get_trials(deepcopy=False), keys, _grid_point)


def _grid_point(trial) -> tuple | None:
    """The grid point ``(setting, seed)`` a trial claims, from its parameters or, for a WAITING
    retry, the parameters it is queued with; ``None`` for neither."""
    p = trial.params or trial.system_attrs.get("fixed_params", {})
    return (p["setting"], p.get("seed")) if "setting" in p else None


def mark_worker(trial) -> None:
    """Record the worker's host and pid on a trial (how a dead local worker's trial is found)."""
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())


@contextlib.contextmanager
def trial_guard(trial, run_dir: Path):
    """Hold ``run_dir``'s lock while a trial trains; record any exception on the trial, re-raise it."""
    import optuna

    with _dir_lock(run_dir):
        try:
            yield
        except optuna.TrialPruned:
            raise  # not an error (a duplicate, or a trial superseded by its retry)
        except KeyboardInterrupt:
            with contextlib.suppress(Exception):
                trial.set_user_attr("error", "interrupted")
            raise
        except Exception as e:  # noqa: BLE001 - recorded, then Optuna marks the trial FAIL
            with contextlib.suppress(Exception):
                trial.set_user_attr("error", f"{type(e).__name__}: {e}")
                trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            raise


def train_trial(
    trial,
    spec,
    cfg: ExperimentConfig,
    run_dir: Path,
    data_dir,
    threads: int | None,
    label: str,
    log=print,
    *,
    allow_resume: bool = True,
) -> list[dict]:
    """Train ``cfg`` into ``run_dir`` for ``trial`` with per-epoch validation records.

    Resumes from ``run_dir/last.pt`` when it exists and is readable (a retried trial repeats at
    most the interrupted epoch), unless ``allow_resume`` is false. A diverged run (non-finite loss)
    is a result: it keeps the epochs it finished. Stores the records as the trial's user attribute
    ``epochs`` (and the Trainer's result as ``result``) and returns them; a trial failed meanwhile
    by another process is pruned (its retry reuses ``run_dir``).
    """
    import optuna

    from .train import load_checkpoint

    if threads:
        cfg.train.num_threads = int(threads)
    data = sweep_data(spec, cfg, data_dir)
    resume = allow_resume and (run_dir / "last.pt").exists()
    if resume:
        try:
            load_checkpoint(run_dir / "last.pt")
        except Exception:  # noqa: BLE001 - an unreadable checkpoint: start over
            resume = False
    log(f"sweep: trial {trial.number} {label} -> {run_dir}" + (" (resuming)" if resume else ""))

    def on_epoch(rec):
        trial.set_user_attr("epochs_done", rec["epoch"])

    tr = _epoch_trainer_cls()(cfg, run_dir, data_dir, data=data, resume=resume, progress=False, on_epoch=on_epoch)
    try:
        res = tr.fit()
    except FloatingPointError as e:  # a diverged run is a result: keep the epochs it finished
        trial.set_user_attr("diverged", str(e))
        res = {"diverged": str(e)}
    recs = epoch_records(run_dir)
    if not recs:
        raise RuntimeError(f"run {run_dir} finished no epoch")
    try:
        trial.set_user_attr("epochs", recs)
        trial.set_user_attr("result", {k: v for k, v in res.items() if isinstance(v, (int, float, str))})
    except optuna.exceptions.UpdateFinishedTrialError:
        # another process failed this trial (e.g. this worker was paused past the heartbeat grace
        # period) and re-queued it; the retry resumes from this run's checkpoints at no cost
        log(f"sweep: trial {trial.number} was failed by another process; its retry will reuse {run_dir}")
        raise optuna.TrialPruned("superseded by its retry") from None
    return recs


class _Objective:
    """The grid's objective: train one ``(schedule, s0, seed)`` point; final val accuracy and spikes."""

    def __init__(self, spec: SweepSpec, out: Path, data_dir, threads: int | None, log=print) -> None:
        self.spec, self.out, self.data_dir, self.threads, self.log = spec, Path(out), data_dir, threads, log

    def __call__(self, trial):
        mark_worker(trial)
        setting = trial.suggest_categorical("setting", self.spec.settings())
        seed = trial.suggest_categorical("seed", list(self.spec.seeds))
        schedule, s0 = parse_setting(setting)
        # a grid point another worker already has (a race of GridSampler across processes, or two
        # retries queued for one point)
        claim_slot(trial, grid_key, (setting, seed))
        run_dir = self.out / "trials" / run_name(schedule, s0, seed)
        run_dir.mkdir(parents=True, exist_ok=True)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("schedule", schedule)
        trial.set_user_attr("s0", s0)
        if self.threads:
            import torch

            torch.set_num_threads(int(self.threads))
        with trial_guard(trial, run_dir):
            claim_slot(trial, grid_key, (setting, seed), running=False)
            return self._train(trial, schedule, s0, seed, run_dir)

    def _train(self, trial, schedule, s0, seed, run_dir):
        cfg = self.spec.trial_config(schedule, s0, seed)
        label = f"{schedule} s0={s0:g} seed={seed}"
        recs = train_trial(trial, self.spec, cfg, run_dir, self.data_dir, self.threads, label, self.log)
        return recs[-1]["val_acc"], recs[-1]["val_spikes"]


@contextlib.contextmanager
def _dir_lock(run_dir: Path):
    """Exclusive lock of a run directory (two processes must never train into the same one)."""
    import fcntl

    f = open(run_dir / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def worker_loop(
    spec,
    out: Path,
    storage_url: str,
    *,
    data_dir=None,
    threads: int | None = 1,
    worker_id: int = 0,
    heartbeat: int = 20,
    grace: int = 120,
    max_retry: int = 2,
    poll: float = 5.0,
    log=print,
) -> int:
    """Run trials until every grid point (or search slot) is done or failed for good.

    Returns the number of trials run here. ``spec``: a :class:`SweepSpec` or a
    :class:`~sparsespike.pareto.ParetoSpec`."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    storage = make_storage(storage_url, heartbeat, grace, max_retry)
    study = open_study(spec, storage, create=False)
    obj = spec.objective(out, data_dir, threads, log)
    ran = 0
    # (a worker paused longer than the grace period, e.g. by SIGSTOP, finds its trial failed and
    # re-queued when it wakes up; it finishes the run, the retry then resumes from the checkpoints)
    while True:
        reconcile(study, max_retry, log, key=spec.trial_key)
        st = spec.status(study)
        if st["waiting"] or st["unstarted"]:
            try:
                study.optimize(obj, n_trials=1, catch=(Exception,), gc_after_trial=True)
            except Exception as e:  # noqa: BLE001 - e.g. our trial was failed meanwhile (stale heartbeat)
                log(f"sweep: worker {worker_id}: trial bookkeeping failed ({type(e).__name__}: {e}); continuing")
            ran += 1
            continue
        if st["running"]:
            time.sleep(poll)  # another worker's trial may still die and come back to the queue
            continue
        return ran


# ================================================================ launcher
def launch(
    spec,
    out: Path,
    *,
    workers: int = 2,
    storage_url: str | None = None,
    data_dir=None,
    threads: int | None = 1,
    heartbeat: int = 20,
    grace: int = 120,
    max_retry: int = 2,
    max_restarts: int = 10,
    poll: float = 2.0,
    log=print,
) -> dict:
    """Create/resume the study, run ``workers`` local worker processes (0: in this process) until
    the grid (or the search budget) is done, then select, test and report. Returns the results dict.

    ``spec``: a :class:`SweepSpec` (Allred grid) or a :class:`~sparsespike.pareto.ParetoSpec`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url or default_storage(out)
    storage = make_storage(url, heartbeat, grace, max_retry)
    study = open_study(spec, storage, create=True)
    spec.write(out / "sweep_spec.yaml")
    reconcile(study, max_retry, log, key=spec.trial_key)
    spec.prepare(study, log)
    st = spec.status(study)
    log(f"sweep {spec.name}: {spec.describe()}, storage {url}, {workers} worker(s); status {st}")
    if workers <= 0:
        worker_loop(
            spec,
            out,
            url,
            data_dir=data_dir,
            threads=threads,
            heartbeat=heartbeat,
            grace=grace,
            max_retry=max_retry,
            log=log,
        )
    else:
        _run_local_workers(
            spec, out, url, workers, data_dir, threads, heartbeat, grace, max_retry, max_restarts, poll, log
        )
    st = spec.status(study)
    log(f"sweep {spec.name}: trials finished; status {st}")
    return finalize(spec, out, study, data_dir=data_dir, log=log)


def _worker_cmd(spec, out, url, i, data_dir, threads, heartbeat, grace, max_retry) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "sparsespike.sweep",
        str(Path(out) / "sweep_spec.yaml"),
        "--worker",
        "--out",
        str(out),
        "--storage",
        url,
        "--worker-id",
        str(i),
        "--heartbeat",
        str(heartbeat),
        "--grace",
        str(grace),
        "--max-retry",
        str(max_retry),
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    return cmd


def _run_local_workers(
    spec, out, url, workers, data_dir, threads, heartbeat, grace, max_retry, max_restarts, poll, log
):
    storage = make_storage(url, heartbeat, grace, max_retry)
    study = open_study(spec, storage, create=False)
    logs = out / "workers"
    logs.mkdir(exist_ok=True)
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    procs: dict[int, subprocess.Popen] = {}
    handles = []

    def spawn(i):
        fh = open(logs / f"worker{i}.log", "a")
        handles.append(fh)
        p = subprocess.Popen(
            _worker_cmd(spec, out, url, i, data_dir, threads, heartbeat, grace, max_retry),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        (logs / f"worker{i}.pid").write_text(str(p.pid))
        log(f"sweep: worker {i} started (pid {p.pid}, log {logs / f'worker{i}.log'})")
        return p

    for i in range(workers):
        procs[i] = spawn(i)
    restarts = 0
    try:
        while True:
            time.sleep(poll)
            for i, p in list(procs.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del procs[i]
                if rc != 0:
                    log(f"sweep: worker {i} (pid {p.pid}) exited with {rc}")
            reconcile(study, max_retry, log, key=spec.trial_key)
            st = spec.status(study)
            work = st["waiting"] or st["unstarted"]
            if len(procs) < workers and work and restarts < max_restarts:
                for i in range(workers):
                    if i not in procs and restarts < max_restarts:
                        procs[i] = spawn(i)
                        restarts += 1
            if not procs and (restarts >= max_restarts or not (work or st["running"])):
                break
    except KeyboardInterrupt:
        log("sweep: interrupted; stopping workers (run the same command again to resume)")
        for p in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGINT)
        for p in procs.values():
            p.wait()
        raise
    finally:
        for fh in handles:
            fh.close()


# ================================================================ selection
def collect(study) -> tuple[list[dict], list[dict]]:
    """``(rows, failed)``: one row per (trial, epoch) of the first COMPLETE trial of every grid
    point; one entry per failed grid point.

    A grid point is failed when it has no COMPLETE trial and no retry WAITING or RUNNING (all its
    trials failed, or were pruned as duplicates): ``{"trial", "setting", "seed", "error",
    "attempts"}`` with the last failed attempt's number and error and the count of failed attempts.
    """
    from optuna.trial import TrialState

    by_key: dict[tuple, list] = {}
    for t in study.get_trials(deepcopy=False):
        k = _grid_point(t)
        if k is not None:
            by_key.setdefault(k, []).append(t)
    rows, failed = [], []
    for key, ts in by_key.items():
        done = [t for t in ts if t.state == TrialState.COMPLETE]
        if done:
            t = min(done, key=lambda t: t.number)
            schedule, s0 = parse_setting(key[0])
            for r in t.user_attrs.get("epochs", []):
                rows.append(
                    {
                        "method": schedule,
                        "s0": s0,
                        "seed": key[1],
                        "trial": t.number,
                        "run_dir": t.user_attrs.get("run_dir"),
                        **r,
                    }
                )
            continue
        fails = [t for t in ts if t.state == TrialState.FAIL]
        if fails and {t.state for t in ts} <= {TrialState.FAIL, TrialState.PRUNED}:
            last = max(fails, key=lambda t: t.number)
            failed.append(
                {
                    "trial": last.number,
                    "setting": key[0],
                    "seed": key[1],
                    "error": last.user_attrs.get("error"),
                    "attempts": len(fails),
                }
            )
    return rows, failed


def aggregate(rows: list[dict], seeds: list[int] | None = None) -> list[dict]:
    """Mean over seeds per (method, s0, epoch) of the validation numbers.

    Every point says whether it is ``complete``: averaged over every seed of ``seeds`` (the
    spec's; ``None``: every seed any epoch of that (method, s0) has). A seed that failed, diverged
    before that epoch or has not finished yet leaves the point incomplete (``missing_seeds``), and
    :func:`select` does not let it compete: its mean would come from fewer, possibly lucky, runs.
    """
    seen: dict[tuple, set] = {}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        seen.setdefault((r["method"], r["s0"]), set()).add(r["seed"])
        groups.setdefault((r["method"], r["s0"], r["epoch"]), []).append(r)
    out = []
    for (m, s0, e), rs in sorted(groups.items(), key=lambda kv: (_method_order(kv[0][0]), kv[0][1], kv[0][2])):
        have = sorted(r["seed"] for r in rs)
        want = set(seeds) if seeds is not None else seen[(m, s0)]
        missing = sorted(want - set(have))
        out.append(
            {
                "method": m,
                "s0": s0,
                "epoch": e,
                "seeds": have,
                "complete": not missing,
                "missing_seeds": missing,
                "val_acc": sum(r["val_acc"] for r in rs) / len(rs),
                "val_spikes": sum(r["val_spikes"] for r in rs) / len(rs),
                "train_spikes": _mean([r.get("train_spikes") for r in rs]),
                "runs": [(r["seed"], r["run_dir"]) for r in rs],
            }
        )
    return out


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _method_order(m: str) -> int:
    return 0 if m == BASELINE else 1 + SCHEDULE_NAMES.index(m) if m in SCHEDULE_NAMES else 99


def select(points: list[dict], tolerance: float = 0.01, eps: float = 1e-9) -> dict:
    """The Table 1 / Table 2 choice per method from aggregated validation points (see module doc).

    Only complete points compete (``complete`` of :func:`aggregate`; a point without the flag
    counts as complete), for the reference as for the tables. Returns ``{"reference_val_acc",
    "tolerance", "excluded": number of incomplete points, "table1": {method: point|None},
    "table2": {...}}``; a method whose points are all incomplete gets ``None``.
    """
    if not any(p["method"] == BASELINE for p in points):
        raise ConfigError("selection needs the CE-only baseline (schedule 'baseline') among the results")
    pool = [p for p in points if p.get("complete", True)]
    base = [p for p in pool if p["method"] == BASELINE]
    if not base:
        missing = sorted({s for p in points if p["method"] == BASELINE for s in p.get("missing_seeds", [])})
        raise ConfigError(
            "selection needs the CE-only baseline averaged over every seed, but no epoch of it has "
            f"seed(s) {missing} (failed, diverged or not finished yet)"
        )
    ref = max(p["val_acc"] for p in base)
    methods = sorted({p["method"] for p in points}, key=_method_order)
    out = {"reference_val_acc": ref, "tolerance": tolerance, "excluded": len(points) - len(pool)}
    for table, floor in (("table1", ref - eps), ("table2", ref - tolerance - eps)):
        chosen = {}
        for m in methods:
            ok = [p for p in pool if p["method"] == m and p["val_acc"] >= floor]
            chosen[m] = min(ok, key=lambda p: (p["val_spikes"], -p["s0"], p["epoch"])) if ok else None
        out[table] = chosen
    return out


def incomplete_points(points: list[dict]) -> list[dict]:
    """The incomplete points of :func:`aggregate`, one entry per (method, s0): its epochs and
    the seeds they lack."""
    out: dict[tuple, dict] = {}
    for p in points:
        if p.get("complete", True):
            continue
        e = out.setdefault(
            (p["method"], p["s0"]), {"method": p["method"], "s0": p["s0"], "epochs": [], "missing": set()}
        )
        e["epochs"].append(p["epoch"])
        e["missing"].update(p.get("missing_seeds", []))
    return [
        {"method": e["method"], "s0": e["s0"], "epochs": e["epochs"], "missing_seeds": sorted(e["missing"])}
        for e in out.values()
    ]


def read_json_cache(path: Path, log=print) -> dict:
    """A JSON cache file (``test_cache.json``) as a dict; a missing or unreadable one (e.g. cut by a
    crash before the writes were atomic) is empty, so its entries are computed again."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log(f"sweep: {path} is unreadable ({type(e).__name__}: {e}); evaluating again")
        return {}
    if not isinstance(d, dict):
        log(f"sweep: {path} does not hold a mapping; evaluating again")
        return {}
    return d


def write_json_atomic(path: Path, obj) -> None:
    """``obj`` as indented JSON, written atomically (a crash leaves the old file or the new one)."""
    from .train import atomic_write_text

    atomic_write_text(Path(path), json.dumps(obj, indent=1, default=str))


# ================================================================ test evaluation of the chosen points
def evaluate_checkpoint(
    spec: SweepSpec, schedule: str, s0: float, seed: int, run_dir: Path, epoch: int, data_dir=None
) -> dict:
    """Test accuracy and metrics of ``run_dir``'s weights after ``epoch``."""
    return evaluate_run(spec, spec.trial_config(schedule, s0, seed), run_dir, epoch, data_dir)


def evaluate_run(spec, cfg: ExperimentConfig, run_dir: Path, epoch: int, data_dir=None) -> dict:
    """Test accuracy, spikes, SynOps and <N_S> per sample of the weights ``cfg`` had after ``epoch``
    (``run_dir/epochs/epoch_NNN.pt``), measured once on the test set."""
    from .train import load_checkpoint

    data = sweep_data(spec, cfg, data_dir)
    tr = _epoch_trainer_cls()(cfg, run_dir, data_dir, data=data, progress=False)
    ck = load_checkpoint(Path(run_dir) / "epochs" / f"epoch_{epoch:03d}.pt")
    tr.model.load_state_dict(ck["model"])
    res = tr.evaluate(data.test, metrics=True)
    m = res["metrics"]
    return {
        "test_acc": res["acc"],
        "test_spikes": m["spike_count"],
        "test_synops": m["synops"],
        "test_ns": m["ns"],
        "test_samples": m["samples"],
    }


def finalize(spec, out: Path, study=None, *, data_dir=None, storage_url: str | None = None, log=print) -> dict:
    """Select on validation, evaluate the selected checkpoints on test, write the report files.

    The grid writes Tables 1 and 2 (:func:`finalize_grid`); a Pareto spec its front
    (:func:`sparsespike.pareto.finalize_pareto`)."""
    out = Path(out)
    if study is None:
        url = storage_url or default_storage(out)
        if url == default_storage(out) and not (out / "study.db").exists():
            raise ConfigError(f"no sweep in {out} (no study.db); run it first, or pass --out/--storage")
        try:
            study = open_study(spec, make_storage(url), create=False)
        except KeyError as e:
            raise ConfigError(f"no study {spec.name!r} in the storage of {out}: {e}") from e
    return spec.finalize(out, study, data_dir=data_dir, log=log)


def finalize_grid(spec: SweepSpec, out: Path, study, *, data_dir=None, log=print) -> dict:
    """The grid's report: Table 1 / Table 2 selection on validation, test of the chosen checkpoints."""
    from . import report

    out = Path(out)
    rows, failed = collect(study)
    if not rows:
        raise ConfigError(f"sweep {spec.name}: no finished trial to report")
    points = aggregate(rows, spec.seeds)
    sel = select(points, spec.tolerance)
    incomplete = incomplete_points(points)
    cache_p = out / "test_cache.json"
    cache = read_json_cache(cache_p, log)
    tables = {}
    for table in ("table1", "table2"):
        tab = []
        for m, p in sel[table].items():
            if p is None:
                tab.append({"method": m, "s0": None, "epochs": None})
                continue
            tests = []
            for seed, run_dir in p["runs"]:
                key = f"{run_dir}|{p['epoch']}"
                if key not in cache:
                    log(f"sweep: testing {m} s0={p['s0']:g} seed={seed} epoch {p['epoch']}")
                    cache[key] = evaluate_checkpoint(spec, m, p["s0"], seed, Path(run_dir), p["epoch"], data_dir)
                    write_json_atomic(cache_p, cache)
                tests.append(cache[key])
            row = {
                "method": m,
                "s0": p["s0"],
                "epochs": p["epoch"],
                "val_acc": p["val_acc"],
                "val_spikes": p["val_spikes"],
                "test_acc": sum(t["test_acc"] for t in tests) / len(tests),
                "test_spikes": sum(t["test_spikes"] for t in tests) / len(tests),
                "test_synops": sum(t["test_synops"] for t in tests) / len(tests),
                "seeds": p["seeds"],
            }
            tab.append(row)
        tables[table] = tab
    report.add_reductions(tables)
    results = {
        "name": spec.name,
        "spec": {k: (str(getattr(spec, k)) if k == "config" else getattr(spec, k)) for k in SweepSpec.KEYS},
        "reference_val_acc": sel["reference_val_acc"],
        "tolerance": spec.tolerance,
        "tables": tables,
        "points": [{k: v for k, v in p.items() if k != "runs"} for p in points],
        "rows": rows,
        "failed": failed,
        "incomplete": incomplete,
        "n_trials": len({(r["method"], r["s0"], r["seed"]) for r in rows}),
    }
    write_json_atomic(out / "sweep_results.json", results)
    files = report.write_report(results, out)
    results["files"] = {k: str(v) for k, v in files.items()}
    log((out / "tables.md").read_text())
    return results


# ================================================================ CLI
def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``sweep`` to the ``sparsespike`` command line (``subparsers`` of :func:`cli.build_parser`)."""
    s = subparsers.add_parser(
        "sweep",
        help="Optuna sweeps: the Allred et al. s0 grid (Tables 1 and 2) or a Pareto search (kind: pareto)",
        description="``sparsespike sweep SPEC.yaml``: the Allred et al. s0 grid (Tables 1 and 2), or with "
        "``kind: pareto`` a multi-objective search for the accuracy / SynOps Pareto front (docs/sweep.md).",
    )
    s.add_argument(
        "spec", help="sweep spec YAML (or a built-in name, e.g. allred_fmnist_sweep, combined_fmnist_pareto)"
    )
    s.add_argument("--out", help="sweep directory (default runs/<name>)")
    s.add_argument("--workers", type=int, default=2, help="local worker processes (0: run in this process)")
    s.add_argument("--storage", help="Optuna RDB URL (default sqlite:///<out>/study.db)")
    s.add_argument("--data-dir")
    s.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1, at least 1)")
    s.add_argument("--heartbeat", type=int, default=20, help="trial heartbeat interval, s (at least 1)")
    s.add_argument(
        "--grace",
        type=int,
        default=120,
        help="a trial with no heartbeat for this long (s, more than --heartbeat) is failed and retried",
    )
    s.add_argument("--max-retry", type=int, default=2, help="retries of a failed or lost trial (0: none)")
    s.add_argument("--worker", action="store_true", help="only run trials (another machine/process joining a sweep)")
    s.add_argument("--worker-id", type=int, default=0, help=argparse.SUPPRESS)
    s.add_argument(
        "--report-only", action="store_true", help="no training: select, test and write the tables (or the front)"
    )
    s.set_defaults(func=cmd_sweep)
    return s


def check_sweep_args(args) -> None:
    """Refuse flag values that would run something else than asked (a :class:`ConfigError` naming
    the flag): ``--workers`` and ``--max-retry`` ``>= 0``, ``--heartbeat`` and ``--threads``
    ``>= 1``, and ``--grace`` longer than ``--heartbeat`` (else live trials are failed as stale)."""
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0 (0: run the trials in this process), got {args.workers}")
    if args.max_retry < 0:
        raise ConfigError(f"--max-retry must be >= 0 (0: no retries), got {args.max_retry}")
    if args.heartbeat < 1:
        raise ConfigError(f"--heartbeat must be >= 1 (seconds), got {args.heartbeat}")
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if args.grace <= args.heartbeat:
        raise ConfigError(
            f"--grace must be longer than --heartbeat ({args.heartbeat} s), got {args.grace}: a running "
            "trial would be failed as stale between two of its heartbeats"
        )


def cmd_sweep(args) -> int:
    """``sparsespike sweep``: run a sweep (``--workers``), join one (``--worker``) or report on
    one (``--report-only``)."""
    check_sweep_args(args)
    spec = load_spec(args.spec)
    out = Path(args.out or Path("runs") / spec.name)
    url = args.storage or default_storage(out)
    import warnings

    import optuna
    import torch

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        out.mkdir(parents=True, exist_ok=True)
        n = worker_loop(
            spec,
            out,
            url,
            data_dir=args.data_dir,
            threads=args.threads,
            worker_id=args.worker_id,
            heartbeat=args.heartbeat,
            grace=args.grace,
            max_retry=args.max_retry,
        )
        print(f"sweep worker {args.worker_id}: ran {n} trial(s); nothing left to run")
        return 0
    if args.report_only:
        finalize(spec, out, data_dir=args.data_dir, storage_url=url)
        return 0
    launch(
        spec,
        out,
        workers=args.workers,
        storage_url=url,
        data_dir=args.data_dir,
        threads=args.threads,
        heartbeat=args.heartbeat,
        grace=args.grace,
        max_retry=args.max_retry,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sparsespike.sweep ...`` is ``sparsespike sweep ...``."""
    from .cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    return cli_main(argv if argv and argv[0] == "sweep" else ["sweep", *argv])


if __name__ == "__main__":
    raise SystemExit(main())
