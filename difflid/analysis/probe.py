"""The h-space probe of DiffLI²D (Sec. 4.1, Eq. 5, Fig. 1, 2 and 7) as numbers, always beside its controls.

The paper reads h_t, the frozen prior's features of a hazy image x and of its clean y at timestep t, from
pictures: at small t a hazy image's h lands next to its clean twin's (content), around t = 500 hazy images
group together (haze), and decoders D_t trained on clean features only (Eq. 5) turn h_t^haz into images that
show the content or the haze. Pictures of a few dozen points are easy to over-read, and a network with
random weights shows structure too, so every measurement here runs, by the same code, on three sources:

- ``prior``: the ``network_prior`` block (any registered ``GuidanceExtractor``);
- ``control``: ``control_options(network_prior)``, the same extractor and architecture with random weights:
  what the architecture and the noise give without the prior's training;
- ``pixels``: image space, x_t itself at the same size with the same noise (Fig. 1's image-space maps).

Scores per timestep t and source (features standardised per dimension over all images):

- ``content_separability``: leave-one-out 1-NN accuracy of the scene label over all hazy and clear
  features (Euclidean). Chance, for a neighbour drawn at random among the others: the mean over images of
  (n_scene - 1) / (N - 1) (``nn_chance``).
- ``haze_separability``: balanced accuracy of a logistic-regression probe of hazy vs clear, out of fold over
  a stratified k-fold grouped by scene (a scene is never in the training and the test fold at once).
  Chance 0.5 (any input-blind classifier); balanced because there are more hazy than clear images.
- ``haze_nn``: leave-one-out 1-NN accuracy of the hazy/clear label, chance by the same formula; below
  chance when a hazy image's nearest neighbour is its clean twin (content dominates).
- ``decoder_*``: D_t (``FeatureDecoder``) is trained with L1 on the clear features only (Eq. 5) of the
  probed scenes themselves (as Fig. 2), then scored: PSNR/SSIM of D_t(h^haz) and D_t(h^cle) against the
  clean image, and of D_t(h^haz) against D_t(h^cle).

Features are flattened (C·h·w values: the layout is kept; ``pooling: mean`` averages over positions).
With ``noise: per_image`` (default) every image gets its own window of the seeded noise, as independent
draws of q(x_t|x_0) would (the paper's maps), reproducibly. ``noise: shared`` gives every image the
prior's seeded noise, as DiffLI²D sees it at test time; the images then differ only by sqrt(ᾱ_t)·(x - x'),
so pixel scores are the same at every t up to float rounding (standardising undoes that scale).

Features are cached under ``results/<name>/cache`` keyed by a hash of the source's options (and its
checkpoint file's size and time), the images' pixels after cropping, t and the noise mode.
"""
import csv
import hashlib
import inspect
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from difflid.metrics.float_metrics import calculate_psnr_float, calculate_ssim_float, float_image
from difflid.models.base_restoration import check_arch_options
from difflid.priors.base import GuidanceExtractor
from difflid.priors.builder import control_options
from difflid.utils.checkpoint_io import atomic_open, atomic_torch_save, weights_stamp
from difflid.utils.options import resolve_option_file

__all__ = ['METRICS', 'PROBE_DEFAULTS', 'SOURCES', 'FeatureDecoder', 'PixelSpace', 'ProbeData', 'ProbeOptionError',
           'build_extractor', 'check_probe_options', 'extract_features', 'haze_separability',
           'load_probe_options', 'nn_accuracy', 'nn_chance', 'run_probe', 'select_pairs', 'source_features',
           'standardize', 'train_decoder', 'tsne_embedding']

SOURCES = ('prior', 'control', 'pixels')
METRICS = ('content_separability', 'haze_separability', 'haze_nn', 'decoder_psnr_hazy', 'decoder_psnr_clear',
           'decoder_psnr_hazy_vs_clear', 'decoder_ssim_hazy', 'decoder_ssim_clear', 'decoder_ssim_hazy_vs_clear')
PROBE_DEFAULTS: dict[str, Any] = {
    'timesteps': [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999],
    'size': 128,             # side of the square every image is brought to, so features are comparable
    'crop': 'resize',        # 'resize': shorter side to `size`, then centre crop; 'center': centre crop only
    'max_pairs': None,       # use at most this many hazy images, spread over the scenes (select_pairs)
    'hazy_per_scene': None,  # and at most this many per clean image
    'noise': 'per_image',    # its own window of the seeded noise per image; 'shared': the same noise for all
    'pooling': 'flatten',    # 'flatten' (C*h*w, keeps the layout) or 'mean' (C, average over positions)
    'batch_size': 16,        # images per feature pass
    'device': 'auto',        # 'auto', 'cpu', 'cuda' or 'cuda:N'
    'seed': 0,               # scene order for max_pairs, CV folds, decoders, t-SNE
    'cv_folds': 4,           # folds of the grouped haze probe (at most the number of scenes)
    'probe_c': 1.0,          # inverse L2 strength of the logistic-regression haze probe
    'decoder_iters': 300,    # Adam steps of each decoder D_t
    'decoder_lr': 5.0e-3,
    'decoder_feat': 64,      # decoder width at the feature resolution (halved per up-sampling, at least 16)
    'decoder_batch': 16,
    'tsne_perplexity': 10.0,  # capped at (N - 1) / 3
    'grid_images': 2,        # hazy images shown in the decoder grids
}
_CHOICES = {'crop': ('resize', 'center'), 'noise': ('shared', 'per_image'), 'pooling': ('flatten', 'mean')}
_TOP_KEYS = ('name', 'network_prior', 'datasets', 'probe')
_CACHE_VERSION = 1
_COLOURS = {'prior': 'C0', 'control': 'C1', 'pixels': 'C2'}


