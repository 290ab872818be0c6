"""A folder of per-image feature arrays: written once (by several processes at a time), read back by windows.

What the precomputed-prior training stores (``tools/precompute_prior.py``), but nothing here knows about priors:

- ``store.json``: the format version and an ``identity`` (what the arrays depend on, e.g. a prior's options and
  weights) and ``meta`` (shape facts: channels, stride, dtype). Created once; a second writer with another identity
  is refused, naming the keys that differ.
- ``entries/<aa>/<digest>_o<orientation>_d<draw>.npy``: one array per (image pixels digest, orientation, draw),
  channels last, (rows, cols, maps, channels), so that a window of rows x cols cells is ``rows`` contiguous runs
  of bytes in a memory-mapped read. Written to a temporary name and renamed: a reader never sees a torn entry, and
  two writers of the same entry (same content) cannot corrupt it.
- ``index/<writer>.jsonl``: one line per image a writer finished, ``{"name", "digest", "orientations", "draws",
  "time"}``, appended after its entries are in place. Each writer has its own file, so processes on disjoint slices
  never share one; a line cut by a kill is ignored and its image is simply done again (its entries are found).
"""
import json
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from difflid.utils.errors import OptionError

__all__ = ['STORE_DTYPES', 'STORE_FORMAT', 'FeatureStore', 'IndexRecord', 'decode_entry', 'encode_entry',
           'identity_differences']

STORE_FORMAT = 1  # bump when the folder layout or the entry layout changes
STORE_DTYPES = {'fp16': np.float16, 'bf16': np.uint16, 'fp32': np.float32}  # bf16 bits are kept as uint16
_FP16_MAX = 65504.0
_MANIFEST = 'store.json'


def encode_entry(maps: list[torch.Tensor], dtype: str) -> np.ndarray:
    """The entry of one image: its feature maps, each (C, rows, cols), as a (rows, cols, maps, C) array in the
    store's ``dtype`` ('fp16', 'bf16' as uint16 bits, or 'fp32'). OptionError when fp16 cannot hold the values."""
    stacked = torch.stack(maps).permute(2, 3, 0, 1).contiguous()
    if dtype == 'fp16':
        peak = float(stacked.abs().max())
        if peak > _FP16_MAX:
            raise OptionError(f'prior features reach {peak:.3g}, beyond float16\'s range; set train.prior_store_dtype: '
                              'bf16 (or fp32)')
        return stacked.half().cpu().numpy()
    if dtype == 'bf16':
        return stacked.bfloat16().cpu().view(torch.int16).numpy().view(np.uint16)
    return stacked.float().cpu().numpy()


def decode_entry(array: np.ndarray, dtype: str) -> torch.Tensor:
    """``encode_entry`` undone on an entry or a window of one: (maps, C, rows, cols) float32."""
    window = torch.from_numpy(array)
    if dtype == 'bf16':
        window = window.view(torch.bfloat16)
    return window.permute(2, 3, 0, 1).float()


def identity_differences(stored: Mapping, expected: Mapping, prefix: str = '') -> list[str]:
    """'key: store X, options Y' for every leaf where two identity dicts differ (nested keys dotted)."""
    lines = []
    for key in sorted(set(stored) | set(expected), key=str):
        a, b = stored.get(key, '<absent>'), expected.get(key, '<absent>')
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            lines.extend(identity_differences(a, b, f'{prefix}{key}.'))
        elif a != b:
            lines.append(f'{prefix}{key}: store {json.dumps(a, default=str)}, options {json.dumps(b, default=str)}')
    return lines


@dataclass(frozen=True)
class IndexRecord:
    """One finished image: its ``name`` in the dataset, its pixels ``digest``, the orientations and draws stored."""

    name: str
    digest: str
    orientations: tuple[int, ...]
    draws: int
    time: float = 0.0

    def covers(self, orientations: Iterable[int], draws: int) -> bool:
        return set(orientations) <= set(self.orientations) and self.draws >= draws


