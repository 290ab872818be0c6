"""The ADM feature sources beyond h-space: other blocks of the UNet (``HSpaceExtractor(tap=...)``, the paper's
Table 3 Layer-E / Layer-D) and the released code's features (``ReleasedFeatureExtractor``), checked against
guided-diffusion's own UNet."""
import re
import shutil

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.archs import build_network
from torch.nn import functional as F

from difflid.archs.difflid_arch import ContentIntegration, DiffLI2D
from difflid.priors.adm_unet_arch import ADM_PRESETS, ADMUNet, adm_flags
from difflid.priors.hspace_arch import HSpaceExtractor
from difflid.priors.released_features_arch import ReleasedFeatureExtractor
from tests.conftest import REPO_ROOT, guided_training_options, nontrivial_weights, train_then_infer, write_pairs

guided_script_util = pytest.importorskip('guided_diffusion.script_util', reason='reference: pip install -e .[dev]')

TINY = ADM_PRESETS['adm_tiny']
TIMESTEPS = (0, 500)
# adm_tiny: 12 input blocks (11 = the last, at stride 32), 12 output blocks (0 at 32; 1 ends with an upsample)
TAPS = {
    'middle': 'middle_block',
    'layer_e': 'input_blocks.11',
    'layer_d': 'output_blocks.0',
    'input_blocks.10': 'input_blocks.10',  # the downsample just before Layer-E: same shape, other values
    'input_blocks.4': 'input_blocks.4',
    'output_blocks.1': 'output_blocks.1',  # ends with an upsample: stride 16
    'output_blocks.4': 'output_blocks.4',
}


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """guided-diffusion's UNet with every weight perturbed (its zero-initialised layers would make decoder blocks
    equal their skip-free residual paths), and its state dict as a checkpoint file for our extractors."""
    torch.manual_seed(0)
    ref = guided_script_util.create_model(**TINY).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp('weights') / 'tiny_uncond.pt'
    torch.save(ref.state_dict(), path)
    return ref, str(path)


def _alpha_bar(t: int) -> float:
    """ᾱ_t of the linear schedule, computed independently of difflid (float64 numpy)."""
    return float(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))[t])


def _noised(extractor, img: torch.Tensor) -> dict[int, torch.Tensor]:
    """x_t of a (1, 3, H, W) image (H, W multiples of the stride) at each timestep, with the extractor's noise."""
    eps = extractor.noise(tuple(img.shape[1:]), 1, torch.device('cpu'), fresh=False)
    return {t: (np.sqrt(_alpha_bar(t)) * (2 * img - 1) + np.sqrt(1 - _alpha_bar(t)) * eps[i]).float()
            for i, t in enumerate(extractor.timesteps)}


