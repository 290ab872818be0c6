"""Seeded diffusion noise that is a function of the absolute pixel position.

The fixed ε of a frozen prior must not depend on how an image is cut: a tile or a crop at (top, left) has
to see exactly the window of the whole image's noise, in any batch position and on any device, or tiles
and whole images would be noised differently (x_t of a tile != the same window of the whole image's x_t).
``torch.randn`` with a seeded generator cannot give that: its stream depends on the tensor's shape.

Here every value is a pure function of (seed, timestep, channel, y, x): a 32-bit integer hash
(Wellons' "lowbias32" mixer in wrapping int32 arithmetic, exact on any device) gives two uniforms per
position, and the Box-Muller transform turns them into one standard normal value.
"""
import math
from collections.abc import Sequence

import torch

__all__ = ['noise_key', 'position_noise']

def _int32(value: int) -> int:
    """The signed int32 with the bits of the unsigned 32-bit ``value``."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int32 bit patterns (torch's ``>>`` is arithmetic on signed integers)."""
    return (x >> bits) & ((1 << (32 - bits)) - 1)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 mixer on int32 tensors holding uint32 bit patterns (wrapping multiplication).

    NOTE: int32, not int64: on the CPU torch's int64 right shift is not vectorised and is 200x slower.
    """
    x = x ^ _shr(x, 16)
    x = x * _int32(0x7FEB352D)
    x = x ^ _shr(x, 15)
    x = x * _int32(0x846CA68B)
    return x ^ _shr(x, 16)


def noise_key(*values: int) -> int:
    """One well-mixed 32-bit key (as a signed int32) for a tuple of integers (seed, t, channel, stream)."""
    key = torch.tensor(_int32(0x9E3779B9), dtype=torch.int32)
    for value in values:
        key = _hash32(key ^ _int32(value))
    return int(key)


def position_noise(
    seed: int,
    timesteps: Sequence[int],
    channels: int,
    height: int,
    width: int,
    origin: tuple[int, int] = (0, 0),
    device: torch.device | str = 'cpu',
) -> torch.Tensor:
    """Standard normal noise (len(timesteps), channels, height, width), float32, for the window whose top-left
    pixel is ``origin`` = (top, left) in absolute image coordinates.

    The same (seed, t, channel, y, x) always gives the same value, so a window of the noise of a larger
    window is the noise of that window. Values agree across devices up to the float rounding of log/cos.
    """
    top, left = (int(v) for v in origin)
    if top < 0 or left < 0:
        raise ValueError(f'position_noise: origin must be non-negative, got {origin}')
    device = torch.device(device)
    ys = torch.arange(top, top + height, device=device, dtype=torch.int32)
    xs = torch.arange(left, left + width, device=device, dtype=torch.int32)
    pixel = _hash32(_hash32(xs ^ 0x5BD1E995)[None, :] ^ ys[:, None])  # (H, W), shared by all channels
    # MPS has no float64; elsewhere the transform runs in float64 so devices agree to float32 precision
    real = torch.float32 if device.type == 'mps' else torch.float64
    planes = []
    for t in timesteps:
        for c in range(channels):
            # uint32 bit patterns -> uniforms in (0, 1), never 0 (log) nor 1
            u1, u2 = (((_hash32(_hash32(pixel ^ noise_key(seed, t, c, stream))).to(real) % 2 ** 32) + 0.5) / 2 ** 32
                      for stream in (0, 1))
            planes.append(torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2))
    return torch.stack(planes).reshape(len(timesteps), channels, height, width).float()
