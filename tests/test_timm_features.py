"""TimmFeatureExtractor (paper Table 3, VGG16 / ResNet50): taps, input formation, weights loading, end to end.

The references are computed independently: x_t by hand from the linear schedule, ImageNet normalisation with
the constants written out, and the backbone either timm's own ``features_only`` model built with the same
random init or torchvision's network applied layer by layer to the same tensor.
"""
import math
import os
import runpy
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import timm
import torch
import torchvision
import yaml
from basicsr.archs import build_network
from safetensors.torch import save_file
from torch.nn import functional as F

from difflid.priors.noise import position_noise
from difflid.priors.timm_features_arch import TimmFeatureExtractor
from tests.conftest import REPO_ROOT, write_pairs

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
ALPHA_BAR = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))


@pytest.fixture
def no_caches(tmp_path, monkeypatch):
    """Empty torch hub and Hugging Face caches and a working directory without pretrained/: no real weights."""
    for var in ('HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE'):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf_home'))
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    (tmp_path / 'work').mkdir()
    monkeypatch.chdir(tmp_path / 'work')
    return tmp_path


@pytest.fixture(scope='module')
def vgg16():
    return TimmFeatureExtractor(model='vgg16', random_weights=True)


@pytest.fixture(scope='module')
def resnet50():
    return TimmFeatureExtractor(model='resnet50', random_weights=True)


