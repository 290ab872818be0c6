"""Network checkpoints as safetensors (``logger.save_checkpoint_format``, ``tools/export_prior.py --format``): exact
round trips, the ``config`` record in the metadata, loading wherever a checkpoint is read, one error for a bad file.

The references are read with the safetensors library itself (``safe_open``, ``load_file``), not with difflid's
reader, and the .pth twins are written with ``torch.save``."""
import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from difflid.archs.difflid_arch import DiffLI2D
from difflid.models.base_restoration import RestorationModel
from difflid.priors.hspace_arch import HSpaceExtractor
from difflid.utils.checkpoint_io import load_network_weights, read_checkpoint, save_checkpoint
from difflid.utils.errors import OptionError
from difflid.utils.option_schema import validate_options
from tests.conftest import REPO_ROOT, guided_training_options, write_pairs

NET_G = {'type': 'DiffLI2D', 'num_feat': 8, 'num_heads': [1, 2, 2, 4], 'h_channels': 64}
PRIOR = {'type': 'HSpaceExtractor', 'unet': 'adm_tiny', 'random_weights': True}
BUNDLED = REPO_ROOT / 'difflid' / 'weights' / 'adm_tiny_bundled.pth'


def _net(seed: int) -> DiffLI2D:
    torch.manual_seed(seed)
    return DiffLI2D(**{k: v for k, v in NET_G.items() if k != 'type'})


def _pth_twin(path: Path) -> Path:
    """The .pth that holds what the safetensors file holds, rebuilt with the safetensors library and torch.save."""
    flat = load_file(path)
    with safe_open(path, framework='pt') as f:
        metadata = f.metadata()
    twin = {g: {k.removeprefix(f'{g}.'): v for k, v in flat.items() if k.startswith(f'{g}.')}
            for g in json.loads(metadata['difflid.groups'])}
    twin['config'] = json.loads(metadata['config'])
    torch.save(twin, path.with_suffix('.pth'))
    return path.with_suffix('.pth')


def test_a_checkpoint_round_trips_exactly_with_its_config_in_the_metadata(tmp_path, monkeypatch):
    models = tmp_path / 'models'
    models.mkdir()
    opt = {'network_g': NET_G, 'network_prior': {**PRIOR, 'checkpoint': 'pretrained/x.pt'},
           'path': {'models': str(models)}, 'logger': {'save_checkpoint_format': 'safetensors'}}
    model = SimpleNamespace(opt=opt, get_bare_model=lambda net: net)
    model.checkpoint_config = lambda: RestorationModel.checkpoint_config(model)
    net, ema = _net(0), _net(1).half()  # EMA in float16: the dtype is kept
    monkeypatch.chdir(tmp_path)
    RestorationModel.save_network(model, [net, ema], 'net_g', 7, param_key=['params', 'params_ema'])
    path = models / 'net_g_7.safetensors'
    assert sorted(p.name for p in models.iterdir()) == ['net_g_7.safetensors']
    with safe_open(path, framework='pt') as f:  # what any safetensors reader sees
        config = json.loads(f.metadata()['config'])
        flat = {k: f.get_tensor(k) for k in f.keys()}
    assert config == {'network_g': NET_G,
                      'network_prior': {**PRIOR, 'checkpoint': str(tmp_path / 'pretrained' / 'x.pt')}}
    for group, source in (('params', net), ('params_ema', ema)):
        for key, value in source.state_dict().items():
            assert flat[f'{group}.{key}'].dtype == value.dtype and torch.equal(flat[f'{group}.{key}'], value), key
    loaded = read_checkpoint(path)
    assert sorted(loaded) == ['config', 'params', 'params_ema'] and loaded['config'] == config
    for group, source in (('params', net), ('params_ema', ema)):
        assert loaded[group].keys() == source.state_dict().keys()
        assert all(torch.equal(loaded[group][k], v) and loaded[group][k].dtype == v.dtype
                   for k, v in source.state_dict().items())
    fresh = _net(2)
    load_network_weights(fresh, path, 'params_ema')  # float16 -> the network's float32, as from a .pth
    assert all(torch.equal(v, ema.state_dict()[k].float()) for k, v in fresh.state_dict().items())


