"""Sweeps (tools/sweep.py, difflid.analysis.sweep) and the paper's ablation option files (Tables 2 and 3, Fig. 8)."""
import csv
import json
import os
import re
import runpy
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY

from difflid.analysis.sweep import (
    SweepError,
    apply_overrides,
    collect,
    load_sweep,
    plot_grid,
    print_commands,
    run_status,
    write_table,
)
from difflid.models.base_restoration import check_arch_options
from difflid.reports import read_metric_csv, write_means, write_metric_csv
from difflid.utils.options import resolve_option_file
from tests.conftest import REPO_ROOT, write_pairs

TRAIN = """
_base_: _base_/prior_tiny.yml
name: tiny
model_type: DiffLI2DModel
scale: 1
num_gpu: 0
manual_seed: 0
datasets:
  train: {name: toy, type: PairedImageDataset, dataroot_gt: GT, dataroot_lq: LQ, filename_tmpl: '{}',
          io_backend: {type: disk}, gt_size: 32, use_hflip: true, use_rot: false, num_worker_per_gpu: 0,
          batch_size_per_gpu: 2, dataset_enlarge_ratio: 1, prefetch_mode: ~}
network_g: {type: DiffLI2D, num_feat: 8, num_heads: [1, 2, 2, 4], h_channels: 64}
path: {pretrain_network_g: ~, strict_load_g: true, resume_state: ~}
train:
  optim_g: {type: AdamW, lr: !!float 1.0e-3}
  scheduler: {type: MultiStepLR, milestones: [100], gamma: 0.5}
  total_iter: 100
  warmup_iter: -1
  pixel_opt: {type: L1Loss, loss_weight: 1.0, reduction: mean}
logger: {print_freq: 1, save_checkpoint_freq: 1000, use_tb_logger: false, wandb: {project: ~, resume_id: ~}}
"""
TEST = """
_base_: _base_/prior_tiny.yml
name: tiny_test
model_type: DiffLI2DModel
scale: 1
num_gpu: 0
datasets:
  test_1: {name: SET, type: PairedImageDataset, dataroot_gt: GT, dataroot_lq: LQ, io_backend: {type: disk}}
network_g: {type: DiffLI2D, num_feat: 8, num_heads: [1, 2, 2, 4], h_channels: 64}
path: {pretrain_network_g: ~, strict_load_g: true, param_key_g: params}
val:
  save_img: false
  suffix: ~
  input_metrics: true
  metrics:
    psnr: {type: calculate_psnr, crop_border: 0, test_y_channel: false}
    ssim: {type: calculate_ssim, crop_border: 0, test_y_channel: false}
"""
GRID = """
base: ../tiny.yml
test: ../tiny_test.yml
grid: {key: network_prior.timesteps, name: t2, index: 1, values: [[0, 100], [0, 300]]}
"""


@pytest.fixture
def project(tmp_path):
    """A scratch repository root: tools, option bases, a tiny training/test option file pair over generated pairs,
    and a sweep file ``options/sweeps/grid.yml`` over t2."""
    shutil.copytree(REPO_ROOT / 'tools', tmp_path / 'tools')
    shutil.copytree(REPO_ROOT / 'options' / '_base_', tmp_path / 'options' / '_base_')
    gt, lq = write_pairs(tmp_path / 'data', 3, size=(40, 56))
    (tmp_path / 'options' / 'tiny.yml').write_text(TRAIN.replace('GT', str(gt)).replace('LQ', str(lq)))
    for name, set_name in (('tiny_test', 'toy_test'), ('tiny_test2', 'toy_test2')):
        (tmp_path / 'options' / f'{name}.yml').write_text(
            TEST.replace('GT', str(gt)).replace('LQ', str(lq)).replace('SET', set_name))
    write_sweep(tmp_path, 'grid', GRID)
    return tmp_path


