"""The h-space probe of DiffLI²D (Sec. 4.1, Eq. 5, Fig. 1, 2 and 7) as numbers, always beside its controls.

The paper reads h_t, the frozen prior's features of a hazy image x and of its clean y at timestep t, from
pictures: at small t a hazy image's h lands next to its clean twin's (content), around t = 500 hazy images
group together (haze), and decoders D_t trained on clean features only (Eq. 5) turn h_t^haz into images that
show the content or the haze. Pictures of a few dozen points are easy to over-read, and a network with
random weights shows structure too, so every measurement here runs, by the same code, on these sources:

- ``prior``: the ``network_prior`` block, built by ``build_prior`` (any registered ``GuidanceExtractor``);
- ``control``: ``control_draws`` random-weight controls, ``control_options(network_prior, draw=k)``: the same member
  and architecture with random weights, each draw seeded differently. One random network is one draw of a
  distribution, so the control is reported as the mean and the range over the draws;
- ``pixels``: image space, x_t itself at the same size (Fig. 1's image-space maps), made from the built prior
  (``PixelSpace.like``): its ᾱ_t (a cosine preset's or a diffusers scheduler's, not a default linear one) and its
  noise seed.

Noise: with ``noise: per_image`` (default) image k of the probe (hazy images, then clear ones) is noised with the
window of the seeded, position-indexed noise whose top-left is ``image_origins`` (k·2·size, 0), for every source
alike: ε at an image pixel (y, x) is the noise at origin + (y, x), so image k gets the same ε from the prior, every
control and the pixels, and no two images share noise (a source pads an image by less than ``size``).
``noise: shared`` gives every image the prior's test-time window at (0, 0); the images then differ only by
sqrt(ᾱ_t)·(x - x'), so pixel scores are the same at every t up to float rounding (standardising undoes that scale).

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

Uncertainty (``PerImage``, ``scene_resamples``): every score is a mean (or a balanced accuracy) of per-image
outcomes (1-NN hit, out-of-fold prediction right, PSNR of one image), which are kept. The bootstrap resamples
*scenes* with replacement (``bootstrap_samples`` times, seeded by ``seed``) and recomputes each score from the
outcomes of the images of the drawn scenes: the images of one scene (its hazy versions and its clean image) are
not independent draws, so resampling images would give intervals that are too narrow. The outcomes stay those of
the whole set (1-NN and the haze probe are not refitted: duplicated images would be each other's neighbours), so an
interval shows how much the score depends on which scenes were probed. Intervals are 95 % percentile intervals.
prior − control is the prior's score minus the mean of the control draws, bootstrapped with the same resampled
scenes for both (paired). The verdict says ``above control`` (or ``below control``) only when the prior's score
lies outside the range of the control draws AND the 95 % interval of prior − control excludes 0; otherwise
``not distinguished``.

Features are cached under ``results/<name>/cache``, keyed (``feature_key``) by ``prior_cache_key`` of the source's
option block (its options, weight files' size and time, device type and dtype, difflid and torch versions, and
``feature_code_digest``: the prior family's code), the probe's own feature code (``probe_code_digest``), the images'
pixels after cropping, t and the noise mode; the pixels' features are keyed on the prior's block, so they are
found without building the prior. A change of any of these computes the features again.
"""
import csv
import hashlib
import inspect
import json
import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from difflid.data.degradations import build_degradation
from difflid.metrics.float_metrics import calculate_psnr_float, calculate_ssim_float, float_image
from difflid.models.base_restoration import check_arch_options
from difflid.priors.base import GuidanceExtractor
from difflid.priors.builder import build_prior, control_options
from difflid.priors.cache import prior_cache_key
from difflid.utils.checkpoint_io import atomic_open, atomic_torch_save
from difflid.utils.options import resolve_option_file
from difflid.utils.precision import resolve_dtype

__all__ = ['METRICS', 'PROBE_DEFAULTS', 'SOURCES', 'FeatureDecoder', 'PerImage', 'PixelSpace', 'ProbeData',
           'ProbeOptionError', 'all_features', 'check_probe_options', 'extract_features', 'feature_key',
           'grouped_folds', 'haze_predictions', 'haze_separability', 'image_origins', 'load_probe_options',
           'nn_accuracy', 'nn_chance', 'nn_hits', 'probe_code_digest', 'run_probe', 'run_record', 'scene_resamples',
           'score_panel', 'select_pairs', 'standardize', 'summarise_scores', 'train_decoder', 'tsne_embedding',
           'verdict']

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
    'seed': 0,               # scene order for max_pairs, CV folds, decoders, t-SNE, bootstrap
    'control_draws': 3,      # random-weight controls (control_options draw 0, 1, ...): mean and range
    'bootstrap_samples': 2000,  # scene resamples behind every 95 % interval
    'cv_folds': 4,           # folds of the grouped haze probe (at most the number of scenes)
    'probe_c': 1.0,          # inverse L2 strength of the logistic-regression haze probe
    'decoder_iters': 300,    # Adam steps of each decoder D_t
    'decoder_lr': 5.0e-3,
    'decoder_feat': 64,      # decoder width at the feature resolution (halved per up-sampling, at least 16)
    'decoder_batch': 16,
    'tsne_perplexity': 10.0,  # capped at (N - 1) / 3
    'grid_images': 2,        # hazy images shown in the decoder grids
    'degradations': None,    # degradation blocks: probe the degradation type instead (degradation_probe.py)
}
_CHOICES = {'crop': ('resize', 'center'), 'noise': ('shared', 'per_image'), 'pooling': ('flatten', 'mean')}
_TOP_KEYS = ('name', 'network_prior', 'datasets', 'probe')
_CACHE_FORMAT = 2  # bump when a cache entry's layout changes (the code that computes features is in the key anyway)
_COLOURS = {'prior': 'C0', 'control': 'C1', 'pixels': 'C2'}
_VERDICTS = ('above control', 'below control', 'not distinguished')
# options of the haze probe's pair selection, decoders and t-SNE, which the degradation probe does not run
_HAZE_ONLY = ('max_pairs', 'hazy_per_scene', 'decoder_iters', 'decoder_lr', 'decoder_feat', 'decoder_batch',
              'tsne_perplexity', 'grid_images')


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
                         ('decoder_batch', 1), ('grid_images', 0), ('seed', 0), ('control_draws', 1),
                         ('bootstrap_samples', 100)):
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
    if cfg['degradations'] is not None:
        _check_degradation_mode(cfg, block, datasets['probe'], source)
    return {'name': raw['name'], 'network_prior': dict(raw['network_prior']),
            'datasets': {'probe': dict(datasets['probe'])}, 'probe': cfg, 'option_file': source}


