"""Writing result directories atomically: build under a temporary name, rename when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from pathlib import Path


def _stamp() -> str:
    """A unique suffix naming this process: HEX-PID@HOST (what stale-leftover cleanup reads)."""
    return f"{uuid.uuid4().hex[:8]}-{os.getpid()}@{socket.gethostname()}"


def _owner_gone(stamp: str) -> bool:
    """True when `stamp` (from `_stamp`) names a process of this host that no longer runs."""
    try:
        pid, host = stamp.split("-", 1)[1].split("@", 1)
        pid = int(pid)
    except (IndexError, ValueError):
        return False
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_stale_leftovers(out: Path) -> list[Path]:
    """Removes `.NAME.tmp-*` / `.NAME.old-*` beside `out` left by a killed writer of this host."""
    removed = []
    for kind in ("tmp", "old"):
        for p in out.parent.glob(f".{out.name}.{kind}-*"):
            if _owner_gone(p.name.split(f".{kind}-", 1)[1]):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_directory(out: str | Path, *, overwrite: bool = False):
    """Yields a fresh temporary directory beside `out`; on success it becomes `out`.

    An existing `out` is refused unless `overwrite`; when replaced, it is moved aside first and
    deleted only after the new one is in place. On any error the temporary directory is removed
    and `out` is left as it was. In a multi-host run every process must enter it (on a file
    system they share): they get the same temporary directory, and process 0 alone creates and
    renames it, after all have finished writing.
    """
    from grm_jax import distributed

    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; this output is a directory "
                              "(--overwrite replaces a directory, never a file)")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    if distributed.is_main():
        remove_stale_leftovers(out)
    tmp = out.parent / f".{out.name}.tmp-{distributed.same_on_all(_stamp())}"
    if not distributed.is_main():
        distributed.barrier(f"mkdir {tmp}")
        yield tmp
        distributed.barrier(f"written {tmp}")
        distributed.barrier(f"renamed {tmp}")
        return
    tmp.mkdir(parents=True)
    distributed.barrier(f"mkdir {tmp}")
    try:
        yield tmp
        distributed.barrier(f"written {tmp}")
        if out.exists():
            old = out.parent / f".{out.name}.old-{_stamp()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
        distributed.barrier(f"renamed {tmp}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_writable(*paths: str | Path, overwrite: bool = False) -> None:
    """Refuses before any work is done if an output exists and `overwrite` is not set."""
    for p in paths:
        if p is not None and Path(p).is_dir():
            raise FileExistsError(f"{p} is a directory; this output is a file (--overwrite replaces a "
                                  "file, never a directory)")
        if p is not None and Path(p).exists() and not overwrite:
            raise FileExistsError(f"{p} already exists; pass --overwrite to replace it")


def atomic_write_text(path: str | Path, text: str, *, overwrite: bool = False) -> Path:
    """Writes `text` to a temporary file beside `path`, then renames it into place."""
    path = Path(path).absolute()
    check_writable(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_leftovers(path)
    tmp = path.parent / f".{path.name}.tmp-{_stamp()}"
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
