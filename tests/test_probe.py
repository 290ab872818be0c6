"""The h-space probe (difflid/analysis/probe.py, tools/hspace_probe.py): separability against independent
computations, intervals and the verdict rule on hand-made cases with known answers, the end-to-end run with its
control draws, the noise every source gives image k, the feature cache, and option errors."""
import csv
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from difflid.analysis import probe
from difflid.priors import cache as prior_cache
from difflid.priors.noise import position_noise

REPO_ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ separability against known answers

def brute_force_nn(x: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out 1-NN written as plainly as possible: z-score, then a loop over images."""
    std = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    hits = 0
    for i in range(len(z)):
        dist = [np.linalg.norm(z[i] - z[j]) if j != i else np.inf for j in range(len(z))]
        hits += labels[int(np.argmin(dist))] == labels[i]
    return hits / len(z)


def layout(scenes: int = 6, hazy_per_scene: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(scene, is_hazy) in the probe's order: every hazy image, then one clear image per scene."""
    scene = np.concatenate([np.repeat(np.arange(scenes), hazy_per_scene), np.arange(scenes)])
    is_hazy = np.concatenate([np.ones(scenes * hazy_per_scene, int), np.zeros(scenes, int)])
    return scene, is_hazy


def test_nn_chance_is_the_random_neighbour_rate():
    labels = np.array([0, 0, 0, 1, 1, 2])
    by_hand = np.mean([np.mean([labels[j] == labels[i] for j in range(6) if j != i]) for i in range(6)])
    assert probe.nn_chance(labels) == pytest.approx(by_hand)
    assert probe.nn_chance(labels) == pytest.approx((3 * 2 / 5 + 2 * 1 / 5 + 0) / 6)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_nn_accuracy_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(30, 7)) * rng.uniform(0.1, 10, size=7)  # unequal scales: standardising matters
    labels = rng.integers(0, 4, size=30)
    assert probe.nn_accuracy(x, labels) == pytest.approx(brute_force_nn(x, labels))


def test_content_features_separate_content_and_not_haze():
    rng = np.random.default_rng(0)
    scene, is_hazy = layout()
    x = rng.normal(size=(6, 10))[scene]  # a hazy image's features are its clear image's: haze is invisible
    assert probe.nn_accuracy(x, scene) == 1.0
    # identical features within a scene -> the same prediction for all its images -> balanced accuracy 0.5 exactly
    assert probe.haze_separability(x, is_hazy, scene, folds=3) == pytest.approx(0.5)


def test_haze_features_separate_haze_and_not_content():
    rng = np.random.default_rng(0)
    scene, is_hazy = layout()
    x = rng.normal(size=(len(scene), 10))  # no scene information at all
    x[:, 0] += 20.0 * is_hazy
    assert probe.haze_separability(x, is_hazy, scene, folds=3) == 1.0
    content = probe.nn_accuracy(x, scene)
    assert content == pytest.approx(brute_force_nn(x, scene))
    assert abs(content - probe.nn_chance(scene)) < 0.2  # chance is 3/23 here


def test_select_pairs_spreads_a_subset_over_scenes():
    keys = [f'gt/{s}.png' for s in range(5) for _ in range(10)]  # ITS-like: 10 hazy per clear image
    chosen = probe.select_pairs(keys, max_pairs=8, hazy_per_scene=2, seed=0)
    scenes = [keys[i] for i in chosen]
    assert len(chosen) == 8 and chosen == sorted(chosen)
    assert len(set(scenes)) == 5 and max(scenes.count(k) for k in set(scenes)) == 2
    assert probe.select_pairs(keys, None, None, 0) == list(range(50))


# -------------------------------------------------------------------------- intervals and verdict, known answers

def test_balanced_accuracy_on_resampled_scenes_is_sklearns_with_weights():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    scene, is_hazy = layout(scenes=5, hazy_per_scene=3)
    predicted = rng.integers(0, 2, size=len(scene))
    outcome = probe.PerImage((predicted == is_hazy).astype(float), scene, is_hazy)
    assert outcome.score() == pytest.approx(balanced_accuracy_score(is_hazy, predicted))
    counts = probe.scene_resamples(5, 4, seed=0)
    for row, value in zip(counts, outcome.resampled(counts), strict=True):
        assert value == pytest.approx(balanced_accuracy_score(is_hazy, predicted, sample_weight=row[scene]))


