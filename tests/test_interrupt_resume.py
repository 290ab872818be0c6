"""SIGINT/SIGTERM save and say how to resume, and a resumed run is the run it continues, bit for bit (issue 19).

The end-to-end tests run tools/train.py on a tiny DiffLI2DModel (random-weight adm_tiny prior, 32-px crops, batch 2
over 4 images: 2 iterations per epoch, flips and rotations on, fresh prior noise per batch): an uninterrupted run
is the reference for runs stopped by a signal and continued with --auto_resume.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from basicsr.data.data_sampler import EnlargedSampler
from basicsr.utils import get_root_logger

from difflid.data.sampler import ResumableSampler, SeededDataset
from difflid.entry import signals
from difflid.entry.signals import StopRequest
from difflid.entry.training import TrainingMessages, create_train_val_loaders, restore_rng_state, rng_state
from difflid.models import base_restoration
from difflid.models.base_restoration import RestorationModel
from tests.conftest import REPO_ROOT, free_port, write_pairs

TOTAL_ITER = 8
TRAIN = """
_base_: _base_/prior_tiny.yml
name: run
model_type: DiffLI2DModel
scale: 1
num_gpu: 0
manual_seed: 0
datasets:
  train: {{name: toy, type: PairedImageDataset, dataroot_gt: {data}/gt, dataroot_lq: {data}/lq, filename_tmpl: '{{}}',
          io_backend: {{type: disk}}, gt_size: 32, use_hflip: true, use_rot: true, num_worker_per_gpu: 0,
          batch_size_per_gpu: 2, dataset_enlarge_ratio: 1, prefetch_mode: ~}}
  val: {{name: toy_val, type: PairedImageDataset, dataroot_gt: {data}/gt, dataroot_lq: {data}/lq,
        io_backend: {{type: disk}}}}
network_g: {{type: DiffLI2D, num_feat: 8, num_heads: [1, 2, 2, 4], h_channels: 64}}
path: {{pretrain_network_g: ~, strict_load_g: true, resume_state: ~}}
train:
  optim_g: {{type: AdamW, lr: !!float 1.0e-3}}
  scheduler: {{type: MultiStepLR, milestones: [5], gamma: 0.5}}
  total_iter: {total_iter}
  warmup_iter: -1
  ema_decay: 0.9
  pixel_opt: {{type: L1Loss, loss_weight: 1.0, reduction: mean}}
val:
  val_freq: 4
  save_img: false
  input_metrics: true
  metrics: {{psnr: {{type: calculate_psnr, crop_border: 0, test_y_channel: false}}}}
logger: {{print_freq: 1, save_checkpoint_freq: 100, use_tb_logger: false, wandb: {{project: ~, resume_id: ~}}}}
"""
LOSS_LINE = re.compile(r'iter:\s+([\d,]+), .*l_pix: (\S+)')
STOP_LINE = re.compile(r'(SIGINT|SIGTERM): stopped after iteration (\d+); saved (\S+/net_g_(\d+)\.pth) and '
                       r'(\S+/(\d+)\.state); continue with: (.*)$', re.MULTILINE)
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    """A scratch project root (tools, option bases, 4 generated pairs) with the uninterrupted reference run."""
    root = tmp_path_factory.mktemp('project')
    shutil.copytree(REPO_ROOT / 'tools', root / 'tools')
    shutil.copytree(REPO_ROOT / 'options', root / 'options')
    write_pairs(root / 'data', 4)
    text = TRAIN.format(data=root / 'data', total_iter=TOTAL_ITER)
    (root / 'options' / 'run.yml').write_text(text)
    (root / 'options' / 'ddp.yml').write_text(text.replace('batch_size_per_gpu: 2', 'total_batch_size: 2'))
    return root


def _cmd(project: Path, *extra: str, option: str = 'run') -> list[str]:
    return [sys.executable, 'tools/train.py', '-opt', f'options/{option}.yml', *extra]


def _losses(project: Path, name: str) -> dict[int, str]:
    """Iteration -> logged l_pix of every log of the run (a resumed run has two)."""
    losses = {}
    for log in sorted((project / 'experiments' / name).glob(f'train_{name}_*.log')):
        for it, loss in LOSS_LINE.findall(log.read_text()):
            losses[int(it.replace(',', ''))] = loss
    return losses


def _weights(project: Path, name: str, label: str = 'latest') -> dict[str, torch.Tensor]:
    return torch.load(project / 'experiments' / name / 'models' / f'net_g_{label}.pth', weights_only=True)


@pytest.fixture(scope='module')
def reference(project):
    proc = subprocess.run(_cmd(project, '--force_yml', 'name=reference'), cwd=project, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _start_and_signal(cmd: list[str], cwd: Path, signum: int, group: bool, at_iter: int = 2,
                      env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """Run ``cmd``; once its log shows iteration ``at_iter``, send ``signum`` to it (or to its whole process group,
    loader workers included, as Ctrl-C and schedulers do). Returns the process, exited, and its output."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=group)
    out = []
    for line in proc.stdout:
        out.append(line)
        if f'iter:{at_iter:8,d},' in line:
            if group:
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)
    proc.wait(timeout=120)
    return proc, ''.join(out)


