"""The start-up shared by tools/train.py and tools/test.py: everything is checked before any folder exists.

Order: parse the command line (basicsr's flags plus ``--check``) → load and validate the options
(``option_schema``) → derive basicsr's keys (what its ``parse_options`` adds) and difflid's translation → find
the dataset paths and check their files. The caller then builds the datasets and the model, and only then calls
``prepare_folders``: a start that fails leaves ``experiments/``, ``tb_logger/`` and ``results/`` as they were.
"""
import argparse
import copy
import logging
import logging.handlers
import os
import random
import shlex
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from os import path as osp
from pathlib import Path

import torch
from basicsr.utils import check_resume, get_env_info, get_root_logger, get_time_str, scandir, set_random_seed
from basicsr.utils.dist_util import get_dist_info
from basicsr.utils.options import dict2str
from basicsr.utils.registry import MODEL_REGISTRY
from torch import distributed as dist

from difflid.data.file_checks import check_dataset_files
from difflid.models.base_restoration import RestorationModel
from difflid.utils.errors import OptionError, data_parallel_message
from difflid.utils.option_schema import load_raw_options, plan_summary, validate_options
from difflid.utils.options import is_training_options, training_to_test_options
from difflid.utils.paths import SHIPPED_ROOT, locate_dataset_paths, locate_paths

__all__ = ['RunOptions', 'StartupLog', 'begin', 'derive_options', 'init_dist', 'load_resume_state', 'parse_arguments',
           'prepare_folders', 'prepare_options', 'resume_command', 'startup_errors', 'translate_options']

LOG_FORMAT = '%(asctime)s %(levelname)s: %(message)s'  # basicsr's log line


def parse_arguments(argv: list[str], is_train: bool) -> argparse.Namespace:
    """basicsr's command line (``-opt``, ``--launcher``, ``--auto_resume``, ``--debug``, ``--local_rank``,
    ``--force_yml``) plus ``--check``; ``--local-rank`` (torch.distributed.launch since PyTorch 2.0) is accepted."""
    tool = 'train' if is_train else 'test'
    parser = argparse.ArgumentParser(prog=f'tools/{tool}.py')
    parser.add_argument('-opt', '--opt', dest='opt', required=True, help='option YAML file (may use _base_)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none', help='job launcher')
    parser.add_argument('--auto_resume', action='store_true', help='continue the run from its latest state')
    parser.add_argument('--debug', action='store_true')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    parser.add_argument('--force_yml', nargs='+', default=None, help='override options, e.g. train:total_iter=1000')
    parser.add_argument('--check', action='store_true',
                        help=f'check the options and dataset files, print what would {tool}, create nothing')
    return parser.parse_args(argv)


@dataclass
class RunOptions:
    """The options of one run: ``raw`` as written (merged ``_base_`` and ``--force_yml``), ``opt`` with basicsr's
    derived keys, and ``notes`` (warnings and located paths) for the log."""
    raw: dict
    opt: dict
    args: argparse.Namespace
    notes: list[str] = field(default_factory=list)


def prepare_options(argv: list[str], root: str | Path, is_train: bool) -> RunOptions:
    """Command line to checked, derived options; initialises torch.distributed under a launcher. Creates nothing.

    Raises OptionError (or FileNotFoundError naming a missing input) for anything that would stop the run later.
    """
    args = parse_arguments(argv, is_train)
    raw = load_raw_options(args.opt, args.force_yml)
    if not is_train and is_training_options(raw):
        raw = training_to_test_options(raw, Path(root))  # a training file tests that run's latest weights
    notes = [f'option warning: {w}' for w in validate_options(raw, is_train, args.opt)]
    opt = derive_options(raw, args, root, is_train)
    notes += locate_dataset_paths(opt, [Path.cwd(), Path(root)])
    # weights named relative to the project (experiments/<run>/models/..., where tools/train.py writes them) or
    # shipped with difflid (difflid/weights/...) are found from another working directory too; a file found nowhere
    # is left for the loader's own error
    weights = {k: v for k, v in (opt.get('path') or {}).items() if k.startswith('pretrain_network_') and v}
    opt.setdefault('path', {}).update(locate_paths(weights, 'path', [Path.cwd(), Path(root), SHIPPED_ROOT])[0])
    check_dataset_files(opt)
    return RunOptions(raw, opt, args, notes)


