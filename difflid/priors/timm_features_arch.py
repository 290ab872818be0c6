"""TimmFeatureExtractor: features of an ImageNet classifier (timm) as DiffLI²D's guidance (paper Table 3).

The paper's "VGG16" and "ResNet50" columns replace h_t1 and h_t2 by features of ImageNet-pretrained VGG16 /
ResNet50 without saying how. We form the two inputs exactly as for h-space (the ``GuidanceExtractor`` base):
the degraded image is noised to x_t1 and x_t2 (default t = 0 and 500, seeded, position-indexed noise); the
backbone gets no timestep. ``timesteps: [0, 0]`` gives both maps from the (barely noised: ᾱ_0 = 1 - 1e-4)
input. x_t is mapped from [-1, 1] back to [0, 1] and normalised with the weights' ImageNet mean/std (timm's
pretrained_cfg of ``model``; for vgg16 / resnet50 the usual (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)).

The tap is one entry of timm's ``feature_info`` (the taps of ``features_only=True, out_indices=(layer,)``),
by default the last: for vgg16 the pool5 output (``features.30``: 512 channels, stride 32; timm's last VGG
tap is the final max pool, not the pre_logits conv-MLP), for resnet50 ``layer4`` (2048 channels, stride
32). So DiffLI²D sees the same H/32 grid as with h-space. The model is timm's full classifier, pruned after
the tap (``prune_intermediate_layers``) and run with ``forward_intermediates``; a model without that timm API
is refused with a clear error.

Weights are never downloaded. ``checkpoint`` names a state dict file (.pth/.pt/.bin or .safetensors) in timm or
torchvision format (torchvision's ``features.N`` / ``classifier.*`` VGG keys are converted by timm's own
filter for the model); without it the extractor looks, in order, at ``pretrained/<model>.pth`` and
``.safetensors`` (from the working directory), torchvision's file names in ``$TORCH_HOME/hub/checkpoints``
(e.g. vgg16-397923af.pth, resnet50-0676ba61.pth, resnet50-11ad3fa6.pth), the Hugging Face cache of timm's
pretrained tag (``timm/vgg16.tv_in1k``, ``timm/resnet50.a1_in1k``) and timm's own URL file name in the torch
hub cache. Loading is strict for the layers used: every tensor up to the tap must be in the file with its
shape; keys the model does not have at all are errors; the head and later layers may be missing.
"""
import inspect
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Unpack
from urllib.parse import urlparse

import timm
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from difflid.priors.base import GuidanceExtractor, PriorOptions
from difflid.utils.checkpoint_io import state_dict_problems

__all__ = ['TimmFeatureExtractor', 'convert_checkpoint', 'find_cached_weights', 'load_used_layers',
           'read_timm_checkpoint']

logger = logging.getLogger('basicsr')

_HF_FILES = ('model.safetensors', 'pytorch_model.bin')
_TORCHVISION_WEIGHTS = {'': ('IMAGENET1K_V1', 'IMAGENET1K_V2'), 'tv_in1k': ('IMAGENET1K_V1',),
                        'tv2_in1k': ('IMAGENET1K_V2',)}


def _torchvision_files(model_name: str) -> list[tuple[str, str]]:
    """(file name, URL) of torchvision's ImageNet classification weights for a timm name without a tag (V1
    first) or with tag tv_in1k / tv2_in1k; none for other tags. Torchvision's IMAGENET1K_FEATURES VGG file
    is left out: it expects other input scaling."""
    arch, _, tag = model_name.partition('.')
    if tag not in _TORCHVISION_WEIGHTS:
        return []
    try:
        from torchvision.models import get_model_weights
        weights = list(get_model_weights(arch))
    except (ImportError, ValueError, KeyError):  # no torchvision, or a model torchvision does not have
        return []
    return [(Path(urlparse(w.url).path).name, w.url) for w in weights if w.name in _TORCHVISION_WEIGHTS[tag]]


