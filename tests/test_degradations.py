"""The degradation family (issue 21's first part): each member's formula against an independent computation with
given parameters, its draws inside the stated ranges, seeded draws independent of order, and option errors."""
import math

import numpy as np
import pytest

from difflid.data.degradations import (
    DEGRADATION_REGISTRY,
    GaussianNoise,
    HazeDegradation,
    LowLight,
    RainStreaks,
    build_degradation,
)

RNG = np.random.default_rng(0)
CLEAN = RNG.uniform(0.1, 0.9, (48, 64, 3)).astype(np.float32)


def test_haze_is_the_scattering_model_with_its_drawn_parameters():
    haze = HazeDegradation(beta_range=(1.0, 1.5), airlight_range=(0.8, 0.9))
    params = haze.sample_parameters(np.random.default_rng(1), 48, 64)
    assert 1.0 <= params['beta'] <= 1.5 and 0.8 <= params['airlight'] <= 0.9
    depth = np.full((48, 64), 0.5, np.float32)
    t = math.exp(-1.2 * 0.5)
    want = CLEAN * t + 0.85 * (1 - t)
    np.testing.assert_allclose(haze.apply(CLEAN, {'beta': 1.2, 'airlight': 0.85, 'depth': depth}), want, atol=1e-6)


def test_noise_has_its_sigma_and_lands_on_the_8_bit_grid():
    grey = np.full((512, 512, 3), 0.5, np.float32)  # far from 0 and 1: no clipping
    noisy = GaussianNoise(sigma=25).seeded(grey, 0, 'grey')
    std = float((noisy - grey).std(dtype=np.float64) * 255)
    # 786,432 samples: the std's sampling error is 25 / sqrt(2 N) = 0.02; 8-bit rounding adds 1/12 to the variance
    assert abs(std - math.sqrt(25 ** 2 + 1 / 12)) < 0.07
    np.testing.assert_allclose(noisy * 255, np.round(noisy * 255), atol=1e-4)
    sigmas = {GaussianNoise(sigmas=[15, 25, 50]).sample_parameters(np.random.default_rng(i), 2, 2)['sigma']
              for i in range(60)}
    assert sigmas == {15.0, 25.0, 50.0}


def test_low_light_is_gain_times_gamma_plus_noise():
    dark = LowLight().apply(CLEAN, {'gamma': 2.5, 'gain': 0.3, 'sigma': 0.0, 'noise': np.zeros_like(CLEAN)})
    np.testing.assert_allclose(dark, 0.3 * CLEAN.astype(np.float64) ** 2.5, rtol=1e-5)
    params = LowLight(gamma_range=(2, 3), gain_range=(0.2, 0.4)).sample_parameters(np.random.default_rng(3), 4, 4)
    assert 2 <= params['gamma'] <= 3 and 0.2 <= params['gain'] <= 0.4


@pytest.mark.parametrize('angle', [-30.0, 0.0, 25.0])
def test_rain_streaks_run_at_their_angle_and_only_brighten(angle):
    kernel = RainStreaks.streak_kernel(21, angle)
    ys, xs = np.nonzero(kernel)
    # principal direction of the line's pixels, measured from vertical; image rows grow downwards
    cov = np.cov(np.stack([xs - xs.mean(), -(ys - ys.mean())]))
    vx, vy = np.linalg.eigh(cov)[1][:, -1]
    measured = math.degrees(math.atan2(vx, vy))
    measured = (measured + 90) % 180 - 90  # a line has no direction
    assert abs(measured - angle) < 4
    rain = RainStreaks(angle_range=(angle, angle))
    params = rain.sample_parameters(np.random.default_rng(2), 48, 64)
    rainy = rain.apply(CLEAN, params)
    assert (rainy >= CLEAN - 1e-6).all() and (rainy > CLEAN + 0.05).any()


