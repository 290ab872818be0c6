"""RainStreaks: bright, thin, slanted streaks added to the image (the look of Rain100L's synthetic rain)."""
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from difflid.data.degradations.base import DEGRADATION_REGISTRY, Degradation, check_range

__all__ = ['RainStreaks']


@DEGRADATION_REGISTRY.register()
class RainStreaks(Degradation):
    """clean + intensity · streaks, clipped to [0, 1]. Streaks: ``count`` drops per megapixel at random positions,
    each smeared into a line of ``length`` pixels at ``angle`` degrees from vertical (one angle per image: rain falls
    one way), blurred slightly and normalised to a peak of 1; count, length, angle and intensity uniform in their
    ranges."""

    task = 'rain'

    def __init__(self, count_range: Sequence[float] = (800, 2000), length_range: Sequence[float] = (10, 30),
                 angle_range: Sequence[float] = (-20, 20), intensity_range: Sequence[float] = (0.4, 0.8)) -> None:
        self.count_range = check_range('RainStreaks', 'count_range', count_range, 0, 1e5)
        self.length_range = check_range('RainStreaks', 'length_range', length_range, 1, 500)
        self.angle_range = check_range('RainStreaks', 'angle_range', angle_range, -80, 80)
        self.intensity_range = check_range('RainStreaks', 'intensity_range', intensity_range, 0.0, 1.0)

    def sample_parameters(self, rng: np.random.Generator, height: int, width: int) -> dict[str, Any]:
        count = int(round(rng.uniform(*self.count_range) * height * width / 1e6))
        drops = np.zeros((height, width), np.float32)
        drops[rng.integers(0, height, count), rng.integers(0, width, count)] = rng.uniform(0.5, 1.0, count)
        return {'drops': drops, 'length': int(round(rng.uniform(*self.length_range))),
                'angle': float(rng.uniform(*self.angle_range)), 'intensity': float(rng.uniform(*self.intensity_range))}

    @staticmethod
    def streak_kernel(length: int, angle: float) -> np.ndarray:
        """A line of ``length`` pixels through the centre at ``angle`` degrees from vertical (positive: the top leans
        right), summing to 1."""
        size = length + 2 - length % 2  # odd, with a border
        kernel = np.zeros((size, size), np.float32)
        c, rad = size // 2, np.deg2rad(angle)
        dx, dy = np.sin(rad) * (length - 1) / 2, np.cos(rad) * (length - 1) / 2
        cv2.line(kernel, (round(c + dx), round(c - dy)), (round(c - dx), round(c + dy)), 1.0, 1)  # top leans right
        return kernel / kernel.sum()

    def apply(self, clean: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        streaks = cv2.filter2D(params['drops'], -1, self.streak_kernel(params['length'], params['angle']),
                               borderType=cv2.BORDER_CONSTANT)
        streaks = cv2.GaussianBlur(streaks, (3, 3), 0.5)
        streaks /= max(float(streaks.max()), 1e-6)
        return np.clip(clean + params['intensity'] * streaks[..., None], 0.0, 1.0).astype(np.float32)