@pytest.mark.slow
@pytest.mark.parametrize('workers, signum, group', [(0, signal.SIGINT, False), (1, signal.SIGTERM, True)])
def test_a_stopped_and_resumed_run_is_the_uninterrupted_run(project, reference, workers, signum, group):
    name = f'stopped_{workers}'
    force = ['--force_yml', f'name={name}', f'datasets:train:num_worker_per_gpu={workers}']
    proc, out = _start_and_signal(_cmd(project, *force), project, signum, group)
    assert proc.returncode == 128 + signum, out[-3000:]
    (line,) = STOP_LINE.findall(out)
    stopped = int(line[1])
    assert line[0] == signal.Signals(signum).name and 2 <= stopped < TOTAL_ITER
    assert int(line[3]) == int(line[5]) == stopped and Path(line[2]).is_file() and Path(line[4]).is_file()
    # the command to continue: the same options and overrides
    assert line[6] == f'python tools/train.py -opt options/run.yml {" ".join(force)} --auto_resume'
    assert 'Traceback' not in out
    assert sorted(_losses(project, name)) == list(range(1, stopped + 1))

    resumed = subprocess.run(_cmd(project, *force, '--auto_resume'), cwd=project, env=ENV, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'Resuming training from epoch: {(stopped - 1) // 2}, iter: {stopped}.' in resumed.stderr
    assert _losses(project, name) == _losses(project, 'reference')  # every iteration's loss, to the printed digit
    ours, theirs = _weights(project, name), _weights(project, 'reference')
    for key in ('params', 'params_ema'):
        assert ours[key].keys() == theirs[key].keys()
        different = [k for k in ours[key] if not torch.equal(ours[key][k], theirs[key][k])]
        assert not different, f'{key}: {different[:5]}'


@pytest.mark.slow
def test_two_gloo_processes_stop_after_the_same_iteration(project):
    """SIGTERM to rank 1 only: both ranks stop after the same iteration (rank 0 writes its state), none hangs."""
    port = free_port()
    cmd = _cmd(project, '--launcher', 'pytorch', '--force_yml', 'name=ddp', 'train:total_iter=40', option='ddp')
    env = {**ENV, 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port), 'WORLD_SIZE': '2'}
    with open(project / 'rank1.out', 'w') as rank1_out:
        rank1 = subprocess.Popen(cmd, cwd=project, env={**env, 'RANK': '1', 'LOCAL_RANK': '1'}, stdout=rank1_out,
                                 stderr=subprocess.STDOUT, text=True)
        try:
            rank0 = subprocess.Popen(cmd, cwd=project, env={**env, 'RANK': '0', 'LOCAL_RANK': '0'},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            out = []
            for line in rank0.stdout:
                out.append(line)
                if 'iter:       2,' in line:
                    rank1.send_signal(signal.SIGTERM)
            assert rank0.wait(timeout=60) == 143 and rank1.wait(timeout=60) == 143
        finally:
            for proc in (rank1, locals().get('rank0')):
                if proc is not None and proc.poll() is None:
                    proc.kill()
    out = ''.join(out)
    (line,) = STOP_LINE.findall(out)
    stopped = int(line[1])
    assert line[0] == 'SIGTERM' and 2 <= stopped < 40, out[-2000:]
    assert line[6] == ('torchrun --nproc_per_node=2 tools/train.py -opt options/ddp.yml --launcher pytorch '
                       '--force_yml name=ddp train:total_iter=40 --auto_resume')
    assert 'SIGTERM: finishing this iteration' in (project / 'rank1.out').read_text()
    state = torch.load(project / 'experiments' / 'ddp' / 'training_states' / f'{stopped}.state', weights_only=True)
    assert state['iter'] == stopped and len(state['resume']['rng']) == 2  # both ranks' random states


def test_a_second_signal_exits_at_once_and_a_forwarded_copy_does_not(monkeypatch):
    exits, clock = [], [100.0]
    monkeypatch.setattr(signals.time, 'monotonic', lambda: clock[0])
    stop = StopRequest(exit_now=exits.append)
    stop.handle(signal.SIGINT)
    assert stop.signum == signal.SIGINT and exits == []
    clock[0] += 0.01  # torchrun's agent forwarding the same Ctrl-C to its workers
    stop.handle(signal.SIGINT)
    assert exits == []
    clock[0] += 2
    stop.handle(signal.SIGTERM)
    assert exits == [128 + signal.SIGTERM]


def test_the_handlers_are_installed_and_put_back():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest(exit_now=lambda code: None)
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM and stop.agreed(torch.device('cpu')) == signal.SIGTERM
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) is before


