"""GaussianNoise: additive white Gaussian noise of an 8-bit σ, as the denoising benchmarks add it."""
from collections.abc import Sequence
from typing import Any

import numpy as np

from difflid.data.degradations.base import DEGRADATION_REGISTRY, Degradation

__all__ = ['GaussianNoise']


@DEGRADATION_REGISTRY.register()
class GaussianNoise(Degradation):
    """clean + N(0, (σ/255)²) per pixel and channel, σ drawn from ``sigmas`` (e.g. [15, 25, 50]) or fixed
    (``sigma``); then clipped to [0, 1] and, with ``quantize`` (default), rounded to 8 bits: the noisy inputs that the
    all-in-one protocols save and test on."""

    task = 'noise'

    def __init__(self, sigma: float | None = 25, sigmas: Sequence[float] | None = None, quantize: bool = True) -> None:
        values = list(sigmas) if sigmas is not None else [sigma]
        if not values or any(isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 255
                             for v in values):
            raise ValueError(f'GaussianNoise: sigma/sigmas must be 8-bit standard deviations in [0, 255], got {values}')
        self.sigmas = [float(v) for v in values]
        self.quantize = bool(quantize)

    def sample_parameters(self, rng: np.random.Generator, height: int, width: int) -> dict[str, Any]:
        sigma = self.sigmas[int(rng.integers(len(self.sigmas)))]
        return {'sigma': sigma, 'noise': rng.standard_normal((height, width, 3)).astype(np.float32)}

    def apply(self, clean: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        noisy = np.clip(clean + params['noise'] * (params['sigma'] / 255), 0.0, 1.0)
        return (np.round(noisy * 255) / 255).astype(np.float32) if self.quantize else noisy.astype(np.float32)
