"""Test: python tools/test.py -opt options/<task>.yml   (writes results/<name>/)

A training option file works too: its validation sets are tested with the run's latest weights.
"""
import sys
from pathlib import Path

import difflid  # noqa: F401  registers difflid's archs, datasets, losses, metrics and models

# isort: split
from basicsr.test import test_pipeline

from difflid.entry import OptionError, patched_basicsr
from difflid.utils.options import prepare_argv

ROOT = Path(__file__).resolve().parents[1]

if __name__ == '__main__':
    try:
        sys.argv = prepare_argv(sys.argv, root=ROOT)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    try:
        with patched_basicsr():
            test_pipeline(str(ROOT))
    except OptionError as err:
        sys.exit(f'error: {err}')
