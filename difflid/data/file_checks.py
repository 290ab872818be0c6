"""Dataset files checked before a run starts: a missing validation folder or a pair list naming a missing file
would otherwise fail hours in (at the first validation, or when that pair is drawn).

Every listed file of every dataset block must exist (LMDB: every key must be in the environment), and a sample of
them must decode. Datasets that write or hold their own images (``DatasetKeys.generates_data``, ``source: bundled``)
have nothing to check.
"""
import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import lmdb
import numpy as np
from basicsr.utils.registry import DATASET_REGISTRY

from difflid.data.prep import lmdb_key
from difflid.utils.errors import OptionError
from difflid.utils.option_schema import dataset_keys

__all__ = ['check_dataset_files']

MAX_SHOWN = 10


def _lmdb_keys(folder: Path, where: str, problems: list[str]) -> set[str] | None:
    """All keys of an LMDB environment, read without their values; None (and a problem) when it cannot be opened."""
    try:
        env = lmdb.open(str(folder), readonly=True, lock=False, readahead=False)
    except lmdb.Error as err:
        problems.append(f'{where}: cannot open the LMDB {folder}: {err}')
        return None
    with env.begin(write=False) as txn:
        keys = {key.decode() for key in txn.cursor().iternext(keys=True, values=False)}
    env.close()
    return keys


def _lmdb_value(folder: Path, key: str) -> bytes | None:
    env = lmdb.open(str(folder), readonly=True, lock=False, readahead=False)
    with env.begin(write=False) as txn:
        value = txn.get(key.encode())
    env.close()
    return value


def _sample(items: list, count: int) -> list:
    """``count`` items spread evenly over the list (first and last included): the same ones every time."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def _decodes(data: bytes | None) -> bool:
    if not data:
        return False
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is not None


def _check_disk(files: list[tuple[str, Path]], sample: int, problems: list[str]) -> None:
    """(option, path) of every listed file: each must exist, and a sample must decode."""
    present = []
    for option, path in files:
        if path.is_file():
            present.append((option, path))
        else:
            problems.append(f'{option}: missing {path}')
    for option, path in _sample(present, sample):
        if not _decodes(path.read_bytes()):
            problems.append(f'{option}: cannot decode {path} as an image')


def _check_lmdb(keys_by_db: dict[Path, tuple[str, list[str]]], sample: int, problems: list[str]) -> None:
    """{LMDB folder: (option, keys listed)}: every key must be in the environment, and a sample must decode."""
    for folder, (option, keys) in keys_by_db.items():
        stored = _lmdb_keys(folder, option, problems)
        if stored is None:
            continue
        present = []
        for key in dict.fromkeys(keys):
            if key in stored:
                present.append(key)
            else:
                problems.append(f'{option}: key {key!r} is not in the LMDB {folder}')
        for key in _sample(present, sample):
            if not _decodes(_lmdb_value(folder, key)):
                problems.append(f'{option}: cannot decode key {key!r} of the LMDB {folder} as an image')


def _pair_list_files(where: str, opt: dict, sample: int, problems: list[str]) -> None:
    root = Path(opt['dataroot'])
    meta = Path(opt['meta_info_file'])
    if not meta.is_file():
        problems.append(f'{where}.meta_info_file: pair list {meta} not found')
        return
    pairs = [line.split() for line in meta.read_text(encoding='utf-8').splitlines() if line.strip()]
    option = f'{where}.meta_info_file ({meta})'
    if (opt.get('io_backend') or {}).get('type') == 'lmdb':
        by_db: dict[Path, tuple[str, list[str]]] = {root / 'lq.lmdb': (option, []), root / 'gt.lmdb': (option, [])}
        for fields in pairs:
            for db, rel in zip(by_db, fields, strict=False):
                by_db[db][1].append(lmdb_key(rel))
        _check_lmdb(by_db, sample, problems)
        return
    files = list(dict.fromkeys((option, root / rel) for fields in pairs for rel in fields))
    _check_disk(files, sample, problems)


def _folder_pairs(where: str, opt: dict, sample: int, problems: list[str]) -> None:
    """basicsr's PairedImageDataset-like sets (``paths`` of {lq_path, gt_path}) and SingleImageDataset (``paths``)."""
    cls = DATASET_REGISTRY.get(opt['type'])
    try:
        dataset = cls(copy.deepcopy(opt))
    except (OSError, AssertionError, ValueError, KeyError) as err:  # basicsr's folder pairing asserts
        problems.append(f'{where}: {err or type(err).__name__}')
        return
    paths = getattr(dataset, 'paths', None)
    if paths is None:
        return
    records = [p if isinstance(p, dict) else {'lq_path': p} for p in paths]
    options = {'lq_path': f'{where}.dataroot_lq', 'gt_path': f'{where}.dataroot_gt'}
    if (opt.get('io_backend') or {}).get('type') == 'lmdb':
        by_db = {}
        for side, option in options.items():
            folder = opt.get(f'dataroot_{side[:2]}')
            if folder:
                by_db[Path(folder)] = (option, [r[side] for r in records if side in r])
        _check_lmdb(by_db, sample, problems)
        return
    files = list(dict.fromkeys((options[side], Path(r[side])) for r in records for side in options if side in r))
    _check_disk(files, sample, problems)


