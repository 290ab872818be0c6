"""Test: python tools/test.py -opt options/<task>.yml   (writes results/<name>/)

A training option file works too: its validation sets are tested with the run's latest weights.
"""
import sys
from pathlib import Path

import difflid  # noqa: F401  registers difflid and patches basicsr

# isort: split
from basicsr.test import test_pipeline

from difflid.utils.options import prepare_argv

ROOT = Path(__file__).resolve().parents[1]

if __name__ == '__main__':
    try:
        sys.argv = prepare_argv(sys.argv, root=ROOT)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    test_pipeline(str(ROOT))
