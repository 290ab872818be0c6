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
    smooth depth in [0, 1] whose lattice is ``depth_grid`` × ``depth_grid`` (RESIDE's β range by default).

    The defaults give RESIDE-like haze: a grey airlight and a depth that grows towards the top. Wider haze, for a
    model meant to meet photos of any kind (the demo's model, options/dehaze_demo.yml), widens the depth structure
    and tints the airlight; each of these options draws nothing when left at its default, so the images of
    existing option files stay the same:
        airlight_tint: each channel's airlight moves by up to ± this (uniform), clipped to [0, 1] (a warm or
            blue cast); 0 = grey.
        depth_grid: an integer, or a [min, max] range of lattice sizes drawn per image (coarse to busy depth).
        ramp_weight_range: weight of the depth ramp against the lattice's bumps (default 0.6).
        ramp_angle_range: direction of the ramp in degrees (0: far at the top; ±90: far at a side).
    """

    task = 'haze'

    def __init__(self, beta_range: Sequence[float] = (0.6, 1.8), airlight_range: Sequence[float] = (0.7, 1.0),
                 depth_grid: int | Sequence[int] = 4, airlight_tint: float = 0.0,
                 ramp_weight_range: Sequence[float] = (0.6, 0.6), ramp_angle_range: Sequence[float] = (0.0, 0.0)
                 ) -> None:
        self.beta_range = check_range('HazeDegradation', 'beta_range', beta_range, 0.0, 10.0)
        self.airlight_range = check_range('HazeDegradation', 'airlight_range', airlight_range, 0.0, 1.0)
        grids = [depth_grid, depth_grid] if not isinstance(depth_grid, Sequence) else list(depth_grid)
        if len(grids) != 2 or any(isinstance(g, bool) or not isinstance(g, int) or g < 2 for g in grids) \
                or grids[0] > grids[1]:
            raise ValueError('HazeDegradation.depth_grid must be an integer >= 2 or a [min, max] pair of them, '
                             f'got {depth_grid!r}')
        self.depth_grid = (grids[0], grids[1])
        if isinstance(airlight_tint, bool) or not isinstance(airlight_tint, (int, float)) \
                or not 0 <= airlight_tint <= 0.5:
            raise ValueError(f'HazeDegradation.airlight_tint must be a number in [0, 0.5], got {airlight_tint!r}')
        self.airlight_tint = float(airlight_tint)
        self.ramp_weight_range = check_range('HazeDegradation', 'ramp_weight_range', ramp_weight_range, 0.0, 1.0)
        self.ramp_angle_range = check_range('HazeDegradation', 'ramp_angle_range', ramp_angle_range, -180.0, 180.0)

    @staticmethod
    def _draw(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
        """Uniform in ``bounds``; no draw for a single value (keeps the random stream of the defaults)."""
        return bounds[0] if bounds[0] == bounds[1] else float(rng.uniform(*bounds))

    def sample_parameters(self, rng: np.random.Generator, height: int, width: int) -> dict[str, Any]:
        beta, airlight = float(rng.uniform(*self.beta_range)), float(rng.uniform(*self.airlight_range))
        if self.airlight_tint:
            shifts = rng.uniform(-self.airlight_tint, self.airlight_tint, 3)
            airlight = tuple(float(np.clip(airlight + s, 0.0, 1.0)) for s in shifts)
        grid = self.depth_grid[0] if self.depth_grid[0] == self.depth_grid[1] \
            else int(rng.integers(self.depth_grid[0], self.depth_grid[1] + 1))
        ramp_weight, ramp_angle = self._draw(rng, self.ramp_weight_range), self._draw(rng, self.ramp_angle_range)
        return {'beta': beta, 'airlight': airlight,
                'depth': random_smooth_depth(height, width, rng, grid, ramp_weight, ramp_angle)}

    def apply(self, clean: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        return synthesize_haze(clean, params['beta'], params['airlight'], params['depth'])
