"""CleanImageDataset: clean images of one domain, for training a diffusion prior (``DiffusionPriorModel``).

A diffusion prior learns p(x) from clean images alone. Each item is one random ``gt_size`` square of a random
zoom of an image (the zoom factor log-uniform in ``zoom_range``, so the prior sees whole scenes and fine detail),
optionally flipped. Sources: a folder of images (``dataroot_gt``, read lazily), an LMDB written by basicsr's
``make_lmdb_from_imgs`` (``io_backend: {type: lmdb}``), or the photos that installed packages ship
(``source: bundled``, held in memory: the built-in prior needs no download).
"""
import math
import random
from pathlib import Path

import cv2
import numpy as np
import torch
from basicsr.utils import FileClient, imfrombytes
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils.data import Dataset

from difflid.data.bundled_photos import BUNDLED_SOURCES, IMAGE_SUFFIXES, read_clear_images
from difflid.utils.option_schema import BOOL, INT_OR_NONE, IO_BACKEND, LIST, STR, STR_OR_NONE, DatasetKeys

__all__ = ['CleanImageDataset', 'random_zoom_crop']

_KEYS = {'name', 'type', 'phase', 'dataroot_gt', 'source', 'images', 'io_backend', 'gt_size', 'zoom_range',
         'use_hflip', 'use_vflip', 'scale'}


def random_zoom_crop(img: np.ndarray, size: int, zoom_range: tuple[float, float],
                     rng: random.Random | None = None) -> np.ndarray:
    """A random ``size`` x ``size`` crop of ``img`` resized by a log-uniform factor in ``zoom_range``.

    The factor is raised where needed so that the shorter side covers the crop (small images are enlarged).
    ``rng`` defaults to Python's global ``random``, which basicsr seeds per run, process and worker.
    """
    rng = rng or random
    low, high = (math.log(z) for z in zoom_range)
    zoom = max(math.exp(rng.uniform(low, high)), size / min(img.shape[:2]))
    height, width = max(size, round(img.shape[0] * zoom)), max(size, round(img.shape[1] * zoom))
    if (height, width) != img.shape[:2]:
        interp = cv2.INTER_AREA if zoom < 1 else cv2.INTER_CUBIC
        img = cv2.resize(img, (width, height), interpolation=interp)
    top, left = rng.randint(0, height - size), rng.randint(0, width - size)
    return img[top:top + size, left:left + size]


