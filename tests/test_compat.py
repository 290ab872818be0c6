"""difflid/compat.py (import-time: the torchvision alias only) and difflid.entry (the tools' start-up, built from
basicsr's parts without changing basicsr), plus RestorationModel.model_to_device (DDP on the CPU, no DataParallel)."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch import distributed as dist
from torch.nn.parallel import DataParallel, DistributedDataParallel

from difflid import entry as basicsr_entry
from difflid.entry import OptionError
from difflid.models import base_restoration
from difflid.models.base_restoration import RestorationModel
from tests.conftest import REPO_ROOT, free_port


def test_functional_tensor_alias_lets_basicsr_degradations_import():
    import basicsr.data.degradations as degradations
    import torchvision.transforms._functional_tensor as private

    assert sys.modules['torchvision.transforms.functional_tensor'] is private
    gray = degradations.random_add_gaussian_noise_pt(torch.rand(1, 3, 8, 8), gray_prob=1)
    assert gray.shape == (1, 3, 8, 8)


def _basicsr_functions():
    import basicsr.test
    import basicsr.train
    import basicsr.utils.dist_util
    import basicsr.utils.options
    from basicsr.models.base_model import BaseModel

    return {'train.load_resume_state': basicsr.train.load_resume_state,
            'train.parse_options': basicsr.train.parse_options,
            'train.create_train_val_dataloader': basicsr.train.create_train_val_dataloader,
            'test.parse_options': basicsr.test.parse_options,
            'options.init_dist': basicsr.utils.options.init_dist,
            'dist_util.init_dist': basicsr.utils.dist_util.init_dist,
            'BaseModel.model_to_device': BaseModel.model_to_device}


def test_import_difflid_leaves_basicsr_functions_alone():
    # conftest imported difflid: every function must still be defined by basicsr itself
    modules = {name: f.__module__ for name, f in _basicsr_functions().items()}
    assert all(m.startswith('basicsr.') for m in modules.values()), modules
    import basicsr.utils.dist_util
    import basicsr.utils.options

    assert basicsr.utils.options.init_dist is basicsr.utils.dist_util.init_dist


def test_the_tools_entry_points_leave_basicsr_alone(tmp_path, capsys):
    """difflid's train/test are built from basicsr's parts: running one (here up to its --check) patches nothing."""
    from difflid.entry import train
    from tests.conftest import write_pairs

    gt, lq = write_pairs(tmp_path / 'data', 2)
    run = {'name': 'tiny', 'model_type': 'ImageRestorationModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
           'datasets': {'train': {'name': 'toy', 'type': 'PairedImageDataset', 'dataroot_gt': str(gt),
                                  'dataroot_lq': str(lq), 'filename_tmpl': '{}', 'io_backend': {'type': 'disk'},
                                  'gt_size': 32, 'use_hflip': True, 'use_rot': False, 'num_worker_per_gpu': 0,
                                  'batch_size_per_gpu': 1}},
           'network_g': {'type': 'DCP'},
           'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
           'train': {'optim_g': {'type': 'Adam', 'lr': 1.0e-3}, 'total_iter': 2,
                     'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                     'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
           'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False}}
    (tmp_path / 'run.yml').write_text(yaml.safe_dump(run))
    before = _basicsr_functions()
    train(tmp_path, ['-opt', str(tmp_path / 'run.yml'), '--check'])
    assert _basicsr_functions() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['data', 'run.yml']  # --check creates nothing
    assert capsys.readouterr().out.strip()


def _resume_opt(root, auto_resume):
    exp = root / 'experiments' / 'run'
    return {'auto_resume': auto_resume, 'num_gpu': 0, 'network_g': {}, 'path': {
        'experiments_root': str(exp), 'models': str(exp / 'models'), 'resume_state': None,
        'pretrain_network_g': None, 'param_key_g': 'params_ema'}}


def test_auto_resume_on_cpu_finds_the_latest_state_from_any_cwd(tmp_path, monkeypatch):
    states = tmp_path / 'root' / 'experiments' / 'run' / 'training_states'
    states.mkdir(parents=True)
    for it in (5, 40, 200):
        torch.save({'iter': it, 'epoch': 1, 'optimizers': [], 'schedulers': []}, states / f'{it}.state')
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    opt = _resume_opt(tmp_path / 'root', auto_resume=True)
    state = basicsr_entry.load_resume_state(opt)
    assert state['iter'] == 200
    assert opt['path']['resume_state'].endswith('200.state')
    assert opt['path']['pretrain_network_g'].endswith('net_g_200.pth')
    assert opt['path']['param_key_g'] == 'params'


def test_explicit_resume_state_and_nothing_to_resume(tmp_path):
    opt = _resume_opt(tmp_path, auto_resume=True)
    assert basicsr_entry.load_resume_state(opt) is None
    path = tmp_path / '7.state'
    torch.save({'iter': 7, 'epoch': 0}, path)
    opt = _resume_opt(tmp_path, auto_resume=False)
    opt['path']['resume_state'] = str(path)
    assert basicsr_entry.load_resume_state(opt)['iter'] == 7


@pytest.fixture
def gloo_group(monkeypatch):
    monkeypatch.setitem(os.environ, 'RANK', '0')
    monkeypatch.setitem(os.environ, 'WORLD_SIZE', '1')
    monkeypatch.setitem(os.environ, 'MASTER_ADDR', '127.0.0.1')
    monkeypatch.setitem(os.environ, 'MASTER_PORT', str(free_port()))
    basicsr_entry.init_dist('pytorch')
    yield
    dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU path')
def test_init_dist_uses_gloo_without_a_gpu(gloo_group):
    assert dist.get_backend() == 'gloo'
    t = torch.ones(2)
    dist.all_reduce(t)
    assert t.tolist() == [1.0, 1.0]


def _fake_model(**opt):
    return SimpleNamespace(device=torch.device('cpu'), opt={'model_type': 'DiffLI2DModel', **opt})


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU path')
def test_model_to_device_wraps_cpu_networks_in_ddp(gloo_group):
    model = _fake_model(dist=True, num_gpu=0, is_train=True)
    net = RestorationModel.model_to_device(model, torch.nn.Linear(2, 2))
    assert isinstance(net, DistributedDataParallel) and net.device_ids is None
    net(torch.rand(3, 2)).sum().backward()


def test_model_to_device_refuses_data_parallel_in_training_and_tests_on_one_gpu(monkeypatch):
    with pytest.raises(OptionError, match=r'torchrun --nproc_per_node=4 tools/train.py .* --launcher pytorch'):
        RestorationModel.model_to_device(_fake_model(dist=False, num_gpu=4, is_train=True), torch.nn.Linear(2, 2))
    logged = []
    monkeypatch.setattr(base_restoration, 'get_root_logger', lambda: SimpleNamespace(info=logged.append))
    net = RestorationModel.model_to_device(_fake_model(dist=False, num_gpu=4, is_train=False), torch.nn.Linear(2, 2))
    assert not isinstance(net, DataParallel) and isinstance(net, torch.nn.Linear)
    assert len(logged) == 1 and 'testing on one GPU' in logged[0]


def test_unknown_launcher_is_named():
    with pytest.raises(ValueError, match="'mpi'"):
        basicsr_entry.init_dist('mpi')


# Builds the training loader exactly as tools/train.py does (difflid.entry's option preparation and loaders),
# reports what one process gets, and stops.
_LOADER_PROBE = """
import json, sys
from pathlib import Path

