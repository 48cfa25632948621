"""Exponential moving average of a model's parameters (Polyak averaging).

``theta_ema <- d * theta_ema + (1 - d) * theta`` after every optimizer step (Polyak & Juditsky
1992; the "EMA weights" of most training libraries). Validation, the best checkpoint and the test
then use the averaged parameters, hard-concrete gates' ``log_alpha`` included, so the pruned
mask is the averaged one too. With ``d = 0.999`` the average spans about 1,000 steps.
Config: ``train.ema: 0.999`` (``null``, the default, turns it off).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .config import config_float
from .errors import ConfigError


class EmaWeights:
    """The running average of every floating-point parameter of ``model``."""

    def __init__(self, model: nn.Module, decay: float):
        d = config_float(decay, "train.ema", strict=True)
        if not d < 1:
            raise ConfigError(f"train.ema must be a decay in (0, 1), got {decay!r}")
        self.decay = d
        self.shadow = {k: p.detach().clone() for k, p in self._params(model)}

    @staticmethod
    def _params(model: nn.Module):
        return [(k, p) for k, p in model.named_parameters() if p.dtype.is_floating_point]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step (call after ``optimizer.step()``)."""
        for k, p in self._params(model):
            self.shadow[k].lerp_(p.detach(), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped(self, model: nn.Module) -> Iterator[None]:
        """Inside the block ``model`` holds the averaged parameters; its own come back after."""
        params = self._params(model)
        saved = {k: p.detach().clone() for k, p in params}
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in params:
                    p.copy_(saved[k])

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Give ``model`` the averaged parameters for good."""
        for k, p in self._params(model):
            p.copy_(self.shadow[k])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ConfigError(f"EMA state does not match the model (parameters {sorted(missing)[:5]})")
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
