import pytest
import yaml

from difflid.entry import OptionError, create_train_val_loaders, translate_options
from difflid.utils.options import prepare_argv, resolve_option_file
from tests.conftest import REPO_ROOT

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


def _parsed(train_set, dist=False, world_size=1, num_gpu=0, model_type='DiffLI2DModel', is_train=True):
    """Options as basicsr's parse_options leaves them, before difflid's translation."""
    return {'datasets': {'train': dict(train_set)}, 'dist': dist, 'world_size': world_size, 'num_gpu': num_gpu,
            'model_type': model_type, 'is_train': is_train}


@pytest.mark.parametrize('dist, world_size, num_gpu, model_type, per_gpu', [
    (False, 1, 0, 'DiffLI2DModel', 40),  # CPU
    (False, 1, 1, 'DiffLI2DModel', 40),
    (True, 4, 4, 'DiffLI2DModel', 10),   # torchrun --nproc_per_node=4
    (True, 2, 0, 'DiffLI2DModel', 20),   # two gloo processes
    (False, 1, 2, 'SRModel', 20),        # a basicsr model under DataParallel, which multiplies by num_gpu again
])
def test_total_batch_size_is_split_over_the_processes(dist, world_size, num_gpu, model_type, per_gpu):
    opt = translate_options(_parsed({'total_batch_size': 40}, dist, world_size, num_gpu, model_type))
    assert opt['datasets']['train']['batch_size_per_gpu'] == per_gpu


def test_batch_options_that_cannot_run_are_named():
    with pytest.raises(OptionError, match=r'total_batch_size: 40 does not split evenly over 3 processes'):
        translate_options(_parsed({'total_batch_size': 40}, dist=True, world_size=3))
    with pytest.raises(OptionError, match='both total_batch_size and batch_size_per_gpu'):
        translate_options(_parsed({'total_batch_size': 40, 'batch_size_per_gpu': 20}))
    with pytest.raises(OptionError, match=r'DiffLI2DModel does not train with DataParallel.*nproc_per_node=2'):
        translate_options(_parsed({'total_batch_size': 40}, num_gpu=2))
    assert translate_options(_parsed({'batch_size_per_gpu': 8}))['datasets']['train'] == {'batch_size_per_gpu': 8}
    translate_options(_parsed({'total_batch_size': 40}, num_gpu=2, is_train=False))  # testing: one GPU, no error


def test_cuda_prefetch_falls_back_to_the_plain_loader_without_a_gpu():
    with pytest.warns(UserWarning, match='prefetch_mode cuda needs a GPU'):
        cpu = translate_options(_parsed({'batch_size_per_gpu': 8, 'prefetch_mode': 'cuda'}))
    assert cpu['datasets']['train']['prefetch_mode'] is None
    gpu = translate_options(_parsed({'batch_size_per_gpu': 8, 'prefetch_mode': 'cuda'}, num_gpu=1))
    assert gpu['datasets']['train']['prefetch_mode'] == 'cuda'
    no_workers = translate_options(_parsed({'batch_size_per_gpu': 8, 'num_worker_per_gpu': 0,
                                            'persistent_workers': True}))
    assert no_workers['datasets']['train']['persistent_workers'] is False  # DataLoader refuses it without workers
    recipe = yaml.safe_load((REPO_ROOT / 'options' / 'dehaze_its.yml').read_text())['datasets']['train']
    assert recipe['prefetch_mode'] == 'cuda' and recipe['pin_memory'] is True  # the paper recipe feeds a GPU


def _loader_opt(tmp_path, pairs, batch, total_iter):
    (tmp_path / 'pairs.txt').write_text('lq/a.png gt/a.png\n' * pairs)  # never read: only lengths matter here
    train = {'name': 'stand_in', 'type': 'PairListDataset', 'dataroot': str(tmp_path), 'phase': 'train', 'scale': 1,
             'meta_info_file': str(tmp_path / 'pairs.txt'), 'io_backend': {'type': 'disk'}, 'gt_size': 8,
             'num_worker_per_gpu': 0, 'batch_size_per_gpu': batch, 'dataset_enlarge_ratio': 1}
    return {'datasets': {'train': train}, 'dist': False, 'world_size': 1, 'rank': 0, 'num_gpu': 0, 'manual_seed': 0,
            'train': {'total_iter': total_iter}}


def test_the_epoch_count_covers_total_iter_with_drop_last(tmp_path):
    from basicsr.utils import get_root_logger

    data = create_train_val_loaders(_loader_opt(tmp_path, pairs=5, batch=2, total_iter=12), get_root_logger())
    assert len(data.loader) == data.per_epoch == 2  # 5 pairs at batch 2: the loader drops the fifth (1.4.2 counts 3)
    assert data.total_epochs == 6  # 6 epochs of 2 iterations give the 12; basicsr's count of 3 gave 4 epochs
    with pytest.raises(OptionError, match='fewer than the batch'):
        create_train_val_loaders(_loader_opt(tmp_path, pairs=1, batch=2, total_iter=4), get_root_logger())
