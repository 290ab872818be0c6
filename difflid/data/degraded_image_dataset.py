"""DegradedImageDataset: clean images degraded on the fly by a registered degradation (``difflid.data.degradations``).

For the sets that ship clean images only (the all-in-one protocols' BSD400/WED with Gaussian noise, or any synthetic
degradation of your photos). The clean side is ``CleanImageDataset``'s (a folder, an LMDB or the bundled photos;
training crops and flips, validation's seeded crop or whole image); the LQ is ``degradation`` applied to it:

- training: a new draw at every sample, from the sample's seeded random streams (``SeededDataset``: reproducible
  and resumable, different every epoch);
- validation and test: drawn from (``seed``, image name) alone (``Degradation.seeded``), so every run, method, batch
  position and loader worker sees the same degraded images, generated identically rather than written out.

Each item also carries ``task`` (the degradation's, or the option's) for per-task reports. The training LQ changes at
every draw, so its prior features cannot be precomputed (``precomputed_refusal``: refused at start-up with
``train.prior_features: precomputed``).
"""
import random

import numpy as np
import torch
from basicsr.utils.registry import DATASET_REGISTRY

from difflid.data.clean_image_dataset import CleanImageDataset
from difflid.data.degradations import build_degradation
from difflid.utils.option_schema import INT, STR

__all__ = ['DegradedImageDataset']


@DATASET_REGISTRY.register()
class DegradedImageDataset(CleanImageDataset):
    """``{'lq', 'gt', 'lq_path', 'gt_path', 'task'}`` from clean images and a degradation.

    Options (besides CleanImageDataset's):
        degradation: A degradation block, e.g. ``{type: GaussianNoise, sigmas: [15, 25, 50]}``.
        task: The label in reports (default: the degradation's ``task``).
        seed: Seed of the validation/test degradations (default 0).
    """

    OPTION_KEYS = CleanImageDataset.OPTION_KEYS.extended(
        {'degradation': {'type': 'object', 'required': ['type']}, 'task': STR, 'seed': INT}, required=('degradation',))
    EXTRA_KEYS = ('degradation', 'task', 'seed')
    # capability: why a training set of this class cannot have precomputed prior features (empty: it can)
    precomputed_refusal = ('degrades its images on the fly (a new LQ at every draw), so their prior features cannot '
                           'be precomputed')

    def __init__(self, opt: dict) -> None:
        if 'degradation' not in opt:
            raise KeyError(f"dataset {opt.get('name')}: DegradedImageDataset needs a degradation block, e.g. "
                           '{type: GaussianNoise, sigma: 25}')
        super().__init__(opt)
        self.degradation = build_degradation(dict(opt['degradation']))
        self.task = opt.get('task') or self.degradation.task
        self.seed = int(opt.get('seed', 0))

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        clean = item['gt'].permute(1, 2, 0).numpy()
        if self.opt.get('phase', 'train') == 'train':
            lq = self.degradation(clean, np.random.default_rng(random.getrandbits(64)))
        else:
            lq = self.degradation.seeded(clean, self.seed, str(item['gt_path']))
        item.update(lq=torch.from_numpy(np.ascontiguousarray(lq)).permute(2, 0, 1).contiguous(),
                    lq_path=f"{item['gt_path']} ({self.task})", task=self.task)
        return item