def test_seeded_draws_depend_on_seed_and_key_only():
    for degradation in (HazeDegradation(), RainStreaks(), GaussianNoise(), LowLight()):
        first = degradation.seeded(CLEAN, 7, 'img_003')
        degradation(CLEAN, np.random.default_rng(123))  # other draws in between change nothing
        np.testing.assert_array_equal(degradation.seeded(CLEAN, 7, 'img_003'), first)
        assert not np.array_equal(degradation.seeded(CLEAN, 7, 'img_004'), first)
        assert not np.array_equal(degradation.seeded(CLEAN, 8, 'img_003'), first)


def test_options_build_members_and_name_what_is_wrong():
    assert {'HazeDegradation', 'RainStreaks', 'GaussianNoise', 'LowLight'} <= set(DEGRADATION_REGISTRY.keys())
    assert isinstance(build_degradation({'type': 'GaussianNoise', 'sigma': 50}), GaussianNoise)
    with pytest.raises(KeyError, match='did you mean GaussianNoise'):
        build_degradation({'type': 'GausianNoise'})
    with pytest.raises(ValueError, match=r'HazeDegradation.beta_range'):
        build_degradation({'type': 'HazeDegradation', 'beta_range': [2.0, 1.0]})
    with pytest.raises(ValueError, match='sigma'):
        GaussianNoise(sigma=300)
    with pytest.raises(TypeError):
        build_degradation({'type': 'LowLight', 'gama_range': [2, 3]})


def _degraded_options(**extra) -> dict:
    return {'name': 'noisy', 'type': 'DegradedImageDataset', 'source': 'bundled', 'images': ['astronaut', 'coffee'],
            'degradation': {'type': 'GaussianNoise', 'sigmas': [15, 50]}, 'phase': 'val',
            'io_backend': {'type': 'disk'}, **extra}


def test_validation_degradations_are_the_same_for_every_run_worker_and_position():
    from torch.utils.data import DataLoader

    from difflid.data.degraded_image_dataset import DegradedImageDataset

    first = DegradedImageDataset(_degraded_options())
    items = [first[i] for i in range(len(first))]
    assert items[0]['task'] == 'noise' and items[0]['lq'].shape == items[0]['gt'].shape
    assert not np.array_equal(items[0]['lq'].numpy(), items[0]['gt'].numpy())
    again = DataLoader(DegradedImageDataset(_degraded_options()), batch_size=1, num_workers=2, shuffle=False)
    reversed_order = [DegradedImageDataset(_degraded_options())[i] for i in (1, 0)][::-1]
    for item, batch, other in zip(items, again, reversed_order, strict=True):
        np.testing.assert_array_equal(item['lq'].numpy(), batch['lq'][0].numpy())
        np.testing.assert_array_equal(item['lq'].numpy(), other['lq'].numpy())
    assert not np.array_equal(DegradedImageDataset(_degraded_options(seed=1))[0]['lq'].numpy(), items[0]['lq'].numpy())


def test_training_draws_a_new_degradation_per_sample_from_the_seeded_streams():
    import random

    from difflid.data.degraded_image_dataset import DegradedImageDataset

    dataset = DegradedImageDataset(_degraded_options(phase='train', gt_size=32, use_hflip=False))
    random.seed(5)
    a = dataset[0]
    random.seed(5)
    b = dataset[0]
    c = dataset[0]
    np.testing.assert_array_equal(a['lq'].numpy(), b['lq'].numpy())  # a function of the seeded streams
    assert not np.array_equal(b['lq'].numpy(), c['lq'].numpy())  # and new at the next draw


def test_precomputed_prior_features_are_refused_for_on_the_fly_degradations():
    from difflid.entry.precompute import store_plans
    from difflid.utils.errors import OptionError

    opt = {'network_prior': {'type': 'HSpaceExtractor', 'unet': 'adm_tiny', 'random_weights': True},
           'train': {'prior_features': 'precomputed'},
           'datasets': {'train': {**_degraded_options(phase='train', gt_size=32), 'dataroot_gt': 'x'}}}
    with pytest.raises(OptionError, match='degrades its images on the fly'):
        store_plans(opt)


