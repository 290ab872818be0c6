"""All-in-one restoration: the mixed training set, its sampler, per-task reports and the demo end to end."""
import json
import math
import runpy
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from basicsr.data import build_dataset
from basicsr.utils import get_root_logger

from difflid.data.mixed_task_dataset import member_counts
from difflid.data.sampler import ResumableSampler, SeededDataset
from difflid.entry import create_train_val_loaders, translate_options
from difflid.reports import compare_results, format_cell, group_means, summary_report
from difflid.utils.errors import OptionError
from difflid.utils.option_schema import validate_options
from tests.conftest import REPO_ROOT

PHOTOS = ['astronaut', 'coffee', 'rocket']


def _member(task: str, degradation: dict, images=PHOTOS, **share) -> dict:
    return {'type': 'DegradedImageDataset', 'task': task, 'degradation': degradation, 'source': 'bundled',
            'images': list(images), 'gt_size': 16, **share}


def _mix(mixing: str = 'weights', **extra) -> dict:
    share = 'weight' if mixing == 'weights' else 'enlarge_ratio'
    return {'name': 'mix', 'type': 'MixedTaskDataset', 'phase': 'train', 'mixing': mixing, **extra,
            'members': [_member('noise', {'type': 'GaussianNoise', 'sigma': 25}, **{share: 1}),
                        _member('haze', {'type': 'HazeDegradation'}, PHOTOS[:2], **{share: 2}),
                        _member('low_light', {'type': 'LowLight'}, PHOTOS[:1], **{share: 5})]}


def test_member_counts_are_largest_remainder_shares():
    assert member_counts([1, 1, 1], 10) == [4, 3, 3]  # 3.33 each: the first remainder wins the tie
    assert member_counts([1, 2, 5], 800) == [100, 200, 500]
    assert member_counts([2, 1], 1) == [1, 0]


def test_weighted_epochs_hold_exact_shares_and_batches_match_the_weights():
    """Every epoch holds each member's share exactly; any fixed batch position draws member k with probability
    w_k / sum(w) over epochs. Bound: 300 epochs x 8 positions = 2400 Bernoulli draws per member, standard deviation
    at most sqrt(0.25 / 2400) = 0.0102; the test allows 4 of them (a false alarm about 1 in 16,000)."""
    mix = build_dataset(_mix(epoch_length=64))
    weights = np.array([1, 2, 5]) / 8
    assert mix.counts == [8, 16, 40] and len(mix) == 64
    first_batches = []
    for epoch in range(300):
        order = mix.epoch_order(epoch, 64, seed=0)
        assert Counter(mix.member_of(i)[0] for i in order) == {0: 8, 1: 16, 2: 40}
        first_batches += [mix.member_of(i)[0] for i in order[:8]]
    share = np.bincount(first_batches, minlength=3) / len(first_batches)
    assert np.all(np.abs(share - weights) < 4 * math.sqrt(0.25 / len(first_batches))), share
    single = sum(len({mix.member_of(i)[0] for i in mix.epoch_order(e, 64, 0)[b:b + 8]}) == 1
                 for e in range(50) for b in range(0, 64, 8))
    # batches mix tasks: a one-task batch of 8 has the hypergeometric probability sum_k C(n_k, 8) / C(64, 8)
    p = sum(math.comb(n, 8) for n in (8, 16, 40)) / math.comb(64, 8)
    assert single <= 400 * p + 4 * math.sqrt(400 * p * (1 - p)), (single, 400 * p)


def test_a_weighted_member_shows_every_image_before_repeating_one():
    mix = build_dataset({**_mix(epoch_length=4), 'members': [
        _member('noise', {'type': 'GaussianNoise', 'sigma': 25}, ['astronaut', 'coffee', 'rocket', 'camera', 'moon'],
                weight=1)]})
    epochs = [[mix.member_of(i)[1] for i in mix.epoch_order(epoch, 4, 0)] for epoch in range(5)]
    assert len(set(epochs[0])) == 4  # 4 of the 5 images, none twice
    assert set(Counter(epochs[0] + epochs[1]).values()) == {1, 2}  # the 5th comes before any image's second draw
    assert Counter(sum(epochs, [])) == {k: 4 for k in range(5)}  # 20 draws = 4 whole passes


