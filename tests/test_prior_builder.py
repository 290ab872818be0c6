"""The prior family's one builder (difflid.priors.builder): an option that sets the network's noise schedule or class
label means the same in the extractor, DiffLoss and the sampler, checked against schedules computed here from their
formulas and against a UNet called by hand; capabilities decide who can share and sample, not class names; a
diffusers prior's prediction type is read and converted (checked against diffusers' own DDIM step)."""
import math

import numpy as np
import pytest
import torch

from difflid.losses.diffloss_loss import DiffLoss
from difflid.priors.adm_unet_arch import ADMUNet, adm_flags
from difflid.priors.builder import build_prior, prior_class, same_network, with_denoiser
from difflid.priors.sampling import denoiser_from_prior

TINY = {'type': 'HSpaceExtractor', 'random_weights': True}


def _linear(beta_start: float, beta_end: float, steps: int = 1000) -> np.ndarray:
    return np.cumprod(1 - np.linspace(beta_start, beta_end, steps, dtype=np.float64))


def _cosine(steps: int = 1000, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal (2021), Eq. 17, with β_t clipped at 0.999."""
    f = [math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2 for t in range(steps + 1)]
    betas = np.minimum([1 - f[t + 1] / f[t] for t in range(steps)], 0.999)
    return np.cumprod(1 - betas)


def _consumers(block: dict) -> dict[str, torch.Tensor]:
    """ᾱ_t as the extractor, DiffLoss (own network), DiffLoss (ε term) and the sampler see it for one block."""
    adm_keys = {k: v for k, v in block.items() if k != 'type'}
    return {'extractor': build_prior(block).alphas_cumprod,
            'diffloss h only': DiffLoss(eps_weight=0.0, h_weight=1.0, **adm_keys).alphas_cumprod,
            'diffloss': DiffLoss(**adm_keys).alphas_cumprod,
            'diffloss prior block': DiffLoss(prior=block).alphas_cumprod,
            'sampler': denoiser_from_prior(block).alphas_cumprod}


@pytest.mark.parametrize('override, expected', [
    ({'unet': {'preset': 'adm_tiny', 'noise_schedule': 'cosine'}}, _cosine()),
    ({'unet': 'adm_tiny', 'beta_start': 3e-4}, _linear(3e-4, 0.02)),
    ({'unet': 'adm_tiny', 'beta_end': 0.03}, _linear(1e-4, 0.03)),
])
def test_a_schedule_override_reaches_every_consumer(override, expected):
    for name, alphas in _consumers({**TINY, **override}).items():
        np.testing.assert_allclose(alphas.double().numpy(), expected, rtol=1e-6, atol=1e-9, err_msg=name)


def test_a_class_label_reaches_every_consumer():
    """ε̂ of DiffLoss's and the sampler's network is the UNet called with y = the label (a UNet built here with the
    same init seed), and differs from the default label's."""
    flags = {'preset': 'adm_tiny', 'class_cond': True}
    block = {**TINY, 'unet': flags, 'class_label': 5, 'init_seed': 2}
    torch.manual_seed(2)
    unet = ADMUNet(**adm_flags(flags)).eval()
    x_t, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 600])
    with torch.no_grad():
        expected = unet(x_t, t, torch.full((2,), 5))[:, :3]
        other = unet(x_t, t, torch.full((2,), 979))[:, :3]
        loss = DiffLoss(unet=flags, random_weights=True, init_seed=2, class_label=5)
        sampled = denoiser_from_prior(block).network(x_t, t)
        from_loss = loss.prior.diffusion_pass(x_t, t)[0]
    assert build_prior(block).class_label == loss.prior.class_label == 5
    for eps in (sampled, from_loss):
        torch.testing.assert_close(eps, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(eps, other, atol=1e-4)


def test_capabilities_decide_sharing_and_sampling():
    assert prior_class({'type': 'HSpaceExtractor'}).has_denoiser_option
    assert not prior_class({'type': 'TimmFeatureExtractor'}).has_denoiser_option
    with pytest.raises(ValueError, match='no diffusion network'):
        with_denoiser({'type': 'TimmFeatureExtractor', 'model': 'resnet18', 'random_weights': True})
    with pytest.raises(KeyError, match='not a feature source'):
        build_prior({'type': 'DiffLI2D'})
    base = {**TINY, 'unet': 'adm_tiny'}
    # tap, timesteps, seed and precision do not change the network; flags spelled as a preset are the same network
    assert same_network(base, {**base, 'tap': 'layer_e', 'timesteps': [0, 300], 'dtype': 'fp32', 'seed': 4})
    assert same_network(base, {**base, 'unet': {'preset': 'adm_tiny', 'noise_schedule': 'linear'}})
    for other in ({'init_seed': 1}, {'beta_end': 0.03}, {'unet': {'preset': 'adm_tiny', 'noise_schedule': 'cosine'}},
                  {'random_weights': False, 'checkpoint': 'x.pt'}):
        assert not same_network(base, {**base, **other}), other
    assert not same_network(base, {**base, 'type': 'ReleasedFeatureExtractor'})


def test_an_unknown_shared_option_is_named():
    with pytest.raises(TypeError, match=r"unknown option 'beta_strat' \(did you mean beta_start\?\)"):
        build_prior({**TINY, 'unet': 'adm_tiny', 'beta_strat': 1e-3})


@pytest.mark.parametrize('prediction_type', ['v_prediction', 'sample'])
def test_a_diffusers_prediction_type_is_converted_to_epsilon(tmp_path, prediction_type):
    """One DDIM step with the sampler's ε̂ equals diffusers' own DDIMScheduler step on the raw v / x_0 output."""
    diffusers = pytest.importorskip('diffusers')
    from difflid.priors.schedules import ddim_step

    config = dict(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
                  down_block_types=('DownBlock2D', 'DownBlock2D'), up_block_types=('UpBlock2D', 'UpBlock2D'))
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**config).eval()
    unet.save_pretrained(tmp_path / 'unet')
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule='linear', clip_sample=False,
                                        prediction_type=prediction_type, set_alpha_to_one=True)
    scheduler.save_pretrained(tmp_path / 'unet')
    denoiser = denoiser_from_prior({'type': 'DiffusersUNetExtractor', 'diffusers': str(tmp_path / 'unet')})
    scheduler.set_timesteps(10)
    t, t_prev = int(scheduler.timesteps[3]), int(scheduler.timesteps[4])
    x_t = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        raw = unet(x_t, t).sample
        expected = scheduler.step(raw, t, x_t, eta=0.0).prev_sample
        eps = denoiser.network(x_t, torch.tensor([t]))
    alphas = scheduler.alphas_cumprod
    ours = ddim_step(x_t, eps, float(alphas[t]), float(alphas[t_prev]), clip=False)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    # read as ε (the bug this guards against), the same output steps elsewhere
    wrong = ddim_step(x_t, raw, float(alphas[t]), float(alphas[t_prev]), clip=False)
    assert not torch.allclose(wrong, expected, atol=1e-2)


def test_a_prediction_type_that_contradicts_the_scheduler_is_refused(tmp_path):
    diffusers = pytest.importorskip('diffusers')
    config = dict(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
                  down_block_types=('DownBlock2D', 'DownBlock2D'), up_block_types=('UpBlock2D', 'UpBlock2D'))
    diffusers.UNet2DModel(**config).save_pretrained(tmp_path / 'unet')
    diffusers.DDPMScheduler(prediction_type='v_prediction').save_pretrained(tmp_path / 'unet')
    with pytest.raises(ValueError, match="prediction_type is 'epsilon'.*'v_prediction'"):
        build_prior({'type': 'DiffusersUNetExtractor', 'diffusers': str(tmp_path / 'unet'),
                     'prediction_type': 'epsilon'})