def test_tied_weights_and_a_plain_state_dict(tmp_path):
    shared = torch.arange(6.0).reshape(2, 3)
    save_checkpoint({'a': shared, 'b': shared, 'c': shared[0]}, tmp_path / 'plain.safetensors')
    assert not safe_open(tmp_path / 'plain.safetensors', 'pt').metadata()  # no groups: a plain state dict
    loaded = read_checkpoint(tmp_path / 'plain.safetensors')
    assert sorted(loaded) == ['a', 'b', 'c'] and torch.equal(loaded['b'], shared)
    assert torch.equal(loaded['c'], shared[0])


@pytest.mark.parametrize('damage', ['truncated', 'garbage', 'bad header'])
def test_a_damaged_safetensors_file_is_one_error_naming_it(tmp_path, monkeypatch, capsys, damage):
    path = tmp_path / 'net_g_latest.safetensors'
    save_checkpoint({'params': _net(0).state_dict(), 'config': {'network_g': NET_G, 'network_prior': PRIOR}}, path)
    data = path.read_bytes()
    path.write_bytes({'truncated': data[:len(data) // 2], 'garbage': b'\x00\x01not a checkpoint' * 3,
                      'bad header': data[:8] + b'{"x": ' + data[14:]}[damage])
    with pytest.raises(OptionError, match='net_g_latest.safetensors'):
        load_network_weights(_net(0), path, 'params')
    monkeypatch.chdir(tmp_path)
    cv2.imwrite('x.png', np.zeros((8, 8, 3), np.uint8))
    monkeypatch.setattr(sys, 'argv', ['infer.py', '-opt', str(path), '-i', 'x.png', '-o', 'out'])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO_ROOT / 'tools' / 'infer.py'), run_name='__main__')
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and 'Traceback' not in err
    assert err.startswith(f'error: {path}') and len(err.strip().splitlines()) == 1, err
    with pytest.raises(ValueError, match='net_g_latest.safetensors'):  # as a prior checkpoint
        HSpaceExtractor(unet='adm_tiny', checkpoint=str(path))


def test_the_prior_loads_from_an_exported_safetensors_file(tmp_path, monkeypatch, capsys):
    export = runpy.run_path(str(REPO_ROOT / 'tools' / 'export_prior.py'))['main']
    export([str(BUNDLED), str(tmp_path / 'prior.pth')])
    export([str(BUNDLED), str(tmp_path / 'prior'), '--format', 'safetensors'])
    export([str(tmp_path / 'prior.safetensors'), str(tmp_path / 'again.safetensors')])  # safetensors in, too
    assert 'prior.safetensors' in capsys.readouterr().out
    reference = torch.load(BUNDLED, weights_only=True)
    with safe_open(tmp_path / 'prior.safetensors', framework='pt') as f:
        assert json.loads(f.metadata()['config']) == reference['config']
        assert sorted(f.keys()) == sorted(f'params.{k}' for k in reference['params'])
        for key, value in reference['params'].items():  # float16 as shipped, kept
            assert value.dtype == torch.float16 and torch.equal(f.get_tensor(f'params.{key}'), value)
    assert load_file(tmp_path / 'prior.safetensors').keys() == load_file(tmp_path / 'again.safetensors').keys()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    features = [HSpaceExtractor(unet='adm_tiny', checkpoint=str(tmp_path / name)).guidance(image)
                for name in ('prior.pth', 'prior.safetensors', 'again.safetensors')]
    for other in features[1:]:
        assert all(torch.equal(a, b) for a, b in zip(features[0], other, strict=True))
    assert not torch.equal(features[0][0], HSpaceExtractor(unet='adm_tiny', random_weights=True).guidance(image)[0])


TEST_YML = """
name: {name}
model_type: DiffLI2DModel
scale: 1
num_gpu: 0
manual_seed: 0
datasets:
  test_1: {{name: toy, type: PairedImageDataset, dataroot_gt: {gt}, dataroot_lq: {lq}, io_backend: {{type: disk}}}}
network_prior: {prior}
network_g: {net}
path: {{pretrain_network_g: {weights}, param_key_g: params_ema, strict_load_g: true}}
val: {{save_img: true, suffix: ~}}
"""