def test_ratio_epochs_show_each_image_ratio_times():
    mix = build_dataset(_mix('ratios'))
    order = mix.epoch_order(3, len(mix), seed=0)
    assert len(order) == 3 * 1 + 2 * 2 + 1 * 5
    assert Counter(mix.member_of(i) for i in order) == {(0, 0): 1, (0, 1): 1, (0, 2): 1, (1, 0): 2, (1, 1): 2,
                                                        (2, 0): 5}
    assert order != mix.epoch_order(4, len(mix), seed=0)


def test_the_training_loader_resumes_the_mixed_order_exactly_over_processes():
    """The loader's sampler draws the mix's own order, split over processes without overlap; a resumed run (start
    mid-epoch) continues the uninterrupted run's list; items carry their member's task."""
    opt = {'datasets': {'train': {**_mix(epoch_length=24), 'num_worker_per_gpu': 0, 'batch_size_per_gpu': 4}},
           'dist': False, 'world_size': 1, 'rank': 0, 'num_gpu': 0, 'is_train': True, 'model_type': 'DiffLI2DModel',
           'manual_seed': 7, 'train': {'total_iter': 12}}
    data = create_train_val_loaders(translate_options(opt), get_root_logger())
    data.sampler.set_epoch(2)
    whole = [index for _, _, index in data.sampler]
    assert whole == data.dataset.dataset.epoch_order(2, 24, seed=7)
    data.sampler.set_epoch(2, start=10)
    assert [index for _, _, index in data.sampler] == whole[10:]
    by_position = {}
    for rank in (0, 1):
        sampler = ResumableSampler(data.dataset, 2, rank, order=data.sampler.order)
        sampler.set_epoch(2)
        for _, position, index in sampler:
            assert position not in by_position  # no sample drawn by both processes
            by_position[position] = index
    assert [by_position[p] for p in range(24)] == whole
    data.sampler.set_epoch(2)
    uninterrupted = [batch['lq'] for batch in data.loader]
    data.sampler.set_epoch(2, start=12)  # a run stopped after 3 of the epoch's 6 batches of 4
    resumed = [batch['lq'] for batch in data.loader]
    assert len(resumed) == 3 and all(torch.equal(a, b) for a, b in zip(resumed, uninterrupted[3:], strict=True))
    data.sampler.set_epoch(0)
    first = next(iter(data.loader))
    mix = data.dataset.dataset
    assert first['task'] == [mix.tasks[mix.member_of(i)[0]] for i in mix.epoch_order(0, 24, 7)[:4]]
    assert first['lq'].shape == (4, 3, 16, 16)


def test_a_mixed_item_is_its_members_item_drawn_from_the_seeded_streams():
    seeded = SeededDataset(build_dataset(_mix(epoch_length=8)), seed=3)
    index = seeded.dataset.offsets[1]  # the haze member's first image
    a, b = seeded[(1, 5, index)], seeded[(1, 5, index)]
    assert a['task'] == 'haze' and torch.equal(a['lq'], b['lq']) and a['gt_path'] == 'astronaut'
    assert not torch.equal(a['lq'], seeded[(2, 5, index)]['lq'])  # another epoch, another draw


def _run_options(train: dict, **extra) -> dict:
    return {'name': 'x', 'model_type': 'ImageRestorationModel', 'network_g': {'type': 'DiffLI2D', 'cim': 'self',
                                                                                'hae': 'self'},
            'datasets': {'train': train}, 'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'total_iter': 1,
                                                    'scheduler': {'type': 'MultiStepLR', 'milestones': [1]}},
            'logger': {'print_freq': 1, 'save_checkpoint_freq': 1, 'use_tb_logger': False}, **extra}


