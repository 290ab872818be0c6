"""The forward (noising) process of a DDPM, with guided-diffusion's two β schedules: linear (Ho et al.) and
cosine (Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models", ICML 2021).

Images enter the diffusion model in [-1, 1]; ``to_diffusion_range`` is the one place where difflid's
[0, 1] images are converted.
"""
import torch

__all__ = ['cosine_alphas_cumprod', 'linear_alphas_cumprod', 'named_alphas_cumprod', 'q_sample', 'to_diffusion_range']


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
