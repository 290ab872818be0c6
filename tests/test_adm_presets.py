"""Every public ADM checkpoint by preset (issue #11): layouts, head handling, noise schedules, class labels.

The references are independent of difflid: guided-diffusion's own ``create_model`` built from the flags as its
README (and DPS's config) publish them, merged into guided-diffusion's ``model_and_diffusion_defaults`` exactly as
its scripts do, and its ``get_named_beta_schedule``.
"""
import inspect

import numpy as np
import pytest
import torch

from difflid.losses.diffloss_loss import DiffLoss
from difflid.priors.adm import DEFAULT_CLASS_LABEL
from difflid.priors.adm_unet_arch import ADM_CHECKPOINTS, ADM_PRESETS, ADMUNet, adm_flags, adm_noise_schedule
from difflid.priors.hspace_arch import HSpaceExtractor
from difflid.priors.released_features_arch import ReleasedFeatureExtractor
from difflid.priors.schedules import cosine_alphas_cumprod, linear_alphas_cumprod, named_alphas_cumprod

script_util = pytest.importorskip('guided_diffusion.script_util', reason='reference: pip install -e .[dev]')
gaussian_diffusion = pytest.importorskip('guided_diffusion.gaussian_diffusion')

# The published flags, written out as the README's MODEL_FLAGS/DIFFUSION_FLAGS lines (use_fp16 left out: it does
# not change the state dict), and for dps_ffhq DPS's configs/model_config.yaml.
_COMMON = dict(attention_resolutions='32,16,8', diffusion_steps=1000, learn_sigma=True, resblock_updown=True,
               use_scale_shift_norm=True, noise_schedule='linear')
PUBLISHED = {
    'adm64_cond': {**_COMMON, 'class_cond': True, 'dropout': 0.1, 'image_size': 64, 'noise_schedule': 'cosine',
                   'num_channels': 192, 'num_head_channels': 64, 'num_res_blocks': 3,
                   'use_new_attention_order': True},
    'adm128_cond': {**_COMMON, 'class_cond': True, 'image_size': 128, 'num_channels': 256, 'num_heads': 4,
                    'num_res_blocks': 2},
    'adm256_cond': {**_COMMON, 'class_cond': True, 'image_size': 256, 'num_channels': 256, 'num_head_channels': 64,
                    'num_res_blocks': 2},
    'adm256_uncond': {**_COMMON, 'class_cond': False, 'image_size': 256, 'num_channels': 256,
                      'num_head_channels': 64, 'num_res_blocks': 2},
    'adm512_cond': {**_COMMON, 'class_cond': True, 'image_size': 512, 'num_channels': 256, 'num_head_channels': 64,
                    'num_res_blocks': 2},
    **{name: {**_COMMON, 'class_cond': False, 'dropout': dropout, 'image_size': 256, 'num_channels': 256,
              'num_head_channels': 64, 'num_res_blocks': 2}
       for name, dropout in (('lsun_bedroom', 0.1), ('lsun_cat', 0.1), ('lsun_horse', 0.1),
                             ('lsun_horse_nodropout', 0.0))},
    'dps_ffhq': dict(image_size=256, num_channels=128, num_res_blocks=1, channel_mult='', learn_sigma=True,
                     class_cond=False, attention_resolutions='16', num_heads=4, num_head_channels=64,
                     num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0, resblock_updown=True,
                     use_new_attention_order=False, diffusion_steps=1000, noise_schedule='linear'),
}
PUBLIC = sorted(PUBLISHED)
_CREATE_MODEL_ARGS = set(inspect.signature(script_util.create_model).parameters)


def _reference_flags(name: str) -> dict:
    merged = {**script_util.model_and_diffusion_defaults(), **PUBLISHED[name]}
    return {k: v for k, v in merged.items() if k in _CREATE_MODEL_ARGS}


