"""DiffusersUNetExtractor: a diffusers UNet2DModel folder (save_pretrained) as the frozen diffusion prior."""
import json
import re
import shutil
import subprocess
import sys

import cv2
import pytest
import torch
import yaml

diffusers = pytest.importorskip('diffusers')

from basicsr.archs import build_network  # noqa: E402

from difflid.priors.builder import control_options  # noqa: E402
from difflid.priors.diffusers_unet_arch import DiffusersUNetExtractor  # noqa: E402
from difflid.priors.noise import position_noise  # noqa: E402
from difflid.priors.schedules import linear_alphas_cumprod  # noqa: E402
from tests.conftest import REPO_ROOT, guided_training_options, train_then_infer, write_pairs  # noqa: E402

# stride 4: three blocks, two of which down-sample; attention in the middle block and one down block
STRIDE4 = dict(sample_size=32, block_out_channels=(16, 24, 32), layers_per_block=1, norm_num_groups=8,
               attention_head_dim=8, down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D'),
               up_block_types=('UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'))
# stride 8: four blocks (as the CIFAR-10 DDPM), a skip-connected down block included
STRIDE8 = dict(sample_size=32, block_out_channels=(8, 16, 16, 24), layers_per_block=1, norm_num_groups=8,
               attention_head_dim=8, down_block_types=('DownBlock2D', 'DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D'),
               up_block_types=('UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D', 'UpBlock2D'))


def save_unet(folder, config, seed=0, scheduler='squaredcos_cap_v2', steps=1000):
    """A random UNet2DModel (+ a DDPMScheduler unless scheduler is None) saved with save_pretrained."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**config).eval()
    unet.save_pretrained(folder)
    if scheduler is not None:
        diffusers.DDPMScheduler(num_train_timesteps=steps, beta_schedule=scheduler).save_pretrained(folder)
    return unet


def hooked_mid_block(unet, x_t, t):
    """The mid block's output in the full diffusers forward (decoder included), caught by a forward hook."""
    caught = []
    handle = unet.mid_block.register_forward_hook(lambda mod, inputs, output: caught.append(output))
    with torch.no_grad():
        unet(x_t, t)
    handle.remove()
    return caught[0]


