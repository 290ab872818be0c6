"""The forward (noising) process of a DDPM with guided-diffusion's linear β schedule.

Images enter the diffusion model in [-1, 1]; ``to_diffusion_range`` is the one place where difflid's
[0, 1] images are converted.
"""
import torch

__all__ = ['linear_alphas_cumprod', 'q_sample', 'to_diffusion_range']


def linear_alphas_cumprod(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """ᾱ_t = ∏_{s≤t} (1 - β_s) for β linearly spaced in float64 (as guided-diffusion), shape (num_steps,).

    guided-diffusion scales the 1000-step endpoints by 1000/num_steps; we do the same so other step
    counts match its ``get_named_beta_schedule('linear', n)``.
    """
    scale = 1000 / num_steps
    betas = torch.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε for integer t of shape (B,); x0 and noise (B, C, H, W)."""
    a = alphas_cumprod.to(x0.device)[t.to(x0.device)].to(x0.dtype)[:, None, None, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def to_diffusion_range(img: torch.Tensor) -> torch.Tensor:
    """[0, 1] images (difflid's data range) -> [-1, 1] (the diffusion model's range)."""
    return img * 2 - 1
