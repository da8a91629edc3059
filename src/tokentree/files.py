"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """Where tokentree keeps what it measures and converts (``$TOKENTREE_CACHE``, default
    ``~/.cache/tokentree``)."""
    return Path(
        os.environ.get("TOKENTREE_CACHE", Path.home() / ".cache" / "tokentree")
    ).expanduser()


def write_atomically(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a uniquely named temporary file in the same directory and
    a rename: concurrent writers never interleave, a crash leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def temp_files_of(path: str | Path) -> list[Path]:
    """The temporary files :func:`write_atomically` leaves beside ``path`` when it is killed
    mid-write."""
    path = Path(path)
    return sorted(path.parent.glob(f"{glob_escape(path.name)}.*.tmp"))


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def check_writable(path: str | Path) -> str | None:
    """None when a file can be written atomically at ``path`` (its directory exists and takes new
    files), else why not."""
    directory = Path(path).parent
    if not directory.is_dir():
        return f"the directory {directory} does not exist"
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".tokentree-probe-")
    except OSError as exc:
        return f"cannot write in {directory}: {exc.strerror}"
    os.close(fd)
    os.unlink(probe)
    return None
