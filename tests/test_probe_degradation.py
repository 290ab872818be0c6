"""The degradation-type probe (difflid/analysis/degradation_probe.py, tools/hspace_probe.py with probe.degradations):
its scores on hand-made features whose answer is known, the probe set against an independent degradation of the
photos, the end-to-end run against a brute-force 1-NN on independently extracted features, and option errors."""
import csv
import json
import runpy
import sys

import numpy as np
import pytest
import torch

from difflid.analysis import degradation_probe as dprobe
from difflid.analysis import probe
from difflid.data.bundled_photos import HELD_OUT_PHOTOS
from difflid.data.degradations import build_degradation
from difflid.priors.builder import build_prior
from tests.test_probe import REPO_ROOT, brute_force_nn

CFG = {'cv_folds': 3, 'seed': 0, 'probe_c': 1.0}


def layout(photos: int, kinds: int) -> tuple[np.ndarray, np.ndarray]:
    """(label, scene) in the probe's order: photo 0 under every degradation, then photo 1, ..."""
    return np.tile(np.arange(kinds), photos), np.repeat(np.arange(photos), kinds)


# ------------------------------------------------------------------ scores against known answers

def test_separable_types_score_one():
    rng = np.random.default_rng(0)
    label, scene = layout(6, 3)
    x = np.concatenate([5.0 * np.eye(3)[label], 0.3 * rng.normal(size=(6, 4))[scene]], axis=1)
    x += 0.05 * rng.normal(size=x.shape)
    scores = dprobe.degradation_scores(x, label, scene, CFG)
    assert scores['degradation_separability'].score() == 1.0
    assert scores['degradation_nn'].score() == 1.0 == brute_force_nn(x, label)


def test_pure_noise_is_near_chance():
    """Noise features: 10 photos x 4 degradations. One run's accuracy has a standard deviation of about
    sqrt(0.25 * 0.75 / 40) = 0.07, the mean of 5 seeds about 0.03: within 0.1 (3 sd) of chance."""
    label, scene = layout(10, 4)
    separability, nn = [], []
    for seed in range(5):
        x = np.random.default_rng(seed).normal(size=(40, 20))
        scores = dprobe.degradation_scores(x, label, scene, {**CFG, 'seed': seed})
        separability.append(scores['degradation_separability'].score())
        nn.append(scores['degradation_nn'].score())
        assert nn[-1] == pytest.approx(brute_force_nn(x, label))
    assert probe.nn_chance(label) == pytest.approx(9 / 39)  # (P - 1) / (PK - 1): a random other image
    assert abs(np.mean(separability) - 0.25) < 0.1
    assert abs(np.mean(nn) - 9 / 39) < 0.1


def test_scene_dominated_features_fail_1nn_but_not_the_grouped_probe():
    """50 scene dimensions and a one-hot of the type: after standardising, an image's nearest neighbour is its own
    photo under another degradation (1-NN: 0, below chance), yet a linear probe trained on other photos reads the
    type off the one-hot dimensions (1.0), which it can only do on photos it never saw when folds are grouped."""
    rng = np.random.default_rng(0)
    label, scene = layout(8, 4)
    x = np.concatenate([rng.normal(size=(8, 50))[scene], np.eye(4)[label]], axis=1)
    scores = dprobe.degradation_scores(x, label, scene, CFG)
    assert scores['degradation_nn'].score() == 0.0 == brute_force_nn(x, label)
    assert scores['degradation_separability'].score() == 1.0


def test_folds_are_grouped_by_photo(monkeypatch):
    """The folds the probe is fitted on never put a photo in both the training and the test part, and every photo is
    tested once: a probe could otherwise recognise the photo instead of the degradation."""
    from sklearn import model_selection

    seen = []
    split = model_selection.StratifiedGroupKFold.split

    def spy(self, x, y, groups):
        for train, test in split(self, x, y, groups):
            seen.append((set(groups[train]), set(groups[test])))
            yield train, test

    monkeypatch.setattr(model_selection.StratifiedGroupKFold, 'split', spy)
    label, scene = layout(6, 3)
    x = np.random.default_rng(0).normal(size=(18, 30))
    dprobe.degradation_predictions(x, label, scene, folds=3)
    assert len(seen) == 3 and all(not (train & test) for train, test in seen)
    assert set().union(*(test for _, test in seen)) == set(range(6))


