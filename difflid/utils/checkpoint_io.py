"""Checkpoint files: crash-safe writing (a kill during a save never leaves a truncated file under the final name),
in PyTorch's format or in safetensors (no pickle at load), and loading a network's weights with one readable error
when they do not fit.

A safetensors checkpoint holds what the PyTorch one holds: basicsr's ``{'params': ..., 'params_ema': ...}`` stored
flat as ``params.<key>``/``params_ema.<key>`` tensors, the groups and the ``config`` record in the file's metadata as
JSON (``CHECKPOINT_GROUPS``, ``CHECKPOINT_CONFIG``). A safetensors file without them (a plain state dict) reads as
that state dict, as a plain ``.pth`` does.
"""
import json
import logging
import os
import pickle
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import safetensors
import safetensors.torch
import torch
from torch import nn

from difflid.utils.errors import OptionError

__all__ = ['CHECKPOINT_FORMATS', 'atomic_open', 'atomic_torch_save', 'checkpoint_suffix', 'latest_weights_name',
           'load_network_weights', 'network_state', 'option_differences', 'other_format', 'package_path',
           'read_checkpoint', 'save_checkpoint', 'state_dict_problems', 'weights_stamp']

CHECKPOINT_FORMATS = {'pth': '.pth', 'safetensors': '.safetensors'}  # logger.save_checkpoint_format -> suffix
CHECKPOINT_GROUPS = 'difflid.groups'  # metadata key: JSON list of the state dicts stored (params, params_ema)
CHECKPOINT_CONFIG = 'config'  # metadata key: JSON of the checkpoint's config record


def checkpoint_suffix(opt: dict) -> str:
    """The suffix a run's options save its network checkpoints under (``logger.save_checkpoint_format``)."""
    return CHECKPOINT_FORMATS[(opt.get('logger') or {}).get('save_checkpoint_format', 'pth')]


def latest_weights_name(opt: dict, label: str = 'latest') -> str:
    """``net_g_<label>`` in the format a training run's options save it in."""
    return f'net_g_{label}{checkpoint_suffix(opt)}'


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


def _is_safetensors(path: Path) -> bool:
    """By suffix, or by content for other names: an 8-byte little-endian header length, then a JSON object."""
    if path.suffix == '.safetensors':
        return True
    with open(path, 'rb') as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b'{' and not head.startswith(b'PK')


def save_checkpoint(checkpoint: dict, path: str | Path) -> None:
    """Write a checkpoint atomically, as safetensors when ``path`` ends in ``.safetensors``, else with torch.save.

    ``checkpoint`` is basicsr's ``{'params': state, 'params_ema': state, 'config': record}`` (any subset) or a plain
    state dict. Tensors that share memory (tied weights) are stored as copies, which safetensors requires.
    """
    path = Path(path)
    if path.suffix != '.safetensors':
        atomic_torch_save(checkpoint, path)
        return
    if _is_state(checkpoint):
        groups, flat, metadata = None, dict(checkpoint), {}
    else:
        groups = [k for k, v in checkpoint.items() if k != 'config']
        if not all(_is_state(checkpoint[g]) for g in groups):
            raise TypeError(f'{path}: safetensors holds tensors only, got {groups} beside config')
        flat = {f'{g}.{k}': v for g in groups for k, v in checkpoint[g].items()}
        metadata = {CHECKPOINT_GROUPS: json.dumps(groups)}
        if checkpoint.get('config') is not None:
            metadata[CHECKPOINT_CONFIG] = json.dumps(checkpoint['config'])
    seen: set[int] = set()
    tensors = {}
    for key, value in flat.items():
        value = value.detach().cpu().contiguous()
        pointer = value.untyped_storage().data_ptr()
        tensors[key] = value.clone() if pointer in seen and value.numel() else value
        seen.add(pointer)
    with atomic_open(path) as f:
        f.write(safetensors.torch.save(tensors, metadata=metadata or None))