def begin(root: str | Path, argv: list[str], is_train: bool,
          check_lines: Callable[[RunOptions], list[str]] = lambda run: []) -> RunOptions | None:
    """The start shared by tools/train.py and tools/test.py: the checked options (``prepare_options``), or, with
    ``--check``, the plan printed (with ``check_lines``' lines) and None: nothing is created either way."""
    with startup_errors():
        run = prepare_options(argv, root, is_train)
        if run.args.check:
            print('\n'.join([plan_summary(run.raw, is_train), *run.notes, *check_lines(run)]))
            return None
    torch.backends.cudnn.benchmark = True
    return run


def derive_options(raw: dict, args: argparse.Namespace, root: str | Path, is_train: bool) -> dict:
    """What basicsr's ``parse_options`` adds to the YAML (dist, rank, seed, phases, paths; the random seeds are
    set), then ``translate_options``. ``raw`` is not changed."""
    opt = copy.deepcopy(raw)
    opt['dist'] = args.launcher != 'none'
    if opt['dist'] and not args.check:
        init_dist(args.launcher, **((opt.get('dist_params') or {}) if args.launcher == 'slurm' else {}))
    opt['rank'], opt['world_size'] = get_dist_info()
    if opt['dist'] and args.check:  # --check under a launcher: the processes it would start, no process group
        opt['rank'], opt['world_size'] = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    if opt.get('manual_seed') is None:  # one seed for all processes: the data seeds are rank 0's (training.py)
        seed = [random.randint(1, 10000)]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast_object_list(seed, src=0)
        opt['manual_seed'] = seed[0]
    set_random_seed(opt['manual_seed'] + opt['rank'])
    opt['auto_resume'], opt['is_train'], opt['root_path'] = args.auto_resume, is_train, str(root)
    if args.debug and not opt['name'].startswith('debug'):
        opt['name'] = 'debug_' + opt['name']
    if opt.get('num_gpu', 'auto') == 'auto':
        opt['num_gpu'] = torch.cuda.device_count()
    for phase, dataset in (opt.get('datasets') or {}).items():
        dataset['phase'] = phase.split('_')[0]
        if 'scale' in opt:
            dataset['scale'] = opt['scale']
        for key in ('dataroot_gt', 'dataroot_lq'):
            if dataset.get(key) is not None:
                dataset[key] = osp.expanduser(dataset[key])
    paths = opt.setdefault('path', {})
    for key, value in paths.items():
        if value is not None and ('resume_state' in key or 'pretrain_network' in key):
            paths[key] = osp.expanduser(value)
    if is_train:
        exp = osp.join(str(root), 'experiments', opt['name'])
        paths.update(experiments_root=exp, models=osp.join(exp, 'models'), log=exp,
                     training_states=osp.join(exp, 'training_states'), visualization=osp.join(exp, 'visualization'))
        if 'debug' in opt['name']:
            if 'val' in opt:
                opt['val']['val_freq'] = 8
            opt['logger'].update(print_freq=1, save_checkpoint_freq=8)
    else:
        results = osp.join(str(root), 'results', opt['name'])
        paths.update(results_root=results, log=results, visualization=osp.join(results, 'visualization'))
    return translate_options(opt)


def translate_options(opt: dict) -> dict:
    """Turn basicsr's parsed options into what its parts read; changes ``opt`` in place and returns it.

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


def load_resume_state(opt: dict) -> dict | None:
    """basicsr's resume lookup, CPU-safe and independent of the current working directory; reads, creates nothing."""
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
    if not osp.isfile(state_path):
        raise FileNotFoundError(f'path.resume_state: no training state at {state_path}')
    if opt['num_gpu'] != 0 and torch.cuda.is_available():
        location = torch.device('cuda', torch.cuda.current_device())
    else:
        location = torch.device('cpu')
    state = torch.load(state_path, map_location=location, weights_only=True)
    check_resume(opt, state['iter'])
    return state