def _hooked(ref, block: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What ``block`` of guided-diffusion's UNet outputs in its full forward pass."""
    kind, _, index = block.partition('.')
    module = getattr(ref, kind) if not index else getattr(ref, kind)[int(index)]
    seen = []
    handle = module.register_forward_hook(lambda mod, inputs, output: seen.append(output))
    with torch.no_grad():
        ref(x, t)
    handle.remove()
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize('tap', sorted(TAPS))
def test_tap_equals_the_block_output_of_guided_diffusion(reference, tap):
    ref, path = reference
    extractor = HSpaceExtractor(unet='adm_tiny', checkpoint=path, tap=tap)
    img = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    feats = extractor(img)
    for t, x_t in _noised(extractor, img).items():
        expected = _hooked(ref, TAPS[tap], x_t, torch.tensor([t]))
        assert feats[t].shape == expected.shape
        torch.testing.assert_close(feats[t], expected, rtol=1e-4, atol=1e-4)
    # the reference's neighbouring blocks differ, so a tap off by one block cannot pass
    neighbour = 'input_blocks.10' if TAPS[tap] == 'input_blocks.11' else 'input_blocks.11'
    other = _hooked(ref, neighbour, _noised(extractor, img)[500], torch.tensor([500]))
    if other.shape == feats[500].shape:
        assert not torch.allclose(other, feats[500], atol=1e-2)


def test_decoder_tap_of_stride_16_pads_an_odd_size_to_32_and_crops_back(reference):
    """48 x 80 is a multiple of the tap's stride (16), not of the UNet's (32): the decoder needs the latter. The clean
    image is padded before noising, so the padded cells carry their own positions' noise, not mirrored noise (as
    padding x_t would give)."""
    ref, path = reference
    extractor = HSpaceExtractor(unet='adm_tiny', checkpoint=path, tap='output_blocks.1')
    img = torch.rand(1, 3, 48, 80, generator=torch.Generator().manual_seed(3))
    feats = extractor(img)
    for t, x_t in _noised(extractor, F.pad(img, (0, 16, 0, 16), mode='reflect')).items():
        expected = _hooked(ref, 'output_blocks.1', x_t, torch.tensor([t]))[..., :3, :5]
        torch.testing.assert_close(feats[t], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('tap', ['layer_e', 'layer_d', 'output_blocks.1', 'input_blocks.4', 'input_blocks.0',
                                 'output_blocks.11'])
def test_channels_and_stride_match_the_block_output(reference, tap):
    ref, _ = reference
    extractor = HSpaceExtractor(unet='adm_tiny', random_weights=True, tap=tap)
    block = TAPS.get(tap, tap)
    out = _hooked(ref, block, torch.randn(1, 3, 64, 96), torch.tensor([10]))
    c, s = extractor.feature_channels, extractor.downsample_factor
    assert out.shape == (1, c, 64 // s, 96 // s)
    assert extractor(torch.rand(1, 3, 64, 96))[0].shape == (1, c, 64 // s, 96 // s)


def test_adm256_uncond_taps_have_the_documented_channels_and_strides():
    expected = {  # tap: (block, channels, stride, decoder built)
        'middle': ('middle_block', 1024, 32, False),
        'layer_e': ('input_blocks.17', 1024, 32, False),
        'layer_d': ('output_blocks.0', 1024, 32, True),
        'input_blocks.0': ('input_blocks.0', 256, 1, False),
        'input_blocks.9': ('input_blocks.9', 512, 8, False),
        'output_blocks.1': ('output_blocks.1', 1024, 32, True),
        'output_blocks.2': ('output_blocks.2', 1024, 16, True),  # ends with an upsample
        'output_blocks.6': ('output_blocks.6', 512, 8, True),
        'output_blocks.17': ('output_blocks.17', 256, 1, True),
    }
    for tap, (block, channels, stride, decoder) in expected.items():
        with torch.device('meta'):  # the layout without 552 M real weights
            extractor = HSpaceExtractor(unet='adm256_uncond', random_weights=True, tap=tap)
        assert (extractor.block, extractor.feature_channels, extractor.downsample_factor) == (block, channels, stride)
        assert hasattr(extractor.unet, 'output_blocks') == decoder and extractor.unet.encoder_only == (not decoder)


@pytest.mark.parametrize('tap, last_output_block', [('layer_d', 0), ('output_blocks.4', 4), ('layer_e', None),
                                                    ('input_blocks.4', None)])
def test_the_unet_stops_after_the_tapped_block(tap, last_output_block):
    extractor = HSpaceExtractor(unet='adm_tiny', random_weights=True, tap=tap)
    unet = extractor.unet
    calls: dict[str, int] = {}

    def count(name):
        return lambda module, inputs, output: calls.__setitem__(name, calls.get(name, 0) + 1)

    for name, module in unet.named_children():
        if name in ('input_blocks', 'output_blocks'):
            for i, block in enumerate(module):
                block.register_forward_hook(count(f'{name}.{i}'))
        elif name in ('middle_block', 'out'):
            module.register_forward_hook(count(name))
    extractor(torch.rand(2, 3, 32, 32))  # both timesteps and both images in one pass: one call per block
    block = extractor.block
    if last_output_block is None:
        assert not hasattr(unet, 'output_blocks')  # an encoder tap does not build the decoder
        last_input = int(block.split('.')[1]) if block.startswith('input_blocks.') else len(unet.input_blocks) - 1
        assert calls == {f'input_blocks.{i}': 1 for i in range(last_input + 1)}
    else:
        expected = {f'input_blocks.{i}': 1 for i in range(len(unet.input_blocks))}
        expected.update({'middle_block': 1, **{f'output_blocks.{i}': 1 for i in range(last_output_block + 1)}})
        assert calls == expected  # no later decoder block, no ``out``


@pytest.mark.parametrize('tap', ['output_blocks.12', 'input_blocks.12', 'layer_x', 'middle_block.0', 'output_blocks',
                                 3, None])
def test_unknown_tap_names_the_option_and_the_valid_taps(tap):
    with pytest.raises(ValueError) as err:
        HSpaceExtractor(unet='adm_tiny', random_weights=True, tap=tap)
    message = str(err.value)
    for part in ('network_prior.tap', repr(tap), 'layer_e (= input_blocks.11)', 'layer_d (= output_blocks.0)',
                 'input_blocks.0 to input_blocks.11', 'output_blocks.0 to output_blocks.11'):
        assert part in message


def test_a_decoder_tap_with_encoder_only_is_refused():
    with pytest.raises(ValueError, match='encoder_only'):
        HSpaceExtractor(unet='adm_tiny', random_weights=True, tap='layer_d', encoder_only=True)
    full = HSpaceExtractor(unet='adm_tiny', random_weights=True, tap='layer_e', encoder_only=False)
    assert hasattr(full.unet, 'output_blocks')  # asked for (DiffLoss's ε term on a shared UNet)


def test_layer_taps_build_through_the_registry_with_the_same_encoder_weights():
    middle = build_network({'type': 'HSpaceExtractor', 'unet': 'adm_tiny', 'random_weights': True})
    layer_d = build_network({'type': 'HSpaceExtractor', 'unet': 'adm_tiny', 'random_weights': True, 'tap': 'layer_d'})
    assert middle.tap == 'middle' and layer_d.block == 'output_blocks.0'
    # building the decoder too leaves the encoder's random weights as they were: only the tap differs
    encoder = middle.unet.state_dict()
    assert all(torch.equal(v, layer_d.unet.state_dict()[k]) for k, v in encoder.items())


# ---- ReleasedFeatureExtractor -------------------------------------------------------------------------------


def _pooled(out: torch.Tensor, s: int) -> torch.Tensor:
    """Mean over s x s cells, written out: (B, C, H, W) -> (B, C, H/s, W/s)."""
    b, c, h, w = out.shape
    return out.reshape(b, c, h // s, s, w // s, s).mean(dim=(3, 5))


@pytest.mark.parametrize('stride, size', [(32, (64, 96)), (16, (48, 80))])
def test_released_features_equal_guided_diffusion_at_alpha_bar(reference, stride, size):
    ref, path = reference
    extractor = ReleasedFeatureExtractor(unet='adm_tiny', checkpoint=path, stride=stride)
    img = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(4))
    feats = extractor(img)
    height, width = size
    # the clean image padded to the UNet's 32 before noising (padded cells get their own positions' noise)
    for t, padded in _noised(extractor, F.pad(img, (0, -width % 32, 0, -height % 32), mode='reflect')).items():
        with torch.no_grad():
            out = ref(padded, torch.tensor([_alpha_bar(t)], dtype=torch.float32))[..., :height, :width]
            at_integer_t = ref(padded, torch.tensor([t]))[..., :height, :width]
        assert out.shape[1] == 6  # ε̂ and the variance channels
        expected = _pooled(out, stride)
        assert feats[t].shape == (1, 6, height // stride, width // stride)
        torch.testing.assert_close(feats[t], expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(feats[t], _pooled(at_integer_t, stride), atol=1e-3)  # ᾱ_t really is what it gets


def test_released_features_are_frozen_seeded_and_at_stride_32():
    extractor = ReleasedFeatureExtractor(unet='adm_tiny', random_weights=True)
    assert (extractor.feature_channels, extractor.downsample_factor) == (6, 32)
    assert not any(p.requires_grad for p in extractor.parameters())
    torch.nn.Sequential(extractor).train()
    assert not extractor.training and not extractor.unet.training
    img = torch.rand(2, 3, 70, 100, requires_grad=True)
    f_cim, f_hae = extractor.guidance(img)
    assert f_cim.shape == f_hae.shape == (2, 6, 3, 4) and not f_cim.requires_grad
    again = extractor.guidance(img)
    torch.testing.assert_close(again[0], f_cim, rtol=0, atol=0)
    torch.testing.assert_close(again[1], f_hae, rtol=0, atol=0)
    assert not torch.allclose(extractor.guidance(img, fresh_noise=True)[1], f_hae)
    # CIM's keys are the features' cells, H/32 x W/32 tokens, not the release's H x W
    torch.manual_seed(0)
    net = nontrivial_weights(DiffLI2D(num_feat=8, num_heads=[1, 2, 2, 4], h_channels=6, h_stride=32))
    tokens = []
    for module in net.modules():
        if isinstance(module, ContentIntegration):
            module.to_k.register_forward_hook(lambda mod, inputs, output: tokens.append(output[0, 0].numel()))
    with torch.no_grad():
        assert net(img.detach(), f_cim, f_hae).shape == img.shape
    assert tokens and set(tokens) == {3 * 4}


def test_released_extractor_options_and_errors(tmp_path):
    net = build_network({'type': 'ReleasedFeatureExtractor', 'unet': {'preset': 'adm_tiny', 'learn_sigma': False},
                         'random_weights': True, 'stride': 64, 'timesteps': [0, 300]})
    assert (net.feature_channels, net.downsample_factor, net.timesteps) == (3, 64, [0, 300])
    assert net(torch.rand(1, 3, 64, 64))[300].shape == (1, 3, 1, 1)
    missing = tmp_path / 'pretrained' / '256x256_diffusion_uncond.pt'
    with pytest.raises(FileNotFoundError) as err:
        ReleasedFeatureExtractor(unet='adm_tiny', checkpoint=str(missing))
    assert str(missing) in str(err.value) and '256x256_diffusion_uncond.pt' in str(err.value)
    with pytest.raises(ValueError, match='random_weights'):
        ReleasedFeatureExtractor(unet='adm_tiny')
    for stride in (0, 2.5, True):
        with pytest.raises(ValueError, match='stride'):
            ReleasedFeatureExtractor(unet='adm_tiny', random_weights=True, stride=stride)


def test_the_adm_unet_takes_a_float_timestep(reference):
    ref, _ = reference
    ours = ADMUNet(**adm_flags('adm_tiny')).eval()
    ours.load_state_dict(ref.state_dict())
    x, t = torch.randn(2, 3, 32, 64), torch.tensor([0.9999, 0.0778])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t), ref(x, t), rtol=1e-4, atol=1e-4)


# ---- end to end --------------------------------------------------------------------------------------------

PRIORS = {
    'layer_e': ({'type': 'HSpaceExtractor', 'tap': 'layer_e'}, 64),
    'layer_d': ({'type': 'HSpaceExtractor', 'tap': 'layer_d'}, 64),
    'released': ({'type': 'ReleasedFeatureExtractor'}, 6),
}


@pytest.mark.slow
@pytest.mark.parametrize('source', sorted(PRIORS))
def test_train_and_infer_with_each_feature_source(tmp_path, source):
    prior, h_channels = PRIORS[source]
    shutil.copytree(REPO_ROOT / 'tools', tmp_path / 'tools')
    gt, lq = write_pairs(tmp_path / 'data', 2, size=(40, 48))
    prior_opt = {**prior, 'unet': 'adm_tiny', 'checkpoint': None, 'random_weights': True, 'timesteps': [0, 500]}
    option = guided_training_options(f'src_{source}', gt, lq, prior_opt, {
        'type': 'DiffLI2D', 'num_feat': 8, 'num_heads': [1, 2, 2, 4], 'h_channels': h_channels})
    (tmp_path / 'train.yml').write_text(yaml.safe_dump(option))
    exp = tmp_path / 'experiments' / f'src_{source}'
    weights = exp / 'models' / 'net_g_2.pth'
    tools = tmp_path / 'tools'
    proc = train_then_infer(tmp_path, tmp_path / 'train.yml', weights, lq / '000.png', tools)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = ''.join(p.read_text() for p in exp.glob('train_*.log'))
    assert f'{h_channels} channels at stride 32' in log and re.search(r'iter: +2, ', log)
    assert torch.load(weights, weights_only=True)['config']['network_prior'] == option['network_prior']
    restored = cv2.imread(str(tmp_path / 'restored' / '000.png'))
    assert restored is not None and restored.shape == (40, 48, 3)
