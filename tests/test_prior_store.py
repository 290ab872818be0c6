"""Precomputed prior features (issue 20): the store holds what the online prior computes, training crops read the
exact window of their whole image's features, stale or foreign stores are refused, and precomputed training never
runs the prior."""
import copy
import functools
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.utils.lmdb_util import make_lmdb_from_imgs

import difflid  # noqa: F401  registers the datasets and models
from difflid.data.precomputed_prior_dataset import PrecomputedPriorDataset, pixels_digest
from difflid.entry import train
from difflid.entry.precompute import dataset_store, precompute, store_plans, stored_dataset
from difflid.priors.base import GuidanceExtractor
from difflid.priors.builder import build_prior
from difflid.utils.errors import OptionError
from difflid.utils.feature_store import FeatureStore
from difflid.utils.option_schema import load_raw_options, validate_options
from tests.conftest import REPO_ROOT, write_pairs

PRIOR = {'type': 'HSpaceExtractor', 'unet': 'adm_tiny', 'checkpoint': None, 'random_weights': True, 'init_seed': 0,
         'timesteps': [0, 500], 'seed': 3}
STRIDE, CROP = 32, 64
TRAIN_SIZE, VAL_SIZE = (96, 128), (70, 90)  # (H, W): 3 x 4 cells; the validation images are padded to 3 x 3


def _options(root: Path, **train: object) -> dict:
    return {
        'name': 'stored', 'model_type': 'DiffLI2DModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': {'name': 'toy', 'type': 'PairedImageDataset', 'dataroot_gt': str(root / 'train' / 'gt'),
                      'dataroot_lq': str(root / 'train' / 'lq'), 'filename_tmpl': '{}', 'io_backend': {'type': 'disk'},
                      'gt_size': CROP, 'use_hflip': True, 'use_rot': False, 'num_worker_per_gpu': 0,
                      'batch_size_per_gpu': 2, 'dataset_enlarge_ratio': 1, 'prefetch_mode': None},
            'val': {'name': 'toy_val', 'type': 'PairedImageDataset', 'dataroot_gt': str(root / 'val' / 'gt'),
                    'dataroot_lq': str(root / 'val' / 'lq'), 'io_backend': {'type': 'disk'}}},
        'network_prior': dict(PRIOR),
        'network_g': {'type': 'DiffLI2D', 'num_feat': 8, 'num_heads': [1, 2, 2, 4], 'h_channels': 64},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'optim_g': {'type': 'AdamW', 'lr': 1e-3},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                  'total_iter': 2, 'warmup_iter': -1, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
                  'prior_features': 'precomputed', 'prior_draws': 2, 'prior_store_dtype': 'fp32', **train},
        'val': {'val_freq': 2, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False,
                   'wandb': {'project': None, 'resume_id': None}},
    }


def _write_options(root: Path, **train: object) -> Path:
    path = root / 'stored.yml'
    path.write_text(yaml.safe_dump(_options(root, **train)), encoding='utf-8')
    return path


def _project(root: Path) -> Path:
    write_pairs(root / 'train', 4, TRAIN_SIZE, seed=1)
    write_pairs(root / 'val', 2, VAL_SIZE, seed=2)
    return _write_options(root)


def _derived(root: Path, **train: object) -> dict:
    """The options as the tools derive them (dataset phases and scale), for calling ``stored_dataset`` directly."""
    opt = _options(root, **train)
    for phase, dataset_opt in opt['datasets'].items():
        dataset_opt.update(phase=phase.split('_')[0], scale=1)
    return opt


def _read_rgb(path: Path) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1], read here with OpenCV, not through any dataset."""
    return torch.from_numpy(cv2.imread(str(path))[..., ::-1].astype(np.float32) / 255).permute(2, 0, 1).contiguous()


@functools.cache
def _prior(draw: int) -> GuidanceExtractor:
    return build_prior({**PRIOR, 'seed': PRIOR['seed'] + draw})


def _online(img: torch.Tensor, draw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The online extractor's (f_t1, f_t2) of one whole image, with draw ``draw``'s seed (the prior's seed + draw)."""
    feats = _prior(draw)(img[None])
    return feats[0][0], feats[500][0]


