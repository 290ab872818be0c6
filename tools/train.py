"""Train: python tools/train.py -opt options/<task>.yml [--auto_resume] [--launcher pytorch] [--force_yml k:k=v]

Several GPUs: torchrun --nproc_per_node=N tools/train.py -opt X.yml --launcher pytorch (one process per GPU;
NCCL on GPUs, gloo on the CPU). ``datasets.train.total_batch_size`` is split over the N processes.
"""
import sys
from pathlib import Path

import difflid  # noqa: F401  registers difflid's archs, datasets, losses, metrics and models

# isort: split
from basicsr.train import train_pipeline

from difflid.entry import OptionError, patched_basicsr
from difflid.utils.options import prepare_argv

if __name__ == '__main__':
    try:
        sys.argv = prepare_argv(sys.argv)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    try:
        with patched_basicsr():
            train_pipeline(str(Path(__file__).resolve().parents[1]))
    except OptionError as err:
        sys.exit(f'error: {err}')
