"""Overlapping-tile inference for images too large to restore in one pass."""
from collections.abc import Callable

import torch

__all__ = ['check_tiling', 'tiled_apply']


def check_tiling(tile: int, overlap: int, multiple: int = 1, names: tuple[str, str] = ('tile', 'tile_overlap')) -> None:
    """ValueError naming the options unless tile is 0 (off) or a positive multiple of ``multiple`` with
    0 <= overlap < tile (a diffusion prior needs tiles that are multiples of its stride, 32)."""
    if tile == 0:
        return
    if tile < 0 or tile % multiple:
        raise ValueError(f'{names[0]} must be 0 (off) or a multiple of {multiple}, got {tile}')
    if not 0 <= overlap < tile:
        raise ValueError(f'{names[1]} must be in [0, {names[0]}), got {overlap}')


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]  # the last tile ends at the border


def _ramp(length: int, overlap: int, device: torch.device) -> torch.Tensor:
    """Blending weight along one axis: rises linearly over ``overlap`` pixels at both ends, never zero."""
    idx = torch.arange(length, device=device, dtype=torch.float32)
    if overlap <= 0:
        return torch.ones(length, device=device)
    return torch.minimum((idx + 0.5) / overlap, (length - idx - 0.5) / overlap).clamp(max=1.0)


def tiled_apply(
    fn: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor], x: torch.Tensor, tile: int, overlap: int
) -> torch.Tensor:
    """Apply an image-to-image ``fn(tile, (top, left))`` on overlapping ``tile``-sized tiles of ``x`` (B, C, H, W)
    and blend.

    ``fn`` receives each tile's position in ``x``, so that whatever depends on the absolute position (the
    prior's seeded noise) is the same as for the whole image. Each output pixel is the weighted mean of the
    tiles covering it, with weights that fall off linearly towards tile edges, so there are no seams. ``fn``
    must keep the spatial size.
    """
    if tile <= 0:
        raise ValueError(f'tiled_apply needs tile > 0, got {tile}')
    check_tiling(tile, overlap)
    height, width = x.shape[-2:]
    th, tw = min(tile, height), min(tile, width)
    out = weights = None
    for top in _starts(height, th, tile - overlap):
        for left in _starts(width, tw, tile - overlap):
            y = fn(x[..., top:top + th, left:left + tw], (top, left))
            if out is None:
                out = y.new_zeros(*y.shape[:2], height, width)
                weights = y.new_zeros(1, 1, height, width)
            w = (_ramp(th, overlap, y.device)[:, None] * _ramp(tw, overlap, y.device)[None, :]).to(y.dtype)
            out[..., top:top + th, left:left + tw] += y * w
            weights[..., top:top + th, left:left + tw] += w
    return out / weights
