"""Training order and augmentation randomness that a resumed run can reproduce exactly.

basicsr's ``EnlargedSampler`` shuffles by epoch, and its ``worker_init_fn`` seeds each loader worker once, with the
same seed every epoch: the augmentations then depend on which worker drew a sample (so on ``num_worker_per_gpu``),
repeat from one epoch to the next, and a run resumed mid-epoch can neither skip the batches already done nor
draw what the uninterrupted run drew. Here the sampler starts anywhere in an epoch's permutation and hands each
sample its (epoch, position) with its index, and the dataset wrapper seeds ``random``, NumPy and torch from
(seed, epoch, position) around the wrapped ``__getitem__``, then puts the process's own random states back.
The augmentations are then a function of those numbers alone: the same for any number of workers, different
between epochs, and data loading never moves the training process's random streams.
"""
import random
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from basicsr.data.data_sampler import EnlargedSampler
from torch.utils.data import Dataset

__all__ = ['ResumableSampler', 'SeededDataset', 'ignore_stop_signals', 'preserved_random_state', 'sample_seeds']


class ResumableSampler(EnlargedSampler):
    """basicsr's ``EnlargedSampler`` (same permutation per epoch, same split over the processes) that can start at
    any sample of the epoch and yields ``(epoch, position, index)``: ``position`` is the sample's place in the epoch's
    permutation before the split over processes, so it is unique across processes."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, ratio: int = 1,
                 order: Callable[[int, int], list[int]] | None = None) -> None:
        """``order(epoch, total_size)``: the epoch's sample indices, for a dataset that orders its own epochs (a mix
        of datasets: ``MixedTaskDataset.epoch_order``); default basicsr's shuffle of ``ratio`` copies."""
        super().__init__(dataset, num_replicas, rank, ratio)
        self.start = 0
        self.order = order

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch ``epoch``'s permutation, from this process's ``start``-th sample (0: the whole epoch)."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f'start {start} is outside an epoch of {self.num_samples} samples per process')
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        if self.order is None:
            indices = list(super().__iter__())
        else:
            indices = self.order(self.epoch, self.total_size)[self.rank:self.total_size:self.num_replicas]
        for i in range(self.start, len(indices)):
            yield self.epoch, self.rank + i * self.num_replicas, indices[i]

    def __len__(self) -> int:
        return self.num_samples - self.start


def sample_seeds(seed: int, epoch: int, position: int) -> tuple[int, np.ndarray, int]:
    """Seeds for Python's ``random``, NumPy's legacy global generator and torch's CPU generator, drawn from one
    ``SeedSequence`` of (seed, epoch, position): independent streams for every sample of every epoch."""
    words = np.random.SeedSequence([seed, epoch, position]).generate_state(6, dtype=np.uint32)
    return int(words[0]) << 32 | int(words[1]), words[2:4], int(words[4]) << 31 | int(words[5]) >> 1


@contextmanager
def preserved_random_state() -> Iterator[None]:
    """Whatever runs inside leaves Python's, NumPy's and torch's CPU random states as they were."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class SeededDataset(Dataset):
    """``dataset`` whose items, requested as ``(epoch, position, index)`` by ``ResumableSampler``, are drawn with
    ``random``/NumPy/torch seeded by (``seed``, epoch, position); the caller's random states are kept."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.opt = getattr(dataset, 'opt', None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        epoch, position, index = key
        py_seed, np_seed, torch_seed = sample_seeds(self.seed, epoch, position)
        with preserved_random_state():
            random.seed(py_seed)
            np.random.seed(np_seed)
            torch.default_generator.manual_seed(torch_seed)  # CPU only: torch.manual_seed would reseed the GPUs
            return self.dataset[index]


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGINT/SIGTERM to the training process: Ctrl-C (and a scheduler's SIGTERM) reach the
    whole process group, and a worker that died of them would break the checkpoint the main process then writes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
