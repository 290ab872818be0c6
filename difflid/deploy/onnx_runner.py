"""Run a model exported by tools/export.py with onnxruntime, using numpy, cv2, Pillow and onnxruntime only.

This file imports nothing from difflid (nor torch or basicsr), so that a deployment needs neither: tools/infer.py
loads it by its path (``importlib``), since ``import difflid.deploy.onnx_runner`` would first run difflid's
``__init__``, which imports basicsr and torch. It loads the torch-free modules it shares with the torch side
by their files, and restates in numpy only the blend of the tiles:

- ``image_io`` (and its ``read_image`` / ``write_like``): ``difflid/image_io.py`` itself (8/16-bit, grey, RGB, RGBA,
  turned upright by the EXIF orientation, written as the output format can hold them; it needs Pillow);
- ``check_tiling`` and the tiles and weights of ``tiled_apply``: ``difflid/utils/tile_layout.py``, as
  ``difflid.utils.tiling`` (each tile given its origin so the graph noises it as its window of the whole image);
- ``OnnxRestorer``: ``difflid.inference.Restorer`` (same call: (H, W, 3) RGB in [0, 1] in and out).

The graph's contract (``difflid.deploy.export``): inputs ``image`` (B, 3, H, W) float32 in [0, 1], any size, and
``origin`` (2,) int64 = (top, left); output ``restored`` (B, 3, H, W), not clamped.
"""
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

__all__ = ['INSTALL_HINT', 'LoadedImage', 'OnnxRestorer', 'check_tiling', 'image_io', 'read_image', 'tiled_apply',
           'write_like']

INSTALL_HINT = ("pip install -e '.[onnxruntime]' in the difflid repository (or pip install onnxruntime; "
                'onnxruntime-gpu for CUDA)')


def _torch_free_module(relative: str) -> ModuleType:
    """A torch-free module of difflid loaded by its file (``import difflid.x`` would first run difflid's ``__init__``,
    which imports basicsr and torch): the images' and the tiles' code is then the very code of the torch side."""
    name = f'difflid_onnx_{Path(relative).stem}'
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / relative)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[name]


image_io = _torch_free_module('image_io.py')
_tile_layout = _torch_free_module('utils/tile_layout.py')
LoadedImage, read_image, write_like = image_io.LoadedImage, image_io.read_image, image_io.write_like
check_tiling = _tile_layout.check_tiling


def tiled_apply(fn: Callable[[np.ndarray, tuple[int, int]], np.ndarray], x: np.ndarray, tile: int,
                overlap: int) -> np.ndarray:
    """``difflid.utils.tiling.tiled_apply`` on numpy arrays: ``fn(tile, (top, left))`` on the overlapping tiles of
    ``x`` (B, C, H, W), blended; ``fn`` must keep the spatial size."""
    height, width = x.shape[-2:]
    out = weights = None
    for top, left, th, tw in _tile_layout.tile_windows(height, width, tile, overlap):
        y = fn(x[..., top:top + th, left:left + tw], (top, left))
        if out is None:
            out = np.zeros((*y.shape[:2], height, width), dtype=y.dtype)
            weights = np.zeros((1, 1, height, width), dtype=y.dtype)
        w = _tile_layout.tile_weight(th, tw, overlap).astype(y.dtype)
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