def backbone_input(img: torch.Tensor, t: int, seed: int = 0) -> torch.Tensor:
    """What the backbone must see: the padded image noised to x_t, back in [0, 1], ImageNet-normalised."""
    b, c, h, w = img.shape
    hp, wp = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
    padded = F.pad(img, (0, wp - w, 0, hp - h), mode='reflect')
    eps = position_noise(seed, [t], c, hp, wp)[0].double()
    x_t = math.sqrt(ALPHA_BAR[t]) * (2 * padded.double() - 1) + math.sqrt(1 - ALPHA_BAR[t]) * eps
    return (((x_t + 1) / 2 - IMAGENET_MEAN.double()) / IMAGENET_STD.double()).float()


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 summation order (batch size changes the kernels), relative to the features' scale."""
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def torchvision_resnet_layer4(net: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def random_bn_statistics(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm affine and running statistics, so that a loader that skips buffers, or a
    backbone left in train mode, gives other features."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return net.eval()


@pytest.mark.parametrize('name, module, channels', [('vgg16', 'features.30', 512), ('resnet50', 'layer4', 2048)])
def test_default_tap_is_the_stride_32_map_for_any_input_size(request, name, module, channels):
    """Catches the wrong default tap (vgg16's pre_logits conv-MLP or relu5_3, resnet50's layer3), channels or
    stride not taken from the tap, and a member that crops or pads on its own."""
    extractor = request.getfixturevalue(name)
    assert extractor.tap['module'] == module  # vgg16: pool5 (the last max pool), resnet50: layer4
    assert (extractor.feature_channels, extractor.downsample_factor) == (channels, 32)
    odd = torch.rand(2, 3, 50, 70)
    feats = extractor(odd)
    assert list(feats) == [0, 500]
    for f in feats.values():
        assert f.shape == (2, channels, 2, 3) and f.dtype == torch.float32
    padded = F.pad(odd, (0, 26, 0, 14), mode='reflect')  # 64 x 96: the same position-indexed noise
    for t, f in extractor(padded).items():
        torch.testing.assert_close(feats[t], f, rtol=0, atol=0)


@pytest.mark.parametrize('name', ['vgg16', 'resnet50'])
def test_features_are_timm_features_only_of_the_normalised_noised_input(request, name):
    """Catches a missing [-1, 1] -> [0, 1] step, a missing or wrong ImageNet normalisation, noise not applied
    per timestep, another tap than features_only's last out index, and BatchNorm in train mode."""
    extractor = request.getfixturevalue(name)
    torch.manual_seed(0)  # the extractor's init_seed: the same random weights, built independently
    reference = timm.create_model(name, features_only=True, out_indices=(-1,)).eval()
    img = torch.rand(2, 3, 64, 96)
    feats = extractor(img)
    with torch.no_grad():
        for t in (0, 500):
            close(feats[t], reference(backbone_input(img, t))[0])
    assert not torch.allclose(feats[0], feats[500], rtol=1e-2, atol=1e-2 * feats[0].abs().max().item())


def test_layer_option_selects_another_tap(resnet50):
    """Catches an ignored ``layer`` option and channels/stride hard-coded to the default tap."""
    layer3 = TimmFeatureExtractor(model='resnet50', layer='layer3', random_weights=True)
    assert (layer3.feature_channels, layer3.downsample_factor, layer3.layer_index) == (1024, 16, 3)
    img = torch.rand(1, 3, 64, 96)
    f = layer3(img)[500]
    assert f.shape == (1, 1024, 4, 6)
    by_index = TimmFeatureExtractor(model='resnet50', layer=-2, random_weights=True)
    torch.testing.assert_close(by_index(img)[500], f, rtol=0, atol=0)
    relu5_3 = TimmFeatureExtractor(model='vgg16', layer=4, random_weights=True)
    assert relu5_3.tap['module'] == 'features.29' and relu5_3(img)[0].shape == (1, 512, 4, 6)
    for bad in ('layer5', 5, True):  # (resnet18: the same taps, quicker to build)
        with pytest.raises(ValueError, match=r"taps are 0: act1 \(64 ch, stride 2\).*4: layer4 \(512 ch, stride 32\)"):
            TimmFeatureExtractor(model='resnet18', layer=bad, random_weights=True)


def test_frozen_and_in_eval_mode_whatever_the_parent_does(resnet50):
    """Catches a backbone that is trainable, or put back in train mode (BatchNorm batch statistics) by a
    parent's .train()."""
    parent = torch.nn.ModuleDict({'prior': resnet50}).train()
    assert not any(m.training for m in resnet50.modules())
    assert not any(p.requires_grad for p in resnet50.parameters())
    img = torch.rand(2, 3, 32, 32, requires_grad=True)
    f = parent['prior'](img)[0]
    assert f.grad_fn is None and not f.requires_grad


def test_seeded_features_are_reproducible_and_the_two_maps_differ(resnet50):
    """Catches unseeded noise (features change between calls or batch positions), one map used for both
    CIM and HAE, and timesteps that do not reach the input."""
    a, b = torch.rand(1, 3, 32, 64), torch.rand(1, 3, 32, 64)
    first = resnet50(torch.cat([a, b]))
    again = resnet50(torch.cat([b, a]))
    for t in (0, 500):
        torch.testing.assert_close(first[t][0], again[t][1], rtol=0, atol=0)
    f_cim, f_hae = resnet50.guidance(a)
    close(f_cim, first[0][:1])  # (batch 1 vs 2: other summation order)
    close(f_hae, first[500][:1])
    assert not torch.allclose(f_cim, f_hae)
    assert not torch.equal(resnet50(a, fresh_noise=True)[500], f_hae)
    clean = TimmFeatureExtractor(model='resnet50', timesteps=[0, 0], random_weights=True)
    c1, c2 = clean.guidance(a)  # [0, 0]: both maps from the clean input
    torch.testing.assert_close(c1, c2, rtol=0, atol=0)
    close(c1, f_cim)  # the same x_0 map


def test_missing_weights_are_one_error_saying_what_to_download_and_where(no_caches):
    """Catches a silent random backbone, a download attempt, and a message that leaves out the file, its
    address or where to put it."""
    hub = no_caches / 'torch_home' / 'hub' / 'checkpoints'
    for name, files in [('vgg16', ['vgg16-397923af.pth']), ('resnet50', ['resnet50-0676ba61.pth'])]:
        with pytest.raises(FileNotFoundError) as err:
            build_network({'type': 'TimmFeatureExtractor', 'model': name})
        message = str(err.value)
        for file in files:
            assert f'https://download.pytorch.org/models/{file}' in message and str(hub / file) in message
        assert f'https://huggingface.co/timm/{name}.' in message
        assert f'pretrained/{name}.pth' in message and str(no_caches / 'work' / 'pretrained' / f'{name}.pth') in message
        assert 'network_prior: checkpoint:' in message and str(no_caches / 'hf_home' / 'hub') in message
    with pytest.raises(FileNotFoundError, match=r'checkpoint not found: .*nowhere\.pth\. Download torchvision'):
        TimmFeatureExtractor(model='vgg16', checkpoint='nowhere.pth')
    with pytest.raises(ValueError, match=r"unknown timm model 'vgg17'"):
        TimmFeatureExtractor(model='vgg17', random_weights=True)


def test_torchvision_vgg16_file_loads_and_gives_torchvision_pool5(no_caches):
    """A torchvision-format VGG16 (features.N, classifier.*) at pretrained/vgg16.pth: catches torchvision's
    classifier keys not converted (refused as not in the model), weights not loaded, and another tap than
    torchvision's ``features`` output (pool5)."""
    torch.manual_seed(3)
    tv = torchvision.models.vgg16(weights=None, init_weights=False).eval()  # PyTorch's default init: quicker
    (no_caches / 'work' / 'pretrained').mkdir()
    torch.save(tv.state_dict(), no_caches / 'work' / 'pretrained' / 'vgg16.pth')
    extractor = TimmFeatureExtractor(model='vgg16')  # found in pretrained/
    img = torch.rand(1, 3, 40, 70)
    feats = extractor(img)
    with torch.no_grad():
        for t in (0, 500):
            close(feats[t], tv.features(backbone_input(img, t)))


def test_torchvision_resnet50_file_in_the_torch_hub_cache_gives_torchvision_layer4(no_caches):
    """torchvision's resnet50-0676ba61.pth name in $TORCH_HOME/hub/checkpoints, without num_batches_tracked (as
    old torchvision files): catches the cache not searched, BatchNorm buffers not loaded, and strictness that
    refuses old files."""
    torch.manual_seed(4)
    tv = random_bn_statistics(torchvision.models.resnet50(weights=None))
    hub = no_caches / 'torch_home' / 'hub' / 'checkpoints'
    hub.mkdir(parents=True)
    torch.save({k: v for k, v in tv.state_dict().items() if not k.endswith('num_batches_tracked')},
               hub / 'resnet50-0676ba61.pth')
    extractor = TimmFeatureExtractor(model='resnet50')
    img = torch.rand(2, 3, 64, 64)
    feats = extractor(img)
    with torch.no_grad():
        for t in (0, 500):
            close(feats[t], torchvision_resnet_layer4(tv, backbone_input(img, t)))


def test_safetensors_in_the_hugging_face_cache_without_the_head_is_found_and_loaded(no_caches):
    """timm's default tag's repository (resnet18: timm/resnet18.a1_in1k) in the HF cache layout, a file with
    only the layers used: catches the HF cache not searched, .safetensors not read, and strictness that
    wrongly asks for the classifier."""
    torch.manual_seed(5)
    source = random_bn_statistics(timm.create_model('resnet18'))
    snapshot = no_caches / 'hf_home' / 'hub' / 'models--timm--resnet18.a1_in1k' / 'snapshots' / 'abc123'
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / 'refs').mkdir()
    (snapshot.parents[1] / 'refs' / 'main').write_text('abc123')
    save_file({k: v.contiguous() for k, v in source.state_dict().items() if not k.startswith('fc.')},
              str(snapshot / 'model.safetensors'))
    extractor = TimmFeatureExtractor(model='resnet18')
    img = torch.rand(1, 3, 32, 64)
    with torch.no_grad():
        expected = source.forward_intermediates(backbone_input(img, 500), indices=[4], intermediates_only=True)[0]
    close(extractor(img)[500], expected)


def test_a_wrong_file_is_named_with_its_mismatching_keys(tmp_path):
    """Catches non-strict loading of the layers used (random weights left in place), unknown keys accepted,
    and errors that do not name the file."""
    torch.manual_seed(6)
    resnet50 = torchvision.models.resnet50(weights=None).state_dict()
    resnet18 = tmp_path / 'resnet18.pth'
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet18)
    with pytest.raises(ValueError) as err:
        TimmFeatureExtractor(model='resnet50', checkpoint=str(resnet18))
    message = str(err.value)
    assert f'checkpoint {resnet18} does not fit timm model' in message and 'layer4 (feature_info[4])' in message
    assert 'missing from the file: layer1.0.conv3.weight' in message
    assert 'shape mismatch: layer1.0.conv1.weight' in message
    cases = {
        'truncated': ({k: v for k, v in resnet50.items() if k != 'layer4.2.conv3.weight'},
                      'missing from the file: layer4.2.conv3.weight'),
        'extra': ({**resnet50, 'decoder.weight': torch.zeros(1)}, 'not in the model: decoder.weight'),
    }
    for name, (state, expected) in cases.items():
        torch.save(state, tmp_path / f'{name}.pth')
        with pytest.raises(ValueError, match=expected):
            TimmFeatureExtractor(model='resnet50', checkpoint=str(tmp_path / f'{name}.pth'))
    # the head is not used, so a file with another classifier loads (strict for the layers used only)
    torch.save({**resnet50, 'fc.weight': torch.zeros(10, 2048), 'fc.bias': torch.zeros(10)}, tmp_path / 'ten.pth')
    TimmFeatureExtractor(model='resnet50', checkpoint=str(tmp_path / 'ten.pth'))
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match=r'cannot read .*junk\.pth as a PyTorch or safetensors state dict'):
        TimmFeatureExtractor(model='resnet50', checkpoint=str(tmp_path / 'junk.pth'))