class ProbeOptionError(ValueError):
    """A probe option file that cannot run as written; the tool prints it as one line."""


# ----------------------------------------------------------------------------------------------- options

def load_probe_options(path: str | Path) -> dict:
    """Read a probe option file (``_base_`` merged as tools/test.py does) and check it (``check_probe_options``)."""
    resolved = resolve_option_file(path)
    raw = yaml.safe_load(resolved.read_text(encoding='utf-8'))
    return check_probe_options(raw, str(path))


def _check_number(key: str, value: Any, kind: type, minimum: int = 0, allow_none: bool = False) -> None:
    """An integer >= ``minimum`` (kind int) or a number > 0 (kind float), or None where allowed."""
    if value is None and allow_none:
        return
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        wanted = 'a number > 0'
    else:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        wanted = f'an integer >= {minimum}'
    if not ok:
        hint = ' (write floats with a dot and a signed exponent, e.g. 2.0e-3: YAML reads 2e-3 as a string)' \
            if kind is float and isinstance(value, str) else ''
        raise ProbeOptionError(f'probe.{key}: expected {wanted}{" or ~" if allow_none else ""}, got {value!r}{hint}')


def check_probe_options(raw: Any, source: str = 'options') -> dict:
    """The option dict with ``probe`` defaults filled in; ProbeOptionError names the first bad key.

    Expected: ``name``, ``network_prior`` (a registered GuidanceExtractor), ``datasets: probe:`` (a paired
    dataset block) and an optional ``probe`` block (keys of ``PROBE_DEFAULTS``). The input is not mutated.
    """
    if not isinstance(raw, dict):
        raise ProbeOptionError(f'{source}: a probe option file holds a mapping at the top level')
    unknown = sorted(set(raw) - set(_TOP_KEYS) - {'_base_'})
    if unknown:
        raise ProbeOptionError(f'{source}: unknown top-level option(s) {unknown}; a probe option file has '
                               f'{list(_TOP_KEYS)}')
    if not isinstance(raw.get('name'), str) or not raw['name'] or '/' in raw['name']:
        raise ProbeOptionError(f"{source}: 'name' (the results folder results/<name>) must be a non-empty string "
                               f'without "/", got {raw.get("name")!r}')
    try:
        check_arch_options('network_prior', raw.get('network_prior'))
    except KeyError as err:
        raise ProbeOptionError(f'{source}: {err.args[0]}') from err
    prior_cls = ARCH_REGISTRY.get(raw['network_prior']['type'])
    if not (isinstance(prior_cls, type) and issubclass(prior_cls, GuidanceExtractor)):
        raise ProbeOptionError(f"{source}: network_prior.type must be a feature source (a GuidanceExtractor such as "
                               f"HSpaceExtractor), got {raw['network_prior']['type']!r}")
    datasets = raw.get('datasets')
    if not isinstance(datasets, dict) or not isinstance(datasets.get('probe'), dict):
        raise ProbeOptionError(f"{source}: needs a paired dataset block 'datasets: probe:' (e.g. type: PairListDataset "
                               'or SyntheticHazeDataset)')
    if set(datasets) != {'probe'}:
        raise ProbeOptionError(f"{source}: 'datasets' holds only 'probe', got {sorted(datasets)}")
    ds_type = datasets['probe'].get('type')
    if ds_type not in DATASET_REGISTRY:
        raise ProbeOptionError(f'{source}: datasets.probe.type: nothing named {ds_type!r} is registered; '
                               f'registered: {sorted(DATASET_REGISTRY.keys())}')
    block = raw.get('probe') or {}
    if not isinstance(block, dict):
        raise ProbeOptionError(f"{source}: 'probe' must be a mapping of {sorted(PROBE_DEFAULTS)}")
    unknown = sorted(set(block) - set(PROBE_DEFAULTS))
    if unknown:
        raise ProbeOptionError(f'{source}: unknown probe option(s) {unknown}; valid: {sorted(PROBE_DEFAULTS)}')
    cfg = {**PROBE_DEFAULTS, **block}
    ts = cfg['timesteps']
    if not isinstance(ts, list) or not ts or any(isinstance(t, bool) or not isinstance(t, int) for t in ts):
        raise ProbeOptionError(f'probe.timesteps: expected a non-empty list of integers, got {ts!r}')
    if len(set(ts)) != len(ts):
        raise ProbeOptionError(f'probe.timesteps: {ts} repeats a timestep')
    for key, choices in _CHOICES.items():
        if cfg[key] not in choices:
            raise ProbeOptionError(f'probe.{key}: must be one of {list(choices)}, got {cfg[key]!r}')
    for key, minimum in (('size', 8), ('batch_size', 1), ('cv_folds', 2), ('decoder_iters', 1), ('decoder_feat', 1),
                         ('decoder_batch', 1), ('grid_images', 0), ('seed', 0)):
        _check_number(key, cfg[key], int, minimum)
    for key in ('max_pairs', 'hazy_per_scene'):
        _check_number(key, cfg[key], int, 1, allow_none=True)
    for key in ('probe_c', 'decoder_lr', 'tsne_perplexity'):
        _check_number(key, cfg[key], float)
    if cfg['size'] % 4:
        raise ProbeOptionError(f"probe.size: must be a multiple of 4 (decoders work at size / 4), got {cfg['size']}")
    device = cfg['device']
    if not isinstance(device, str) or not (device in ('auto', 'cpu') or device.split(':')[0] == 'cuda'):
        raise ProbeOptionError(f"probe.device: must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return {'name': raw['name'], 'network_prior': dict(raw['network_prior']),
            'datasets': {'probe': dict(datasets['probe'])}, 'probe': cfg, 'option_file': source}


