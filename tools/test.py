"""Test: python tools/test.py -opt options/<task>.yml [--check]   (writes results/<name>/)

A training option file works too: its validation sets are tested with the run's latest weights.
"""
from pathlib import Path

import difflid  # noqa: F401  registers difflid's archs, datasets, losses, metrics and models

# isort: split
from difflid.entry import main, test

if __name__ == '__main__':
    main(test, Path(__file__).resolve().parents[1])
