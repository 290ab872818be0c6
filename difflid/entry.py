"""What tools/train.py and tools/test.py change in basicsr 1.4.2, and only while its pipeline runs.

``import difflid`` leaves basicsr's functions alone (a process that imports difflid for an arch keeps
basicsr's own behaviour). The tools run ``train_pipeline``/``test_pipeline`` inside ``patched_basicsr()``,
which swaps these in and puts basicsr's originals back afterwards:

1. ``load_resume_state``: training states load onto the CPU when there is no GPU (1.4.2 calls
   ``torch.cuda.current_device()``), and ``--auto_resume`` looks under the run's experiment folder rather
   than ``./experiments`` of the working directory.
2. ``init_dist`` (called by ``parse_options``): gloo and no CUDA call without a GPU, NCCL on ``LOCAL_RANK``'s
   device otherwise.
3. ``parse_options`` then ``translate_options``: ``datasets.train.total_batch_size`` (the batch of one
   optimizer step, whatever the number of processes) becomes basicsr's ``batch_size_per_gpu``, a
   difflid model asked to train under DataParallel is refused before anything is built, and
   ``prefetch_mode: cuda`` (the GPU recipes) falls back to the plain loader on a machine without a GPU
   (and ``persistent_workers`` is dropped where there are no workers).
4. ``create_train_val_dataloader``: the epoch count comes from the loader's real length. basicsr's loader
   drops the last incomplete batch but 1.4.2 counts epochs with the rounded-up length, so a run could end
   before ``total_iter`` (LOL-v1 at batch 40: 12 iterations per epoch, counted as 13).

DDP of CPU networks (no ``device_ids``) and the DataParallel policy live in ``RestorationModel.model_to_device``.
"""
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from os import path as osp

import basicsr.test
import basicsr.train
import basicsr.utils.options
import torch
from basicsr.utils import check_resume, scandir
from basicsr.utils.registry import MODEL_REGISTRY
from torch import distributed as dist

from difflid.models.base_restoration import RestorationModel
from difflid.utils.errors import OptionError, data_parallel_message

__all__ = ['OptionError', 'data_parallel_message', 'init_dist', 'load_resume_state', 'patched_basicsr',
           'translate_options']

_ORIGINAL_CREATE_LOADERS = basicsr.train.create_train_val_dataloader


def load_resume_state(opt: dict) -> dict | None:
    """basicsr's resume lookup, CPU-safe and independent of the current working directory."""
    state_path = None
    if opt['auto_resume']:
        states_dir = osp.join(opt['path']['experiments_root'], 'training_states')
        names = scandir(states_dir, suffix='state') if osp.isdir(states_dir) else []
        iters = [int(name.split('.')[0]) for name in names]
        if iters:
            state_path = osp.join(states_dir, f'{max(iters)}.state')
            opt['path']['resume_state'] = state_path
    elif opt['path'].get('resume_state'):
        state_path = opt['path']['resume_state']
    if state_path is None:
        return None
    if opt['num_gpu'] != 0 and torch.cuda.is_available():
        location = torch.device('cuda', torch.cuda.current_device())
    else:
        location = torch.device('cpu')
    state = torch.load(state_path, map_location=location, weights_only=True)
    check_resume(opt, state['iter'])
    return state


def init_dist(launcher: str, backend: str | None = None, **kwargs) -> None:
    """Initialise torch.distributed from the launcher's environment: NCCL on GPUs, gloo on the CPU."""
    if torch.multiprocessing.get_start_method(allow_none=True) is None:
        torch.multiprocessing.set_start_method('spawn')
    if launcher == 'slurm':
        port = kwargs.pop('port', None)
        _env_from_slurm(port)
    elif launcher != 'pytorch':
        raise ValueError(f"launcher must be 'pytorch' or 'slurm', got {launcher!r}")
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count())
    dist.init_process_group(backend=backend or ('nccl' if on_gpu else 'gloo'), **kwargs)


def _env_from_slurm(port: int | None) -> None:
    import subprocess

    node_list = os.environ['SLURM_NODELIST']
    os.environ['MASTER_ADDR'] = subprocess.getoutput(f'scontrol show hostname {node_list} | head -n1')
    os.environ['MASTER_PORT'] = str(port or os.environ.get('MASTER_PORT', 29500))
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')