def test_member_blocks_are_checked_as_dataset_blocks():
    train = {**_mix(), 'num_worker_per_gpu': 0, 'total_batch_size': 2}
    train['members'][1]['gt_sise'] = 16
    with pytest.raises(OptionError, match=r'datasets\.train\.members\[1\]\.gt_sise.*gt_size'):
        validate_options(_run_options(train), True, 'x.yml')
    del train['members'][1]['gt_sise']
    validate_options(_run_options(train), True, 'x.yml')
    summary = {'val': {'val_freq': 1, 'save_img': False, 'summary': {'columns': {'SOTS': 'sots'}}}}
    with pytest.raises(OptionError, match=r"val\.summary\.columns\.SOTS: 'sots' is not the name of a validation"):
        validate_options(_run_options(train, **summary), True, 'x.yml')


def test_a_force_yml_list_that_python_cannot_read_is_one_clear_error():
    from difflid.utils.option_schema import load_raw_options

    with pytest.raises(OptionError, match=r"--force_yml datasets:val_haze:images=\[chelsea\]: cannot read the value"):
        load_raw_options(REPO_ROOT / 'options' / 'allinone_synthetic.yml', ['datasets:val_haze:images=[chelsea]'])


def test_a_mix_cannot_take_precomputed_prior_features():
    from difflid.entry.precompute import store_plans

    opt = {'datasets': {'train': {**_mix(), 'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2}},
           'network_prior': {'type': 'HSpaceExtractor', 'unet': 'adm_tiny', 'random_weights': True},
           'train': {'prior_features': 'precomputed'}}
    with pytest.raises(OptionError, match='MixedTaskDataset mixes several datasets.*prior_features: online'):
        store_plans(opt)


def test_group_means_and_the_summary_against_hand_computed_means():
    records = [{'image': 'a', 'task': 'rain', 'psnr': 30.0, 'ssim': 0.9},
               {'image': 'b', 'task': 'rain', 'psnr': 32.0, 'ssim': 0.8},
               {'image': 'c', 'task': 'noise', 'psnr': 20.0, 'ssim': 0.5}]
    groups = group_means('mixed', records)
    rain = {'psnr': 31.0, 'ssim': pytest.approx(0.85)}
    assert groups == {'mixed/rain': {'set': 'mixed', 'task': 'rain', 'images': 2, 'means': rain},
                      'mixed/noise': {'set': 'mixed', 'task': 'noise', 'images': 1,
                                      'means': {'psnr': 20.0, 'ssim': 0.5}}}
    groups.update(group_means('sots', [{'image': 'd', 'psnr': 25.0, 'ssim': 0.7}]))
    report = summary_report(groups, {'columns': {'SOTS': 'sots', 'rain': 'mixed/rain', 'noise': 'mixed/noise'},
                                     'metrics': ['psnr', 'ssim'], 'references': {'P': {'average': '1/2'}}})
    # unweighted over the three columns (25 + 31 + 20) / 3, not over the four images (25 + 30 + 32 + 20) / 4
    assert report['average']['psnr'] == pytest.approx(76 / 3)
    assert report['average']['ssim'] == pytest.approx((0.7 + 0.85 + 0.5) / 3)
    assert list(report['columns']) == ['SOTS', 'rain', 'noise'] and report['references'] == {'P': {'average': '1/2'}}
    with pytest.raises(KeyError, match='no evaluated set or task named x: nope'):
        summary_report(groups, {'columns': {'x': 'nope'}})
    # PromptIR's published 3-task row: the unweighted mean of its five columns is its printed 32.06 / 0.913
    psnr, ssim = [30.58, 36.37, 33.98, 31.31, 28.06], [0.974, 0.972, 0.933, 0.888, 0.799]
    assert format_cell([np.mean(psnr), np.mean(ssim)]) == '32.06/0.913'


def _quick(name: str) -> list[str]:
    return ['--force_yml', 'train:total_iter=2', 'val:val_freq=2', 'logger:save_checkpoint_freq=2',
            'logger:print_freq=1', f'name={name}']


def _fewer_images(test: bool) -> list[str]:
    sets = ('test_haze', 'test_rain', 'test_noise', 'test_low_light') if test else (
        'val_haze', 'val_rain', 'val_noise', 'val_low_light')
    return [f"datasets:{s}:images=['chelsea']" for s in sets]


@pytest.mark.slow
def test_the_all_in_one_demo_end_to_end(tmp_path):
    """options/allinone_synthetic.yml and its no-prior baseline, shortened: train, test, compare. The summary's
    average is recomputed here from the per-set reports, and compare_results prints both methods' rows."""
    for folder in ('tools', 'options'):  # the tools write experiments/ and results/ beside themselves
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
    runs = {'demo_prior': ('options/allinone_synthetic.yml', 'options/test_allinone_synthetic.yml'),
            'demo_noprior': ('options/allinone_synthetic_noprior.yml', 'options/test_allinone_synthetic_noprior.yml')}
    for name, (train_file, test_file) in runs.items():
        for tool, opt_file, extra in (
                ('tools/train.py', train_file, [*_quick(name), *_fewer_images(False)]),
                ('tools/test.py', test_file,
                 ['--force_yml', f'name={name}', f'path:pretrain_network_g=experiments/{name}/models/net_g_latest.pth',
                  *_fewer_images(True)])):
            proc = subprocess.run([sys.executable, tool, '-opt', opt_file, *extra], cwd=tmp_path,
                                  capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert 'All-in-one summary' in proc.stdout + proc.stderr
    results = tmp_path / 'results'
    for name in runs:
        summary = json.loads((results / name / 'metrics_summary.json').read_text())
        per_set = {s: json.loads((results / name / f'metrics_{s}.json').read_text())['means']
                   for s in ('haze', 'rain', 'noise', 'low_light')}
        assert summary['average']['psnr'] == pytest.approx(np.mean([m['psnr'] for m in per_set.values()]))
        assert list(summary['columns']) == ['haze', 'rain', 'noise', 'low light']
        assert (results / name / 'metrics_summary.md').read_text().startswith(
            '| method | haze | rain | noise | low light | average |')
    compare = [sys.executable, 'tools/compare_results.py', *(f'results/{n}' for n in runs)]
    proc = subprocess.run(compare, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and '### all-in-one summary' in proc.stdout, proc.stderr
    table = compare_results([results / n for n in runs])
    assert '### all-in-one summary' in table and '| demo_prior |' in table and '| demo_noprior |' in table


PROTOCOL_COMMANDS = [  # docs/allinone.md's protocol block, each checked (--check) without the datasets
    ['tools/train.py', '-opt', 'options/allinone_3task.yml', '--check'],
    ['tools/train.py', '-opt', 'options/allinone_3task_noprior.yml', '--check'],
    ['tools/test.py', '-opt', 'options/test_allinone_3task.yml', '--check'],
    ['tools/test.py', '-opt', 'options/test_allinone_3task_noprior.yml', '--check'],
    ['tools/sweep.py', 'options/sweeps/allinone_3task_t2.yml', '--check'],
]


@pytest.mark.parametrize('command', PROTOCOL_COMMANDS, ids=lambda c: c[-2].split('/')[-1])
def test_the_protocol_commands_run_up_to_the_missing_datasets(command, tmp_path, monkeypatch, capsys):
    """Without the datasets, each protocol command gets as far as the data: the options (with their _base_ files and
    the prior) pass, and one error names every missing folder and how to prepare it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'argv', [command[0], *(str(REPO_ROOT / a) if a.startswith('options/') else a
                                                    for a in command[1:])])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(REPO_ROOT / command[0]), run_name='__main__')
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith('error: ') and 'docs/datasets.md' in err, err[-2000:]
    assert 'datasets/SOTS_outdoor' in err and 'Traceback' not in err


def test_compare_results_names_a_missing_results_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', ['tools/compare_results.py', str(tmp_path / 'results/DiffLI2D_allinone_3task'),
                                      str(tmp_path / 'results/DiffLI2D_allinone_3task_noprior')])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(REPO_ROOT / 'tools/compare_results.py'), run_name='__main__')
    assert stop.value.code == 2 and 'DiffLI2D_allinone_3task' in capsys.readouterr().err
