import pytest
import yaml

from difflid.utils.options import prepare_argv, resolve_option_file

BASE = """
model_type: SRModel
scale: 1
train:
  total_iter: 100
  optim_g: {type: Adam, lr: !!float 2.0e-4, betas: [0.9, 0.99]}
  scheduler: {type: MultiStepLR, milestones: [50], gamma: 0.5}
val: {val_freq: 10}
"""
CHILD = """
_base_: _base_/common.yml
name: child
train:
  total_iter: 3
  optim_g: {lr: !!float 1.0e-3}
"""


def _write_child(tmp_path):
    (tmp_path / '_base_').mkdir()
    (tmp_path / '_base_' / 'common.yml').write_text(BASE)
    child = tmp_path / 'child.yml'
    child.write_text(CHILD)
    return child


def test_base_is_merged_into_a_file_of_the_same_name(tmp_path):
    resolved = resolve_option_file(_write_child(tmp_path))
    assert resolved.name == 'child.yml' and resolved.parent != tmp_path
    opt = yaml.safe_load(resolved.read_text())
    assert '_base_' not in opt
    assert opt['name'] == 'child' and opt['model_type'] == 'SRModel' and opt['val'] == {'val_freq': 10}
    assert opt['train']['total_iter'] == 3 and opt['train']['scheduler']['milestones'] == [50]
    assert opt['train']['optim_g'] == {'type': 'Adam', 'lr': 1.0e-3, 'betas': [0.9, 0.99]}


def test_file_without_base_is_used_as_is(tmp_path):
    plain = tmp_path / 'plain.yml'
    plain.write_text(BASE)
    assert resolve_option_file(plain) == plain


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.yml'):
        resolve_option_file(tmp_path / 'nope.yml')
    child = tmp_path / 'child.yml'
    child.write_text(CHILD)
    with pytest.raises(FileNotFoundError, match='common.yml'):
        resolve_option_file(child)


def test_argv_is_prepared_for_basicsr(tmp_path):
    child = _write_child(tmp_path)
    argv = prepare_argv(['train.py', '-opt', str(child), '--local-rank=1', '--launcher', 'pytorch'])
    assert argv[0] == 'train.py' and argv[2] != str(child) and argv[2].endswith('child.yml')
    assert argv[3:] == ['--local_rank=1', '--launcher', 'pytorch']
