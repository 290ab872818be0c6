"""The built-in h-space demo (tools/demo_hspace.py): features of a clear image and of a synthetic
hazy copy at several timesteps, summarised as numbers and pictures. Runs with no downloads on the
tiny random-weight prior; with the real checkpoint it shows the paper's Sec. 4.1 effect (hazy and
clear features agree at t1=0 and separate at t2≈500)."""
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from difflid.data.haze_synthesis import random_smooth_depth, synthesize_haze
from difflid.priors.hspace_arch import HSpaceExtractor

__all__ = ['hspace_demo', 'pca_image']


def pca_image(h: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) features -> (H, W, 3) uint8 RGB: the 3 leading principal components, min-max scaled."""
    c = h.shape[0]
    flat = h.reshape(c, -1).T.double()
    flat = flat - flat.mean(0)
    _, _, v = torch.linalg.svd(flat, full_matrices=False)
    comps = (flat @ v[:3].T).reshape(*h.shape[1:], -1).numpy()
    comps = np.pad(comps, ((0, 0), (0, 0), (0, 3 - comps.shape[-1])))
    comps = (comps - comps.min((0, 1))) / np.maximum(np.ptp(comps, axis=(0, 1)), 1e-12)
    return cv2.resize((comps * 255).round().astype(np.uint8), size[::-1], interpolation=cv2.INTER_NEAREST)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@torch.no_grad()
def hspace_demo(
    clear_rgb: np.ndarray,
    extractor: HSpaceExtractor,
    output_dir: str | Path | None = None,
    beta: float = 1.2,
    airlight: float = 0.9,
    seed: int = 0,
) -> dict:
    """Extract h of ``clear_rgb`` ((H, W, 3) uint8 RGB) and of a hazy copy; return and optionally save a summary.

    Returns:
        {'image_size': [H, W], 'hazy_psnr': dB of the hazy copy against the clear image,
         'timesteps': {t: {'shape', 'mean', 'std', 'cosine_clear_hazy', 'relative_l2_clear_hazy'}}}.
        With ``output_dir``: writes hazy.png, hspace_t<t>.png (PCA maps: clear | hazy) and summary.json.
    """
    if clear_rgb.ndim != 3 or clear_rgb.shape[2] != 3 or clear_rgb.dtype != np.uint8:
        raise ValueError(f'hspace_demo needs an (H, W, 3) uint8 RGB image, got {clear_rgb.shape} {clear_rgb.dtype}')
    clear = clear_rgb.astype(np.float32) / 255
    rng = np.random.default_rng(seed)
    hazy = synthesize_haze(clear, beta, airlight, random_smooth_depth(*clear.shape[:2], rng))
    device = next(extractor.parameters()).device
    batch = torch.from_numpy(np.stack([clear, hazy])).permute(0, 3, 1, 2).to(device)
    feats = extractor(batch)
    mse = float(np.mean((hazy - clear) ** 2))
    summary = {
        'image_size': list(clear.shape[:2]),
        'hazy_psnr': 10 * np.log10(1 / mse),
        'timesteps': {},
    }
    for t, h in feats.items():
        h = h.cpu()
        summary['timesteps'][t] = {
            'shape': list(h.shape[1:]),
            'mean': float(h.mean()),
            'std': float(h.std()),
            'cosine_clear_hazy': _cosine(h[0], h[1]),
            'relative_l2_clear_hazy': float((h[0] - h[1]).norm() / h[0].norm().clamp_min(1e-12)),
        }
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / 'hazy.png'), cv2.cvtColor((hazy * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))
        for t, h in feats.items():
            sheet = np.concatenate([pca_image(h[i].cpu(), clear.shape[:2]) for i in range(2)], axis=1)
            cv2.imwrite(str(out / f'hspace_t{t}.png'), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        (out / 'summary.json').write_text(json.dumps(summary, indent=2))
    return summary
