"""Files written so that a reader sees the old content or the whole new one, never a part.

A leaf under every layer: checkpoints, `metrics.csv`, the schedulers' state files, `results.csv`
and `best.yaml` are all written this way.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable


def write_synced(handle, data: bytes | memoryview) -> None:
    """Write all of `data` to the open binary file `handle` and flush it to disk."""
    handle.write(data)
    handle.flush()
    os.fsync(handle.fileno())


def atomic_write(path: Path, write: Callable[[BinaryIO], None], *, durable: bool = True) -> None:
    """Make `path` what `write(handle)` writes, so that readers see the old file or the whole new one,
    never a part.

    `write` fills a hidden temporary file in the same directory, which is flushed to disk (fsync,
    unless `durable=False`), then renamed over `path`; on any failure the temporary file is removed
    and `path` is untouched. The temporary file is created with mode 0o666, which the process's
    umask reduces as for any new file.
    """
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            break
        except FileExistsError:  # another writer's temporary file of the same name: draw again
            continue
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """`atomic_write` of `data`, flushed to disk."""
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` of `text` in UTF-8."""
    atomic_write_bytes(path, text.encode())
