"""tools/precompute_prior.py: the frozen prior's features of every training and validation image, computed once.

``train.prior_features: precomputed`` then trains without running the prior (``PrecomputedPriorDataset``). The
same option file precomputes and trains. For every dataset of the file (train and val):

- each image whole, reflect-padded to the stride (as at test time), in both horizontal orientations when the
  training set flips (``use_hflip``), for ``train.prior_draws`` = K seeded noise draws (draw k noises with seed
  ``network_prior.seed + k``; validation sets: draw 0 only, the prior's own seeded noise, as online validation);
- stored as ``train.prior_store_dtype`` (fp16 by default; bf16 or fp32) in a ``FeatureStore`` whose folder follows
  from the dataset and the prior (``prior_store_dir``), or under ``train.prior_store``;
- resumable: every image is read and its pixels hashed, and entries already stored are not computed again (a killed
  run continues; a changed image is computed under its new hash); several processes (``--shard I/N``, or torchrun's
  RANK/WORLD_SIZE) take disjoint slices and each writes its own index file;
- the storage per image and in total is printed before starting, and the start is refused when the disk cannot
  hold it.

Device and dtype policy: the prior runs with its own ``dtype`` option on ``--device`` (``auto``: bf16 on a GPU, fp32
on the CPU); the store's identity leaves the device and compute dtype out (``prior_store_identity``), so features
made in bf16 on a GPU serve a CPU run. ``store.json`` records where they were made.
"""
import argparse
import contextlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from basicsr.data import build_dataset
from basicsr.utils import get_root_logger
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from difflid.data.precomputed_prior_dataset import PrecomputedPriorDataset, lq_names, pixels_digest
from difflid.entry.startup import prepare_options, startup_errors
from difflid.priors.base import GuidanceExtractor
from difflid.priors.builder import build_prior
from difflid.priors.cache import prior_store_dir, prior_store_identity
from difflid.utils.errors import OptionError
from difflid.utils.feature_store import STORE_DTYPES, FeatureStore, IndexRecord, encode_entry, identity_differences

__all__ = ['PRIOR_FEATURE_MODES', 'StorePlan', 'check_prior_stores', 'dataset_store', 'precompute',
           'precompute_command', 'store_plans', 'stored_dataset']

PRIOR_FEATURE_MODES = ('online', 'precomputed')
_DISK_MARGIN = 1.05
_SIZE_SAMPLE = 8
_LOG_EVERY_S = 60.0


@dataclass
class StorePlan:
    """One dataset's part of the work: its options, store, orientations and draws."""
    phase: str
    dataset_opt: dict
    store: FeatureStore
    orientations: tuple[int, ...]
    draws: int


def precompute_command(option_file: str, force_yml: list[str] | None = None) -> str:
    """The command that (re)computes the stores of an option file."""
    extra = f' --force_yml {" ".join(force_yml)}' if force_yml else ''
    return f'python tools/precompute_prior.py -opt {option_file}{extra}'


def dataset_store(opt: dict, dataset_opt: dict) -> FeatureStore:
    """The store of ``dataset_opt``'s features for ``opt['network_prior']`` (under ``train.prior_store`` or beside
    the data)."""
    return FeatureStore(prior_store_dir(opt['network_prior'], dataset_opt, (opt.get('train') or {}).get('prior_store')))


def store_plans(opt: dict) -> list[StorePlan]:
    train_opt = opt.get('train') or {}
    draws = train_opt.get('prior_draws', 1)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise OptionError(f'train.prior_draws must be an integer >= 1 (noise draws per image), got {draws!r}')
    plans = []
    for phase, dataset_opt in opt['datasets'].items():
        training = phase == 'train'
        if training and dataset_opt.get('use_rot'):
            raise OptionError('datasets.train.use_rot: true cannot be used with precomputed prior features (the store '
                              'holds the two horizontal orientations, not the eight of flips and rotations); set '
                              'use_rot: false')
        known = dataset_opt.get('type') in DATASET_REGISTRY
        refusal = getattr(DATASET_REGISTRY.get(dataset_opt['type']), 'precomputed_refusal', '') if known else ''
        if training and refusal:
            raise OptionError(f"datasets.train: {dataset_opt['type']} {refusal}; use train.prior_features: online")
        orientations = (0, 1) if training and dataset_opt.get('use_hflip') else (0,)
        plans.append(StorePlan(phase, dataset_opt, dataset_store(opt, dataset_opt), orientations,
                               draws if training else 1))
    return plans


def _check_store(store: FeatureStore, opt: dict, command: str, phase: str) -> None:
    """OptionError naming what differs when ``store`` is missing or was made for another prior."""
    if store.exists():
        differences = identity_differences(store.manifest()['identity'], prior_store_identity(opt['network_prior']))
        if not differences:
            return
        raise OptionError(f'datasets.{phase}: the store {store.root} was computed for other prior options:\n  '
                          + '\n  '.join(differences) + f'\nrun: {command}')
    siblings = sorted(p for p in store.root.parent.glob('*/store.json')) if store.root.parent.is_dir() else []
    lines = [f'datasets.{phase}: no precomputed prior features at {store.root}']
    for path in siblings[:3]:
        other = FeatureStore(path.parent)
        with contextlib.suppress(OptionError):
            differences = identity_differences(other.manifest()['identity'], prior_store_identity(opt['network_prior']))
            lines.append(f'  the store {other.root} is for other prior options: ' + '; '.join(differences[:4]))
    raise OptionError('\n'.join([*lines, f'run: {command}']))


