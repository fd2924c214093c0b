"""Writing outputs: folders checked before hours of work are spent (writable, enough free space), and every file
or folder written atomically (readers see the old one or the new one, never half of it). The one place for these
primitives; checkpoints, data builds, feature caches, reports and asset conversions all use them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import OutputError

GiB = 1 << 30


def check_output_dir(path: str | Path, need_bytes: int, what: str) -> int:
    """Create ``path`` if needed, prove it writable, and require ``need_bytes`` free; returns the free bytes."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{what}: cannot write to {path} ({e.strerror or e}); fix its permissions or choose "
                          f"another output folder") from e
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise OutputError(f"{what}: {path} has {free / GiB:.2f} GiB free and this needs about "
                          f"{need_bytes / GiB:.1f} GiB; free some space or choose another output folder "
                          f"(the check's size is min_free_gb)")
    return free


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path`` to write one file to; it replaces ``path`` when the block succeeds and is
    removed when it fails (disk full, killed writer: the previous file, if any, stays whole)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` so that readers see the old file or the new one, never half of it."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside ``target``; it replaces ``target`` (whole) only when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def build_once(target: str | Path, write: Callable[[Path], None], marker: str = "config.json") -> Path:
    """A folder written once and shared by every process: ``write(tmp)`` runs under a file lock into a temp folder
    that becomes ``target`` when complete; ``marker`` is the file whose presence says it is there."""
    target = Path(target)
    if (target / marker).is_file():
        return target
    from filelock import FileLock  # a transformers / huggingface_hub dependency

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / marker).is_file():  # else another process wrote it while we waited
            with atomic_dir(target) as tmp:
                write(tmp)
    return target