def _check_degradation_mode(cfg: dict, block: dict, ds_opt: dict, source: str) -> None:
    """``probe.degradations``: at least 2 distinct, buildable degradation blocks, a clean-image dataset, and none of
    the haze probe's own options (they would be ignored)."""
    blocks = cfg['degradations']
    if not isinstance(blocks, list) or len(blocks) < 2:
        raise ProbeOptionError('probe.degradations: expected a list of at least 2 degradation blocks, e.g. '
                               f'[{{type: HazeDegradation}}, {{type: GaussianNoise, sigma: 25}}], got {blocks!r}')
    for i, deg in enumerate(blocks):
        try:
            build_degradation(deg if not isinstance(deg, dict) else dict(deg))
        except (KeyError, TypeError, ValueError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            raise ProbeOptionError(f'probe.degradations[{i}]: {message}') from err
    repeated = [i for i, deg in enumerate(blocks) if deg in blocks[:i]]
    if repeated:
        raise ProbeOptionError(f'probe.degradations[{repeated[0]}]: repeats an earlier block ({blocks[repeated[0]]}); '
                               'two identical degradations cannot be told apart')
    if ds_opt.get('type') != 'CleanImageDataset':
        raise ProbeOptionError(f"{source}: with probe.degradations, datasets.probe.type must be CleanImageDataset (the "
                               f"probe degrades the clean images itself), got {ds_opt.get('type')!r}")
    ignored = [key for key in _HAZE_ONLY if key in block]
    if ignored:
        raise ProbeOptionError(f'probe.{ignored[0]}: not used with probe.degradations (no pair selection, decoders or '
                               f't-SNE in the degradation probe); remove {ignored}')


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
    """Image space as a feature source: x_t itself (3 channels, stride 1), noised by the base exactly as a prior
    noises its input. Made from the built prior (``like``), so that pixels get the prior's ᾱ_t and noise seed.

    Args:
        alphas_cumprod: ᾱ_t of the schedule, (T,).
        seed: Seed of the position-indexed noise.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, seed: int = 0) -> None:
        super().__init__(timesteps=[0], num_diffusion_steps=len(alphas_cumprod), seed=seed, dtype='fp32')
        self.set_schedule(alphas_cumprod)

    @classmethod
    def like(cls, prior: GuidanceExtractor) -> 'PixelSpace':
        """The pixel source of ``prior``: its ᾱ_t (whatever set it: a preset, a scheduler config) and its seed."""
        return cls(prior.alphas_cumprod.detach().cpu(), prior.seed)

    @property
    def feature_channels(self) -> int:
        return 3

    @property
    def downsample_factor(self) -> int:
        return 1

    def _features(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x_t


# kept for tests/test_diffusion_prior.py, which builds the probe's prior through the probe


def image_origins(first: int, count: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of the noise windows of images ``first`` .. ``first + count - 1`` of the probe (hazy, then clear)
    under ``noise: per_image``: image k at (k·2·size, 0).

    The same for every source whatever its stride or padding, so image k gets the same ε from all of them; windows
    2·size apart never overlap while a source pads an image by less than ``size``.
    """
    return [((first + k) * 2 * size, 0) for k in range(count)]


def extract_features(extractor: GuidanceExtractor, images: torch.Tensor, t: int, batch_size: int,
                     device: torch.device, noise: str = 'per_image') -> torch.Tensor:
    """Features at t of (N, 3, S, S) images in [0, 1] -> (N, C, h, w) float32 on the CPU, in mini-batches.

    ``noise: per_image`` noises image k with its window at ``image_origins`` (one origin per image, still one batched
    pass); ``shared`` gives every image the window at (0, 0), the prior's test-time noise.
    """
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device)
        origin = (0, 0) if noise == 'shared' else image_origins(start, len(batch), images.shape[-2])
        out.append(extractor(batch, origin=origin, timesteps=[t])[t].cpu())
    return torch.cat(out)


