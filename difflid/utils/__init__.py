"""Helpers shared by archs, models, losses and tools (no registrations here)."""
from .diffusion import linear_alphas_cumprod, q_sample, to_diffusion_range
from .padding import pad_to_multiple

__all__ = ['linear_alphas_cumprod', 'pad_to_multiple', 'q_sample', 'to_diffusion_range']