def translate_options(opt: dict) -> dict:
    """Turn basicsr's parsed options into what its pipeline reads; changes ``opt`` in place and returns it.

    ``datasets.train.total_batch_size: B`` is split over the processes (``world_size`` under a launcher) or,
    without a launcher, over the GPUs DataParallel would use, into ``batch_size_per_gpu``; so the option file
    means the same recipe on any number of GPUs. Raises OptionError when B does not divide, when both keys are
    given, or when a difflid model would train under DataParallel.
    """
    train_set = (opt.get('datasets') or {}).get('train')
    if train_set is not None and 'total_batch_size' in train_set:
        total = train_set['total_batch_size']
        if 'batch_size_per_gpu' in train_set:
            raise OptionError('datasets.train sets both total_batch_size and batch_size_per_gpu; keep one '
                              '(total_batch_size is the batch of one optimizer step, split over the processes)')
        replicas = opt['world_size'] if opt['dist'] else max(int(opt['num_gpu']), 1)
        if not isinstance(total, int) or isinstance(total, bool) or total < 1 or total % replicas:
            raise OptionError(f'datasets.train.total_batch_size: {total!r} does not split evenly over {replicas} '
                              f'{"processes" if opt["dist"] else "GPUs"}; use a positive multiple of {replicas} '
                              'or another number of GPUs')
        train_set['batch_size_per_gpu'] = total // replicas
    if train_set is not None and train_set.get('prefetch_mode') == 'cuda' and int(opt['num_gpu']) == 0:
        # the GPU recipes prefetch to the GPU (basicsr's CUDAPrefetcher, pinned memory); without one the same file
        # runs with basicsr's plain loader instead of failing on torch.cuda.Stream
        warnings.warn('datasets.train.prefetch_mode cuda needs a GPU; none is used, so the plain DataLoader runs',
                      stacklevel=2)
        train_set['prefetch_mode'] = None
    if train_set is not None and train_set.get('persistent_workers') and not train_set.get('num_worker_per_gpu'):
        train_set['persistent_workers'] = False  # no worker to keep: torch's DataLoader refuses the flag then
    model_type = opt.get('model_type')
    model = MODEL_REGISTRY.get(model_type) if model_type in MODEL_REGISTRY else None
    data_parallel = not opt['dist'] and int(opt['num_gpu']) > 1
    if opt['is_train'] and data_parallel and model is not None and issubclass(model, RestorationModel):
        raise OptionError(data_parallel_message(model_type, int(opt['num_gpu'])))
    return opt


def _parse_options(root_path: str, is_train: bool = True) -> tuple[dict, object]:
    opt, args = basicsr.utils.options.parse_options(root_path, is_train=is_train)
    return translate_options(opt), args


def _create_train_val_dataloader(opt: dict, logger) -> tuple:
    """basicsr's loaders, with the epoch count taken from the training loader's real (drop_last) length."""
    train_loader, train_sampler, val_loaders, total_epochs, total_iters = _ORIGINAL_CREATE_LOADERS(opt, logger)
    per_epoch = len(train_loader)
    if per_epoch == 0:
        train_opt = opt['datasets']['train']
        raise OptionError(f"datasets.train: {len(train_sampler)} samples per process are fewer than the batch "
                          f"({train_opt['batch_size_per_gpu']} per process), so no full batch exists; lower the "
                          'batch size or raise dataset_enlarge_ratio')
    total_epochs = math.ceil(total_iters / per_epoch)
    logger.info(f'difflid: the loader gives {per_epoch} iterations per epoch (it drops the last incomplete batch; '
                f'basicsr\'s line above rounds up): {total_iters} iterations take {total_epochs} epochs.')
    return train_loader, train_sampler, val_loaders, total_epochs, total_iters


@contextmanager
def patched_basicsr() -> Iterator[None]:
    """Install difflid's entry-point behaviour (module docstring) into basicsr, and restore basicsr's own after."""
    patches = [(basicsr.train, 'load_resume_state', load_resume_state),
               (basicsr.train, 'parse_options', _parse_options),
               (basicsr.train, 'create_train_val_dataloader', _create_train_val_dataloader),
               (basicsr.test, 'parse_options', _parse_options),
               (basicsr.utils.options, 'init_dist', init_dist)]
    originals = [(module, name, getattr(module, name)) for module, name, _ in patches]
    try:
        for module, name, new in patches:
            setattr(module, name, new)
        yield
    finally:
        for module, name, old in originals:
            setattr(module, name, old)