def read_checkpoint(path: str | Path) -> object:
    """What ``torch.load(path, weights_only=True)`` gives for a ``.pth`` file, from either format (chosen by the suffix,
    or the content for other names; no pickle for safetensors). Raises OptionError naming the file when it cannot be
    read (truncated, corrupt, not a checkpoint), FileNotFoundError when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: no such checkpoint file')
    if not _is_safetensors(path):
        try:
            return torch.load(path, map_location='cpu', weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise OptionError(f'{path} is not a PyTorch checkpoint that can be loaded safely ({first})') from err
    try:
        with safetensors.safe_open(path, framework='pt') as f:
            metadata = f.metadata() or {}
            flat = {k: f.get_tensor(k) for k in f.keys()}
        groups = json.loads(metadata.get(CHECKPOINT_GROUPS, 'null'))
        config = json.loads(metadata[CHECKPOINT_CONFIG]) if CHECKPOINT_CONFIG in metadata else None
    except (safetensors.SafetensorError, OSError, ValueError) as err:  # json's errors are ValueErrors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OptionError(f'{path} is not a readable safetensors checkpoint ({first})') from err
    if not groups:
        return flat
    loaded: dict = {g: {k.removeprefix(f'{g}.'): v for k, v in flat.items() if k.startswith(f'{g}.')} for g in groups}
    if config is not None:
        loaded['config'] = config
    return loaded


def other_format(path: str | Path) -> Path | None:
    """The same checkpoint name in the other format (``net_g_8.safetensors`` for ``net_g_8.pth``), or None."""
    path = Path(path)
    suffixes = list(CHECKPOINT_FORMATS.values())
    if path.suffix not in suffixes:
        return None
    return path.with_suffix(suffixes[1 - suffixes.index(path.suffix)])


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


def _mismatches(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                known: Collection[str] | None = None, optional: tuple[str, ...] = ()) -> dict[str, list[str]]:
    known = expected if known is None else known
    return {
        'missing from the file': [k for k in expected if k not in state and not (optional and k.endswith(optional))],
        'not in the model': [k for k in state if k not in known],
        'shape mismatch': [f'{k} (file {tuple(state[k].shape)} vs model {tuple(v.shape)})'
                           for k, v in expected.items() if k in state and state[k].shape != v.shape],
    }


def state_dict_problems(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                        known: Collection[str] | None = None, optional: tuple[str, ...] = ()) -> list[str]:
    """What keeps ``state`` (a file's tensors) from loading strictly into a model whose state dict is ``expected``:
    keys missing from the file (except those ending in one of ``optional``), keys the model does not have (outside
    ``known``, default ``expected``: a larger model the file may come from) and shape mismatches, each listed
    (the first five, with the count). Empty when it fits."""
    return [f'{what}: {_listing(keys)}' for what, keys in _mismatches(expected, state, known, optional).items() if keys]


def _same_option(saved: object, given: object) -> bool:
    """Equal, or the same file named absolutely in one and relatively in the other (checkpoints record absolute
    paths of the prior's checkpoint, option files usually relative ones)."""
    if isinstance(saved, str) and isinstance(given, str) and saved != given:
        a, b = Path(saved).as_posix(), Path(given).as_posix()
        return a.endswith('/' + b.lstrip('./')) or b.endswith('/' + a.lstrip('./'))
    return saved == given


def _flat(block: Mapping, prefix: str) -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in block.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat


def option_differences(saved: Mapping, given: Mapping) -> list[str]:
    """How the network options a checkpoint records (``{'network_g': {...}, 'network_prior': {...}}``) differ from
    those given, one line per option: ``checkpoint has network_g.num_feat: 64, options say 16``. Only the blocks
    given are compared (a diffusion prior's checkpoint also records its noise schedule)."""
    lines = []
    for block in sorted(given):
        ours, theirs = saved.get(block), given.get(block)
        if not isinstance(ours, Mapping) or not isinstance(theirs, Mapping):
            if bool(ours) != bool(theirs):
                lines.append(f'checkpoint has {block}: {ours or "none"}, options say {theirs or "none"}')
            continue
        ours, theirs = _flat(ours, f'{block}.'), _flat(theirs, f'{block}.')
        for key in sorted(set(ours) | set(theirs)):
            if key not in theirs:
                lines.append(f'checkpoint has {key}: {ours[key]}, options leave it at its default')
            elif key not in ours:
                lines.append(f'checkpoint has no {key} (its default), options say {theirs[key]}')
            elif not _same_option(ours[key], theirs[key]):
                lines.append(f'checkpoint has {key}: {ours[key]}, options say {theirs[key]}')
    return lines


def load_network_weights(net: nn.Module, path: str | Path, param_key: str | None, strict: bool = True,
                         expected_config: dict | None = None) -> None:
    """Load a checkpoint's weights (.pth or .safetensors, ``read_checkpoint``) into ``net``, or raise one OptionError
    that names the file and says why.

    As basicsr's ``load_network``: ``param_key`` ('params', 'params_ema'; None: the file is the state dict) falls
    back to 'params' (logged), a ``module.`` prefix is dropped, and ``strict=False`` loads what fits, logging what
    was left out (tensors of another shape included). With ``strict`` a misfit is an OptionError: when the
    checkpoint records its network options (``config``, written by ``RestorationModel.checkpoint_config``) and
    ``expected_config`` (the same shape: ``{'network_g': ..., 'network_prior': ...}``) is given, it lists the options
    that differ; otherwise the first mismatching tensors of each kind and their count, instead of torch's line per
    tensor.
    """
    path = Path(path)
    loaded = read_checkpoint(path)
    logger = logging.getLogger('basicsr')
    state = loaded
    if param_key is not None and isinstance(loaded, dict) and not _is_state(loaded):
        if param_key not in loaded and 'params' in loaded:
            logger.warning('%s has no %r; loading its params instead', path, param_key)
            param_key = 'params'
        state = loaded.get(param_key)
    if not _is_state(state):
        keys = sorted(loaded)[:8] if isinstance(loaded, dict) else type(loaded).__name__
        raise OptionError(f'{path} holds no network weights under {param_key!r} (it has {keys})')
    state = {k.removeprefix('module.'): v for k, v in state.items()}
    expected = net.state_dict()
    found = _mismatches(expected, state)
    if not any(found.values()):
        net.load_state_dict(state, strict=True)
        return
    if not strict:
        for what, keys in found.items():
            if keys:
                logger.warning('%s into %s: %s: %s (not loaded)', path, type(net).__name__, what, _listing(keys))
        shapes = {k for k, v in expected.items() if k in state and state[k].shape != v.shape}
        net.load_state_dict({k: v for k, v in state.items() if k not in shapes}, strict=False)
        return
    count = sum(len(keys) for keys in found.values())
    config = loaded.get('config') if isinstance(loaded, dict) else None
    differences = option_differences(config, expected_config) if config and expected_config else []
    name = type(net).__name__
    if differences:
        detail = [*differences[:8], *([f'... and {len(differences) - 8} more'] if len(differences) > 8 else []),
                  f'({count} tensors do not fit; set these options as the checkpoint has them, or use a checkpoint '
                  'trained with these options)']
        raise OptionError(f'{path} does not fit this {name}: it was saved with other network options\n  '
                          + '\n  '.join(detail))
    detail = [f'{what}: {_listing(keys)}' for what, keys in found.items() if keys]
    raise OptionError(f'{path} does not fit this {name}: {count} tensors do not match (a checkpoint of another '
                      'network or configuration?)\n  ' + '\n  '.join(detail))


def _is_state(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())