@pytest.mark.parametrize('config,stride,channels', [(STRIDE4, 4, 32), (STRIDE8, 8, 24)])
def test_mid_block_of_the_full_forward_at_hand_made_x_t(tmp_path, config, stride, channels):
    reference = save_unet(tmp_path / 'unet', config)
    prior = build_network({'type': 'DiffusersUNetExtractor', 'diffusers': str(tmp_path / 'unet'),
                           'timesteps': [0, 500, 999], 'seed': 3})
    assert (prior.feature_channels, prior.downsample_factor) == (channels, stride)
    assert not hasattr(prior.unet, 'up_blocks') or len(prior.unet.up_blocks) == 0  # the decoder is not kept
    img = torch.rand(2, 3, 32, 40)
    feats = prior(img)
    alphas = diffusers.DDPMScheduler.from_pretrained(tmp_path / 'unet').alphas_cumprod
    for t in (0, 500, 999):
        eps = position_noise(3, [t], 3, 32, 40)[0]
        x_t = alphas[t].sqrt() * (2 * img - 1) + (1 - alphas[t]).sqrt() * eps
        expected = hooked_mid_block(reference, x_t, torch.tensor([t, t]))
        assert feats[t].shape == (2, channels, 32 // stride, 40 // stride)
        torch.testing.assert_close(feats[t], expected, rtol=1e-4, atol=1e-4)


def test_scheduler_schedule_padding_and_seeded_noise(tmp_path):
    save_unet(tmp_path / 'unet', STRIDE4, scheduler='squaredcos_cap_v2', steps=600)
    prior = DiffusersUNetExtractor(diffusers=str(tmp_path / 'unet'), timesteps=[0, 599])
    cosine = diffusers.DDPMScheduler(num_train_timesteps=600, beta_schedule='squaredcos_cap_v2').alphas_cumprod
    assert prior.num_diffusion_steps == 600
    torch.testing.assert_close(prior.alphas_cumprod.float(), cosine)
    assert not torch.allclose(prior.alphas_cumprod[:600:10], linear_alphas_cumprod(600)[::10], atol=1e-3)
    with pytest.raises(ValueError, match=r'\[0, 599\]'):  # T is the scheduler's
        DiffusersUNetExtractor(diffusers=str(tmp_path / 'unet'), timesteps=[0, 700])
    img = torch.rand(1, 3, 30, 37)  # not a multiple of 4: reflect-padded, ceil(H/4) x ceil(W/4)
    first, second = prior(img), prior(img)
    assert first[599].shape == (1, 32, 8, 10)
    for t in (0, 599):
        torch.testing.assert_close(first[t], second[t], rtol=0, atol=0)  # seeded: the same every call
    assert not torch.equal(prior(img, fresh_noise=True)[599], first[599])
    other_seed = DiffusersUNetExtractor(diffusers=str(tmp_path / 'unet'), timesteps=[0, 599], seed=1)
    assert not torch.allclose(other_seed(img)[599], first[599])


def test_no_scheduler_config_uses_the_linear_schedule_and_says_so(tmp_path, caplog):
    save_unet(tmp_path / 'unet', STRIDE4, scheduler=None)
    with caplog.at_level('INFO', logger='basicsr'):
        prior = DiffusersUNetExtractor(diffusers=str(tmp_path / 'unet'))
    torch.testing.assert_close(prior.alphas_cumprod, linear_alphas_cumprod(1000).to(prior.alphas_cumprod))
    assert 'linear' in caplog.text and 'scheduler_config.json' in caplog.text


def test_pipeline_folder_with_unet_and_scheduler_subfolders(tmp_path):
    pipe = tmp_path / 'ddpm-pipeline'
    reference = save_unet(pipe / 'unet', STRIDE4, scheduler=None)
    diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule='scaled_linear').save_pretrained(pipe / 'scheduler')
    index = {'_class_name': 'DDPMPipeline', 'unet': ['diffusers', 'UNet2DModel'],
             'scheduler': ['diffusers', 'DDIMScheduler']}
    (pipe / 'model_index.json').write_text(json.dumps(index))
    expected_alphas = diffusers.DDIMScheduler.from_pretrained(pipe / 'scheduler').alphas_cumprod
    for folder in (pipe, pipe / 'unet'):  # the pipeline folder, or its unet/ (scheduler found in ../scheduler)
        prior = DiffusersUNetExtractor(diffusers=str(folder), timesteps=[0, 400])
        torch.testing.assert_close(prior.alphas_cumprod.float(), expected_alphas)
        x_t, t = torch.rand(1, 3, 16, 16) * 2 - 1, torch.tensor([400])
        with torch.no_grad():
            torch.testing.assert_close(prior._features(x_t, t), hooked_mid_block(reference, x_t, t))


