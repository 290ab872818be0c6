"""PairListDataset: pairs listed in a file, from folders or LMDB, many LQ per GT allowed.

Reads what ``datasets_prep/prepare.py`` writes: ``<dataroot>/<split>.txt`` with one ``lq/<name> gt/<name>``
per line, and the images under ``<dataroot>`` (``io_backend: {type: disk}``) or in
``<dataroot>/lq.lmdb`` and ``<dataroot>/gt.lmdb`` (``io_backend: {type: lmdb}``). Reading, cropping and
augmentation are basicsr's (FileClient, paired_random_crop, augment), so samples match
PairedImageDataset's; unlike it, one GT may serve many LQ images (RESIDE ITS: 10 hazy per clear).
"""
from pathlib import Path

import torch
from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import FileClient, imfrombytes, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from difflid.data.prep import lmdb_key
from difflid.utils.option_schema import BOOL, INT, IO_BACKEND, STR, DatasetKeys

__all__ = ['PairListDataset']


@DATASET_REGISTRY.register()
class PairListDataset(data.Dataset):
    """Paired images from a pair list.

    Options:
        dataroot: Prepared dataset folder.
        meta_info_file: Pair list (``<dataroot>/train.txt`` ...); relative paths are taken from the working
            directory, as basicsr does.
        io_backend: {type: disk} or {type: lmdb}.
        phase: 'train' crops (gt_size) and augments (use_hflip, use_rot); other phases give whole images.
        task: The degradation's label in per-task reports and mixed training sets (e.g. derain); optional.
    Returns lq, gt (RGB (3, H, W) float in [0, 1]), lq_path, gt_path (and task, when the option is given).
    """

    # checked before a run starts (difflid.utils.option_schema), besides the loader's keys
    OPTION_KEYS = DatasetKeys({'dataroot': STR, 'meta_info_file': STR, 'io_backend': IO_BACKEND, 'gt_size': INT,
                               'use_hflip': BOOL, 'use_rot': BOOL, 'task': STR},
                              required=('dataroot', 'meta_info_file', 'io_backend'),
                              required_for_training=('gt_size',))

    def __init__(self, opt: dict) -> None:
        super().__init__()
        self.opt = opt
        for key in ('dataroot', 'meta_info_file', 'io_backend'):
            if key not in opt:
                raise KeyError(f"dataset {opt.get('name')}: PairListDataset needs the option '{key}'")
        self.root = Path(opt['dataroot'])
        self.backend = dict(opt['io_backend'])
        if self.backend.get('type') not in ('disk', 'lmdb'):
            raise ValueError(f"dataset {opt.get('name')}: io_backend.type must be 'disk' or 'lmdb', "
                             f"got {self.backend.get('type')!r}")
        if self.backend['type'] == 'lmdb':
            self.backend.update(db_paths=[str(self.root / 'lq.lmdb'), str(self.root / 'gt.lmdb')],
                                client_keys=['lq', 'gt'])
            missing = [p for p in self.backend['db_paths'] if not Path(p).is_dir()]
            if missing:
                raise FileNotFoundError(f"dataset {opt.get('name')}: no LMDB at {missing}; prepare the dataset "
                                        'with --lmdb, or use io_backend: {type: disk}')
        self.train = opt.get('phase') == 'train'
        if self.train and 'gt_size' not in opt:
            raise KeyError(f"dataset {opt.get('name')}: training needs 'gt_size' (the crop size)")
        meta = Path(opt['meta_info_file'])
        if not meta.is_file():
            raise FileNotFoundError(f"dataset {opt.get('name')}: pair list {meta.resolve()} not found; write it with "
                                    'datasets_prep/prepare.py')
        self.pairs = []
        for number, line in enumerate(meta.read_text(encoding='utf-8').splitlines(), 1):
            if line.strip():
                fields = line.split()
                if len(fields) != 2:
                    raise ValueError(f'{meta}:{number}: expected "<lq> <gt>", got {line!r}')
                self.pairs.append(tuple(fields))
        if not self.pairs:
            raise ValueError(f'{meta} lists no pairs')
        self.file_client = None  # opened in each worker on first use (LMDB handles must not cross fork)

    def __len__(self) -> int:
        return len(self.pairs)

    def lq_names(self) -> list[str]:
        """Every item's LQ image as the pair list names it (what precomputed prior features are indexed by)."""
        return [lq for lq, _ in self.pairs]

    def _read(self, rel: str, side: str):
        if self.backend['type'] == 'lmdb':
            return imfrombytes(self.file_client.get(lmdb_key(rel), side), float32=True), rel
        path = str(self.root / rel)
        try:
            return imfrombytes(self.file_client.get(path, side), float32=True), path
        except Exception as err:  # cv2 and the file client raise several types for a bad file
            raise OSError(f'dataset {self.opt.get("name")}: cannot read {path}: {err}') from err

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if self.file_client is None:
            backend = dict(self.backend)
            self.file_client = FileClient(backend.pop('type'), **backend)
        lq_rel, gt_rel = self.pairs[index]
        lq, lq_path = self._read(lq_rel, 'lq')
        gt, gt_path = self._read(gt_rel, 'gt')
        if self.train:
            gt, lq = paired_random_crop(gt, lq, self.opt['gt_size'], 1, gt_path)
            gt, lq = augment([gt, lq], self.opt.get('use_hflip', False), self.opt.get('use_rot', False))
        elif lq.shape != gt.shape:
            raise ValueError(f'dataset {self.opt.get("name")}: {lq_path} is {lq.shape[1]}x{lq.shape[0]} but its GT '
                             f'{gt_path} is {gt.shape[1]}x{gt.shape[0]}')
        gt, lq = img2tensor([gt, lq], bgr2rgb=True, float32=True)
        item = {'lq': lq, 'gt': gt, 'lq_path': lq_path, 'gt_path': gt_path}
        if self.opt.get('task'):
            item['task'] = self.opt['task']
        return item