TRAIN = """
name: timm_prior
model_type: DiffLI2DModel
scale: 1
num_gpu: 0
manual_seed: 0
datasets:
  train: {{name: toy, type: PairedImageDataset, dataroot_gt: {gt}, dataroot_lq: {lq}, filename_tmpl: '{{}}',
          io_backend: {{type: disk}}, gt_size: 32, use_hflip: false, use_rot: false, num_worker_per_gpu: 0,
          batch_size_per_gpu: 2, dataset_enlarge_ratio: 1, prefetch_mode: ~}}
network_prior: {{type: TimmFeatureExtractor, model: {model}, random_weights: true}}
network_g: {{type: DiffLI2D, num_feat: 8, num_heads: [1, 2, 2, 4], h_channels: {channels}}}
path: {{pretrain_network_g: ~, strict_load_g: true, resume_state: ~}}
train:
  optim_g: {{type: AdamW, lr: !!float 1.0e-3}}
  scheduler: {{type: MultiStepLR, milestones: [100], gamma: 0.5}}
  total_iter: 2
  warmup_iter: -1
  pixel_opt: {{type: L1Loss, loss_weight: 1.0, reduction: mean}}
logger: {{print_freq: 1, save_checkpoint_freq: 2, use_tb_logger: false, wandb: {{project: ~, resume_id: ~}}}}
"""


