"""Output folders: checked before hours of work are spent (writable, enough free space), written atomically.

    python -c "from vlm_core.outputs import check_output_dir; print(check_output_dir('runs/x', 1 << 30, 'sweep'))"
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

GiB = 1 << 30


class OutputError(RuntimeError):
    """An output folder cannot be written or is too full; the message names the folder and the fix."""


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


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` so that readers see the old file or the new one, never half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
