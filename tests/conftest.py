from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    env = os.environ.get("SPARSESPIKE_TEST_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"shared data directory not found at {d} (set SPARSESPIKE_TEST_DATA)")
    return d


@pytest.fixture(autouse=True)
def _few_threads():
    # tests run two at a time on two cores in CI; one thread each keeps timings sane
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def atomic_writes(monkeypatch) -> list[str]:
    """Names of the files written through ``train.atomic_write_text`` during the test (which
    still writes them)."""
    from sparsespike import train

    names: list[str] = []
    write = train.atomic_write_text

    def record(path, text):
        names.append(Path(path).name)
        write(path, text)

    monkeypatch.setattr(train, "atomic_write_text", record)
    return names
