"""Build feed-forward spiking networks from layer specs (YAML-friendly).

A spec is a list of dicts, each with a ``type``:

* ``linear``: ``{type: linear, out: 200}`` -> :class:`~sparsespike.layers.SpikingLinear`
* ``conv``: ``{type: conv, out: 15, kernel: 5, stride: 1, padding: 0}`` -> SpikingConv2d
* ``pool``: ``{type: pool, kernel: 2, mode: max|avg}``; ``flatten``: ``{type: flatten}``
* ``readout``: ``{type: readout, out: 10, beta: 0.9, mode: max|mean|sum|last}`` (LeakyReadout)
* ``count_readout``: ``{type: count_readout, mean: true}`` (spike counts of the last layer)

Every spiking layer takes the network-wide ``neuron`` parameters, ``backward`` and ``b_th``,
which a layer spec may override (``neuron: {...}``, ``backward: ...``, ``b_th: ...``).
"""

from __future__ import annotations

from torch import nn

from .config import check_value
from .errors import ConfigError
from .layers import (
    LeakyReadout,
    SeqFlatten,
    SeqPool2d,
    SpikeCountReadout,
    SpikingConv2d,
    SpikingLinear,
)
from .neurons import LIFParams


def build_network(
    layers: list[dict],
    input_shape: tuple[int, ...],
    neuron: dict | None = None,
    backward: str = "dense",
    b_th: float = 0.2,
    weight_scale: float | None = None,
) -> nn.Sequential:
    """A ``torch.nn.Sequential`` of sparsespike modules for inputs ``[T, B, *input_shape]``."""
    shape = tuple(input_shape)
    mods: list[nn.Module] = []
    base = dict(neuron or {})
    for k, spec in enumerate(layers):
        spec = dict(spec)
        kind = spec.pop("type", None)
        where = f"model.layers[{k}]"
        if mods and isinstance(mods[-1], (LeakyReadout, SpikeCountReadout)):
            raise ConfigError(f"{where}: a readout reduces over time and must be the last layer")

        def num(key: str, default=None, lo: int = 1, spec=spec, where=where) -> int:
            v = spec.pop(key) if default is None else spec.pop(key, default)
            return check_value(v, int, f"{where}.{key}", min=lo)

        def flag(key: str, spec=spec, where=where) -> bool:
            return check_value(spec.pop(key, False), bool, f"{where}.{key}")

        try:
            if kind in ("linear", "conv"):
                nparams = LIFParams(**{**base, **spec.pop("neuron", {})})
                common = dict(
                    backward=spec.pop("backward", backward),
                    b_th=spec.pop("b_th", b_th),
                    weight_scale=spec.pop("weight_scale", weight_scale),
                )
            if kind == "linear":
                if len(shape) != 1:
                    mods.append(SeqFlatten())
                    shape = (int(_prod(shape)),)
                m = SpikingLinear(shape[0], num("out"), nparams, bias=flag("bias"), **common)
                shape = (m.out_features,)
            elif kind == "conv":
                if len(shape) != 3:
                    raise ConfigError(f"{where}: conv needs [C, H, W] input, got shape {shape}")
                k_, stride, pad = num("kernel"), num("stride", 1), num("padding", 0, lo=0)
                h = (shape[1] + 2 * pad - k_) // stride + 1
                w = (shape[2] + 2 * pad - k_) // stride + 1
                if h < 1 or w < 1:
                    raise ConfigError(f"{where}: a {k_}x{k_} conv (padding {pad}) does not fit its input {shape}")
                m = SpikingConv2d(shape[0], num("out"), k_, nparams, stride=stride, padding=pad, bias=flag("bias"),
                                  **common)  # fmt: skip
                shape = (m.conv.out_channels, h, w)
            elif kind == "pool":
                if len(shape) != 3:
                    raise ConfigError(f"{where}: pool needs [C, H, W] input, got shape {shape}")
                k_ = num("kernel")
                if k_ > min(shape[1], shape[2]):
                    raise ConfigError(f"{where}: a {k_}x{k_} pool does not fit its input {shape}")
                m = SeqPool2d(k_, spec.pop("mode", "max"))
                shape = (shape[0], shape[1] // k_, shape[2] // k_)
            elif kind == "flatten":
                m = SeqFlatten()
                shape = (int(_prod(shape)),)
            elif kind == "readout":
                if len(shape) != 1:
                    mods.append(SeqFlatten())
                    shape = (int(_prod(shape)),)
                m = LeakyReadout(
                    shape[0],
                    num("out"),
                    beta=spec.pop("beta", base.get("beta", 0.9)),
                    mode=spec.pop("mode", "max"),
                    bias=flag("bias"),
                    weight_scale=spec.pop("weight_scale", weight_scale),
                )
                shape = (m.out_features,)
            elif kind == "count_readout":
                m = SpikeCountReadout(mean=check_value(spec.pop("mean", True), bool, f"{where}.mean"))
            else:
                raise ConfigError(
                    f"{where}: unknown layer type {kind!r}; use linear, conv, pool, flatten, readout or count_readout"
                )
        except KeyError as e:
            raise ConfigError(f"{where}: missing key {e.args[0]!r} for layer type {kind!r}") from e
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:  # a layer's own check (b_th <= 0, an unknown pool mode...)
            raise ConfigError(f"{where}: {e}") from e
        if spec:
            raise ConfigError(f"{where}: unknown keys {sorted(spec)} for layer type {kind!r}")
        mods.append(m)
    return nn.Sequential(*mods)


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
