import copy
import signal
import subprocess
import sys
import time

import pytest
import torch
from basicsr.models import build_model

from difflid.archs.difflid_arch import DiffLI2D
from difflid.inference import restore
from difflid.models.difflid_model import DiffLI2DModel
from difflid.utils.checkpoint_io import atomic_torch_save
from difflid.utils.padding import pad_to_multiple
from difflid.utils.tiling import tiled_apply
from tests.conftest import hazy_astronaut, nontrivial_weights

NET_G = dict(type='DiffLI2D', num_feat=8, width_mult=[1, 2, 4, 8], num_enc_blocks=[1, 1, 1], num_heads=[1, 2, 2, 4],
             h_channels=64)
PRIOR = dict(type='HSpaceExtractor', unet='adm_tiny', random_weights=True, timesteps=[0, 500])


def make_opt(tmp_path, is_train=True, **overrides):
    opt = {
        'name': 'unit', 'model_type': 'DiffLI2DModel', 'scale': 1, 'num_gpu': 0, 'dist': False, 'rank': 0,
        'world_size': 1, 'is_train': is_train, 'network_g': dict(NET_G), 'network_prior': dict(PRIOR),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None,
                 'models': str(tmp_path / 'models'), 'training_states': str(tmp_path / 'states'),
                 'results_root': str(tmp_path), 'visualization': str(tmp_path / 'vis')},
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [10],
                                                                          'gamma': 0.5},
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
        'val': {'metrics': None},
    }
    for key, value in overrides.items():
        section, _, sub = key.partition('.')
        if sub:
            opt[section][sub] = value
        else:
            opt[key] = value
    (tmp_path / 'models').mkdir(exist_ok=True)
    (tmp_path / 'states').mkdir(exist_ok=True)
    return opt


def _batch(b=2, hw=(64, 64)):
    gen = torch.Generator().manual_seed(0)
    gt = torch.rand(b, 3, *hw, generator=gen)
    return {'lq': 0.6 * gt + 0.35, 'gt': gt}


def test_pad_to_multiple_round_trip():
    x = torch.rand(1, 3, 45, 70)
    padded = pad_to_multiple(x, 32)
    assert padded.shape[-2:] == (64, 96)
    torch.testing.assert_close(padded[..., :45, :70], x, rtol=0, atol=0)
    torch.testing.assert_close(padded[..., 45, :70], x[..., 43, :])  # reflection about the last row
    tiny = torch.rand(1, 3, 5, 40)  # too short to reflect 27 rows: replicated
    assert torch.equal(pad_to_multiple(tiny, 32)[..., 31, :40], tiny[..., 4, :])


def test_tiles_blend_to_the_whole_image_for_a_pointwise_function():
    x = torch.rand(1, 3, 70, 90)
    torch.testing.assert_close(tiled_apply(lambda t, origin: t * 2 + 1, x, tile=32, overlap=8), x * 2 + 1)
    with pytest.raises(ValueError, match='tile_overlap'):
        tiled_apply(lambda t, origin: t, x, tile=32, overlap=32)


def test_a_training_step_trains_net_g_and_leaves_the_prior_untouched(tmp_path):
    model = build_model(make_opt(tmp_path))
    assert isinstance(model, DiffLI2DModel)
    prior_before = copy.deepcopy(model.prior.state_dict())
    net_before = copy.deepcopy(model.net_g.state_dict())
    prior_ids = {id(p) for p in model.prior.parameters()}
    assert not any(id(p) in prior_ids for group in model.optimizer_g.param_groups for p in group['params'])
    model.feed_data(_batch())
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_pix'}
    assert all(p.grad is None and not p.requires_grad for p in model.prior.parameters())
    torch.testing.assert_close(model.prior.state_dict(), prior_before, rtol=0, atol=0)
    assert any(not torch.equal(v, net_before[k]) for k, v in model.net_g.state_dict().items())

    model.save(0, 1)
    saved = torch.load(tmp_path / 'models' / 'net_g_1.pth', weights_only=True)
    assert set(saved) == {'params', 'config'} and set(saved['params']) == set(model.net_g.state_dict())
    assert saved['config'] == {'network_g': NET_G, 'network_prior': PRIOR}  # for tools/infer.py
    assert not any('unet' in k or 'prior' in k for k in saved['params'])
    state = torch.load(tmp_path / 'states' / '1.state', weights_only=True)
    assert state['iter'] == 1 and len(state['optimizers']) == 1


