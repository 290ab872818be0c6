"""UnpairedImageDataset: degraded images with no ground truth (RTTS, Fattal's set, a user's photos), for testing
with no-reference metrics (NIQE; docs/evaluation.md, "Evaluation without ground truth").

Reads a folder (every image under ``dataroot``, sorted) or a list, ``meta_info_file``, of paths relative to
``dataroot``, one per line: what ``datasets_prep/prepare.py rtts`` writes (``<dst>/test.txt`` naming ``lq/...``).
"""
from pathlib import Path

import torch
from basicsr.utils import imfrombytes, img2tensor, scandir
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from difflid.data.bundled_photos import IMAGE_SUFFIXES
from difflid.utils.errors import OptionError
from difflid.utils.option_schema import IO_BACKEND, STR, STR_OR_NONE, DatasetKeys

__all__ = ['UnpairedImageDataset']


@DATASET_REGISTRY.register()
class UnpairedImageDataset(data.Dataset):
    """Degraded images only; items carry no ``gt``, so only no-reference metrics can score them.

    Options:
        dataroot: Folder of the images (searched recursively when no list is given).
        meta_info_file: Optional list of images, relative to ``dataroot``, one per line (relative list paths are
            taken from the working directory, as basicsr does).
        io_backend: {type: disk}.
        task: The degradation's label in per-task reports; optional.
    Returns lq (RGB (3, H, W) float in [0, 1]) and lq_path (and task, when the option is given).
    """

    OPTION_KEYS = DatasetKeys({'dataroot': STR, 'meta_info_file': STR_OR_NONE, 'io_backend': IO_BACKEND,
                               'task': STR}, required=('dataroot', 'io_backend'))
    HAS_GT = False  # full-reference metrics on this set are refused at start-up (RestorationModel)

    def __init__(self, opt: dict) -> None:
        super().__init__()
        self.opt = opt
        name = opt.get('name')
        if opt.get('phase') == 'train':
            raise ValueError(f'dataset {name}: UnpairedImageDataset has no ground truth, so it can only be a test '
                             'or validation set')
        if (opt.get('io_backend') or {}).get('type') != 'disk':
            raise ValueError(f"dataset {name}: io_backend.type must be 'disk' for UnpairedImageDataset, got "
                             f"{(opt.get('io_backend') or {}).get('type')!r}")
        self.root = Path(opt['dataroot'])
        if not self.root.is_dir():
            raise FileNotFoundError(f'dataset {name}: dataroot {self.root.resolve()} is not a folder')
        if opt.get('meta_info_file'):
            meta = Path(opt['meta_info_file'])
            if not meta.is_file():
                raise FileNotFoundError(f'dataset {name}: meta_info_file {meta.resolve()} not found; write it with '
                                        'datasets_prep/prepare.py')
            self.names = [line.strip() for line in meta.read_text(encoding='utf-8').splitlines() if line.strip()]
            where = str(meta)
        else:
            self.names = sorted(p for p in scandir(str(self.root), recursive=True)
                                if Path(p).suffix.lower() in IMAGE_SUFFIXES)
            where = f'{self.root} (dataroot)'
        if not self.names:
            raise ValueError(f'dataset {name}: no images in {where}; image suffixes read: {sorted(IMAGE_SUFFIXES)}')

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        path = self.root / self.names[index]
        try:
            img = imfrombytes(path.read_bytes(), float32=True)
        except Exception as err:  # missing file, or cv2 failing on bytes that are not an image: a user's file
            raise OptionError(f"dataset {self.opt.get('name')}: cannot read image {path}: {err}") from err
        item = {'lq': img2tensor(img, bgr2rgb=True, float32=True), 'lq_path': str(path)}
        if self.opt.get('task'):
            item['task'] = self.opt['task']
        return item
