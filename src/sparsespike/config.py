"""Experiment configuration: YAML mapped onto dataclasses, unknown keys rejected by name."""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass
class DataConfig:
    """Which dataset, how it is encoded into spikes, and how it is split and batched."""

    dataset: str = "yinyang"
    encoding: dict = field(default_factory=lambda: {"name": "latency", "T": 30})
    val_fraction: float = field(default=0.1, metadata={"min": 0.0, "below": 1.0})
    train_subset: int | None = field(default=None, metadata={"min": 1})
    test_subset: int | None = field(default=None, metadata={"min": 1})
    batch_size: int = field(default=64, metadata={"min": 1})
    eval_batch_size: int = field(default=512, metadata={"min": 1})
    augment: dict | None = None


@dataclass
class ModelConfig:
    """A feed-forward spiking network as a list of layer specs (see :mod:`sparsespike.models`)."""

    layers: list = field(default_factory=list)
    neuron: dict = field(default_factory=dict)
    backward: str = field(default="dense", metadata={"choices": ("dense", "sparse")})
    b_th: float = field(default=0.2, metadata={"min": 0.0})
    weight_scale: float | None = None
    gates: dict | None = None  # hard-concrete L0 gates: {lam: ..., ...} (connectivity sparsity)


@dataclass
class PhaseConfig:
    """One training phase: its own epochs, learning rate, loss and regularizers.

    ``gates``: ``"learn"`` (default) trains the L0 gates with the noisy hard-concrete samples;
    ``"freeze"`` fixes them at their deterministic test-time values (exact zeros kept) and
    trains only the weights, without the L0 penalty -- a fine-tuning phase after pruning
    (``sparsity.connectivity.freeze_gates``).
    """

    name: str = "main"
    epochs: int = field(default=10, metadata={"min": 1})
    lr: float | None = None
    loss: str | None = None
    regularizers: list | None = None
    lr_schedule: dict | None = None
    gates: str = "learn"


@dataclass
class TrainConfig:
    epochs: int = field(default=10, metadata={"min": 1})
    optimizer: dict = field(default_factory=lambda: {"name": "adam", "lr": 1e-3})
    lr_schedule: dict | None = None
    loss: str = "ce"
    regularizers: list = field(default_factory=list)
    phases: list | None = None
    grad_clip: float | None = field(default=None, metadata={"min": 0.0})
    ema: float | None = None  # decay of an average of the weights used for validation and test (ema.py)
    select_best: bool = True  # test the best-validation epoch (of the last phase) rather than the last
    num_threads: int | None = field(default=None, metadata={"min": 1})
    measure_every: int = field(
        default=0, metadata={"min": 0}
    )  # >0: record per-layer activity % every N batches (Fig. 3A)
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...


@dataclass
class ExperimentConfig:
    engine: str = "time-stepped"
    name: str = "experiment"
    seed: int = field(default=0, metadata={"min": 0, "below": 2**32})  # numpy's seed range
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    notes: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def phases(self) -> list[PhaseConfig]:
        """The training phases (one phase from ``train`` when none are listed)."""
        if not self.train.phases:
            return [PhaseConfig(name="main", epochs=self.train.epochs)]
        return [from_dict(PhaseConfig, p, "train.phases[]") for p in self.train.phases]


def config_float(value, where: str, *, strict: bool = False) -> float:
    """``value`` as a finite float ``>= 0`` (``> 0`` when ``strict``), else a :class:`ConfigError`
    naming ``where``. Strings are parsed, since PyYAML reads ``1e-6`` (no dot) as a string;
    booleans, NaN and infinities are refused."""
    try:
        if isinstance(value, bool):
            raise TypeError
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if not ((x > 0 if strict else x >= 0) and math.isfinite(x)):
        raise ConfigError(f"{where} must be a finite number {'>' if strict else '>='} 0, got {value!r}")
    return x


_SCALARS = (bool, int, float, str, dict, list)


