import json

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.archs import build_network

from difflid.data.haze_synthesis import random_smooth_depth, synthesize_haze
from difflid.demo import hspace_demo
from difflid.priors.hspace_arch import HSpaceExtractor
from tests.conftest import REPO_ROOT


def test_haze_follows_the_scattering_model():
    rng = np.random.default_rng(0)
    clear = rng.random((20, 30, 3)).astype(np.float32)
    depth = random_smooth_depth(20, 30, rng)
    assert depth.shape == (20, 30) and depth.min() == 0 and depth.max() == pytest.approx(1)
    hazy = synthesize_haze(clear, 1.5, (0.8, 0.9, 1.0), depth)
    t = np.exp(-1.5 * depth)[..., None]
    np.testing.assert_allclose(hazy, clear * t + np.array([0.8, 0.9, 1.0]) * (1 - t), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(synthesize_haze(clear, 0.0, 0.9, depth), clear)
    with pytest.raises(ValueError, match='depth shape'):
        synthesize_haze(clear, 1.0, 0.9, depth[:10])


def test_demo_summarises_and_writes_pictures(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    summary = hspace_demo(image, HSpaceExtractor(unet='adm_tiny', random_weights=True), tmp_path)
    assert set(summary['timesteps']) == {0, 500}
    assert summary['timesteps'][500]['shape'] == [64, 3, 3]
    assert -1 <= summary['timesteps'][0]['cosine_clear_hazy'] <= 1
    assert 0 < summary['hazy_psnr'] < 40
    assert json.loads((tmp_path / 'summary.json').read_text())['image_size'] == [70, 90]
    sheet = cv2.imread(str(tmp_path / 'hspace_t500.png'))
    assert sheet.shape == (70, 180, 3) and sheet.std() > 0
    with pytest.raises(ValueError, match='uint8'):
        hspace_demo(image.astype(np.float32), HSpaceExtractor(unet='adm_tiny', random_weights=True))


def test_prior_option_blocks_build():
    tiny = yaml.safe_load((REPO_ROOT / 'options/_base_/prior_tiny.yml').read_text())['network_prior']
    assert build_network(tiny)(torch.rand(1, 3, 64, 64))[500].shape == (1, 64, 2, 2)
    real = yaml.safe_load((REPO_ROOT / 'options/_base_/prior_adm256.yml').read_text())['network_prior']
    assert real['checkpoint'] == 'pretrained/256x256_diffusion_uncond.pt'
    # every key must be a constructor argument; build on the meta device, without the 2 GB file
    with torch.device('meta'):
        prior = build_network({**real, 'checkpoint': None, 'random_weights': True})
    assert prior.hspace_channels == 1024 and prior.timesteps == [0, 500]
