"""Cached guidance features of the frozen prior, for validation and test.

Validation and test noise every image with the prior's seeded, position-indexed noise (``fresh_noise=False``), so
the prior's features of a validation image (or tile) are the same at every validation of a run: only ``net_g``
changes. ``CachedGuidance`` wraps a prior with the interface ``difflid.inference.restore`` uses and computes each
image's features once. Training draws fresh noise and always bypasses it.

An entry's key hashes the input tensor (bytes, shape, dtype), its origin (a tile's position, which selects its
window of the noise), the autocast in force, and ``prior_cache_key``: the prior's options, the size and time of its
weight files, the device type and dtype, and the code that computes the features (``feature_code_digest``). Files that
another configuration wrote are therefore never read, only ignored.
"""
import hashlib
import json
import math
import pickle
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from basicsr.utils import get_root_logger

from difflid.priors.base import PRIOR_DEFAULTS, GuidanceExtractor
from difflid.priors.builder import prior_class
from difflid.utils.checkpoint_io import atomic_torch_save, weights_stamp
from difflid.utils.options import option_defaults
from difflid.version import __version__

__all__ = ['CacheStats', 'CachedGuidance', 'feature_code_digest', 'prior_cache_key', 'prior_store_dir',
           'prior_store_identity']

_FORMAT = 1  # bump when the entry layout or the key's recipe changes
_MB = 2 ** 20
_NOT_FEATURE_CODE = ('cache.py', 'sampling.py')
# options that choose how the prior runs, not what it computes (up to rounding): a store serves any of them
_EXECUTION_OPTIONS = ('dtype', 'channels_last', 'compile')


