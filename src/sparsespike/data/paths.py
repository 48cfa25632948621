"""Where datasets live, and checking the files found there.

The data root is chosen as in DESIGN.md ("Data root"): an explicit ``data_dir`` argument
(the CLI's ``--data-dir``), else the environment variable ``$SPARSESPIKE_DATA``, else
``~/.cache/sparsespike``. Each dataset sits in its own folder under the root
(``<root>/mnist``, ``<root>/nmnist-small``, ...). Nothing is ever downloaded over the user's
files: a missing or bad file is a :class:`~sparsespike.errors.DataError` that names it.

Checksums are MD5 because that is what the dataset authors publish (MNIST, Fashion-MNIST,
CIFAR-10); they guard against truncated or swapped files, not against tampering. A file's
digest is computed once per process and cached by (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import DataError

ENV_VAR = "SPARSESPIKE_DATA"
DEFAULT_DATA_DIR = Path("~/.cache/sparsespike")

_MD5_CACHE: dict[tuple[str, int, int], str] = {}


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``data_dir``, else ``$SPARSESPIKE_DATA``, else ``~/.cache/sparsespike``.

    The path is user-expanded (``~``) but not required to exist; loaders check what they need.

    >>> resolve_data_dir("/data/snn")
    PosixPath('/data/snn')
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_DIR.expanduser()


def find_dataset_dir(root: str | os.PathLike[str] | None, name: str, expected_files: Iterable[str] = ()) -> Path:
    """Return ``<root>/<name>``; raise :class:`DataError` naming the files looked for if absent.

    ``root`` goes through :func:`resolve_data_dir` first, so ``None`` means the default root.
    """
    folder = resolve_data_dir(root) / name
    if not folder.is_dir():
        files = list(expected_files)
        wanted = f"; it should contain: {', '.join(files)}" if files else ""
        raise DataError(
            f"dataset folder for {name!r} not found: {folder} does not exist{wanted}. "
            f"Put the files there, or point --data-dir / ${ENV_VAR} at the folder that holds "
            f"{name}/."
        )
    return folder


def file_md5(path: str | os.PathLike[str]) -> str:
    """MD5 hex digest of a file, computed once per process for a given (path, size, mtime)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    cached = _MD5_CACHE.get(key)
    if cached is not None:
        return cached
    h = hashlib.md5(usedforsecurity=False)
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    _MD5_CACHE[key] = digest
    return digest


def verify_md5(path: str | os.PathLike[str], expected: str) -> None:
    """Raise :class:`DataError` naming the file, the expected and the actual MD5 if they differ."""
    actual = file_md5(path)
    if actual != expected.lower():
        raise DataError(
            f"checksum mismatch for {path}: md5 is {actual}, expected {expected} "
            "(the file is truncated, corrupt or a different file; replace it with the original)"
        )


def require_file(path: Path, what: str, expected_files: Iterable[str] = ()) -> Path:
    """Return ``path`` if it is a file, else a :class:`DataError` naming it and the set wanted."""
    if not path.is_file():
        files = list(expected_files)
        wanted = f" (the folder should contain: {', '.join(files)})" if files else ""
        raise DataError(f"{what}: file not found: {path}{wanted}")
    return path
