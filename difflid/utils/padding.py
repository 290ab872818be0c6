"""Padding to a multiple of the networks' down-sampling factor, and cropping back."""
import torch
from torch.nn import functional as F

__all__ = ['pad_to_multiple']


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (..., H, W) at the bottom and right up to multiples of ``multiple``; crop back with ``[..., :H, :W]``.

    Reflection keeps image statistics at the border; a side shorter than its padding cannot be
    reflected, and is replicated instead.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not pad_h and not pad_w:
        return x
    mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
