"""difflid is imported first so that test modules may import basicsr freely (torchvision alias in difflid.compat)."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import difflid  # noqa: F401  registers difflid; makes basicsr importable (difflid.compat) before any test imports it

# isort: split
import cv2
import numpy as np
import pytest
import torch
from skimage import data

REPO_ROOT = Path(__file__).resolve().parents[1]
# the tests never fetch weights from the internet (tools/download.py and the metrics' backbones): a test that needs
# a download points it at a loopback server and clears this itself; subprocesses inherit it
os.environ.setdefault('DIFFLID_OFFLINE', '1')


def pytest_addoption(parser):
    parser.addoption('--slow', action='store_true', help='also run tests marked slow (end-to-end runs)')


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: end-to-end runs of tens of seconds; run with --slow')


def pytest_collection_modifyitems(config, items):
    if config.getoption('--slow'):
        return
    skip = pytest.mark.skip(reason='slow: run with --slow')
    for item in items:
        if 'slow' in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def write_pairs(root: Path, count: int, size: tuple[int, int] = (40, 48), seed: int = 0) -> tuple[Path, Path]:
    """Write ``count`` PNG pairs root/gt/NNN.png and root/lq/NNN.png (lq = a hazy-looking blend of gt)."""
    rng = np.random.default_rng(seed)
    gt_dir, lq_dir = root / 'gt', root / 'lq'
    gt_dir.mkdir(parents=True)
    lq_dir.mkdir(parents=True)
    for i in range(count):
        gt = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        lq = (0.6 * gt + 0.4 * 220).astype(np.uint8)
        cv2.imwrite(str(gt_dir / f'{i:03d}.png'), gt)
        cv2.imwrite(str(lq_dir / f'{i:03d}.png'), lq)
    return gt_dir, lq_dir


def nontrivial_weights(net: torch.nn.Module, std: float = 0.2, seed: int = 1) -> torch.nn.Module:
    """Random weights for the layers that start at zero (DiffLI2D's CIM W_O, HAE W_γ/W_β and head): a new
    DiffLI2D is the identity, on which h has no effect and prior-related seams cannot show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d) and not module.weight.any():
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std / module.in_channels ** 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
    return net.eval()


def hazy_astronaut(height: int = 256, width: int = 384) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1]: scikit-image's astronaut photo under a uniform veil."""
    photo = torch.from_numpy(data.astronaut()[:height, :width].astype(np.float32) / 255).permute(2, 0, 1)[None]
    return photo * 0.6 + 0.35


def train_then_infer(cwd: Path, train_yml: Path, weights: Path, image: Path,
                     tools: Path) -> subprocess.CompletedProcess:
    """tools/train.py -opt train_yml, then tools/infer.py -opt weights -i image -o restored, both as __main__ in
    one subprocess in ``cwd`` (a second interpreter start-up would double the test's time)."""
    script = ('import runpy, sys\n'
              f'sys.argv = ["train.py", "-opt", {str(train_yml)!r}]\n'
              f'runpy.run_path({str(tools / "train.py")!r}, run_name="__main__")\n'
              f'sys.argv = ["infer.py", "-opt", {str(weights)!r}, "-i", {str(image)!r}, "-o", "restored"]\n'
              f'runpy.run_path({str(tools / "infer.py")!r}, run_name="__main__")\n')
    return subprocess.run([sys.executable, '-c', script], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})


def guided_training_options(name: str, gt: Path, lq: Path, prior: dict, network_g: dict) -> dict:
    """Options of a 2-iteration DiffLI2DModel run on ``write_pairs`` data (32 px crops, batch 1) guided by ``prior``:
    the end-to-end check that a feature source trains DiffLI²D and its checkpoint restores an image."""
    return {
        'name': name, 'model_type': 'DiffLI2DModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {'train': {
            'name': 'toy', 'type': 'PairedImageDataset', 'dataroot_gt': str(gt), 'dataroot_lq': str(lq),
            'filename_tmpl': '{}', 'io_backend': {'type': 'disk'}, 'gt_size': 32, 'use_hflip': False,
            'use_rot': False, 'num_worker_per_gpu': 0, 'batch_size_per_gpu': 1, 'dataset_enlarge_ratio': 1,
            'prefetch_mode': None}},
        'network_prior': prior,
        'network_g': network_g,
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'optim_g': {'type': 'AdamW', 'lr': 1e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [100],
                                                                          'gamma': 0.5},
                  'total_iter': 2, 'warmup_iter': -1, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False,
                   'wandb': {'project': None, 'resume_id': None}},
    }