@DATASET_REGISTRY.register()
class CleanImageDataset(Dataset):
    """Random zoomed crops of clean images: ``{'gt': (3, gt_size, gt_size) RGB in [0, 1], 'gt_path': str}``.

    Options:
        dataroot_gt: Folder of images (any of .png .jpg .jpeg .bmp .tif .tiff .webp), or an LMDB folder.
        source: Instead of ``dataroot_gt``: 'bundled' (photos that scikit-image, scikit-learn and matplotlib ship),
            with ``images``, their names.
        io_backend: {type: disk} (default) or {type: lmdb} for ``dataroot_gt``.
        gt_size: Side of the square crops. Validation sets (``phase`` val) crop each image the same way every time
            (the draw is seeded by the index) and never flip; without ``gt_size`` they give whole images,
            centre-cropped to a multiple of 32 so that any UNet takes them.
        zoom_range: [min, max] resize factor before cropping, log-uniform; default [1.0, 1.0] (no zoom).
        use_hflip / use_vflip: Random horizontal / vertical flips (default true / false).
    """

    # checked before a run starts (difflid.utils.option_schema), besides the loader's keys
    OPTION_KEYS = DatasetKeys({'dataroot_gt': STR_OR_NONE, 'source': STR_OR_NONE,
                               'images': {'type': ['array', 'null'], 'items': STR}, 'io_backend': IO_BACKEND,
                               'gt_size': INT_OR_NONE, 'zoom_range': LIST, 'use_hflip': BOOL, 'use_vflip': BOOL})

    EXTRA_KEYS: tuple[str, ...] = ()  # a subclass's own option keys

    def __init__(self, opt: dict) -> None:
        super().__init__()
        name = opt.get('name', 'CleanImageDataset')
        unknown = sorted(set(opt) - _KEYS - set(self.EXTRA_KEYS) - {
            'batch_size_per_gpu', 'num_worker_per_gpu', 'dataset_enlarge_ratio', 'prefetch_mode', 'pin_memory',
            'persistent_workers', 'total_batch_size', 'use_shuffle'})
        if unknown:
            raise KeyError(f'dataset {name}: unknown option(s) {unknown} for {type(self).__name__}; valid: '
                           f'{sorted(_KEYS | set(self.EXTRA_KEYS))}')
        self.opt = opt
        self.gt_size = opt.get('gt_size')
        zoom = tuple(float(z) for z in opt.get('zoom_range', (1.0, 1.0)))
        if len(zoom) != 2 or not 0 < zoom[0] <= zoom[1]:
            raise ValueError(f'dataset {name}: zoom_range must be [min, max] with 0 < min <= max, got {list(zoom)}')
        self.zoom_range = zoom
        self.io_opt = dict(opt.get('io_backend') or {'type': 'disk'})
        self.file_client = None
        self.images: dict[str, np.ndarray] = {}
        if opt.get('source') is not None:
            if opt['source'] not in BUNDLED_SOURCES:
                raise ValueError(f"dataset {name}: source must be 'bundled' (else use dataroot_gt: a folder), "
                                 f"got {opt['source']!r}")
            self.images = read_clear_images(opt['source'], opt.get('images'), name)
            self.keys = list(self.images)
        elif opt.get('dataroot_gt') is not None:
            root = Path(opt['dataroot_gt'])
            if self.io_opt['type'] == 'lmdb':
                meta = root / 'meta_info.txt'
                if not meta.is_file():
                    raise FileNotFoundError(f'dataset {name}: {meta} not found (dataroot_gt must be an LMDB written '
                                            "by basicsr's make_lmdb_from_imgs)")
                self.keys = [line.split(' ')[0].rsplit('.', 1)[0] for line in meta.read_text().splitlines() if line]
                self.io_opt.update(db_paths=[str(root)], client_keys=['gt'])
            else:
                self.keys = sorted(str(p) for p in root.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES) \
                    if root.is_dir() else []
            if not self.keys:
                raise FileNotFoundError(f'dataset {name}: no images in dataroot_gt {root.resolve()}')
        else:
            raise KeyError(f'dataset {name}: give dataroot_gt (a folder of clean images) or source: bundled with '
                           'images')

    def __len__(self) -> int:
        return len(self.keys)

    def _read(self, key: str) -> np.ndarray:
        if self.images:
            return self.images[key]
        if self.file_client is None:  # opened in the worker process (LMDB handles do not survive a fork)
            self.file_client = FileClient(self.io_opt.pop('type'), **self.io_opt)
        img = imfrombytes(self.file_client.get(key, 'gt'), float32=False)  # 8-bit BGR whatever the file holds
        if img is None:
            raise ValueError(f"dataset {self.opt.get('name')}: cannot read image {key}")
        return img

    def __getitem__(self, index: int) -> dict:
        key = self.keys[index]
        img = self._read(key)
        train = self.opt.get('phase', 'train') == 'train'
        if self.gt_size:
            # validation: the same zoom and crop of each image at every validation (drawn from its index)
            img = random_zoom_crop(img, int(self.gt_size), self.zoom_range, None if train else random.Random(index))
            if train and self.opt.get('use_hflip', True) and random.random() < 0.5:
                img = img[:, ::-1]
            if train and self.opt.get('use_vflip', False) and random.random() < 0.5:
                img = img[::-1]
        else:
            height, width = (s // 32 * 32 for s in img.shape[:2])
            top, left = (img.shape[0] - height) // 2, (img.shape[1] - width) // 2
            img = img[top:top + height, left:left + width]
        rgb = np.ascontiguousarray(img[..., ::-1], dtype=np.float32) / 255
        return {'gt': torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), 'gt_path': key}
