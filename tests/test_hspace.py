import numpy as np
import pytest
import torch
from basicsr.archs import build_network

from difflid.priors.adm_unet_arch import ADM_PRESETS, ADMUNet
from difflid.priors.hspace_arch import HSpaceExtractor

TINY = dict(unet='adm_tiny', random_weights=True)


@pytest.fixture(scope='module')
def extractor():
    return HSpaceExtractor(**TINY)


def test_built_from_options_through_the_registry():
    net = build_network({'type': 'HSpaceExtractor', 'unet': 'adm_tiny', 'random_weights': True, 'timesteps': [0, 300]})
    assert isinstance(net, HSpaceExtractor) and net.timesteps == [0, 300]


@pytest.mark.parametrize('hw', [(97, 131), (32, 32), (20, 45)])
def test_features_for_any_size_are_padded_to_32(extractor, hw):
    feats = extractor(torch.rand(2, 3, *hw))
    assert list(feats) == [0, 500]
    for h in feats.values():
        assert h.shape == (2, 64, -(-hw[0] // 32), -(-hw[1] // 32)) and h.dtype == torch.float32


def test_features_equal_an_independent_computation(extractor):
    img = torch.rand(1, 3, 64, 64)
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    alpha_bar = np.cumprod(1 - betas)
    assert alpha_bar[500] == pytest.approx(0.07780, abs=1e-5)  # official_code.md §1.1
    eps = extractor.noise((3, 64, 64), 1, torch.device('cpu'), fresh=False)
    feats = extractor(img)
    for i, t in enumerate([0, 500]):
        x_t = np.sqrt(alpha_bar[t]) * (2 * img - 1) + np.sqrt(1 - alpha_bar[t]) * eps[i]
        with torch.no_grad():
            expected = extractor.unet.forward_hspace(x_t.float(), torch.tensor([t]))
        torch.testing.assert_close(feats[t], expected, rtol=1e-4, atol=1e-5)


def test_all_timesteps_go_through_one_batched_pass(extractor, monkeypatch):
    calls = []
    original = extractor.unet.forward_hspace

    def spy(x, t):
        calls.append((x.shape[0], t.tolist()))
        return original(x, t)

    monkeypatch.setattr(extractor.unet, 'forward_hspace', spy)
    extractor(torch.rand(3, 3, 32, 32))
    assert calls == [(6, [0, 0, 0, 500, 500, 500])]


def test_seeded_noise_gives_the_same_features_for_the_same_image(extractor):
    a, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    first = extractor(torch.cat([a, b]))
    again = extractor(torch.cat([b, a]))  # other batch position, other call
    for t in (0, 500):
        torch.testing.assert_close(first[t][0], again[t][1], rtol=0, atol=0)
    fresh = extractor(torch.cat([a, b]), fresh_noise=True)
    assert not torch.allclose(fresh[500], first[500])


def test_other_seed_other_noise():
    img = torch.rand(1, 3, 32, 32)
    h_seed0 = HSpaceExtractor(**TINY, seed=0)(img)[500]
    h_seed1 = HSpaceExtractor(**TINY, seed=1)(img)[500]
    assert not torch.allclose(h_seed0, h_seed1)


def test_random_prior_is_the_same_in_every_build():
    a, b, c = HSpaceExtractor(**TINY), HSpaceExtractor(**TINY), HSpaceExtractor(**TINY, init_seed=1)
    torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=0, atol=0)
    assert not torch.equal(a.unet.middle_block[1].qkv.weight, c.unet.middle_block[1].qkv.weight)


def test_prior_is_frozen_and_stays_in_eval(extractor):
    assert not any(p.requires_grad for p in extractor.parameters())
    parent = torch.nn.Sequential(extractor).train()
    assert not extractor.training and not extractor.unet.training
    img = torch.rand(1, 3, 32, 32, requires_grad=True)
    assert not extractor(img)[0].requires_grad
    del parent


def test_loads_a_full_guided_diffusion_file_into_the_encoder(tmp_path):
    torch.manual_seed(0)
    full = ADMUNet(**ADM_PRESETS['adm_tiny']).eval()
    path = tmp_path / 'tiny_uncond.pt'
    torch.save(full.state_dict(), path)
    extractor = HSpaceExtractor(unet='adm_tiny', checkpoint=str(path))
    img = torch.rand(1, 3, 64, 64)
    eps = extractor.noise((3, 64, 64), 1, torch.device('cpu'), fresh=False)
    alpha_bar = extractor.alphas_cumprod[0].float()
    x_t = alpha_bar.sqrt() * (2 * img - 1) + (1 - alpha_bar).sqrt() * eps[0]
    with torch.no_grad():
        expected = full.forward_hspace(x_t, 0)
    torch.testing.assert_close(extractor(img)[0], expected, rtol=1e-4, atol=1e-5)


def test_missing_checkpoint_says_what_to_download_and_where(tmp_path):
    missing = tmp_path / 'pretrained' / '256x256_diffusion_uncond.pt'
    with pytest.raises(FileNotFoundError) as err:
        HSpaceExtractor(unet='adm_tiny', checkpoint=str(missing))
    message = str(err.value)
    for part in (str(missing), '256x256_diffusion_uncond.pt', 'guided-diffusion', 'checkpoint'):
        assert part in message


def test_no_checkpoint_without_random_weights_is_refused():
    with pytest.raises(ValueError, match='random_weights'):
        HSpaceExtractor(unet='adm_tiny')


def test_wrong_checkpoint_names_the_first_mismatches(tmp_path):
    other = ADMUNet(**{**ADM_PRESETS['adm_tiny'], 'num_channels': 64, 'class_cond': True}, encoder_only=True)
    path = tmp_path / 'other.pt'
    torch.save(other.state_dict(), path)
    with pytest.raises(ValueError) as err:
        HSpaceExtractor(unet='adm_tiny', checkpoint=str(path))
    message = str(err.value)
    assert str(path) in message and 'label_emb.weight' in message and 'shape mismatch' in message
    assert 'time_embed.0.weight (file (256, 64) vs model (128, 32))' in message


def test_file_that_is_not_a_state_dict_is_named(tmp_path):
    path = tmp_path / 'notes.pt'
    path.write_text('not a checkpoint')
    with pytest.raises(ValueError, match='notes.pt'):
        HSpaceExtractor(unet='adm_tiny', checkpoint=str(path))
    torch.save({'weights': [1, 2, 3]}, tmp_path / 'list.pt')
    with pytest.raises(ValueError, match='not a state dict'):
        HSpaceExtractor(unet='adm_tiny', checkpoint=str(tmp_path / 'list.pt'))


@pytest.mark.parametrize('timesteps', [[1000], [-1], [0.5], [], ['500']])
def test_bad_timesteps_are_refused(timesteps):
    with pytest.raises(ValueError, match='timesteps'):
        HSpaceExtractor(**TINY, timesteps=timesteps)


def test_bad_dtype_is_named():
    with pytest.raises(ValueError, match="'fp8'"):
        HSpaceExtractor(**TINY, dtype='fp8')


def test_bf16_features_stay_close(extractor):
    img = torch.rand(1, 3, 64, 64)
    low = HSpaceExtractor(**TINY, dtype='bf16')(img)
    ref = extractor(img)
    for t in (0, 500):
        assert low[t].dtype == torch.float32
        assert ((low[t] - ref[t]).norm() / ref[t].norm()) < 3e-2
