"""``sparsespike sweep`` with ``kind: pareto``: a multi-objective search, reported as a Pareto front.

Objectives (both on the validation split, ``val_fraction`` of the training set, first
``val_subset`` samples): **validation accuracy (maximise)** and **validation SynOps per sample
(minimise)**, DESIGN.md's definition: every spike times the non-zero synapses it drives, so a
weight pruned by an L0 gate (exactly zero in eval mode) costs nothing.

**Which epoch.** Every trial reports its **last epoch**. A trial is a training recipe (its
schedules, e.g. a spike-count weight rising linearly to ``s0`` at epoch ``N``, and its L0 penalty
act over the whole horizon), and the model it produces is the one after epoch ``N``. Taking the
best-accuracy epoch instead would mix a third, accuracy-only selection into a two-objective search
and systematically pick earlier, denser epochs. Every epoch is still recorded (user attribute
``epochs`` and ``trials/<run>/epochs.jsonl``), and the test evaluation uses the same last-epoch
weights (``trials/<run>/epochs/epoch_NNN.pt``).

Spec (YAML)::

    name: combined_fmnist_pareto
    kind: pareto
    config: fmnist_combined.yaml   # experiment config: a path (relative to this file) or a built-in name
    set: {train.epochs: 3}         # dotted overrides applied to every trial (list indices allowed)
    val_fraction: 0.1
    val_subset: 2000               # validate on the first k held-out samples (null: all)
    seed: 0                        # the training seed of every trial, and the sampler's seed
    trials: 24                     # search trials over all workers (references are extra)
    sampler: nsga2                 # or tpe; or {name: nsga2, population_size: 8} (optuna kwargs)
    space:                         # dotted config keys -> distributions
      model.gates.lam: {log: [1.0e-7, 1.0e-4]}
      train.regularizers.1.s0: {log: [1.0e-6, 1.0e-3]}   # a list index in a dotted key
      model.b_th: {uniform: [0.1, 0.4]}
      # {int: [lo, hi]} (both included) and {choice: [a, b, c]} (scalars) too
    references:                    # fixed single-method runs, trained once each, shown on the plot
      dense_ce: {model.backward: dense, model.gates: null, train.regularizers: []}

A ``space`` key must already be in the experiment config after ``set`` (a scalar; put a missing
one in ``set`` first); ``set`` and ``references`` may add keys, like ``--set``.

Engine: the grid's (:mod:`sparsespike.sweep`): one Optuna study on RDB storage, local or remote
workers, heartbeats, a trial of a dead worker failed and re-queued with its parameters (its retry
resumes from the run's ``last.pt``). References are enqueued as WAITING trials with the user
attribute ``reference`` (so they run first). They are hidden from the sampler
(:func:`search_sampler` shows NSGA-II / TPE only the search trials) and left out of the front.
Each trial's sampler is seeded from ``(seed, trial number)``, so parallel workers never draw the
same random points and a one-worker search is reproducible. ``trials`` counts search *slots*: a
retry belongs to the slot of the trial it retries, and a surplus trial started by a worker racing
for the last slot is pruned at once (user attribute ``surplus``). Raising ``trials`` in the spec
and running again extends a finished search (``trials`` is not part of the spec fingerprint).

Report (``pareto.json``, ``pareto.md``, ``pareto.png``): every trial (parameters, validation
accuracy, SynOps and spikes, on-front flag); the front (Optuna's ``best_trials`` over the search
trials, checked against the pure :func:`pareto_front`) and the references, evaluated once each on
the **test** set (accuracy, SynOps and spikes per sample; cached in ``test_cache.json``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import ExperimentConfig, from_dict, load_config, set_path
from .errors import ConfigError
from .sweep import (
    claim_slot,
    evaluate_run,
    mark_worker,
    read_json_cache,
    resolve_config,
    slot_status,
    train_trial,
    trial_guard,
    write_json_atomic,
)

DIST_KINDS = ("log", "uniform", "int", "choice")
SAMPLERS = ("nsga2", "tpe")
DIRECTIONS = ("maximize", "minimize")
_REF_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


# ================================================================ the front
def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a = (accuracy, cost)`` dominates ``b``: at least as accurate and as cheap, better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices (ascending) of the non-dominated points of ``points = [(accuracy, cost), ...]``.

    Accuracy is maximised and cost (SynOps) minimised; a point is on the front iff no other point
    :func:`dominates` it, so duplicates of a front point are all on the front (as in Optuna's
    ``best_trials``). Points with a non-finite coordinate are never on the front and dominate
    nothing. O(n log n): sort by cost, then keep a running maximum of accuracy.
    """
    idx = [i for i, p in enumerate(points) if math.isfinite(p[0]) and math.isfinite(p[1])]
    idx.sort(key=lambda i: (points[i][1], -points[i][0]))
    front: list[int] = []
    best_cheaper = -math.inf  # best accuracy among strictly cheaper points
    j = 0
    while j < len(idx):
        cost = points[idx[j]][1]
        k = j
        while k < len(idx) and points[idx[k]][1] == cost:
            k += 1
        top = points[idx[j]][0]  # the group is sorted by accuracy, best first
        if top > best_cheaper:
            front += [i for i in idx[j:k] if points[i][0] == top]
        best_cheaper = max(best_cheaper, top)
        j = k
    return sorted(front)