def test_scene_bootstrap_covers_the_true_mean_when_images_of_a_scene_agree():
    """Outcomes drawn per scene (each scene's images succeed with probability 0.1 or 0.9, mean 0.5): the 95 %
    interval from resampled scenes covers 0.5 in 88-99 % of 300 data sets (measured: 95 %); resampling images
    instead, as if they were independent, covers it in only 73 %."""
    rng = np.random.default_rng(1)
    scenes, per_scene, covered = 20, 4, 0
    scene = np.repeat(np.arange(scenes), per_scene)
    for rep in range(300):
        p = rng.choice([0.1, 0.9], size=scenes)
        outcome = probe.PerImage((rng.random(len(scene)) < p[scene]).astype(float), scene)
        low, high = probe.interval(outcome.resampled(probe.scene_resamples(scenes, 400, seed=rep)))
        covered += low <= 0.5 <= high
    assert 0.88 <= covered / 300 <= 0.99


def test_prior_minus_control_is_paired_over_the_same_scenes():
    """Scores that vary a lot between scenes, the prior 0.1 above the control on every image: the difference's
    interval is exactly 0.1 while each score's own interval is wide (an unpaired bootstrap would be as wide)."""
    rng = np.random.default_rng(0)
    scene = np.repeat(np.arange(8), 3)
    control = rng.uniform(10, 30, size=8)[scene] + rng.normal(0, 0.5, size=len(scene))
    row = probe.summarise_scores(probe.PerImage(control + 0.1, scene),
                                 [probe.PerImage(control, scene), probe.PerImage(control, scene)],
                                 probe.PerImage(control, scene), probe.scene_resamples(8, 500, seed=0))
    assert row['prior_minus_control'] == pytest.approx(0.1)
    assert row['prior_minus_control_ci'] == pytest.approx([0.1, 0.1])
    assert row['prior_ci'][1] - row['prior_ci'][0] > 3.0
    assert row['verdict'] == 'above control'


@pytest.mark.parametrize('prior, controls, ci, expected', [
    (0.61, [0.36, 0.50, 0.63], [0.05, 0.20], 'not distinguished'),  # the difference is clear, the range is not
    (0.70, [0.36, 0.50, 0.63], [-0.02, 0.30], 'not distinguished'),  # outside the range, but the CI holds 0
    (0.70, [0.36, 0.50, 0.63], [0.01, 0.30], 'above control'),
    (0.20, [0.36, 0.50, 0.63], [-0.40, -0.10], 'below control'),
    (0.63, [0.36, 0.50, 0.63], [0.01, 0.30], 'not distinguished'),  # equal to the best draw is not above it
])
def test_verdict_needs_both_the_range_and_the_interval(prior, controls, ci, expected):
    assert probe.verdict(prior, controls, ci) == expected


