"""Draw images from any diffusion prior difflid can use: the quick look that a prior learned something.

A ``Denoiser`` is the whole ε-prediction network of a prior with its own noise schedule. It is built from
- a ``network_prior`` block (``HSpaceExtractor``/``ReleasedFeatureExtractor``: an ADM preset or flags with its
  checkpoint and class label; ``DiffusersUNetExtractor``: a diffusers folder, or a trained config + checkpoint),
  the decoder included, which the extractors themselves never build;
- a checkpoint written by ``DiffusionPriorModel`` (it records its network and schedule);
- an option file holding either (a ``DiffusionPriorModel`` training file: that run's latest checkpoint).
``sample_images`` runs the DDIM sampler (``difflid.priors.schedules.ddim_sample``) on it.
"""
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from basicsr.archs import build_network

from difflid.priors.adm_unet_arch import adm_flags, adm_noise_schedule
from difflid.priors.hspace_arch import build_adm_unet, class_labels, resolve_class_label
from difflid.priors.schedules import ddim_sample, named_alphas_cumprod
from difflid.utils.checkpoint_io import atomic_open, network_state, package_path
from difflid.utils.options import resolve_option_file

__all__ = ['Denoiser', 'denoiser_from_checkpoint', 'denoiser_from_prior', 'load_denoiser', 'sample_images',
           'write_image_grid']

_ADM_SOURCES = ('HSpaceExtractor', 'ReleasedFeatureExtractor')


@dataclass
class Denoiser:
    """ε̂ = ``network(x_t, t)`` for x_t in [-1, 1] (B, 3, H, W) and integer t (B,), with the prior's ᾱ_t."""

    network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    alphas_cumprod: torch.Tensor
    image_size: int  # the resolution the prior was trained at: the default size of samples
    multiple: int  # H and W must be multiples of this (the UNet's down-sampling factor)
    module: torch.nn.Module  # the network's weights (for .to(device))
    description: str


