"""Photos that installed packages ship, so demos, tests and the built-in prior need no download.

scikit-image's ``skimage/data`` (astronaut, chelsea, coffee, ...), scikit-learn's sample images (china,
flower) and matplotlib's sample data (grace_hopper) are looked up by file stem. Grey images come back as three
equal channels.
"""
from pathlib import Path

import cv2
import numpy as np

__all__ = ['BUNDLED_SOURCES', 'HELD_OUT_PHOTOS', 'bundled_photo', 'bundled_photo_dirs', 'read_clear_images']

# values of a dataset's ``source`` option that mean "these photos" (``skimage``: the name it had first)
BUNDLED_SOURCES = ('bundled', 'skimage')
_SUFFIXES = ('.png', '.jpg', '.jpeg')
IMAGE_SUFFIXES = {'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp'}
# the photos held out for evaluation (the quickstart's and the demos' validation, the probe's demos): no shipped or
# demo model trains on them (tests/test_task_options.py checks every option file that trains on bundled photos)
HELD_OUT_PHOTOS = ('chelsea', 'china', 'flower', 'grace_hopper', 'brick', 'grass', 'coins')


def bundled_photo_dirs() -> list[Path]:
    """The folders searched, in order: scikit-image's data, scikit-learn's sample images, matplotlib's sample data."""
    import skimage.data

    dirs = [Path(skimage.data.__file__).parent]
    try:
        import sklearn.datasets

        dirs.append(Path(sklearn.datasets.__file__).parent / 'images')
    except ImportError:
        pass
    try:
        import matplotlib

        dirs.append(Path(matplotlib.get_data_path()) / 'sample_data')
    except ImportError:
        pass
    return dirs


def bundled_photo(name: str) -> np.ndarray:
    """A bundled photo by file stem (e.g. 'astronaut', 'china', 'grace_hopper') as (H, W, 3) uint8 BGR."""
    candidates = [d / f'{name}{s}' for d in bundled_photo_dirs() for s in _SUFFIXES]
    path = next((p for p in candidates if p.is_file()), None)
    img = None if path is None else cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f'no bundled photo named {name!r} (looked for {name}{{{",".join(_SUFFIXES)}}} in '
                                + ', '.join(str(d) for d in bundled_photo_dirs()) + ')')
    return img


def read_clear_images(source: str, names: list[str] | None, dataset_name: str) -> dict[str, np.ndarray]:
    """Clear images by name, (H, W, 3) uint8 BGR: bundled photos (``source`` 'bundled', which needs ``names``) or
    the images of the folder ``source`` (only ``names`` among their stems, when given). Errors name the dataset."""
    if source in BUNDLED_SOURCES:
        if not names:
            raise KeyError(f"dataset {dataset_name}: source {source!r} needs an 'images' list, "
                           'e.g. [astronaut, coffee]')
        return {n: bundled_photo(n) for n in names}
    folder = Path(source)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if names:
        files = [p for p in files if p.stem in set(names)]
    if not files:
        raise FileNotFoundError(f'dataset {dataset_name}: no clear images in source {folder.resolve()}')
    images = {}
    for p in files:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f'dataset {dataset_name}: cannot read clear image {p}')
        images[p.stem] = img
    return images
