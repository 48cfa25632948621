"""Builds files in the IDX format of LeCun's MNIST distribution for the tests."""

from __future__ import annotations

import struct

import numpy as np


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    """``arr`` as an IDX file: magic ``0x00 0x00 code ndim``, big-endian sizes, big-endian data
    (``code`` 0x08 = uint8, 0x0D = float32, ...)."""
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
