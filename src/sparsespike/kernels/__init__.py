"""LIF recurrence kernels: pure-torch reference, numba CPU, sparse backward."""

from .recurrence import LIFRecurrence, choose_impl, lif_recurrence

__all__ = ["LIFRecurrence", "choose_impl", "lif_recurrence"]
