"""difflid is imported first so that test modules may import basicsr freely (compat shim)."""
import socket
from pathlib import Path

import difflid  # noqa: F401  patches basicsr before any test imports it

# isort: split
import cv2
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption('--slow', action='store_true', help='also run tests marked slow (end-to-end runs)')


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: end-to-end runs of tens of seconds; run with --slow')


def pytest_collection_modifyitems(config, items):
    if config.getoption('--slow'):
        return
    skip = pytest.mark.skip(reason='slow: run with --slow')
    for item in items:
        if 'slow' in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def write_pairs(root: Path, count: int, size: tuple[int, int] = (40, 48), seed: int = 0) -> tuple[Path, Path]:
    """Write ``count`` PNG pairs root/gt/NNN.png and root/lq/NNN.png (lq = a hazy-looking blend of gt)."""
    rng = np.random.default_rng(seed)
    gt_dir, lq_dir = root / 'gt', root / 'lq'
    gt_dir.mkdir(parents=True)
    lq_dir.mkdir(parents=True)
    for i in range(count):
        gt = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        lq = (0.6 * gt + 0.4 * 220).astype(np.uint8)
        cv2.imwrite(str(gt_dir / f'{i:03d}.png'), gt)
        cv2.imwrite(str(lq_dir / f'{i:03d}.png'), lq)
    return gt_dir, lq_dir