def check_value(value, hint, where: str, *, min=None, below=None, choices=None):  # noqa: A002
    """``value`` checked against a type hint (``int``, ``float``, ``str``, ``bool``, ``dict``,
    ``list``, optionally ``| None``) and limits (``min``, ``below``, ``choices``; a dataclass
    field's ``metadata``); returns it (a float given as a string, as PyYAML reads ``1e-6``,
    parsed). Raises :class:`ConfigError` naming ``where``."""
    args = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    kinds = [a for a in args if a in _SCALARS]
    if value is None:
        if type(None) in args or not kinds:
            return value
        raise ConfigError(f"{where} must not be empty (null)")
    if not kinds:  # Any, nested types: not checked here
        return value
    ok = False
    for k in kinds:
        if k is float and not isinstance(value, bool):
            if isinstance(value, (int, float)):
                ok = True
            elif isinstance(value, str):
                try:
                    value, ok = float(value), True
                except ValueError:
                    pass
        elif k is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, k)
        if ok:
            break
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        article = ("an " if names[0] in "aeiou" else "a ") if len(kinds) == 1 else ""
        raise ConfigError(f"{where} must be {article}{names}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be finite, got {value!r}")
    if min is not None and value < min:
        raise ConfigError(f"{where} must be >= {min}, got {value!r}")
    if below is not None and value >= below:
        raise ConfigError(f"{where} must be < {below}, got {value!r}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def checked_call(fn, kwargs: dict, where: str, *args, also_valid: tuple[str, ...] = ()):
    """``fn(*args, **kwargs)`` for keyword arguments that come from a config section ``where``: a key
    ``fn`` does not take, or a value it rejects (``TypeError``/``ValueError`` raised while
    building it), becomes a :class:`ConfigError` naming the key or the section. ``also_valid``:
    keys of the section that the caller takes out before the call (listed as valid)."""
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        valid = [
            n
            for n, p in params.items()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ][len(args) :]
        unknown = [k for k in kwargs if k not in valid]
        if unknown:
            raise ConfigError(
                f"unknown config key {where + '.' + unknown[0]!r}; "
                f"valid keys here: {', '.join(sorted({*valid, *also_valid}))}"
            )
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def from_dict(cls, data: dict | None, path: str = ""):
    """Build dataclass ``cls`` from ``data``; a key that is not a field, or a value of the wrong
    type or out of range (field ``metadata``), raises :class:`ConfigError`."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"config section {path or cls.__name__!r} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in fields:
            raise ConfigError(f"unknown config key {where!r}; valid keys here: {', '.join(sorted(fields))}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value, where)
        else:
            value = check_value(value, hint, where, **fields[key].metadata)
        kwargs[key] = value
    return cls(**kwargs)


def load_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """Read a YAML experiment config (and apply ``overrides``: dotted keys -> values)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    for k, v in (overrides or {}).items():
        set_dotted(raw, k, v)
    if "train.epochs" in (overrides or {}):
        _check_epochs_vs_phases(raw)
    return from_dict(ExperimentConfig, raw)


def _check_epochs_vs_phases(raw: dict) -> None:
    """With ``train.phases`` the phases' ``epochs`` set the run's length and ``train.epochs`` is
    not used: an override ``train.epochs`` that disagrees with their total (``--set
    train.epochs=2`` on a phased config) would be ignored in silence, so it is refused."""
    tr = raw.get("train") if isinstance(raw, dict) else None
    if not isinstance(tr, dict) or not tr.get("phases") or "epochs" not in tr:
        return
    phases = tr["phases"] if isinstance(tr["phases"], list) else []
    total = sum(p.get("epochs", PhaseConfig.epochs) for p in phases if isinstance(p, dict))
    if isinstance(total, int) and tr["epochs"] != total:
        raise ConfigError(
            f"train.epochs = {tr['epochs']!r}, but the config has train.phases, which add up to {total} epochs "
            "and set the run's length: change a phase's length instead (train.phases.K.epochs)"
        )


def set_path(d: dict, key: str, value, *, create: bool, where: str) -> None:
    """Set dotted ``key`` in the config dict ``d``; a part that indexes a list is an integer.

    ``create``: missing mapping keys are added (as ``--set`` does), and a last index equal to
    the list's length appends (``--set train.regularizers.2={name: synops}``); otherwise a
    missing key is a :class:`ConfigError` that lists the keys there are.
    """
    parts = str(key).split(".")
    cur = d
    for i, part in enumerate(parts):
        here = ".".join(parts[:i]) or "the config"
        last = i == len(parts) - 1
        if isinstance(cur, list):
            if not part.isdigit():
                raise ConfigError(f"{where}: {key!r}: {here} is a list; {part!r} is not an index (0, 1, ...)")
            n = int(part)
            if create and last and n == len(cur):  # --set list.N=... with N = len appends
                cur.append(value)
                return
            if n >= len(cur):
                raise ConfigError(f"{where}: {key!r}: index {n} is out of range ({here} has {len(cur)} entries)")
            if last:
                cur[n] = value
                return
            cur = cur[n]
        elif isinstance(cur, dict):
            if part not in cur:
                if not create:
                    raise ConfigError(
                        f"{where}: {key!r} is not in the experiment config ({here} has keys "
                        f"{', '.join(map(str, cur)) or 'none'}); add it to the config or to `set:` first"
                    )
                cur[part] = value if last else {}
            if last:
                cur[part] = value
                return
            cur = cur[part]
        else:
            raise ConfigError(f"{where}: {key!r}: {here} is {cur!r}, not a mapping or a list")


def parse_overrides(items: list[str] | tuple[str, ...] | None) -> dict:
    """``--set`` items ``dotted.key=value`` as ``{key: value}``, each value YAML-parsed (so PyYAML
    reads ``1e-6`` without a dot as a string: numeric fields go through :func:`config_float`)."""
    out = {}
    for it in items or []:
        key, sep, val = it.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {it!r}")
        out[key] = yaml.safe_load(val)
    return out


def set_dotted(d: dict, key: str, value) -> None:
    """``--set key=value``: dotted keys, list indices as integers (``train.regularizers.1.s0``)."""
    set_path(d, key, value, create=True, where="--set")


def flat_config(d: dict, skip: tuple[str, ...] = (), prefix: str = "") -> dict:
    """``d`` as ``{dotted.key: value}`` (nested mappings flattened, lists kept whole), without the
    keys in ``skip``, passed through JSON so that it compares equal to a stored copy."""
    import json

    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, skip, key + "."))
        elif key not in skip:
            out[key] = v
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def changed_keys(saved: dict, now: dict) -> list[str]:
    """The keys whose values differ between two :func:`flat_config` dicts (missing counts as ``None``)."""
    return sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))


def refuse_changes(saved: dict, now: dict, checkpoint, allowed: str) -> None:
    """A :class:`ConfigError` listing every key of ``changed_keys(saved, now)`` with its old and new
    value, when there is one: a run resumed from ``checkpoint`` must compute what it started to
    (``allowed`` says what may change)."""
    diff = changed_keys(saved, now)
    if diff:
        raise ConfigError(
            f"resume: {checkpoint} was written under a different config ("
            + "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff)
            + f"); only {allowed} may change"
        )
