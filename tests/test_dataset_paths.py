"""Relative dataset paths are found like prior checkpoints: working directory first, then the project root
(difflid.utils.paths.locate_dataset_paths); one found nowhere is one error naming the option and the places tried."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from basicsr.data import build_dataset

from difflid.data.synthetic_haze_dataset import SyntheticHazeDataset
from difflid.utils.errors import OptionError, format_user_error
from difflid.utils.paths import locate_dataset_paths


def _pairs(root: Path) -> None:
    """A prepared folder as datasets_prep/prepare.py writes it: lq/, gt/ and a pair list."""
    for side in ('lq', 'gt'):
        (root / side).mkdir(parents=True)
        cv2.imwrite(str(root / side / 'a.png'), np.full((8, 8, 3), 100 if side == 'lq' else 200, np.uint8))
    (root / 'test.txt').write_text('lq/a.png gt/a.png\n')


def _options(dataroot: str = 'datasets/Set', meta: str = 'datasets/Set/test.txt') -> dict:
    return {'datasets': {'val': {'name': 'Set', 'type': 'PairListDataset', 'phase': 'val', 'dataroot': dataroot,
                                 'meta_info_file': meta, 'io_backend': {'type': 'disk'}}}}


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """(working directory, project root): separate folders, the working directory current."""
    cwd, project = tmp_path / 'elsewhere', tmp_path / 'project'
    cwd.mkdir()
    project.mkdir()
    monkeypatch.chdir(cwd)
    return cwd, project


def test_a_path_missing_from_the_working_directory_is_found_under_the_project_root(dirs):
    cwd, project = dirs
    _pairs(project / 'datasets' / 'Set')
    opt = _options()
    with pytest.raises(FileNotFoundError):  # what basicsr does with the path as written
        build_dataset(dict(opt['datasets']['val']))
    lines = locate_dataset_paths(opt, [Path.cwd(), project])
    block = opt['datasets']['val']
    assert block['dataroot'] == str(project / 'datasets' / 'Set')
    assert block['meta_info_file'] == str(project / 'datasets' / 'Set' / 'test.txt')
    assert block['io_backend'] == {'type': 'disk'} and block['name'] == 'Set'  # no path: untouched
    assert any('datasets.val.dataroot' in line and str(project / 'datasets' / 'Set') in line for line in lines)
    sample = build_dataset(block)[0]
    assert sample['gt_path'] == str(project / 'datasets' / 'Set' / 'gt' / 'a.png')
    assert abs(float(sample['gt'].mean()) - 200 / 255) < 1e-6


def test_the_working_directory_comes_first_and_absolute_paths_are_kept(dirs):
    cwd, project = dirs
    _pairs(cwd / 'datasets' / 'Set')
    _pairs(project / 'datasets' / 'Set')
    _pairs(project / 'Other')
    opt = _options(meta=str(project / 'Other' / 'test.txt'))
    locate_dataset_paths(opt, [Path.cwd(), project])
    assert opt['datasets']['val']['dataroot'] == str(cwd / 'datasets' / 'Set')
    assert opt['datasets']['val']['meta_info_file'] == str(project / 'Other' / 'test.txt')


def test_a_path_found_nowhere_names_the_option_and_every_place_tried(dirs):
    cwd, project = dirs
    _pairs(project / 'datasets' / 'Set')
    opt = _options(dataroot='datasets/Typo')
    opt['datasets']['train'] = {**_options()['datasets']['val'], 'meta_info_file': '/nowhere/train.txt'}
    with pytest.raises(OptionError) as info:
        locate_dataset_paths(opt, [Path.cwd(), project])
    message = format_user_error(info.value).splitlines()
    assert message[0] == ('error: 2 dataset paths not found: datasets.val.dataroot, '
                          'datasets.train.meta_info_file')
    assert message[1].startswith('prepare the dataset (docs/datasets.md)')  # first: a long list is cut short
    assert str(cwd / 'datasets' / 'Typo') in message[2] and str(project / 'datasets' / 'Typo') in message[2]
    assert message[2].startswith('datasets.val.dataroot') and '/nowhere/train.txt' in message[3]
    one = _options(dataroot='datasets/Typo')
    with pytest.raises(OptionError, match=r"^datasets.val.dataroot: 'datasets/Typo' not found"):
        locate_dataset_paths(one, [Path.cwd(), project])


def test_a_folder_the_dataset_writes_itself_is_no_missing_input(dirs, monkeypatch):
    cwd, project = dirs
    monkeypatch.setattr(SyntheticHazeDataset, 'GENERATED_PATH_KEYS', ('dataroot',), raising=False)
    opt = {'datasets': {'train': {'name': 'haze', 'type': 'SyntheticHazeDataset', 'dataroot': 'datasets/haze',
                                  'source': 'bundled'}}}
    lines = locate_dataset_paths(opt, [Path.cwd(), project])
    assert opt['datasets']['train']['dataroot'] == 'datasets/haze'  # written where basicsr would write it
    assert lines == [f'datasets.train.dataroot: datasets/haze does not exist yet; the dataset writes its data to '
                     f'{cwd / "datasets" / "haze"}']
    (project / 'datasets' / 'haze').mkdir(parents=True)  # generated before, from the project folder: reused
    locate_dataset_paths(opt, [Path.cwd(), project])
    assert opt['datasets']['train']['dataroot'] == str(project / 'datasets' / 'haze')


def test_the_members_of_a_mix_are_found_like_any_dataset(dirs):
    """A MixedTaskDataset's member blocks hold their own paths: found under the project root as a set's are, and a
    missing one named by its place in the list."""
    cwd, project = dirs
    _pairs(project / 'datasets' / 'Set')
    member = _options()['datasets']['val']
    opt = {'datasets': {'train': {'name': 'mix', 'type': 'MixedTaskDataset', 'members': [
        {**member, 'task': 'a'}, {**member, 'task': 'b', 'dataroot': 'datasets/Nowhere'}]}}}
    with pytest.raises(OptionError, match=r"datasets\.train\.members\[1\]\.dataroot: 'datasets/Nowhere' not found"):
        locate_dataset_paths(opt, [Path.cwd(), project])
    del opt['datasets']['train']['members'][1]
    locate_dataset_paths(opt, [Path.cwd(), project])
    assert opt['datasets']['train']['members'][0]['dataroot'] == str(project / 'datasets' / 'Set')