@pytest.mark.slow
def test_a_run_saving_safetensors_resumes_and_tests_as_its_pth_twin(tmp_path):
    """Train 2 iterations (EMA on) saving safetensors, resume to 4, then tools/test.py and tools/infer.py on the
    safetensors checkpoint and on its .pth twin (written by torch.save from the safetensors library's reading)."""
    gt, lq = write_pairs(tmp_path / 'data', 2, size=(32, 40))
    option = guided_training_options('st', gt, lq, PRIOR, NET_G)
    option['train']['ema_decay'] = 0.9
    option['logger']['save_checkpoint_format'] = 'safetensors'
    (tmp_path / 'train.yml').write_text(yaml.safe_dump(option))
    models = tmp_path / 'experiments' / 'st' / 'models'
    latest = models / 'net_g_latest.safetensors'
    for fmt in ('safetensors', 'pth'):
        weights = latest if fmt == 'safetensors' else latest.with_suffix('.pth')
        (tmp_path / f'test_{fmt}.yml').write_text(TEST_YML.format(
            name=f'test_{fmt}', gt=gt, lq=lq, prior=json.dumps(PRIOR), net=json.dumps(NET_G), weights=weights))
    tools = tmp_path / 'tools'  # tools/train.py writes under the folder above its own: the copy's
    shutil.copytree(REPO_ROOT / 'tools', tools)
    script = f"""
import runpy, sys
def tool(name, *args):
    sys.argv = [name, *args]
    try:
        runpy.run_path({str(tools)!r} + '/' + name, run_name='__main__')
    except SystemExit as end:  # tools/infer.py ends with its exit status
        if end.code:
            raise
tool('train.py', '-opt', 'train.yml')
tool('train.py', '-opt', 'train.yml', '--auto_resume', '--force_yml', 'train:total_iter=4')
from tests.test_safetensors import _pth_twin
_pth_twin(__import__('pathlib').Path({str(latest)!r}))
for fmt in ('safetensors', 'pth'):
    tool('test.py', '-opt', f'test_{{fmt}}.yml')
    tool('infer.py', '-opt', {str(latest.with_suffix(''))!r} + '.' + fmt, '-i', {str(lq)!r}, '-o', f'infer_{{fmt}}')
"""
    proc = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'PYTHONPATH': str(REPO_ROOT), 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stderr[-4000:]
    saved = sorted(p.name for p in models.iterdir())
    assert saved == ['net_g_2.safetensors', 'net_g_4.safetensors', 'net_g_latest.pth', 'net_g_latest.safetensors']
    assert f'model from {models / "net_g_2.safetensors"}' in proc.stdout + proc.stderr  # the resume's weights
    with safe_open(latest, framework='pt') as f:
        assert {k.split('.')[0] for k in f.keys()} == {'params', 'params_ema'}
    names = sorted(p.name for p in lq.iterdir())
    for name in names:
        stem = Path(name).stem
        for kind, folder in (('test', 'results/test_{}/visualization/toy'), ('infer', 'infer_{}')):
            pair = [cv2.imread(str(next((tmp_path / folder.format(fmt)).glob(f'{stem}*.png'))), cv2.IMREAD_UNCHANGED)
                    for fmt in ('safetensors', 'pth')]
            assert pair[0] is not None and np.array_equal(pair[0], pair[1]), (kind, name)
    lq_image = cv2.imread(str(lq / names[0]))
    assert not np.array_equal(cv2.imread(str(next((tmp_path / 'infer_pth').glob('000*.png')))), lq_image)


def test_the_format_option_is_checked_before_a_run(tmp_path):
    option = guided_training_options('st', tmp_path / 'gt', tmp_path / 'lq', PRIOR, NET_G)
    option['logger']['save_checkpoint_format'] = 'safetensors'
    assert validate_options(option, True, 'train.yml') == []
    option['logger']['save_checkpoint_format'] = 'st'
    with pytest.raises(OptionError, match=r"train.yml: logger.save_checkpoint_format: 'st' is not one of pth"):
        validate_options(option, True, 'train.yml')


def test_tools_find_the_latest_weights_in_the_runs_format(tmp_path):
    """tools/test.py -opt <training file>, the sweeps and the precompute study name net_g_latest by the run's format."""
    from difflid.utils.checkpoint_io import latest_weights_name
    from difflid.utils.options import training_to_test_options

    run = {'name': 'r', 'logger': {'save_checkpoint_format': 'safetensors'},
           'datasets': {'val': {'name': 'v', 'type': 'PairListDataset'}}}
    assert latest_weights_name(run) == 'net_g_latest.safetensors' and latest_weights_name({}, '4') == 'net_g_4.pth'
    with pytest.raises(FileNotFoundError, match=r'net_g_latest\.safetensors'):
        training_to_test_options(run, tmp_path)
    weights = tmp_path / 'experiments' / 'r' / 'models' / 'net_g_latest.safetensors'
    weights.parent.mkdir(parents=True)
    weights.touch()
    assert training_to_test_options(run, tmp_path)['path']['pretrain_network_g'] == str(weights)
