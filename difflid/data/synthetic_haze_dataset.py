"""SyntheticHazeDataset: hazy/clear pairs synthesised on first use from clear images, then read like
basicsr's PairedImageDataset (crop, flip, rotation, folder or LMDB are all basicsr's).

The default source is the photos that installed packages ship (``difflid.data.bundled_photos``), so the
quickstart needs no download. Each clear image gives ``hazy_per_image`` hazy versions (random smooth depth,
β and airlight per version); the clear image is written once per hazy version under the same name, so the
two folders pair one-to-one as basicsr expects.
"""
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.utils import get_root_logger
from basicsr.utils.registry import DATASET_REGISTRY

from difflid.data.bundled_photos import read_clear_images
from difflid.data.haze_synthesis import random_smooth_depth, synthesize_haze
from difflid.utils.option_schema import INT, LIST, PAIRED_IMAGE_KEYS, STR, DatasetKeys

__all__ = ['SyntheticHazeDataset', 'make_haze_pairs']


def make_haze_pairs(
    clear: dict[str, np.ndarray],
    out_dir: str | Path,
    hazy_per_image: int = 4,
    beta_range: tuple[float, float] = (0.6, 1.8),
    airlight_range: tuple[float, float] = (0.7, 1.0),
    max_side: int | None = None,
    seed: int = 0,
) -> int:
    """Write ``out_dir/{gt,lq}/<name>_<k>.png`` for every clear image; return the number of pairs.

    Args:
        clear: Clear images by name, (H, W, 3) uint8 BGR.
        out_dir: Output folder; created atomically (a partial run leaves nothing under this name).
        hazy_per_image: Hazy versions per clear image.
        beta_range: Range of the scattering coefficient β (RESIDE uses 0.6-1.8).
        airlight_range: Range of the (grey) airlight A.
        max_side: Downscale images whose longer side exceeds this (None: keep the size).
        seed: Seed of depth, β and A.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + '.', dir=out_dir.parent if out_dir.parent.exists() else None))
    try:
        for sub in ('gt', 'lq'):
            (tmp / sub).mkdir()
        for name, img in clear.items():
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f'clear image {name!r} must be (H, W, 3) uint8, got {img.shape} {img.dtype}')
            if max_side and max(img.shape[:2]) > max_side:
                scale = max_side / max(img.shape[:2])
                img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)),
                                 interpolation=cv2.INTER_AREA)
            clear_f = img.astype(np.float32) / 255
            for k in range(hazy_per_image):
                depth = random_smooth_depth(*img.shape[:2], rng)
                hazy = synthesize_haze(clear_f, float(rng.uniform(*beta_range)), float(rng.uniform(*airlight_range)),
                                       depth)
                cv2.imwrite(str(tmp / 'gt' / f'{name}_{k}.png'), img)
                cv2.imwrite(str(tmp / 'lq' / f'{name}_{k}.png'), (hazy * 255).round().astype(np.uint8))
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not out_dir.is_dir():  # another process finished first: keep its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(clear) * hazy_per_image


@DATASET_REGISTRY.register()
class SyntheticHazeDataset(PairedImageDataset):
    """Synthetic hazy/clear pairs, generated into ``dataroot`` if it does not exist yet.

    Options (besides PairedImageDataset's crop/flip/io_backend keys):
        dataroot: Folder of the pairs (``gt/``, ``lq/`` inside).
        source: 'bundled' (photos that scikit-image, scikit-learn and matplotlib ship; 'skimage' is the same)
            or a folder of clear images.
        images: Names (bundled photo names, or file stems in ``source``); all images of the folder if omitted.
        hazy_per_image, beta_range, airlight_range, max_side, seed: see ``make_haze_pairs``.
    """

    # checked before a run starts (difflid.utils.option_schema): PairedImageDataset's keys, its two folders replaced
    # by ``dataroot``; the pairs are written on first use, so there are no files to check beforehand
    OPTION_KEYS: DatasetKeys = PAIRED_IMAGE_KEYS.extended(
        {'dataroot': STR, 'source': STR, 'images': {'type': ['array', 'null'], 'items': STR}, 'hazy_per_image': INT,
         'beta_range': LIST, 'airlight_range': LIST, 'max_side': {'type': ['integer', 'null']}, 'seed': INT},
        drop=('dataroot_gt', 'dataroot_lq'), required=('dataroot', 'io_backend'), generates_data=True)
    GENERATED_PATH_KEYS = ('dataroot',)  # written here on first use: an output, not an input to look for

    def __init__(self, opt: dict) -> None:
        root = Path(opt['dataroot'])
        if not root.is_dir():
            clear = read_clear_images(opt.get('source', 'bundled'), opt.get('images'), opt['name'])
            get_root_logger().info(f"dataset {opt['name']}: writing {len(clear) * opt.get('hazy_per_image', 4)} "
                                   f'synthetic hazy/clear pairs to {root.resolve()} (first use; later runs read them '
                                   'from there: delete the folder to make them again)')
            make_haze_pairs(clear, root, opt.get('hazy_per_image', 4),
                            tuple(opt.get('beta_range', (0.6, 1.8))), tuple(opt.get('airlight_range', (0.7, 1.0))),
                            opt.get('max_side'), opt.get('seed', 0))
        super().__init__({'filename_tmpl': '{}', **opt, 'dataroot_gt': str(root / 'gt'),
                          'dataroot_lq': str(root / 'lq')})
