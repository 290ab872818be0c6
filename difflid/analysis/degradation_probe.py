"""What h-space knows about the degradation type: the probe of ``difflid.analysis.probe`` on an all-in-one set.

An all-in-one DiffLI²D restores several degradations with one network guided by one frozen prior; it helps if the
prior's features tell the degradations apart. This measures that, per timestep t, beside the same controls as the
haze probe (``prior``, ``control_draws`` random-weight draws, ``pixels``: x_t in image space), by the same code
(features, noise windows, cache, scene bootstrap, verdicts: see probe.py's docstring).

Probe set: the P clean images of ``datasets.probe`` (a ``CleanImageDataset``: bundled photos or a folder), each
brought to ``size`` x ``size`` (``fit_image``) and then degraded by every one of the K blocks of
``probe.degradations``, drawn with ``Degradation.seeded(clean, probe.seed, <image name>)``: every run sees the same
P·K images, and the degradation is drawn at the resolution the prior sees (noise σ, streak widths in probe pixels).
The clean images themselves are not in the set. Label = the degradation's index (its ``task`` in reports);
scene = the image.

Scores per t and source (features standardised per dimension over all images, flattened or mean-pooled):

- ``degradation_nn``: leave-one-out 1-NN accuracy of the label. Chance, a random other image: (P - 1)/(PK - 1)
  (``nn_chance``). It is below chance when the nearest image is the same scene under another degradation (content
  dominates the features).
- ``degradation_separability``: balanced accuracy of a multinomial logistic regression (standardised features, L2,
  ``probe_c``), out of fold over a stratified k-fold grouped by scene (a scene never in the training and the test
  fold at once, so the probe cannot recognise the scene). Chance 1/K.

Both keep per-image outcomes (``PerImage``), so the scene bootstrap, prior − control intervals and verdicts are those
of the haze probe. Not run here: decoders D_t and t-SNE (they answer the haze probe's content questions).
Writes results/<name>/: probe.json, probe.csv, probe.md and separability.png; features cached in cache/.
"""
import csv
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from difflid.analysis.probe import (
    _CSV_COLUMNS,
    PerImage,
    ProbeData,
    ProbeOptionError,
    _csv_values,
    _device,
    _figure,
    all_features,
    build_probe_dataset,
    fit_image,
    flatten,
    grouped_folds,
    image_scores,
    nn_chance,
    nn_hits,
    run_record,
    scene_resamples,
    score_panel,
    score_table_lines,
    summarise_scores,
    verdict_statistics,
)
from difflid.data.degradations import build_degradation
from difflid.priors.builder import control_options
from difflid.utils.checkpoint_io import atomic_open

__all__ = ['DEGRADATION_METRICS', 'DegradedSet', 'degradation_predictions', 'degradation_scores', 'load_degraded',
           'run_degradation_probe']

DEGRADATION_METRICS = ('degradation_separability', 'degradation_nn')
_TITLES = {'degradation_separability': 'Degradation separability: grouped CV multinomial logistic probe, balanced '
                                       'accuracy',
           'degradation_nn': 'Degradation 1-NN: leave-one-out 1-NN accuracy of the degradation type'}


@dataclass
class DegradedSet:
    """The probe set: images (N, 3, S, S) in [0, 1], N = P·K in the order (image 0: degradation 0 .. K-1, image 1:
    ...); label (N,) the degradation index; scene (N,) the image index; names (P,) and tasks (K,) for reports;
    clean (P, 3, S, S) for the inputs' PSNR; digest: sha256 of the pixels and labels (cache key)."""

    images: torch.Tensor
    label: np.ndarray
    scene: np.ndarray
    names: list[str]
    tasks: list[str]
    clean: torch.Tensor
    digest: str

    def as_probe_data(self) -> ProbeData:
        """The haze probe's feature machinery takes (hazy, clear) stacks: every degraded image goes in the first,
        the second is empty, so that image k gets noise window k and the cache is keyed by these pixels."""
        return ProbeData(self.images, self.images[:0], self.scene, self.names,
                         [f'{self.names[s]} ({self.tasks[k]})' for s, k in zip(self.scene, self.label, strict=True)],
                         self.digest)


def _task_names(degradations: list) -> list[str]:
    """Each degradation's ``task``, made unique with its index where two share one (two noise levels)."""
    tasks = [d.task or type(d).__name__ for d in degradations]
    return [f'{t}#{k}' if tasks.count(t) > 1 else t for k, t in enumerate(tasks)]