@pytest.fixture(scope='module')
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('store')
    summaries = precompute(REPO_ROOT, ['-opt', str(_project(root))])
    assert [s['computed'] for s in summaries] == [4, 2]
    return root


def _copy(project: Path, tmp_path: Path) -> Path:
    shutil.copytree(project, tmp_path / 'p')
    _write_options(tmp_path / 'p')
    return tmp_path / 'p'


def test_stored_features_are_the_online_extractors_for_each_orientation_and_draw(project):
    store = dataset_store(_derived(project), _derived(project)['datasets']['train'])
    for lq_path in sorted((project / 'train' / 'lq').glob('*.png')):
        img = _read_rgb(lq_path)
        digest = pixels_digest(img)
        for orientation, oriented in ((0, img), (1, img.flip(-1))):
            for draw in (0, 1):
                stored = torch.from_numpy(store.read(digest, orientation, draw)).permute(2, 3, 0, 1)
                f1, f2 = _online(oriented, draw)
                assert stored.shape == (2, 64, 3, 4)
                assert torch.equal(stored[0], f1)  # fp32 store: the very numbers
                assert torch.equal(stored[1], f2)
        # the flipped image's features are not the flipped features (why the store keeps both orientations)
        assert not torch.allclose(torch.from_numpy(store.read(digest, 1, 0)).flip(1),
                                  torch.from_numpy(store.read(digest, 0, 0)), atol=1e-3)
    # validation images: whole, padded to the stride, draw 0 only (the prior's own seeded noise)
    val_store = dataset_store(_derived(project), _derived(project)['datasets']['val'])
    img = _read_rgb(project / 'val' / 'lq' / '000.png')
    stored = torch.from_numpy(val_store.read(pixels_digest(img), 0, 0)).permute(2, 3, 0, 1)
    torch.testing.assert_close(stored[1], _online(img, 0)[1], rtol=0, atol=1e-6)
    assert not val_store.has(pixels_digest(img), 0, 1) and not val_store.has(pixels_digest(img), 1, 0)


def test_a_fp16_store_is_within_half_precision_of_the_online_features(project, tmp_path):
    root = _copy(project, tmp_path)
    store_root = tmp_path / 'half'
    _write_options(root, prior_store_dtype='fp16', prior_store=str(store_root), prior_draws=1)
    precompute(REPO_ROOT, ['-opt', str(root / 'stored.yml')])
    img = _read_rgb(root / 'train' / 'lq' / '001.png')
    opt = _derived(root, prior_store=str(store_root))
    store = dataset_store(opt, opt['datasets']['train'])
    assert store.root.parent == store_root / 'toy'  # each dataset its own store under train.prior_store
    stored = store.read(pixels_digest(img), 0, 0)
    assert stored.dtype == np.float16
    f1, f2 = _online(img, 0)
    for got, want in ((stored[..., 0, :], f1), (stored[..., 1, :], f2)):
        want = want.permute(1, 2, 0)
        torch.testing.assert_close(torch.from_numpy(got.astype(np.float32)), want, rtol=2 ** -10, atol=1e-4)


