"""DiffusionPriorModel (train your own prior), CleanImageDataset, the DDIM sampler and tools/sample_prior.py."""
import copy
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.data import build_dataset

from difflid.analysis import probe
from difflid.data.clean_image_dataset import random_zoom_crop
from difflid.losses.diffloss_loss import DiffLoss
from difflid.models.diffusion_prior_model import DiffusionPriorModel
from difflid.priors.builder import build_prior
from difflid.priors.hspace_arch import HSpaceExtractor
from difflid.priors.sampling import denoiser_from_checkpoint, load_denoiser, sample_images
from difflid.priors.schedules import cosine_alphas_cumprod, ddim_sample, linear_alphas_cumprod
from tests.conftest import REPO_ROOT, guided_training_options, train_then_infer, write_pairs

# adm_tiny with attention at the coarsest level only: a flag that differs from the preset, so that the extractor
# loads the checkpoint only with the training's flags
SMALL_ADM = {'type': 'ADMUNet', 'preset': 'adm_tiny', 'attention_resolutions': '8'}
DIFFUSERS_CONFIG = dict(sample_size=32, block_out_channels=[16, 16, 32], layers_per_block=1, norm_num_groups=8,
                        down_block_types=['DownBlock2D', 'DownBlock2D', 'DownBlock2D'],
                        up_block_types=['UpBlock2D', 'UpBlock2D', 'UpBlock2D'])


def write_images(folder, count=4, size=(48, 56), seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        img = cv2.resize(rng.uniform(0, 255, (5, 6, 3)).astype(np.float32), size[::-1], interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f'{i}.png'), img.clip(0, 255).astype(np.uint8))
    return folder


def prior_options(data, network_g, name='prior_test', total_iter=5, ema_decay=0.9, gt_size=32, batch=4):
    """Training options of DiffusionPriorModel on a folder of images (as tools/train.py reads them)."""
    return {
        'name': name, 'model_type': 'DiffusionPriorModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
        'network_g': network_g,
        'datasets': {
            'train': {'name': 'clean', 'type': 'CleanImageDataset', 'dataroot_gt': str(data), 'gt_size': gt_size,
                      'zoom_range': [0.5, 1.0], 'num_worker_per_gpu': 0, 'batch_size_per_gpu': batch,
                      'dataset_enlarge_ratio': 10, 'prefetch_mode': None},
            'val': {'name': 'held_out', 'type': 'CleanImageDataset', 'dataroot_gt': str(data), 'gt_size': gt_size}},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': ema_decay, 'optim_g': {'type': 'Adam', 'lr': 1e-3},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5},
                  'total_iter': total_iter, 'warmup_iter': -1},
        'val': {'val_freq': total_iter, 'save_img': True, 'timesteps': [200, 600], 'num_samples': 2,
                'sample_steps': 2},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': total_iter, 'use_tb_logger': False,
                   'wandb': {'project': None, 'resume_id': None}},
    }


def in_process_model(tmp_path, opt):
    """The model as basicsr's train pipeline builds it, without the pipeline (CPU, one process)."""
    opt = copy.deepcopy(opt)
    opt.update(is_train=True, dist=False, rank=0, world_size=1)
    for key in ('models', 'training_states', 'visualization'):
        (tmp_path / key).mkdir(exist_ok=True)
        opt['path'][key] = str(tmp_path / key)
    return DiffusionPriorModel(opt)