def test_haze_defaults_draw_beta_airlight_then_the_4x4_lattice_of_a_vertical_ramp():
    """The documented draw order and depth formula, recomputed by hand: the wide-haze options must not change the
    images of existing option files (their defaults draw nothing)."""
    import cv2

    params = HazeDegradation().sample_parameters(np.random.default_rng(7), 40, 56)
    rng = np.random.default_rng(7)
    beta, airlight, lattice = rng.uniform(0.6, 1.8), rng.uniform(0.7, 1.0), rng.random((4, 4)).astype(np.float32)
    ramp = np.linspace(1.0, 0.0, 40, dtype=np.float32)[:, None].repeat(56, axis=1)
    depth = 0.6 * ramp + 0.4 * cv2.resize(lattice, (56, 40), interpolation=cv2.INTER_CUBIC)
    depth = (depth - depth.min()) / (depth - depth.min()).max()
    assert params['beta'] == beta and params['airlight'] == airlight
    np.testing.assert_allclose(params['depth'], depth, atol=1e-6)


@pytest.mark.parametrize('angle, far', [(0.0, 'top'), (90.0, 'right'), (-90.0, 'left')])
def test_haze_ramp_angle_turns_the_far_side(angle, far):
    haze = HazeDegradation(ramp_weight_range=(1.0, 1.0), ramp_angle_range=(angle, angle))
    depth = haze.sample_parameters(np.random.default_rng(0), 30, 50)['depth']  # the ramp alone: no bumps
    edges = {'top': depth[0], 'bottom': depth[-1], 'left': depth[:, 0], 'right': depth[:, -1]}
    near = {'top': 'bottom', 'right': 'left', 'left': 'right'}[far]
    np.testing.assert_allclose(edges[far], 1.0, atol=1e-6)
    np.testing.assert_allclose(edges[near], 0.0, atol=1e-6)


def test_haze_airlight_tint_gives_each_channel_its_own_airlight_within_the_tint():
    haze = HazeDegradation(beta_range=(2.0, 2.0), airlight_range=(0.8, 0.8), airlight_tint=0.1)
    grey = np.full((32, 32, 3), 0.3, np.float32)
    tints = []
    for seed in range(20):
        params = haze.sample_parameters(np.random.default_rng(seed), 32, 32)
        t = np.exp(-2.0 * params['depth'])[..., None]
        hazy = haze.apply(grey, params)
        recovered = ((hazy - grey * t) / (1 - t))[t[..., 0] < 0.5].mean(0)  # A_c, from the model's formula
        np.testing.assert_allclose(recovered, params['airlight'], atol=1e-4)
        tints.append(np.asarray(params['airlight']) - 0.8)
    tints = np.asarray(tints)
    assert np.abs(tints).max() <= 0.1 + 1e-9 and tints.std(0).min() > 0.03  # drawn per channel, not grey


def test_haze_depth_grid_range_draws_lattices_of_several_sizes():
    """Count the turns of the middle row of a bumps-only depth (ramp weight 0): a fixed 2x2 lattice gives 2 (bicubic
    overshoot at the edges), a fixed 4x4 at most 5 and a fixed 8x8 at least 4 on these seeds; [2, 8] gives both."""
    haze = HazeDegradation(depth_grid=[2, 8], ramp_weight_range=(0.0, 0.0))
    busy = []
    for seed in range(30):
        row = haze.sample_parameters(np.random.default_rng(seed), 64, 256)['depth'][32]
        slope = np.sign(np.diff(row))
        busy.append(int((slope[1:] != slope[:-1]).sum()))
    assert min(busy) == 2 and max(busy) >= 6


@pytest.mark.parametrize('options, key', [({'depth_grid': [8, 2]}, 'depth_grid'), ({'depth_grid': 1}, 'depth_grid'),
                                          ({'airlight_tint': 0.7}, 'airlight_tint'),
                                          ({'ramp_weight_range': [0.5, 1.5]}, 'ramp_weight_range'),
                                          ({'ramp_angle_range': [0, 270]}, 'ramp_angle_range')])
def test_haze_wide_options_are_checked(options, key):
    with pytest.raises(ValueError, match=rf'HazeDegradation.{key}'):
        build_degradation({'type': 'HazeDegradation', **options})