@cache
def feature_code_digest() -> str:
    """sha256 of the code that computes a prior's features: the prior family's source files (``difflid/priors/``:
    members, base, builder, noise, schedules; not this caching module nor the sampler, which compute no features)
    and difflid's padding. A feature cache or store keyed on it is never served features of older code, while an
    unrelated edit elsewhere in the package keeps it valid."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    sources = [p for p in package.joinpath('priors').rglob('*.py') if p.name not in _NOT_FEATURE_CODE]
    for path in sorted([*sources, package / 'utils' / 'padding.py']):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def prior_cache_key(prior_opt: dict, device: torch.device | str, dtype: torch.dtype | str) -> str:
    """Digest of everything a prior's seeded features depend on besides the input.

    Args:
        prior_opt: The ``network_prior`` block the prior was built from (with the keys the model changed).
        device: Where the prior runs: CPU and GPU features differ in their last bits.
        dtype: The precision the prior computes in.
    """
    payload = {
        'format': _FORMAT, 'options': prior_opt, 'weights': weights_stamp(prior_opt),
        'device': torch.device(device).type, 'dtype': str(dtype),
        'difflid': __version__, 'code': feature_code_digest(), 'torch': torch.__version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def prior_store_identity(prior_opt: dict) -> dict:
    """What a store of precomputed features (``difflid.utils.feature_store``) depends on besides the images: the
    prior's options with their defaults (network, schedule, timesteps, seed), its weight files' stamp and the feature
    code (``feature_code_digest``). Not the device, the compute dtype, channels_last or compile (the execution
    options), nor difflid's or torch's version: features computed in bf16 on a GPU serve a CPU run, and an edit
    elsewhere in the package keeps a GPU-day of features valid. The store's format version is the store's own."""
    cls = prior_class(prior_opt)
    full = {**option_defaults(cls, dict(PRIOR_DEFAULTS)), **prior_opt}
    options = {k: v for k, v in full.items() if k not in _EXECUTION_OPTIONS}
    return json.loads(json.dumps({'prior': options, 'weights': weights_stamp(prior_opt),
                                  'feature_code': feature_code_digest()}, sort_keys=True, default=str))


def prior_store_dir(prior_opt: dict, dataset_opt: dict, store_root: str | Path | None = None) -> Path:
    """Where the precomputed features of one dataset for one prior live: ``<store_root>/<dataset name>/``
    (``train.prior_store``) or the dataset's own folder (``dataroot``, ``dataroot_lq`` or the pair list's folder) +
    ``prior_features/``, then ``<prior type>_<12 hex of prior_store_identity>``. Never the run's name: every run with
    this prior (Table 2/3 ablations, renamed runs) finds the same store, and another prior gets its own folder beside
    it. Each dataset has its own store: their image names may coincide."""
    if store_root is not None:
        store_root = Path(store_root) / re.sub(r'[^\w.-]', '_', str(dataset_opt.get('name', 'dataset')))
    else:
        for key in ('dataroot', 'dataroot_lq'):
            if isinstance(dataset_opt.get(key), str):
                store_root = Path(dataset_opt[key]) / 'prior_features'
                break
        else:
            if not isinstance(dataset_opt.get('meta_info_file'), str):
                raise ValueError(f"dataset {dataset_opt.get('name')}: no dataroot to keep precomputed prior features "
                                 'beside; set train.prior_store: <folder>')
            store_root = Path(dataset_opt['meta_info_file']).parent / 'prior_features'
    digest = hashlib.sha256(json.dumps(prior_store_identity(prior_opt), sort_keys=True).encode()).hexdigest()
    return Path(store_root) / f"{prior_opt['type']}_{digest[:12]}"


@dataclass
class CacheStats:
    """Counts since the cache was built: ``hits`` (from memory or disk; ``disk_reads`` of them from disk),
    ``misses`` (the prior ran), ``disk_writes`` (entries spilled to disk), ``bypassed`` (fresh-noise calls)."""

    hits: int = 0
    misses: int = 0
    disk_reads: int = 0
    disk_writes: int = 0
    bypassed: int = 0


Features = tuple[torch.Tensor, torch.Tensor]


class CachedGuidance:
    """A prior whose seeded guidance features are computed once per input; the same ``guidance`` interface.

    Entries stay in memory, on the CPU, while their total stays within ``memory_mb``; later entries are written
    to ``disk_dir`` (one file per entry), or, without one, recomputed at every call. Nothing is evicted: a
    validation set is visited in the same order every time, where evicting the oldest entry would turn every
    lookup into a miss.

    Args:
        prior: The frozen feature source.
        key: ``prior_cache_key`` of the prior: part of every entry's key.
        memory_mb: Memory budget for the entries, in MiB (0: none in memory).
        disk_dir: Folder for the entries beyond the budget; created at the first one. None: recompute them.
    """

    def __init__(self, prior: GuidanceExtractor, key: str, memory_mb: float = 2048,
                 disk_dir: str | Path | None = None) -> None:
        if isinstance(memory_mb, bool) or not isinstance(memory_mb, int | float) or not 0 <= memory_mb < math.inf:
            raise ValueError(f'CachedGuidance: memory_mb must be a number of MiB >= 0, got {memory_mb!r}')
        self.prior = prior
        self.key = key
        self.memory_budget = int(memory_mb * _MB)
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self.stats = CacheStats()
        self.memory_bytes = 0
        self._memory: dict[str, Features] = {}
        self._full_logged = False

    @property
    def downsample_factor(self) -> int:
        return self.prior.downsample_factor

    @property
    def feature_channels(self) -> int:
        return self.prior.feature_channels

    @property
    def memory_entries(self) -> int:
        """Entries held in memory (a property, not ``__len__``: an empty cache must not test false like no prior)."""
        return len(self._memory)

    def entry_key(self, img: torch.Tensor, origin: tuple[int, int]) -> str:
        """sha256 of the input's bytes, shape and dtype, the origin, the autocast in force and the prior's key."""
        device_type = img.device.type
        amp = str(torch.get_autocast_dtype(device_type)) if torch.is_autocast_enabled(device_type) else None
        meta = {'shape': list(img.shape), 'dtype': str(img.dtype), 'origin': origin, 'autocast': amp,
                'prior': self.key}
        digest = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
        data = img.detach().contiguous().cpu().reshape(-1)
        digest.update(data.view(torch.uint8).numpy())
        return digest.hexdigest()

    def guidance(self, img: torch.Tensor, fresh_noise: bool = False,
                 origin: tuple[int, int] = (0, 0)) -> Features:
        """(f_cim, f_hae) of ``img`` as ``prior.guidance`` gives them, from the cache when seeded noise is asked for."""
        if fresh_noise:
            self.stats.bypassed += 1
            return self.prior.guidance(img, fresh_noise=True, origin=origin)
        key = self.entry_key(img, origin)
        feats = self._memory[key] if key in self._memory else self._read(key)
        if feats is not None:
            self.stats.hits += 1
            # a copy even on the CPU: a caller that writes into the features must not change the cache
            return tuple(f.to(img.device, copy=True) for f in feats)
        self.stats.misses += 1
        feats = self.prior.guidance(img, fresh_noise=False, origin=origin)
        self._store(key, feats)
        return feats

    def _path(self, key: str) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / f'{key}.pt'

    def _read(self, key: str) -> Features | None:
        if self.disk_dir is None or not self._path(key).is_file():
            return None
        try:
            stored = torch.load(self._path(key), map_location='cpu', weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
            get_root_logger().warning(f'prior cache: cannot read {self._path(key)} ({err}); recomputing it')
            return None
        if not isinstance(stored, dict) or stored.get('key') != key:
            return None
        self.stats.disk_reads += 1
        return stored['f_cim'], stored['f_hae']

    def _store(self, key: str, feats: Features) -> None:
        cpu = tuple(f.detach().to('cpu', copy=True) for f in feats)
        size = sum(f.numel() * f.element_size() for f in cpu)
        if self.memory_bytes + size <= self.memory_budget:
            self._memory[key] = cpu
            self.memory_bytes += size
            return
        if not self._full_logged:
            self._full_logged = True
            where = f'spilling to {self.disk_dir}' if self.disk_dir else 'recomputing the rest at every validation'
            get_root_logger().info(f'prior cache: memory budget of {self.memory_budget / _MB:g} MiB '
                                   f'({len(self._memory)} entries) is full, {where}')
        if self.disk_dir is None:
            return
        try:
            self.disk_dir.mkdir(parents=True, exist_ok=True)
            atomic_torch_save({'key': key, 'f_cim': cpu[0], 'f_hae': cpu[1]}, self._path(key))
        except OSError as err:  # a full disk must not stop a training run: recompute instead
            get_root_logger().warning(f'prior cache: cannot write to {self.disk_dir} ({err}); entries beyond the '
                                      'memory budget are recomputed from now on')
            self.disk_dir = None
            return
        self.stats.disk_writes += 1
