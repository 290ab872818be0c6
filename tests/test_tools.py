"""End-to-end runs of tools/train.py and tools/test.py in a scratch project root (slow: process start-up)."""
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO_ROOT, write_pairs

COMMON = """
model_type: SRModel
scale: 1
num_gpu: 0
manual_seed: 0
network_g: {type: SRVGGNetCompact, num_in_ch: 3, num_out_ch: 3, num_feat: 8, num_conv: 2, upscale: 1, act_type: prelu}
logger: {print_freq: 1, save_checkpoint_freq: 4, use_tb_logger: false, wandb: {project: ~, resume_id: ~}}
"""
TRAIN = """
_base_: _base_/common.yml
name: smoke_train
datasets:
  train: {{name: toy, type: PairedImageDataset, dataroot_gt: {data}/gt, dataroot_lq: {data}/lq, filename_tmpl: '{{}}',
          io_backend: {{type: disk}}, gt_size: 32, use_hflip: true, use_rot: false, num_worker_per_gpu: 0,
          batch_size_per_gpu: 2, dataset_enlarge_ratio: 1, prefetch_mode: ~}}
  val: {{name: toy_val, type: PairedImageDataset, dataroot_gt: {data}/gt, dataroot_lq: {data}/lq,
        io_backend: {{type: disk}}}}
path: {{pretrain_network_g: ~, strict_load_g: true, resume_state: ~}}
train:
  optim_g: {{type: Adam, lr: !!float 1.0e-3}}
  scheduler: {{type: MultiStepLR, milestones: [100], gamma: 0.5}}
  total_iter: 4
  warmup_iter: -1
  pixel_opt: {{type: L1Loss, loss_weight: 1.0, reduction: mean}}
val:
  val_freq: 4
  save_img: false
  metrics: {{psnr: {{type: calculate_psnr, crop_border: 0, test_y_channel: false}}}}
"""
TEST = """
_base_: _base_/common.yml
name: smoke_test
datasets:
  test_1: {{name: toy_test, type: PairedImageDataset, dataroot_gt: {data}/gt, dataroot_lq: {data}/lq,
           io_backend: {{type: disk}}}}
path: {{pretrain_network_g: {weights}, strict_load_g: true, param_key_g: params}}
val:
  save_img: true
  suffix: ~
  metrics: {{psnr: {{type: calculate_psnr, crop_border: 0, test_y_channel: false}}}}
"""


@pytest.fixture
def project(tmp_path):
    """A scratch root holding copies of the thin tools, generated data and option files."""
    (tmp_path / 'tools').mkdir()
    for tool in ('train.py', 'test.py'):
        shutil.copy(REPO_ROOT / 'tools' / tool, tmp_path / 'tools' / tool)
    write_pairs(tmp_path / 'data', 4)
    (tmp_path / 'options' / '_base_').mkdir(parents=True)
    (tmp_path / 'options' / '_base_' / 'common.yml').write_text(COMMON)
    (tmp_path / 'options' / 'train.yml').write_text(TRAIN.format(data=tmp_path / 'data'))
    (tmp_path / 'elsewhere').mkdir()
    return tmp_path


def _run(project, args, launcher=()):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    # run from an unrelated directory: outputs must land under the project root anyway
    proc = subprocess.run([sys.executable, *launcher, *args], cwd=project / 'elsewhere', env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_train_resume_and_test_from_any_working_directory(project):
    _run(project, [str(project / 'tools/train.py'), '-opt', str(project / 'options/train.yml')])
    exp = project / 'experiments' / 'smoke_train'
    assert (exp / 'models' / 'net_g_4.pth').is_file() and (exp / 'training_states' / '4.state').is_file()
    saved = yaml.safe_load((exp / 'train.yml').read_text())  # the resolved options travel with the run
    assert '_base_' not in saved and saved['network_g']['type'] == 'SRVGGNetCompact'
    assert not (project / 'elsewhere' / 'experiments').exists()

    _run(project, [str(project / 'tools/train.py'), '-opt', str(project / 'options/train.yml'), '--auto_resume',
                   '--force_yml', 'train:total_iter=8'])
    log = ''.join(p.read_text() for p in exp.glob('train_smoke_train_*.log'))
    assert 'Resuming training from epoch' in log and 'iter: 4' in log
    assert (exp / 'models' / 'net_g_8.pth').is_file()

    weights = exp / 'models' / 'net_g_8.pth'
    (project / 'options' / 'test.yml').write_text(TEST.format(data=project / 'data', weights=weights))
    _run(project, [str(project / 'tools/test.py'), '-opt', str(project / 'options/test.yml')])
    out = project / 'results' / 'smoke_test' / 'visualization' / 'toy_test'
    assert sorted(p.name for p in out.iterdir()) == [f'{i:03d}_smoke_test.png' for i in range(4)]