@pytest.mark.parametrize('seed', [0, 1])
def test_predictions_are_those_of_the_plain_logistic_regression(seed):
    """The fit in the span of the training rows is the same model as sklearn's pipeline on all 400 dimensions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    label, scene = layout(8, 3)
    x = rng.normal(size=(24, 400)) * rng.uniform(0.1, 10, size=400)
    x[:, :3] += 0.8 * np.eye(3)[label] * x[:, :3].std(axis=0)  # a weak signal: some predictions right, some wrong
    expected = np.empty_like(label)
    for train, test in StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=seed).split(x, label, scene):
        plain = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=10000, tol=1e-8,
                                                                   class_weight='balanced'))
        expected[test] = plain.fit(x[train], label[train]).predict(x[test])
    assert 0 < (expected == label).mean() < 1
    np.testing.assert_array_equal(dprobe.degradation_predictions(x, label, scene, folds=4, seed=seed, c=0.5), expected)


# ------------------------------------------------------------------ the probe set

def test_probe_set_is_every_photo_under_every_degradation_seeded_by_its_name():
    blocks = [{'type': 'GaussianNoise', 'sigma': 50}, {'type': 'LowLight'}]
    names = list(HELD_OUT_PHOTOS[:2])
    dataset = probe.build_probe_dataset({'type': 'CleanImageDataset', 'source': 'bundled', 'images': names})
    data = dprobe.load_degraded(dataset, blocks, {'size': 32, 'crop': 'resize', 'seed': 3})
    assert data.names == names and data.tasks == ['noise', 'low_light']
    assert data.label.tolist() == [0, 1, 0, 1] and data.scene.tolist() == [0, 0, 1, 1]
    for i, (s, k) in enumerate(zip(data.scene, data.label, strict=True)):
        clean = probe.fit_image(dataset[s]['gt'], 32, 'resize').permute(1, 2, 0).numpy()
        expected = build_degradation(blocks[k]).seeded(clean, 3, names[s])
        np.testing.assert_allclose(data.images[i].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert not torch.equal(data.images[0], data.images[2])  # another photo, another draw


# ------------------------------------------------------------------ end to end

def tiny_options(**probe_opts) -> dict:
    return {
        'name': 'probe_degradation_test',
        'network_prior': {'type': 'HSpaceExtractor', 'unet': 'adm_tiny', 'checkpoint': None, 'random_weights': True,
                          'init_seed': 0, 'seed': 0},
        'datasets': {'probe': {'name': 'held_out', 'type': 'CleanImageDataset', 'source': 'bundled',
                               'images': list(HELD_OUT_PHOTOS[:3])}},
        'probe': {'degradations': [{'type': 'GaussianNoise', 'sigma': 50}, {'type': 'LowLight'}],
                  'timesteps': [0, 500], 'size': 32, 'cv_folds': 3, 'device': 'cpu', 'control_draws': 2,
                  'bootstrap_samples': 100, **probe_opts},
    }


@pytest.fixture(scope='module')
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('probe_degradation')
    opt = probe.check_probe_options(tiny_options())
    return root, opt, dprobe.run_degradation_probe(opt, root)


def test_end_to_end_scores_match_brute_force_on_independent_features(first_run):
    root, opt, summary = first_run
    out = root / 'results' / opt['name']
    for name in ('probe.json', 'probe.csv', 'probe.md', 'separability.png', 'cache'):
        assert (out / name).exists(), name
    # chance: 1/K and (P - 1)/(PK - 1) for 3 photos x 2 degradations
    assert summary['chance'] == pytest.approx({'degradation_separability': 0.5, 'degradation_nn': 2 / 5})
    # the probed images, degraded here independently, through a prior built here, scored by a plain 1-NN loop
    names, blocks = list(HELD_OUT_PHOTOS[:3]), opt['probe']['degradations']
    dataset = probe.build_probe_dataset(opt['datasets']['probe'])
    images = []
    for s, name in enumerate(names):
        clean = probe.fit_image(dataset[s]['gt'], 32, 'resize').permute(1, 2, 0).numpy()
        images += [torch.from_numpy(build_degradation(b).seeded(clean, 0, name)).permute(2, 0, 1) for b in blocks]
    label = np.array([0, 1] * 3)
    prior = build_prior(opt['network_prior'])
    for record in summary['records']:
        feats = probe.extract_features(prior, torch.stack(images), record['t'], 16, torch.device('cpu'))
        nn = record['scores']['degradation_nn']
        assert nn['prior'] == pytest.approx(brute_force_nn(feats.flatten(1).double().numpy(), label))
        assert len(nn['control_draws']) == 2 and nn['control_min'] <= nn['control_mean'] <= nn['control_max']
        assert nn['verdict'] in ('above control', 'below control', 'not distinguished')
    rows = list(csv.DictReader((out / 'probe.csv').open()))
    assert [(r['t'], r['metric']) for r in rows] == [(t, m) for t in ('0', '500') for m in dprobe.DEGRADATION_METRICS]
    assert float(rows[0]['chance']) == pytest.approx(0.5)
    stored = json.loads((out / 'probe.json').read_text())
    assert stored['dataset']['tasks'] == ['noise', 'low_light'] and stored['dataset']['images'] == 6
    text = (out / 'probe.md').read_text()
    assert '(chance 0.500)' in text and '(chance 0.400)' in text and '| noise | low_light |' in text


def test_second_run_reads_every_feature_from_the_cache(first_run):
    root, opt, summary = first_run
    again = dprobe.run_degradation_probe(opt, root)
    assert again['features_computed'] == 0 and again['features_cached'] == 4 * 2  # prior, 2 controls, pixels
    assert again['records'] == summary['records']


def test_the_haze_probe_refuses_degradation_options(tmp_path):
    opt = probe.check_probe_options(tiny_options())
    with pytest.raises(probe.ProbeOptionError, match='probe.degradations'):
        probe.run_probe(opt, tmp_path)


# ------------------------------------------------------------------ option errors

@pytest.mark.parametrize('change, named', [
    ({'degradations': [{'type': 'LowLight'}]}, 'at least 2'),
    ({'degradations': {'type': 'LowLight'}}, 'probe.degradations:'),
    ({'degradations': [{'type': 'LowLight'}, {'type': 'Hazee'}]}, 'probe.degradations[1]: degradation type '),
    ({'degradations': [{'type': 'LowLight'}, {'type': 'GaussianNoise', 'sgma': 25}]}, 'probe.degradations[1]: '),
    ({'degradations': [{'type': 'LowLight'}, {'type': 'LowLight'}]}, 'probe.degradations[1]: repeats'),
    ({'decoder_iters': 3}, 'probe.decoder_iters'),
    ({'max_pairs': 3}, 'probe.max_pairs'),
])
def test_bad_degradation_options_name_the_key(change, named):
    opt = tiny_options(**change)
    with pytest.raises(probe.ProbeOptionError, match=named.replace('[', r'\[').replace('.', r'\.')):
        probe.check_probe_options(opt)


def test_a_paired_dataset_is_refused():
    opt = tiny_options()
    opt['datasets']['probe'] = {'type': 'PairListDataset', 'dataroot': 'x', 'meta_info_file': 'x/pairs.txt'}
    with pytest.raises(probe.ProbeOptionError, match='CleanImageDataset'):
        probe.check_probe_options(opt)


def test_cli_prints_one_error_line(tmp_path, monkeypatch, capsys):
    """The tool in this process (its start-up is what a subprocess would add): one ``error:`` line naming the key."""
    bad = tmp_path / 'bad.yml'
    bad.write_text('name: x\nnetwork_prior: {type: HSpaceExtractor, unet: adm_tiny, random_weights: true}\n'
                   'datasets: {probe: {type: CleanImageDataset, source: bundled, images: [coins, brick]}}\n'
                   'probe: {degradations: [{type: LowLight}, {type: RainStreak}]}\n')
    monkeypatch.setattr(sys, 'argv', ['hspace_probe.py', '-opt', str(bad)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO_ROOT / 'tools' / 'hspace_probe.py'), run_name='__main__')
    stderr = capsys.readouterr().err.strip()
    assert exit_info.value.code != 0
    assert stderr.splitlines() == [stderr]
    assert stderr.startswith('error: probe.degradations[1]') and 'RainStreaks' in stderr
