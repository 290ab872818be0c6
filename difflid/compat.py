"""Makes PyPI basicsr 1.4.2 (Aug 2022) work on today's torch/torchvision. Imported by ``difflid``
before anything imports basicsr. Every change is listed here, and each has a test:

1. ``torchvision.transforms.functional_tensor`` (removed in torchvision 0.17, imported by
   ``basicsr.data.degradations``) is aliased to ``torchvision.transforms._functional_tensor``.
2. ``basicsr.train.load_resume_state`` loads training states onto the CPU when there is no GPU (1.4.2
   calls ``torch.cuda.current_device()``), and ``--auto_resume`` looks under the experiment's root
   rather than ``./experiments`` of the current working directory.
3. ``init_dist`` (used by ``parse_options``) picks gloo and makes no CUDA call when there is no GPU,
   NCCL with ``LOCAL_RANK``'s device otherwise; ``BaseModel.model_to_device`` wraps CPU networks in
   DDP without ``device_ids``.

Nothing else is patched. The optimizer builder of 1.4.2 accepts only Adam; difflid's models add the
others themselves.
"""
import os
import sys
from os import path as osp

import torch

__all__ = ['init_dist', 'load_resume_state', 'model_to_device']


def _alias_functional_tensor() -> None:
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401  torchvision < 0.17 still has it
    except ImportError:
        import torchvision.transforms._functional_tensor as functional_tensor
        sys.modules['torchvision.transforms.functional_tensor'] = functional_tensor


_alias_functional_tensor()

# isort: split
import basicsr.train  # noqa: E402  needs the alias above
import basicsr.utils.dist_util  # noqa: E402
import basicsr.utils.options  # noqa: E402
from basicsr.models.base_model import BaseModel  # noqa: E402
from basicsr.utils import check_resume, scandir  # noqa: E402
from torch import distributed as dist  # noqa: E402
from torch.nn.parallel import DataParallel, DistributedDataParallel  # noqa: E402


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


def model_to_device(self: BaseModel, net: torch.nn.Module) -> torch.nn.Module:
    """basicsr's model_to_device, with DDP usable on the CPU (no ``device_ids``)."""
    net = net.to(self.device)
    if self.opt['dist']:
        device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
        net = DistributedDataParallel(net, device_ids=device_ids,
                                      find_unused_parameters=self.opt.get('find_unused_parameters', False))
    elif self.opt['num_gpu'] > 1:
        net = DataParallel(net)
    return net


basicsr.train.load_resume_state = load_resume_state
basicsr.utils.options.init_dist = init_dist
basicsr.utils.dist_util.init_dist = init_dist
BaseModel.model_to_device = model_to_device