def stored_dataset(opt: dict, phase: str, command: str) -> PrecomputedPriorDataset:
    """The dataset of ``opt['datasets'][phase]`` with its stored prior features, checked against the options (store
    present, same prior, every image there in every orientation and draw needed); OptionError ending in ``command``."""
    plan = next(p for p in store_plans(opt) if p.phase == phase)
    _check_store(plan.store, opt, command, phase)
    dataset = build_dataset({**plan.dataset_opt, 'phase': 'whole'})
    crop = plan.dataset_opt.get('gt_size') if phase == 'train' else None
    try:
        return PrecomputedPriorDataset(dataset, plan.store, crop, 1 in plan.orientations, plan.draws, phase)
    except OptionError as err:
        raise OptionError(f'{err}\nrun: {command}') from err


def check_prior_stores(opt: dict, command: str) -> list[str]:
    """With ``train.prior_features: precomputed``: every dataset's store checked as the training start checks it
    (OptionError ending in ``command`` otherwise), one line per dataset for ``--check``; nothing otherwise."""
    if (opt.get('train') or {}).get('prior_features', 'online') != 'precomputed':
        return []
    lines = []
    for phase in opt['datasets']:
        dataset = stored_dataset(opt, phase, command)
        lines.append(f'datasets.{phase}: {len(dataset)} images with stored prior features ({dataset.draws} draw(s)) '
                     f'in {dataset.store.root}')
    return lines


@contextlib.contextmanager
def _noise_seed(prior: GuidanceExtractor, seed: int) -> Iterator[None]:
    saved, prior.seed = prior.seed, seed
    try:
        yield
    finally:
        prior.seed = saved


def _first(batch: list) -> dict:
    return batch[0]