def _device(name: str) -> torch.device:
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name.startswith('cuda') and not torch.cuda.is_available():
        raise ProbeOptionError(f'probe.device: {name!r} asked for, but torch sees no CUDA device; use auto or cpu')
    return torch.device(name)


# -------------------------------------------------------------------------------------------------- data

@dataclass
class ProbeData:
    """The probed images, all ``size`` x ``size``, RGB in [0, 1].

    hazy: (N_h, 3, S, S), every hazy image once; clear: (N_c, 3, S, S), one per scene (identical clean
    images, e.g. the copies SyntheticHazeDataset writes per hazy version, are one scene); scene: (N_h,) the
    scene index of each hazy image; names: a name per scene; digest: sha256 of the pixels (cache key).
    """

    hazy: torch.Tensor
    clear: torch.Tensor
    scene: np.ndarray
    names: list[str]
    hazy_paths: list[str]
    digest: str

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """(scene, is_hazy) of the stacked [hazy; clear] images, the order of every feature matrix."""
        scene = np.concatenate([self.scene, np.arange(len(self.clear))])
        is_hazy = np.concatenate([np.ones(len(self.hazy), int), np.zeros(len(self.clear), int)])
        return scene, is_hazy


def build_probe_dataset(ds_opt: dict) -> Any:
    """The ``datasets.probe`` dataset in a non-training phase (whole images, no augmentation)."""
    opt = {'name': 'probe', 'scale': 1, 'io_backend': {'type': 'disk'}, **ds_opt, 'phase': 'val'}
    try:
        dataset = DATASET_REGISTRY.get(opt['type'])(opt)
    except (KeyError, FileNotFoundError, NotADirectoryError, ValueError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise ProbeOptionError(f"datasets.probe ({opt['type']}): {message}") from err
    if len(dataset) == 0:
        raise ProbeOptionError(f"datasets.probe ({opt['type']}): the dataset is empty")
    return dataset


def _gt_keys(dataset: Any) -> list[str]:
    """The GT file of every pair, without reading images where the dataset lists them."""
    if hasattr(dataset, 'pairs'):  # PairListDataset
        return [str(gt) for _, gt in dataset.pairs]
    if hasattr(dataset, 'paths'):  # basicsr's PairedImageDataset and SyntheticHazeDataset
        return [str(p['gt_path']) for p in dataset.paths]
    return [str(dataset[i]['gt_path']) for i in range(len(dataset))]


def select_pairs(gt_keys: list[str], max_pairs: int | None, hazy_per_scene: int | None, seed: int) -> list[int]:
    """Indices of the pairs to probe, ordered by GT file then index (independent of the order in which a folder
    was listed): at most ``hazy_per_scene`` per GT, and at most ``max_pairs`` taken round-robin over the GTs in a
    seeded order, so a subset of ITS (10 hazy per clear) covers many scenes."""
    groups: dict[str, list[int]] = {}
    for i, key in sorted(enumerate(gt_keys), key=lambda item: (item[1], item[0])):
        groups.setdefault(key, []).append(i)
    members = [groups[k][:hazy_per_scene] for k in groups]
    order = np.random.default_rng(seed).permutation(len(members)) if max_pairs else range(len(members))
    chosen: list[int] = []
    for k in range(max(len(m) for m in members)):
        chosen += [members[g][k] for g in order if k < len(members[g])]
    rank = {i: r for r, i in enumerate(i for m in members for i in m)}
    return sorted(chosen[:max_pairs] if max_pairs else chosen, key=rank.__getitem__)


def fit_image(img: torch.Tensor, size: int, crop: str, path: str = '') -> torch.Tensor:
    """(3, H, W) -> (3, size, size): ``crop: resize`` scales the shorter side to ``size`` (antialiased bilinear) and
    crops the centre, so the whole scene is seen; ``crop: center`` crops the centre of the original pixels."""
    h, w = img.shape[-2:]
    if crop == 'resize' and min(h, w) != size:
        scale = size / min(h, w)
        shape = (max(size, round(h * scale)), max(size, round(w * scale)))
        img = F.interpolate(img[None], size=shape, mode='bilinear', antialias=True, align_corners=False)[0]
        h, w = shape
    elif min(h, w) < size:
        raise ProbeOptionError(f'probe.crop: center: {path or "an image"} is {w}x{h}, smaller than probe.size {size}; '
                               'use crop: resize or a smaller size')
    top, left = (h - size) // 2, (w - size) // 2
    return img[:, top:top + size, left:left + size].clamp(0, 1).contiguous()


def load_pairs(dataset: Any, cfg: dict) -> ProbeData:
    """Read the selected pairs, bring them to ``size`` x ``size`` and group them into scenes by clean pixels."""
    indices = select_pairs(_gt_keys(dataset), cfg['max_pairs'], cfg['hazy_per_scene'], cfg['seed'])
    hazy, clear, scene, names, paths = [], [], [], [], []
    by_pixels: dict[str, int] = {}
    for i in tqdm(indices, desc='probe: images', unit='pair', leave=False):
        item = dataset[i]
        lq = fit_image(item['lq'], cfg['size'], cfg['crop'], item['lq_path'])
        gt = fit_image(item['gt'], cfg['size'], cfg['crop'], item['gt_path'])
        key = hashlib.sha256(gt.numpy().tobytes()).hexdigest()
        if key not in by_pixels:
            by_pixels[key] = len(clear)
            clear.append(gt)
            names.append(Path(item['gt_path']).stem)
        hazy.append(lq)
        scene.append(by_pixels[key])
        paths.append(str(item['lq_path']))
    if len(clear) < 2:
        raise ProbeOptionError(f'datasets.probe: the selected pairs show {len(clear)} clean image(s); content '
                               'separability needs at least 2 scenes')
    hazy_t, clear_t = torch.stack(hazy), torch.stack(clear)
    digest = hashlib.sha256(hazy_t.numpy().tobytes() + clear_t.numpy().tobytes()
                            + np.asarray(scene).tobytes()).hexdigest()
    return ProbeData(hazy_t, clear_t, np.asarray(scene), names, paths, digest)


# ------------------------------------------------------------------------------------------------ sources

class PixelSpace(GuidanceExtractor):
    """Image space as a feature source: x_t itself (3 channels, stride 1), noised by the base exactly as the
    prior noises its input, so the pixel control goes through the same code as the networks."""

    @property
    def feature_channels(self) -> int:
        return 3

    @property
    def downsample_factor(self) -> int:
        return 1

    def _features(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x_t


_NOISE_KEYS = ('seed', 'num_diffusion_steps', 'beta_start', 'beta_end')


def source_options(prior_opt: dict) -> dict[str, dict]:
    """The option block of each source: the prior, its control (``control_options``) and the pixel space with the
    prior's noise schedule and seed (defaults taken from the prior class's signature)."""
    params = inspect.signature(ARCH_REGISTRY.get(prior_opt['type'])).parameters
    base = inspect.signature(GuidanceExtractor).parameters
    noise = {k: prior_opt.get(k, (params[k] if k in params else base[k]).default) for k in _NOISE_KEYS}
    return {'prior': dict(prior_opt), 'control': control_options(prior_opt), 'pixels': {'type': 'PixelSpace', **noise}}


def build_extractor(opt: dict) -> GuidanceExtractor:
    """A frozen feature source from its option block (``PixelSpace`` for the pixel control)."""
    if opt['type'] == 'PixelSpace':
        return PixelSpace(**{k: v for k, v in opt.items() if k != 'type'})
    return build_network(dict(opt))


def extract_features(extractor: GuidanceExtractor, images: torch.Tensor, t: int, batch_size: int,
                     device: torch.device, noise: str = 'per_image') -> torch.Tensor:
    """Features at t of (N, 3, S, S) images in [0, 1] -> (N, C, h, w) float32 on the CPU, in mini-batches.

    ``noise: per_image`` noises image k with the window of the seeded noise at (top, left) = ((k + 1)·step, 0)
    (one origin per image, still one batched pass), so no two images share noise and every run draws the same.
    """
    out = []
    step = images.shape[-2] + extractor.downsample_factor
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device)
        origin = (0, 0) if noise == 'shared' else [((start + k + 1) * step, 0) for k in range(len(batch))]
        out.append(extractor(batch, origin=origin, timesteps=[t])[t].cpu())
    return torch.cat(out)


def cache_key(source_opt: dict, t: int, data_digest: str, noise: str) -> str:
    """sha256 of everything the features depend on: the source's options and weights file, the pixels, t, noise."""
    payload = {'version': _CACHE_VERSION, 'source': source_opt, 'weights': weights_stamp(source_opt), 't': t,
               'data': data_digest, 'noise': noise}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def source_features(label: str, source_opt: dict, data: ProbeData, cfg: dict, device: torch.device,
                    cache_dir: Path) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], int]:
    """({t: (hazy features, clear features)} of one source at every probed t, how many t were computed): from the
    cache where the key matches; the extractor is built only when some t is missing, and freed afterwards."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    keys = {t: cache_key(source_opt, t, data.digest, cfg['noise']) for t in cfg['timesteps']}
    files = {t: cache_dir / f'{label}_t{t:04d}_{keys[t][:16]}.pt' for t in keys}
    feats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for t, path in files.items():
        if path.is_file():
            stored = torch.load(path, map_location='cpu', weights_only=True)
            if stored.get('key') == keys[t]:
                feats[t] = (stored['hazy'], stored['clear'])
    missing = [t for t in keys if t not in feats]
    if missing:
        extractor = build_extractor(source_opt).to(device)
        images = torch.cat([data.hazy, data.clear])
        for t in tqdm(missing, desc=f'probe: {label} features', unit='t', leave=False):
            out = extract_features(extractor, images, t, cfg['batch_size'], device, cfg['noise'])
            feats[t] = (out[:len(data.hazy)].contiguous(), out[len(data.hazy):].contiguous())
            atomic_torch_save({'key': keys[t], 'hazy': feats[t][0], 'clear': feats[t][1]}, files[t])
        del extractor
    return {t: feats[t] for t in cfg['timesteps']}, len(missing)


# ---------------------------------------------------------------------------------------------- separability

def flatten(features: torch.Tensor, pooling: str = 'flatten') -> np.ndarray:
    """(N, C, h, w) -> (N, C·h·w) ('flatten') or (N, C) ('mean' over positions), float64."""
    x = features.double()
    return (x.mean(dim=(2, 3)) if pooling == 'mean' else x.flatten(1)).numpy()


def standardize(x: np.ndarray) -> np.ndarray:
    """Z-score every dimension over the images; dimensions that do not vary (std <= 1e-9 of the largest) become 0,
    so rounding noise in a constant dimension is not blown up to unit variance."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std(axis=0)
    scale = np.where(std > 1e-9 * max(std.max(initial=0.0), 1e-300), std, np.inf)
    return (x - x.mean(axis=0)) / scale