@cache
def probe_code_digest() -> str:
    """sha256 of the probe's own code that turns images into features (the pixel source, the noise layout, the
    batched extraction): part of every feature key, beside the prior family's ``feature_code_digest``."""
    source = ''.join(inspect.getsource(obj) for obj in (PixelSpace, image_origins, extract_features))
    return hashlib.sha256(source.encode()).hexdigest()


def feature_key(block: dict, t: int, data_digest: str, noise: str, device: torch.device, pixels: bool = False) -> str:
    """sha256 of everything one source's features at t depend on: ``prior_cache_key`` of its option block (options,
    weight files, device type, dtype, versions, the prior family's code), the probe's code, the pixels, t and the
    noise mode. ``pixels``: the key of the pixel source made from the prior of ``block``."""
    device = torch.device(device)
    payload = {'format': _CACHE_FORMAT, 'source': 'pixels of the prior' if pixels else 'network',
               'prior': prior_cache_key(block, device, resolve_dtype(block.get('dtype', 'auto'), device)),
               'probe_code': probe_code_digest(), 't': t, 'data': data_digest, 'noise': noise}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


Features = dict[int, tuple[torch.Tensor, torch.Tensor]]


def _cache_file(cache_dir: Path, label: str, t: int, key: str) -> Path:
    return cache_dir / f'{label}_t{t:04d}_{key[:16]}.pt'


def read_cached(cache_dir: Path, label: str, keys: dict[int, str]) -> tuple[Features, dict[int, float]]:
    """The cached features ({t: (hazy, clear)}) of one source whose stored key matches, and the ᾱ_t they were
    noised with."""
    feats, alphas = {}, {}
    for t, key in keys.items():
        path = _cache_file(cache_dir, label, t, key)
        if path.is_file():
            stored = torch.load(path, map_location='cpu', weights_only=True)
            if stored.get('key') == key:
                feats[t], alphas[t] = (stored['hazy'], stored['clear']), float(stored['alpha_cumprod'])
    return feats, alphas


def compute_features(extractor: GuidanceExtractor, label: str, keys: dict[int, str], data: ProbeData, cfg: dict,
                     device: torch.device, cache_dir: Path) -> tuple[Features, dict[int, float]]:
    """Features of ``extractor`` at every t of ``keys``, each written to the cache with its key, and the ᾱ_t."""
    images = torch.cat([data.hazy, data.clear])
    feats, alphas = {}, {}
    for t, key in tqdm(keys.items(), desc=f'probe: {label} features', unit='t', leave=False):
        out = extract_features(extractor, images, t, cfg['batch_size'], device, cfg['noise'])
        feats[t] = (out[:len(data.hazy)].contiguous(), out[len(data.hazy):].contiguous())
        alphas[t] = float(extractor.alphas_cumprod[t])
        atomic_torch_save({'key': key, 'hazy': feats[t][0], 'clear': feats[t][1], 'alpha_cumprod': alphas[t]},
                          _cache_file(cache_dir, label, t, key))
    return feats, alphas