def _shard(argument: str | None) -> tuple[int, int]:
    """(index, count) from ``--shard I/N``, else torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    if argument:
        try:
            index, count = (int(v) for v in argument.split('/'))
        except ValueError:
            raise OptionError(f'--shard must be I/N (e.g. 0/4), got {argument!r}') from None
    else:
        index, count = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    if not 0 <= index < count:
        raise OptionError(f'--shard {index}/{count}: I must be in [0, N)')
    return index, count


def _human(size: float) -> str:
    for unit in ('B', 'KB', 'MB', 'GB', 'TB'):
        if size < 1000 or unit == 'TB':
            return f'{size:.1f} {unit}' if unit != 'B' else f'{size:.0f} B'
        size /= 1000
    return ''


def _run_plan(plan: StorePlan, prior: GuidanceExtractor, opt: dict, shard: tuple[int, int], device: torch.device,
              workers: int, logger) -> dict:
    """Compute and store one dataset's features for this shard; returns counts and timings."""
    train_opt = opt.get('train') or {}
    dtype = train_opt.get('prior_store_dtype', 'fp16')  # one of STORE_DTYPES: the option schema checked it
    stride, channels = prior.downsample_factor, prior.feature_channels
    meta = {'stride': stride, 'channels': channels, 'timesteps': prior.timesteps[:2], 'dtype': dtype,
            'layout': 'rows, cols, [t1, t2], channels', 'draw_seeds': f'network_prior.seed + draw ({prior.seed} + k)',
            'computed_on': f'{device.type}, {prior.dtype}'}
    dataset = build_dataset({**plan.dataset_opt, 'phase': 'whole'})  # first: a generated set writes its folder
    manifest = plan.store.create(prior_store_identity(opt['network_prior']), meta)
    if manifest['meta']['dtype'] != dtype:
        raise OptionError(f'{plan.store.root} stores {manifest["meta"]["dtype"]}, train.prior_store_dtype says {dtype}')
    names = lq_names(dataset)
    mine = list(range(shard[0], len(dataset), shard[1]))
    bytes_per_cell = 2 * channels * np.dtype(STORE_DTYPES[dtype]).itemsize * len(plan.orientations) * plan.draws
    sample = [dataset[i]['lq'].shape[-2:] for i in mine[:: max(1, len(mine) // _SIZE_SAMPLE)][:_SIZE_SAMPLE]]
    per_image = np.mean([-(-h // stride) * -(-w // stride) * bytes_per_cell for h, w in sample]) if sample else 0
    index = plan.store.index()
    done = [i for i in mine if names[i] in index and index[names[i]].covers(plan.orientations, plan.draws)]
    need = per_image * (len(mine) - len(done))
    free = shutil.disk_usage(plan.store.root).free
    logger.info(f'datasets.{plan.phase}: {len(mine)} images (shard {shard[0]}/{shard[1]}), {len(plan.orientations)} '
                f'orientation(s) x {plan.draws} draw(s) in {dtype}: {_human(per_image)} per image (mean of '
                f'{len(sample)}), {_human(per_image * len(mine))} in all, {len(done)} already indexed; '
                f'{_human(free)} free at {plan.store.root}')
    if need * _DISK_MARGIN > free:
        raise OptionError(f'{plan.store.root}: the features need about {_human(need)} more, only {_human(free)} are '
                          'free; free some space or set train.prior_store: <a folder on a larger disk>')
    writer = plan.store.index_writer(f'{shard[0]}of{shard[1]}')
    loader = DataLoader(Subset(dataset, mine), batch_size=1, num_workers=workers, collate_fn=_first)
    keys = [(o, k) for o in plan.orientations for k in range(plan.draws)]
    t1, t2 = prior.timesteps[:2]
    computed = written = 0
    start = time.perf_counter()
    compute_seconds = 0.0
    bar = tqdm(total=len(mine), unit='img', desc=f'{plan.phase}', file=sys.stderr, mininterval=1.0,
               disable=None if sys.stderr.isatty() else True)
    logged = start
    for count, (position, item) in enumerate(zip(mine, loader, strict=True), 1):
        name, lq = names[position], item['lq']
        digest = pixels_digest(lq)
        record = index.get(name)
        if not all(plan.store.has(digest, o, k) for o, k in keys):
            tic = time.perf_counter()
            for orientation in plan.orientations:  # one image per pass: the very numbers a test-time pass gives
                image = (lq.flip(-1) if orientation else lq)[None].to(device)
                for draw in range(plan.draws):
                    with _noise_seed(prior, opt['network_prior'].get('seed', 0) + draw):
                        feats = prior(image)
                        array = encode_entry([feats[t1][0], feats[t2][0]], dtype)
                    written += plan.store.write(digest, orientation, draw, array)
            compute_seconds += time.perf_counter() - tic
            computed += 1
        if record is None or record.digest != digest or not record.covers(plan.orientations, plan.draws):
            plan.store.append_index(writer, IndexRecord(name, digest, plan.orientations, plan.draws))
        bar.update()
        if bar.disable and time.perf_counter() - logged > _LOG_EVERY_S:  # a log line where no bar is drawn
            logged = time.perf_counter()
            logger.info(f'datasets.{plan.phase}: {count}/{len(mine)} images, {computed / compute_seconds:.2f} '
                        f'images/s' if compute_seconds else f'datasets.{plan.phase}: {count}/{len(mine)} images')
    bar.close()
    seconds = time.perf_counter() - start
    rate = computed / compute_seconds if compute_seconds else 0.0
    logger.info(f'datasets.{plan.phase}: {computed} images computed ({rate:.2f} images/s of prior time), '
                f'{len(mine) - computed} already stored, {_human(written)} written in {seconds:.1f} s to '
                f'{plan.store.root}')
    return {'phase': plan.phase, 'images': len(mine), 'computed': computed, 'bytes_written': written,
            'seconds': seconds, 'images_per_second': rate, 'store': str(plan.store.root)}


def precompute(root: str | Path, argv: list[str]) -> list[dict]:
    """tools/precompute_prior.py with ``argv``; returns one summary per dataset."""
    parser = argparse.ArgumentParser(prog='tools/precompute_prior.py', add_help=False)
    parser.add_argument('--shard', default=None, help='I/N: this process computes images I, I+N, ... (default: '
                        "torchrun's RANK/WORLD_SIZE, else all)")
    parser.add_argument('--device', default=None, help='cuda, cuda:1 or cpu (default: the GPU of LOCAL_RANK if '
                        'there is one)')
    parser.add_argument('--workers', type=int, default=None, help='loader workers (default: the training set\'s '
                        'num_worker_per_gpu)')
    own, rest = parser.parse_known_args(argv)
    with startup_errors():
        run = prepare_options(rest, root, is_train=True)
        opt = run.opt
        shard = _shard(own.shard)
        plans = store_plans(opt)
    if own.device:
        device = torch.device(own.device)
    elif torch.cuda.is_available():
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
    else:
        device = torch.device('cpu')
    if run.args.check:
        for plan in plans:
            print(f'datasets.{plan.phase}: {len(plan.orientations)} orientation(s) x {plan.draws} draw(s) -> '
                  f'{plan.store.root}')
        return []
    logger = get_root_logger()
    logger.setLevel(logging.INFO if shard[0] == 0 else logging.WARNING)
    for note in run.notes:
        logger.info(note)
    workers = own.workers if own.workers is not None else int(opt['datasets']['train'].get('num_worker_per_gpu', 0))
    with startup_errors():
        prior = build_prior(opt['network_prior']).to(device)
    logger.info(f'Prior {opt["network_prior"]["type"]} on {device} ({prior.dtype}): {prior.feature_channels} channels '
                f'at stride {prior.downsample_factor}, t = {prior.timesteps[:2]}')
    return [_run_plan(plan, prior, opt, shard, device, workers, logger) for plan in plans]