@contextmanager
def startup_errors() -> Iterator[None]:
    """Before the first iteration, a KeyError or ValueError comes from the options (a model's or dataset's own
    checks, a registry lookup): raised again as an OptionError, which the tools print without a traceback."""
    try:
        yield
    except OptionError:
        raise
    except (KeyError, ValueError) as err:
        raise OptionError(err.args[0] if isinstance(err, KeyError) and err.args else str(err)) from err


class StartupLog:
    """basicsr's root logger, opened before any folder exists: the console gets every line at once, and the lines
    are kept in memory until ``attach_file`` creates the log file (rank 0), which then starts with them."""

    def __init__(self) -> None:
        self.logger = get_root_logger()
        # a library's logging.config.dictConfig (disable_existing_loggers) in the same process would leave the run's
        # log file empty: the run's own logger is always on
        self.logger.disabled = False
        if get_dist_info()[0] == 0:
            self.logger.setLevel(logging.INFO)
        self._buffer = logging.handlers.MemoryHandler(capacity=1 << 30, flushLevel=logging.CRITICAL + 1)
        self.logger.addHandler(self._buffer)

    def attach_file(self, log_file: str) -> None:
        if get_dist_info()[0] == 0:
            handler = logging.FileHandler(log_file, 'w')
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            handler.setLevel(logging.INFO)
            self.logger.addHandler(handler)
            self._buffer.setTarget(handler)
            self._buffer.flush()
        self.discard()

    @contextmanager
    def building(self, run: RunOptions) -> Iterator[None]:
        """The part of a start before any folder exists: it begins with the environment, the options and the notes
        in the log; an error from the options inside becomes an OptionError (``startup_errors``), and any failure
        drops the kept lines (a failed start writes no log file)."""
        try:
            with startup_errors():
                self.logger.info(get_env_info())
                self.logger.info(dict2str(run.opt))
                for note in run.notes:
                    self.logger.info(note)
                yield
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Stop keeping lines (a failed start writes no log file)."""
        self.logger.removeHandler(self._buffer)
        self._buffer.setTarget(None)
        self._buffer.close()


def prepare_folders(opt: dict, resumed: bool) -> list[str]:
    """Create the run's folders (rank 0). A reused name's old folder (and its tb_logger folder) is moved aside to
    ``<folder>_archived_<time>``, as basicsr does; the returned line says where it went. Nothing is moved when the
    run resumes."""
    if opt['rank'] != 0:
        return []
    paths, lines = dict(opt['path']), []
    root_key = 'experiments_root' if opt['is_train'] else 'results_root'
    folder = paths.pop(root_key)
    tb_dir = osp.join(opt['root_path'], 'tb_logger', opt['name'])
    uses_tb = opt['is_train'] and (opt.get('logger') or {}).get('use_tb_logger') and 'debug' not in opt['name']
    if not resumed:
        stamp = get_time_str()
        moved = [(path, f'{path}_archived_{stamp}') for path in (folder, *([tb_dir] if uses_tb else []))
                 if osp.exists(path)]
        for old, new in moved:
            os.rename(old, new)
        if moved:
            lines.append(_reused_name_line(opt, moved))
    os.makedirs(folder, exist_ok=True)
    for key, path in paths.items():
        if not any(word in key for word in ('strict_load', 'pretrain_network', 'resume', 'param_key')) and path:
            os.makedirs(path, exist_ok=True)
    return lines


def _reused_name_line(opt: dict, moved: list[tuple[str, str]]) -> str:
    where = ' and '.join(f'{old} -> {new}' for old, new in moved)
    if not opt['is_train']:
        return f'results of an earlier test named {opt["name"]!r} moved aside: {where}'
    return (f'an earlier run named {opt["name"]!r} moved aside: {where}; this run starts afresh. To continue the '
            'earlier run instead, move its folder back and add --auto_resume')


def resume_command(args: argparse.Namespace, world_size: int) -> str:
    """The command that continues this run: the same options, with ``--auto_resume``."""
    cmd = ['python', 'tools/train.py', '-opt', args.opt]
    if world_size > 1 or args.launcher != 'none':
        cmd = ['torchrun', f'--nproc_per_node={world_size}', 'tools/train.py', '-opt', args.opt,
               '--launcher', args.launcher]
    if args.force_yml:
        cmd += ['--force_yml', *args.force_yml]
    return shlex.join([*cmd, '--auto_resume'])