def load_degraded(dataset: Any, blocks: list[dict], cfg: dict) -> DegradedSet:
    """Every clean image of ``dataset`` brought to ``size`` and degraded by every block, seeded by (seed, name)."""
    degradations = [build_degradation(dict(block)) for block in blocks]
    images, label, scene, names, clean = [], [], [], [], []
    for i in tqdm(range(len(dataset)), desc='probe: images', unit='image', leave=False):
        item = dataset[i]
        name = Path(str(item['gt_path'])).stem
        if name in names:
            raise ProbeOptionError(f'datasets.probe: two images are named {name!r}; the degradations are drawn from '
                                   'the name, so names must be unique')
        gt = fit_image(item['gt'], cfg['size'], cfg['crop'], str(item['gt_path']))
        hwc = gt.permute(1, 2, 0).numpy()
        for k, degradation in enumerate(degradations):
            lq = degradation.seeded(hwc, cfg['seed'], name)
            images.append(torch.from_numpy(np.ascontiguousarray(lq, dtype=np.float32)).permute(2, 0, 1).clamp(0, 1))
            label.append(k)
            scene.append(len(names))
        names.append(name)
        clean.append(gt)
    if len(names) < 2:
        raise ProbeOptionError(f'datasets.probe: {len(names)} clean image(s); the grouped probe needs at least 2')
    stack = torch.stack(images).contiguous()
    label_a, scene_a = np.asarray(label), np.asarray(scene)
    digest = hashlib.sha256(stack.numpy().tobytes() + label_a.tobytes() + scene_a.tobytes()).hexdigest()
    return DegradedSet(stack, label_a, scene_a, names, _task_names(degradations), torch.stack(clean), digest)


def degradation_predictions(x: np.ndarray, label: np.ndarray, groups: np.ndarray, folds: int = 4, seed: int = 0,
                            c: float = 1.0) -> np.ndarray:
    """Out-of-fold prediction of every image's label by a multinomial logistic regression on standardised features
    (lbfgs, L2 strength 1/c, balanced class weights), over a stratified k-fold grouped by scene.

    The fit runs on the coordinates of the standardised training rows in their own span (an SVD basis): the L2
    penalty does not change under rotation and the optimum lies in that span, so it is the same model with as many
    dimensions as training images instead of C·h·w (pixels at 128²: 49152), found much faster.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    label, groups = np.asarray(label), np.asarray(groups)
    predicted = np.empty_like(label)
    for train, test in grouped_folds(x, label, groups, folds, seed, 'degradation_separability'):
        scaler = StandardScaler().fit(x[train])
        z_train, z_test = scaler.transform(x[train]), scaler.transform(x[test])
        basis = np.linalg.svd(z_train, full_matrices=False)[2]  # (n_train, D), orthonormal rows
        model = LogisticRegression(C=c, max_iter=5000, class_weight='balanced')
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', ConvergenceWarning)
            model.fit(z_train @ basis.T, label[train])
        predicted[test] = model.predict(z_test @ basis.T)
    return predicted


def degradation_scores(x: np.ndarray, label: np.ndarray, scene: np.ndarray, cfg: dict) -> dict[str, PerImage]:
    """degradation_separability (balanced: classes = label) and degradation_nn of one feature matrix, per image."""
    right = degradation_predictions(x, label, scene, cfg['cv_folds'], cfg['seed'], cfg['probe_c']) == label
    return {'degradation_separability': PerImage(right.astype(np.float64), scene, label),
            'degradation_nn': PerImage(nn_hits(x, label), scene)}


def _recalls(outcome: PerImage, label: np.ndarray, tasks: list[str]) -> dict[str, float]:
    """Out-of-fold recall of each degradation (the mean of the right predictions among its images)."""
    return {task: float(outcome.values[label == k].mean()) for k, task in enumerate(tasks)}


def plot_degradation_curves(path: Path, records: list[dict], chance: dict[str, float], draws: int) -> None:
    """Both scores against t, as the haze probe's curves (prior with its interval, control band, pixels, chance)."""
    fig = _figure(11, 4)
    axes = fig.subplots(1, 2).ravel()
    titles = {'degradation_separability': 'degradation type: logistic probe (balanced acc.)',
              'degradation_nn': 'degradation type: 1-NN accuracy'}
    ts = [r['t'] for r in records]
    for ax, metric in zip(axes, DEGRADATION_METRICS, strict=True):
        score_panel(ax, ts, [r['scores'][metric] for r in records], titles[metric], chance[metric], 'chance', draws)
    fig.tight_layout()
    fig.savefig(path)


