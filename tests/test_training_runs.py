"""End-to-end DiffLI2DModel runs through tools/train.py and tools/test.py (slow: process start-up)."""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from basicsr.utils.lmdb_util import make_lmdb_from_imgs

from tests.conftest import REPO_ROOT, free_port, write_pairs

pytestmark = pytest.mark.slow

TRAIN = """
_base_: _base_/prior_tiny.yml
name: {name}
model_type: DiffLI2DModel
scale: 1
num_gpu: 0
manual_seed: 0
datasets:
  train: {{name: toy, type: PairedImageDataset, dataroot_gt: {gt}, dataroot_lq: {lq}, filename_tmpl: '{{}}',
          io_backend: {{type: {backend}}}, gt_size: 32, use_hflip: true, use_rot: false, num_worker_per_gpu: 0,
          batch_size_per_gpu: 2, dataset_enlarge_ratio: 1, prefetch_mode: ~}}
  # (one process cannot open the same LMDB twice, so validation reads the folders)
  val: {{name: toy_val, type: PairedImageDataset, dataroot_gt: {gt_dir}, dataroot_lq: {lq_dir},
        io_backend: {{type: disk}}}}
network_g: {{type: DiffLI2D, num_feat: 8, num_heads: [1, 2, 2, 4], h_channels: 64}}
path: {{pretrain_network_g: ~, strict_load_g: true, resume_state: ~}}
train:
  optim_g: {{type: AdamW, lr: !!float 1.0e-3}}
  scheduler: {{type: MultiStepLR, milestones: [100], gamma: 0.5}}
  total_iter: {total_iter}
  warmup_iter: -1
  pixel_opt: {{type: L1Loss, loss_weight: 1.0, reduction: mean}}
val:
  val_freq: {save_freq}
  save_img: false
  metrics: {{psnr: {{type: calculate_psnr, crop_border: 0, test_y_channel: false}}}}
logger: {{print_freq: 1, save_checkpoint_freq: {save_freq}, use_tb_logger: false, wandb: {{project: ~, resume_id: ~}}}}
"""
TEST = """
_base_: _base_/prior_tiny.yml
name: {name}
model_type: DiffLI2DModel
scale: 1
num_gpu: 0
datasets:
  test_1: {{name: toy_test, type: PairedImageDataset, dataroot_gt: {gt}, dataroot_lq: {lq},
           io_backend: {{type: {backend}}}}}
network_g: {{type: DiffLI2D, num_feat: 8, num_heads: [1, 2, 2, 4], h_channels: 64}}
path: {{pretrain_network_g: {weights}, strict_load_g: true, param_key_g: params}}
val:
  save_img: true
  suffix: ~
  input_metrics: true
  metrics: {{psnr: {{type: calculate_psnr, crop_border: 0, test_y_channel: false}}}}
"""


@pytest.fixture
def project(tmp_path):
    """A scratch root with copies of the tools and option bases, and generated folder + LMDB data."""
    shutil.copytree(REPO_ROOT / 'tools', tmp_path / 'tools')
    shutil.copytree(REPO_ROOT / 'options', tmp_path / 'options')
    gt, lq = write_pairs(tmp_path / 'data', 4, size=(45, 70))
    for folder in (gt, lq):
        names = sorted(p.name for p in folder.iterdir())
        make_lmdb_from_imgs(str(folder), str(folder) + '.lmdb', names, [n[:-4] for n in names])
    (tmp_path / 'elsewhere').mkdir()
    return tmp_path


def write_options(project, template, name, backend='disk', **fields):
    suffix = '.lmdb' if backend == 'lmdb' else ''
    path = project / 'options' / f'{name}.yml'
    path.write_text(template.format(name=name, backend=backend, gt=f'{project}/data/gt{suffix}',
                                    lq=f'{project}/data/lq{suffix}', gt_dir=f'{project}/data/gt',
                                    lq_dir=f'{project}/data/lq', **fields))
    return path