@contextmanager
def _random_on_purpose(label: str) -> Iterator[None]:
    """While a control is built: the members' "RANDOM weights ... fine for tests and demos only" warning is about a
    prior that should have been trained; for the control, random weights are the point. It is logged as information
    that names the control, so a warning left in the log is about the probed prior."""
    def note(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if 'RANDOM weights' in message:
            owner = message.split(':')[0]
            record.msg = f'probe {label}: {owner} has random weights on purpose, as the control the prior is ' \
                         'compared with'
            record.args = None
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True

    logger = logging.getLogger('basicsr')  # where the members log (difflid.priors.adm and the others)
    logger.addFilter(note)
    try:
        yield
    finally:
        logger.removeFilter(note)


def _built(block: dict, label: str, timesteps: list[int], device: torch.device) -> GuidanceExtractor:
    """``build_prior(block)`` on ``device``, after checking the probed timesteps against the built source's own T
    (a diffusers scheduler's, not the option's)."""
    if label.startswith('control'):
        with _random_on_purpose(label):
            extractor = build_prior(block)
    else:
        extractor = build_prior(block)
    try:
        extractor.check_timesteps(timesteps)
    except ValueError as err:
        raise ProbeOptionError(f'probe.timesteps: {err} (the {label})') from err
    return extractor.to(device)


def all_features(opt: dict, data: ProbeData, device: torch.device,
                 cache_dir: Path) -> tuple[dict[str, Features], dict[int, float], dict[str, int]]:
    """({label: {t: (hazy, clear)}} for 'prior', 'control0' .. and 'pixels'; the ᾱ_t the pixels were noised with;
    how many t of each source were computed). Cached features are read without building anything; the prior is
    built when it or the pixels miss a t (the pixel source is made from it), each control when it misses one, one
    network at a time."""
    cfg, prior_block = opt['probe'], opt['network_prior']
    cache_dir.mkdir(parents=True, exist_ok=True)
    blocks = {'prior': prior_block, **{f'control{k}': control_options(prior_block, draw=k)
                                       for k in range(cfg['control_draws'])}, 'pixels': prior_block}
    feats, alphas, missing = {}, {}, {}
    for label, block in blocks.items():
        keys = {t: feature_key(block, t, data.digest, cfg['noise'], device, pixels=label == 'pixels')
                for t in cfg['timesteps']}
        feats[label], alphas[label] = read_cached(cache_dir, label, keys)
        missing[label] = {t: key for t, key in keys.items() if t not in feats[label]}

    def compute(source: GuidanceExtractor, label: str) -> None:
        new, new_alphas = compute_features(source, label, missing[label], data, cfg, device, cache_dir)
        feats[label].update(new)
        alphas[label].update(new_alphas)

    if missing['prior'] or missing['pixels']:
        prior = _built(prior_block, 'prior', cfg['timesteps'], device)
        compute(prior, 'prior')
        compute(PixelSpace.like(prior).to(device), 'pixels')
        del prior
    for label in blocks:
        if label.startswith('control') and missing[label]:
            control = _built(blocks[label], f'control ({label})', cfg['timesteps'], device)
            compute(control, label)
            del control
    ordered = {label: {t: feats[label][t] for t in cfg['timesteps']} for label in blocks}
    return ordered, {t: alphas['pixels'][t] for t in cfg['timesteps']}, {k: len(v) for k, v in missing.items()}


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


def nn_hits(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Leave-one-out 1-NN outcome of every image: 1.0 where its nearest other image (Euclidean distance of the
    standardised features; ties to the lower index) has the same label, else 0.0."""
    z = standardize(x)
    sq = (z * z).sum(axis=1)
    dist = sq[:, None] + sq[None, :] - 2 * z @ z.T
    np.fill_diagonal(dist, np.inf)
    labels = np.asarray(labels)
    return (labels[dist.argmin(axis=1)] == labels).astype(np.float64)


def nn_accuracy(x: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out 1-NN accuracy: the mean of ``nn_hits``."""
    return float(nn_hits(x, labels).mean())


def nn_chance(labels: np.ndarray) -> float:
    """Expected ``nn_accuracy`` when the neighbour is another image drawn at random: mean of (n_label - 1) / (N - 1)."""
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return float(np.mean((counts[inverse] - 1) / (len(labels) - 1)))


def grouped_folds(x: np.ndarray, label: np.ndarray, groups: np.ndarray, folds: int, seed: int,
                  caller: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, test) indices of a stratified k-fold grouped by scene (a scene is never in both), with one fold per
    scene when there are fewer scenes than ``folds``; a ValueError naming ``caller`` below 2 scenes."""
    from sklearn.model_selection import StratifiedGroupKFold

    scenes = len(np.unique(groups))
    splits = min(folds, scenes)
    if splits < 2:
        raise ValueError(f'{caller} needs at least 2 scenes, got {scenes}')
    return list(StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed).split(x, label, groups))


def haze_predictions(x: np.ndarray, is_hazy: np.ndarray, groups: np.ndarray, folds: int = 4, seed: int = 0,
                     c: float = 1.0) -> np.ndarray:
    """Out-of-fold hazy/clear prediction of every image by a linear probe (standardise, L2 logistic regression with
    balanced class weights), over a stratified k-fold grouped by scene (a scene is never in both folds)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    is_hazy, groups = np.asarray(is_hazy), np.asarray(groups)
    predicted = np.empty_like(is_hazy)
    for train, test in grouped_folds(x, is_hazy, groups, folds, seed, 'haze_separability'):
        # liblinear's dual solver: fast when there are far more dimensions than images (flattened features)
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, solver='liblinear', dual=x.shape[1] > len(x),
                                                                   max_iter=5000, class_weight='balanced'))
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', ConvergenceWarning)
            probe.fit(x[train], is_hazy[train])
        predicted[test] = probe.predict(x[test])
    return predicted


def haze_separability(x: np.ndarray, is_hazy: np.ndarray, groups: np.ndarray, folds: int = 4, seed: int = 0,
                      c: float = 1.0) -> float:
    """Balanced accuracy of ``haze_predictions``; chance 0.5."""
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(is_hazy, haze_predictions(x, is_hazy, groups, folds, seed, c)))


@dataclass
class PerImage:
    """One score kept as per-image outcomes, so that it can be recomputed on resampled scenes.

    values: (N,) the outcome of each image (a 1-NN hit, a right prediction, a PSNR); scene: (N,) its scene index;
    classes: (N,) class labels for a balanced accuracy (the mean over classes of the class's mean ``values``), or
    None for a plain mean over images.
    """

    values: np.ndarray
    scene: np.ndarray
    classes: np.ndarray | None = None

    def resampled(self, scene_counts: np.ndarray) -> np.ndarray:
        """The score under each row of scene weights (B, n_scenes) (how often each scene was drawn) -> (B,)."""
        weights = np.asarray(scene_counts, dtype=np.float64)[:, self.scene]
        values = np.asarray(self.values, dtype=np.float64)
        if self.classes is None:
            return (weights * values).sum(axis=1) / weights.sum(axis=1)
        recalls = [(weights[:, m] * values[m]).sum(axis=1) / weights[:, m].sum(axis=1)
                   for m in (np.asarray(self.classes) == c for c in np.unique(self.classes))]
        return np.mean(recalls, axis=0)

    def score(self) -> float:
        """The score on the probed images themselves (every scene once)."""
        return float(self.resampled(np.ones((1, int(np.max(self.scene)) + 1)))[0])


def scene_resamples(scenes: int, samples: int, seed: int) -> np.ndarray:
    """(samples, scenes) counts: row b says how often each scene is in bootstrap sample b (``scenes`` scenes drawn
    with replacement, seeded)."""
    draws = np.random.default_rng(seed).integers(0, scenes, size=(samples, scenes))
    counts = np.zeros((samples, scenes))
    np.add.at(counts, (np.arange(samples)[:, None], draws), 1)
    return counts


