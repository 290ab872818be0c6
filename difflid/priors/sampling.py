"""Draw images from any diffusion prior difflid can use: the quick look that a prior learned something.

A ``Denoiser`` is the whole ε-prediction network of a prior with its own noise schedule. It is built by the family's
one builder (``difflid.priors.builder``) from
- a ``network_prior`` block of any member with a diffusion network (``has_denoiser_option``: ADM presets or flags
  with their checkpoint and class label, diffusers folders or trained configs), asked to keep its decoder;
- a checkpoint written by ``DiffusionPriorModel`` (it records its network and schedule), turned into such a block;
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

from difflid.priors.builder import build_prior, with_denoiser
from difflid.priors.schedules import ddim_sample
from difflid.utils.checkpoint_io import atomic_open, network_state, package_path, read_checkpoint
from difflid.utils.options import resolve_option_file

__all__ = ['Denoiser', 'checkpoint_prior_block', 'denoiser_from_checkpoint', 'denoiser_from_prior', 'load_denoiser',
           'sample_images', 'write_image_grid']


@dataclass
class Denoiser:
    """ε̂ = ``network(x_t, t)`` for x_t in [-1, 1] (B, 3, H, W) and integer t (B,), with the prior's ᾱ_t."""

    network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    alphas_cumprod: torch.Tensor
    image_size: int  # the resolution the prior was trained at: the default size of samples
    multiple: int  # H and W must be multiples of this (the UNet's down-sampling factor)
    module: torch.nn.Module  # the network's weights (for .to(device))
    description: str


def denoiser_from_prior(block: dict) -> Denoiser:
    """The whole diffusion network of a ``network_prior`` block, built by the family's builder with its decoder."""
    prior = build_prior(with_denoiser(block))
    source = block.get('checkpoint') or block.get('diffusers') or ('random weights' if block.get('random_weights')
                                                                   else 'weights')
    unet = block.get('unet')
    name = f" {unet if isinstance(unet, str) else 'flags'}" if unet is not None else ''
    return Denoiser(prior.denoise, prior.alphas_cumprod, prior.native_size, prior.denoiser_multiple, prior,
                    f"{block['type']}{name}, {source}")


def checkpoint_prior_block(path: str | Path) -> dict:
    """The ``network_prior`` block that loads a ``DiffusionPriorModel`` checkpoint (its network, schedule and T as
    it records them): what the extractor, DiffLoss and the sampler take for a prior you trained yourself."""
    path = package_path(path)
    if not path.is_file():
        raise FileNotFoundError(f'prior checkpoint not found: {path.resolve()}')
    _, record = network_state(read_checkpoint(path))
    if 'noise_schedule' not in record or 'network_g' not in record:
        raise ValueError(f'{path} is not a checkpoint of DiffusionPriorModel (it records no network_g and '
                         'noise_schedule); for another prior, give an option file with its network_prior block')
    network = {k: v for k, v in record['network_g'].items() if k != 'type'}
    schedule, steps = record['noise_schedule'], int(record.get('num_diffusion_steps', 1000))
    if record['network_g']['type'] == 'ADMUNet':
        return {'type': 'HSpaceExtractor', 'unet': {**network, 'noise_schedule': schedule}, 'checkpoint': str(path),
                'num_diffusion_steps': steps}
    return {'type': 'DiffusersUNetExtractor', **network, 'checkpoint': str(path), 'noise_schedule': schedule,
            'num_diffusion_steps': steps}


def denoiser_from_checkpoint(path: str | Path) -> Denoiser:
    """The network of a checkpoint written by ``DiffusionPriorModel`` (EMA weights when present)."""
    denoiser = denoiser_from_prior(checkpoint_prior_block(path))
    denoiser.description = str(path)
    return denoiser


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
