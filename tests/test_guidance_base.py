"""The shared base of the feature sources: input, noise, freezing and the interface DiffLI²D takes."""
import math

import pytest
import torch
from basicsr.models import build_model
from basicsr.utils.registry import ARCH_REGISTRY
from torch.nn import functional as F

from difflid.priors.base import GuidanceExtractor
from difflid.priors.builder import control_options
from difflid.priors.noise import position_noise
from difflid.priors.schedules import linear_alphas_cumprod
from tests.test_difflid_model import _batch, make_opt


@ARCH_REGISTRY.register()
class PooledPixelsForTest(GuidanceExtractor):
    """A member whose features are a known formula of x_t: 8x8 means of x_t, scaled by a learnable-looking weight."""

    def __init__(self, random_weights: bool = False, init_seed: int = 0, **base) -> None:
        super().__init__(**base)
        self.scale = torch.nn.Parameter(torch.tensor(2.0))
        self.freeze()

    @property
    def feature_channels(self) -> int:
        return 3

    @property
    def downsample_factor(self) -> int:
        return 8

    def _features(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.scale * F.avg_pool2d(x_t, 8)


def _expected(img: torch.Tensor, t: int, seed: int = 0, origin=(0, 0)) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t)(2x - 1) + sqrt(1 - ᾱ_t)ε on the reflect-padded image, pooled: written out independently."""
    b, c, h, w = img.shape
    hp, wp = math.ceil(h / 8) * 8, math.ceil(w / 8) * 8
    padded = F.pad(img, (0, wp - w, 0, hp - h), mode='reflect')
    eps = position_noise(seed, [t], c, hp, wp, origin=origin)[0]
    abar = linear_alphas_cumprod(1000, 1e-4, 0.02)[t].double()
    x_t = abar.sqrt() * (2 * padded.double() - 1) + (1 - abar).sqrt() * eps.double()
    return 2 * F.avg_pool2d(x_t, 8).float()


def test_features_are_the_member_tap_of_the_noised_padded_input():
    img = torch.rand(2, 3, 20, 27)
    extractor = PooledPixelsForTest(timesteps=[0, 500])
    feats = extractor(img)
    assert list(feats) == [0, 500]
    for t in (0, 500):
        assert feats[t].shape == (2, 3, 3, 4)
        torch.testing.assert_close(feats[t], _expected(img, t), rtol=1e-5, atol=1e-5)
    f_cim, f_hae = extractor.guidance(img)
    torch.testing.assert_close(f_cim, feats[0], rtol=0, atol=0)
    torch.testing.assert_close(f_hae, feats[500], rtol=0, atol=0)


def test_other_timesteps_and_repeated_ones():
    img = torch.rand(1, 3, 16, 16)
    extractor = PooledPixelsForTest(timesteps=[0, 0])
    f_cim, f_hae = extractor.guidance(img)  # [0, 0]: both maps from the same (barely noised) input
    torch.testing.assert_close(f_cim, f_hae, rtol=0, atol=0)
    sweep = extractor(img, timesteps=[300, 999])
    torch.testing.assert_close(sweep[300], _expected(img, 300), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r'PooledPixelsForTest: timesteps must be integers in \[0, 999\]'):
        extractor(img, timesteps=[1000])


def test_fresh_noise_is_random_and_seeded_noise_follows_the_origin():
    img = torch.rand(1, 3, 32, 32)
    extractor = PooledPixelsForTest(timesteps=[0, 500])
    assert not torch.equal(extractor(img, fresh_noise=True)[500], extractor(img, fresh_noise=True)[500])
    window = extractor(img[..., 8:, 16:], origin=(8, 16))[500]
    torch.testing.assert_close(window, _expected(img, 500)[..., 1:, 2:], rtol=1e-5, atol=1e-5)


def test_frozen_and_always_in_eval_mode():
    extractor = PooledPixelsForTest()
    extractor.train()
    assert not extractor.training
    assert not any(p.requires_grad for p in extractor.parameters())
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        extractor(torch.rand(1, 4, 16, 16))


def test_control_is_the_same_extractor_with_random_weights():
    opt = {'type': 'HSpaceExtractor', 'unet': 'adm256_uncond', 'checkpoint': 'pretrained/x.pt', 'init_seed': 3}
    assert control_options(opt) == {'type': 'HSpaceExtractor', 'unet': 'adm256_uncond', 'random_weights': True,
                                    'init_seed': 4}
    assert control_options({'type': 'HSpaceExtractor'})['init_seed'] == 1  # differs from a random prior's 0


def test_the_model_takes_any_member_and_its_shape(tmp_path):
    opt = make_opt(tmp_path, network_prior={'type': 'PooledPixelsForTest', 'timesteps': [0, 500]})
    opt['network_g'].update(h_channels=3, h_stride=8)
    model = build_model(opt)
    model.feed_data(_batch(hw=(24, 40)))
    model.optimize_parameters(1)
    model.test()
    assert model.output.shape == (2, 3, 24, 40)
    opt['network_g'].update(h_stride=32)
    with pytest.raises(ValueError, match='h_stride: 8'):
        build_model(opt)


def test_one_origin_per_image_gives_each_its_own_window_in_one_pass():
    img = torch.rand(2, 3, 16, 16)
    extractor = PooledPixelsForTest(timesteps=[700])
    both = extractor(img, origin=[(0, 0), (24, 8)])[700]
    torch.testing.assert_close(both[:1], _expected(img[:1], 700), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[1:], _expected(img[1:], 700, origin=(24, 8)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='3 origins for a batch of 2'):
        extractor(img, origin=[(0, 0)] * 3)


def test_a_member_may_bring_its_own_schedule():
    extractor = PooledPixelsForTest(timesteps=[0, 99])
    abar = torch.linspace(0.99, 0.01, 100, dtype=torch.float64)
    extractor.set_schedule(abar)
    img = torch.rand(1, 3, 8, 8)
    eps = position_noise(0, [99], 3, 8, 8)[0]
    expected = 2 * F.avg_pool2d(abar[99].sqrt() * (2 * img.double() - 1) + (1 - abar[99]).sqrt() * eps, 8).float()
    torch.testing.assert_close(extractor(img)[99], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r'\[0, 49\]'):
        extractor.set_schedule(abar[:50])
    torch.testing.assert_close(extractor(img)[99], expected, rtol=1e-5, atol=1e-5)  # unchanged by the refusal
