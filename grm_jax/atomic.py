"""Writing result directories atomically: build under a temporary name, rename when complete."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from pathlib import Path


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
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    tmp = out.parent / f".{out.name}.tmp-{distributed.same_on_all(uuid.uuid4().hex[:8])}"
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
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
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
        if p is not None and Path(p).exists() and not overwrite:
            raise FileExistsError(f"{p} already exists; pass --overwrite to replace it")


def atomic_write_text(path: str | Path, text: str, *, overwrite: bool = False) -> Path:
    """Writes `text` to a temporary file beside `path`, then renames it into place."""
    path = Path(path).absolute()
    check_writable(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