def interval(samples: np.ndarray) -> list[float]:
    """The 95 % percentile interval of bootstrap samples."""
    low, high = np.percentile(samples, [2.5, 97.5])
    return [float(low), float(high)]


def verdict(prior: float, controls: Sequence[float], minus_control_ci: Sequence[float]) -> str:
    """'above control' when the prior's score is above every control draw AND the 95 % interval of prior - control
    lies above 0; 'below control' the same way down; 'not distinguished' otherwise."""
    if prior > max(controls) and minus_control_ci[0] > 0:
        return 'above control'
    if prior < min(controls) and minus_control_ci[1] < 0:
        return 'below control'
    return 'not distinguished'


def summarise_scores(prior: PerImage, controls: Sequence[PerImage], pixels: PerImage,
                     scene_counts: np.ndarray) -> dict[str, Any]:
    """One metric at one t: the prior's score and interval, the control draws (each, mean, min, max), the pixels'
    score and interval, prior - control mean with its paired interval (the same resampled scenes for both), and
    the verdict."""
    prior_score, control_scores = prior.score(), [c.score() for c in controls]
    prior_samples = prior.resampled(scene_counts)
    control_samples = np.mean([c.resampled(scene_counts) for c in controls], axis=0)
    difference_ci = interval(prior_samples - control_samples)
    return {'prior': prior_score, 'prior_ci': interval(prior_samples),
            'control_mean': float(np.mean(control_scores)), 'control_min': min(control_scores),
            'control_max': max(control_scores), 'control_draws': control_scores,
            'pixels': pixels.score(), 'pixels_ci': interval(pixels.resampled(scene_counts)),
            'prior_minus_control': prior_score - float(np.mean(control_scores)),
            'prior_minus_control_ci': difference_ci,
            'verdict': verdict(prior_score, control_scores, difference_ci)}


def separability_scores(x: np.ndarray, data: ProbeData, cfg: dict) -> dict[str, PerImage]:
    """content_separability, haze_separability and haze_nn of one feature matrix (rows: hazy, then clear), per
    image."""
    scene, is_hazy = data.labels()
    right = haze_predictions(x, is_hazy, scene, cfg['cv_folds'], cfg['seed'], cfg['probe_c']) == is_hazy
    return {'content_separability': PerImage(nn_hits(x, scene), scene),
            'haze_separability': PerImage(right.astype(np.float64), scene, is_hazy),
            'haze_nn': PerImage(nn_hits(x, is_hazy), scene)}


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


def image_scores(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (dB) and SSIM of every image pair (N, 3, S, S) in [0, 1] -> two (N,) arrays, with difflid's float
    metrics (basicsr's formulas without 8-bit rounding)."""
    psnr = [calculate_psnr_float(float_image(x), float_image(y)) for x, y in zip(a, b, strict=True)]
    ssim = [calculate_ssim_float(float_image(x), float_image(y)) for x, y in zip(a, b, strict=True)]
    return np.asarray(psnr, dtype=np.float64), np.asarray(ssim, dtype=np.float64)


def decoder_scores(r_hazy: torch.Tensor, r_clear: torch.Tensor, data: ProbeData) -> dict[str, PerImage]:
    """Per-image scores of r^haz = D_t(h^haz) and r^cle = D_t(h^cle) against the clean images and each other."""
    clean_of_hazy, r_clear_of_hazy = data.clear[data.scene], r_clear[data.scene]
    out = {}
    for name, (a, b, scene) in {'hazy': (r_hazy, clean_of_hazy, data.scene),
                                'clear': (r_clear, data.clear, np.arange(len(data.clear))),
                                'hazy_vs_clear': (r_hazy, r_clear_of_hazy, data.scene)}.items():
        psnr, ssim = image_scores(a, b)
        out[f'decoder_psnr_{name}'], out[f'decoder_ssim_{name}'] = PerImage(psnr, scene), PerImage(ssim, scene)
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


def _scene_key(fig: Any, axes: list, data: ProbeData) -> None:
    """What the colours mean: a legend naming every scene (up to 20, tab20's colours), else a colour bar over the
    scene index with some of the names as ticks."""
    import matplotlib
    from matplotlib.lines import Line2D

    names = data.names
    colours = _scene_colours(len(names))
    if len(names) <= 20:
        handles = [Line2D([], [], marker='s', linestyle='', markersize=7, color=colour, label=name)
                   for colour, name in zip(colours, names, strict=True)]
        fig.legend(handles=handles, title='scene', loc='center left', bbox_to_anchor=(1.0, 0.5), fontsize=7,
                   title_fontsize=8, frameon=False)
        return
    mappable = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, len(names) - 1),
                                            matplotlib.colormaps['turbo'])
    bar = fig.colorbar(mappable, ax=axes, label='scene', fraction=0.03, pad=0.02)
    ticks = np.unique(np.linspace(0, len(names) - 1, 8).round().astype(int))
    bar.set_ticks(ticks, labels=[names[i] for i in ticks], fontsize=6)