class FeatureStore:
    """The store folder ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # --- manifest --------------------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / _MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict:
        """``store.json``; OptionError naming the file when it is missing, unreadable or of another format."""
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding='utf-8'))
        except FileNotFoundError:
            raise OptionError(f'{self.root}: not a feature store (no {_MANIFEST})') from None
        except (OSError, ValueError) as err:
            raise OptionError(f'{self.manifest_path}: unreadable ({err}); delete the folder and compute it again') \
                from err
        if manifest.get('format') != STORE_FORMAT:
            raise OptionError(f'{self.manifest_path}: store format {manifest.get("format")}, this difflid reads format '
                              f'{STORE_FORMAT}; delete the folder and compute it again')
        return manifest

    def create(self, identity: dict, meta: dict) -> dict:
        """Write ``store.json`` unless it exists; either way return it. OptionError when an existing store has another
        identity (the differing keys listed). Safe when several processes create the same store at once."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.exists():
            record = {'format': STORE_FORMAT, 'identity': identity, 'meta': meta}
            fd, tmp = tempfile.mkstemp(prefix='.store.', dir=self.root)
            with os.fdopen(fd, 'w', encoding='utf-8') as f:
                json.dump(record, f, indent=1, sort_keys=True, default=str)
            try:
                os.link(tmp, self.manifest_path)  # fails if another process wrote it first: theirs is kept
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        manifest = self.manifest()
        differences = identity_differences(manifest['identity'], json.loads(json.dumps(identity, default=str)))
        if differences:
            raise OptionError(f'{self.root} holds features of another configuration:\n  ' + '\n  '.join(differences))
        return manifest

    # --- entries ---------------------------------------------------------------------------------------------------
    def entry_path(self, digest: str, orientation: int, draw: int) -> Path:
        return self.root / 'entries' / digest[:2] / f'{digest}_o{orientation}_d{draw}.npy'

    def has(self, digest: str, orientation: int, draw: int) -> bool:
        return self.entry_path(digest, orientation, draw).is_file()

    def write(self, digest: str, orientation: int, draw: int, array: np.ndarray) -> int:
        """Store ``array`` (rows, cols, maps, channels) under its key, atomically; returns the bytes written."""
        path = self.entry_path(digest, orientation, draw)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f'.{path.stem}.', suffix='.tmp', dir=path.parent)
        try:
            with os.fdopen(fd, 'wb') as f:
                np.save(f, np.ascontiguousarray(array))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path.stat().st_size

    def read(self, digest: str, orientation: int, draw: int, rows: slice = slice(None),
             cols: slice = slice(None)) -> np.ndarray:
        """The window ``[rows, cols]`` of an entry, read through a memory map (only its bytes are read), as a
        writable copy (rows, cols, maps, channels). FileNotFoundError naming the entry when it is absent."""
        path = self.entry_path(digest, orientation, draw)
        array = np.load(path, mmap_mode='r')
        return np.array(array[rows, cols])

    # --- index -----------------------------------------------------------------------------------------------------
    def index_writer(self, shard: str = '') -> Path:
        """A new index file for one writing process (host, pid, shard and a random part: never shared)."""
        (self.root / 'index').mkdir(parents=True, exist_ok=True)
        tag = f'{socket.gethostname()}-{os.getpid()}-{shard}-{uuid.uuid4().hex[:8]}'.replace('/', '_')
        return self.root / 'index' / f'{tag}.jsonl'

    @staticmethod
    def append_index(path: Path, record: IndexRecord) -> None:
        line = json.dumps({'name': record.name, 'digest': record.digest, 'orientations': list(record.orientations),
                           'draws': record.draws, 'time': record.time or time.time()})
        with open(path, 'a', encoding='utf-8') as f:
            f.write(line + '\n')
            f.flush()
            os.fsync(f.fileno())

    def index(self) -> dict[str, IndexRecord]:
        """Every finished image by name (the latest record of a name wins); cut or malformed lines are skipped."""
        records: dict[str, IndexRecord] = {}
        folder = self.root / 'index'
        for path in sorted(folder.glob('*.jsonl')) if folder.is_dir() else []:
            for line in path.read_text(encoding='utf-8').splitlines():
                try:
                    raw = json.loads(line)
                    record = IndexRecord(str(raw['name']), str(raw['digest']), tuple(int(o) for o in
                                         raw['orientations']), int(raw['draws']), float(raw['time']))
                except (ValueError, KeyError, TypeError):
                    continue
                if record.name not in records or records[record.name].time <= record.time:
                    records[record.name] = record
        return records

    def bytes_on_disk(self) -> int:
        """Total size of the entries."""
        folder = self.root / 'entries'
        return sum(p.stat().st_size for p in folder.rglob('*.npy')) if folder.is_dir() else 0
