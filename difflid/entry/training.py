"""tools/train.py: basicsr's training loop rebuilt from its parts, with what ``train_pipeline`` cannot give.

Same options and outputs as basicsr 1.4.2's ``train_pipeline`` (``experiments/<name>/``: ``models/net_g_<iter>.pth``,
``training_states/<iter>.state``, ``train_<name>_<time>.log`` and the option file; ``tb_logger/<name>``), and:

- nothing is created or moved before the options, the dataset files, the datasets and the model are built;
- SIGINT/SIGTERM finish the iteration, save, print how to resume and exit 130/143 (``signals.StopRequest``);
- a training state also holds every random state and the position in the epoch, so that a resumed run continues
  the uninterrupted one exactly (``ResumableSampler``/``SeededDataset``; validation leaves the random streams alone);
- the epoch count comes from the loader's real length (it drops the last incomplete batch; 1.4.2 rounds up), the
  eta is never negative, and the last validation is labelled with the last iteration (1.4.2 counts past it).
"""
import datetime
import math
import random
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from os import path as osp
from pathlib import Path

import numpy as np
import torch
import yaml
from basicsr.data import build_dataloader, build_dataset
from basicsr.data.prefetch_dataloader import CPUPrefetcher, CUDAPrefetcher
from basicsr.models import build_model
from basicsr.train import init_tb_loggers
from basicsr.utils import AvgTimer, MessageLogger, get_time_str
from basicsr.utils.dist_util import master_only
from torch import distributed as dist

from difflid.data.sampler import ResumableSampler, SeededDataset, ignore_stop_signals, preserved_random_state
from difflid.entry.precompute import PRIOR_FEATURE_MODES, check_prior_stores, precompute_command, stored_dataset
from difflid.entry.signals import StopRequest
from difflid.entry.startup import (
    RunOptions,
    StartupLog,
    begin,
    load_resume_state,
    prepare_folders,
    resume_command,
)
from difflid.models.base_restoration import RestorationModel
from difflid.utils.checkpoint_io import atomic_open, atomic_torch_save, latest_weights_name
from difflid.utils.errors import OptionError

__all__ = ['TrainData', 'TrainingMessages', 'create_train_val_loaders', 'restore_rng_state', 'rng_state', 'train']


@dataclass
class TrainData:
    """The training loader and what the loop needs to know about it, and the validation loaders."""
    loader: torch.utils.data.DataLoader
    sampler: ResumableSampler
    dataset: SeededDataset
    val_loaders: list
    per_epoch: int
    total_epochs: int
    total_iters: int