def test_every_preset_names_its_checkpoint():
    assert set(ADM_CHECKPOINTS) == set(ADM_PRESETS) == set(PUBLIC) | {'adm_tiny'}
    for name in PUBLIC:
        info = ADM_CHECKPOINTS[name]
        assert info['file'].endswith('.pt') and info['url'].startswith('https://') and info['source']
        assert info['noise_schedule'] == adm_noise_schedule(name) == PUBLISHED[name]['noise_schedule']
        if info['source'].endswith('guided-diffusion'):
            assert info['url'].endswith('/' + info['file'])
    assert ADM_CHECKPOINTS['dps_ffhq']['file'] == 'ffhq_10m.pt'


def test_adm256_uncond_flags_are_unchanged():
    assert adm_flags('adm256_uncond') == dict(
        image_size=256, num_channels=256, num_res_blocks=2, channel_mult='', learn_sigma=True, class_cond=False,
        attention_resolutions='32,16,8', num_head_channels=64, resblock_updown=True, use_scale_shift_norm=True)


@pytest.mark.parametrize('name', PUBLIC)
def test_preset_state_dict_equals_guided_diffusion(name):
    with torch.device('meta'):
        ours = ADMUNet(**adm_flags(name)).state_dict()
        ref = script_util.create_model(**_reference_flags(name)).state_dict()
        # the preset dict alone is complete: guided-diffusion builds the same network from it
        again = script_util.create_model(**ADM_PRESETS[name]).state_dict()
    expected = {k: v.shape for k, v in ref.items()}
    assert {k: v.shape for k, v in ours.items()} == expected
    assert {k: v.shape for k, v in again.items()} == expected
    assert ('label_emb.weight' in ours) == PUBLISHED[name]['class_cond']


def test_adm512_starts_at_half_width():
    with torch.device('meta'):
        net = ADMUNet(**adm_flags('adm512_cond'), encoder_only=True)
    assert net.input_blocks[0][0].weight.shape == (128, 3, 3, 3)
    assert net.downsample_factor == 64 and net.hspace_channels == 1024


# Shrunken 64 and 128 presets: everything as published but the width, so the head handling (64: 16-channel heads
# in the new q/k/v-first order; 128: 4 heads of num_channels/... channels in the legacy order) runs for real.
SHRUNK = {
    'adm64_cond': {'num_channels': 32, 'num_head_channels': 16},
    'adm128_cond': {'num_channels': 32},
}


