"""Exceptions raised on bad input. Every message names the offending thing."""

from __future__ import annotations


class SparseSpikeError(Exception):
    """Base class of all sparsespike errors."""


class DataError(SparseSpikeError, ValueError):
    """A data file is missing, truncated, corrupt or has the wrong checksum."""


class ConfigError(SparseSpikeError, ValueError):
    """A configuration is impossible or names a key that does not exist."""


class SpikeInputError(SparseSpikeError, ValueError):
    """A tensor has the wrong rank/layout/dtype, or is not a binary spike tensor where one is needed."""