# --- the pieces of exact resume -------------------------------------------------------------------------------------
def test_random_states_survive_a_weights_only_round_trip(tmp_path):
    state = rng_state()
    torch.save(state, tmp_path / 's.state')
    expected = (np.random.rand(3), torch.rand(3), __import__('random').random())
    restore_rng_state(torch.load(tmp_path / 's.state', weights_only=True))
    again = (np.random.rand(3), torch.rand(3), __import__('random').random())
    assert np.array_equal(expected[0], again[0]) and torch.equal(expected[1], again[1]) and expected[2] == again[2]


def test_the_sampler_resumes_inside_an_epoch_in_basicsrs_order():
    data = list(range(10))
    for rank in (0, 1):
        basicsr = EnlargedSampler(data, 2, rank, ratio=3)
        ours = ResumableSampler(data, 2, rank, ratio=3)
        for epoch in (0, 3):
            basicsr.set_epoch(epoch)
            ours.set_epoch(epoch)
            whole = list(ours)
            assert [index for _, _, index in whole] == list(basicsr)
            assert len({position for _, position, _ in whole}) == len(whole) == 15
            ours.set_epoch(epoch, start=6)
            assert list(ours) == whole[6:] and len(ours) == 9


def _batches(data_dir: Path, workers: int, epochs: tuple[int, ...]) -> list[torch.Tensor]:
    """The training batches of ``epochs`` from tools/train.py's loader (16-px crops, flips, rotations)."""
    train = {'name': 'toy', 'type': 'PairedImageDataset', 'dataroot_gt': str(data_dir / 'gt'),
             'dataroot_lq': str(data_dir / 'lq'), 'filename_tmpl': '{}', 'io_backend': {'type': 'disk'}, 'gt_size': 16,
             'use_hflip': True, 'use_rot': True, 'phase': 'train', 'scale': 1, 'batch_size_per_gpu': 2,
             'num_worker_per_gpu': workers}
    opt = {'datasets': {'train': train}, 'world_size': 1, 'rank': 0, 'num_gpu': 0, 'dist': False, 'manual_seed': 5,
           'train': {'total_iter': 4}}
    data = create_train_val_loaders(opt, get_root_logger())
    out = []
    for epoch in epochs:
        data.sampler.set_epoch(epoch)
        out += [batch['gt'] for batch in data.loader]
    return out


