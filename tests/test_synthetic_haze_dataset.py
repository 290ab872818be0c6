import cv2
import numpy as np
import pytest
from basicsr.data import build_dataset

from difflid.data.bundled_photos import bundled_photo
from difflid.data.synthetic_haze_dataset import make_haze_pairs


def _opt(root, **extra):
    return {'name': 'syn', 'type': 'SyntheticHazeDataset', 'dataroot': str(root), 'phase': 'train', 'scale': 1,
            'io_backend': {'type': 'disk'}, 'gt_size': 32, 'use_hflip': True, 'use_rot': False, **extra}


def test_pairs_are_generated_once_and_read_like_paired_images(tmp_path):
    root = tmp_path / 'syn'
    dataset = build_dataset(_opt(root, source='skimage', images=['coffee', 'chelsea'], hazy_per_image=3,
                                 max_side=96))
    assert len(dataset) == 6 and sorted(p.name for p in (root / 'lq').iterdir())[0] == 'chelsea_0.png'
    gt = cv2.imread(str(root / 'gt' / 'coffee_2.png'))
    hazy = cv2.imread(str(root / 'lq' / 'coffee_2.png'))
    assert gt.shape == hazy.shape == (64, 96, 3)
    assert hazy.astype(float).mean() > gt.astype(float).mean()  # haze brightens towards the airlight
    item = dataset[0]
    assert item['lq'].shape == item['gt'].shape == (3, 32, 32)
    stamp = (root / 'lq' / 'coffee_2.png').stat().st_mtime_ns
    build_dataset(_opt(root, source='skimage', images=['coffee', 'chelsea'], hazy_per_image=3, max_side=96))
    assert (root / 'lq' / 'coffee_2.png').stat().st_mtime_ns == stamp  # reused, not rewritten


def test_a_folder_of_your_own_clear_images(tmp_path):
    clear = tmp_path / 'clear'
    clear.mkdir()
    for name in ('a', 'b'):
        cv2.imwrite(str(clear / f'{name}.png'), np.full((40, 50, 3), 60, np.uint8))
    dataset = build_dataset(_opt(tmp_path / 'out', source=str(clear), hazy_per_image=2))
    assert len(dataset) == 4
    with pytest.raises(FileNotFoundError, match='no clear images'):
        build_dataset(_opt(tmp_path / 'none', source=str(tmp_path / 'missing')))


def test_bad_input_leaves_nothing_behind(tmp_path):
    with pytest.raises(ValueError, match="'gray'"):
        make_haze_pairs({'ok': np.zeros((8, 8, 3), np.uint8), 'gray': np.zeros((8, 8), np.uint8)}, tmp_path / 'out')
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match='no bundled photo named'):
        bundled_photo('unicorn')
    with pytest.raises(KeyError, match='images'):
        build_dataset(_opt(tmp_path / 'x', source='skimage'))
