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
    and `out` is left as it was.
    """
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