def nn_accuracy(x: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out 1-NN accuracy: the share of images whose nearest other image (Euclidean distance of the
    standardised features; ties to the lower index) has the same label."""
    z = standardize(x)
    sq = (z * z).sum(axis=1)
    dist = sq[:, None] + sq[None, :] - 2 * z @ z.T
    np.fill_diagonal(dist, np.inf)
    labels = np.asarray(labels)
    return float(np.mean(labels[dist.argmin(axis=1)] == labels))


def nn_chance(labels: np.ndarray) -> float:
    """Expected ``nn_accuracy`` when the neighbour is another image drawn at random: mean of (n_label - 1) / (N - 1)."""
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return float(np.mean((counts[inverse] - 1) / (len(labels) - 1)))


def haze_separability(x: np.ndarray, is_hazy: np.ndarray, groups: np.ndarray, folds: int = 4, seed: int = 0,
                      c: float = 1.0) -> float:
    """Balanced accuracy of a linear hazy-vs-clear probe (standardise, L2 logistic regression with balanced class
    weights), predicted out of fold over a stratified k-fold grouped by scene; chance 0.5."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    is_hazy, groups = np.asarray(is_hazy), np.asarray(groups)
    splits = min(folds, len(np.unique(groups)))
    if splits < 2:
        raise ValueError(f'haze_separability needs at least 2 scenes, got {len(np.unique(groups))}')
    predicted = np.empty_like(is_hazy)
    cv = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed)
    for train, test in cv.split(x, is_hazy, groups):
        # liblinear's dual solver: fast when there are far more dimensions than images (flattened features)
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, solver='liblinear', dual=x.shape[1] > len(x),
                                                                   max_iter=5000, class_weight='balanced'))
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', ConvergenceWarning)
            probe.fit(x[train], is_hazy[train])
        predicted[test] = probe.predict(x[test])
    return float(balanced_accuracy_score(is_hazy, predicted))