def run_tool(project, tool, option, *extra, wait=True, launcher=()):
    cmd = [sys.executable, *launcher, str(project / 'tools' / tool), '-opt', str(option), *extra]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    if not wait:
        return subprocess.Popen(cmd, cwd=project / 'elsewhere', env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    proc = subprocess.run(cmd, cwd=project / 'elsewhere', env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize('backend', ['disk', 'lmdb'])
def test_train_then_test_twice_gives_identical_outputs(project, backend):
    train = write_options(project, TRAIN, f'train_{backend}', backend, total_iter=3, save_freq=3)
    run_tool(project, 'train.py', train)
    weights = project / 'experiments' / f'train_{backend}' / 'models' / 'net_g_3.pth'
    assert weights.is_file()
    outputs = []
    for run in (1, 2):
        test = write_options(project, TEST, f'test_{backend}_{run}', backend, weights=weights)
        run_tool(project, 'test.py', test)
        results = project / 'results' / f'test_{backend}_{run}'
        outputs.append(digests(results / 'visualization' / 'toy_test'))
        report = (results / 'metrics_toy_test.csv').read_text().splitlines()
        assert report[0] == 'image,psnr,psnr_input' and len(report) == 5
    assert len(outputs[0]) == 4
    assert list(outputs[0].values()) == list(outputs[1].values())  # same pixels in both runs


def test_killed_run_resumes_and_finishes_with_its_iteration_count(project):
    train = write_options(project, TRAIN, 'killed', total_iter=40, save_freq=5)
    states = project / 'experiments' / 'killed' / 'training_states'
    proc = run_tool(project, 'train.py', train, wait=False)
    deadline = time.time() + 300
    while not (states / '10.state').exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # between (or during) checkpoint saves
    proc.wait()
    killed_at = max(int(p.name.split('.')[0]) for p in states.glob('*.state'))
    assert 10 <= killed_at < 40
    run_tool(project, 'train.py', train, '--auto_resume')
    log = ''.join(p.read_text() for p in states.parent.glob('train_killed_*.log'))
    assert 'Resuming training from epoch' in log and f'iter: {killed_at}.' in log
    assert sorted(int(p.name.split('.')[0]) for p in states.glob('*.state'))[-1] == 40
    assert (states.parent / 'models' / 'net_g_40.pth').is_file()
    assert not list(states.glob('*.tmp'))
    assert 'iter:      40' in log


def test_two_process_ddp_training_on_cpu(project):
    template = TRAIN.replace('batch_size_per_gpu: 2', 'total_batch_size: 4')
    train = write_options(project, template, 'ddp', total_iter=4, save_freq=4)
    launcher = ['-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}']
    run_tool(project, 'train.py', train, '--launcher', 'pytorch', launcher=launcher)
    exp = project / 'experiments' / 'ddp'
    log = ''.join(p.read_text() for p in exp.glob('train_ddp_*.log'))
    assert 'World size (gpu number): 2' in log and log.count('Frozen prior:') == 1  # logged by rank 0 only
    assert 'Batch size per gpu: 2' in log  # total_batch_size 4 over two processes
    state = torch.load(exp / 'models' / 'net_g_4.pth', weights_only=True)
    assert set(state) == {'params', 'config'}
    assert not any(k.startswith(('module.', 'prior', 'unet')) for k in state['params'])


def test_quickstart_options_run_through_the_tools(project):
    data = project / 'quickstart_data'
    common = ['--force_yml', f'datasets:train:dataroot={data}/train', f'datasets:val:dataroot={data}/val',
              'train:total_iter=2', 'val:val_freq=2', 'logger:save_checkpoint_freq=2']
    run_tool(project, 'train.py', project / 'options' / 'quickstart.yml', *common)
    assert len(list((data / 'train' / 'lq').iterdir())) == 40  # generated on first use: 5 photos x 8
    assert (project / 'experiments' / 'quickstart' / 'models' / 'net_g_latest.pth').is_file()
    run_tool(project, 'test.py', project / 'options' / 'quickstart_test.yml',
             '--force_yml', f'datasets:test_1:dataroot={data}/val',
             f'path:pretrain_network_g={project}/experiments/quickstart/models/net_g_latest.pth')
    table = (project / 'results' / 'quickstart_test' / 'metrics_quickstart_val.md').read_text()
    assert '| quickstart_val | 3 |' in table and 'psnr_input' in table


def test_every_train_option_file_builds_its_network():
    from basicsr.archs import build_network

    from difflid.utils.options import resolve_option_file

    for path in sorted((REPO_ROOT / 'options').glob('*.yml')):
        opt = yaml.safe_load(resolve_option_file(path).read_text())
        if 'probe' in opt:  # an h-space probe's options (tools/hspace_probe.py): no network to train
            continue
        net = build_network(dict(opt['network_g']))
        if 'network_prior' not in opt:  # a stock network (e.g. EDSR + DiffLoss)
            assert opt['model_type'] == 'ImageRestorationModel', path.name
            continue
        assert opt['network_g']['h_channels'] in (64, 1024), path.name
        if opt['network_prior']['unet'] == 'adm256_uncond':
            assert sum(p.numel() for p in net.parameters()) == pytest.approx(8.63e6, rel=0.03), path.name


def test_a_total_batch_that_does_not_split_is_named_before_training(project):
    train = write_options(project, TRAIN.replace('batch_size_per_gpu: 2', 'total_batch_size: 3'), 'odd',
                          total_iter=4, save_freq=4)
    launcher = ['-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}']
    cmd = [sys.executable, *launcher, str(project / 'tools' / 'train.py'), '-opt', str(train), '--launcher', 'pytorch']
    proc = subprocess.run(cmd, cwd=project / 'elsewhere', capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode != 0
    assert 'error: datasets.train.total_batch_size: 3 does not split evenly over 2 processes' in proc.stderr