def write_sweep(project, name, text):
    path = project / 'options' / 'sweeps' / f'{name}.yml'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def fake_results(project, run, set_name, psnr, ssim, psnr_input=10.0):
    """What tools/test.py writes for a test set: per-image CSV and the means JSON (two images)."""
    folder = project / 'results' / run
    folder.mkdir(parents=True, exist_ok=True)
    records = [{'image': f'{i}', 'psnr': psnr + d, 'ssim': ssim, 'psnr_input': psnr_input, 'ssim_input': 0.5}
               for i, d in enumerate((-1.0, 1.0))]
    write_metric_csv(folder / f'metrics_{set_name}.csv', records)
    means = {k: sum(r[k] for r in records) / 2 for k in records[0] if k != 'image'}
    write_means(folder / f'metrics_{set_name}.json', 2, means, set(), set())


def run_cli(project, monkeypatch, *args):
    """tools/sweep.py in this process (the copy in ``project``, so that its root is the project)."""
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, 'argv', ['sweep.py', *args])
    runpy.run_path(str(project / 'tools' / 'sweep.py'), run_name='__main__')


# --- overrides, names, run states -------------------------------------------------------------------------------
def test_print_gives_one_command_per_pending_run_and_writes_its_option_files(project, monkeypatch, capsys):
    run_cli(project, monkeypatch, 'options/sweeps/grid.yml', '--print', '--set', 'train.total_iter=2',
            '--set-test', 'val.tile=64', '--auto_resume')
    lines = capsys.readouterr().out.splitlines()
    folder = 'experiments/sweeps/grid'
    assert lines == [f'python tools/train.py -opt {folder}/grid_t2_{t}_train.yml --auto_resume && '
                     f'python tools/test.py -opt {folder}/grid_t2_{t}_test.yml' for t in (100, 300)]
    folder = project / 'experiments' / 'sweeps' / 'grid'
    train = yaml.safe_load((folder / 'grid_t2_300_train.yml').read_text())
    test = yaml.safe_load((folder / 'grid_t2_300_test.yml').read_text())
    assert train['name'] == test['name'] == 'grid_t2_300' and '_base_' not in train
    assert train['network_prior']['timesteps'] == [0, 300] and train['train']['total_iter'] == 2
    assert test['network_prior'] == train['network_prior'] and test['network_g'] == train['network_g']
    assert test['path']['pretrain_network_g'] == 'experiments/grid_t2_300/models/net_g_latest.pth'
    assert test['val']['tile'] == 64 and test['datasets']['test_1']['name'] == 'toy_test' and 'train' not in test
    # trained but not tested: only the test; tested after training: left out
    weights = project / 'experiments' / 'grid_t2_100' / 'models' / 'net_g_latest.pth'
    weights.parent.mkdir(parents=True)
    weights.touch()
    fake_results(project, 'grid_t2_300', 'toy_test', 20.0, 0.8)
    (project / 'experiments' / 'grid_t2_300' / 'models').mkdir(parents=True)
    (project / 'experiments' / 'grid_t2_300' / 'models' / 'net_g_latest.pth').touch()
    os.utime(project / 'results' / 'grid_t2_300' / 'metrics_toy_test.json', (2e9, 2e9))  # tested after training
    sweep = load_sweep(project / 'options' / 'sweeps' / 'grid.yml', project, {'train.total_iter': 2})
    commands = print_commands([sweep], project, auto_resume=True, echo=lambda line: None)
    assert commands == ['python tools/test.py -opt experiments/sweeps/grid/grid_t2_100_test.yml']


def test_a_precomputed_run_fills_its_prior_store_before_it_trains(project, monkeypatch, capsys):
    run_cli(project, monkeypatch, 'options/sweeps/grid.yml', '--print', '--set', 'train.prior_features=precomputed')
    lines = capsys.readouterr().out.splitlines()
    folder = 'experiments/sweeps/grid'
    assert lines == [f'python tools/precompute_prior.py -opt {folder}/grid_t2_{t}_train.yml && '
                     f'python tools/train.py -opt {folder}/grid_t2_{t}_train.yml && '
                     f'python tools/test.py -opt {folder}/grid_t2_{t}_test.yml' for t in (100, 300)]