def test_frozen_eval_mode_and_random_weights(tmp_path):
    save_unet(tmp_path / 'unet', STRIDE4)
    prior = DiffusersUNetExtractor(diffusers=str(tmp_path / 'unet'))
    parent = torch.nn.Sequential(prior).train()
    assert not prior.training and not any(m.training for m in prior.modules())
    assert not any(p.requires_grad for p in prior.parameters())
    img = torch.rand(1, 3, 16, 16, requires_grad=True)
    assert not parent[0](img)[500].requires_grad

    # random weights from a config dict, seeded by init_seed (tests, demos)
    a = DiffusersUNetExtractor(random_weights=True, config=STRIDE8, init_seed=5)
    b = DiffusersUNetExtractor(random_weights=True, config=STRIDE8, init_seed=5)
    c = DiffusersUNetExtractor(random_weights=True, config=STRIDE8, init_seed=6)
    assert (a.feature_channels, a.downsample_factor) == (24, 8)
    sa, sb, sc = (m.unet.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and not all(torch.equal(sa[k], sc[k]) for k in sa)
    # the random control keeps the folder's architecture and schedule, not its weights
    control = build_network({**control_options({'type': 'DiffusersUNetExtractor', 'diffusers': str(tmp_path / 'unet')}),
                             'type': 'DiffusersUNetExtractor'})
    assert control.feature_channels == prior.feature_channels and torch.equal(control.alphas_cumprod,
                                                                              prior.alphas_cumprod)
    assert not torch.equal(control.unet.conv_in.weight, prior.unet.conv_in.weight)


def test_clear_errors(tmp_path, monkeypatch):
    missing = tmp_path / 'no-such-folder'
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        DiffusersUNetExtractor(diffusers=str(missing))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no config.json') as err:
        DiffusersUNetExtractor(diffusers=str(tmp_path / 'empty'))
    assert str(tmp_path / 'empty') in str(err.value)
    save_unet(tmp_path / 'unet', STRIDE4)
    for weights in (tmp_path / 'unet').glob('diffusion_pytorch_model*'):
        weights.unlink()
    with pytest.raises(FileNotFoundError, match='no weights') as err:
        DiffusersUNetExtractor(diffusers=str(tmp_path / 'unet'))
    assert str(tmp_path / 'unet') in str(err.value)
    with pytest.raises(ValueError, match='random_weights'):
        DiffusersUNetExtractor()
    with pytest.raises(ValueError, match='class-conditional'):
        DiffusersUNetExtractor(random_weights=True, config={**STRIDE4, 'num_class_embeds': 10})
    monkeypatch.setitem(sys.modules, 'diffusers', None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=re.escape('pip install -e ".[diffusers]"')):
        DiffusersUNetExtractor(diffusers=str(tmp_path / 'unet'))


@pytest.mark.slow
def test_train_and_infer_with_a_diffusers_prior(tmp_path):
    save_unet(tmp_path / 'unet', STRIDE4)
    shutil.copytree(REPO_ROOT / 'tools', tmp_path / 'tools')
    gt, lq = write_pairs(tmp_path / 'data', 2, size=(40, 48))
    # a relative folder, as users write it: the checkpoint must record where it is, for infer from anywhere
    prior = {'type': 'DiffusersUNetExtractor', 'diffusers': 'unet', 'timesteps': [0, 500]}
    # h at stride 4: three levels (2^(3-1) = 4 divides h_stride)
    option = guided_training_options('diffusers_prior', gt, lq, prior, {
        'type': 'DiffLI2D', 'num_feat': 8, 'width_mult': [1, 2, 4], 'num_enc_blocks': [1, 1], 'num_heads': [1, 2, 2],
        'h_channels': 32, 'h_stride': 4})
    (tmp_path / 'train.yml').write_text(yaml.safe_dump(option))
    exp = tmp_path / 'experiments' / 'diffusers_prior'
    weights = exp / 'models' / 'net_g_2.pth'
    tools = tmp_path / 'tools'
    proc = train_then_infer(tmp_path, tmp_path / 'train.yml', weights, lq / '000.png', tools)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = ''.join(p.read_text() for p in exp.glob('train_*.log'))
    assert '32 channels at stride 4' in log and re.search(r'iter: +2, ', log)
    assert 'scheduler_config.json' in log  # the folder's own schedule was used
    recorded = torch.load(weights, weights_only=True)['config']['network_prior']
    assert recorded == {**prior, 'diffusers': str(tmp_path / 'unet')}
    restored = cv2.imread(str(tmp_path / 'restored' / '000.png'))
    assert restored is not None and restored.shape == (40, 48, 3)
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, str(tools / 'infer.py'), '-opt', str(weights), '-i', str(lq / '000.png'),
                           '-o', 'out'], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and (elsewhere / 'out' / '000.png').is_file(), proc.stderr[-2000:]


def test_the_probe_and_the_sampler_take_a_diffusers_folder(tmp_path):
    """The probe measures a diffusers prior against its random control (built from the same folder's config), and
    tools/sample_prior.py's loader draws images from the folder with its own scheduler's schedule."""
    from difflid.analysis import probe
    from difflid.priors.sampling import load_denoiser, sample_images
    from tests.test_probe import tiny_options, write_scene_pairs

    save_unet(tmp_path / 'unet', STRIDE4)
    prior = {'type': 'DiffusersUNetExtractor', 'diffusers': str(tmp_path / 'unet'), 'seed': 0}
    opt = probe.check_probe_options({**tiny_options(write_scene_pairs(tmp_path / 'data')), 'network_prior': prior})
    summary = probe.run_probe(opt, tmp_path / 'probe')
    assert {r['t'] for r in summary['records']} == {0, 500}
    assert summary['control']['options']['random_weights'] is True
    denoiser = load_denoiser(tmp_path / 'unet', tmp_path)
    scheduler = diffusers.DDPMScheduler.from_pretrained(tmp_path / 'unet')
    torch.testing.assert_close(denoiser.alphas_cumprod.float(), scheduler.alphas_cumprod.float())
    assert sample_images(denoiser, 2, 32, steps=2).shape == (2, 3, 32, 32)
