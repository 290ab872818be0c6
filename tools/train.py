"""Train: python tools/train.py -opt options/<task>.yml [--auto_resume] [--check] [--force_yml k:k=v]

Several GPUs: torchrun --nproc_per_node=N tools/train.py -opt X.yml --launcher pytorch (one process per GPU;
NCCL on GPUs, gloo on the CPU). ``datasets.train.total_batch_size`` is split over the N processes. Ctrl-C or
SIGTERM saves a checkpoint after the current iteration; ``--auto_resume`` continues exactly where it stopped.
"""
from pathlib import Path

import difflid  # noqa: F401  registers difflid's archs, datasets, losses, metrics and models

# isort: split
from difflid.entry import main, train

if __name__ == '__main__':
    main(train, Path(__file__).resolve().parents[1])