@pytest.mark.parametrize('name', sorted(SHRUNK))
def test_shrunken_preset_equals_guided_diffusion_numerically(name):
    torch.manual_seed(0)
    flags = {**ADM_PRESETS[name], **SHRUNK[name]}
    ref = script_util.create_model(**flags).eval()
    with torch.no_grad():
        for p in ref.parameters():  # guided-diffusion zero-initialises some outputs: make every path count
            p.add_(torch.randn_like(p) * 0.05)
    ours = ADMUNet(**adm_flags({'preset': name, **SHRUNK[name]})).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 700]), torch.tensor([1, 979])
    middle = []
    ref.middle_block.register_forward_hook(lambda module, inputs, output: middle.append(output))
    with torch.no_grad():
        expected = ref(x, t, y=y)
        out, h = ours(x, t, y), ours.forward_hspace(x, t, y)
        # the other attention order, same weights: the test would see a head-handling mistake
        other = ADMUNet(**{**flags, 'use_new_attention_order': not flags['use_new_attention_order']}).eval()
        other.load_state_dict(ref.state_dict())
        wrong = other(x, t, y)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h, middle[0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(wrong, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
def test_schedules_equal_guided_diffusion(schedule):
    betas = gaussian_diffusion.get_named_beta_schedule(schedule, 1000)
    expected = torch.from_numpy(np.cumprod(1.0 - betas))
    ours = cosine_alphas_cumprod(1000) if schedule == 'cosine' else linear_alphas_cumprod(1000)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(named_alphas_cumprod(schedule, 1000), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match='cosine'):
        named_alphas_cumprod('sigmoid', 1000)


COSINE_SMALL = {'preset': 'adm64_cond', **SHRUNK['adm64_cond']}
TINY_COND = {'preset': 'adm_tiny', 'class_cond': True}


def test_extractors_and_diffloss_use_the_preset_schedule():
    cosine, linear = cosine_alphas_cumprod(1000).float(), linear_alphas_cumprod(1000).float()
    hspace = HSpaceExtractor(unet=COSINE_SMALL, random_weights=True)
    released = ReleasedFeatureExtractor(unet=COSINE_SMALL, random_weights=True, stride=8)
    loss = DiffLoss(unet=COSINE_SMALL, random_weights=True)
    for module in (hspace, released, loss):
        torch.testing.assert_close(module.alphas_cumprod.float(), cosine, rtol=0, atol=0)
    # DiffLoss on the prior's network takes the prior's schedule
    shared = DiffLoss(h_weight=1.0, eps_weight=0.0, shared_prior=hspace)
    torch.testing.assert_close(shared.alphas_cumprod.float(), cosine, rtol=0, atol=0)
    # an explicit noise_schedule in the flags overrides the preset's; linear presets are unchanged
    override = {**COSINE_SMALL, 'noise_schedule': 'linear'}
    torch.testing.assert_close(HSpaceExtractor(unet=override, random_weights=True).alphas_cumprod.float(), linear)
    torch.testing.assert_close(HSpaceExtractor(unet='adm_tiny', random_weights=True).alphas_cumprod.float(), linear)
    cos_tiny = HSpaceExtractor(unet={'preset': 'adm_tiny', 'noise_schedule': 'cosine'}, random_weights=True)
    torch.testing.assert_close(cos_tiny.alphas_cumprod.float(), cosine)
    with pytest.raises(ValueError, match='noise_schedule'):
        HSpaceExtractor(unet={'preset': 'adm_tiny', 'noise_schedule': 'quadratic'}, random_weights=True)


def test_class_label_reaches_the_unet():
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    default = HSpaceExtractor(unet=COSINE_SMALL, random_weights=True, timesteps=[0, 500])
    assert default.class_label == DEFAULT_CLASS_LABEL
    feats = {label: HSpaceExtractor(unet=COSINE_SMALL, random_weights=True, class_label=label)(img)[500]
             for label in (3, 979)}
    assert feats[3].shape == (1, 128, 2, 2)
    torch.testing.assert_close(default(img)[500], feats[979], rtol=0, atol=0)
    assert not torch.allclose(feats[3], feats[979], atol=1e-4)
    decoder = {label: HSpaceExtractor(unet=TINY_COND, random_weights=True, class_label=label, tap='layer_d')(img)[0]
               for label in (3, 979)}
    assert not torch.allclose(decoder[3], decoder[979], atol=1e-4)
    released = {label: ReleasedFeatureExtractor(unet=TINY_COND, random_weights=True, class_label=label)(img)[0]
                for label in (3, 979)}
    assert not torch.allclose(released[3], released[979], atol=1e-5)


def test_diffloss_class_label():
    prior = HSpaceExtractor(unet=TINY_COND, random_weights=True, class_label=5)
    assert DiffLoss(h_weight=1.0, eps_weight=0.0, shared_prior=prior).prior.class_label == 5
    own = DiffLoss(unet=TINY_COND, random_weights=True, class_label=7)
    assert own.prior.class_label == 7
    restored, gt = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    torch.manual_seed(0)
    l_eps, l_h = own(restored, gt)
    assert torch.isfinite(l_eps) and torch.isfinite(l_h)
    with pytest.raises(ValueError, match='unconditional'):
        DiffLoss(unet='adm_tiny', random_weights=True, class_label=3)


@pytest.mark.parametrize('cls', [HSpaceExtractor, ReleasedFeatureExtractor])
def test_class_label_errors(cls):
    with pytest.raises(ValueError, match='unconditional'):
        cls(unet='adm_tiny', random_weights=True, class_label=3)
    for bad in (1000, -1, 2.0, True):
        with pytest.raises(ValueError, match=r'\[0, 999\]'):
            cls(unet=TINY_COND, random_weights=True, class_label=bad)
    assert cls(unet='adm_tiny', random_weights=True).class_label is None
