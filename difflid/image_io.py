"""Reading and writing users' images for inference: 8/16-bit, grey, RGB and RGBA, kept as they came.

numpy and cv2 only: the onnxruntime runner (``difflid.deploy.onnx_runner``) loads this very file."""
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ['LoadedImage', 'read_image', 'write_like']


@dataclass
class LoadedImage:
    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]
    alpha: np.ndarray | None  # (H, W) in the source's dtype, re-attached on writing
    dtype: np.dtype  # uint8 or uint16
    gray: bool
    note: str  # '' or what was converted, for the summary


def read_image(path: str | Path) -> LoadedImage:
    """Read any 8/16-bit grey, BGR or BGRA image; ValueError naming the file if it cannot be used."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'{path}: not a readable image')
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f'{path}: {img.dtype} images are not supported (8- or 16-bit integers only)')
    notes, alpha, gray = [], None, False
    if img.ndim == 2 or img.shape[2] == 1:
        img, gray = cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2BGR), True
        notes.append('grayscale: restored as RGB, saved as grayscale')
    elif img.shape[2] == 4:
        img, alpha = img[..., :3], img[..., 3]
        notes.append('RGBA: alpha kept unchanged')
    elif img.shape[2] != 3:
        raise ValueError(f'{path}: {img.shape[2]}-channel images are not supported')
    if img.dtype == np.uint16:
        notes.append('16-bit: saved as 16-bit')
    scale = float(np.iinfo(img.dtype).max)
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / scale
    return LoadedImage(rgb, alpha, img.dtype, gray, '; '.join(notes))


def write_like(path: str | Path, rgb: np.ndarray, source: LoadedImage) -> None:
    """Write restored (H, W, 3) RGB in [0, 1] with the source's depth, channels and alpha."""
    out = (np.clip(rgb, 0, 1) * np.iinfo(source.dtype).max).round().astype(source.dtype)
    out = cv2.cvtColor(out, cv2.COLOR_RGB2BGR)
    if source.gray:
        out = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)
    elif source.alpha is not None:
        out = np.dstack([out, source.alpha])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), out):
        raise OSError(f'could not write {path}')