def plot_tsne(path: Path, embeddings: dict[str, np.ndarray], data: ProbeData, t: int) -> Any:
    """One t: a panel per source, colour = scene (named in a legend or colour bar), circle = clear, triangle = hazy
    (Fig. 1). Returns the figure."""
    fig = _figure(4 * len(embeddings), 4.2)
    axes = fig.subplots(1, len(embeddings), squeeze=False)[0]
    for ax, (label, emb) in zip(axes, embeddings.items(), strict=True):
        _tsne_panel(ax, emb, data, f'{label}, t = {t}')
    axes[0].legend(loc='best', fontsize=8)
    fig.suptitle('t-SNE: colour = scene, o = clear, ^ = hazy', fontsize=10)
    fig.tight_layout()
    _scene_key(fig, list(axes), data)
    fig.savefig(path, bbox_inches='tight')
    return fig


def plot_tsne_overview(path: Path, embeddings: dict[int, dict[str, np.ndarray]], data: ProbeData) -> Any:
    """Every t side by side, a row per source (Fig. 7), with the scene key of ``plot_tsne``. Returns the figure."""
    ts = list(embeddings)
    fig = _figure(2.2 * len(ts), 2.3 * len(SOURCES))
    axes = fig.subplots(len(SOURCES), len(ts), squeeze=False)
    for j, t in enumerate(ts):
        for i, label in enumerate(SOURCES):
            _tsne_panel(axes[i, j], embeddings[t][label], data, f'{label} t={t}')
    fig.tight_layout()
    _scene_key(fig, list(axes.flat), data)
    fig.savefig(path, bbox_inches='tight')
    return fig


def plot_curves(path: Path, records: list[dict], chance: dict[str, float], hazy_psnr: float, draws: int) -> None:
    """Scores against t: the prior with its 95 % interval, the control's mean with its range over the draws as a
    band, the pixels; chance (or the hazy input's PSNR) dashed."""
    panels = (('content_separability', 'content separability (1-NN scene acc.)', chance['content_separability']),
              ('haze_separability', 'haze separability (balanced acc.)', chance['haze_separability']),
              ('decoder_psnr_hazy', 'PSNR(D_t(h_haz), clean) [dB]', hazy_psnr),
              ('decoder_psnr_hazy_vs_clear', 'PSNR(D_t(h_haz), D_t(h_cle)) [dB]', None))
    ts = [r['t'] for r in records]
    fig = _figure(11, 7.5)
    axes = fig.subplots(2, 2).ravel()
    for ax, (metric, title, reference) in zip(axes, panels, strict=True):
        score_panel(ax, ts, [r['scores'][metric] for r in records], title, reference,
                    'chance' if metric.endswith('separability') else 'hazy input', draws)
    fig.tight_layout()
    fig.savefig(path)


