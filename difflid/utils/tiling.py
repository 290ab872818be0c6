"""Overlapping-tile inference for images too large to restore in one pass (the tiles and their weights:
``difflid.utils.tile_layout``)."""
from collections.abc import Callable

import torch

from difflid.utils.tile_layout import check_tiling, tile_weight, tile_windows

__all__ = ['check_tiling', 'tiled_apply']


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
    height, width = x.shape[-2:]
    out = weights = None
    for top, left, th, tw in tile_windows(height, width, tile, overlap):
        y = fn(x[..., top:top + th, left:left + tw], (top, left))
        if out is None:
            out = y.new_zeros(*y.shape[:2], height, width)
            weights = y.new_zeros(1, 1, height, width)
        w = torch.from_numpy(tile_weight(th, tw, overlap)).to(device=y.device, dtype=y.dtype)
        out[..., top:top + th, left:left + tw] += y * w
        weights[..., top:top + th, left:left + tw] += w
    return out / weights
