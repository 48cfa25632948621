"""Lazy imports of optional dependencies, with an error that says how to install them."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, needed_for: str, extra: str | None = None, note: str = "") -> ModuleType:
    """Import ``module`` or raise an :class:`ImportError` naming what needs it and the install command.

    ``extra``: the ``sparsespike[extra]`` that pulls it in (else only ``pip install module``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        how = f"pip install 'sparsespike[{extra}]'  (or: pip install {module})" if extra else f"pip install {module}"
        raise ImportError(
            f"{needed_for} needs the optional package '{module}', which is not installed: {how}" + note
        ) from e