def test_augmentations_depend_on_seed_epoch_and_position_only(tmp_path):
    """The same crops and flips with 0 or 1 loader worker, and other ones in the next epoch (basicsr's worker seeds
    repeat every epoch), while the process's own random streams do not move."""
    write_pairs(tmp_path, 4)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    in_process = _batches(tmp_path, 0, (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), before)
    with_worker = _batches(tmp_path, 1, (0,))
    assert all(torch.equal(a, b) for a, b in zip(in_process[:2], with_worker, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(in_process[:2], in_process[2:4], strict=True))  # epoch 0 again
    # epoch 1 visits the images in another order: no crop of epoch 0 comes back in epoch 1
    assert not any(torch.equal(a, b) for a in torch.cat(in_process[:2]) for b in torch.cat(in_process[4:]))


def test_the_seeded_dataset_draws_by_epoch_and_position():
    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return index, __import__('random').random(), float(np.random.rand()), float(torch.rand(()))

    dataset = SeededDataset(Draws(), seed=5)
    assert dataset[(0, 1, 2)] == dataset[(0, 1, 2)]
    assert dataset[(0, 1, 2)][1:] != dataset[(1, 1, 2)][1:] and dataset[(0, 1, 2)][1:] != dataset[(0, 2, 2)][1:]
    assert len(set(dataset[(0, 1, 2)][1:])) == 3  # three independent streams


# --- the log's cosmetics --------------------------------------------------------------------------------------------
def test_the_eta_is_never_negative_and_counts_the_iterations_left():
    opt = {'name': 'run', 'logger': {'print_freq': 1, 'use_tb_logger': False}, 'train': {'total_iter': 300}}
    messages = TrainingMessages(opt, start_iter=100)
    start = messages.start_time
    assert messages.eta(300, now=start + 40) == '0:00:00'  # basicsr 1.4.2: -1 day, 23:59:59
    assert messages.eta(200, now=start + 50) == '0:00:50'  # 100 iterations in 50 s, 100 left


def test_a_test_logs_its_scores_without_a_best_iteration(monkeypatch):
    """At test time basicsr logged "Best: ... @ <name> iter"; a test is one evaluation. Input scores are logged."""
    logged = []
    monkeypatch.setattr(base_restoration, 'get_root_logger', lambda: SimpleNamespace(info=logged.append))
    model = SimpleNamespace(opt={'is_train': False}, metric_results={'psnr': 20.0},
                            input_metric_results={'psnr_input': 15.0})
    RestorationModel._log_validation_metric_values(model, 'my_test', 'toy', None)
    assert logged == ['Validation toy\n\t # psnr: 20.0000\n\t # psnr_input: 15.0000\n']


@pytest.mark.slow
def test_the_last_validation_is_labelled_with_the_last_iteration(project, reference):
    """A run of 8 iterations validates at 4 and 8 and says "@ 8 iter" (basicsr counted past the end), and its
    validation also scores the inputs (val.input_metrics), as the test-time reports do."""
    log = next((project / 'experiments' / 'reference').glob('train_reference_*.log')).read_text()
    best = re.findall(r'Best: \S+ @ (\S+) iter', log)
    assert len(best) == 2 and best[-1] == str(TOTAL_ITER)
    inputs = [float(v) for v in re.findall(r'# psnr_input: (\S+)', log)]
    assert len(inputs) == 2
    expected = np.mean([_psnr(project / 'data' / 'lq' / f'{i:03d}.png', project / 'data' / 'gt' / f'{i:03d}.png')
                        for i in range(4)])
    assert inputs[0] == inputs[1] == pytest.approx(expected, abs=1e-4)


def _psnr(a: Path, b: Path) -> float:
    import cv2

    x, y = (cv2.imread(str(p)).astype(np.float64) for p in (a, b))
    return float(10 * np.log10(255 ** 2 / np.mean((x - y) ** 2)))