import difflid  # noqa: F401

from basicsr.utils import get_root_logger

from difflid.entry import create_train_val_loaders, prepare_options

out = Path(sys.argv.pop(1))
opt = prepare_options(sys.argv[1:], out, is_train=True).opt
data = create_train_val_loaders(opt, get_root_logger())
batch = next(iter(data.loader))['lq'].shape[0]
report = {'world_size': opt['world_size'], 'batch': batch, 'per_epoch': len(data.loader), 'epochs': data.total_epochs}
(out / f"rank{opt['rank']}.json").write_text(json.dumps(report))
"""


def _probe_loaders(tmp_path, option, size, nproc):
    """Per-process loader facts for ``option`` over a stand-in train set of ``size`` pairs (one real image)."""
    data = tmp_path / 'data'
    if not data.is_dir():
        img = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
        for side in ('lq', 'gt'):
            (data / side).mkdir(parents=True)
            cv2.imwrite(str(data / side / 'a.png'), img)
        (data / 'pairs.txt').write_text('lq/a.png gt/a.png\n' * size)
        (tmp_path / 'probe.py').write_text(_LOADER_PROBE)
    out = tmp_path / f'out{nproc}'
    out.mkdir()
    launcher = ['-m', 'torch.distributed.run', f'--nproc_per_node={nproc}', f'--master_port={free_port()}']
    args = [str(tmp_path / 'probe.py'), str(out), '-opt', str(REPO_ROOT / 'options' / option)]
    args += ['--launcher', 'pytorch'] if nproc > 1 else []
    args += ['--force_yml', *(f'datasets:{phase}:{key}={value}' for phase in ('train', 'val')
                              for key, value in (('dataroot', data), ('meta_info_file', data / 'pairs.txt'))),
             'datasets:train:num_worker_per_gpu=0']
    cmd = [sys.executable, *(launcher if nproc > 1 else []), *args]
    proc = subprocess.run(cmd, env={**os.environ, 'OMP_NUM_THREADS': '1'}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f'rank{rank}.json').read_text()) for rank in range(nproc)]


@pytest.mark.skipif(torch.cuda.is_available(), reason='gloo processes on the CPU')
@pytest.mark.parametrize('option, size, total_batch', [
    ('lol_v1.yml', 485, 40), pytest.param('dehaze_dense_haze.yml', 45, 16, marks=pytest.mark.slow)])
def test_two_gloo_processes_take_the_single_process_batch_and_epoch(tmp_path, option, size, total_batch):
    (single,) = _probe_loaders(tmp_path, option, size, nproc=1)
    ranks = _probe_loaders(tmp_path, option, size, nproc=2)
    assert single['world_size'] == 1 and [r['world_size'] for r in ranks] == [2, 2]
    assert sum(r['batch'] for r in ranks) == single['batch'] == total_batch  # the batch of one optimizer step
    assert [r['per_epoch'] for r in ranks] == [single['per_epoch']] * 2
    assert [r['epochs'] for r in ranks] == [single['epochs']] * 2
