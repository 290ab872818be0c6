"""MixedTaskDataset: one training set made of several datasets, each tagged with its task (all-in-one restoration).

The all-in-one protocols train one network on denoising, deraining, dehazing (and more) at once. Each member is a
full dataset block (its own type, folders, crop and flips) plus ``task`` and either ``enlarge_ratio`` or ``weight``:

- ``mixing: ratios`` (default): an epoch is every member's images ``enlarge_ratio`` times (PromptIR's balancing,
  e.g. Rain100L's 200 pairs x 120 beside OTS's 72,135), all shuffled together;
- ``mixing: weights``: an epoch is ``epoch_length`` samples (default: the members' total size), of which member k
  gets ``weight_k / sum(weights)`` (largest remainders, so the counts are exact and sum to the length); its images are
  drawn without replacement, walking through a seeded permutation that continues across epochs, so every image of
  a member comes before any comes twice.

Either way an epoch's list of (member, image) is shuffled as one, so every batch mixes tasks, and it is a function of
(seed, epoch) alone: ``epoch_order`` gives it to ``ResumableSampler``, which starts anywhere in it, so a resumed run
continues the same list exactly. Items are the members' ``lq``/``gt``/``lq_path``/``gt_path`` and ``task``.
"""
import hashlib
import math
from collections.abc import Sequence

import numpy as np
from basicsr.data import build_dataset
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils.data import Dataset

from difflid.utils.option_schema import INT, NUM, STR, DatasetKeys, dataset_keys

__all__ = ['MixedTaskDataset', 'member_counts']

MIXING_MODES = ('ratios', 'weights')
_MEMBER_KEYS = ('enlarge_ratio', 'weight')  # the mix's keys in a member block; the rest is the member's own
_ITEM_KEYS = ('lq', 'gt', 'lq_path', 'gt_path')


def member_counts(weights: Sequence[float], length: int) -> list[int]:
    """Samples per member in an epoch of ``length``: proportional to ``weights``, rounded by largest remainders (ties
    to the earlier member), so they sum to ``length`` exactly."""
    total = float(sum(weights))
    shares = [w / total * length for w in weights]
    counts = [math.floor(s) for s in shares]
    order = sorted(range(len(shares)), key=lambda k: (-(shares[k] - counts[k]), k))
    for k in order[:length - sum(counts)]:
        counts[k] += 1
    return counts


def _member_seed(seed: int, member: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, 0x6D69, member])  # 0x6D69: 'mi', apart from the sampler's streams