def _hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, from the environment at call time (as huggingface_hub resolves it)."""
    explicit = os.environ.get('HF_HUB_CACHE') or os.environ.get('HUGGINGFACE_HUB_CACHE')
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get('HF_HOME') or os.path.join(os.environ.get('XDG_CACHE_HOME', '~/.cache'), 'huggingface')
    return Path(home).expanduser() / 'hub'


def _hf_files(pretrained_cfg: dict) -> tuple[str | None, tuple[str, ...]]:
    """timm's Hugging Face repository of the model's pretrained tag and the weight files it may hold."""
    repo = pretrained_cfg.get('hf_hub_id') or None
    name = pretrained_cfg.get('hf_hub_filename')
    return repo, ((name,) if name else _HF_FILES)


def find_cached_weights(model_name: str, pretrained_cfg: dict) -> tuple[Path | None, list[str]]:
    """The first local weight file for ``model_name`` and every place looked at, without any network access.

    Order: pretrained/<model>.pth and .safetensors (working directory), torchvision's files in the torch hub
    cache, the Hugging Face cache of timm's pretrained tag, the file name of timm's own URL in the torch hub
    cache (timm's older cache).
    """
    checkpoints = Path(torch.hub.get_dir()) / 'checkpoints'
    candidates = [Path('pretrained') / f'{model_name}{ext}' for ext in ('.pth', '.safetensors')]
    candidates += [checkpoints / name for name, _ in _torchvision_files(model_name)]
    looked = [str(p.resolve()) for p in candidates]
    for path in candidates:
        if path.is_file():
            return path, looked
    repo, files = _hf_files(pretrained_cfg)
    if repo:
        from huggingface_hub import try_to_load_from_cache
        cache = _hf_hub_cache()
        looked.append(f'{" / ".join(files)} of {repo} in the Hugging Face cache {cache}')
        for name in files:
            found = try_to_load_from_cache(repo, name, cache_dir=cache)
            if isinstance(found, str):  # None or a "known missing" marker otherwise
                return Path(found), looked
    url_name = Path(urlparse(pretrained_cfg.get('url') or '').path).name
    if url_name and (checkpoints / url_name).resolve() not in [p.resolve() for p in candidates]:
        looked.append(str(checkpoints / url_name))
        if (checkpoints / url_name).is_file():
            return checkpoints / url_name, looked
    return None, looked


def weights_help(model_name: str, pretrained_cfg: dict) -> str:
    """What to download for ``model_name``, where it is published and where to put it."""
    sources = [f"torchvision's {name} ({url})" for name, url in _torchvision_files(model_name)]
    repo, files = _hf_files(pretrained_cfg)
    if repo:
        sources.append(f"timm's {files[0]} from https://huggingface.co/{repo} "
                       f'(https://huggingface.co/{repo}/resolve/main/{files[0]})')
    if not sources:
        return (f'timm publishes no pretrained weights for {model_name!r}: set the `checkpoint` key of the prior '
                'block (`network_prior: checkpoint:` in the option file) to a state dict of this model.')
    hub = Path(torch.hub.get_dir()) / 'checkpoints'
    also = f"; torchvision's file is also found under its own name in {hub}" if _torchvision_files(model_name) else ''
    return (f'Download {" or ".join(sources)}, put it at pretrained/{model_name}.pth (a .safetensors file at '
            f'pretrained/{model_name}.safetensors{also}), or set the `checkpoint` key of the prior block '
            '(`network_prior: checkpoint:` in the option file) to where it is.')


def _checkpoint_filter(model: nn.Module) -> Callable | None:
    """timm's own state-dict converter for the model's family (e.g. ``timm.models.vgg._filter_fn``, which maps
    torchvision's VGG classifier keys), as timm's pretrained loading applies it; None if it has none."""
    module = sys.modules.get(type(model).__module__)
    for name in ('checkpoint_filter_fn', '_filter_fn'):
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    return None


def read_timm_checkpoint(path: str | Path, help_text: str) -> dict:
    """The state dict in the file ``path``: .pth/.pt/.bin or .safetensors, optionally wrapped ('state_dict',
    'model', ...) as timm's ``load_state_dict`` reads it. Raises FileNotFoundError or ValueError naming the file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'TimmFeatureExtractor: checkpoint not found: {path.resolve()}. {help_text}')
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as err:  # unpickling and safetensors errors have many types; all mean "not a state dict"
        raise ValueError(f'cannot read {path} as a PyTorch or safetensors state dict ({type(err).__name__}: '
                         f'{err}). {help_text}') from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f'{path} is not a state dict of tensors (got {type(state).__name__}). {help_text}')
    return state


def convert_checkpoint(state: dict, model: nn.Module, path: str | Path, model_name: str, help_text: str) -> dict:
    """``state`` in timm's keys for the (unpruned) ``model``: timm's own filter for the model's family (e.g.
    torchvision's VGG ``classifier.*`` keys to timm's ``pre_logits`` / ``head``), as timm's pretrained loading
    applies it; ``state`` itself when the family has none (torchvision's ResNet keys are timm's)."""
    convert = _checkpoint_filter(model)
    if convert is None:
        return state
    try:
        return convert(state, model) if len(inspect.signature(convert).parameters) > 1 else convert(state)
    except Exception as err:  # a converter can fail on a file of another model (e.g. a reshape)
        raise ValueError(f'checkpoint {path} cannot be converted for timm model {model_name!r} '
                         f'({type(err).__name__}: {err}). {help_text}') from err


def load_used_layers(used: nn.Module, state: dict, known: set[str], path: str | Path, model_name: str, tap: str,
                     help_text: str) -> None:
    """Load ``state`` into ``used`` (the model pruned after the tap), strictly for the layers it has.

    Every tensor of ``used`` must be in ``state`` with its shape (BatchNorm's ``num_batches_tracked``, which
    old torchvision files lack, excepted); a key that the full model (``known``: its keys before pruning) does
    not have at all is an error too; keys of the head and of the pruned layers are ignored.
    """
    expected = used.state_dict()
    problems = state_dict_problems(expected, state, known, optional=('num_batches_tracked',))
    if problems:
        raise ValueError(f'checkpoint {path} does not fit timm model {model_name!r} up to {tap}: '
                         + '; '.join(problems) + f'. It must be a state dict of {model_name} in timm or torchvision '
                         f'format. {help_text}')
    result = used.load_state_dict({k: state[k] for k in expected if k in state}, strict=False)
    assert not result.unexpected_keys and all(k.endswith('num_batches_tracked') for k in result.missing_keys)


@ARCH_REGISTRY.register()
class TimmFeatureExtractor(GuidanceExtractor):
    """Frozen ImageNet classifier from timm whose feature map at one tap replaces h-space (paper Table 3).

    Args:
        model: A timm model name, optionally with a pretrained tag: 'vgg16', 'resnet50' (paper), any timm model
            with ``forward_intermediates`` (e.g. 'resnet50.tv_in1k'). The tag picks the normalisation and the
            cached weights looked for; the file loaded must be of that architecture.
        layer: The tap: an index into timm's ``feature_info`` (as ``features_only``'s ``out_indices``; default
            -1, the last: vgg16 pool5, resnet50 layer4, both stride 32) or a ``feature_info`` module name
            (e.g. 'layer3', 'features.29').
        checkpoint: A local state dict (.pth/.pt/.bin/.safetensors, timm or torchvision format). None: look in
            pretrained/ and the torch hub / Hugging Face caches (see the module docstring); never downloads.
        random_weights: Allow no weights: a random backbone, for tests and demos only.
        init_seed: Seed of those random weights, so every process and every run builds the same backbone.
        **options: ``PriorOptions``: the timesteps at which the input is noised before the backbone (which gets no
            t): [0, 500] as for h-space, [0, 0] gives both maps from the clean input; schedule, seed, dtype, ...
    """

    def __init__(
        self,
        model: str,
        layer: int | str = -1,
        checkpoint: str | None = None,
        random_weights: bool = False,
        init_seed: int = 0,
        **options: Unpack[PriorOptions],
    ) -> None:
        super().__init__(**options)
        self.model_name = model
        if not timm.is_model(model):
            raise ValueError(f'TimmFeatureExtractor: unknown timm model {model!r} (timm.list_models() lists the '
                             'names; a pretrained tag such as .tv_in1k is optional)')
        try:
            cfg = timm.models.get_pretrained_cfg(model)
        except RuntimeError as err:  # an unknown tag
            raise ValueError(f'TimmFeatureExtractor: model {model!r}: {err}') from err
        pretrained_cfg = cfg.to_dict() if cfg else {}
        help_text = weights_help(model, pretrained_cfg)
        # the weights first: a missing or unreadable file is reported before the (slow) build
        if checkpoint is None and not random_weights:
            checkpoint, looked = find_cached_weights(model, pretrained_cfg)
            if checkpoint is None:
                raise FileNotFoundError(
                    f'TimmFeatureExtractor: no ImageNet weights for timm model {model!r} were found, and none are '
                    f'downloaded. {help_text} Looked for: {"; ".join(looked)}. (For tests and demos only, '
                    '`random_weights: true` builds a backbone with random weights.)')
        state = None if checkpoint is None else read_timm_checkpoint(checkpoint, help_text)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            full = timm.create_model(model, pretrained=False)
        if not (hasattr(full, 'forward_intermediates') and hasattr(full, 'prune_intermediate_layers')):
            raise ValueError(f'TimmFeatureExtractor: timm model {model!r} has no forward_intermediates / '
                             'prune_intermediate_layers; pick a model that has (vgg, resnet, convnext, ...)')
        self.layer_index = self._resolve_layer(full.feature_info, layer)
        self.tap: dict = dict(full.feature_info[self.layer_index])
        tap = f"{self.tap['module']} (feature_info[{self.layer_index}])"
        for name in ('mean', 'std'):  # the weights' input normalisation (timm's pretrained_cfg of `model`)
            value = torch.tensor(full.pretrained_cfg[name], dtype=torch.float32).view(1, 3, 1, 1)
            self.register_buffer(name, value, persistent=False)
        if state is not None:  # converted before pruning: timm's converter may need the whole model
            state = convert_checkpoint(state, full, checkpoint, model, help_text)
        known = set(full.state_dict())
        full.prune_intermediate_layers(indices=[self.layer_index], prune_head=True)
        self.backbone = full
        if state is None:
            logger.warning(f'TimmFeatureExtractor: {model} has RANDOM weights (random_weights: true); its features '
                           'carry no ImageNet knowledge, fine for tests and demos only.')
        else:
            load_used_layers(full, state, known, checkpoint, model, tap, help_text)
            logger.info(f'TimmFeatureExtractor: loaded {model} from {checkpoint}; features at {tap}')
        self.freeze()

    @staticmethod
    def _resolve_layer(feature_info: list[dict], layer: int | str) -> int:
        """The ``feature_info`` index of ``layer`` (an index, negative from the end, or a module name)."""
        taps = ', '.join(f"{i}: {f['module']} ({f['num_chs']} ch, stride {f['reduction']})"
                         for i, f in enumerate(feature_info))
        if isinstance(layer, str):
            names = [f['module'] for f in feature_info]
            if layer not in names:
                raise ValueError(f'TimmFeatureExtractor: layer {layer!r} is not a feature tap; the taps are {taps}')
            return names.index(layer)
        if isinstance(layer, bool) or not isinstance(layer, int) or not -len(feature_info) <= layer < len(feature_info):
            raise ValueError(f'TimmFeatureExtractor: layer must be a feature_info index or module name, got '
                             f'{layer!r}; the taps are {taps}')
        return layer % len(feature_info)

    @property
    def feature_channels(self) -> int:
        """Channels at the tap (timm's feature_info): 512 for vgg16 pool5, 2048 for resnet50 layer4."""
        return int(self.tap['num_chs'])

    @property
    def downsample_factor(self) -> int:
        """Stride of the tap (timm's feature_info reduction): 32 for the default taps."""
        return int(self.tap['reduction'])

    def _features(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = ((x_t + 1) / 2 - self.mean) / self.std  # [-1, 1] -> [0, 1] -> ImageNet normalisation; no t
        feats = self.backbone.forward_intermediates(x, indices=[self.layer_index], intermediates_only=True,
                                                    stop_early=True)[0]
        s = self.downsample_factor
        if feats.shape[-2:] != (x_t.shape[-2] // s, x_t.shape[-1] // s):
            raise RuntimeError(f'TimmFeatureExtractor: {self.model_name} at {self.tap["module"]} gave '
                               f'{tuple(feats.shape[-2:])} positions for a {tuple(x_t.shape[-2:])} input, not the '
                               f'input / {s} that feature_info states')
        return feats