def test_dry_run_says_what_would_run_and_writes_nothing(project, monkeypatch, capsys):
    run_cli(project, monkeypatch, 'options/sweeps/grid.yml', '--dry-run', '--set', 'train.total_iter=2')
    lines = capsys.readouterr().out.splitlines()
    assert [line.split('   ')[0] for line in lines] == [f'[{i}/2] grid_t2_{t}: train + test'
                                                         for i, t in ((1, 100), (2, 300))]
    assert 'network_prior.timesteps=[0, 100], train.total_iter=2' in lines[0]
    assert not (project / 'experiments').exists() and not (project / 'results').exists()


@pytest.mark.parametrize('assignment, message', [
    ('network_g.cimm=self', r"network_g\.cimm: network_g: unknown option\(s\) \['cimm'\] for DiffLI2D"),
    ('network_priorr.timesteps=[0,5]', r"unknown key 'network_priorr\.timesteps'.*did you mean 'network_prior'"),
    ('foo=1', r"unknown key 'foo': the options have no top-level 'foo'"),
    ('train.total_iterr=2', r"key 'train\.total_iterr': train has no 'total_iterr' \(did you mean 'total_iter'"),
    ('train.total_iter.x=2', r"unknown key 'train\.total_iter\.x': train\.total_iter is not a block"),
    ('name=other', r"'name' cannot be overridden"),
])
def test_an_unknown_override_key_is_one_error_naming_it(project, monkeypatch, capsys, assignment, message):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(project, monkeypatch, 'options/sweeps/grid.yml', '--dry-run', '--set', assignment)
    assert exit_info.value.code == 2
    text = capsys.readouterr().err.strip()
    assert text.startswith('error: --set') and '\n' not in text and re.search(message, text), text


class _FakeFeatures(torch.nn.Module):
    """Stands in for a feature source without the h-space keys (as TimmFeatureExtractor)."""

    def __init__(self, timesteps=(0, 500), seed: int = 0, random_weights: bool = False, init_seed: int = 0) -> None:
        super().__init__()


def test_new_keys_are_allowed_where_a_class_takes_them_and_a_replaced_block_does_not_leak(project, monkeypatch):
    opt = yaml.safe_load(resolve_option_file(project / 'options' / 'tiny.yml').read_text())
    out = apply_overrides(opt, {'network_g.h_stride': 32, 'network_prior.encoder_only': True,
                                'datasets.train.pin_memory': True, 'train.ema_decay': 0.999}, 'test')
    assert out['network_g']['h_stride'] == 32 and out['datasets']['train']['pin_memory'] is True
    assert 'h_stride' not in opt['network_g']  # a copy: the base options are untouched
    monkeypatch.setitem(ARCH_REGISTRY._obj_map, '_FakeFeatures', _FakeFeatures)
    with pytest.raises(SweepError, match=r"network_prior\.type: network_prior: unknown option\(s\) \['checkpoint', "
                                         r"'unet'\] for _FakeFeatures"):
        apply_overrides(opt, {'network_prior.type': '_FakeFeatures'}, 'test')
    block = {'type': '_FakeFeatures', 'timesteps': [0, 5]}
    assert apply_overrides(opt, {'network_prior': block}, 'test')['network_prior'] == block
    with pytest.raises(SweepError, match=r"unknown option\(s\) \['unet'\] for _FakeFeatures"):
        apply_overrides(opt, {'network_prior': {**block, 'unet': 'adm_tiny'}}, 'test')


