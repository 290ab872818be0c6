"""DCP: single-image dehazing with the dark channel prior (He, Sun and Tang, CVPR 2009 / TPAMI 2011),
transmission refined with the guided filter (He, Sun and Tang, ECCV 2010). No trainable parameters:
the classical baseline of the paper's Table 1, runnable through tools/test.py and tools/infer.py.
"""
import cv2
import numpy as np
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

__all__ = ['DCP', 'dehaze_dcp']


def _guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Grey-guide guided filter from box filters (O(1) per pixel in the radius)."""
    size = (2 * radius + 1, 2 * radius + 1)

    def mean(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, cv2.CV_32F, size, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = mean(guide), mean(src)
    a = (mean(guide * src) - mean_i * mean_p) / (mean(guide * guide) - mean_i * mean_i + eps)
    b = mean_p - a * mean_i
    return mean(a) * guide + mean(b)


def dehaze_dcp(hazy: np.ndarray, patch: int = 15, omega: float = 0.95, t0: float = 0.1, top: float = 0.001,
               radius: int = 60, eps: float = 1e-4) -> np.ndarray:
    """Dehaze one (H, W, 3) float32 image in [0, 1] (any channel order); returns the same shape, clipped.

    Args:
        patch: Side of the minimum filter of the dark channel.
        omega: Fraction of haze removed (keeps some for depth perception).
        t0: Lower bound of the transmission.
        top: Fraction of brightest dark-channel pixels that estimate the airlight.
        radius, eps: Guided-filter radius and regularisation.
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (patch, patch))

    def dark_channel(img: np.ndarray) -> np.ndarray:
        return cv2.erode(img.min(axis=2), kernel, borderType=cv2.BORDER_REFLECT)

    img = hazy.astype(np.float32)
    dark = dark_channel(img)
    count = max(1, int(dark.size * top))
    brightest = np.argpartition(dark.ravel(), -count)[-count:]
    airlight = np.maximum(img.reshape(-1, 3)[brightest].max(axis=0), 1e-3)
    transmission = 1 - omega * dark_channel(img / airlight)
    guide = img.mean(axis=2)  # channel-order agnostic grey guide
    transmission = _guided_filter(guide, transmission.astype(np.float32), min(radius, max(img.shape[:2]) // 4), eps)
    transmission = np.maximum(transmission, t0)[..., None]
    return np.clip((img - airlight) / transmission + airlight, 0, 1)


@ARCH_REGISTRY.register()
class DCP(nn.Module):
    """Dark channel prior dehazing as a (parameter-free) network: (B, 3, H, W) in [0, 1] -> same.

    Args: see ``dehaze_dcp``.
    """

    def __init__(self, patch: int = 15, omega: float = 0.95, t0: float = 0.1, top: float = 0.001, radius: int = 60,
                 eps: float = 1e-4) -> None:
        super().__init__()
        self.params = dict(patch=patch, omega=omega, t0=t0, top=top, radius=radius, eps=eps)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = [dehaze_dcp(img.permute(1, 2, 0).float().cpu().numpy(), **self.params) for img in x]
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x)