def _clean_images(where: str, opt: dict, sample: int, problems: list[str]) -> None:
    if opt.get('dataroot_gt') is None:
        return  # source: bundled (held in memory)
    root = Path(opt['dataroot_gt'])
    if (opt.get('io_backend') or {}).get('type') == 'lmdb':
        meta = root / 'meta_info.txt'
        if not meta.is_file():
            problems.append(f'{where}.dataroot_gt: {meta} not found (an LMDB written by basicsr has one)')
            return
        keys = [line.split(' ')[0].rsplit('.', 1)[0] for line in meta.read_text().splitlines() if line]
        _check_lmdb({root: (f'{where}.dataroot_gt', keys)}, sample, problems)
        return
    cls = DATASET_REGISTRY.get(opt['type'])
    try:
        dataset = cls(copy.deepcopy(opt))
    except (OSError, ValueError, KeyError) as err:
        problems.append(f'{where}.dataroot_gt: {err}')
        return
    _check_disk([(f'{where}.dataroot_gt', Path(key)) for key in dataset.keys], sample, problems)


_CHECKS = {'PairListDataset': _pair_list_files, 'CleanImageDataset': _clean_images,
           'DegradedImageDataset': _clean_images}


def _blocks(opt: dict) -> Iterable[tuple[str, dict]]:
    """Every dataset block, the members of a mix (``DatasetKeys.member_blocks``) included."""
    def walk(where: str, block: Any) -> Iterable[tuple[str, dict]]:
        if not (isinstance(block, dict) and isinstance(block.get('type'), str)):
            return
        yield where, block
        cls = DATASET_REGISTRY._obj_map.get(block['type'])
        keys = dataset_keys(cls) if cls is not None else None
        if keys is not None and keys.member_blocks:
            added = set(getattr(cls, 'MEMBER_KEYS', {}))
            for index, member in enumerate(block.get(keys.member_blocks) or []):
                if isinstance(member, dict):  # without the mix's own keys, which the member's class may not read
                    member_cls = DATASET_REGISTRY._obj_map.get(member.get('type'))
                    own = set(dataset_keys(member_cls).properties if member_cls and dataset_keys(member_cls) else {})
                    member = {k: v for k, v in member.items() if k not in added - own}
                yield from walk(f'{where}.{keys.member_blocks}[{index}]', member)

    for phase, block in (opt.get('datasets') or {}).items():
        yield from walk(f'datasets.{phase}', block)


def check_dataset_files(opt: dict, sample: int = 8) -> None:
    """Check, for every dataset block of ``opt`` (training and validation/test sets alike), that every file it lists
    exists (LMDB: every key is in the environment) and that ``sample`` of them, spread over the list, decode.

    Relative paths are read from the working directory, as the datasets read them. Raises OptionError: the first
    problem, the next few and their count, each naming the option (``datasets.val.meta_info_file``) and the file.
    """
    lines: list[str] = []
    for where, block in _blocks(opt):
        cls = DATASET_REGISTRY._obj_map.get(block['type'])
        keys = dataset_keys(cls) if cls is not None else None
        if keys is None or keys.generates_data:
            continue  # nothing to check, or another plugin's dataset whose layout is its own
        check = _CHECKS.get(block['type'], _folder_pairs if cls.__module__.startswith('basicsr.') else None)
        if check is not None:
            check(where, block, sample, lines)
    if not lines:
        return
    shown = lines[:MAX_SHOWN]
    head = shown[0] if len(lines) == 1 else f'{len(lines)} problems with dataset files; the first: {shown[0]}'
    tail = [f'... and {len(lines) - MAX_SHOWN} more'] if len(lines) > MAX_SHOWN else []
    raise OptionError('\n'.join([head, *shown[1:], *tail]))