def test_runs_are_named_after_the_sweep_unless_they_are_an_option_file_as_it_is(project):
    (project / 'options' / 'tiny_other.yml').write_text('_base_: tiny.yml\nname: tiny_other\nnetwork_g: {cim: self}\n')
    path = write_sweep(project, 'named', 'base: ../tiny.yml\ntest: ../tiny_test.yml\nvariants:\n'
                                         '  full: {network_prior.timesteps: [0, 500]}\n'  # the base's value
                                         '  t2: {network_prior.timesteps: [0, 300]}\n'
                                         '  other: ../tiny_other.yml\n')
    names = {r.label: r.name for r in load_sweep(path, project).runs}
    assert names == {'full': 'tiny', 't2': 'named_t2', 'other': 'tiny_other'}
    names = {r.label: r.name for r in load_sweep(path, project, {'train.total_iter': 2}).runs}
    assert names == {'full': 'named_full', 't2': 'named_t2', 'other': 'named_other'}  # --set changes every run
    twice = write_sweep(project, 'twice', 'base: ../tiny.yml\ntest: ../tiny_test.yml\n'
                                         'variants: {a: {}, b: ../tiny.yml}\n')
    with pytest.raises(SweepError, match=r"two variants give the same run: \['tiny'\]"):
        load_sweep(twice, project)


def test_a_run_folder_made_with_other_options_is_refused(project):
    run = load_sweep(project / 'options' / 'sweeps' / 'grid.yml', project, {'train.total_iter': 2}).runs[0]
    assert run_status(run, project) == 'train'
    exp = project / 'experiments' / run.name
    exp.mkdir(parents=True)
    recorded = {**run.train_opt, 'train': {**run.train_opt['train'], 'total_iter': 5}}
    (exp / f'{run.name}_train.yml').write_text('# GENERATE TIME: ...\n' + yaml.safe_dump(recorded))
    with pytest.raises(SweepError, match=r'other options than this sweep gives \(train\.total_iter: 5 vs 2'):
        run_status(run, project)


def test_tables_and_plot_from_the_runs_test_reports(project):
    write_sweep(project, 'grid', GRID.replace('[0, 300]]', '[0, 300], [0, 700]]'))
    sweep = load_sweep(project / 'options' / 'sweeps' / 'grid.yml', project, {'train.total_iter': 2})
    fake_results(project, 'grid_t2_100', 'toy_test', 20.0, 0.81)
    fake_results(project, 'grid_t2_300', 'toy_test', 25.0, 0.92)
    table = collect([sweep], project)
    md, out_csv = write_table(table, project / 'out', 'grid')
    assert md.read_text().splitlines()[:6] == [
        '| variant | toy_test psnr | toy_test ssim |', '|---|---|---|', '| t2_100 | 20.00 | 0.8100 |',
        '| t2_300 | 25.00 | 0.9200 |', '| t2_700 | - | - |', '| degraded input | 10.00 | 0.5000 |']
    assert 'No results yet: grid_t2_700 (toy_test)' in md.read_text()
    rows = list(csv.DictReader(out_csv.open()))
    assert [r['runs'] for r in rows[:3]] == ['grid_t2_100', 'grid_t2_300', 'grid_t2_700']
    assert float(rows[1]['toy_test psnr']) == 25.0 and rows[2]['toy_test psnr'] == ''
    png = plot_grid(sweep, project, project / 'out')
    assert png.name == 'grid_psnr.png' and png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    # two sweeps of the same variants on other test sets share rows (Table 2 on three datasets)
    other = write_sweep(project, 'grid2', GRID.replace('tiny_test.yml', 'tiny_test2.yml'))
    fake_results(project, 'grid2_t2_100', 'toy_test2', 30.0, 0.95)
    joint = collect([sweep, load_sweep(other, project, {'train.total_iter': 2})], project)
    assert joint.columns == ['toy_test psnr', 'toy_test ssim', 'toy_test2 psnr', 'toy_test2 ssim']
    assert joint.rows['t2_100'] == {'toy_test psnr': 20.0, 'toy_test ssim': 0.81, 'toy_test2 psnr': 30.0,
                                    'toy_test2 ssim': 0.95}