def score_panel(ax: Any, ts: list[int], rows: list[dict], title: str, reference: float | None, reference_label: str,
                draws: int) -> None:
    """One score against t (rows: ``summarise_scores`` per t): the prior with its 95 % interval, the control mean with
    the range of the draws as a band, the pixels, and a dashed reference (chance, the input's PSNR)."""
    ax.fill_between(ts, [row['control_min'] for row in rows], [row['control_max'] for row in rows],
                    color=_COLOURS['control'], alpha=0.25, label=f'control range ({draws} draws)')
    ax.plot(ts, [row['control_mean'] for row in rows], marker='o', color=_COLOURS['control'], label='control mean')
    ax.errorbar(ts, [row['prior'] for row in rows], capsize=3, marker='o', color=_COLOURS['prior'],
                yerr=np.abs(np.array([row['prior_ci'] for row in rows]).T - [row['prior'] for row in rows]),
                label='prior (95 % CI)')
    ax.plot(ts, [row['pixels'] for row in rows], marker='o', color=_COLOURS['pixels'], label='pixels')
    if reference is not None:
        ax.axhline(reference, color='grey', linestyle='--', label=reference_label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel('t')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


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


def _fmt_ci(ci: Sequence[float], metric: str) -> str:
    return f'[{_fmt(ci[0], metric)}, {_fmt(ci[1], metric)}]'


def _fmt_signed(value: float, metric: str) -> str:
    return f'{value:+.2f}' if 'psnr' in metric else f'{value:+.3f}'


_CSV_COLUMNS = ('prior', 'prior_ci_low', 'prior_ci_high', 'control_mean', 'control_min', 'control_max', 'pixels',
                'pixels_ci_low', 'pixels_ci_high', 'prior_minus_control', 'prior_minus_control_ci_low',
                'prior_minus_control_ci_high')
VERDICT_RULE = ('"above control" (or "below control") only when the prior\'s score lies outside the range of the '
                'control draws AND the 95 % bootstrap interval of prior − control mean excludes 0; otherwise "not '
                'distinguished"')


def _csv_values(row: dict) -> list[float]:
    return [row['prior'], *row['prior_ci'], row['control_mean'], row['control_min'], row['control_max'],
            row['pixels'], *row['pixels_ci'], row['prior_minus_control'], *row['prior_minus_control_ci']]


def verdict_statistics(samples: int, draws: int) -> dict:
    """The verdict's rule and what it can and cannot say, for a report's ``statistics``."""
    return {'verdict_rule': VERDICT_RULE,
            'verdict_note': "The intervals cover which scenes were probed, not which random network was drawn: a "
                            f"random network's score lies above all {draws} control draws with probability "
                            f"1/{draws + 1}, so the range alone is a weak yardstick with few draws.",
            'samples': samples, 'control_draws': draws}


def run_record(cfg: dict, device: torch.device, start: float, feature_s: float, computed: dict[str, int],
               sources: int, records: list[dict]) -> dict:
    """The part of a probe's summary that says how the run went (both probes' ``probe.json``): its options, device,
    times, the timesteps of features computed and read from the cache (``sources`` × timesteps in all;
    ``computed`` as ``all_features`` counts them) and the per-t records."""
    return {'probe': cfg, 'device': str(device),
            'wall_s': time.perf_counter() - start, 'feature_s': feature_s,
            'features_computed': sum(computed.values()),
            'features_cached': sources * len(cfg['timesteps']) - sum(computed.values()),
            'records': records}


def score_table_lines(title: str, metric: str, records: list[dict], draws: int) -> list[str]:
    """One score's Markdown section of probe.md: per t, the prior, the control draws, pixels, prior − control
    and the verdict (``records``: one per t, with ``scores[metric]``)."""
    lines = [f'## {title}', '', f'| t | prior [95 % CI] | control mean [min, max of {draws}] | pixels [95 % CI] | '
             'prior − control [95 % CI] | verdict |', '|---|---|---|---|---|---|']
    for r in records:
        row = r['scores'][metric]
        lines.append(f"| {r['t']} | {_fmt(row['prior'], metric)} {_fmt_ci(row['prior_ci'], metric)} | "
                     f"{_fmt(row['control_mean'], metric)} "
                     f"{_fmt_ci((row['control_min'], row['control_max']), metric)} | "
                     f"{_fmt(row['pixels'], metric)} {_fmt_ci(row['pixels_ci'], metric)} | "
                     f"{_fmt_signed(row['prior_minus_control'], metric)} "
                     f"{_fmt_ci(row['prior_minus_control_ci'], metric)} | {row['verdict']} |")
    return [*lines, '']


def write_reports(out_dir: Path, summary: dict) -> None:
    """probe.json (everything, the control draws one by one included), probe.csv (a row per t and metric: prior
    [CI], control mean [min, max], each control draw, pixels [CI], prior - control [CI], verdict) and probe.md (the
    same as tables, with the chance levels, the setup and the verdict rule)."""
    records, draws = summary['records'], summary['control']['draws']
    with atomic_open(out_dir / 'probe.json', 'w') as f:
        f.write(json.dumps(summary, indent=2) + '\n')
    with atomic_open(out_dir / 'probe.csv', 'w') as f:
        writer = csv.writer(f, lineterminator='\n')
        writer.writerow(['t', 'metric', *_CSV_COLUMNS, *(f'control_draw{k}' for k in range(len(draws))), 'verdict'])
        for r in records:
            for metric in METRICS:
                row = r['scores'][metric]
                writer.writerow([r['t'], metric, *(f'{v:.6f}' for v in _csv_values(row) + row['control_draws']),
                                 row['verdict']])
    ds, chance, stats = summary['dataset'], summary['chance'], summary['statistics']
    alphas = ', '.join(f't={t}: {a:.4f}' for t, a in summary['pixels']['alphas_cumprod'].items())
    lines = [f"# h-space probe: {summary['name']}", '',
             f"- prior: `{json.dumps(summary['prior']['options'])}` ({summary['prior']['feature_channels']} channels, "
             f"stride {summary['prior']['downsample_factor']})",
             f"- control: {len(draws)} draws of the same with random weights (`control_options(network_prior, "
             f"draw=k)`, init_seed {', '.join(str(d['init_seed']) for d in draws)})",
             f"- pixels: {summary['pixels']['description']}; ᾱ_t {alphas}",
             f"- data: {ds['hazy_images']} hazy images of {ds['scenes']} scenes ({ds['type']}), "
             f"{ds['size']}x{ds['size']} ({ds['crop']}); hazy input vs clean: "
             f"PSNR {summary['hazy_input']['psnr']:.2f} dB, SSIM {summary['hazy_input']['ssim']:.3f}",
             f"- noise: {ds['noise']}; features: {summary['features']}",
             f"- chance: content separability {chance['content_separability']:.3f} (random neighbour), "
             f"haze separability {chance['haze_separability']:.3f}, haze 1-NN {chance['haze_nn']:.3f}",
             f"- intervals: {stats['bootstrap']}",
             f"- verdict: {stats['verdict_rule']}. {stats['verdict_note']}",
             f"- run: {summary['wall_s']:.0f} s, features {summary['feature_s']:.0f} s "
             f"({summary['features_computed']} computed, {summary['features_cached']} from the cache) on "
             f"{summary['device']}", '']
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
        lines += score_table_lines(titles[metric], metric, records, len(draws))
    with atomic_open(out_dir / 'probe.md', 'w') as f:
        f.write('\n'.join(lines))


# ------------------------------------------------------------------------------------------------------- run

def _grid_examples(data: ProbeData, count: int) -> list[int]:
    """Hazy images of ``count`` different scenes, spread over the scene list."""
    firsts = [int(np.flatnonzero(data.scene == s)[0]) for s in range(len(data.clear))]
    picks = np.linspace(0, len(firsts) - 1, min(count, len(firsts))).round().astype(int)
    return [firsts[p] for p in dict.fromkeys(picks.tolist())]


def measure(h_hazy: torch.Tensor, h_clear: torch.Tensor, data: ProbeData, cfg: dict, t: int,
            device: torch.device) -> tuple[dict[str, PerImage], np.ndarray, tuple[torch.Tensor, torch.Tensor]]:
    """Every metric of one source's features at t, per image; the flattened features (for t-SNE); and the decoder's
    reconstructions (r^haz, r^cle)."""
    x = flatten(torch.cat([h_hazy, h_clear]), cfg['pooling'])
    outcomes = separability_scores(x, data, cfg)
    decoder = train_decoder(h_clear, data.clear, cfg['decoder_iters'], cfg['decoder_lr'], cfg['decoder_feat'],
                            cfg['decoder_batch'], cfg['seed'] + t, device)
    r_hazy = decode(decoder, h_hazy, cfg['decoder_batch'], device)
    r_clear = decode(decoder, h_clear, cfg['decoder_batch'], device)
    outcomes.update(decoder_scores(r_hazy, r_clear, data))
    return outcomes, x, (r_hazy, r_clear)


def run_probe(opt: dict, root: str | Path, device: str | None = None) -> dict:
    """Run the probe of ``opt`` (from ``load_probe_options``) and write results/<name>/ under ``root``.

    Returns the summary written to probe.json.
    """
    start = time.perf_counter()
    cfg = opt['probe']
    if cfg['degradations'] is not None:
        raise ProbeOptionError(f"{opt.get('option_file')}: probe.degradations is set: run it with "
                               'difflid.analysis.degradation_probe.run_degradation_probe (tools/hspace_probe.py does)')
    dev = _device(device or cfg['device'])
    out_dir = Path(root) / 'results' / opt['name']
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_pairs(build_probe_dataset(opt['datasets']['probe']), cfg)

    feature_start = time.perf_counter()
    features, alphas, computed = all_features(opt, data, dev, out_dir / 'cache')
    feature_s = time.perf_counter() - feature_start
    controls = [label for label in features if label.startswith('control')]
    shape = features['prior'][cfg['timesteps'][0]][0].shape
    prior_info = {'options': opt['network_prior'], 'feature_channels': shape[1],
                  'downsample_factor': math.ceil(cfg['size'] / shape[-1])}

    scene, is_hazy = data.labels()
    chance = {'content_separability': nn_chance(scene), 'haze_separability': 0.5, 'haze_nn': nn_chance(is_hazy)}
    hazy_psnr, hazy_ssim = (float(v.mean()) for v in image_scores(data.hazy, data.clear[data.scene]))
    scene_counts = scene_resamples(len(data.clear), cfg['bootstrap_samples'], cfg['seed'])
    examples = _grid_examples(data, cfg['grid_images'])
    shown = {'prior': 'prior', 'control': controls[0], 'pixels': 'pixels'}  # t-SNE and decoder grids
    records, embeddings = [], {}
    recon: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {kind: {} for kind in SOURCES}
    steps = tqdm(total=len(cfg['timesteps']) * len(features), desc='probe: analysis', unit='step')
    for t in cfg['timesteps']:
        outcomes, embeddings[t] = {}, {}
        for label, feats in features.items():
            steps.set_postfix(t=t, source=label)
            outcomes[label], x, (r_hazy, r_clear) = measure(*feats[t], data, cfg, t, dev)
            for kind, shown_label in shown.items():
                if shown_label == label:
                    recon[kind][t] = (r_hazy[examples], r_clear[data.scene[examples]])
                    embeddings[t][kind] = tsne_embedding(x, cfg['tsne_perplexity'], cfg['seed'])
            steps.update()
        scores = {metric: summarise_scores(outcomes['prior'][metric], [outcomes[c][metric] for c in controls],
                                           outcomes['pixels'][metric], scene_counts) for metric in METRICS}
        records.append({'t': t, 'feature_shape': list(features['prior'][t][0].shape[1:]), 'scores': scores})
        plot_tsne(out_dir / f'tsne_t{t:04d}.png', embeddings[t], data, t)
    steps.close()

    plot_tsne_overview(out_dir / 'tsne_overview.png', embeddings, data)
    plot_curves(out_dir / 'separability.png', records, chance, hazy_psnr, len(controls))
    if examples:
        for kind in SOURCES:
            plot_decoder_grid(out_dir / f'decoder_grid_{kind}.png', f'{kind} ({shown[kind]})', examples, data,
                              recon[kind])
    ds_opt = opt['datasets']['probe']
    draws = [control_options(opt['network_prior'], draw=k) for k in range(cfg['control_draws'])]
    summary = {
        'name': opt['name'], 'option_file': opt.get('option_file'),
        'prior': prior_info,
        'control': {'options': draws[0], 'draws': draws,
                    'description': 'control_options(network_prior, draw=k): the same member and architecture with '
                                   'random weights, one init_seed per draw; t-SNE and decoder grids show draw 0'},
        'pixels': {'description': "x_t in image space (3 x size x size), noised with the built prior's ᾱ_t and seed",
                   'alphas_cumprod': alphas},
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
        'statistics': {
            'bootstrap': f"95 % percentile intervals over {cfg['bootstrap_samples']} resamples of the "
                         f"{len(data.clear)} scenes (with replacement, seed {cfg['seed']}); scenes, not images, "
                         'because the images of one scene are not independent; per-image outcomes are kept, not '
                         'refitted; prior − control is paired (the same resampled scenes)',
            **verdict_statistics(cfg['bootstrap_samples'], len(controls))},
        'hazy_input': {'psnr': hazy_psnr, 'ssim': hazy_ssim},
        **run_record(cfg, dev, start, feature_s, computed, len(features), records),
    }
    write_reports(out_dir, summary)
    return summary
