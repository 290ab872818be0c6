"""LPIPS (Zhang et al., CVPR 2018) from the ``lpips`` package, registered as basicsr metric ``calculate_lpips``.

DiffLI²D reports LPIPS with the AlexNet backbone (``net: alex``), on images in [-1, 1].
"""
import numpy as np
import torch
from basicsr.utils.registry import METRIC_REGISTRY

from difflid.metrics.hub_weights import require_hub_file

__all__ = ['calculate_lpips']

# torchvision backbones that lpips builds, by the file names torch hub stores them under
BACKBONES = {
    'alex': ('alexnet-owt-7be5be79.pth', 'https://download.pytorch.org/models/alexnet-owt-7be5be79.pth'),
    'vgg': ('vgg16-397923af.pth', 'https://download.pytorch.org/models/vgg16-397923af.pth'),
    'squeeze': ('squeezenet1_1-b8a52dc0.pth', 'https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth'),
}
_MODELS: dict[tuple[str, str], torch.nn.Module] = {}


def lpips_model(net: str = 'alex', device: str | torch.device | None = None) -> torch.nn.Module:
    """The (cached) lpips.LPIPS model; the backbone weights must be in the torch hub cache."""
    if net not in BACKBONES:
        raise ValueError(f'LPIPS net must be one of {sorted(BACKBONES)}, got {net!r}')
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    key = (net, str(device))
    if key not in _MODELS:
        require_hub_file(*BACKBONES[net], used_for=f'LPIPS ({net})')
        import lpips

        _MODELS[key] = lpips.LPIPS(net=net, verbose=False).to(device).eval()
    return _MODELS[key]


def _to_tensor(img: np.ndarray, input_order: str) -> torch.Tensor:
    """uint8 BGR image (basicsr's tensor2img output) -> (1, 3, H, W) RGB in [-1, 1]."""
    if input_order == 'CHW':
        img = img.transpose(1, 2, 0)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'LPIPS needs 3-channel images, got shape {img.shape}')
    scale = 65535.0 if img.dtype == np.uint16 else 255.0 if img.dtype == np.uint8 else 1.0
    rgb = np.ascontiguousarray(img[..., ::-1], dtype=np.float32) / scale
    return torch.from_numpy(rgb).permute(2, 0, 1)[None] * 2 - 1


@METRIC_REGISTRY.register()
@torch.no_grad()
def calculate_lpips(img: np.ndarray, img2: np.ndarray, crop_border: int = 0, input_order: str = 'HWC',
                    net: str = 'alex', **kwargs) -> float:
    """LPIPS distance between two BGR images (as basicsr's metrics receive them); lower is better.

    Args:
        img, img2: (H, W, 3) BGR, uint8 (or float in [0, 1]).
        crop_border: Pixels cut from every side before scoring.
        input_order: 'HWC' or 'CHW'.
        net: Backbone: 'alex' (the paper's), 'vgg' or 'squeeze'.
    """
    model = lpips_model(net)
    a, b = (_to_tensor(x, input_order) for x in (img, img2))
    if crop_border:
        a, b = (t[..., crop_border:-crop_border, crop_border:-crop_border] for t in (a, b))
    device = next(model.parameters()).device
    return float(model(a.to(device), b.to(device)).item())
