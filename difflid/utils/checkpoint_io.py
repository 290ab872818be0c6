"""Crash-safe file writing: a kill during a save never leaves a truncated file under the final name."""
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch

__all__ = ['atomic_open', 'atomic_torch_save']


@contextmanager
def atomic_open(path: str | Path, mode: str = 'wb') -> Iterator[IO]:
    """Write to ``<path>.tmp``, flush to disk, then rename over ``path`` (atomic on POSIX).

    On an exception the temporary file is removed and ``path`` keeps its previous content. The
    temporary name does not end in ``.state``/``.pth``, so resume logic never picks up a partial file.
    """
    path = Path(path)
    tmp = path.with_name(path.name + '.tmp')
    try:
        with open(tmp, mode, **({} if 'b' in mode else {'encoding': 'utf-8'})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_torch_save(obj: object, path: str | Path) -> None:
    """``torch.save`` through ``atomic_open``."""
    with atomic_open(path) as f:
        torch.save(obj, f)