def test_adamw_and_ema_are_supported(tmp_path):
    opt = make_opt(tmp_path)
    opt['train'].update(optim_g={'type': 'AdamW', 'lr': 1e-3, 'weight_decay': 0.01}, ema_decay=0.9)
    model = build_model(opt)
    assert isinstance(model.optimizer_g, torch.optim.AdamW) and opt['train']['optim_g']['type'] == 'AdamW'
    model.feed_data(_batch())
    model.optimize_parameters(1)
    model.save(0, 1)
    assert set(torch.load(tmp_path / 'models' / 'net_g_1.pth', weights_only=True)) == {'params', 'params_ema', 'config'}


def test_nan_loss_stops_with_the_iteration_and_no_update(tmp_path):
    model = build_model(make_opt(tmp_path))
    before = copy.deepcopy(model.net_g.state_dict())
    batch = _batch()
    batch['gt'][0, 0, 0, 0] = float('nan')
    model.feed_data(batch)
    with pytest.raises(FloatingPointError, match='iteration 1234'):
        model.optimize_parameters(1234)
    torch.testing.assert_close(model.net_g.state_dict(), before, rtol=0, atol=0)


def test_test_outputs_are_deterministic_and_keep_odd_sizes(tmp_path):
    model = build_model(make_opt(tmp_path, is_train=False))
    model.feed_data(_batch(1, (45, 70)))
    model.test()
    first = model.output.clone()
    assert first.shape == (1, 3, 45, 70)
    model.test()
    torch.testing.assert_close(model.output, first, rtol=0, atol=0)


def test_tiled_test_agrees_with_the_whole_image(tmp_path):
    # val.tile and val.tile_overlap reach restore(), which runs the tiles with the prior's position-indexed
    # noise. Weights as in test_prior_noise_and_dtype.py (a new DiffLI2D is the identity, on which tiles agree
    # trivially): tiles agree with the whole image to 28.8 dB, measured; the old size-dependent noise: 23.4 dB.
    torch.manual_seed(0)
    weights = nontrivial_weights(DiffLI2D(**{k: v for k, v in NET_G.items() if k != 'type'})).state_dict()
    whole = build_model(make_opt(tmp_path, is_train=False))
    tiled = build_model(make_opt(tmp_path, is_train=False, **{'val.tile': 192, 'val.tile_overlap': 96}))
    lq = hazy_astronaut()
    for model in (whole, tiled):
        model.net_g.load_state_dict(weights)
        model.feed_data({'lq': lq})
        model.test()
    assert whole.output.shape == tiled.output.shape == (1, 3, 256, 384)
    with torch.no_grad():
        expected = restore(tiled.net_g, lq, tiled.prior, tile=192, tile_overlap=96)
    torch.testing.assert_close(tiled.output, expected, rtol=0, atol=0)
    mse = (whole.output - tiled.output).square().mean()
    assert 10 * torch.log10(1 / mse) > 27