def optuna_front(trials: Sequence) -> list[int]:
    """Numbers of the trials Optuna's ``Study.best_trials`` puts on the front of ``trials`` alone
    (an in-memory copy of just these trials: the sweep's study also holds the references)."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        mem = optuna.create_study(directions=list(DIRECTIONS))
        for t in trials:
            mem.add_trial(
                optuna.trial.create_trial(
                    values=list(t.values),
                    params=t.params,
                    distributions=t.distributions,
                    user_attrs={"number": t.number},
                )
            )
        return sorted(t.user_attrs["number"] for t in mem.best_trials)
    finally:
        optuna.logging.set_verbosity(level)


# ================================================================ search space
@dataclass(frozen=True)
class Dist:
    """One searched config key: ``log``/``uniform`` ``[lo, hi]`` floats, ``int`` ``[lo, hi]``
    (both included) or ``choice`` among scalars."""

    kind: str
    values: tuple

    def suggest(self, trial, name: str):
        if self.kind == "log":
            return trial.suggest_float(name, self.values[0], self.values[1], log=True)
        if self.kind == "uniform":
            return trial.suggest_float(name, self.values[0], self.values[1])
        if self.kind == "int":
            return trial.suggest_int(name, self.values[0], self.values[1])
        return trial.suggest_categorical(name, list(self.values))

    def example(self):
        """A value inside the distribution (used to check the spec builds a valid config)."""
        if self.kind == "log":
            return math.sqrt(self.values[0] * self.values[1])
        if self.kind == "uniform":
            return 0.5 * (self.values[0] + self.values[1])
        if self.kind == "int":
            return (self.values[0] + self.values[1]) // 2
        return self.values[0]

    def extremes(self) -> tuple:
        """The values a spec is checked with: every ``choice``, both ends of a range (a config
        check is a bound or a type, so a range whose ends build valid configs is valid inside)."""
        return tuple(self.values)

    def as_spec(self) -> dict:
        return {self.kind: list(self.values)}


def _number(x, where: str) -> float:
    if isinstance(x, bool):
        raise ConfigError(f"{where}: {x!r} is not a number")
    if isinstance(x, str):  # PyYAML reads 1e-7 (no dot) as a string
        try:
            return float(x)
        except ValueError:
            raise ConfigError(f"{where}: {x!r} is not a number") from None
    if not isinstance(x, (int, float)):
        raise ConfigError(f"{where}: {x!r} is not a number")
    return float(x)


def parse_dist(key: str, raw) -> Dist:
    """A :class:`Dist` from its YAML form (``{log: [lo, hi]}`` etc.), with errors naming ``key``."""
    where = f"pareto spec: space[{key!r}]"
    forms = "{log: [lo, hi]}, {uniform: [lo, hi]}, {int: [lo, hi]} or {choice: [a, b, ...]}"
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ConfigError(f"{where}: a distribution is one of {forms}; got {raw!r}")
    ((kind, vals),) = raw.items()
    if kind not in DIST_KINDS:
        raise ConfigError(f"{where}: unknown distribution {kind!r}; use {', '.join(DIST_KINDS)}")
    if not isinstance(vals, (list, tuple)):
        raise ConfigError(f"{where}: {kind} takes a list, got {vals!r}")
    if kind == "choice":
        if not vals:
            raise ConfigError(f"{where}: choice needs at least one value")
        for v in vals:
            if v is not None and not isinstance(v, (bool, int, float, str)):
                raise ConfigError(
                    f"{where}: choice values must be scalars (null, bool, number, string), got {v!r}; "
                    "use references or separate specs for structured alternatives"
                )
        if len({json.dumps(v) for v in vals}) != len(vals):
            raise ConfigError(f"{where}: choice values repeat: {list(vals)}")
        return Dist(kind, tuple(vals))
    if len(vals) != 2:
        raise ConfigError(f"{where}: {kind} takes [lo, hi], got {list(vals)}")
    lo, hi = (_number(v, where) for v in vals)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(f"{where}: {kind} needs finite bounds, got [{lo:g}, {hi:g}]")
    if not lo < hi:
        raise ConfigError(f"{where}: {kind} needs lo < hi, got [{lo:g}, {hi:g}]")
    if kind == "log" and lo <= 0:
        raise ConfigError(f"{where}: log needs lo > 0, got {lo:g}")
    if kind == "int":
        if lo != int(lo) or hi != int(hi):
            raise ConfigError(f"{where}: int bounds must be integers, got [{lo:g}, {hi:g}]")
        return Dist(kind, (int(lo), int(hi)))
    return Dist(kind, (lo, hi))


def get_path(d: dict, key: str, where: str):
    """The value at dotted ``key`` of ``d`` (the same rules and errors as :func:`set_path`)."""
    probe = copy.deepcopy(d)
    set_path(probe, key, _Probe, create=False, where=where)  # validates the path
    cur = d
    for part in str(key).split("."):
        cur = cur[int(part)] if isinstance(cur, list) else cur[part]
    return cur


class _Probe:
    """Placeholder value for :func:`get_path`."""


def is_reference(trial) -> bool:
    return trial.user_attrs.get("reference") is not None


def _is_surplus(trial) -> bool:
    return bool(trial.user_attrs.get("surplus"))


def _is_duplicate(trial) -> bool:
    """A retry pruned because another trial held its slot (:func:`~sparsespike.sweep.claim_slot`)."""
    return trial.user_attrs.get("duplicate_of") is not None


# ================================================================ the spec
@dataclass
class ParetoSpec:
    """A ``kind: pareto`` sweep (see the module docstring). Answers what :mod:`sparsespike.sweep`'s
    engine asks of a spec: sampler, trial keys and status, objective, report."""

    name: str
    config: Path
    space: dict[str, Dist]
    trials: int
    set: dict = field(default_factory=dict)
    val_fraction: float = 0.1
    val_subset: int | None = None
    seed: int = 0
    sampler: str = "nsga2"
    sampler_options: dict = field(default_factory=dict)
    references: dict[str, dict] = field(default_factory=dict)
    source: Path | None = None
    _base: dict | None = field(default=None, repr=False, compare=False)

    kind = "pareto"
    metric_names = ("val_acc", "val_synops")
    KEYS = (
        "name",
        "kind",
        "config",
        "set",
        "val_fraction",
        "val_subset",
        "seed",
        "trials",
        "sampler",
        "space",
        "references",
    )

    # -- loading
    @classmethod
    def load(cls, path: str | Path) -> ParetoSpec:
        from .sweep import read_spec_yaml

        raw, p = read_spec_yaml(path)
        return cls.from_dict(raw, p)

    @classmethod
    def from_dict(cls, raw: dict, source: Path | None = None) -> ParetoSpec:
        raw = dict(raw)
        if raw.get("kind", "pareto") != "pareto":
            raise ConfigError(f"pareto spec: kind is {raw.get('kind')!r}, expected 'pareto'")
        unknown = sorted(set(raw) - set(cls.KEYS))
        if unknown:
            raise ConfigError(f"pareto spec: unknown keys {unknown}; valid keys: {', '.join(cls.KEYS)}")
        for k in ("name", "config", "space", "trials"):
            if k not in raw:
                raise ConfigError(f"pareto spec: missing key {k!r}")
        trials = raw["trials"]
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise ConfigError(f"pareto spec: trials must be an integer >= 1, got {trials!r}")
        space_raw = raw["space"]
        if not isinstance(space_raw, dict) or not space_raw:
            raise ConfigError("pareto spec: space must map at least one dotted config key to a distribution")
        space = {str(k): parse_dist(str(k), v) for k, v in space_raw.items()}
        sampler, options = _parse_sampler(raw.get("sampler", "nsga2"))
        refs_raw = raw.get("references") or {}
        if not isinstance(refs_raw, dict):
            raise ConfigError("pareto spec: references must map names to {dotted key: value} overrides")
        refs: dict[str, dict] = {}
        for rname, ov in refs_raw.items():
            if not _REF_NAME.match(str(rname)):
                raise ConfigError(f"pareto spec: reference name {rname!r} may use letters, digits, '_', '-', '.' only")
            if not isinstance(ov, dict):
                raise ConfigError(f"pareto spec: references[{rname!r}] must be a mapping of dotted keys to values")
            refs[str(rname)] = dict(ov)
        vf = _number(raw.get("val_fraction", 0.1), "pareto spec: val_fraction")
        if not 0 < vf < 1:
            raise ConfigError(f"pareto spec: val_fraction must be in (0, 1), got {vf}")
        vs = raw.get("val_subset")
        if vs is not None and (isinstance(vs, bool) or not isinstance(vs, int) or vs < 1):
            raise ConfigError(f"pareto spec: val_subset must be null or an integer >= 1, got {vs!r}")
        seed = raw.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"pareto spec: seed must be an integer, got {seed!r}")
        set_ = raw.get("set") or {}
        if not isinstance(set_, dict):
            raise ConfigError("pareto spec: set must map dotted config keys to values")
        spec = cls(
            name=str(raw["name"]),
            config=resolve_config(raw["config"], source),
            space=space,
            trials=trials,
            set=dict(set_),
            val_fraction=vf,
            val_subset=vs,
            seed=seed,
            sampler=sampler,
            sampler_options=options,
            references=refs,
            source=source,
        )
        spec.validate()
        return spec

    def validate(self) -> None:
        """Check the spec against its experiment config: every space key exists (a scalar); the
        trial config builds with every ``choice`` value and both ends of every range (the other
        keys at a middle value), so a value that would fail only when sampled fails here; every
        reference config builds; and the sampler accepts its options."""
        base = self.base_dict()
        for key in self.space:
            cur = get_path(base, key, "pareto spec: space")
            if cur is not None and not isinstance(cur, (bool, int, float, str)):
                raise ConfigError(
                    f"pareto spec: space key {key!r} holds {type(cur).__name__} {cur!r} in the experiment config; "
                    "search over a scalar entry inside it"
                )
        middle = {k: d.example() for k, d in self.space.items()}
        try:
            self.trial_config(middle)
        except ConfigError as e:
            raise ConfigError(f"pareto spec: a trial of the space ({_fmt_params(middle)}) is not valid: {e}") from e
        for key, d in self.space.items():
            for v in d.extremes():
                try:
                    self.trial_config({**middle, key: v})
                except ConfigError as e:
                    raise ConfigError(f"pareto spec: space[{key!r}] = {d.as_spec()} allows {v!r}: {e}") from e
        for rname in self.references:
            self.trial_config(reference=rname)
        try:
            self._make_base_sampler(0)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"pareto spec: sampler {self.sampler!r} with options {self.sampler_options}: {e}") from e

    def as_dict(self) -> dict:
        sampler = {"name": self.sampler, **self.sampler_options} if self.sampler_options else self.sampler
        return {
            "name": self.name,
            "kind": "pareto",
            "config": str(Path(self.config).resolve()),
            "set": self.set,
            "val_fraction": self.val_fraction,
            "val_subset": self.val_subset,
            "seed": self.seed,
            "trials": self.trials,
            "sampler": sampler,
            "space": {k: d.as_spec() for k, d in self.space.items()},
            "references": self.references,
        }

    def write(self, path: Path) -> Path:
        """A self-contained copy (absolute config path): what worker processes load."""
        Path(path).write_text(yaml.safe_dump(self.as_dict(), sort_keys=False))
        return Path(path)

    def fingerprint(self) -> str:
        """Hash of everything that defines the search except ``trials`` (so a search can be extended)
        and the config's path and notes (the experiment itself is included)."""
        d = self.as_dict()
        d.pop("trials")
        cfg = load_config(self.config).to_dict()
        cfg.pop("notes", None)
        d["config"] = cfg
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    # -- configs
    def base_dict(self) -> dict:
        """The experiment config (every field) with ``set`` applied, as a dict."""
        if self._base is None:
            d = load_config(self.config).to_dict()
            for k, v in self.set.items():
                set_path(d, k, copy.deepcopy(v), create=True, where="pareto spec: set")
            self._base = d
        return copy.deepcopy(self._base)

    def trial_config(
        self, params: dict | None = None, reference: str | None = None, tag: str | None = None
    ) -> ExperimentConfig:
        """The experiment config of a search trial (``params``: dotted key -> value) or of a reference."""
        d = self.base_dict()
        if reference is not None:
            if reference not in self.references:
                raise ConfigError(f"pareto spec: no reference {reference!r}; have {sorted(self.references)}")
            for k, v in self.references[reference].items():
                set_path(d, k, copy.deepcopy(v), create=True, where=f"pareto spec: references[{reference!r}]")
        else:
            for k, v in (params or {}).items():
                set_path(d, k, v, create=False, where="pareto spec: space")
        d["seed"] = int(self.seed)
        d["data"]["val_fraction"] = float(self.val_fraction)
        cfg = from_dict(ExperimentConfig, d)
        if cfg.train.phases:
            raise ConfigError("pareto spec: the experiment config must have a single phase (no train.phases)")
        if tag:
            cfg.name = f"{cfg.name}_{tag}"
        return cfg

    # -- sampler
    def _make_base_sampler(self, seed: int):
        import warnings

        from .optional import require

        optuna = require("optuna", "sparsespike sweep", extra="sweep")
        opts = dict(self.sampler_options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if self.sampler == "nsga2":
                opts.setdefault("population_size", max(2, min(50, math.ceil(self.trials / 4))))
                return optuna.samplers.NSGAIISampler(seed=seed, **opts)
            opts.setdefault("n_startup_trials", max(2, min(10, self.trials // 3)))
            opts.setdefault("multivariate", True)
            opts.setdefault("constant_liar", True)  # parallel workers: running trials count as bad
            return optuna.samplers.TPESampler(seed=seed, **opts)

    def make_sampler(self):
        return search_sampler(self._make_base_sampler, self.seed)

    def study_attrs(self) -> dict:
        return {
            "kind": "pareto",
            "space": {k: d.as_spec() for k, d in self.space.items()},
            "references": sorted(self.references),
        }

    def describe(self) -> str:
        return f"{self.trials} search trials ({self.sampler}) + {len(self.references)} reference run(s)"

    # -- slots: what the engine counts, retries and reports
    def trial_key(self, trial) -> tuple:
        """``("ref", name)`` for a reference; ``("search", n)`` for a search trial, ``n`` the number of
        the first trial of its retry chain."""
        if is_reference(trial):
            return ("ref", trial.user_attrs["reference"])
        hist = trial.system_attrs.get("retry_history") or []
        return ("search", int(hist[0]) if hist else trial.number)

    def search_slots(self, trials) -> list[int]:
        """The first ``self.trials`` fresh (not retry, not reference, not surplus) search trials."""
        fresh = sorted(
            t.number
            for t in trials
            if not is_reference(t) and not t.system_attrs.get("retry_history") and not _is_surplus(t)
        )
        return fresh[: self.trials]

    def status(self, study) -> dict:
        """Counts of slots (search budget + references) by state: done, running, waiting,
        unstarted, failed (retries used up); ``waiting`` counts WAITING trials."""
        trials = study.get_trials(deepcopy=False)
        slots = set(self.search_slots(trials))
        keys = {("search", n) for n in slots} | {("ref", r) for r in self.references}
        st = slot_status(trials, keys, self.trial_key)
        st["unstarted"] += self.trials - len(slots)  # budget no trial has claimed yet
        st["total"] = self.trials + len(self.references)
        return st

    def prepare(self, study, log=print) -> None:
        """Enqueue every reference run that is not in the study yet (WAITING: they run first)."""
        have = {t.user_attrs.get("reference") for t in study.get_trials(deepcopy=False)}
        for rname in self.references:
            if rname not in have:
                study.enqueue_trial({}, user_attrs={"reference": rname, "role": "reference"})
                log(f"sweep: reference {rname!r} enqueued")

    def objective(self, out: Path, data_dir, threads: int | None, log=print):
        return ParetoObjective(self, out, data_dir, threads, log)

    def finalize(self, out: Path, study, *, data_dir=None, log=print) -> dict:
        return finalize_pareto(self, out, study, data_dir=data_dir, log=log)


def _parse_sampler(raw) -> tuple[str, dict]:
    if isinstance(raw, dict):
        raw = dict(raw)
        name = raw.pop("name", None)
        options = raw
    else:
        name, options = raw, {}
    if name not in SAMPLERS:
        raise ConfigError(f"pareto spec: unknown sampler {name!r}; use {' or '.join(SAMPLERS)}")
    if "seed" in options:
        raise ConfigError("pareto spec: the sampler's seed is the spec's `seed`; remove sampler.seed")
    return str(name), options


def run_dir_name(key: tuple) -> str:
    """``trials/<this>``: ``t0007`` for the search slot of trial 7, ``ref_<name>`` for a reference."""
    return f"ref_{key[1]}" if key[0] == "ref" else f"t{int(key[1]):04d}"


# ================================================================ sampler: search trials only
def _trial_seed(seed: int, number: int) -> int:
    return (int(seed) * 1_000_003 + int(number) * 7919 + 17) % (2**31 - 1)


class SearchView:
    """A study seen by the sampler: the same study, without reference, surplus and duplicate trials."""

    def __init__(self, study) -> None:
        self._study = study

    def __getattr__(self, name):
        return getattr(self._study, name)

    @staticmethod
    def _keep(trials):
        return [t for t in trials if not is_reference(t) and not _is_surplus(t) and not _is_duplicate(t)]

    def get_trials(self, deepcopy: bool = True, states=None):
        return self._keep(self._study.get_trials(deepcopy=deepcopy, states=states))

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False):
        return self._keep(self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache))

    @property
    def trials(self):
        return self.get_trials()


def _search_sampler_cls():
    import optuna

    class _SearchSampler(optuna.samplers.BaseSampler):
        """Wraps NSGA-II / TPE: reference trials are invisible to it and sample nothing, and every
        trial gets a fresh base sampler seeded from ``(seed, trial number)``: deterministic given
        the study's history, and distinct across parallel workers (one shared seed would make
        every worker draw the same first points)."""

        def __init__(self, factory: Callable[[int], object], seed: int) -> None:
            self._factory = factory
            self._seed = int(seed)
            self._cur: tuple[int, object] | None = None

        def _base(self, trial):
            if self._cur is None or self._cur[0] != trial.number:
                self._cur = (trial.number, self._factory(_trial_seed(self._seed, trial.number)))
            return self._cur[1]

        def infer_relative_search_space(self, study, trial):
            if is_reference(trial):
                return {}
            return self._base(trial).infer_relative_search_space(SearchView(study), trial)

        def sample_relative(self, study, trial, search_space):
            if is_reference(trial) or not search_space:
                return {}
            return self._base(trial).sample_relative(SearchView(study), trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._base(trial).sample_independent(SearchView(study), trial, param_name, param_distribution)

        def before_trial(self, study, trial) -> None:
            if not is_reference(trial):
                self._base(trial).before_trial(SearchView(study), trial)

        def after_trial(self, study, trial, state, values) -> None:
            if not is_reference(trial) and not _is_surplus(trial) and not _is_duplicate(trial):
                self._base(trial).after_trial(SearchView(study), trial, state, values)

    return _SearchSampler


def search_sampler(factory: Callable[[int], object], seed: int):
    """The study's sampler for a Pareto sweep: a ``_SearchSampler`` around ``factory(seed) ->`` an
    Optuna sampler (the class is defined on first use, so importing this module needs no optuna)."""
    return _search_sampler_cls()(factory, seed)


# ================================================================ objective
class ParetoObjective:
    """One trial: a reference run or a sampled point; returns last-epoch (val acc, val SynOps)."""

    def __init__(self, spec: ParetoSpec, out: Path, data_dir, threads: int | None, log=print) -> None:
        self.spec, self.out, self.data_dir, self.threads, self.log = spec, Path(out), data_dir, threads, log

    def __call__(self, trial):
        import optuna

        mark_worker(trial)
        frozen = trial.study._storage.get_trial(trial._trial_id)
        key = self.spec.trial_key(frozen)
        # a slot another trial already holds: two retries queued for it by processes reconciling
        # at once, or a reference enqueued twice
        claim_slot(trial, self.spec.trial_key, key)
        if key[0] == "ref":
            reference, params = key[1], {}
            trial.set_user_attr("role", "reference")
        else:
            if key[1] not in self.spec.search_slots(trial.study.get_trials(deepcopy=False)):
                trial.set_user_attr("surplus", True)
                raise optuna.TrialPruned(f"the search budget of {self.spec.trials} trials is used up")
            reference = None
            params = {k: d.suggest(trial, k) for k, d in self.spec.space.items()}
            trial.set_user_attr("role", "search")
        name = run_dir_name(key)
        run_dir = self.out / "trials" / name
        run_dir.mkdir(parents=True, exist_ok=True)
        trial.set_user_attr("slot", name)
        trial.set_user_attr("run_dir", str(run_dir))
        if self.threads:
            import torch

            torch.set_num_threads(int(self.threads))
        from .train import atomic_write_text

        with trial_guard(trial, run_dir):
            claim_slot(trial, self.spec.trial_key, key, running=False)  # one finished while we waited
            cfg = self.spec.trial_config(params, reference, tag=name)
            # resume only a run of the same point (a retry keeps its parameters; this guards a
            # run directory left by something else); written atomically: a cut file would make
            # the retry start over
            ident = json.dumps({"params": params, "reference": reference}, sort_keys=True)
            ident_p = run_dir / "trial.json"
            same = ident_p.exists() and ident_p.read_text() == ident
            atomic_write_text(ident_p, ident)
            label = f"reference {reference}" if reference else _fmt_params(params)
            recs = train_trial(
                trial, self.spec, cfg, run_dir, self.data_dir, self.threads, label, self.log, allow_resume=same
            )
        last = recs[-1]
        return last["val_acc"], last["val_synops"]


def _fmt_params(params: dict) -> str:
    return " ".join(f"{k}={_fmt_val(v)}" for k, v in params.items())


def _fmt_val(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ================================================================ report
def collect_points(spec: ParetoSpec, study) -> tuple[list[dict], list[dict]]:
    """``(points, failed)``: one point per finished slot (its first COMPLETE trial), failed slots."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    slots = set(spec.search_slots(trials))
    first: dict[tuple, object] = {}
    by_key: dict[tuple, list] = {}
    for t in trials:
        k = spec.trial_key(t)
        if k[0] == "search" and k[1] not in slots:
            continue
        if k[0] == "ref" and k[1] not in spec.references:
            continue
        by_key.setdefault(k, []).append(t)
        if t.state == TrialState.COMPLETE and (k not in first or t.number < first[k].number):
            first[k] = t
    points = []
    for k, t in sorted(first.items(), key=lambda kv: (kv[0][0] != "ref", kv[0][1])):  # refs, then slots
        recs = t.user_attrs.get("epochs") or []
        last = recs[-1] if recs else {}
        points.append(
            {
                "trial": t.number,
                "slot": run_dir_name(k),
                "role": "reference" if k[0] == "ref" else "search",
                "reference": k[1] if k[0] == "ref" else None,
                "params": dict(t.params),
                "epoch": last.get("epoch"),
                "val_acc": t.values[0],
                "val_synops": t.values[1],
                "val_spikes": last.get("val_spikes"),
                "diverged": t.user_attrs.get("diverged"),
                "run_dir": t.user_attrs.get("run_dir"),
                "_frozen": t,
            }
        )
    failed = []
    for k, ts in by_key.items():
        if k in first:
            continue
        states = {t.state for t in ts}
        if states <= {TrialState.FAIL, TrialState.PRUNED} and TrialState.FAIL in states:
            last = max(ts, key=lambda t: t.number)
            failed.append({"slot": run_dir_name(k), "trial": last.number, "error": last.user_attrs.get("error")})
    return points, failed


def finalize_pareto(spec: ParetoSpec, out: Path, study, *, data_dir=None, log=print) -> dict:
    """The front of the search trials, its test evaluation (and the references'), and the report."""
    out = Path(out)
    points, failed = collect_points(spec, study)
    if not points:
        raise ConfigError(f"sweep {spec.name}: no finished trial to report")
    search = [p for p in points if p["role"] == "search"]
    refs = [p for p in points if p["role"] == "reference"]
    on_front = set(pareto_front([(p["val_acc"], p["val_synops"]) for p in search]))
    mine = sorted(search[i]["trial"] for i in on_front)
    theirs = optuna_front([p["_frozen"] for p in search]) if search else []
    if mine != theirs:
        log(f"sweep: warning: Optuna's best_trials {theirs} differ from pareto_front {mine}; using pareto_front")
    for i, p in enumerate(search):
        p["on_front"] = i in on_front
    front_pts = [(p["val_acc"], p["val_synops"]) for p in search if p["on_front"]]
    for r in refs:
        r["on_front"] = None
        r["dominated_by_front"] = any(dominates(f, (r["val_acc"], r["val_synops"])) for f in front_pts)
    front = sorted((p for p in search if p["on_front"]), key=lambda p: (p["val_synops"], -p["val_acc"]))
    # test set, once per (run, epoch)
    cache_p = out / "test_cache.json"
    cache = read_json_cache(cache_p, log)
    for p in front + refs:
        if not p["run_dir"] or p["epoch"] is None:
            continue
        key = f"{p['run_dir']}|{p['epoch']}"
        if key not in cache:
            log(f"sweep: testing {p['slot']} (epoch {p['epoch']})")
            cfg = spec.trial_config(p["params"] if p["role"] == "search" else None, p["reference"])
            cache[key] = evaluate_run(spec, cfg, Path(p["run_dir"]), int(p["epoch"]), data_dir)
            write_json_atomic(cache_p, cache)
        p.update(cache[key])
    for p in points:
        p.pop("_frozen", None)
    results = {
        "name": spec.name,
        "kind": "pareto",
        "spec": spec.as_dict(),
        "objectives": {
            "val_acc": "maximize: validation accuracy after the last epoch",
            "val_synops": "minimize: validation SynOps per sample after the last epoch",
        },
        "status": spec.status(study),
        "points": points,
        "front": [p["trial"] for p in front],
        "front_check": {"pareto_front": mine, "optuna_best_trials": theirs, "agree": mine == theirs},
        "failed": failed,
    }
    files = write_pareto_report(results, out)
    results["files"] = {k: str(v) for k, v in files.items()}
    log(files["markdown"].read_text())
    return results


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def _num(x) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def _num1(x) -> str:
    return "—" if x is None else f"{x:,.1f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [_row(head), "|" + "---|" * len(head), *(_row(r) for r in rows)]


def pareto_markdown(results: dict) -> str:
    """``pareto.md``: every trial, then the front and the references on the test set."""
    pts = results["points"]
    keys = list((results.get("spec") or {}).get("space") or {})
    for p in pts:
        keys += [k for k in p.get("params", {}) if k not in keys]
    pcols = [f"`{k}`" for k in keys]

    def pvals(p) -> list[str]:
        return [_fmt_val(p["params"][k]) if k in p.get("params", {}) else "—" for k in keys]

    st = results.get("status") or {}
    lines = [
        f"# {results['name']}: Pareto search",
        "",
        "Objectives on the validation split, after each run's last epoch: accuracy (max) and SynOps "
        "per sample (min). The front is over the search trials; references are fixed single-method runs.",
        "",
    ]
    if st:
        lines += [
            f"Slots: {st.get('done', 0)} done of {st.get('total', 0)} ({st.get('running', 0)} running, "
            f"{st.get('unstarted', 0)} not started, {st.get('failed', 0)} failed).",
            "",
        ]
    chk = results.get("front_check") or {}
    if chk and not chk.get("agree", True):
        ob, pf = chk["optuna_best_trials"], chk["pareto_front"]
        lines += [f"**Warning**: Optuna's best_trials {ob} != pareto_front {pf}.", ""]
    rows = []
    for p in sorted(pts, key=lambda p: (p["role"] != "reference", p["val_synops"])):
        if p["role"] == "reference":
            flag = "reference" + (" (dominated)" if p.get("dominated_by_front") else "")
        else:
            flag = "**yes**" if p.get("on_front") else ""
        rows.append(
            [str(p["trial"]), p["slot"], *pvals(p), str(p.get("epoch") or "—"), _pct(p["val_acc"])]
            + [_num(p["val_synops"]), _num1(p.get("val_spikes")), flag]
        )
    head = ["trial", "run", *pcols, "epoch", "val acc", "val SynOps", "val spikes", "front"]
    lines += ["## All trials (validation)", "", *_table(head, rows)]
    by_trial = {p["trial"]: p for p in pts}
    rows = []
    for n in results.get("front", []):
        p = by_trial[n]
        rows.append(
            [str(n), *pvals(p), _pct(p["val_acc"]), _num(p["val_synops"]), _pct(p.get("test_acc"))]
            + [_num(p.get("test_synops")), _num1(p.get("test_spikes"))]
        )
    head = ["trial", *pcols, "val acc", "val SynOps", "test acc", "test SynOps", "test spikes/sample"]
    lines += ["", "## Pareto front on the test set", "", *_table(head, rows)]
    refs = [p for p in pts if p["role"] == "reference"]
    if refs:
        overrides = ((results.get("spec") or {}).get("references")) or {}
        rows = []
        for p in refs:
            ov = ", ".join(f"{k}: {json.dumps(v)}" for k, v in (overrides.get(p["reference"]) or {}).items())
            rows.append(
                [p["reference"], f"`{ov}`" if ov else "—", _pct(p["val_acc"]), _num(p["val_synops"])]
                + [_pct(p.get("test_acc")), _num(p.get("test_synops")), _num1(p.get("test_spikes"))]
                + ["yes" if p.get("dominated_by_front") else "no"]
            )
        head = ["reference", "overrides", "val acc", "val SynOps", "test acc", "test SynOps", "test spikes/sample"]
        lines += ["", "## References on the test set", "", *_table([*head, "dominated by the front (val)"], rows)]
    if results.get("failed"):
        lines += ["", "## Failed slots (retries used up)", ""]
        for f in results["failed"]:
            lines.append(f"- `{f['slot']}` (last trial {f['trial']}): {f.get('error') or 'no error recorded'}")
    return "\n".join(lines) + "\n"


def plot_pareto(results: dict, path: Path) -> Path:
    """``pareto.png``: validation accuracy vs SynOps per sample (log x); trials grey, the front as a
    step line with highlighted points, every reference a distinct labelled marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = results["points"]
    pos = [p["val_synops"] for p in pts if p["val_synops"] and p["val_synops"] > 0]
    floor = min(pos) / 2 if pos else 1.0

    def x(p):
        return p["val_synops"] if p["val_synops"] and p["val_synops"] > 0 else floor

    search = [p for p in pts if p["role"] == "search"]
    front = sorted((p for p in search if p.get("on_front")), key=lambda p: (x(p), -p["val_acc"]))
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.scatter([x(p) for p in search], [100 * p["val_acc"] for p in search], s=18, c="0.65", label="trials", zorder=2)
    if front:
        fx, fy = [x(p) for p in front], [100 * p["val_acc"] for p in front]
        ax.step(fx, fy, where="post", color="C3", lw=1.6, zorder=3)
        ax.scatter(fx, fy, s=46, c="C3", edgecolors="k", linewidths=0.6, label="Pareto front", zorder=4)
    markers = ["*", "D", "s", "^", "P", "X", "v", "p", "h", "<", ">"]
    colours = ["C0", "C1", "C2", "C4", "C5", "C6", "C8", "C9"]
    for i, p in enumerate(p for p in pts if p["role"] == "reference"):
        ax.scatter(
            [x(p)],
            [100 * p["val_acc"]],
            marker=markers[i % len(markers)],
            s=130 if markers[i % len(markers)] == "*" else 70,
            c=colours[i % len(colours)],
            edgecolors="k",
            linewidths=0.6,
            label=f"reference: {p['reference']}",
            zorder=5,
        )
        ax.annotate(p["reference"], (x(p), 100 * p["val_acc"]), textcoords="offset points", xytext=(6, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("SynOps per sample (validation, log scale)")
    ax.set_ylabel("accuracy % (validation)")
    ax.set_title(f"{results['name']}: accuracy vs SynOps")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def write_pareto_report(results: dict, out: Path) -> dict[str, Path]:
    """Write ``pareto.json``, ``pareto.md`` and ``pareto.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "pareto.json", "markdown": out / "pareto.md", "plot": out / "pareto.png"}
    write_json_atomic(files["json"], results)
    files["markdown"].write_text(pareto_markdown(results))
    with contextlib.suppress(Exception):
        files["plot"].unlink()
    plot_pareto(results, files["plot"])
    return files
