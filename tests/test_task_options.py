"""Every task option file against miniature copies of its datasets, and a new task added by YAML alone."""
import re
import runpy
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml
from basicsr.archs import build_network
from basicsr.data import build_dataset
from basicsr.utils import get_root_logger

from difflid.entry import create_train_val_loaders, translate_options
from difflid.utils.options import prepare_argv, resolve_option_file, training_to_test_options
from tests.conftest import REPO_ROOT
from tests.miniature_datasets import LAYOUTS, degrade, signature_image, write

# prepared folder each option file reads -> the preparation command that writes it
PREPARED = {'ITS': 'its', 'SOTS_indoor': 'sots-indoor', 'Dense_Haze': 'dense-haze', 'NH_HAZE': 'nh-haze',
            'LOL_v1': 'lol-v1', 'LOL_v2_real': 'lol-v2-real', 'Rain13K': 'rain13k', 'Rain100H': 'rain-test'}
TASK_FILES = ['dehaze_its', 'test_sots_indoor', 'dehaze_dense_haze', 'test_dense_haze', 'dehaze_nh_haze',
              'test_nh_haze', 'lol_v1', 'lol_v2_real', 'derain_rain13k', 'test_rain100h']


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    """datasets/<name> prepared from miniature layouts, as prepare.py would write them for a user."""
    from difflid.data.prep import BENCHMARKS, prepare_dataset

    root = tmp_path_factory.mktemp('benchmarks')
    for folder, command in PREPARED.items():
        if command in ('dense-haze', 'nh-haze'):  # with 46-50, which the option files validate on
            for number in (1, 45, 46, 50, 51, 55):
                write(root / 'raw' / folder / f'{number:02d}_GT.png', signature_image(number % 20 + 1))
                write(root / 'raw' / folder / f'{number:02d}_hazy.png', degrade(signature_image(number % 20 + 1)))
        else:
            LAYOUTS[command][0](root / 'raw' / folder)
        layout, border, _ = BENCHMARKS[command]
        prepare_dataset(layout(root / 'raw' / folder), root / 'datasets' / folder, gt_border_crop=border)
    return root


def _relocate(value, root):
    return str(root / value) if isinstance(value, str) and value.startswith('datasets/') else value


@pytest.mark.parametrize('name', TASK_FILES)
def test_task_option_file_builds_its_datasets_and_network(prepared, name):
    opt = yaml.safe_load(resolve_option_file(REPO_ROOT / 'options' / f'{name}.yml').read_text())
    assert opt['model_type'] == 'DiffLI2DModel' and opt['network_prior']['unet'] == 'adm256_uncond'
    assert opt['network_prior']['checkpoint'] == 'pretrained/256x256_diffusion_uncond.pt'
    for phase, dataset_opt in opt['datasets'].items():
        dataset_opt = {k: _relocate(v, prepared) for k, v in dataset_opt.items()}
        if phase == 'train':
            assert dataset_opt['gt_size'] >= 128
            dataset_opt['gt_size'] = 16  # the miniature images are 48x32
        dataset = build_dataset({**dataset_opt, 'phase': phase.split('_')[0], 'scale': 1})
        sample = dataset[0]
        assert sample['lq'].shape[0] == 3
        if phase == 'train':
            assert sample['lq'].shape[1:] == (dataset_opt['gt_size'],) * 2
    y_channel = name in ('derain_rain13k', 'test_rain100h')
    pixel_metrics = [m for m in opt['val']['metrics'].values() if m['type'] in ('calculate_psnr', 'calculate_ssim')]
    assert len(pixel_metrics) == 2
    assert all(m['test_y_channel'] == y_channel and m['crop_border'] == 0 for m in pixel_metrics)
    net = build_network(dict(opt['network_g']))
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(8.63e6, rel=0.03)


def test_a_training_file_becomes_test_options_for_tools_test(tmp_path):
    opt = yaml.safe_load(resolve_option_file(REPO_ROOT / 'options' / 'lol_v1.yml').read_text())
    with pytest.raises(FileNotFoundError, match='net_g_latest.pth'):
        training_to_test_options(opt, tmp_path)
    weights = tmp_path / 'experiments' / 'DiffLI2D_LOL_v1' / 'models' / 'net_g_latest.pth'
    weights.parent.mkdir(parents=True)
    weights.touch()
    argv = prepare_argv(['test.py', '-opt', str(REPO_ROOT / 'options' / 'lol_v1.yml')], root=tmp_path)
    test = yaml.safe_load(open(argv[2]).read())
    assert list(test['datasets']) == ['test_1'] and test['datasets']['test_1']['name'] == 'LOL_v1_eval15'
    assert 'train' not in test and test['path']['pretrain_network_g'] == str(weights)
    assert test['val']['save_img'] is True and 'val_freq' not in test['val']