@DATASET_REGISTRY.register()
class MixedTaskDataset(Dataset):
    """Several task-tagged datasets sampled as one training set (see the module docstring).

    Options:
        members: A list of dataset blocks, each with ``task`` (its label) and ``enlarge_ratio`` (ratios) or
            ``weight`` (weights). ``phase`` is the mixed set's.
        mixing: 'ratios' (default) or 'weights'.
        epoch_length: Samples per epoch with weights (default: the members' total size).
        seed: Seed of the weighted members' image order (default 0).
    """

    OPTION_KEYS = DatasetKeys({'members': {'type': 'array', 'minItems': 1, 'items': {'type': 'object'}},
                               'mixing': {'enum': list(MIXING_MODES)}, 'epoch_length': INT, 'seed': INT},
                              required=('members',), member_blocks='members')
    MEMBER_KEYS = {'task': STR, 'enlarge_ratio': INT, 'weight': NUM}  # what a member block adds to its type's keys
    precomputed_refusal = ('mixes several datasets; precompute_prior.py writes one store per dataset and does not '
                           'combine them')

    def __init__(self, opt: dict) -> None:
        super().__init__()
        self.opt = opt
        name = opt.get('name', 'MixedTaskDataset')
        self.mixing = opt.get('mixing', 'ratios')
        if self.mixing not in MIXING_MODES:
            raise ValueError(f'dataset {name}: mixing must be one of {list(MIXING_MODES)}, got {self.mixing!r}')
        blocks = opt.get('members') or []
        if not blocks:
            raise KeyError(f'dataset {name}: members is empty; list the datasets to mix')
        other = 'weight' if self.mixing == 'ratios' else 'enlarge_ratio'
        self.members, self.tasks, self.shares = [], [], []
        for index, block in enumerate(blocks):
            where = f'dataset {name}: members[{index}]'
            if other in block:
                raise KeyError(f'{where}: {other} belongs to mixing: {"weights" if other == "weight" else "ratios"}; '
                               f'with mixing: {self.mixing} give {"enlarge_ratio" if other == "weight" else "weight"}')
            if not block.get('task'):
                raise KeyError(f'{where}: every member needs a task (its label in reports, e.g. derain)')
            share = block.get('enlarge_ratio', 1) if self.mixing == 'ratios' else block.get('weight')
            if share is None or isinstance(share, bool) or not share > 0 or (
                    self.mixing == 'ratios' and int(share) != share):
                key, kind = ('enlarge_ratio', 'integer') if self.mixing == 'ratios' else ('weight', 'number')
                raise ValueError(f'{where}: {key} must be a positive {kind}, got {share!r}')
            member_opt = {k: v for k, v in block.items() if k not in _MEMBER_KEYS}
            member_opt.setdefault('name', f"{name}/{block['task']}")
            member_opt['phase'] = opt.get('phase', 'train')
            cls = DATASET_REGISTRY.get(member_opt['type'])
            declared = dataset_keys(cls) if cls is not None else None
            if declared is None or 'task' not in declared.properties:
                member_opt.pop('task')  # the mix labels this member's items itself
            member = build_dataset(member_opt)
            if len(member) == 0:
                raise ValueError(f'{where} ({member_opt["name"]}) holds no images')
            self.members.append(member)
            self.tasks.append(str(block['task']))
            self.shares.append(share)
        self.offsets = np.cumsum([0] + [len(m) for m in self.members])
        self.seed = int(opt.get('seed', 0))
        if self.mixing == 'ratios':
            self.counts = [len(m) * int(r) for m, r in zip(self.members, self.shares, strict=True)]
        else:
            length = int(opt.get('epoch_length') or self.offsets[-1])
            if length <= 0:
                raise ValueError(f'dataset {name}: epoch_length must be positive, got {length}')
            self.counts = member_counts(self.shares, length)

    def __len__(self) -> int:
        """Samples per epoch (before ``dataset_enlarge_ratio``), not the number of distinct images."""
        return int(sum(self.counts))

    def epoch_order(self, epoch: int, length: int, seed: int) -> list[int]:
        """The epoch's ``length`` sample indices (into the members' concatenation), shuffled as one list: a function
        of (``seed``, ``epoch``) alone. ``length`` beyond one epoch (``dataset_enlarge_ratio``, the padding to a
        multiple of the processes) continues with the next pass's draws."""
        per_pass = len(self)
        passes = -(-length // per_pass)
        chosen = np.concatenate([self._pass_indices(epoch * passes + p) for p in range(passes)])[:length]
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x6F72, epoch]))  # 0x6f72: 'or'
        return rng.permutation(chosen).tolist()

    def _pass_indices(self, pass_number: int) -> np.ndarray:
        parts = []
        for k, (member, count) in enumerate(zip(self.members, self.counts, strict=True)):
            size = len(member)
            if self.mixing == 'ratios':
                local = np.tile(np.arange(size), count // size)
            else:  # continue member k's walk through its seeded permutations at draw pass_number * count
                start = pass_number * count
                local = np.concatenate([self._cycle(k, c)[lo:hi] for c, lo, hi in _windows(start, count, size)]) \
                    if count else np.zeros(0, dtype=np.int64)
            parts.append(local + self.offsets[k])
        return np.concatenate(parts).astype(np.int64)

    def _cycle(self, member: int, cycle: int) -> np.ndarray:
        """Member ``member``'s image order in its ``cycle``-th pass through all its images."""
        words = np.frombuffer(hashlib.sha256(f'{member}/{cycle}'.encode()).digest()[:8], dtype=np.uint32)
        rng = np.random.default_rng([*_member_seed(self.seed, member).generate_state(2), *(int(w) for w in words)])
        return rng.permutation(len(self.members[member]))

    def member_of(self, index: int) -> tuple[int, int]:
        """(member, index within it) of a global index."""
        member = int(np.searchsorted(self.offsets, index, side='right') - 1)
        if not 0 <= member < len(self.members):
            raise IndexError(f'index {index} is outside the {int(self.offsets[-1])} images of the mix')
        return member, int(index - self.offsets[member])

    def __getitem__(self, index: int) -> dict:
        member, local = self.member_of(index)
        item = self.members[member][local]
        out = {k: item[k] for k in _ITEM_KEYS}
        out['task'] = self.tasks[member]
        return out


def _windows(start: int, count: int, size: int) -> list[tuple[int, int, int]]:
    """(cycle, lo, hi) slices covering draws [start, start + count) of a walk through cycles of ``size`` images."""
    out, position, end = [], start, start + count
    while position < end:
        cycle, offset = divmod(position, size)
        take = min(size - offset, end - position)
        out.append((cycle, offset, offset + take))
        position += take
    return out