def _adm_denoiser(unet: torch.nn.Module, label: int | None, schedule: str, steps: int, image_size: int,
                  description: str) -> Denoiser:
    def network(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(x_t, t, *class_labels(label, x_t.shape[0], x_t.device))[:, :3]

    return Denoiser(network, named_alphas_cumprod(schedule, steps), image_size, unet.downsample_factor, unet,
                    description)


def _diffusers_denoiser(unet: torch.nn.Module, alphas_cumprod: torch.Tensor, description: str) -> Denoiser:
    def network(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(x_t, t).sample[:, :3]

    from difflid.priors.diffusers_unet_arch import unet_downsample_factor

    multiple = unet_downsample_factor(unet)
    size = unet.config.sample_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    return Denoiser(network, alphas_cumprod, int(size or 64), multiple, unet, description)


def denoiser_from_prior(block: dict) -> Denoiser:
    """The whole network of a ``network_prior`` block (ADM extractors and ``DiffusersUNetExtractor``)."""
    kind = block.get('type')
    if kind in _ADM_SOURCES:
        unet_opt = block.get('unet', 'adm256_uncond')
        unet = build_adm_unet(kind, unet_opt, block.get('checkpoint'), bool(block.get('random_weights', False)),
                              int(block.get('init_seed', 0)), encoder_only=False)
        label = resolve_class_label(kind, unet_opt, block.get('class_label'))
        return _adm_denoiser(unet, label, adm_noise_schedule(unet_opt), int(block.get('num_diffusion_steps', 1000)),
                             int(adm_flags(unet_opt).get('image_size', 256)),
                             f"{kind} {unet_opt if isinstance(unet_opt, str) else 'flags'}, "
                             f"{block.get('checkpoint') or 'random weights'}")
    if kind == 'DiffusersUNetExtractor':
        from difflid.priors.diffusers_unet_arch import load_diffusers_prior

        keys = ('diffusers', 'config', 'checkpoint', 'random_weights', 'init_seed', 'noise_schedule',
                'num_diffusion_steps', 'beta_start', 'beta_end')
        defaults = dict(diffusers=None, config=None, checkpoint=None, random_weights=False, init_seed=0)
        unet, alphas = load_diffusers_prior(**{**defaults, **{k: block[k] for k in keys if k in block}})
        return _diffusers_denoiser(unet, alphas, f"diffusers {block.get('diffusers') or block.get('checkpoint')}")
    raise ValueError(f'network_prior.type {kind!r} has no diffusion network to sample from; sampling works with '
                     f'{", ".join(_ADM_SOURCES)} and DiffusersUNetExtractor')


def denoiser_from_checkpoint(path: str | Path) -> Denoiser:
    """The network of a checkpoint written by ``DiffusionPriorModel`` (EMA weights when present)."""
    path = package_path(path)
    if not path.is_file():
        raise FileNotFoundError(f'prior checkpoint not found: {path.resolve()}')
    state, record = network_state(torch.load(path, map_location='cpu', weights_only=True))
    if state is None or 'noise_schedule' not in record or 'network_g' not in record:
        raise ValueError(f'{path} is not a checkpoint of DiffusionPriorModel (it records no network_g and '
                         'noise_schedule); for another prior, give an option file with its network_prior block')
    net = build_network(dict(record['network_g']))
    net.load_state_dict({k.removeprefix('module.'): v for k, v in state.items()}, strict=True)
    schedule, steps = record['noise_schedule'], int(record.get('num_diffusion_steps', 1000))
    if record['network_g']['type'] == 'ADMUNet':
        return _adm_denoiser(net, None, schedule, steps, int(record['network_g'].get('image_size', 256)), str(path))
    return _diffusers_denoiser(net.unet, named_alphas_cumprod(schedule, steps), str(path))


def load_denoiser(source: str | Path, root: str | Path) -> Denoiser:
    """A denoiser from a checkpoint (.pth), a diffusers folder, or an option file: a ``DiffusionPriorModel``
    training file (the run's ``experiments/<name>/models/net_g_latest.pth`` under ``root`` or the working
    directory) or any file with a ``network_prior`` block."""
    source = Path(source)
    if source.is_dir():
        return denoiser_from_prior({'type': 'DiffusersUNetExtractor', 'diffusers': str(source)})
    if source.suffix not in ('.yml', '.yaml'):
        return denoiser_from_checkpoint(source)
    opt = yaml.safe_load(resolve_option_file(source).read_text(encoding='utf-8'))
    if opt.get('model_type') == 'DiffusionPriorModel':
        relative = Path('experiments') / opt['name'] / 'models' / 'net_g_latest.pth'
        found = next((d / relative for d in (Path.cwd(), Path(root)) if (d / relative).is_file()), None)
        if found is None:
            raise FileNotFoundError(f'{source}: no trained prior at {relative} (under {Path.cwd()} or {root}); '
                                    f'train first: python tools/train.py -opt {source}')
        return denoiser_from_checkpoint(found)
    if not opt.get('network_prior'):
        raise KeyError(f'{source} has neither model_type DiffusionPriorModel nor a network_prior block')
    return denoiser_from_prior(dict(opt['network_prior']))


@torch.no_grad()
def sample_images(denoiser: Denoiser, num: int, size: int | None = None, steps: int = 50, eta: float = 0.0,
                  seed: int = 0, device: str | torch.device = 'cpu') -> torch.Tensor:
    """``num`` DDIM samples (num, 3, size, size) in [0, 1]; ``size`` defaults to the prior's training size and must
    be a multiple of its down-sampling factor. The same seed gives the same samples."""
    size = size or denoiser.image_size
    if size % denoiser.multiple:
        raise ValueError(f'sample size {size} must be a multiple of {denoiser.multiple} (the UNet\'s down-sampling)')
    denoiser.module.to(device).eval()
    x = ddim_sample(denoiser.network, (num, 3, size, size), denoiser.alphas_cumprod, steps, eta,
                    torch.Generator().manual_seed(seed), device)
    return (x + 1) / 2


def write_image_grid(images: torch.Tensor, path: str | Path, columns: int | None = None) -> None:
    """Write (N, 3, H, W) RGB images in [0, 1] as one 8-bit PNG grid (torchvision's ``make_grid``; default
    ceil(sqrt(N)) columns, 2 px gaps), atomically: an existing file is replaced only by a complete one."""
    from torchvision.utils import make_grid

    columns = columns or math.ceil(math.sqrt(len(images)))
    grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=columns, padding=2)
    rgb = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    ok, data = cv2.imencode('.png', np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError(f'cannot encode the grid for {path}')
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        f.write(data.tobytes())