def test_an_all_in_one_test_adds_its_average_column(project):
    """Runs whose test wrote metrics_summary.json (the all-in-one table) get an 'average <metric>' column: the
    summary's own average of its columns, as the field reports it."""
    write_sweep(project, 'grid', GRID)
    sweep = load_sweep(project / 'options' / 'sweeps' / 'grid.yml', project, {'train.total_iter': 2})
    fake_results(project, 'grid_t2_100', 'toy_test', 20.0, 0.81)
    summary = {'metrics': ['psnr', 'ssim'], 'columns': {}, 'average': {'psnr': 27.5, 'ssim': 0.875}, 'references': {}}
    (project / 'results' / 'grid_t2_100' / 'metrics_summary.json').write_text(json.dumps(summary))
    table = collect([sweep], project)
    assert table.columns == ['toy_test psnr', 'toy_test ssim', 'average psnr', 'average ssim']
    assert table.rows['t2_100']['average psnr'] == 27.5 and 'average psnr' not in table.rows['t2_300']


def test_collect_writes_each_sweeps_table_and_a_joint_one(project, monkeypatch, capsys):
    write_sweep(project, 'grid_b', GRID.replace('tiny_test.yml', 'tiny_test2.yml'))
    fake_results(project, 'grid_t2_100', 'toy_test', 20.0, 0.81)
    fake_results(project, 'grid_b_t2_300', 'toy_test2', 30.0, 0.95)
    run_cli(project, monkeypatch, 'options/sweeps/grid.yml', 'options/sweeps/grid_b.yml', '--collect',
            '--set', 'train.total_iter=2')
    out = project / 'results' / 'sweeps'
    assert sorted(p.name for p in out.iterdir()) == ['grid', 'grid+grid_b', 'grid_b']  # 'grid' is taken
    assert sorted(p.name for p in (out / 'grid').iterdir()) == ['grid.csv', 'grid.md', 'grid_psnr.png']
    joint = (out / 'grid+grid_b' / 'grid+grid_b.md').read_text()
    assert '| t2_100 | 20.00 | 0.8100 | - | - |' in joint and '| t2_300 | - | - | 30.00 | 0.9500 |' in joint
    assert not (project / 'experiments').exists()  # collecting runs nothing
    assert 'wrote results/sweeps/grid+grid_b/grid+grid_b.md' in capsys.readouterr().out


@pytest.mark.slow
def test_a_sweep_trains_tests_tabulates_and_skips_finished_runs(project):
    """Two 2-iteration runs through tools/train.py and tools/test.py; the table holds each run's own test means;
    a rerun trains nothing, and a run whose test report is gone is only tested again."""
    def sweep(*extra):
        proc = subprocess.run([sys.executable, 'tools/sweep.py', 'options/sweeps/grid.yml', '--set',
                               'train.total_iter=2', *extra], cwd=project, capture_output=True, text=True,
                              timeout=600, env={**os.environ, 'OMP_NUM_THREADS': '1'})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    sweep()
    runs = ['grid_t2_100', 'grid_t2_300']
    table = {r['variant']: r for r in csv.DictReader((project / 'results' / 'sweeps' / 'grid' / 'grid.csv').open())}
    for run, label in zip(runs, ('t2_100', 't2_300'), strict=True):
        per_image = read_metric_csv(project / 'results' / run / 'metrics_toy_test.csv')
        assert len(per_image) == 3
        for metric in ('psnr', 'ssim'):
            mean = sum(r[metric] for r in per_image) / len(per_image)
            assert float(table[label][f'toy_test {metric}']) == pytest.approx(mean, abs=1e-5)
        assert table[label]['runs'] == run
        log = ''.join(p.read_text() for p in (project / 'experiments' / run).glob('train_*.log'))
        assert re.search(r'iter:\s+2, lr', log) and not re.search(r'iter:\s+3, lr', log)  # --set reached it
    assert table['t2_100']['toy_test psnr'] != table['t2_300']['toy_test psnr']  # the runs differ in t2
    assert (project / 'results' / 'sweeps' / 'grid' / 'grid_psnr.png').is_file()

    weights = {run: (project / 'experiments' / run / 'models' / 'net_g_latest.pth').stat().st_mtime_ns for run in runs}
    kept = (project / 'results' / runs[0] / 'metrics_toy_test.json').stat().st_mtime_ns
    shutil.rmtree(project / 'results' / runs[1])
    out = sweep()
    assert f'{runs[0]}: finished, skipped' in out and f'{runs[1]}: trained; test only' in out
    assert {run: (project / 'experiments' / run / 'models' / 'net_g_latest.pth').stat().st_mtime_ns
            for run in runs} == weights
    assert (project / 'results' / runs[0] / 'metrics_toy_test.json').stat().st_mtime_ns == kept
    assert (project / 'results' / runs[1] / 'metrics_toy_test.json').is_file()
    assert all(len(list((project / 'experiments' / run).glob('train_*.log'))) == 1 for run in runs)