def separability_scores(x: np.ndarray, data: ProbeData, cfg: dict) -> dict[str, float]:
    """content_separability, haze_separability and haze_nn of one feature matrix (rows: hazy, then clear)."""
    scene, is_hazy = data.labels()
    return {'content_separability': nn_accuracy(x, scene),
            'haze_separability': haze_separability(x, is_hazy, scene, cfg['cv_folds'], cfg['seed'], cfg['probe_c']),
            'haze_nn': nn_accuracy(x, is_hazy)}


def tsne_embedding(x: np.ndarray, perplexity: float = 10.0, seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) t-SNE of the standardised features (PCA to 50 dimensions first when D is larger)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    z = standardize(x)
    if z.shape[1] > 50:
        z = PCA(n_components=min(50, len(z) - 1), random_state=seed).fit_transform(z)
    tsne = TSNE(n_components=2, perplexity=min(perplexity, (len(z) - 1) / 3), init='pca', learning_rate='auto',
                random_state=seed)
    return tsne.fit_transform(z)


# ------------------------------------------------------------------------------------------------ decoders

class FeatureDecoder(nn.Module):
    """D_t of Eq. 5: features (N, C, h, w) at stride s -> image (N, 3, S, S).

    The input is normalised per channel with the statistics of the clear training features (h-space and pixel
    magnitudes differ by orders). The convolutions run at S/4 and below: features coarser than that go
    through a 1x1 and a 3x3 convolution and one (x2 nearest up-sampling, 3x3 convolution) stage per factor 2
    down to S/4; finer ones (pixels, s = 1) are pixel-unshuffled to S/4 first. A 3x3 convolution to 48
    channels and a x4 pixel shuffle give RGB, cropped to S x S (features of padded inputs cover more than
    the image). Nothing convolves at full resolution, so a decoder trains in seconds on a CPU.

    Args:
        in_ch: Feature channels C.
        stride: s, a power of 2 (S / h rounded up).
        size: Output side S.
        num_feat: Width at the coarsest resolution; halved per up-sampling stage, at least 16.
        mean, std: (C,) per-channel statistics of the training features.
    """

    SHUFFLE = 4

    def __init__(self, in_ch: int, stride: int, size: int, num_feat: int, mean: torch.Tensor,
                 std: torch.Tensor) -> None:
        super().__init__()
        self.size = size
        self.register_buffer('mean', mean.reshape(1, -1, 1, 1).float())
        self.register_buffer('std', std.reshape(1, -1, 1, 1).float().clamp_min(1e-6))
        unshuffle = max(1, self.SHUFFLE // stride)
        self.unshuffle = nn.PixelUnshuffle(unshuffle) if unshuffle > 1 else nn.Identity()
        ch = in_ch * unshuffle ** 2
        layers: list[nn.Module] = [nn.Conv2d(ch, num_feat, 1), nn.GELU(), nn.Conv2d(num_feat, num_feat, 3, padding=1),
                                   nn.GELU()]
        ch = num_feat
        for k in range(max(0, round(math.log2(stride / self.SHUFFLE)))):
            out = max(16, num_feat >> (k + 1))
            layers += [nn.Upsample(scale_factor=2, mode='nearest'), nn.Conv2d(ch, out, 3, padding=1), nn.GELU()]
            ch = out
        layers += [nn.Conv2d(ch, 3 * self.SHUFFLE ** 2, 3, padding=1), nn.PixelShuffle(self.SHUFFLE)]
        self.body = nn.Sequential(*layers)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        out = self.body(self.unshuffle((feats - self.mean) / self.std))
        if min(out.shape[-2:]) < self.size:  # cannot happen for power-of-2 strides; kept for odd members
            out = F.interpolate(out, size=(self.size, self.size), mode='bilinear', align_corners=False)
        return out[..., :self.size, :self.size]


def train_decoder(feats: torch.Tensor, targets: torch.Tensor, iters: int, lr: float, num_feat: int,
                  batch_size: int, seed: int, device: torch.device) -> FeatureDecoder:
    """Fit D_t with L1 (Eq. 5) from clear features (N, C, h, w) to clean images (N, 3, S, S); seeded, so the same
    inputs give the same decoder. Adam with a cosine-annealed learning rate."""
    size = targets.shape[-1]
    stride = 2 ** max(0, math.ceil(math.log2(size / feats.shape[-1]) - 1e-9))
    if feats.shape[-1] * stride % FeatureDecoder.SHUFFLE and stride < FeatureDecoder.SHUFFLE:
        raise ValueError(f'decoder: features {tuple(feats.shape[-2:])} at stride {stride} cannot be pixel-unshuffled '
                         f'by {FeatureDecoder.SHUFFLE // stride}; use a probe.size that is a multiple of 4')
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = FeatureDecoder(feats.shape[1], stride, size, num_feat, feats.mean(dim=(0, 2, 3)),
                                 feats.std(dim=(0, 2, 3))).to(device)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iters)
    feats, targets = feats.to(device), targets.to(device)
    bar = tqdm(range(iters), desc='probe: decoder', unit='it', leave=False)
    for _ in bar:
        idx = torch.randperm(len(feats), generator=gen)[:batch_size].to(device)
        loss = F.l1_loss(decoder(feats[idx]), targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        bar.set_postfix(l1=f'{loss.item():.4f}', refresh=False)
    return decoder.eval().requires_grad_(False)


@torch.no_grad()
def decode(decoder: FeatureDecoder, feats: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """D_t(feats) in [0, 1] on the CPU."""
    return torch.cat([decoder(feats[i:i + batch_size].to(device)).clamp(0, 1).cpu()
                      for i in range(0, len(feats), batch_size)])


def image_scores(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM of image pairs (N, 3, S, S) in [0, 1], with difflid's float metrics (basicsr's
    formulas without 8-bit rounding)."""
    psnr = [calculate_psnr_float(float_image(x), float_image(y)) for x, y in zip(a, b, strict=True)]
    ssim = [calculate_ssim_float(float_image(x), float_image(y)) for x, y in zip(a, b, strict=True)]
    return float(np.mean(psnr)), float(np.mean(ssim))


def decoder_scores(r_hazy: torch.Tensor, r_clear: torch.Tensor, data: ProbeData) -> dict[str, float]:
    """Scores of r^haz = D_t(h^haz) and r^cle = D_t(h^cle) against the clean images and each other."""
    clean_of_hazy, r_clear_of_hazy = data.clear[data.scene], r_clear[data.scene]
    out = {}
    for name, (a, b) in {'hazy': (r_hazy, clean_of_hazy), 'clear': (r_clear, data.clear),
                         'hazy_vs_clear': (r_hazy, r_clear_of_hazy)}.items():
        out[f'decoder_psnr_{name}'], out[f'decoder_ssim_{name}'] = image_scores(a, b)
    return out


# --------------------------------------------------------------------------------------------------- figures

def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # object API: no pyplot state, renders with Agg on savefig

    return Figure(figsize=(width, height), dpi=100)


def _scene_colours(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps['tab20' if n <= 20 else 'turbo']
    return [cmap(i if n <= 20 else i / max(n - 1, 1)) for i in range(n)]


def _tsne_panel(ax: Any, emb: np.ndarray, data: ProbeData, title: str) -> None:
    scene, is_hazy = data.labels()
    colours = _scene_colours(len(data.clear))
    for hazy, marker, label in ((0, 'o', 'clear'), (1, '^', 'hazy')):
        sel = is_hazy == hazy
        ax.scatter(emb[sel, 0], emb[sel, 1], c=[colours[s] for s in scene[sel]], marker=marker, s=28 if hazy else 46,
                   edgecolors='k' if not hazy else 'none', linewidths=0.6, label=label)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_tsne(path: Path, embeddings: dict[str, np.ndarray], data: ProbeData, t: int) -> None:
    """One t: a panel per source, colour = scene, circle = clear, triangle = hazy (Fig. 1)."""
    fig = _figure(4 * len(embeddings), 4.2)
    axes = fig.subplots(1, len(embeddings), squeeze=False)[0]
    for ax, (label, emb) in zip(axes, embeddings.items(), strict=True):
        _tsne_panel(ax, emb, data, f'{label}, t = {t}')
    axes[0].legend(loc='best', fontsize=8)
    fig.suptitle('t-SNE: colour = scene, o = clear, ^ = hazy', fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def plot_tsne_overview(path: Path, embeddings: dict[int, dict[str, np.ndarray]], data: ProbeData) -> None:
    """Every t side by side, a row per source (Fig. 7)."""
    ts = list(embeddings)
    fig = _figure(2.2 * len(ts), 2.3 * len(SOURCES))
    axes = fig.subplots(len(SOURCES), len(ts), squeeze=False)
    for j, t in enumerate(ts):
        for i, label in enumerate(SOURCES):
            _tsne_panel(axes[i, j], embeddings[t][label], data, f'{label} t={t}')
    fig.tight_layout()
    fig.savefig(path)


def plot_curves(path: Path, records: list[dict], chance: dict[str, float], hazy_psnr: float) -> None:
    """Scores against t for prior, control and pixels, with chance (or the hazy input's PSNR) dashed."""
    panels = (('content_separability', 'content separability (1-NN scene acc.)', chance['content_separability']),
              ('haze_separability', 'haze separability (balanced acc.)', chance['haze_separability']),
              ('decoder_psnr_hazy', 'PSNR(D_t(h_haz), clean) [dB]', hazy_psnr),
              ('decoder_psnr_hazy_vs_clear', 'PSNR(D_t(h_haz), D_t(h_cle)) [dB]', None))
    ts = [r['t'] for r in records]
    fig = _figure(11, 7.5)
    axes = fig.subplots(2, 2).ravel()
    for ax, (metric, title, reference) in zip(axes, panels, strict=True):
        for label in SOURCES:
            values = [r[metric] if label == 'prior' else r[label][metric] for r in records]
            ax.plot(ts, values, marker='o', color=_COLOURS[label], label=label)
        if reference is not None:
            ax.axhline(reference, color='grey', linestyle='--',
                       label='chance' if metric.endswith('separability') else 'hazy input')
        ax.set_title(title, fontsize=10)
        ax.set_xlabel('t')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def plot_decoder_grid(path: Path, label: str, examples: list[int], data: ProbeData,
                      recon: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Fig. 2c: per example, a row clean | r^cle per t and a row hazy | r^haz per t."""
    ts = list(recon)
    fig = _figure(1.6 * (len(ts) + 1), 1.75 * 2 * len(examples))
    axes = fig.subplots(2 * len(examples), len(ts) + 1, squeeze=False)
    for e, i in enumerate(examples):
        rows = ((data.clear[data.scene[i]], 'clean', 'r_cle', 1), (data.hazy[i], 'hazy', 'r_haz', 0))
        for r, (first, first_name, rec_name, which) in enumerate(rows):
            row = axes[2 * e + r]
            row[0].imshow(first.permute(1, 2, 0).numpy())
            row[0].set_title(f'{first_name} ({data.names[data.scene[i]]})' if r == 0 else first_name, fontsize=7)
            for ax, t in zip(row[1:], ts, strict=True):
                ax.imshow(recon[t][which][e].permute(1, 2, 0).numpy())
                ax.set_title(f'{rec_name} t={t}', fontsize=7)
    for ax in axes.ravel():
        ax.axis('off')
    fig.suptitle(f'decoders D_t trained on clear features only ({label})', fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


# --------------------------------------------------------------------------------------------------- reports

def _fmt(value: float, metric: str) -> str:
    return f'{value:.2f}' if 'psnr' in metric else f'{value:.3f}'


def write_reports(out_dir: Path, summary: dict) -> None:
    """probe.json (everything), probe.csv (a row per t: each metric for prior, control, pixels, prior - control)
    and probe.md (the same as tables, with the chance levels and the setup)."""
    records = summary['records']
    with atomic_open(out_dir / 'probe.json', 'w') as f:
        f.write(json.dumps(summary, indent=2) + '\n')
    columns = ['t'] + [f'{m}{s}' for m in METRICS for s in ('', '_control', '_pixels', '_minus_control')]
    with atomic_open(out_dir / 'probe.csv', 'w') as f:
        writer = csv.writer(f, lineterminator='\n')
        writer.writerow(columns)
        for r in records:
            writer.writerow([r['t']] + [f'{v:.6f}' for m in METRICS for v in
                                        (r[m], r['control'][m], r['pixels'][m], r['minus_control'][m])])
    ds, chance = summary['dataset'], summary['chance']
    lines = [f"# h-space probe: {summary['name']}", '',
             f"- prior: `{json.dumps(summary['prior']['options'])}` ({summary['prior']['feature_channels']} channels, "
             f"stride {summary['prior']['downsample_factor']})",
             f"- control: the same with random weights: `{json.dumps(summary['control']['options'])}`",
             f"- pixels: {summary['pixels']['description']}",
             f"- data: {ds['hazy_images']} hazy images of {ds['scenes']} scenes ({ds['type']}), "
             f"{ds['size']}x{ds['size']} ({ds['crop']}); hazy input vs clean: "
             f"PSNR {summary['hazy_input']['psnr']:.2f} dB, SSIM {summary['hazy_input']['ssim']:.3f}",
             f"- noise: {ds['noise']}; features: {summary['features']}",
             f"- chance: content separability {chance['content_separability']:.3f} (random neighbour), "
             f"haze separability {chance['haze_separability']:.3f}, haze 1-NN {chance['haze_nn']:.3f}",
             f"- run: {summary['wall_s']:.0f} s, features {summary['feature_s']:.0f} s "
             f"({summary['features_computed']} computed, {summary['features_cached']} from the cache) on "
             f"{summary['device']}", '',
             'Read the prior − control column: a network with random weights separates content and haze too, and '
             'only what the prior adds beyond it can be credited to its training.', '']
    titles = {'content_separability': 'Content separability: leave-one-out 1-NN scene accuracy over hazy + clear',
              'haze_separability': 'Haze separability: grouped CV logistic probe, balanced accuracy (chance 0.5)',
              'haze_nn': 'Haze 1-NN: leave-one-out 1-NN hazy/clear accuracy (low = hazy next to its clean twin)',
              'decoder_psnr_hazy': 'Decoder: PSNR(D_t(h^haz), clean) [dB]',
              'decoder_psnr_clear': 'Decoder: PSNR(D_t(h^cle), clean) [dB] (trained on these)',
              'decoder_psnr_hazy_vs_clear': 'Decoder: PSNR(D_t(h^haz), D_t(h^cle)) [dB]',
              'decoder_ssim_hazy': 'Decoder: SSIM(D_t(h^haz), clean)',
              'decoder_ssim_clear': 'Decoder: SSIM(D_t(h^cle), clean)',
              'decoder_ssim_hazy_vs_clear': 'Decoder: SSIM(D_t(h^haz), D_t(h^cle))'}
    for metric in METRICS:
        lines += [f'## {titles[metric]}', '', '| t | prior | control | pixels | prior − control |',
                  '|---|---|---|---|---|']
        lines += [f"| {r['t']} | {_fmt(r[metric], metric)} | {_fmt(r['control'][metric], metric)} | "
                  f"{_fmt(r['pixels'][metric], metric)} | {r['minus_control'][metric]:+.3f} |" for r in records]
        lines.append('')
    with atomic_open(out_dir / 'probe.md', 'w') as f:
        f.write('\n'.join(lines))


# ------------------------------------------------------------------------------------------------------- run

def _grid_examples(data: ProbeData, count: int) -> list[int]:
    """Hazy images of ``count`` different scenes, spread over the scene list."""
    firsts = [int(np.flatnonzero(data.scene == s)[0]) for s in range(len(data.clear))]
    picks = np.linspace(0, len(firsts) - 1, min(count, len(firsts))).round().astype(int)
    return [firsts[p] for p in dict.fromkeys(picks.tolist())]


def run_probe(opt: dict, root: str | Path, device: str | None = None) -> dict:
    """Run the probe of ``opt`` (from ``load_probe_options``) and write results/<name>/ under ``root``.

    Returns the summary written to probe.json.
    """
    start = time.perf_counter()
    cfg = opt['probe']
    dev = _device(device or cfg['device'])
    out_dir = Path(root) / 'results' / opt['name']
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_pairs(build_probe_dataset(opt['datasets']['probe']), cfg)
    options = source_options(opt['network_prior'])
    try:  # the range check every extractor makes, before any work (same T as the prior: source_options)
        PixelSpace(**{k: v for k, v in options['pixels'].items() if k != 'type'}).check_timesteps(cfg['timesteps'])
    except ValueError as err:
        raise ProbeOptionError(f'probe.timesteps: {err}') from err

    feature_start, computed = time.perf_counter(), 0
    features = {}
    for label in SOURCES:
        features[label], n = source_features(label, options[label], data, cfg, dev, out_dir / 'cache')
        computed += n
    feature_s = time.perf_counter() - feature_start
    shape = features['prior'][cfg['timesteps'][0]][0].shape
    prior_info = {'options': options['prior'], 'feature_channels': shape[1],
                  'downsample_factor': math.ceil(cfg['size'] / shape[-1])}

    scene, is_hazy = data.labels()
    chance = {'content_separability': nn_chance(scene), 'haze_separability': 0.5, 'haze_nn': nn_chance(is_hazy)}
    hazy_psnr, hazy_ssim = image_scores(data.hazy, data.clear[data.scene])
    examples = _grid_examples(data, cfg['grid_images'])
    records, embeddings = [], {}
    recon: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {label: {} for label in SOURCES}
    steps = tqdm(total=len(cfg['timesteps']) * len(SOURCES), desc='probe: analysis', unit='step')
    for t in cfg['timesteps']:
        scores, embeddings[t] = {}, {}
        for label in SOURCES:
            steps.set_postfix(t=t, source=label)
            h_hazy, h_clear = features[label][t]
            x = flatten(torch.cat([h_hazy, h_clear]), cfg['pooling'])
            scores[label] = separability_scores(x, data, cfg)
            decoder = train_decoder(h_clear, data.clear, cfg['decoder_iters'], cfg['decoder_lr'], cfg['decoder_feat'],
                                    cfg['decoder_batch'], cfg['seed'] + t, dev)
            r_hazy = decode(decoder, h_hazy, cfg['decoder_batch'], dev)
            r_clear = decode(decoder, h_clear, cfg['decoder_batch'], dev)
            scores[label].update(decoder_scores(r_hazy, r_clear, data))
            recon[label][t] = (r_hazy[examples], r_clear[data.scene[examples]])
            embeddings[t][label] = tsne_embedding(x, cfg['tsne_perplexity'], cfg['seed'])
            steps.update()
        records.append({'t': t, 'feature_shape': list(features['prior'][t][0].shape[1:]), **scores['prior'],
                        'control': scores['control'], 'pixels': scores['pixels'],
                        'minus_control': {m: scores['prior'][m] - scores['control'][m] for m in METRICS}})
        plot_tsne(out_dir / f'tsne_t{t:04d}.png', embeddings[t], data, t)
    steps.close()

    plot_tsne_overview(out_dir / 'tsne_overview.png', embeddings, data)
    plot_curves(out_dir / 'separability.png', records, chance, hazy_psnr)
    if examples:
        for label in SOURCES:
            plot_decoder_grid(out_dir / f'decoder_grid_{label}.png', label, examples, data, recon[label])
    ds_opt = opt['datasets']['probe']
    summary = {
        'name': opt['name'], 'option_file': opt.get('option_file'),
        'prior': prior_info,
        'control': {'options': options['control'], 'description': 'control_options(network_prior): the same '
                    'extractor and architecture with random weights'},
        'pixels': {'options': options['pixels'], 'description': "x_t in image space (3 x size x size), noised "
                   "with the prior's seed and schedule"},
        'dataset': {'options': ds_opt, 'type': ds_opt['type'], 'hazy_images': len(data.hazy),
                    'scenes': len(data.clear), 'scene_names': data.names, 'size': cfg['size'], 'crop': cfg['crop'],
                    'noise': cfg['noise'], 'digest': data.digest, 'hazy_paths': data.hazy_paths},
        'features': ('standardised per dimension over all images; ' + (
            'flattened (C*h*w, the layout kept)' if cfg['pooling'] == 'flatten' else 'averaged over positions (C)')),
        'chance': chance,
        'chance_notes': {
            'content_separability': 'mean over images of (n_scene - 1) / (N - 1): a random other image',
            'haze_separability': 'balanced accuracy of any input-blind classifier',
            'haze_nn': 'mean over images of (n_label - 1) / (N - 1)'},
        'hazy_input': {'psnr': hazy_psnr, 'ssim': hazy_ssim},
        'probe': cfg, 'device': str(dev),
        'wall_s': time.perf_counter() - start, 'feature_s': feature_s,
        'features_computed': computed, 'features_cached': len(SOURCES) * len(cfg['timesteps']) - computed,
        'records': records,
    }
    write_reports(out_dir, summary)
    return summary