def create_train_val_loaders(opt: dict, logger, precompute: str = 'python tools/precompute_prior.py -opt <file>'
                             ) -> TrainData:
    """basicsr's loaders (``build_dataset``/``build_dataloader``) with the resumable sampler and the seeded dataset;
    the epoch count from the loader's real (drop_last) length. With ``train.prior_features: precomputed`` every
    dataset reads its prior features from its store (``stored_dataset``; a missing or mismatched store is an
    OptionError ending in ``precompute``, the command that fixes it)."""
    train, val_loaders = None, []
    mode = (opt.get('train') or {}).get('prior_features', 'online')
    if mode not in PRIOR_FEATURE_MODES:
        raise OptionError(f'train.prior_features must be one of {list(PRIOR_FEATURE_MODES)}, got {mode!r}')
    if mode == 'precomputed' and 'network_prior' not in opt:
        raise OptionError('train.prior_features: precomputed needs a network_prior (the features of which prior?)')

    def dataset_of(phase: str, dataset_opt: dict):
        return stored_dataset(opt, phase, precompute) if mode == 'precomputed' else build_dataset(dataset_opt)

    for phase, dataset_opt in opt['datasets'].items():
        if phase == 'train':
            ratio = dataset_opt.get('dataset_enlarge_ratio', 1)
            if dataset_opt.get('prefetch_mode') == 'cpu' and not dataset_opt.get('num_worker_per_gpu'):
                # basicsr's CPU prefetcher would then load samples in a thread beside training, where seeding them
                # would race with the training's random streams; without workers it has nothing to overlap anyway
                logger.warning('datasets.train.prefetch_mode cpu without loader workers: the plain loader is used')
                dataset_opt = {**dataset_opt, 'prefetch_mode': None}
                opt['datasets']['train'] = dataset_opt
            dataset = SeededDataset(dataset_of(phase, dataset_opt), opt['manual_seed'])
            order = getattr(dataset.dataset, 'epoch_order', None)  # a mix of datasets orders its own epochs
            sampler = ResumableSampler(dataset, opt['world_size'], opt['rank'], ratio,
                                       order=partial(order, seed=opt['manual_seed']) if order else None)
            loader = build_dataloader(dataset, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'], sampler=sampler,
                                      seed=opt['manual_seed'])
            loader.worker_init_fn = ignore_stop_signals  # SeededDataset seeds each sample; workers need no seed
            loader.generator = torch.Generator()  # a new iterator draws its base seed here, not from torch's stream
            per_epoch = len(loader)
            if per_epoch == 0:
                raise OptionError(f"datasets.train: {len(sampler)} samples per process are fewer than the batch "
                                  f"({dataset_opt['batch_size_per_gpu']} per process), so no full batch exists; lower "
                                  'the batch size or raise dataset_enlarge_ratio')
            total_iters = int(opt['train']['total_iter'])
            total_epochs = math.ceil(total_iters / per_epoch)
            logger.info('Training statistics:'
                        f'\n\tNumber of train images: {len(dataset)}'
                        f'\n\tDataset enlarge ratio: {ratio}'
                        f'\n\tBatch size per gpu: {dataset_opt["batch_size_per_gpu"]}'
                        f'\n\tWorld size (gpu number): {opt["world_size"]}'
                        f'\n\tRequire iter number per epoch: {per_epoch} (the last incomplete batch is dropped)'
                        f'\n\tTotal epochs: {total_epochs}; iters: {total_iters}.')
            train = (loader, sampler, dataset, per_epoch, total_epochs, total_iters)
        elif phase.split('_')[0] == 'val':
            val_set = dataset_of(phase, dataset_opt)
            val_loaders.append(build_dataloader(val_set, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'],
                                                sampler=None, seed=opt['manual_seed']))
            logger.info(f'Number of val images/folders in {dataset_opt["name"]}: {len(val_set)}')
        else:
            raise OptionError(f"datasets.{phase}: a phase must be 'train' or start with 'val'")
    if train is None:
        raise OptionError('datasets: a training run needs a datasets.train block')
    loader, sampler, dataset, per_epoch, total_epochs, total_iters = train
    return TrainData(loader, sampler, dataset, val_loaders, per_epoch, total_epochs, total_iters)


# --- random states ---------------------------------------------------------------------------------------------------
def rng_state() -> dict:
    """Python's, NumPy's and torch's (CPU and every GPU) random states, in types ``torch.load(weights_only=True)``
    reads back."""
    np_kind, np_key, *np_rest = np.random.get_state()
    return {'python': random.getstate(), 'numpy': (np_kind, torch.from_numpy(np_key.astype(np.int64)), *np_rest),
            'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng_state(state: dict) -> None:
    np_kind, np_key, *np_rest = state['numpy']
    random.setstate(state['python'])
    np.random.set_state((np_kind, np_key.numpy().astype(np.uint32), *np_rest))
    torch.set_rng_state(state['torch'])
    if state['cuda'] and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state['cuda']])


def _all_rng_states(opt: dict) -> list[dict]:
    """Every rank's random states (rank 0 writes the file): a collective under torch.distributed."""
    if not opt['dist']:
        return [rng_state()]
    states = [None] * opt['world_size']
    dist.all_gather_object(states, rng_state())
    return states


