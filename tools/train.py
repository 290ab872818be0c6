"""Train: python tools/train.py -opt options/<task>.yml [--auto_resume] [--launcher pytorch] [--force_yml k:k=v]

Multi-process: torchrun --nproc_per_node=N tools/train.py -opt X.yml --launcher pytorch (NCCL on GPUs, gloo on CPU).
"""
import sys
from pathlib import Path

import difflid  # noqa: F401  registers difflid and patches basicsr

# isort: split
from basicsr.train import train_pipeline

from difflid.utils.options import prepare_argv

if __name__ == '__main__':
    try:
        sys.argv = prepare_argv(sys.argv)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    train_pipeline(str(Path(__file__).resolve().parents[1]))