def test_shared_noise_is_the_test_time_window_for_every_image():
    """noise: shared gives every image the window at (0, 0) (DiffLI²D's test-time noise), per_image one each; the
    linear schedule written out (guided-diffusion's β from 1e-4 to 0.02)."""
    img = torch.rand(1, 3, 16, 20).expand(2, -1, -1, -1)
    alpha = float(np.prod(1 - np.linspace(1e-4, 0.02, 1000)[:501]))
    pixels = probe.PixelSpace(torch.tensor(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))), seed=3)
    shared = probe.extract_features(pixels, img, 500, 2, torch.device('cpu'), noise='shared')
    expected = alpha ** 0.5 * (2 * img[0] - 1) + (1 - alpha) ** 0.5 * position_noise(3, [500], 3, 16, 20)[0]
    torch.testing.assert_close(shared[0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared[1], expected, atol=1e-5, rtol=0)
    own = probe.extract_features(pixels, img, 500, 2, torch.device('cpu'), noise='per_image')
    assert not torch.allclose(own[0], own[1])


# ------------------------------------------------------------------------------------- end to end

def write_scene_pairs(root: Path, scenes: int = 4, hazy_per_scene: int = 2, size: tuple[int, int] = (72, 80)) -> Path:
    """A pair list of smooth random scenes, each with ``hazy_per_scene`` veiled versions sharing one GT file."""
    rng = np.random.default_rng(0)
    (root / 'gt').mkdir(parents=True)
    (root / 'lq').mkdir()
    lines = []
    for s in range(scenes):
        gt = cv2.resize(rng.uniform(0, 255, (9, 10, 3)).astype(np.float32), size[::-1], interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(root / 'gt' / f's{s}.png'), gt.clip(0, 255).astype(np.uint8))
        for k in range(hazy_per_scene):
            veil = 0.3 + 0.25 * k
            hazy = (gt * (1 - veil) + 230 * veil).clip(0, 255).astype(np.uint8)
            cv2.imwrite(str(root / 'lq' / f's{s}_{k}.png'), hazy)
            lines.append(f'lq/s{s}_{k}.png gt/s{s}.png')
    (root / 'pairs.txt').write_text('\n'.join(lines) + '\n')
    return root


def tiny_options(data_root: Path, **probe_opts) -> dict:
    return {
        'name': 'probe_test',
        'network_prior': {'type': 'HSpaceExtractor', 'unet': 'adm_tiny', 'checkpoint': None, 'random_weights': True,
                          'init_seed': 0, 'seed': 0},
        'datasets': {'probe': {'name': 'tiny', 'type': 'PairListDataset', 'dataroot': str(data_root),
                               'meta_info_file': str(data_root / 'pairs.txt'), 'io_backend': {'type': 'disk'}}},
        'probe': {'timesteps': [0, 500], 'size': 64, 'decoder_iters': 3, 'decoder_feat': 8, 'decoder_batch': 4,
                  'cv_folds': 2, 'tsne_perplexity': 2.0, 'grid_images': 1, 'device': 'cpu', 'control_draws': 2,
                  'bootstrap_samples': 200, **probe_opts},
    }


# write_scene_pairs' images in the probe's order (hazy s0_0, s0_1, s1_0, ..., then clear s0..s3) and their scenes
SCENE = np.array([0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3])
IS_HAZY = np.array([1] * 8 + [0] * 4)
COSINE_PRIOR = {'type': 'HSpaceExtractor', 'unet': {'preset': 'adm_tiny', 'noise_schedule': 'cosine'},
                'checkpoint': None, 'random_weights': True, 'init_seed': 0, 'seed': 0}


def cosine_alpha_bar(t: int, steps: int = 1000, s: float = 0.008) -> float:
    """ᾱ_t of Nichol & Dhariwal's cosine schedule (betas_for_alpha_bar, β clipped at 0.999), written out."""
    def f(u: float) -> float:
        return math.cos((u / steps + s) / (1 + s) * math.pi / 2) ** 2

    alpha_bar = 1.0
    for i in range(t + 1):
        alpha_bar *= 1 - min(1 - f(i + 1) / f(i), 0.999)
    return alpha_bar


class Spy:
    """Records the option blocks sources are built from, and per feature pass the source, the images, t, the
    features and the noised input x_t the source's network received."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.built, self.passes = [], []
        build, extract = probe.build_prior, probe.extract_features

        def build_spy(block, *args, **kwargs):
            self.built.append((block, build(block, *args, **kwargs)))
            return self.built[-1][1]

        def extract_spy(extractor, images, t, *args, **kwargs):
            seen, network, own = [], extractor._features, vars(extractor).get('_features')

            def features(x_t, timesteps):
                seen.append(x_t.detach().cpu().clone())
                return network(x_t, timesteps)

            extractor._features = features
            try:
                out = extract(extractor, images, t, *args, **kwargs)
            finally:  # spies may nest (monkeypatched twice in one test): restore what was there
                if own is None:
                    del extractor._features
                else:
                    extractor._features = own
            self.passes.append({'source': self.label(extractor), 'images': images, 't': t, 'features': out,
                                'x_t': torch.cat(seen)})
            return out

        mp.setattr(probe, 'build_prior', build_spy)
        mp.setattr(probe, 'extract_features', extract_spy)

    def label(self, extractor) -> str:
        if isinstance(extractor, probe.PixelSpace):
            return 'pixels'
        return next(f"init_seed {block['init_seed']}" for block, e in self.built if e is extractor)

    def get(self, source: str, t: int) -> dict:
        (found,) = [p for p in self.passes if p['source'] == source and p['t'] == t]
        return found


@pytest.fixture(scope='module')
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('probe')
    opt = probe.check_probe_options({**tiny_options(write_scene_pairs(root / 'data')), 'network_prior': COSINE_PRIOR})
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp)
        summary = probe.run_probe(opt, root)
    return root, opt, summary, spy


def test_end_to_end_writes_every_output(first_run):
    root, opt, summary, _ = first_run
    out = root / 'results' / 'probe_test'
    for name in ('probe.json', 'probe.csv', 'probe.md', 'separability.png', 'tsne_overview.png', 'tsne_t0000.png',
                 'tsne_t0500.png', 'decoder_grid_prior.png', 'decoder_grid_control.png', 'decoder_grid_pixels.png'):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = json.loads((out / 'probe.json').read_text())
    by_hand = np.mean([np.mean([SCENE[j] == SCENE[i] for j in range(12) if j != i]) for i in range(12)])
    assert report['chance']['content_separability'] == pytest.approx(by_hand)
    assert report['dataset']['hazy_images'] == 8 and report['dataset']['scenes'] == 4
    assert [r['t'] for r in report['records']] == [0, 500]
    assert [d['init_seed'] for d in report['control']['draws']] == [1, 2]
    rows = list(csv.DictReader((out / 'probe.csv').open()))
    assert [(int(r['t']), r['metric']) for r in rows] == [(t, m) for t in (0, 500) for m in probe.METRICS]
    assert {'control_draw0', 'control_draw1', 'prior_minus_control_ci_low', 'verdict'} <= set(rows[0])
    md = (out / 'probe.md').read_text()
    assert 'prior − control' in md and 'chance' in md and 'outside the range of the control draws' in md
    assert summary['features_computed'] == 8 and summary['features_cached'] == 0


def test_every_source_noises_image_k_alike_with_the_priors_schedule(first_run):
    """Under a cosine preset (ᾱ_500 = 0.492, not the linear 0.078) image k's x_t is the same for the prior, every
    control and the pixels: the same ᾱ_t, and the noise window at (k·2·size, 0) for every source."""
    _, _, summary, spy = first_run
    alpha = cosine_alpha_bar(500)
    assert alpha == pytest.approx(0.492, abs=1e-3)
    assert summary['pixels']['alphas_cumprod'][500] == pytest.approx(alpha, rel=1e-6)
    pixels = spy.get('pixels', 500)
    images = pixels['images']
    expected = torch.stack([
        alpha ** 0.5 * (2 * img - 1) + (1 - alpha) ** 0.5 * position_noise(0, [500], 3, 64, 64, origin=(k * 128, 0))[0]
        for k, img in enumerate(images)])
    torch.testing.assert_close(pixels['features'], expected, atol=1e-5, rtol=0)
    for source in ('init_seed 0', 'init_seed 1', 'init_seed 2'):  # the prior, control draws 0 and 1
        torch.testing.assert_close(spy.get(source, 500)['x_t'][..., :64, :64], expected, atol=1e-5, rtol=0)


def test_scores_and_control_statistics_match_a_brute_force_computation(first_run):
    """content separability and haze 1-NN of every source, recomputed by brute force from the features each source
    gave; the control's mean, range and prior − control from those draws."""
    _, opt, summary, spy = first_run
    assert [block for block, _ in spy.built] == [opt['network_prior'], probe.control_options(opt['network_prior'], 0),
                                                  probe.control_options(opt['network_prior'], 1)]

    def brute(source, t, labels):
        return brute_force_nn(spy.get(source, t)['features'].double().flatten(1).numpy(), labels)

    for record in summary['records']:
        for metric, labels in (('content_separability', SCENE), ('haze_nn', IS_HAZY)):
            row, t = record['scores'][metric], record['t']
            prior, pixels = brute('init_seed 0', t, labels), brute('pixels', t, labels)
            controls = [brute('init_seed 1', t, labels), brute('init_seed 2', t, labels)]
            assert row['prior'] == pytest.approx(prior) and row['pixels'] == pytest.approx(pixels)
            assert row['control_draws'] == pytest.approx(controls)
            assert (row['control_mean'], row['control_min'], row['control_max']) == pytest.approx(
                (np.mean(controls), min(controls), max(controls)))
            assert row['prior_minus_control'] == pytest.approx(prior - np.mean(controls))


def test_cache_is_reused_without_building_anything_and_a_code_change_recomputes(first_run, monkeypatch):
    root, opt, _, first = first_run
    data = probe.load_pairs(probe.build_probe_dataset(opt['datasets']['probe']), opt['probe'])
    cache_dir = root / 'results' / 'probe_test' / 'cache'
    spy = Spy(monkeypatch)
    cached, _, computed = probe.all_features(opt, data, torch.device('cpu'), cache_dir)
    assert spy.passes == [] and spy.built == [] and sum(computed.values()) == 0  # the pixels' key needs no prior
    for label, source in (('prior', 'init_seed 0'), ('control0', 'init_seed 1'), ('control1', 'init_seed 2'),
                          ('pixels', 'pixels')):
        for t in (0, 500):  # the cache holds exactly what was computed
            assert torch.equal(torch.cat(cached[label][t]), first.get(source, t)['features'])

    monkeypatch.setattr(prior_cache, 'feature_code_digest', lambda: 'the prior family changed')
    spy = Spy(monkeypatch)
    probe.all_features(opt, data, torch.device('cpu'), cache_dir)
    assert sorted((p['source'], p['t']) for p in spy.passes) == [
        (s, t) for s in ('init_seed 0', 'init_seed 1', 'init_seed 2', 'pixels') for t in (0, 500)]


def test_feature_key_changes_with_everything_features_depend_on(monkeypatch):
    block = dict(COSINE_PRIOR)
    key = probe.feature_key(block, 500, 'data', 'per_image', torch.device('cpu'))
    others = [probe.feature_key({**block, 'init_seed': 1}, 500, 'data', 'per_image', torch.device('cpu')),
              probe.feature_key(block, 400, 'data', 'per_image', torch.device('cpu')),
              probe.feature_key(block, 500, 'other data', 'per_image', torch.device('cpu')),
              probe.feature_key(block, 500, 'data', 'shared', torch.device('cpu')),
              probe.feature_key(block, 500, 'data', 'per_image', torch.device('cuda')),
              probe.feature_key(block, 500, 'data', 'per_image', torch.device('cpu'), pixels=True)]
    monkeypatch.setattr(probe, 'probe_code_digest', lambda: 'the probe changed')
    others.append(probe.feature_key(block, 500, 'data', 'per_image', torch.device('cpu')))
    assert len({key, *others}) == len(others) + 1


def test_timesteps_are_checked_against_a_diffusers_schedulers_t_before_any_work(tmp_path, monkeypatch):
    pytest.importorskip('diffusers')
    from tests.test_diffusers_prior import STRIDE4, save_unet

    save_unet(tmp_path / 'unet', STRIDE4, steps=600)
    opt = probe.check_probe_options({
        **tiny_options(write_scene_pairs(tmp_path / 'data'), timesteps=[0, 700]),
        'network_prior': {'type': 'DiffusersUNetExtractor', 'diffusers': str(tmp_path / 'unet')}})
    spy = Spy(monkeypatch)
    with pytest.raises(probe.ProbeOptionError, match=r'probe\.timesteps.*\[0, 599\]'):
        probe.run_probe(opt, tmp_path)
    assert spy.passes == []


# ---------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize('change, named', [
    ({'probes': {}}, "'probes'"),
    ({'probe': {'decoder_iter': 3}}, "'decoder_iter'"),
    ({'probe': {'decoder_lr': '2e-3'}}, '2.0e-3'),
    ({'probe': {'noise': 'fresh'}}, 'probe.noise'),
    ({'probe': {'size': 66}}, 'probe.size'),
    ({'probe': {'max_pairs': 0}}, 'probe.max_pairs'),
    ({'network_prior': {'type': 'HSpaceExtractor', 'unett': 'adm_tiny'}}, "'unett'"),
    ({'network_prior': {'type': 'DiffLI2D'}}, 'GuidanceExtractor'),
    ({'datasets': {}}, 'datasets: probe:'),
    ({'datasets': {'probe': {'type': 'NoSuchDataset'}}}, "'NoSuchDataset'"),
])
def test_bad_options_name_the_key(tmp_path, change, named):
    with pytest.raises(probe.ProbeOptionError, match=named.replace('(', r'\(').replace('.', r'\.')):
        probe.check_probe_options({**tiny_options(tmp_path), **change})


