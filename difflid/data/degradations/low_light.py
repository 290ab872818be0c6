"""LowLight: an under-exposed capture: a gamma curve, a gain below one and sensor noise."""
from collections.abc import Sequence
from typing import Any

import numpy as np

from difflid.data.degradations.base import DEGRADATION_REGISTRY, Degradation, check_range

__all__ = ['LowLight']


@DEGRADATION_REGISTRY.register()
class LowLight(Degradation):
    """gain · clean^γ + N(0, σ²), clipped to [0, 1]: γ, gain and the 8-bit sensor-noise σ uniform in their ranges."""

    task = 'low_light'

    def __init__(self, gamma_range: Sequence[float] = (2.0, 3.5), gain_range: Sequence[float] = (0.1, 0.5),
                 noise_range: Sequence[float] = (0.0, 5.0)) -> None:
        self.gamma_range = check_range('LowLight', 'gamma_range', gamma_range, 1.0, 10.0)
        self.gain_range = check_range('LowLight', 'gain_range', gain_range, 0.0, 1.0)
        self.noise_range = check_range('LowLight', 'noise_range', noise_range, 0.0, 255.0)

    def sample_parameters(self, rng: np.random.Generator, height: int, width: int) -> dict[str, Any]:
        return {'gamma': float(rng.uniform(*self.gamma_range)), 'gain': float(rng.uniform(*self.gain_range)),
                'sigma': float(rng.uniform(*self.noise_range)),
                'noise': rng.standard_normal((height, width, 3)).astype(np.float32)}

    def apply(self, clean: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        dark = params['gain'] * np.power(clean, params['gamma']) + params['noise'] * (params['sigma'] / 255)
        return np.clip(dark, 0.0, 1.0).astype(np.float32)
