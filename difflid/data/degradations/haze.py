"""HazeDegradation: the atmospheric scattering model on a random smooth depth (``difflid.data.haze_synthesis``)."""
from collections.abc import Sequence
from typing import Any

import numpy as np

from difflid.data.degradations.base import DEGRADATION_REGISTRY, Degradation, check_range
from difflid.data.haze_synthesis import random_smooth_depth, synthesize_haze

__all__ = ['HazeDegradation']


@DEGRADATION_REGISTRY.register()
class HazeDegradation(Degradation):
    """I = J·t + A·(1 − t), t = exp(−β·d): β (density) and A (grey airlight) uniform in their ranges, d a random
    smooth depth in [0, 1] whose lattice is ``depth_grid`` × ``depth_grid`` (RESIDE's β range by default)."""

    task = 'haze'

    def __init__(self, beta_range: Sequence[float] = (0.6, 1.8), airlight_range: Sequence[float] = (0.7, 1.0),
                 depth_grid: int = 4) -> None:
        self.beta_range = check_range('HazeDegradation', 'beta_range', beta_range, 0.0, 10.0)
        self.airlight_range = check_range('HazeDegradation', 'airlight_range', airlight_range, 0.0, 1.0)
        if isinstance(depth_grid, bool) or not isinstance(depth_grid, int) or depth_grid < 2:
            raise ValueError(f'HazeDegradation.depth_grid must be an integer >= 2, got {depth_grid!r}')
        self.depth_grid = depth_grid

    def sample_parameters(self, rng: np.random.Generator, height: int, width: int) -> dict[str, Any]:
        return {'beta': float(rng.uniform(*self.beta_range)), 'airlight': float(rng.uniform(*self.airlight_range)),
                'depth': random_smooth_depth(height, width, rng, self.depth_grid)}

    def apply(self, clean: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        return synthesize_haze(clean, params['beta'], params['airlight'], params['depth'])