def write_degradation_reports(out_dir: Path, summary: dict) -> None:
    """probe.json (everything), probe.csv (a row per t and metric, as the haze probe's) and probe.md (tables with
    chance, the setup, the verdict rule, and the out-of-fold recall per degradation)."""
    records, draws = summary['records'], summary['control']['draws']
    with atomic_open(out_dir / 'probe.json', 'w') as f:
        f.write(json.dumps(summary, indent=2) + '\n')
    with atomic_open(out_dir / 'probe.csv', 'w') as f:
        writer = csv.writer(f, lineterminator='\n')
        writer.writerow(['t', 'metric', *_CSV_COLUMNS, *(f'control_draw{k}' for k in range(len(draws))), 'verdict',
                         'chance'])
        for r in records:
            for metric in DEGRADATION_METRICS:
                row = r['scores'][metric]
                writer.writerow([r['t'], metric, *(f'{v:.6f}' for v in _csv_values(row) + row['control_draws']),
                                 row['verdict'], f"{summary['chance'][metric]:.6f}"])
    ds, chance, stats = summary['dataset'], summary['chance'], summary['statistics']
    inputs = ', '.join(f'{task} {v:.2f} dB' for task, v in summary['degraded_input_psnr'].items())
    lines = [f"# h-space probe of the degradation type: {summary['name']}", '',
             f"- prior: `{json.dumps(summary['prior']['options'])}` ({summary['prior']['feature_channels']} channels, "
             f"stride {summary['prior']['downsample_factor']})",
             f"- control: {len(draws)} draws of the same with random weights (`control_options(network_prior, "
             f"draw=k)`, init_seed {', '.join(str(d['init_seed']) for d in draws)})",
             f"- pixels: {summary['pixels']['description']}",
             f"- data: {ds['scenes']} clean images ({', '.join(ds['scene_names'])}) x {len(ds['tasks'])} "
             f"degradations ({', '.join(ds['tasks'])}) = {ds['images']} images, {ds['size']}x{ds['size']} "
             f"({ds['crop']}); degraded input vs clean, mean PSNR: {inputs}",
             f"- noise: {ds['noise']}; features: {summary['features']}",
             f"- chance: degradation separability {chance['degradation_separability']:.3f} (1/K), degradation 1-NN "
             f"{chance['degradation_nn']:.3f} (random neighbour)",
             f"- intervals: {stats['bootstrap']}",
             f"- verdict: {stats['verdict_rule']}. {stats['verdict_note']}",
             f"- run: {summary['wall_s']:.0f} s, features {summary['feature_s']:.0f} s "
             f"({summary['features_computed']} computed, {summary['features_cached']} from the cache) on "
             f"{summary['device']}", '']
    for metric in DEGRADATION_METRICS:
        lines += score_table_lines(f'{_TITLES[metric]} (chance {chance[metric]:.3f})', metric, records, len(draws))
    tasks = ds['tasks']
    lines += ['## Out-of-fold recall per degradation (logistic probe): prior / control mean / pixels', '',
              '| t | ' + ' | '.join(tasks) + ' |', '|---|' + '---|' * len(tasks)]
    for r in records:
        rec = r['recall']
        lines.append(f"| {r['t']} | " + ' | '.join(
            f"{rec['prior'][task]:.2f} / {rec['control_mean'][task]:.2f} / {rec['pixels'][task]:.2f}"
            for task in tasks) + ' |')
    lines.append('')
    with atomic_open(out_dir / 'probe.md', 'w') as f:
        f.write('\n'.join(lines))