def train(cwd, option):
    """tools/train.py -opt option in ``cwd``, from a copy of tools/ there (basicsr writes experiments/ beside it)."""
    shutil.copytree(REPO_ROOT / 'tools', cwd / 'tools', dirs_exist_ok=True)
    (cwd / 'train.yml').write_text(yaml.safe_dump(option))
    proc = subprocess.run([sys.executable, str(cwd / 'tools' / 'train.py'), '-opt', 'train.yml'], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cwd / 'experiments' / option['name']


# ------------------------------------------------------------------------------------------------ data

def test_clean_images_are_zoomed_then_cropped(tmp_path):
    """A horizontal ramp (value = 2·x) shows the zoom: a 0.5 zoom doubles the step between neighbouring columns."""
    ramp = np.repeat((np.arange(128) * 2).astype(np.uint8)[None, :, None], 96, axis=0).repeat(3, axis=2)
    (tmp_path / 'ramp').mkdir()
    cv2.imwrite(str(tmp_path / 'ramp' / 'r.png'), ramp)
    steps = {}
    for zoom in (1.0, 0.5):
        ds = build_dataset({'name': 'ramp', 'type': 'CleanImageDataset', 'phase': 'train',
                            'dataroot_gt': str(tmp_path / 'ramp'), 'gt_size': 32, 'zoom_range': [zoom, zoom],
                            'use_hflip': False})
        gt = ds[0]['gt']
        assert gt.shape == (3, 32, 32) and gt.dtype == torch.float32
        steps[zoom] = float(gt[0, 16, 1:].mul(255).diff().median())
    assert steps[1.0] == pytest.approx(2, abs=0.01) and steps[0.5] == pytest.approx(4, abs=0.3)
    # a crop never leaves the image, even when the zoom would make it smaller than the crop
    assert random_zoom_crop(ramp, 64, (0.1, 0.1)).shape == (64, 64, 3)


def test_validation_crops_are_fixed_and_training_crops_vary(tmp_path):
    opt = {'name': 'b', 'type': 'CleanImageDataset', 'source': 'bundled', 'images': ['astronaut', 'china'],
           'gt_size': 32, 'zoom_range': [0.25, 1.0]}
    val = build_dataset({**opt, 'phase': 'val'})
    assert torch.equal(val[1]['gt'], val[1]['gt']) and val[1]['gt_path'] == 'china'
    train_set = build_dataset({**opt, 'phase': 'train'})
    assert not all(torch.equal(train_set[0]['gt'], train_set[0]['gt']) for _ in range(3))
    whole = build_dataset({'name': 'w', 'type': 'CleanImageDataset', 'phase': 'val', 'source': 'bundled',
                           'images': ['china']})
    assert whole[0]['gt'].shape == (3, 416, 640)  # 427 x 640 centre-cropped to multiples of 32


def test_lmdb_gives_the_folder_images(tmp_path):
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs

    folder = write_images(tmp_path / 'imgs', 2)
    make_lmdb_from_imgs(str(folder), str(tmp_path / 'imgs.lmdb'), ['0.png', '1.png'], ['0', '1'])
    opts = {'name': 'l', 'type': 'CleanImageDataset', 'phase': 'val'}
    disk = build_dataset({**opts, 'dataroot_gt': str(folder)})
    lmdb = build_dataset({**opts, 'dataroot_gt': str(tmp_path / 'imgs.lmdb'), 'io_backend': {'type': 'lmdb'}})
    assert len(lmdb) == 2 and torch.equal(disk[1]['gt'], lmdb[1]['gt'])


@pytest.mark.parametrize('change,error,named', [
    ({'dataroot_gt': 'nowhere'}, FileNotFoundError, 'nowhere'),
    ({'dataroot_gt': None, 'source': 'bundled', 'images': ['unicorn']}, FileNotFoundError, 'unicorn'),
    ({'gt_szie': 32}, KeyError, 'gt_szie'),
    ({'zoom_range': [1.0, 0.5]}, ValueError, 'zoom_range'),
])
def test_dataset_errors_name_the_key_or_file(tmp_path, change, error, named):
    opt = {'name': 'e', 'type': 'CleanImageDataset', 'dataroot_gt': str(write_images(tmp_path / 'i', 1)), **change}
    with pytest.raises(error, match=named):
        build_dataset({k: v for k, v in opt.items() if v is not None})


# --------------------------------------------------------------------------------------------- sampler

def test_ddim_recovers_the_one_point_of_a_known_distribution():
    """With the exact ε of a distribution concentrated on one image c, every DDIM path ends at c."""
    c = torch.rand(1, 3, 8, 8) * 1.6 - 0.8
    alphas = linear_alphas_cumprod()

    def oracle(x_t, t):
        a = alphas[t].float()[:, None, None, None]
        return (x_t - a.sqrt() * c) / (1 - a).sqrt()

    out = ddim_sample(oracle, (2, 3, 8, 8), alphas, num_steps=10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, c.expand(2, -1, -1, -1), atol=1e-4, rtol=0)


def test_ddim_equals_diffusers_ddim_scheduler():
    diffusers = pytest.importorskip('diffusers')
    weight = torch.randn(3, 3, generator=torch.Generator().manual_seed(1)) * 0.5

    def eps_fn(x_t, t):  # any smooth ε̂ that depends on x_t and t
        return torch.einsum('oc,bchw->bohw', weight, x_t) * (t.float() / 1000)[:, None, None, None] + 0.1

    ours = ddim_sample(eps_fn, (2, 3, 8, 8), linear_alphas_cumprod(), num_steps=20,
                       generator=torch.Generator().manual_seed(0))
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule='linear', beta_start=1e-4,
                                        beta_end=0.02, clip_sample=True, set_alpha_to_one=True,
                                        timestep_spacing='leading')
    scheduler.set_timesteps(20)
    x = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    for t in scheduler.timesteps:
        x = scheduler.step(eps_fn(x, t.repeat(2)), t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    torch.testing.assert_close(ours, x.clamp(-1, 1), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------- the trainer

def test_the_loss_falls_on_a_fixed_set(tmp_path):
    """50 iterations on 4 fixed images: the seeded ε-MSE at fixed timesteps (validation's measure) falls."""
    data = write_images(tmp_path / 'data', 4, size=(32, 32))
    opt = prior_options(data, {**SMALL_ADM, 'attention_resolutions': ''}, ema_decay=0)
    opt['datasets']['train']['zoom_range'] = [1.0, 1.0]
    model = in_process_model(tmp_path, opt)
    images = torch.stack([build_dataset({**opt['datasets']['val'], 'phase': 'val'})[i]['gt'] for i in range(4)])
    before = float(model.eps_mse(model.net_g, images, [100, 500, 900], seed=0).mean())
    torch.manual_seed(0)
    for it in range(50):
        model.feed_data({'gt': images})
        model.optimize_parameters(it)
    after = float(model.eps_mse(model.net_g, images, [100, 500, 900], seed=0).mean())
    assert after < 0.5 * before, (before, after)


def test_class_conditional_flags_and_a_wrong_schedule_are_refused(tmp_path):
    data = write_images(tmp_path / 'data', 1)
    with pytest.raises(ValueError, match='class_cond'):
        in_process_model(tmp_path, prior_options(data, {**SMALL_ADM, 'class_cond': True}))
    with pytest.raises(ValueError, match='noise_schedule'):
        in_process_model(tmp_path, prior_options(data, {**SMALL_ADM, 'noise_schedule': 'quadratic'}))


@pytest.mark.slow
def test_train_a_prior_then_use_it_everywhere(tmp_path):
    """5 iterations through tools/train.py; the checkpoint then loads strictly (EMA weights) into the extractor and
    DiffLoss, trains DiffLI²D for 2 iterations, runs the probe and is sampled by tools/sample_prior.py."""
    data = write_images(tmp_path / 'data', 4)
    exp = train(tmp_path, prior_options(data, SMALL_ADM))
    log = ''.join(p.read_text() for p in exp.glob('train_*.log'))
    assert re.search(r'iter: +5, .*l_eps', log) and 'eps_mse_t200' in log
    assert (exp / 'visualization' / 'samples_5.png').is_file()
    weights = exp / 'models' / 'net_g_latest.pth'
    saved = torch.load(weights, weights_only=True)
    assert saved['config']['noise_schedule'] == 'linear'
    key = 'input_blocks.1.0.in_layers.2.weight'
    assert not torch.equal(saved['params'][key], saved['params_ema'][key])  # EMA is a different set of weights

    unet = {k: v for k, v in SMALL_ADM.items() if k != 'type'}
    extractor = HSpaceExtractor(unet=unet, checkpoint=str(weights))
    assert torch.equal(extractor.unet.state_dict()[key], saved['params_ema'][key])
    assert DiffLoss(unet=unet, checkpoint=str(weights)).prior.unet.state_dict()[key].equal(saved['params_ema'][key])
    with pytest.raises(ValueError, match='noise_schedule: linear'):
        HSpaceExtractor(unet={**unet, 'noise_schedule': 'cosine'}, checkpoint=str(weights))
    with pytest.raises(ValueError, match='does not fit'):
        HSpaceExtractor(unet='adm_tiny', checkpoint=str(weights))  # other flags than the training's

    # DiffLI²D guided by it (2 iterations), then inference with the result
    gt, lq = write_pairs(tmp_path / 'pairs', 2, size=(40, 48))
    prior = {'type': 'HSpaceExtractor', 'unet': unet, 'checkpoint': str(weights), 'timesteps': [0, 500]}
    option = guided_training_options('guided', gt, lq, prior, {'type': 'DiffLI2D', 'num_feat': 8,
                                                               'num_heads': [1, 2, 2, 4], 'h_channels': 64})
    (tmp_path / 'guided.yml').write_text(yaml.safe_dump(option))
    proc = train_then_infer(tmp_path, tmp_path / 'guided.yml', tmp_path / 'experiments/guided/models/net_g_2.pth',
                            lq / '000.png', tmp_path / 'tools')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert cv2.imread(str(tmp_path / 'restored' / '000.png')).shape == (40, 48, 3)

    # the probe, prior against its random control
    from tests.test_probe import tiny_options, write_scene_pairs

    opt = probe.check_probe_options({**tiny_options(write_scene_pairs(tmp_path / 'probe_data')),
                                     'network_prior': {k: v for k, v in prior.items() if k != 'timesteps'}})
    summary = probe.run_probe(opt, tmp_path / 'probe')
    assert {r['t'] for r in summary['records']} == {0, 500}

    # samples, from the checkpoint and from the training option file
    for source in (weights, tmp_path / 'train.yml'):
        out = tmp_path / f'samples_{source.suffix[1:]}.png'
        proc = subprocess.run([sys.executable, str(REPO_ROOT / 'tools' / 'sample_prior.py'), '-opt', str(source),
                               '-o', str(out), '-n', '3', '--size', '32', '--steps', '2'], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert cv2.imread(str(out)).shape == (2 + 2 * 34, 2 + 2 * 34, 3)  # 2 x 2 grid of 32 px, 2 px gaps

    # a prior is not a restoration network
    proc = subprocess.run([sys.executable, str(REPO_ROOT / 'tools' / 'infer.py'), '-opt', str(weights), '-i',
                           str(lq / '000.png'), '-o', str(tmp_path / 'x')], capture_output=True, text=True)
    assert proc.returncode != 0 and 'diffusion prior' in proc.stderr


def test_a_diffusers_prior_trains_and_loads_into_the_extractor(tmp_path):
    pytest.importorskip('diffusers')
    from difflid.priors.diffusers_unet_arch import DiffusersUNetExtractor

    data = write_images(tmp_path / 'data', 2)
    opt = prior_options(data, {'type': 'DiffusersUNet2D', 'config': DIFFUSERS_CONFIG, 'noise_schedule': 'cosine'},
                        total_iter=2)
    model = in_process_model(tmp_path, opt)
    for it in range(2):
        model.feed_data({'gt': torch.rand(2, 3, 32, 32)})
        model.optimize_parameters(it)
    model.save(0, 2)
    weights = tmp_path / 'models' / 'net_g_2.pth'
    ema = torch.load(weights, weights_only=True)['params_ema']
    extractor = DiffusersUNetExtractor(config=DIFFUSERS_CONFIG, checkpoint=str(weights), noise_schedule='cosine')
    key = 'conv_in.weight'
    assert torch.equal(extractor.unet.state_dict()[key], ema[f'unet.{key}'])
    assert float(extractor.alphas_cumprod[500]) == pytest.approx(float(cosine_alphas_cumprod()[500]))  # not linear
    assert extractor(torch.rand(1, 3, 32, 32))[500].shape == (1, 32, 8, 8)
    with pytest.raises(ValueError, match='noise_schedule: cosine'):
        DiffusersUNetExtractor(config=DIFFUSERS_CONFIG, checkpoint=str(weights))
    samples = sample_images(denoiser_from_checkpoint(weights), 2, 32, steps=2)
    assert samples.shape == (2, 3, 32, 32) and 0 <= samples.min() and samples.max() <= 1


def test_sampling_any_prior_block_and_its_errors(tmp_path):
    block = {'type': 'HSpaceExtractor', 'unet': 'adm_tiny', 'checkpoint': None, 'random_weights': True}
    (tmp_path / 'p.yml').write_text(yaml.safe_dump({'network_prior': block}))
    denoiser = load_denoiser(tmp_path / 'p.yml', tmp_path)
    first = sample_images(denoiser, 2, 32, steps=2, seed=3)
    assert first.shape == (2, 3, 32, 32) and torch.equal(first, sample_images(denoiser, 2, 32, steps=2, seed=3))
    with pytest.raises(ValueError, match='multiple of 32'):
        sample_images(denoiser, 1, 48)
    (tmp_path / 't.yml').write_text(yaml.safe_dump({'network_prior': {'type': 'TimmFeatureExtractor'}}))
    with pytest.raises(ValueError, match='no diffusion network'):
        load_denoiser(tmp_path / 't.yml', tmp_path)
    (tmp_path / 'r.yml').write_text(yaml.safe_dump({'name': 'none_yet', 'model_type': 'DiffusionPriorModel'}))
    with pytest.raises(FileNotFoundError, match='train first'):
        load_denoiser(tmp_path / 'r.yml', tmp_path)


@pytest.mark.parametrize('name,prior', [
    ('domain_adm.yml', {'type': 'HSpaceExtractor', 'unet': {'preset': 'adm256_uncond', 'num_channels': 64,
                                                            'learn_sigma': False}}),
    ('domain_diffusers.yml', {'type': 'DiffusersUNetExtractor'}),
    ('adm_tiny_bundled.yml', {'type': 'HSpaceExtractor', 'unet': 'adm_tiny'}),
])
def test_prior_option_files_build_and_their_extractor_fits(name, prior):
    """Each options/prior file builds its network, and the extractor its header names takes its state dict."""
    from basicsr.archs import build_network

    from difflid.models.diffusion_prior_model import resolve_prior_network
    from difflid.utils.options import resolve_option_file

    if prior['type'] == 'DiffusersUNetExtractor':
        pytest.importorskip('diffusers')
    opt = yaml.safe_load(resolve_option_file(REPO_ROOT / 'options' / 'prior' / name).read_text())
    block, schedule, _ = resolve_prior_network(opt['network_g'])
    net = build_network(block)
    if prior['type'] == 'DiffusersUNetExtractor':
        prior = {**prior, 'config': opt['network_g']['config'], 'noise_schedule': schedule}
    extractor = build_network({**prior, 'random_weights': True})
    state = {k.removeprefix('unet.'): v.shape for k, v in net.state_dict().items()}
    assert {k: v.shape for k, v in extractor.unet.state_dict().items()}.items() <= state.items()
    assert extractor.downsample_factor == 32


def test_the_shipped_prior_loads_from_any_working_directory(tmp_path, monkeypatch):
    """difflid/weights/adm_tiny_bundled.pth (float16, under 10 MB) loads strictly by its repository-relative path."""
    shipped = REPO_ROOT / 'difflid' / 'weights' / 'adm_tiny_bundled.pth'
    assert shipped.stat().st_size < 10 * 2 ** 20
    saved = torch.load(shipped, weights_only=True)
    assert saved['config']['noise_schedule'] == 'linear' and set(saved) == {'params', 'config'}
    assert all(v.dtype == torch.float16 for v in saved['params'].values())
    monkeypatch.chdir(tmp_path)
    extractor = HSpaceExtractor(unet='adm_tiny', checkpoint='difflid/weights/adm_tiny_bundled.pth')
    key = 'middle_block.0.in_layers.2.weight'
    assert torch.equal(extractor.unet.state_dict()[key], saved['params'][key].float())


def test_the_built_in_prior_is_measured_on_photos_it_never_saw():
    """The probe and the quickstart's validation photos are held out of the built-in prior's training set, and the
    probe's option file builds its prior from the shipped weights."""
    from difflid.utils.options import resolve_option_file

    def options(name):
        return yaml.safe_load(resolve_option_file(REPO_ROOT / 'options' / name).read_text())

    trained_on = set(options('prior/adm_tiny_bundled.yml')['datasets']['train']['images'])
    probe_opt = options('probe_bundled.yml')
    held_out = set(probe_opt['datasets']['probe']['images'])
    held_out |= set(options('quickstart.yml')['datasets']['val']['images'])
    assert held_out and not held_out & trained_on
    assert set(options('prior/adm_tiny_bundled.yml')['datasets']['val']['images']) == set(
        probe_opt['datasets']['probe']['images'])
    probe.check_probe_options(probe_opt)
    prior = build_prior(probe_opt['network_prior'])
    assert prior.feature_channels == options('quickstart_prior_bundled.yml')['network_g']['h_channels']


@pytest.mark.slow
def test_a_prior_run_resumes_with_auto_resume(tmp_path):
    """basicsr's --auto_resume continues a DiffusionPriorModel run from its last training state, its EMA included."""
    data = write_images(tmp_path / 'data', 2)
    option = prior_options(data, {**SMALL_ADM, 'attention_resolutions': ''}, name='resumed', total_iter=2, batch=2,
                           ema_decay=0.9999)  # the EMA barely moves: restored, it stays near the start weights
    option['val'] = {'val_freq': 100, 'save_img': False, 'timesteps': [500]}
    exp = train(tmp_path, option)
    first = torch.load(exp / 'models' / 'net_g_2.pth', weights_only=True)
    option['train']['total_iter'] = 4
    (tmp_path / 'train.yml').write_text(yaml.safe_dump(option))
    proc = subprocess.run([sys.executable, str(tmp_path / 'tools' / 'train.py'), '-opt', 'train.yml', '--auto_resume'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = ''.join(p.read_text() for p in sorted(exp.glob('train_*.log')))
    resumed = log[log.index('Resuming training from epoch'):]
    assert re.search(r'iter: +3, ', resumed) and re.search(r'iter: +4, ', resumed)
    assert not re.search(r'iter: +1, ', resumed)  # continued, not restarted
    last = torch.load(exp / 'models' / 'net_g_4.pth', weights_only=True)
    key = 'input_blocks.0.0.weight'
    ema_drift = (last['params_ema'][key] - first['params_ema'][key]).abs().max()
    params_gap = (first['params'][key] - first['params_ema'][key]).abs().max()
    # an EMA rebuilt from the resumed params would sit at params_gap from the saved one
    assert ema_drift < 0.01 * params_gap