def test_missing_pair_list_names_the_file(tmp_path):
    opt = probe.check_probe_options(tiny_options(tmp_path / 'nowhere'))
    with pytest.raises(probe.ProbeOptionError, match='pairs.txt'):
        probe.run_probe(opt, tmp_path)


def test_cli_prints_one_error_line(tmp_path):
    bad = tmp_path / 'bad.yml'
    bad.write_text('name: x\nnetwork_prior: {type: HSpaceExtractor, unet: adm_tiny, random_weights: true}\n'
                   'datasets: {probe: {type: PairListDataset}}\nprobe: {timestep: [0]}\n')
    result = subprocess.run([sys.executable, str(REPO_ROOT / 'tools' / 'hspace_probe.py'), '-opt', str(bad)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "'timestep'" in result.stderr and result.stderr.startswith('error:')


# ------------------------------------------------------------------ figures and log lines

def _probe_data(scenes: int) -> probe.ProbeData:
    return probe.ProbeData(torch.zeros(2 * scenes, 3, 8, 8), torch.zeros(scenes, 3, 8, 8),
                           np.repeat(np.arange(scenes), 2), [f'scene{i:02d}' for i in range(scenes)], [], '')


@pytest.mark.parametrize('scenes', [4, 25])
def test_tsne_figures_name_the_scenes(tmp_path, scenes):
    data = _probe_data(scenes)
    emb = np.random.default_rng(0).normal(size=(3 * scenes, 2))
    figures = [probe.plot_tsne(tmp_path / 'one.png', {k: emb for k in probe.SOURCES}, data, 0),
               probe.plot_tsne_overview(tmp_path / 'all.png', {0: {k: emb for k in probe.SOURCES}}, data)]
    for fig in figures:
        if scenes <= 20:  # a legend entry per scene, in the scatter's colours
            (legend,) = fig.legends
            assert [t.get_text() for t in legend.get_texts()] == data.names
            colours = probe._scene_colours(scenes)
            assert [tuple(h.get_color()) for h in legend.legend_handles] == [tuple(c) for c in colours]
        else:  # a colour bar whose ticks are scene names
            (bar,) = [ax for ax in fig.axes if ax.get_label() == '<colorbar>']
            ticks = [t.get_text() for t in bar.get_yticklabels()]
            assert ticks[0] == 'scene00' and ticks[-1] == f'scene{scenes - 1}' and set(ticks) <= set(data.names)


def test_random_weights_warning_names_the_control(tmp_path):
    """A control is random on purpose: its build logs that, naming it; the probed prior's own warning stays."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger('basicsr')
    level, disabled = logger.level, logger.disabled
    logger.addHandler(handler)
    # earlier tests may have left the shared logger at another level, or disabled by a library's logging dictConfig
    logger.setLevel(logging.INFO)
    logger.disabled = False
    try:
        prior = tiny_options(tmp_path)['network_prior']
        probe._built(probe.control_options(prior, draw=0), 'control (control0)', [0], torch.device('cpu'))
        control = [(r.levelno, r.getMessage()) for r in records]
        records.clear()
        probe._built(prior, 'prior', [0], torch.device('cpu'))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled
    assert (logging.INFO, 'probe control (control0): HSpaceExtractor has random weights on purpose, as the control '
                          'the prior is compared with') in control
    assert not [m for level, m in control if level >= logging.WARNING]
    assert [r.levelno for r in records if 'RANDOM weights' in r.getMessage()] == [logging.WARNING]