@pytest.mark.slow
@pytest.mark.parametrize('model, channels', [('resnet50', 2048), ('vgg16', 512)])
def test_difflid_trains_and_restores_with_timm_features(tmp_path, monkeypatch, capsys, model, channels):
    """The whole path, for both backbones of Table 3: catches a prior that the model, its checkpoint's config or
    infer.py cannot build, and h_channels not matching the extractor's feature_channels. (Training in a process of
    its own, as in use; infer.py in this one, which saves a start-up.)"""
    shutil.copytree(REPO_ROOT / 'tools', tmp_path / 'tools')
    gt, lq = write_pairs(tmp_path / 'data', 2, size=(40, 52))
    option = tmp_path / 'train.yml'
    option.write_text(TRAIN.format(gt=gt, lq=lq, model=model, channels=channels))
    assert yaml.safe_load(option.read_text())['network_prior']['model'] == model
    proc = subprocess.run([sys.executable, 'tools/train.py', '-opt', str(option)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    experiment = tmp_path / 'experiments' / 'timm_prior'
    log = ''.join(p.read_text() for p in experiment.glob('train_timm_prior_*.log'))
    assert 'Frozen prior: TimmFeatureExtractor' in log and f'{channels} channels at stride 32' in log
    weights = experiment / 'models' / 'net_g_2.pth'
    saved = torch.load(weights, weights_only=True)
    assert saved['config']['network_prior']['type'] == 'TimmFeatureExtractor'
    assert not any(k.startswith(('backbone', 'prior')) for k in saved['params'])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'argv', ['infer.py', '-opt', str(weights), '-i', str(lq / '000.png'),
                                      '-o', str(tmp_path / 'out')])
    with pytest.raises(SystemExit) as code:
        runpy.run_path(str(tmp_path / 'tools' / 'infer.py'), run_name='__main__')
    assert code.value.code == 0 and 'restored 1 of 1' in capsys.readouterr().out
    restored = cv2.imread(str(tmp_path / 'out' / '000.png'))
    assert restored is not None and restored.shape == (40, 52, 3)
