import os
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

from difflid import compat
from tests.conftest import free_port


def test_functional_tensor_alias_lets_basicsr_degradations_import():
    import basicsr.data.degradations as degradations
    import torchvision.transforms._functional_tensor as private

    assert sys.modules['torchvision.transforms.functional_tensor'] is private
    gray = degradations.random_add_gaussian_noise_pt(torch.rand(1, 3, 8, 8), gray_prob=1)
    assert gray.shape == (1, 3, 8, 8)


def test_basicsr_uses_the_patched_functions():
    import basicsr.train
    import basicsr.utils.options
    from basicsr.models.base_model import BaseModel

    assert basicsr.train.load_resume_state is compat.load_resume_state
    assert basicsr.utils.options.init_dist is compat.init_dist
    assert BaseModel.model_to_device is compat.model_to_device


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
    state = compat.load_resume_state(opt)
    assert state['iter'] == 200
    assert opt['path']['resume_state'].endswith('200.state')
    assert opt['path']['pretrain_network_g'].endswith('net_g_200.pth')
    assert opt['path']['param_key_g'] == 'params'


def test_explicit_resume_state_and_nothing_to_resume(tmp_path):
    opt = _resume_opt(tmp_path, auto_resume=True)
    assert compat.load_resume_state(opt) is None
    path = tmp_path / '7.state'
    torch.save({'iter': 7, 'epoch': 0}, path)
    opt = _resume_opt(tmp_path, auto_resume=False)
    opt['path']['resume_state'] = str(path)
    assert compat.load_resume_state(opt)['iter'] == 7


@pytest.fixture
def gloo_group(monkeypatch):
    monkeypatch.setitem(os.environ, 'RANK', '0')
    monkeypatch.setitem(os.environ, 'WORLD_SIZE', '1')
    monkeypatch.setitem(os.environ, 'MASTER_ADDR', '127.0.0.1')
    monkeypatch.setitem(os.environ, 'MASTER_PORT', str(free_port()))
    compat.init_dist('pytorch')
    yield
    dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU path')
def test_init_dist_uses_gloo_without_a_gpu(gloo_group):
    assert dist.get_backend() == 'gloo'
    t = torch.ones(2)
    dist.all_reduce(t)
    assert t.tolist() == [1.0, 1.0]


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU path')
def test_model_to_device_wraps_cpu_networks_in_ddp(gloo_group):
    fake_model = SimpleNamespace(device=torch.device('cpu'), opt={'dist': True, 'num_gpu': 0})
    net = compat.model_to_device(fake_model, torch.nn.Linear(2, 2))
    assert isinstance(net, DistributedDataParallel) and net.device_ids is None
    net(torch.rand(3, 2)).sum().backward()


def test_unknown_launcher_is_named():
    with pytest.raises(ValueError, match="'mpi'"):
        compat.init_dist('mpi')
