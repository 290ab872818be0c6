"""Test: python tools/test.py -opt options/<task>.yml   (writes results/<name>/)"""
import sys
from pathlib import Path

import difflid  # noqa: F401  registers difflid and patches basicsr

# isort: split
from basicsr.test import test_pipeline

from difflid.utils.options import prepare_argv

if __name__ == '__main__':
    sys.argv = prepare_argv(sys.argv)
    test_pipeline(str(Path(__file__).resolve().parents[1]))
