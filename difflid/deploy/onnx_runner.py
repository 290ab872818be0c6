"""Run a model exported by tools/export.py with onnxruntime, using numpy, cv2 and onnxruntime only.

This file imports nothing from difflid (nor torch or basicsr), so that a deployment needs neither: tools/infer.py
loads it by its path (``importlib``), since ``import difflid.deploy.onnx_runner`` would first run difflid's
``__init__``, which imports basicsr and torch. It therefore restates, in numpy, the little it needs from the torch
side, and tests/test_export.py checks each piece against the original:

- ``read_image`` / ``write_like``: ``difflid.image_io`` (8/16-bit, grey, RGB, RGBA kept as they came);
- ``check_tiling`` / ``tiled_apply``: ``difflid.utils.tiling`` (the same tiles, ramps and blend, each tile given
  its origin so the graph noises it as its window of the whole image);
- ``OnnxRestorer``: ``difflid.inference.Restorer`` (same call: (H, W, 3) RGB in [0, 1] in and out).

The graph's contract (``difflid.deploy.export``): inputs ``image`` (B, 3, H, W) float32 in [0, 1], any size, and
``origin`` (2,) int64 = (top, left); output ``restored`` (B, 3, H, W), not clamped.
"""
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ['INSTALL_HINT', 'LoadedImage', 'OnnxRestorer', 'check_tiling', 'read_image', 'tiled_apply', 'write_like']

INSTALL_HINT = ("pip install -e '.[onnxruntime]' in the difflid repository (or pip install onnxruntime; "
                'onnxruntime-gpu for CUDA)')


# --- images: as difflid.image_io -----------------------------------------------------------------------------------

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


# --- tiles: as difflid.utils.tiling --------------------------------------------------------------------------------

def check_tiling(tile: int, overlap: int, multiple: int = 1, names: tuple[str, str] = ('tile', 'tile_overlap')) -> None:
    """ValueError naming the options unless tile is 0 (off) or a positive multiple of ``multiple`` with
    0 <= overlap < tile."""
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


def _ramp(length: int, overlap: int) -> np.ndarray:
    """Blending weight along one axis: rises linearly over ``overlap`` pixels at both ends, never zero."""
    if overlap <= 0:
        return np.ones(length, dtype=np.float32)
    idx = np.arange(length, dtype=np.float32)
    return np.minimum((idx + 0.5) / overlap, (length - idx - 0.5) / overlap).clip(max=1.0)


def tiled_apply(fn: Callable[[np.ndarray, tuple[int, int]], np.ndarray], x: np.ndarray, tile: int,
                overlap: int) -> np.ndarray:
    """``fn(tile, (top, left))`` on overlapping ``tile``-sized tiles of ``x`` (B, C, H, W), blended with weights
    that fall off linearly towards tile edges; ``fn`` must keep the spatial size."""
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
                out = np.zeros((*y.shape[:2], height, width), dtype=y.dtype)
                weights = np.zeros((1, 1, height, width), dtype=y.dtype)
            w = (_ramp(th, overlap)[:, None] * _ramp(tw, overlap)[None, :]).astype(y.dtype)
            out[..., top:top + th, left:left + tw] += y * w
            weights[..., top:top + th, left:left + tw] += w
    return out / weights


# --- the model -----------------------------------------------------------------------------------------------------

def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(f'running an ONNX model needs onnxruntime, which is not installed: {INSTALL_HINT}') from err
    return onnxruntime


class OnnxRestorer:
    """An exported model ready for inference on single images, like ``difflid.inference.Restorer``.

    Args:
        path: The .onnx file written by tools/export.py.
        device: 'cpu', 'cuda' (onnxruntime's CUDAExecutionProvider: the onnxruntime-gpu package) or None (CUDA when
            onnxruntime has it, else the CPU).
        tile, tile_overlap: Overlapping tiles of this size (a multiple of the prior's stride, 32), 0 = whole image;
            None: what the exported option file's ``val.tile``/``val.tile_overlap`` said (recorded in the file).
        threads: onnxruntime's intra-op threads; None: ``OMP_NUM_THREADS`` when set (onnxruntime's own pool ignores
            it, and would otherwise take every core of a shared machine), else onnxruntime's default.
    """

    def __init__(self, path: str | Path, device: str | None = None, tile: int | None = None,
                 tile_overlap: int | None = None, threads: int | None = None) -> None:
        ort = _onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f'{path} not found: export a model with tools/export.py -opt <checkpoint> -o '
                                    f'{path.name}')
        available = ort.get_available_providers()
        if device is None:
            device = 'cuda' if 'CUDAExecutionProvider' in available else 'cpu'
        if device not in ('cpu', 'cuda'):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == 'cuda' and 'CUDAExecutionProvider' not in available:
            raise ValueError(f'device cuda asked for, but this onnxruntime has only {available}; install '
                             'onnxruntime-gpu, or use --device cpu')
        providers = ['CUDAExecutionProvider', 'CPUExecutionProvider'] if device == 'cuda' else ['CPUExecutionProvider']
        options = ort.SessionOptions()
        # NOTE: without the arena: its power-of-two growth doubled the peak (quickstart model, 1600x1200 whole:
        # 5.8 GiB with it, 2.8 GiB without), at no measured cost in speed
        options.enable_cpu_mem_arena = False
        if threads is None and os.environ.get('OMP_NUM_THREADS', '').isdigit():
            threads = int(os.environ['OMP_NUM_THREADS'])
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.device = device
        meta = self.session.get_modelmeta().custom_metadata_map
        if 'difflid.stride' not in meta:
            raise ValueError(f'{path} was not written by tools/export.py (it has no difflid metadata); export the '
                             'model with tools/export.py')
        names = ('tile', 'tile_overlap')
        if tile is None and tile_overlap is None:  # both from the file: an error names the file, not a flag
            names = (f'tile (recorded in {path.name})', f'tile_overlap (recorded in {path.name})')
        self.stride = int(meta['difflid.stride'])
        self.tile = int(meta.get('difflid.tile', 0)) if tile is None else tile
        self.tile_overlap = int(meta.get('difflid.tile_overlap', 32)) if tile_overlap is None else tile_overlap
        check_tiling(self.tile, self.tile_overlap, self.stride, names)
        self.metadata = dict(meta)

    def run(self, image: np.ndarray, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
        """One pass of the graph: (B, 3, H, W) float32 in [0, 1] at ``origin`` = (top, left) -> (B, 3, H, W)."""
        feeds = {'image': np.ascontiguousarray(image, dtype=np.float32), 'origin': np.asarray(origin, np.int64)}
        return self.session.run(['restored'], feeds)[0]

    def restore(self, image: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 in [0, 1], whole or in tiles -> restored (B, 3, H, W), not clamped."""
        if self.tile:
            return tiled_apply(self.run, image, self.tile, self.tile_overlap)
        return self.run(image)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) float32 RGB in [0, 1] -> restored (H, W, 3) float32 RGB in [0, 1]."""
        x = np.ascontiguousarray(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1)[None])
        return np.clip(self.restore(x)[0], 0, 1).transpose(1, 2, 0)
