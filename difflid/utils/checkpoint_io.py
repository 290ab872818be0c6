"""Crash-safe file writing: a kill during a save never leaves a truncated file under the final name."""
import os
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch

__all__ = ['atomic_open', 'atomic_torch_save', 'network_state', 'package_path', 'state_dict_problems', 'weights_stamp']


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


def network_state(loaded: object) -> tuple[dict | None, dict]:
    """(state dict, record) of what ``torch.load`` read from a network checkpoint file.

    A plain state dict (guided-diffusion's files) has an empty record. A difflid/basicsr checkpoint
    ``{'params': ..., 'params_ema': ..., 'config': ...}`` gives its EMA weights when it has them (the weights a
    trained diffusion prior is meant to be used with), else ``params``, and its ``config`` record (the options it
    was trained with). Anything else gives (None, {}): not a checkpoint of tensors.
    """
    if not isinstance(loaded, dict):
        return None, {}
    if all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return loaded, {}
    state = loaded.get('params_ema', loaded.get('params'))
    if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
        config = loaded.get('config')
        return state, config if isinstance(config, dict) else {}
    return None, {}


def package_path(path: str | Path) -> Path:
    """``path`` itself, or, when it is relative and missing there, the same path under the folder that holds the
    difflid package (the repository, or site-packages), so that files shipped with difflid such as
    ``difflid/weights/adm_tiny_bundled.pth`` are found from any working directory."""
    path = Path(path).expanduser()
    if path.exists() or path.is_absolute():
        return path
    shipped = Path(__file__).resolve().parents[2] / path
    return shipped if shipped.exists() else path


def _file_stamp(path: Path) -> dict:
    stat = path.stat()
    return {'size': stat.st_size, 'mtime_ns': stat.st_mtime_ns}


def weights_stamp(opt: dict) -> dict | None:
    """Size and modification time of the weights a network option block reads, or None when it reads no file.

    Feature caches (the probe's, the validation prior cache) put this in their keys, so that replacing the weights
    under the same name invalidates them. It covers ``checkpoint`` (a file) and ``diffusers`` (every file of the
    folder); paths resolve as the networks resolve them (``package_path``: shipped weights from any directory).
    """
    stamp: dict = {}
    checkpoint = opt.get('checkpoint')
    if isinstance(checkpoint, str) and package_path(checkpoint).is_file():
        stamp.update(_file_stamp(package_path(checkpoint)))
    folder = opt.get('diffusers')
    if isinstance(folder, str) and package_path(folder).is_dir():
        root = package_path(folder)
        stamp['diffusers'] = {str(p.relative_to(root)): _file_stamp(p) for p in sorted(root.rglob('*')) if p.is_file()}
    return stamp or None


_MAX_LISTED = 5


def _listing(keys: list[str]) -> str:
    shown = ', '.join(keys[:_MAX_LISTED])
    return f'{shown}, ... ({len(keys)} in all)' if len(keys) > _MAX_LISTED else shown


def state_dict_problems(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                        known: Collection[str] | None = None, optional: tuple[str, ...] = ()) -> list[str]:
    """What keeps ``state`` (a file's tensors) from loading strictly into a model whose state dict is ``expected``:
    keys missing from the file (except those ending in one of ``optional``), keys the model does not have (outside
    ``known``, default ``expected``: a larger model the file may come from) and shape mismatches, each listed
    (the first five, with the count). Empty when it fits."""
    known = expected if known is None else known
    missing = [k for k in expected if k not in state and not (optional and k.endswith(optional))]
    unexpected = [k for k in state if k not in known]
    shapes = [f'{k} (file {tuple(state[k].shape)} vs model {tuple(v.shape)})'
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    return [f'{what}: {_listing(keys)}' for what, keys in (('missing from the file', missing),
                                                           ('not in the model', unexpected),
                                                           ('shape mismatch', shapes)) if keys]
