"""Synthetic haze with the atmospheric scattering model (Koschmieder; as in RESIDE's synthetic sets):

    I = J·t + A·(1 − t),   t = exp(−β·d)

J is the clear image, d a scene depth in [0, 1], β the scattering coefficient, A the airlight. Used by
the quickstart and the demo, and usable on your own clear images (no real depth needed: a random
smooth depth is drawn).
"""
import cv2
import numpy as np

__all__ = ['random_smooth_depth', 'synthesize_haze']


def random_smooth_depth(height: int, width: int, rng: np.random.Generator, grid: int = 4, ramp_weight: float = 0.6,
                        ramp_angle: float = 0.0) -> np.ndarray:
    """A smooth random depth map (H, W) float32 in [0, 1]: a linear ramp (far at the top when ``ramp_angle`` is 0,
    as in most photos; the angle in degrees turns the far side towards the right) weighted ``ramp_weight``, plus
    low-frequency noise from a ``grid``×``grid`` lattice upsampled bicubically, weighted 1 − ``ramp_weight``."""
    rows = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None]
    ramp = rows.repeat(width, axis=1)
    if ramp_angle:
        angle = np.deg2rad(ramp_angle)
        cols = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
        ramp = np.float32(np.cos(angle)) * rows + np.float32(np.sin(angle)) * cols
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    lattice = rng.random((grid, grid)).astype(np.float32)
    bumps = cv2.resize(lattice, (width, height), interpolation=cv2.INTER_CUBIC)
    depth = ramp_weight * ramp + (1 - ramp_weight) * bumps
    depth -= depth.min()
    return depth / max(float(depth.max()), 1e-6)


def synthesize_haze(
    clear: np.ndarray,
    beta: float,
    airlight: float | tuple[float, float, float],
    depth: np.ndarray,
) -> np.ndarray:
    """Hazy version of ``clear``.

    Args:
        clear: (H, W, 3) float image in [0, 1] (any channel order; a per-channel airlight follows it).
        beta: Scattering coefficient β ≥ 0 (0 = no haze; RESIDE uses 0.6-1.8).
        airlight: Global atmospheric light A in [0, 1], scalar or per channel.
        depth: (H, W) depth d, larger = farther.

    Returns:
        (H, W, 3) float32 hazy image in [0, 1].
    """
    if clear.ndim != 3 or clear.shape[2] != 3:
        raise ValueError(f'synthesize_haze needs an (H, W, 3) image, got shape {clear.shape}')
    if depth.shape != clear.shape[:2]:
        raise ValueError(f'depth shape {depth.shape} does not match image shape {clear.shape[:2]}')
    if beta < 0:
        raise ValueError(f'beta must be >= 0, got {beta}')
    transmission = np.exp(-beta * depth.astype(np.float32))[..., None]
    a = np.asarray(airlight, dtype=np.float32).reshape(-1)[None, None, :]
    hazy = clear.astype(np.float32) * transmission + a * (1 - transmission)
    return np.clip(hazy, 0.0, 1.0)