def _colour_cast_task(root, names, seed):
    rng = np.random.default_rng(seed)
    for name in names:
        texture = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        clean = cv2.resize(texture, (96, 72), interpolation=cv2.INTER_CUBIC)
        cast = np.clip(clean * np.array([0.7, 0.95, 1.25]) + np.array([0, 10, 20]), 0, 255).astype(np.uint8)
        for folder, img in (('input', cast), ('target', clean)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / folder / f'{name}.png'), img)


@pytest.mark.slow
def test_new_task_from_the_docs_by_yaml_alone(tmp_path, monkeypatch, capsys):
    """docs/new_task.md, followed literally on a generated colour-cast task (tiny prior, a few iterations)."""
    shutil.copytree(REPO_ROOT / 'tools', tmp_path / 'tools')
    shutil.copytree(REPO_ROOT / 'options', tmp_path / 'options')
    _colour_cast_task(tmp_path / 'my_colour_cast', [f'{i:04d}' for i in range(6)], 0)
    _colour_cast_task(tmp_path / 'my_colour_cast_test', ['0100', '0101'], 1)
    doc = (REPO_ROOT / 'docs' / 'new_task.md').read_text()
    monkeypatch.chdir(tmp_path)
    for command in re.findall(r'^python datasets_prep/prepare.py .*$', doc, re.MULTILINE):
        monkeypatch.setattr(sys, 'argv', command.split()[1:])
        runpy.run_path(str(REPO_ROOT / 'datasets_prep' / 'prepare.py'), run_name='__main__')
    assert 'train: 6 pairs' in capsys.readouterr().out
    option_text = re.search(r'```yaml\n(_base_:.*?)```', doc, re.DOTALL).group(1)
    tiny = re.search(r'`(network_prior: \{unet: adm_tiny.*?\})`.*?`(network_g: \{h_channels: 64\})`', doc, re.DOTALL)
    (tmp_path / 'options' / 'colour_cast.yml').write_text(option_text + '\n'.join(tiny.groups()) + '\n')
    quick = ['--force_yml', 'train:total_iter=2', 'val:val_freq=2', 'logger:save_checkpoint_freq=2',
             'datasets:train:total_batch_size=2', 'datasets:train:gt_size=64',
             'datasets:train:num_worker_per_gpu=0']
    for tool, extra in (('train.py', quick), ('test.py', [])):
        proc = subprocess.run([sys.executable, f'tools/{tool}', '-opt', 'options/colour_cast.yml', *extra],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = tmp_path / 'results' / 'DiffLI2D_ColourCast'
    table = (results / 'metrics_ColourCast_test.md').read_text()
    assert '| ColourCast_test | 2 |' in table and 'psnr_input' in table
    assert len(list((results / 'visualization' / 'ColourCast_test').iterdir())) == 2


# Training-set sizes as published (see each option file's comment); the stand-in train sets have exactly these.
PUBLISHED_TRAIN_SIZE = {
    'datasets/ITS/train.txt': 13990,  # RESIDE ITS: 13,990 hazy images of 1,399 scenes
    'datasets/LOL_v1/train.txt': 485,  # our485
    'datasets/LOL_v2_real/train.txt': 689,  # Real_captured/Train
    'datasets/Rain13K/train.txt': 13711,
    'datasets/Dense_Haze/train45.txt': 45,  # 01-45 of the 50 training images; 46-50 validate
    'datasets/NH_HAZE/train45.txt': 45,
}
# The paper's recipe (DiffLI2D Sec. 5.1): batch 40, 1200 epochs, lr halved every 300 epochs.
PAPER_RECIPE = ['dehaze_its', 'dehaze_its_diffloss', 'lol_v1', 'lol_v2_real', 'derain_rain13k']
TRAIN_FILES = sorted(p.stem for p in (REPO_ROOT / 'options').glob('*.yml')
                     if 'train' in (yaml.safe_load(resolve_option_file(p).read_text()).get('datasets') or {}))


def _epoch_schedule(text: str) -> dict[str, list[int]]:
    """The file's ``# epochs: total=.. milestones=a,b (or periods=..) val_every=.. checkpoint_every=..`` line."""
    line = re.search(r'^# epochs: (.*)$', text, re.MULTILINE)
    assert line, 'a training option file states its schedule in epochs on a "# epochs: ..." line'
    return {key: [int(v) for v in value.split(',')] for key, value in (f.split('=') for f in line.group(1).split())}


def test_every_training_file_is_checked():
    assert set(PAPER_RECIPE) | {'dehaze_dense_haze', 'dehaze_nh_haze', 'quickstart'} <= set(TRAIN_FILES)


@pytest.mark.parametrize('name', TRAIN_FILES)
def test_iterations_are_the_epoch_schedule_on_basicsrs_loader(tmp_path, name):
    """total_iter, milestones, val_freq and save_checkpoint_freq = epochs x len(basicsr's training loader) over a
    stand-in train set of the published size (the loader drops the last incomplete batch)."""
    text = (REPO_ROOT / 'options' / f'{name}.yml').read_text()
    opt = yaml.safe_load(resolve_option_file(REPO_ROOT / 'options' / f'{name}.yml').read_text())
    train_set = opt['datasets']['train']
    stand_in = None
    if train_set['type'] == 'MixedTaskDataset' and any(m.get('source') != 'bundled' for m in train_set['members']):
        pytest.skip('a mix of published sets: tests/test_allinone_options.py checks its epochs')
    if train_set['type'] == 'MixedTaskDataset' or train_set.get('source') == 'bundled':
        stand_in = {**train_set, 'phase': 'train', 'scale': 1}  # bundled photos: the real set
    elif train_set['type'] == 'SyntheticHazeDataset':
        size = len(train_set['images']) * train_set['hazy_per_image']
    else:
        size = PUBLISHED_TRAIN_SIZE[train_set['meta_info_file']]
    if stand_in is None:
        (tmp_path / 'pairs.txt').write_text('lq/a.png gt/a.png\n' * size)  # never read: only the length matters
        stand_in = {**train_set, 'type': 'PairListDataset', 'dataroot': str(tmp_path), 'io_backend': {'type': 'disk'},
                    'meta_info_file': str(tmp_path / 'pairs.txt'), 'phase': 'train', 'scale': 1,
                    'num_worker_per_gpu': 0}
    run = translate_options({'datasets': {'train': stand_in}, 'dist': False, 'world_size': 1, 'rank': 0,
                             'num_gpu': 0, 'is_train': True, 'model_type': opt['model_type'], 'manual_seed': 0,
                             'train': {**opt['train'], 'prior_features': 'online'}})  # the loader's length only
    loader = create_train_val_loaders(run, get_root_logger()).loader
    per_epoch, epochs = len(loader), _epoch_schedule(text)
    assert opt['train']['total_iter'] == epochs['total'][0] * per_epoch
    for key in ('milestones', 'periods'):  # MultiStepLR's steps or CosineAnnealingRestartLR's periods
        if key in epochs:
            assert opt['train']['scheduler'][key] == [m * per_epoch for m in epochs[key]]
    assert {'milestones', 'periods'} & set(epochs)
    assert opt['val']['val_freq'] == epochs['val_every'][0] * per_epoch
    assert opt['logger']['save_checkpoint_freq'] == epochs['checkpoint_every'][0] * per_epoch
    assert f'{per_epoch} iterations per epoch' in text and f"{opt['train']['total_iter']:,} iterations" in text
    if name in PAPER_RECIPE:
        assert train_set['total_batch_size'] == 40 and 'batch_size_per_gpu' not in train_set
        assert epochs['total'] == [1200] and epochs['milestones'] == [300, 600, 900]


def _trained_photos(block: dict) -> set[str]:
    """Bundled photos a training dataset block (or any member of a mix) reads."""
    photos = set(block.get('images') or []) if block.get('source') in ('bundled', 'skimage') else set()
    for member in block.get('members') or []:
        photos |= _trained_photos(member)
    return photos


def test_no_option_file_trains_on_the_photos_held_out_for_evaluation():
    """difflid.data.bundled_photos.HELD_OUT_PHOTOS validate the quickstart and the demos and feed the probes: no
    shipped or demo model (DiffLI²D runs, the built-in prior) may have trained on them."""
    from difflid.data.bundled_photos import HELD_OUT_PHOTOS

    files = [p for p in (REPO_ROOT / 'options').rglob('*.yml') if '_base_' not in p.parts]
    checked = 0
    for path in files:
        opt = yaml.safe_load(resolve_option_file(path).read_text()) or {}
        train = (opt.get('datasets') or {}).get('train') if isinstance(opt.get('datasets'), dict) else None
        if isinstance(train, dict):
            photos = _trained_photos(train)
            checked += bool(photos)
            assert not photos & set(HELD_OUT_PHOTOS), f'{path.name} trains on held-out {photos & set(HELD_OUT_PHOTOS)}'
    assert checked >= 4  # the quickstart, the built-in prior, the all-in-one demo and its baseline at least


@pytest.mark.parametrize('name, test_name', [
    ('dehaze_dense_haze', 'test_dense_haze'), ('dehaze_nh_haze', 'test_nh_haze'),
    ('dense_haze_edsr_diffloss', 'test_dense_haze')])
def test_real_haze_runs_validate_on_images_neither_trained_nor_tested_on(prepared, name, test_name):
    def images(option, phase):
        opt = yaml.safe_load(resolve_option_file(REPO_ROOT / 'options' / f'{option}.yml').read_text())
        pairs = _relocate(opt['datasets'][phase]['meta_info_file'], prepared)
        return {line.split()[0] for line in open(pairs).read().splitlines()}

    train, val, test = images(name, 'train'), images(name, 'val'), images(test_name, 'test_1')
    assert val == {'lq/46_hazy.png', 'lq/50_hazy.png'} and test == {'lq/51_hazy.png', 'lq/55_hazy.png'}
    assert train == {'lq/01_hazy.png', 'lq/45_hazy.png'}
