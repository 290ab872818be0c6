"""Where overlapping tiles go and how they are weighted: numpy only, so that the onnxruntime runner
(``difflid.deploy.onnx_runner``, which imports neither torch nor basicsr) and ``difflid.utils.tiling`` (torch) cut
and blend the same tiles."""
import numpy as np

__all__ = ['check_tiling', 'tile_weight', 'tile_windows']


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
    return list(range(0, length - tile, stride)) + [length - tile]  # the last tile ends at the border


def tile_windows(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(top, left, tile height, tile width) of every tile covering a height x width image, row by row; tiles are
    ``tile`` square (cut to the image), ``overlap`` pixels apart at least."""
    if tile <= 0:
        raise ValueError(f'tiled_apply needs tile > 0, got {tile}')
    check_tiling(tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    return [(top, left, th, tw) for top in _starts(height, th, tile - overlap)
            for left in _starts(width, tw, tile - overlap)]


def _ramp(length: int, overlap: int) -> np.ndarray:
    """Blending weight along one axis: rises linearly over ``overlap`` pixels at both ends, never zero."""
    if overlap <= 0:
        return np.ones(length, dtype=np.float32)
    idx = np.arange(length, dtype=np.float32)
    return np.minimum((idx + 0.5) / overlap, (length - idx - 0.5) / overlap).clip(max=1.0)


def tile_weight(height: int, width: int, overlap: int) -> np.ndarray:
    """(height, width) float32 blending weights of one tile: they fall off linearly towards its edges, so the
    weighted mean of overlapping tiles has no seams."""
    return _ramp(height, overlap)[:, None] * _ramp(width, overlap)[None, :]