# --- the paper's option and sweep files -------------------------------------------------------------------------
SETS = {'its': ('dehaze_its', 'test_sots_indoor', 'SOTS_indoor'),
        'dense_haze': ('dehaze_dense_haze', 'test_dense_haze', 'Dense_Haze_test'),
        'nh_haze': ('dehaze_nh_haze', 'test_nh_haze', 'NH_HAZE_test')}
_COMMON = {'timesteps': [0, 500], 'seed': 0, 'dtype': 'auto'}
# variant -> (network_g changes, network_prior changes merged into the base's, or its whole new block)
VARIANTS = {
    'table2_{}_baseline': ({'cim': 'self', 'hae': 'self'}, {}, None),
    'table2_{}_wo_cim': ({'cim': 'self'}, {}, None),
    'table2_{}_wo_hae': ({'hae': 'self'}, {}, None),
    'table3_{}_layer_e': ({}, {'tap': 'layer_e'}, None),
    'table3_{}_layer_d': ({}, {'tap': 'layer_d'}, None),
    'table3_{}_vgg16': ({'h_channels': 512}, None, {'type': 'TimmFeatureExtractor', 'model': 'vgg16',
                                                    'checkpoint': 'pretrained/vgg16.pth', **_COMMON}),
    'table3_{}_resnet50': ({'h_channels': 2048}, None, {'type': 'TimmFeatureExtractor', 'model': 'resnet50',
                                                        'checkpoint': 'pretrained/resnet50.pth', **_COMMON}),
    'table3_{}_released': ({'h_channels': 6}, None, {'type': 'ReleasedFeatureExtractor', 'unet': 'adm256_uncond',
                                                     'checkpoint': 'pretrained/256x256_diffusion_uncond.pt',
                                                     **_COMMON}),
}


def _options(path):
    return yaml.safe_load(resolve_option_file(path).read_text())


def _epochs_line(path):
    return re.search(r'^# epochs: .*$', path.read_text(), re.MULTILINE).group(0)


@pytest.mark.parametrize('dataset', list(SETS))
@pytest.mark.parametrize('variant', list(VARIANTS))
def test_paper_option_file_differs_from_its_task_file_only_as_intended(dataset, variant):
    base_file = REPO_ROOT / 'options' / f'{SETS[dataset][0]}.yml'
    path = REPO_ROOT / 'options' / 'paper' / f'{variant.format(dataset)}.yml'
    base, opt = _options(base_file), _options(path)
    net_changes, prior_changes, prior_block = VARIANTS[variant]
    assert opt['network_g'] == {**base['network_g'], **net_changes}
    assert opt['network_prior'] == (prior_block or {**base['network_prior'], **prior_changes})
    assert opt['name'].startswith(base['name'] + '_')
    assert {k: v for k, v in opt.items() if k not in ('name', 'network_g', 'network_prior')} == \
        {k: v for k, v in base.items() if k not in ('name', 'network_g', 'network_prior')}
    assert _epochs_line(path) == _epochs_line(base_file)  # the schedule line tests/test_task_options.py reads
    for block in ('network_g', 'network_prior'):  # keys the registered classes take (nothing is built)
        check_arch_options(block, opt[block])