def test_a_training_crop_brings_the_window_of_its_whole_images_features(project):
    dataset = stored_dataset(_derived(project), 'train', 'the command')
    images = {p.name: _read_rgb(p) for p in sorted((project / 'train' / 'lq').glob('*.png'))}
    online = {(name, o, k): _online(img.flip(-1) if o else img, k)
              for name, img in images.items() for o in (0, 1) for k in (0, 1)}
    seen = set()
    for trial in range(12):
        random.seed(trial)
        index = trial % len(dataset)
        item = dataset[index]
        name = Path(item['lq_path']).name
        assert item['lq'].shape == item['gt'].shape == (3, CROP, CROP)
        matches = [(o, top, left) for o in (0, 1) for top in range(TRAIN_SIZE[0] - CROP + 1)
                   for left in range(TRAIN_SIZE[1] - CROP + 1)
                   if torch.equal((images[name].flip(-1) if o else images[name])[:, top:top + CROP, left:left + CROP],
                                  item['lq'])]
        assert len(matches) == 1
        orientation, top, left = matches[0]
        assert top % STRIDE == 0 and left % STRIDE == 0  # on the stride's grid of the flipped image
        window = (slice(None), slice(top // STRIDE, (top + CROP) // STRIDE),
                  slice(left // STRIDE, (left + CROP) // STRIDE))
        draws = [k for k in (0, 1) if torch.equal(online[name, orientation, k][0][window], item['f_cim'])
                 and torch.allclose(online[name, orientation, k][1][window], item['f_hae'], rtol=0, atol=1e-6)]
        assert len(draws) == 1, 'the crop\'s features are no draw\'s window of its whole image\'s features'
        seen.add((orientation, draws[0]))
    assert seen == {(0, 0), (0, 1), (1, 0), (1, 1)}  # both flips and both draws are drawn


def test_precomputed_training_never_builds_or_runs_the_prior(project, tmp_path, monkeypatch):
    root = _copy(project, tmp_path)
    calls = {'built': 0, 'forward': 0}
    built, forward = GuidanceExtractor.__init__, GuidanceExtractor.forward

    def counting_init(self, *args, **kwargs):
        calls['built'] += 1
        built(self, *args, **kwargs)

    def counting_forward(self, *args, **kwargs):
        calls['forward'] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(GuidanceExtractor, '__init__', counting_init)
    monkeypatch.setattr(GuidanceExtractor, 'forward', counting_forward)
    monkeypatch.chdir(root)
    train(root, ['-opt', str(root / 'stored.yml')])
    assert calls == {'built': 0, 'forward': 0}
    log = next((root / 'experiments' / 'stored').glob('train_*.log')).read_text(encoding='utf-8')
    assert 'precomputed in' in log and '# psnr' in log  # trained and validated on stored features
    assert (root / 'experiments' / 'stored' / 'models' / 'net_g_2.pth').is_file()
    # the same options online build the prior and run it on every batch: the counters can see it
    _write_options(root, prior_features='online')
    train(root, ['-opt', str(root / 'stored.yml'), '--force_yml', 'name=online'])
    assert calls['built'] == 1 and calls['forward'] >= 2


def test_a_store_of_another_prior_or_missing_images_stops_the_start(project, tmp_path):
    root = _copy(project, tmp_path)
    with pytest.raises(OptionError) as err:
        train(root, ['-opt', str(root / 'stored.yml'), '--force_yml', 'network_prior:timesteps=[0,300]'])
    message = str(err.value)
    assert 'no precomputed prior features' in message and 'timesteps: store [0, 500], options [0, 300]' in message
    assert 'python tools/precompute_prior.py -opt' in message and 'network_prior:timesteps=[0,300]' in message
    shutil.copy(root / 'train' / 'lq' / '000.png', root / 'train' / 'lq' / '004.png')
    shutil.copy(root / 'train' / 'gt' / '000.png', root / 'train' / 'gt' / '004.png')
    with pytest.raises(OptionError, match=r'datasets.train: 1 of 5 images have no precomputed prior features.*004'):
        train(root, ['-opt', str(root / 'stored.yml')])
    for flag in ('use_rot=true', 'gt_size=48'):
        with pytest.raises(OptionError, match='use_rot|multiple of the prior'):
            train(root, ['-opt', str(root / 'stored.yml'), '--force_yml', f'datasets:train:{flag}'])
    assert not (root / 'experiments').exists()  # nothing was created by a refused start


def test_a_changed_image_is_never_served_stale_features(project, tmp_path):
    root = _copy(project, tmp_path)
    path = root / 'train' / 'lq' / '002.png'
    cv2.imwrite(str(path), 255 - cv2.imread(str(path)))
    dataset = stored_dataset(_derived(root), 'train', 'the command')
    with pytest.raises(OSError, match=r'002.png changed since its prior features were computed'):
        dataset[2]
    summaries = precompute(REPO_ROOT, ['-opt', str(root / 'stored.yml')])
    assert summaries[0]['computed'] == 1  # only the changed image
    item = stored_dataset(_derived(root), 'train', 'the command')[2]
    assert item['f_cim'].shape == (64, 2, 2)


def test_a_killed_precompute_resumes_without_duplicate_or_torn_entries(project, tmp_path, monkeypatch):
    root = _copy(project, tmp_path)
    store_root = tmp_path / 'killed'
    _write_options(root, prior_store=str(store_root))
    write, writes = FeatureStore.write, []

    def dying_write(self, *args, **kwargs):
        if len(writes) == 6:  # in the middle of the second image's four entries
            raise KeyboardInterrupt
        writes.append(args[:3])
        return write(self, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, 'write', dying_write)
    with pytest.raises(KeyboardInterrupt):
        precompute(REPO_ROOT, ['-opt', str(root / 'stored.yml')])
    monkeypatch.setattr(FeatureStore, 'write', write)
    store = next(FeatureStore(p.parent) for p in store_root.glob('toy/*/store.json'))
    assert len(store.index()) == 1
    (store.root / 'entries' / 'ab').mkdir(parents=True)
    (store.root / 'entries' / 'ab' / '.abc_o0_d0.x.tmp').write_bytes(b'torn')  # what a SIGKILL mid-write leaves
    with open(next((store.root / 'index').glob('*.jsonl')), 'a', encoding='utf-8') as f:
        f.write('{"name": "003.png", "dig')  # an index line cut by a kill
    summaries = precompute(REPO_ROOT, ['-opt', str(root / 'stored.yml')])
    assert summaries[0]['computed'] == 3  # the first image was done; the second is computed again, whole
    lines = [json.loads(line) for p in (store.root / 'index').glob('*.jsonl')
             for line in p.read_text(encoding='utf-8').splitlines() if line.endswith('}')]
    names = [line['name'] for line in lines]
    assert sorted(names) == ['000.png', '001.png', '002.png', '003.png']  # each image indexed exactly once
    assert len(list((store.root / 'entries').rglob('*.npy'))) == 4 * 2 * 2
    dataset = stored_dataset(_derived(root, prior_store=str(store_root)), 'train', 'the command')
    assert all(dataset[i]['f_hae'].isfinite().all() for i in range(len(dataset)))


@pytest.mark.slow
def test_two_processes_write_disjoint_shards_that_read_back_completely(project, tmp_path):
    root = _copy(project, tmp_path)
    store_root = tmp_path / 'sharded'
    _write_options(root, prior_store=str(store_root))
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    procs = [subprocess.Popen([sys.executable, str(REPO_ROOT / 'tools' / 'precompute_prior.py'), '-opt',
                               str(root / 'stored.yml'), '--shard', f'{i}/2'], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    store = next(FeatureStore(p.parent) for p in store_root.glob('toy/*/store.json'))
    per_writer = [{json.loads(line)['name'] for line in p.read_text(encoding='utf-8').splitlines()}
                  for p in sorted((store.root / 'index').glob('*.jsonl'))]
    assert len(per_writer) == 2 and not per_writer[0] & per_writer[1]
    assert per_writer[0] | per_writer[1] == {f'{i:03d}.png' for i in range(4)}
    dataset = stored_dataset(_derived(root, prior_store=str(store_root)), 'train', 'the command')
    for index in range(len(dataset)):
        random.seed(index)
        assert dataset[index]['f_cim'].shape == (64, 2, 2)
    assert not list(store.root.rglob('*.tmp'))


def test_the_store_folder_follows_the_dataset_and_the_prior_not_the_run(project):
    opt = _derived(project)
    renamed = copy.deepcopy(opt)
    renamed['name'], renamed['network_g']['num_feat'] = 'another_run', 16  # a Table 2 ablation of the network
    train_set = opt['datasets']['train']
    assert dataset_store(opt, train_set).root == dataset_store(renamed, train_set).root
    assert dataset_store(opt, train_set).root.parent == Path(train_set['dataroot_lq']) / 'prior_features'
    other_prior = copy.deepcopy(opt)
    other_prior['network_prior']['timesteps'] = [0, 300]
    assert dataset_store(other_prior, train_set).root != dataset_store(opt, train_set).root
    gpu_run = copy.deepcopy(opt)
    gpu_run['network_prior']['dtype'] = 'bf16'  # how the prior runs is not what it computes: the store serves it
    assert dataset_store(gpu_run, train_set).root == dataset_store(opt, train_set).root
    assert isinstance(stored_dataset(opt, 'val', 'x'), PrecomputedPriorDataset)


def test_the_its_recipe_precomputes_both_flips_beside_the_data():
    """options/dehaze_its_precomputed.yml, as docs/precomputed_prior.md runs it with tools/precompute_prior.py and
    then tools/train.py (no ITS here: its plan and its options are checked)."""
    path = REPO_ROOT / 'options' / 'dehaze_its_precomputed.yml'
    raw = load_raw_options(str(path))
    assert validate_options(raw, True, str(path)) == []
    assert raw['train']['prior_features'] == 'precomputed' and raw['datasets']['train']['gt_size'] % STRIDE == 0
    plans = {plan.phase: plan for plan in store_plans(raw)}
    assert (plans['train'].orientations, plans['train'].draws) == ((0, 1), 2)
    assert (plans['val'].orientations, plans['val'].draws) == ((0,), 1)
    assert plans['train'].store.root.parent == Path('datasets/ITS/prior_features')
    assert plans['val'].store.root.parent == Path('datasets/SOTS_indoor/prior_features')
    assert plans['train'].store.root.name == plans['val'].store.root.name  # one prior, one identity
    its = yaml.safe_load((REPO_ROOT / 'options' / 'dehaze_its.yml').read_text(encoding='utf-8'))
    assert plans['train'].store.root == store_plans({**raw, 'name': its['name']})[0].store.root  # not the run's name


def test_a_store_from_an_lmdb_set_in_bf16_reads_back_within_bf16_precision(project, tmp_path):
    root = _copy(project, tmp_path)
    lmdb_root = tmp_path / 'lmdb'
    lmdb_root.mkdir()
    for side in ('gt', 'lq'):
        paths = sorted((root / 'train' / side).glob('*.png'))
        make_lmdb_from_imgs(str(root / 'train' / side), str(lmdb_root / f'{side}.lmdb'), [p.name for p in paths],
                            [p.stem for p in paths])
    opt = _options(root, prior_store_dtype='bf16', prior_draws=1)
    opt['datasets']['train'].update(dataroot_gt=str(lmdb_root / 'gt.lmdb'), dataroot_lq=str(lmdb_root / 'lq.lmdb'),
                                    io_backend={'type': 'lmdb'}, use_hflip=False)
    del opt['datasets']['val']
    (root / 'lmdb.yml').write_text(yaml.safe_dump(opt), encoding='utf-8')
    summaries = precompute(REPO_ROOT, ['-opt', str(root / 'lmdb.yml')])
    assert summaries[0]['computed'] == 4 and 'lq.lmdb' in summaries[0]['store']
    for phase_opt in opt['datasets'].values():
        phase_opt.update(phase='train', scale=1)
    dataset = stored_dataset(opt, 'train', 'the command')
    assert dataset.names == ['000', '001', '002', '003']  # LMDB keys
    random.seed(0)
    item = dataset[1]
    img = _read_rgb(root / 'train' / 'lq' / '001.png')
    top = next(t for t in (0, 32) for left in (0, 32, 64)
               if torch.equal(img[:, t:t + CROP, left:left + CROP], item['lq']))
    left = next(x for x in (0, 32, 64) if torch.equal(img[:, top:top + CROP, x:x + CROP], item['lq']))
    want = _online(img, 0)[1][:, top // STRIDE:(top + CROP) // STRIDE, left // STRIDE:(left + CROP) // STRIDE]
    torch.testing.assert_close(item['f_hae'], want, rtol=2 ** -7, atol=1e-3)  # bf16: 8 significant bits
    assert not torch.equal(item['f_hae'], want)  # it was rounded: the bf16 path really ran


def test_a_disk_too_small_for_the_store_refuses_to_start_and_writes_nothing(project, tmp_path, monkeypatch):
    root = _copy(project, tmp_path)
    store_root = tmp_path / 'small_disk'
    _write_options(root, prior_store=str(store_root))
    monkeypatch.setattr(shutil, 'disk_usage', lambda path: shutil._ntuple_diskusage(10 ** 9, 10 ** 9 - 1000, 1000))
    with pytest.raises(OptionError, match=r'the features need about .* more, only 1.0 KB are free'):
        precompute(REPO_ROOT, ['-opt', str(root / 'stored.yml')])
    assert not list(store_root.rglob('*.npy')) and not list(store_root.rglob('*.jsonl'))


def test_check_reports_each_store_or_what_is_missing(project, tmp_path, capsys):
    root = _copy(project, tmp_path)
    train(root, ['-opt', str(root / 'stored.yml'), '--check'])
    out = capsys.readouterr().out
    assert 'datasets.train: 4 images with stored prior features (2 draw(s))' in out
    assert 'datasets.val: 2 images with stored prior features (1 draw(s))' in out
    with pytest.raises(OptionError, match='no precomputed prior features'):
        train(root, ['-opt', str(root / 'stored.yml'), '--check', '--force_yml', 'network_prior:seed=4'])
    assert not (root / 'experiments').exists()


def test_with_diffloss_the_prior_is_built_for_diffloss_alone(project, tmp_path, monkeypatch):
    """DiffLoss runs the prior's UNet on the restored and GT images anyway: precomputed features save the guidance
    pass only (zero calls of the extractor's forward), and the one copy of the UNet serves DiffLoss."""
    root = _copy(project, tmp_path)
    diff_opt = {'type': 'DiffLoss', 'unet': 'adm_tiny', 'random_weights': True, 'init_seed': 0, 'checkpoint': None,
                'eps_weight': 1e-3, 'h_weight': 1e-6}
    _write_options(root, diff_opt=diff_opt)
    calls = {'forward': 0, 'diffusion_pass': 0}
    forward, diffusion_pass = GuidanceExtractor.forward, type(_prior(0)).diffusion_pass

    def counting(name, method):
        def wrapper(self, *args, **kwargs):
            calls[name] += 1
            return method(self, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(GuidanceExtractor, 'forward', counting('forward', forward))
    monkeypatch.setattr(type(_prior(0)), 'diffusion_pass', counting('diffusion_pass', diffusion_pass))
    train(root, ['-opt', str(root / 'stored.yml')])
    assert calls['forward'] == 0 and calls['diffusion_pass'] >= 2
    log = next((root / 'experiments' / 'stored').glob('train_*.log')).read_text(encoding='utf-8')
    assert 'the prior is built for DiffLoss only' in log and 'DiffLoss uses the frozen prior' in log


def test_torchrun_ranks_take_disjoint_slices_without_a_process_group(project, tmp_path, monkeypatch):
    """Under torchrun (RANK/WORLD_SIZE set, no --shard) each process computes images rank, rank + N, ...; --shard wins
    over the environment; a bad shard is named."""
    root = _copy(project, tmp_path)
    _write_options(root, prior_store=str(tmp_path / 'ranks'))
    monkeypatch.setenv('RANK', '1')
    monkeypatch.setenv('WORLD_SIZE', '3')
    summaries = precompute(REPO_ROOT, ['-opt', str(root / 'stored.yml')])
    assert [(s['images'], s['computed']) for s in summaries] == [(1, 1), (1, 1)]  # train image 1, val image 1
    store = next(FeatureStore(p.parent) for p in (tmp_path / 'ranks').glob('toy/*/store.json'))
    assert sorted(store.index()) == ['001.png']
    summaries = precompute(REPO_ROOT, ['-opt', str(root / 'stored.yml'), '--shard', '0/2'])
    assert [s['images'] for s in summaries] == [2, 1]  # images 0 and 2; val image 0
    with pytest.raises(OptionError, match='--shard 2/2'):
        precompute(REPO_ROOT, ['-opt', str(root / 'stored.yml'), '--shard', '2/2'])
