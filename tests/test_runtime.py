"""runtime.tune_allocator: applies once on glibc Linux, honours the opt-out."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from sparsespike.runtime import tune_allocator


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tune_allocator_applies_once():
    assert tune_allocator() is True
    assert tune_allocator() is True  # idempotent


def test_tune_allocator_opt_out():
    code = "from sparsespike.runtime import tune_allocator; print(tune_allocator())"
    env = dict(os.environ, SPARSESPIKE_TUNE_MALLOC="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
