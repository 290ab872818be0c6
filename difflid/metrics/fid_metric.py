"""FID over a whole test set, from ``pytorch-fid`` (Inception-v3 pool3 features, Fréchet distance).

FID compares two image *sets*, so it is not averaged per image: difflid's models collect the restored
and ground-truth images of a set and call ``calculate_fid`` once (metric ``type: calculate_fid``).
With few images (LOL-v1 has 15) the 2048-d covariances are rank-deficient: treat the value as indicative.
"""
import numpy as np
import torch
from basicsr.utils.registry import METRIC_REGISTRY

from difflid.metrics.hub_weights import require_hub_file

__all__ = ['SET_METRICS', 'calculate_fid']

SET_METRICS = {'calculate_fid'}  # metric types scored once per set, not per image
_INCEPTION: dict[str, torch.nn.Module] = {}


def inception_model(dims: int = 2048, device: str | torch.device | None = None) -> torch.nn.Module:
    """pytorch-fid's Inception-v3 up to the block giving ``dims`` features (2048 = pool3, the standard FID)."""
    from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3

    if dims not in InceptionV3.BLOCK_INDEX_BY_DIM:
        raise ValueError(f'FID dims must be one of {sorted(InceptionV3.BLOCK_INDEX_BY_DIM)}, got {dims}')
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    key = f'{dims}@{device}'
    if key not in _INCEPTION:
        require_hub_file(FID_WEIGHTS_URL.rsplit('/', 1)[-1], FID_WEIGHTS_URL, used_for='FID')
        _INCEPTION[key] = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[dims]]).to(device).eval()
    return _INCEPTION[key]


@torch.no_grad()
def _features(images: list[np.ndarray], dims: int) -> np.ndarray:
    """(N, dims) features; one image at a time, since sizes differ (the model resizes to 299)."""
    model = inception_model(dims)
    device = next(model.parameters()).device
    feats = []
    for img in images:
        rgb = np.ascontiguousarray(img[..., ::-1], dtype=np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device)
        feats.append(torch.nn.functional.adaptive_avg_pool2d(model(x)[0], 1).flatten(1).cpu().double().numpy())
    return np.concatenate(feats)


@METRIC_REGISTRY.register()
def calculate_fid(imgs: list[np.ndarray], imgs2: list[np.ndarray], dims: int = 2048, **kwargs) -> float:
    """FID between a set of restored images and a set of references ((H, W, 3) BGR uint8 each); lower is better.

    ``dims`` picks pytorch-fid's feature layer (64, 192, 768 or 2048; 2048 is the FID everyone reports).
    """
    from pytorch_fid.fid_score import calculate_frechet_distance

    if len(imgs) < 2 or len(imgs2) < 2:
        raise ValueError(f'FID needs at least 2 images per set, got {len(imgs)} and {len(imgs2)}')
    stats = []
    for images in (imgs, imgs2):
        feats = _features(images, dims)
        stats += [feats.mean(axis=0), np.cov(feats, rowvar=False)]
    return float(calculate_frechet_distance(*stats))
