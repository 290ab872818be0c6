"""The h-space probe (difflid/analysis/probe.py, tools/hspace_probe.py): separability against independent
computations, the end-to-end run and its control, the feature cache, and option errors."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from difflid.analysis import probe
from difflid.priors.noise import position_noise
from difflid.priors.schedules import linear_alphas_cumprod

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


# ---------------------------------------------------------------------------------- pixel source, noise

def test_pixel_space_is_the_noised_image():
    img = torch.rand(2, 3, 16, 20)
    pixels = probe.build_extractor({'type': 'PixelSpace', 'seed': 3, 'num_diffusion_steps': 1000,
                                    'beta_start': 1e-4, 'beta_end': 0.02})
    a = linear_alphas_cumprod()[500].float()
    expected = a.sqrt() * (2 * img - 1) + (1 - a).sqrt() * position_noise(3, [500], 3, 16, 20)[0]
    feats = probe.extract_features(pixels, img, 500, batch_size=1, device=torch.device('cpu'), noise='shared')
    assert torch.allclose(feats, expected, atol=1e-5)
    per_image = probe.extract_features(pixels, img, 500, batch_size=2, device=torch.device('cpu'))  # the default
    step = 16 + pixels.downsample_factor
    window = position_noise(3, [500], 3, 16, 20, origin=(2 * step, 0))[0]  # image 1: its own window
    assert torch.allclose(per_image[1], a.sqrt() * (2 * img[1] - 1) + (1 - a).sqrt() * window, atol=1e-5)
    shared = probe.extract_features(pixels, img[[0, 0]], 500, 2, torch.device('cpu'), noise='shared')
    own = probe.extract_features(pixels, img[[0, 0]], 500, 2, torch.device('cpu'), noise='per_image')
    assert torch.equal(shared[0], shared[1]) and not torch.allclose(own[0], own[1])


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
                  'cv_folds': 2, 'tsne_perplexity': 2.0, 'grid_images': 1, 'device': 'cpu', **probe_opts},
    }


class Spy:
    """Records the option blocks sources are built from and the extractors features are computed with."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.controls, self.built, self.extracted = [], [], []
        control, build, extract = probe.control_options, probe.build_extractor, probe.extract_features

        def control_spy(opt):
            self.controls.append(control(opt))
            return self.controls[-1]

        def build_spy(opt):
            self.built.append((opt, build(opt)))
            return self.built[-1][1]

        def extract_spy(extractor, *args, **kwargs):
            self.extracted.append(extractor)
            return extract(extractor, *args, **kwargs)

        mp.setattr(probe, 'control_options', control_spy)
        mp.setattr(probe, 'build_extractor', build_spy)
        mp.setattr(probe, 'extract_features', extract_spy)

    def extracted_with(self, opt: dict) -> int:
        """How many feature passes used an extractor built from ``opt``."""
        ids = {id(e) for o, e in self.built if o == opt}
        return sum(id(e) in ids for e in self.extracted)


@pytest.fixture(scope='module')
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('probe')
    opt = probe.check_probe_options(tiny_options(write_scene_pairs(root / 'data')))
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
    assert report['chance']['content_separability'] == pytest.approx(probe.nn_chance(np.array([0, 0, 1, 1, 2, 2, 3, 3,
                                                                                             0, 1, 2, 3])))
    assert report['chance']['haze_separability'] == 0.5
    assert report['dataset']['hazy_images'] == 8 and report['dataset']['scenes'] == 4
    assert [r['t'] for r in report['records']] == [0, 500]
    for record in report['records']:
        for key in ('t', 'content_separability', 'haze_separability', 'decoder_psnr_hazy', 'decoder_psnr_clear'):
            assert key in record
        for side in ('control', 'pixels'):
            assert set(probe.METRICS) <= set(record[side])
        for metric in probe.METRICS:
            assert record['minus_control'][metric] == pytest.approx(record[metric] - record['control'][metric])
            assert np.isfinite(record[metric])
        assert 0 <= record['content_separability'] <= 1 and 0 <= record['haze_separability'] <= 1
    rows = list(csv.DictReader((out / 'probe.csv').open()))
    assert [int(r['t']) for r in rows] == [0, 500] and 'content_separability_minus_control' in rows[0]
    md = (out / 'probe.md').read_text()
    assert 'prior − control' in md and 'chance' in md
    assert summary['features_computed'] == 6 and summary['features_cached'] == 0


def test_control_is_built_from_control_options_and_measured_the_same_way(first_run):
    _, opt, summary, spy = first_run
    control = probe.control_options(opt['network_prior'])
    assert spy.controls == [control]
    assert control['random_weights'] and control['init_seed'] == opt['network_prior']['init_seed'] + 1
    # the same feature function, once per timestep, for the prior, the control and the pixels
    assert spy.extracted_with(opt['network_prior']) == 2
    assert spy.extracted_with(control) == 2
    assert sum(isinstance(e, probe.PixelSpace) for e in spy.extracted) == 2
    prior_h = [r['decoder_psnr_clear'] for r in summary['records']]
    control_h = [r['control']['decoder_psnr_clear'] for r in summary['records']]
    assert prior_h != control_h  # a different network, not the prior measured twice


def test_cache_is_reused_and_a_changed_option_recomputes(first_run, monkeypatch):
    root, opt, first, _ = first_run
    spy = Spy(monkeypatch)
    again = probe.run_probe(opt, root)
    assert spy.extracted == [] and again['features_cached'] == 6
    assert again['records'] == first['records']  # the cache holds exactly what was computed

    changed = probe.check_probe_options({**tiny_options(Path(opt['datasets']['probe']['dataroot'])),
                                         'network_prior': {**opt['network_prior'], 'init_seed': 5}})
    spy = Spy(monkeypatch)
    probe.run_probe(changed, root)
    control = probe.control_options(changed['network_prior'])
    assert spy.extracted_with(changed['network_prior']) == 2 and spy.extracted_with(control) == 2
    assert not any(isinstance(e, probe.PixelSpace) for e in spy.extracted)  # pixels do not depend on init_seed


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
