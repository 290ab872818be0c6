"""PSNR and SSIM of float images, before the 8-bit rounding that basicsr's own metrics see.

basicsr's validation rounds the restored tensor to uint8 (``tensor2img``) before ``calculate_psnr`` and
``calculate_ssim``; DehazeFormer, DEA-Net, Retinexformer and DiffLI²D's released code score the float output
in [0, 1]. These are basicsr's formulas (PSNR against peak 255; SSIM with an 11×11 Gaussian window, σ = 1.5,
on the valid region, per channel, then averaged; BT.601 Y for ``test_y_channel``) applied to unrounded
inputs, so the two differ by the rounding alone (docs/evaluation.md, "Metric conventions").

They need the float images: ``float_image`` makes them from a model's (1, 3, H, W) output in the layout
basicsr's metrics take (HWC, BGR), and a uint8 input is refused instead of being silently scored as uint8.
"""
import numpy as np
import torch
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils.registry import METRIC_REGISTRY

__all__ = ['FLOAT_METRICS', 'calculate_psnr_float', 'calculate_ssim_float', 'float_image']

FLOAT_METRICS = {'calculate_psnr_float', 'calculate_ssim_float'}  # metric types scored on float images


def float_image(tensor: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) RGB tensor -> (H, W, 3) BGR float64 in [0, 1]: ``tensor2img`` without rounding."""
    img = tensor.detach().squeeze(0).float().clamp(0, 1).cpu().numpy().astype(np.float64)
    return np.ascontiguousarray(img.transpose(1, 2, 0)[..., ::-1])


def _to_255(img: np.ndarray, img2: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    for x in (img, img2):
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f'{metric} scores float images in [0, 1] (from float_image), got {x.dtype}; '
                            f"for uint8 images use basicsr's {metric.removesuffix('_float')}")
    return img.astype(np.float64) * 255.0, img2.astype(np.float64) * 255.0


@METRIC_REGISTRY.register()
def calculate_psnr_float(img: np.ndarray, img2: np.ndarray, crop_border: int = 0, input_order: str = 'HWC',
                         test_y_channel: bool = False, better: str = 'higher') -> float:
    """PSNR in dB of two float images in [0, 1] (BGR when ``test_y_channel``), as basicsr's, without rounding.

    Args:
        crop_border: Pixels cut from every side before scoring.
        input_order: 'HWC' or 'CHW'.
        test_y_channel: Score the BT.601 Y channel (16-235) instead of the three colour channels.
        better: Accepted because basicsr passes every metric option on; PSNR is higher-better.
    """
    a, b = _to_255(img, img2, 'calculate_psnr_float')
    return float(calculate_psnr(a, b, crop_border, input_order=input_order, test_y_channel=test_y_channel))


@METRIC_REGISTRY.register()
def calculate_ssim_float(img: np.ndarray, img2: np.ndarray, crop_border: int = 0, input_order: str = 'HWC',
                         test_y_channel: bool = False, better: str = 'higher') -> float:
    """SSIM of two float images in [0, 1] (BGR when ``test_y_channel``), as basicsr's, without rounding.

    Args: as ``calculate_psnr_float``.
    """
    a, b = _to_255(img, img2, 'calculate_ssim_float')
    return float(calculate_ssim(a, b, crop_border, input_order=input_order, test_y_channel=test_y_channel))
