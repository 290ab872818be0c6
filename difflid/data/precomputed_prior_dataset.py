"""PrecomputedPriorDataset: samples of a paired dataset with the frozen prior's features read from a store.

``train.prior_features: precomputed`` trains without running the prior: ``tools/precompute_prior.py`` computed the
features of every *whole* LQ image (padded to the stride, as at test time), in each orientation the training uses
and for ``K`` seeded noise draws (``difflid.utils.feature_store``). Here each training sample is:

1. the wrapped dataset's whole pair (read as for validation: no crop, no flip);
2. flipped left-right with probability 1/2 when ``use_hflip`` (the whole image: the store holds the features of
   each orientation, since the UNet is not flip-equivariant; features are never flipped);
3. cropped to ``gt_size`` at a random offset that is a multiple of the stride in that frame, so that the crop's
   features are exactly the window of the stored ones (``gt_size`` must be a multiple of the stride);
4. one of the ``draws`` noise draws at random.

``use_rot`` is refused: rotations would need six more orientations in the store. Validation samples are whole
images with orientation 0 and draw 0 (the prior's own seeded noise, as online validation). The features are
``f_cim`` and ``f_hae`` (C, h, w) float32 beside ``lq`` and ``gt``.

The crops are therefore on the stride's grid (11 x 16 positions on a 460 x 620 ITS image at stride 32, instead of
333 x 493), and their features carry the whole image's context rather than the crop's alone: a change of the
training inputs, not an equivalent of the paper's way (docs/precomputed_prior.md).
"""
import hashlib
import random
from pathlib import Path

import torch
from torch.utils.data import Dataset

from difflid.utils.errors import OptionError
from difflid.utils.feature_store import FeatureStore, decode_entry

__all__ = ['PrecomputedPriorDataset', 'lq_names', 'pixels_digest']

_LISTED = 5


def pixels_digest(img: torch.Tensor) -> str:
    """sha256 of an image tensor's shape, dtype and values: the key of its features in a store. A changed file
    gives another key, so stale features are never served."""
    data = img.detach().contiguous().cpu()
    digest = hashlib.sha256(f'{tuple(data.shape)} {data.dtype}'.encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def lq_names(dataset: Dataset) -> list[str]:
    """The name of every item's LQ image, in item order, without reading an image: the dataset's ``lq_names()``
    (difflid's datasets), or basicsr's ``paths`` records relative to its ``lq_folder`` (PairedImageDataset and its
    subclasses, folder or LMDB keys). OptionError for a dataset that offers neither."""
    if callable(getattr(dataset, 'lq_names', None)):
        return list(dataset.lq_names())
    paths = getattr(dataset, 'paths', None)
    if isinstance(paths, list) and all(isinstance(p, dict) and 'lq_path' in p for p in paths):
        folder = getattr(dataset, 'lq_folder', None)
        names = []
        for record in paths:
            path = Path(record['lq_path'])
            try:
                names.append(path.relative_to(folder).as_posix() if folder else path.as_posix())
            except ValueError:
                names.append(path.as_posix())
        return names
    raise OptionError(f'{type(dataset).__name__} cannot list its LQ images (neither lq_names() nor basicsr\'s paths), '
                      'so its prior features cannot be precomputed; use train.prior_features: online')


class PrecomputedPriorDataset(Dataset):
    """``dataset``'s pairs with the stored features of their LQ images (see the module docstring).

    Args:
        dataset: A paired dataset built for whole images (its ``phase`` not 'train').
        store: The feature store of this dataset and prior.
        crop: Training crop size (``gt_size``), or None for whole images (validation).
        use_hflip: Flip left-right with probability 1/2 (training).
        draws: Pick one of the first ``draws`` noise draws at random (1 for validation).
        name: The dataset's name in messages.
    """

    def __init__(self, dataset: Dataset, store: FeatureStore, crop: int | None = None, use_hflip: bool = False,
                 draws: int = 1, name: str = 'dataset') -> None:
        meta = store.manifest()['meta']
        self.dataset, self.store, self.name = dataset, store, name
        self.stride, self.channels = int(meta['stride']), int(meta['channels'])
        self.dtype = meta['dtype']
        self.crop, self.use_hflip, self.draws = crop, use_hflip, int(draws)
        self.opt = getattr(dataset, 'opt', None)
        if crop is not None and crop % self.stride:
            raise OptionError(f'datasets.{name}.gt_size: {crop} is not a multiple of the prior\'s stride '
                              f'{self.stride}; precomputed features need crops on the stride\'s grid')
        orientations = (0, 1) if use_hflip else (0,)
        index = store.index()
        self.names = lq_names(dataset)
        missing = [n for n in self.names if n not in index or not index[n].covers(orientations, self.draws)]
        if missing:
            shown = ', '.join(missing[:_LISTED]) + (f', ... ({len(missing)} in all)' if len(missing) > _LISTED else '')
            raise OptionError(f'datasets.{name}: {len(missing)} of {len(self.names)} images have no precomputed prior '
                              f'features for {len(orientations)} orientation(s) and {self.draws} draw(s) in '
                              f'{store.root}: {shown}')
        self.digests = [index[n].digest for n in self.names]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        lq, gt = item['lq'], item['gt']
        if self.digests[index] != pixels_digest(lq):
            raise OSError(f'datasets.{self.name}: {item.get("lq_path", self.names[index])} changed since its prior '
                          f'features were computed (store {self.store.root}); run tools/precompute_prior.py again')
        if lq.shape != gt.shape:
            raise ValueError(f'datasets.{self.name}: {item.get("lq_path")} is {lq.shape[2]}x{lq.shape[1]} but its GT '
                             f'{item.get("gt_path")} is {gt.shape[2]}x{gt.shape[1]}')
        orientation = int(self.use_hflip and random.random() < 0.5)
        if orientation:
            lq, gt = lq.flip(-1), gt.flip(-1)
        rows = cols = slice(None)
        if self.crop is not None:
            height, width = lq.shape[-2:]
            if height < self.crop or width < self.crop:
                raise ValueError(f'datasets.{self.name}: {item.get("lq_path")} ({width}x{height}) is smaller than '
                                 f'gt_size {self.crop}')
            s = self.stride
            top = s * random.randrange((height - self.crop) // s + 1)
            left = s * random.randrange((width - self.crop) // s + 1)
            lq = lq[:, top:top + self.crop, left:left + self.crop]
            gt = gt[:, top:top + self.crop, left:left + self.crop]
            rows, cols = slice(top // s, (top + self.crop) // s), slice(left // s, (left + self.crop) // s)
        draw = random.randrange(self.draws)
        features = decode_entry(self.store.read(self.digests[index], orientation, draw, rows, cols), self.dtype)
        item.update(lq=lq.contiguous(), gt=gt.contiguous(), f_cim=features[0].contiguous(),
                    f_hae=features[1].contiguous())
        return item