def test_table2_networks_have_the_full_models_parameter_count():
    """The paper's stand-ins have "similar number of parameter[s]": within 1 % of the full model's 8.75 M."""
    full = _options(REPO_ROOT / 'options' / 'dehaze_its.yml')['network_g']
    count = sum(p.numel() for p in build_network(dict(full)).parameters())
    for variant in ('baseline', 'wo_cim', 'wo_hae'):
        net_opt = _options(REPO_ROOT / 'options' / 'paper' / f'table2_its_{variant}.yml')['network_g']
        assert sum(p.numel() for p in build_network(dict(net_opt)).parameters()) == pytest.approx(count, rel=0.01)


@pytest.mark.parametrize('dataset', list(SETS))
def test_table_sweeps_list_the_paper_files_and_test_on_the_test_set(dataset, tmp_path):
    base_name = _options(REPO_ROOT / 'options' / f'{SETS[dataset][0]}.yml')['name']
    for table, labels in (('table2', ['baseline', 'wo_cim', 'wo_hae', 'full']),
                          ('table3', ['layer_e', 'layer_d', 'hspace', 'vgg16', 'resnet50', 'released'])):
        sweep = load_sweep(REPO_ROOT / 'options' / 'sweeps' / f'{table}_{dataset}.yml', tmp_path)
        assert [r.label for r in sweep.runs] == labels and set(sweep.labels) == set(labels)
        for run in sweep.runs:
            own = REPO_ROOT / 'options' / 'paper' / f'{table}_{dataset}_{run.label}.yml'
            assert run.name == (_options(own)['name'] if own.is_file() else base_name)  # full/hspace: the task file
            assert run.test_sets == [SETS[dataset][2]]
            assert all(run.test_opt[k] == run.train_opt[k] for k in ('network_g', 'network_prior', 'model_type'))
            assert run.test_opt['path']['pretrain_network_g'] == f'experiments/{run.name}/models/net_g_latest.pth'


@pytest.mark.parametrize('which, index, grid', [('t1', 0, [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999]),
                                                ('t2', 1, [100, 200, 300, 400, 500, 600, 700, 800, 900, 999])])
def test_fig8_sweeps_vary_one_timestep_and_share_the_full_run(which, index, grid, tmp_path):
    sweep = load_sweep(REPO_ROOT / 'options' / 'sweeps' / f'fig8_{which}_its.yml', tmp_path)
    assert [r.x for r in sweep.runs] == grid and sweep.grid_name == which and sweep.is_grid
    for run in sweep.runs:
        timesteps = run.train_opt['network_prior']['timesteps']
        assert timesteps[index] == run.x and timesteps[1 - index] == (500 if which == 't1' else 0)
        assert run.test_opt['network_prior']['timesteps'] == timesteps
        assert run.name == ('DiffLI2D_ITS' if timesteps == [0, 500] else f'fig8_{which}_its_{which}_{run.x:g}')


def test_smoke_sweep_is_two_short_quickstart_runs(tmp_path):
    sweep = load_sweep(REPO_ROOT / 'options' / 'sweeps' / 'smoke.yml', tmp_path)
    assert [r.name for r in sweep.runs] == ['smoke_full', 'smoke_baseline']
    assert all(r.train_opt['train']['total_iter'] == 100 and r.train_opt['network_prior']['unet'] == 'adm_tiny'
               for r in sweep.runs)
    assert sweep.runs[1].test_opt['network_g']['cim'] == 'self' and sweep.runs[1].test_sets == ['quickstart_val']