def run_degradation_probe(opt: dict, root: str | Path, device: str | None = None) -> dict:
    """Run the degradation probe of ``opt`` (``load_probe_options`` with ``probe.degradations``) and write
    results/<name>/ under ``root``. Returns the summary written to probe.json."""
    start = time.perf_counter()
    cfg = opt['probe']
    if not cfg.get('degradations'):
        raise ProbeOptionError(f"{opt.get('option_file')}: probe.degradations is not set: this is the haze probe "
                               '(difflid.analysis.probe.run_probe)')
    dev = _device(device or cfg['device'])
    out_dir = Path(root) / 'results' / opt['name']
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_degraded(build_probe_dataset(opt['datasets']['probe']), cfg['degradations'], cfg)

    feature_start = time.perf_counter()
    features, alphas, computed = all_features(opt, data.as_probe_data(), dev, out_dir / 'cache')
    feature_s = time.perf_counter() - feature_start
    controls = [label for label in features if label.startswith('control')]
    shape = features['prior'][cfg['timesteps'][0]][0].shape

    chance = {'degradation_separability': 1 / len(data.tasks), 'degradation_nn': nn_chance(data.label)}
    scene_counts = scene_resamples(len(data.names), cfg['bootstrap_samples'], cfg['seed'])
    records = []
    steps = tqdm(total=len(cfg['timesteps']) * len(features), desc='probe: analysis', unit='step')
    for t in cfg['timesteps']:
        outcomes = {}
        for label, feats in features.items():
            steps.set_postfix(t=t, source=label)
            x = flatten(feats[t][0], cfg['pooling'])
            outcomes[label] = degradation_scores(x, data.label, data.scene, cfg)
            steps.update()
        scores = {metric: summarise_scores(outcomes['prior'][metric], [outcomes[c][metric] for c in controls],
                                           outcomes['pixels'][metric], scene_counts) for metric in DEGRADATION_METRICS}
        recall = {label: _recalls(outcomes[label]['degradation_separability'], data.label, data.tasks)
                  for label in ('prior', 'pixels')}
        control_recalls = [_recalls(outcomes[c]['degradation_separability'], data.label, data.tasks) for c in controls]
        recall['control_mean'] = {task: float(np.mean([r[task] for r in control_recalls])) for task in data.tasks}
        records.append({'t': t, 'feature_shape': list(features['prior'][t][0].shape[1:]), 'scores': scores,
                        'recall': recall})
    steps.close()
    plot_degradation_curves(out_dir / 'separability.png', records, chance, len(controls))

    psnr, _ = image_scores(data.images, data.clean[data.scene])
    ds_opt = opt['datasets']['probe']
    draws = [control_options(opt['network_prior'], draw=k) for k in range(cfg['control_draws'])]
    summary = {
        'name': opt['name'], 'option_file': opt.get('option_file'), 'mode': 'degradation type',
        'prior': {'options': opt['network_prior'], 'feature_channels': shape[1],
                  'downsample_factor': math.ceil(cfg['size'] / shape[-1])},
        'control': {'options': draws[0], 'draws': draws,
                    'description': 'control_options(network_prior, draw=k): the same member and architecture with '
                                   'random weights, one init_seed per draw'},
        'pixels': {'description': "x_t in image space (3 x size x size), noised with the built prior's ᾱ_t and seed",
                   'alphas_cumprod': alphas},
        'dataset': {'options': ds_opt, 'type': ds_opt['type'], 'scenes': len(data.names), 'scene_names': data.names,
                    'degradations': cfg['degradations'], 'tasks': data.tasks, 'images': len(data.images),
                    'size': cfg['size'], 'crop': cfg['crop'], 'noise': cfg['noise'], 'digest': data.digest},
        'degraded_input_psnr': {task: float(psnr[data.label == k].mean()) for k, task in enumerate(data.tasks)},
        'features': ('standardised per dimension over all images; ' + (
            'flattened (C*h*w, the layout kept)' if cfg['pooling'] == 'flatten' else 'averaged over positions (C)')),
        'chance': chance,
        'chance_notes': {'degradation_separability': 'balanced accuracy of any input-blind classifier: 1/K',
                         'degradation_nn': 'mean over images of (n_label - 1) / (N - 1): a random other image'},
        'statistics': {
            'bootstrap': f"95 % percentile intervals over {cfg['bootstrap_samples']} resamples of the "
                         f"{len(data.names)} scenes (clean images, with replacement, seed {cfg['seed']}); per-image "
                         'outcomes are kept, not refitted; prior − control is paired (the same resampled scenes)',
            **verdict_statistics(cfg['bootstrap_samples'], len(controls))},
        **run_record(cfg, dev, start, feature_s, computed, len(features), records),
    }
    write_degradation_reports(out_dir, summary)
    return summary
