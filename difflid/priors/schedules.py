"""The forward (noising) process of a DDPM, with guided-diffusion's two β schedules: linear (Ho et al.) and
cosine (Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models", ICML 2021), and the DDIM sampler
(Song et al., ICLR 2021) that draws images from a trained ε-prediction network.

Images enter the diffusion model in [-1, 1]; ``to_diffusion_range`` is the one place where difflid's
[0, 1] images are converted.
"""
from collections.abc import Callable

import torch

__all__ = ['PREDICTION_TYPES', 'cosine_alphas_cumprod', 'epsilon_from_prediction', 'ddim_sample', 'ddim_step',
           'ddim_timesteps', 'linear_alphas_cumprod', 'named_alphas_cumprod', 'q_sample', 'to_diffusion_range']


def linear_alphas_cumprod(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """ᾱ_t = ∏_{s≤t} (1 - β_s) for β linearly spaced in float64 (as guided-diffusion), shape (num_steps,).

    guided-diffusion scales the 1000-step endpoints by 1000/num_steps; we do the same so other step
    counts match its ``get_named_beta_schedule('linear', n)``.
    """
    scale = 1000 / num_steps
    betas = torch.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def cosine_alphas_cumprod(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """ᾱ of the cosine schedule, float64 of shape (num_steps,).

    ᾱ(t) = f(t)/f(0) with f(t) = cos²((t/T + s)/(1 + s)·π/2) on a continuous t in [0, T]; step i (0-based) has
    β_i = 1 - ᾱ(i+1)/ᾱ(i), clipped at ``max_beta`` (the last steps would otherwise reach β = 1), and the
    discrete ᾱ_i = ∏_{j≤i} (1 - β_j). The f(0) normalisation cancels in the ratios.
    """
    steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((steps + s) / (1 + s) * torch.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1.0 - betas, dim=0)


def named_alphas_cumprod(schedule: str, num_steps: int = 1000, beta_start: float = 1e-4,
                         beta_end: float = 0.02) -> torch.Tensor:
    """ᾱ of a named schedule, 'linear' (from ``beta_start``/``beta_end``) or 'cosine', float64 (num_steps,)."""
    if schedule == 'linear':
        return linear_alphas_cumprod(num_steps, beta_start, beta_end)
    if schedule == 'cosine':
        return cosine_alphas_cumprod(num_steps)
    raise ValueError(f"unknown noise schedule {schedule!r}; choose 'linear' or 'cosine'")


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε for integer t of shape (B,); x0 and noise (B, C, H, W)."""
    a = alphas_cumprod.to(x0.device)[t.to(x0.device)].to(x0.dtype)[:, None, None, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def to_diffusion_range(img: torch.Tensor) -> torch.Tensor:
    """[0, 1] images (difflid's data range) -> [-1, 1] (the diffusion model's range)."""
    return img * 2 - 1


# What a diffusion network's output means (diffusers' ``prediction_type`` names): the noise ε, the velocity
# v = sqrt(ᾱ_t)·ε - sqrt(1-ᾱ_t)·x_0 (Salimans & Ho, "Progressive Distillation", ICLR 2022, Sec. 4) or x_0 itself.
PREDICTION_TYPES = ('epsilon', 'v_prediction', 'sample')


def epsilon_from_prediction(prediction: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor,
                            prediction_type: str) -> torch.Tensor:
    """ε̂ from a network's output for x_t = sqrt(ᾱ_t)·x_0 + sqrt(1-ᾱ_t)·ε, with ᾱ_t broadcastable to x_t.

    v-prediction: ε = sqrt(ᾱ_t)·v + sqrt(1-ᾱ_t)·x_t; x_0-prediction: ε = (x_t - sqrt(ᾱ_t)·x_0) / sqrt(1-ᾱ_t).
    """
    if prediction_type == 'epsilon':
        return prediction
    a = alpha_bar.to(prediction.dtype)
    if prediction_type == 'v_prediction':
        return a.sqrt() * prediction + (1 - a).sqrt() * x_t
    if prediction_type == 'sample':
        return (x_t - a.sqrt() * prediction) / (1 - a).sqrt()
    raise ValueError(f'prediction_type must be one of {list(PREDICTION_TYPES)}, got {prediction_type!r}')


def ddim_timesteps(num_train_steps: int, num_steps: int) -> list[int]:
    """The S timesteps a DDIM sampler visits, descending: every T // S-th step from 0 (diffusers' 'leading' spacing),
    e.g. T=1000, S=50 -> 980, 960, ..., 20, 0."""
    if not 0 < num_steps <= num_train_steps:
        raise ValueError(f'DDIM steps must be in [1, {num_train_steps}], got {num_steps}')
    stride = num_train_steps // num_steps
    return [i * stride for i in range(num_steps)][::-1]


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, alpha_t: float, alpha_prev: float, eta: float = 0.0,
              noise: torch.Tensor | None = None, clip: bool = True) -> torch.Tensor:
    """One DDIM update x_t -> x_prev (Song et al., "Denoising Diffusion Implicit Models", ICLR 2021, Eq. 12).

    x̂_0 = (x_t - sqrt(1-ᾱ_t)·ε̂) / sqrt(ᾱ_t), clipped to [-1, 1] with ``clip``;
    σ = η·sqrt((1-ᾱ_prev)/(1-ᾱ_t))·sqrt(1-ᾱ_t/ᾱ_prev);
    x_prev = sqrt(ᾱ_prev)·x̂_0 + sqrt(1-ᾱ_prev-σ²)·ε̂ + σ·z. With clipping, ε̂ is first made consistent with the
    clipped x̂_0, as in DDIM's reference implementation.
    """
    x0 = (x_t - (1 - alpha_t) ** 0.5 * eps) / alpha_t ** 0.5
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = (x_t - alpha_t ** 0.5 * x0) / (1 - alpha_t) ** 0.5
    sigma = eta * ((1 - alpha_prev) / (1 - alpha_t)) ** 0.5 * (1 - alpha_t / alpha_prev) ** 0.5
    x_prev = alpha_prev ** 0.5 * x0 + max(1 - alpha_prev - sigma ** 2, 0.0) ** 0.5 * eps
    if sigma > 0:
        x_prev = x_prev + sigma * (torch.randn_like(x_t) if noise is None else noise)
    return x_prev


@torch.no_grad()
def ddim_sample(eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: tuple[int, ...],
                alphas_cumprod: torch.Tensor, num_steps: int = 50, eta: float = 0.0,
                generator: torch.Generator | None = None, device: torch.device | str = 'cpu') -> torch.Tensor:
    """Samples in [-1, 1] of shape ``shape`` = (B, C, H, W) from an ε-prediction network ``eps_fn(x_t, t)``.

    Starts from x_T ~ N(0, I) (drawn from ``generator`` on the CPU, so a seed gives the same samples on any
    device) and takes ``num_steps`` DDIM steps (``ddim_timesteps``); the last step goes to ᾱ = 1 (x̂_0 itself).
    """
    alphas = alphas_cumprod.double().cpu()
    x = torch.randn(shape, generator=generator).to(device)
    steps = ddim_timesteps(len(alphas), num_steps)
    for i, t in enumerate(steps):
        alpha_prev = float(alphas[steps[i + 1]]) if i + 1 < len(steps) else 1.0
        eps = eps_fn(x, torch.full((shape[0],), t, device=device, dtype=torch.long)).float()
        noise = torch.randn(shape, generator=generator).to(device) if eta > 0 else None
        x = ddim_step(x, eps, float(alphas[t]), alpha_prev, eta, noise)
    return x.clamp(-1, 1)