@contextmanager
def _random_streams_kept() -> Iterator[None]:
    """Validation draws nothing from the training's random streams, so a run continues the same whatever it
    validates (and a resumed run, which skips the validation before its state was saved, matches)."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with preserved_random_state(), torch.random.fork_rng(devices=cuda):
        yield


# --- logging ---------------------------------------------------------------------------------------------------------
class TrainingMessages(MessageLogger):
    """basicsr's training log line; the eta is the mean time of the iterations this process ran times the
    iterations left (1.4.2's is negative, ``-1 day, 23:59:53``, at the last iteration, and off after a resume)."""

    @master_only
    def __call__(self, log_vars: dict) -> None:
        log_vars = dict(log_vars)
        epoch, current_iter, lrs = log_vars.pop('epoch'), log_vars.pop('iter'), log_vars.pop('lrs')
        message = f'[{self.exp_name[:5]}..][epoch:{epoch:3d}, iter:{current_iter:8,d}, lr:('
        message += ''.join(f'{lr:.3e},' for lr in lrs) + ')] '
        if 'time' in log_vars:
            iter_time, data_time = log_vars.pop('time'), log_vars.pop('data_time')
            message += f'[eta: {self.eta(current_iter)}, time (data): {iter_time:.3f} ({data_time:.3f})] '
        for key, value in log_vars.items():
            message += f'{key}: {value:.4e} '
            if self.use_tb_logger and 'debug' not in self.exp_name:
                self.tb_logger.add_scalar(f'losses/{key}' if key.startswith('l_') else key, value, current_iter)
        self.logger.info(message)

    def eta(self, current_iter: int, now: float | None = None) -> str:
        done = current_iter - self.start_iter
        elapsed = (time.time() if now is None else now) - self.start_time
        left = max(self.max_iters - current_iter, 0) * elapsed / done if done > 0 else 0
        return str(datetime.timedelta(seconds=int(left)))


@master_only
def _write_options(run: RunOptions) -> None:
    """The options this run used (``_base_`` merged, ``--force_yml`` applied) and its command, in the run folder."""
    path = osp.join(run.opt['path']['experiments_root'], osp.basename(run.args.opt))
    header = f'# GENERATE TIME: {time.asctime()}\n# CMD:\n# {" ".join(sys.argv)}\n\n'
    with atomic_open(path, 'w') as f:
        f.write(header + yaml.safe_dump(run.raw, sort_keys=False, allow_unicode=True))


# --- checkpoints -----------------------------------------------------------------------------------------------------
def save_checkpoint(model, opt: dict, epoch: int, current_iter: int, epoch_iters: int) -> None:
    """net_g (+ EMA) and the training state of ``current_iter``; the state also holds every rank's random states,
    the data seed and the iterations done in ``epoch`` (``resume``), which an exact resume needs."""
    extra = {'resume': {'epoch_iters': epoch_iters, 'data_seed': opt['manual_seed'], 'rng': _all_rng_states(opt)}}
    if isinstance(model, RestorationModel):
        model.training_state_extra = extra
        model.save(epoch, current_iter)
        return
    model.save(epoch, current_iter)  # a basicsr model writes basicsr's state: add the resume block to it
    if opt['rank'] == 0:
        path = osp.join(opt['path']['training_states'], f'{current_iter}.state')
        atomic_torch_save({**torch.load(path, weights_only=True), **extra}, path)


def _resume_position(state: dict, opt: dict, per_epoch: int, logger) -> tuple[int, int]:
    """(epoch, iterations done in it) to continue from, with the random states restored; a state written before
    exact resume existed restarts its epoch, as basicsr does."""
    resume = state.get('resume')
    if not resume:
        logger.warning('this training state has no random states or epoch position (written by an older version): '
                       'the run continues, but not as the uninterrupted run would have')
        return state['epoch'], 0
    rng = resume['rng']
    if len(rng) != opt['world_size']:
        logger.warning(f'the state was written by {len(rng)} processes and {opt["world_size"]} resume it: the data '
                       'order and augmentations continue exactly, the random streams of the processes do not')
    else:
        restore_rng_state(rng[opt['rank']])
    opt['manual_seed'] = resume['data_seed']
    epoch, done = state['epoch'], resume['epoch_iters']
    return (epoch + 1, 0) if done >= per_epoch else (epoch, done)


# --- the run ---------------------------------------------------------------------------------------------------------
def train(root: str | Path, argv: list[str]) -> None:
    """tools/train.py with ``argv`` (its arguments) and ``root`` (where experiments/ and tb_logger/ go).

    Raises OptionError/FileNotFoundError for a run that cannot start, before creating or moving anything;
    SystemExit(128 + signal) after a SIGINT/SIGTERM has been handled.
    """
    run = begin(root, argv, is_train=True, check_lines=lambda run: check_prior_stores(
        run.opt, precompute_command(run.args.opt, run.args.force_yml)))
    if run is None:  # --check
        return
    opt = run.opt
    log = StartupLog()
    logger = log.logger
    with log.building(run):
        state, data, model, start = _build(run, logger)
    moved = prepare_folders(opt, resumed=state is not None)
    _write_options(run)
    log.attach_file(osp.join(opt['path']['log'], f"train_{opt['name']}_{get_time_str()}.log"))
    for line in moved:
        logger.warning(line)
    tb_logger = init_tb_loggers(opt)
    try:
        _loop(run, model, data, *start, tb_logger, logger)
    finally:
        if tb_logger:
            tb_logger.close()


def _build(run: RunOptions, logger) -> tuple[dict | None, TrainData, object, tuple[int, int, int]]:
    """The resume state (or None), the loaders, the model and where to start (epoch, iteration, iterations done in
    the epoch): everything that can fail on the options, before any folder exists."""
    opt = run.opt
    state = load_resume_state(opt)
    data = create_train_val_loaders(opt, logger, precompute_command(run.args.opt, run.args.force_yml))
    model = build_model(opt)
    if state is None:
        return None, data, model, (0, 0, 0)
    model.resume_training(state)
    logger.info(f"Resuming training from epoch: {state['epoch']}, iter: {state['iter']}.")
    epoch, epoch_iters = _resume_position(state, opt, data.per_epoch, logger)
    data.dataset.seed = opt['manual_seed']
    return state, data, model, (epoch, state['iter'], epoch_iters)


def _prefetcher(opt: dict, loader):
    mode = opt['datasets']['train'].get('prefetch_mode')
    if mode in (None, 'cpu'):
        return CPUPrefetcher(loader)
    if mode == 'cuda':
        if opt['datasets']['train'].get('pin_memory') is not True:
            raise OptionError('datasets.train.prefetch_mode cuda needs pin_memory: true')
        return CUDAPrefetcher(loader, opt)
    raise OptionError(f"datasets.train.prefetch_mode must be ~, 'cpu' or 'cuda', got {mode!r}")


def _loop(run: RunOptions, model, data: TrainData, epoch: int, current_iter: int, epoch_iters: int,
          tb_logger, logger) -> None:
    opt = run.opt
    train_opt, logger_opt, val_opt = opt['train'], opt['logger'], opt.get('val')
    batch_per_process = opt['datasets']['train']['batch_size_per_gpu']
    prefetcher = _prefetcher(opt, data.loader)
    messages = TrainingMessages(opt, current_iter, tb_logger)
    stop = StopRequest()
    stop.install()
    logger.info(f'Start training from epoch: {epoch}, iter: {current_iter}')
    data_timer, iter_timer = AvgTimer(), AvgTimer()
    start_time = time.time()
    validated_at = None

    def validate() -> None:
        nonlocal validated_at
        with _random_streams_kept():
            for val_loader in data.val_loaders:
                model.validation(val_loader, current_iter, tb_logger, val_opt['save_img'])
            if hasattr(model, 'report_summary'):  # per-task columns and their average (all-in-one)
                model.report_summary(current_iter, tb_logger)
        validated_at = current_iter

    try:
        while current_iter < data.total_iters:
            data.sampler.set_epoch(epoch, start=epoch_iters * batch_per_process)
            prefetcher.reset()
            batch = prefetcher.next()
            while batch is not None and current_iter < data.total_iters:
                data_timer.record()
                current_iter += 1
                epoch_iters += 1
                model.update_learning_rate(current_iter, warmup_iter=train_opt.get('warmup_iter', -1))
                model.feed_data(batch)
                model.optimize_parameters(current_iter)
                iter_timer.record()
                if current_iter % logger_opt['print_freq'] == 0:
                    messages({'epoch': epoch, 'iter': current_iter, 'lrs': model.get_current_learning_rate(),
                              'time': iter_timer.get_avg_time(), 'data_time': data_timer.get_avg_time(),
                              **model.get_current_log()})
                saved = current_iter % logger_opt['save_checkpoint_freq'] == 0
                if saved:
                    logger.info('Saving models and training states.')
                    save_checkpoint(model, opt, epoch, current_iter, epoch_iters)
                if val_opt is not None and current_iter % val_opt['val_freq'] == 0:
                    validate()
                signum = stop.agreed(model.device)
                if signum:
                    if not saved:
                        save_checkpoint(model, opt, epoch, current_iter, epoch_iters)
                    _report_stop(run, signum, current_iter, logger)
                    raise SystemExit(128 + signum)
                data_timer.start()
                iter_timer.start()
                batch = prefetcher.next() if current_iter < data.total_iters else None
            if batch is None:
                epoch, epoch_iters = epoch + 1, 0
    finally:
        stop.uninstall()
    logger.info(f'End of training. Time consumed: {datetime.timedelta(seconds=int(time.time() - start_time))}')
    logger.info('Save the latest model.')
    model.save(epoch=-1, current_iter=-1)  # -1 stands for the latest
    if val_opt is not None and validated_at != current_iter:
        validate()


def _report_stop(run: RunOptions, signum: int, current_iter: int, logger) -> None:
    """The one line a stopped run prints (rank 0): the iteration, where its checkpoint is, how to continue."""
    if run.opt['rank'] != 0:
        return
    paths = run.opt['path']
    line = (f'{signal.Signals(signum).name}: stopped after iteration {current_iter}; saved '
            f"{osp.join(paths['models'], latest_weights_name(run.opt, str(current_iter)))} and "
            f"{osp.join(paths['training_states'], f'{current_iter}.state')}; continue with: "
            f"{resume_command(run.args, run.opt['world_size'])}")
    logger.warning(line)
