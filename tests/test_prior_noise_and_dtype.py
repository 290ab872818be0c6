"""The prior's seeded noise (a function of absolute position), tiles that see the whole image's x_t, and
inference/validation precision that reaches the prior."""
import math

import numpy as np
import pytest
import torch
from basicsr.models import build_model
from scipy import stats

from difflid.archs.difflid_arch import DiffLI2D
from difflid.inference import Restorer, restore
from difflid.priors.hspace_arch import HSpaceExtractor
from difflid.priors.noise import position_noise
from tests.conftest import hazy_astronaut, nontrivial_weights
from tests.test_difflid_model import NET_G, PRIOR, make_opt

TINY = dict(unet='adm_tiny', random_weights=True)


def _lowbias32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x = x * np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def _reference_noise(seed: int, t: int, channel: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The documented construction, written independently in numpy's unsigned 32-bit arithmetic."""
    with np.errstate(over='ignore'):
        columns = _lowbias32(xs.astype(np.uint32) ^ np.uint32(0x5BD1E995))
        pixel = _lowbias32(columns[None, :] ^ ys.astype(np.uint32)[:, None])
        uniforms = []
        for stream in (0, 1):
            key = np.uint32(0x9E3779B9)
            for value in (seed, t, channel, stream):
                key = _lowbias32(np.array(key ^ np.uint32(value)))
            uniforms.append((_lowbias32(_lowbias32(pixel ^ key)).astype(np.float64) + 0.5) / 2 ** 32)
    return np.sqrt(-2 * np.log(uniforms[0])) * np.cos(2 * math.pi * uniforms[1])


def test_noise_equals_an_independent_computation():
    noise = position_noise(3, [0, 500], 3, 20, 30, origin=(7, 1000))
    for i, t in enumerate((0, 500)):
        for c in range(3):
            expected = _reference_noise(3, t, c, np.arange(7, 27), np.arange(1000, 1030))
            np.testing.assert_allclose(noise[i, c].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_noise_is_standard_normal_and_uncorrelated():
    noise = position_noise(0, [0, 500], 3, 128, 128).double()
    assert stats.kstest(noise.flatten().numpy(), 'norm').pvalue > 1e-3
    flat = noise.flatten(2)
    pairs = {'right neighbour': (noise[..., :, :-1], noise[..., :, 1:]), 'lower neighbour': (noise[..., :-1, :],
             noise[..., 1:, :]), 'channel': (flat[:, 0], flat[:, 1]), 'timestep': (flat[0], flat[1]),
             'seed': (noise, position_noise(1, [0, 500], 3, 128, 128).double())}
    for name, (a, b) in pairs.items():
        corr = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
        assert abs(corr) < 0.02, f'{name} correlation {corr:.4f}'  # 4.5 standard errors at 16k-100k samples


def test_a_crop_or_tile_gets_the_window_of_the_whole_images_noise():
    extractor = HSpaceExtractor(**TINY)
    whole = extractor.noise((3, 96, 160), 2, torch.device('cpu'), fresh=False)
    crop = extractor.noise((3, 64, 64), 3, torch.device('cpu'), fresh=False, origin=(32, 96))
    for sample in range(3):  # the same in every batch position
        torch.testing.assert_close(crop[:, sample], whole[:, 0, :, 32:96, 96:160], rtol=0, atol=0)


@pytest.fixture(scope='module')
def hazy_and_net():
    torch.manual_seed(0)
    return hazy_astronaut(), nontrivial_weights(DiffLI2D(**{k: v for k, v in NET_G.items() if k != 'type'}))


def test_tiles_feed_the_unet_the_same_x_t_as_the_whole_image(hazy_and_net, monkeypatch):
    hazy, net = hazy_and_net
    prior = HSpaceExtractor(**TINY)
    seen = []
    original = prior.unet.forward_hspace
    monkeypatch.setattr(prior.unet, 'forward_hspace', lambda x, t: seen.append(x) or original(x, t))
    with torch.no_grad():
        restore(net, hazy, prior)
        restore(net, hazy, prior, tile=192, tile_overlap=96)
    whole, tiles = seen[0], seen[1:]
    origins = [(top, left) for top in (0, 64) for left in (0, 96, 192)]  # 256 x 384 in 192-tiles, stride 96
    assert len(tiles) == len(origins)
    for (top, left), x_t in zip(origins, tiles, strict=True):
        torch.testing.assert_close(x_t, whole[..., top:top + 192, left:left + 192], rtol=0, atol=1e-6)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a - b).square().mean()))


def test_tiles_agree_with_the_whole_image_when_h_matters(hazy_and_net, monkeypatch):
    # Measured with these weights (adm_tiny random prior, 256 x 384 photo, 192-tiles, overlap 96):
    #   seeded vs fresh noise, whole image: 24.4 dB (h changes the output: the test can see the prior);
    #   tiles vs whole, position-indexed noise: 28.8 dB; each tile noised as if it were the image's corner
    #   (size-dependent noise, the old behaviour): 24.9 dB, 2.5x the squared error.
    # What remains with the right noise is context: the random prior's features of a tile are not those of
    # the same window in the whole image (its attention is global), and HAE's gate pools over the tile.
    # Smaller images and tiles (160 x 224, 128-tiles) leave so little interior that context dominates.
    hazy, net = hazy_and_net
    prior = HSpaceExtractor(**TINY)
    with torch.no_grad():
        whole = restore(net, hazy, prior)
        assert _psnr(whole, restore(net, hazy, prior, fresh_noise=True)) < 30
        tiled = restore(net, hazy, prior, tile=192, tile_overlap=96)
        original = prior.forward
        monkeypatch.setattr(prior, 'forward', lambda x, fresh_noise=False, origin=(0, 0): original(x, fresh_noise))
        corner_noise = restore(net, hazy, prior, tile=192, tile_overlap=96)
    assert _psnr(whole, tiled) > 27
    assert (whole - tiled).square().mean() < 0.6 * (whole - corner_noise).square().mean()


def _dtype_spy(module: torch.nn.Module) -> list[torch.dtype]:
    seen = []
    module.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    return seen


def test_inference_dtype_reaches_the_prior():
    net_g = {**NET_G}
    restorer = Restorer(net_g, dict(PRIOR), dtype='bf16')  # the prior's own option says fp32 (default)
    prior_conv, stem = _dtype_spy(restorer.prior.unet.input_blocks[0][0]), _dtype_spy(restorer.net.stem)
    out = restorer(np.random.default_rng(0).random((40, 50, 3), dtype=np.float32))
    assert prior_conv == [torch.bfloat16] and stem == [torch.bfloat16]
    assert out.dtype == np.float32 and out.shape == (40, 50, 3)


def test_validation_under_an_enclosing_autocast_reaches_the_prior(tmp_path):
    model = build_model(make_opt(tmp_path, is_train=False))
    prior_conv = _dtype_spy(model.prior.unet.input_blocks[0][0])
    model.feed_data({'lq': torch.rand(1, 3, 32, 32)})
    with torch.autocast('cpu', dtype=torch.bfloat16):
        model.test()
    assert prior_conv == [torch.bfloat16]


def test_the_priors_own_dtype_applies_without_an_enclosing_autocast():
    prior = HSpaceExtractor(**TINY, dtype='bf16')
    conv = _dtype_spy(prior.unet.input_blocks[0][0])
    feats = prior(torch.rand(1, 3, 32, 32))
    assert conv == [torch.bfloat16] and feats[0].dtype == torch.float32