@pytest.mark.parametrize('change, error, match', [
    (lambda o: o.pop('network_prior'), KeyError, 'network_prior'),
    (lambda o: o['network_g'].update(num_blok=2), KeyError, 'num_blok'),
    (lambda o: o['network_g'].update(type='DiffLI3D'), KeyError, 'DiffLI3D'),
    (lambda o: o['network_prior'].update(timesteps=[0, 250, 500]), ValueError, 'timesteps'),
    (lambda o: o['network_g'].update(h_channels=1024), ValueError, 'h_channels: 64'),
    (lambda o: o['network_g'].update(h_stride=16), ValueError, 'h_stride: 32'),
    (lambda o: o.update(network_prior={'type': 'DCP'}), KeyError, 'network_prior.type'),
    (lambda o: o['train']['optim_g'].update(type='Adamm'), KeyError, 'Adamm'),
    (lambda o: o['val'].update(tile=100), ValueError, 'val.tile'),
])
def test_bad_options_fail_at_start_naming_the_key(tmp_path, change, error, match):
    opt = make_opt(tmp_path)
    change(opt)
    with pytest.raises(error, match=match):
        build_model(opt)


_SAVER = """
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location('checkpoint_io', sys.argv[2])  # no difflid/basicsr import: fast
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
atomic_torch_save = getattr(torch, 'save') if sys.argv[3] == 'plain' else module.atomic_torch_save
i = 0
while True:
    i += 1
    atomic_torch_save({'i': i, 'w': torch.full((4_000_000,), float(i))}, sys.argv[1])
    print(i, flush=True)
"""


def kill_while_saving(path, mode: str, delays=(0.05, 0.3)) -> list[str]:
    """SIGKILL a process that saves checkpoints in a loop; return what loading ``path`` gave after each kill."""
    import difflid.utils.checkpoint_io as checkpoint_io

    outcomes = []
    for delay in delays:
        proc = subprocess.Popen([sys.executable, '-c', _SAVER, str(path), checkpoint_io.__file__, mode],
                                stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # one save done: the loop is now busy saving
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        try:
            state = torch.load(path, weights_only=True)
            outcomes.append('ok' if torch.all(state['w'] == state['i']) else 'mixed')
        except Exception as err:  # noqa: BLE001  a truncated file fails in several ways
            outcomes.append(type(err).__name__)
    return outcomes


def test_kill_during_saves_never_leaves_a_corrupt_checkpoint(tmp_path):
    path = tmp_path / 'latest.pth'
    atomic_torch_save({'i': 0, 'w': torch.zeros(4_000_000)}, path)
    assert kill_while_saving(path, 'atomic') == ['ok', 'ok']


def test_float_metrics_score_the_unrounded_output_in_validation(tmp_path):
    # A new DiffLI2D returns its input, so the restored float image is lq exactly: the float PSNR must equal
    # scikit-image's PSNR of lq against GT, while basicsr's PSNR scores both rounded to uint8.
    from types import SimpleNamespace

    from skimage.metrics import peak_signal_noise_ratio

    metrics = {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False},
               'psnr_float': {'type': 'calculate_psnr_float', 'crop_border': 0, 'test_y_channel': False}}
    model = build_model(make_opt(tmp_path, is_train=False, val={'metrics': metrics, 'input_metrics': True}))
    batch = _batch(1, (40, 48))
    data = [{**batch, 'lq_path': ['toy.png']}]
    loader = type('Loader', (), {'dataset': SimpleNamespace(opt={'name': 'toy'}), '__iter__': lambda self: iter(data),
                                 '__len__': lambda self: 1})()
    model.nondist_validation(loader, 0, None, save_img=False)
    expected = peak_signal_noise_ratio(batch['gt'][0].numpy(), batch['lq'][0].clamp(0, 1).numpy(), data_range=1)
    records = (tmp_path / 'metrics_toy.csv').read_text().splitlines()
    header, row = records[0].split(','), records[1].split(',')
    scores = dict(zip(header, row, strict=True))
    assert float(scores['psnr_float']) == pytest.approx(expected, abs=1e-6)
    assert float(scores['psnr_float_input']) == pytest.approx(expected, abs=1e-6)
    assert abs(float(scores['psnr']) - expected) > 1e-5  # basicsr's rounds both to uint8 first
