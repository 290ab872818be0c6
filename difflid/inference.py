"""Restoration outside the training loop: the one place that runs net_g (with or without the frozen
prior) on images of any size, whole or in overlapping tiles, used by the models and by tools/infer.py."""
from pathlib import Path

import numpy as np
import torch
import yaml
from basicsr.archs import build_network
from torch import nn

from difflid.priors.base import GuidanceExtractor
from difflid.priors.builder import build_prior
from difflid.utils.checkpoint_io import load_network_weights, read_checkpoint
from difflid.utils.errors import OptionError
from difflid.utils.options import is_training_options, resolve_option_file, training_to_test_options
from difflid.utils.padding import pad_to_multiple
from difflid.utils.paths import SHIPPED_ROOT, locate_paths
from difflid.utils.precision import DTYPES, autocast
from difflid.utils.tiling import check_tiling, tiled_apply

__all__ = ['Restorer', 'restore']


def restore(
    net: nn.Module,
    lq: torch.Tensor,
    prior: GuidanceExtractor | None = None,
    fresh_noise: bool = False,
    tile: int = 0,
    tile_overlap: int = 32,
) -> torch.Tensor:
    """Restore (B, 3, H, W) images in [0, 1] of any size.

    With a prior (any ``GuidanceExtractor``), each image (or tile) is reflect-padded to the prior's stride,
    its two guidance maps (h-space at t1 and t2 by default) go to ``net(x, f_cim, f_hae)``, and the result
    is cropped back. Without one,
    ``net(x)`` (e.g. DCP or a stock basicsr network). ``tile`` > 0 restores overlapping tiles, blended; each
    tile is noised as its window of the whole image (the seeded noise is indexed by absolute position).
    """
    def run(x: torch.Tensor, origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
        if prior is None:
            return net(x)
        height, width = x.shape[-2:]
        padded = pad_to_multiple(x, prior.downsample_factor)
        f_cim, f_hae = prior.guidance(padded, fresh_noise=fresh_noise, origin=origin)
        return net(padded, f_cim, f_hae)[..., :height, :width]

    return tiled_apply(run, lq, tile, tile_overlap) if tile else run(lq)


class Restorer:
    """A trained model ready for inference on single images.

    Args:
        network_g: The ``network_g`` option block.
        network_prior: The ``network_prior`` block, or None for networks without a prior.
        weights: net_g checkpoint (basicsr format, or a plain state dict), or None for networks without weights
            (DCP).
        param_key: Key of the weights in the checkpoint ('params' or 'params_ema'; falls back to 'params').
        device: 'cpu' or 'cuda'.
        dtype: 'fp32', 'bf16' or 'fp16' (autocast; fp16 needs a GPU).
        tile, tile_overlap: Overlapping tiles of this size (a multiple of 32 with a prior), 0 = whole image.
    """

    def __init__(self, network_g: dict, network_prior: dict | None = None, weights: str | Path | None = None,
                 param_key: str = 'params', device: str = 'cpu', dtype: str = 'fp32', tile: int = 0,
                 tile_overlap: int = 32) -> None:
        if dtype not in DTYPES:
            raise ValueError(f'dtype must be one of {sorted(DTYPES)}, got {dtype!r}')
        if device == 'cuda' and not torch.cuda.is_available():
            raise ValueError('device cuda asked for, but torch sees no GPU; use --device cpu')
        if dtype == 'fp16' and device == 'cpu':
            raise ValueError('fp16 needs a GPU; use --dtype bf16 or fp32 on the CPU')
        check_tiling(tile, tile_overlap, 32 if network_prior else 1)
        self.device, self.dtype = torch.device(device), DTYPES[dtype]
        self.tile, self.tile_overlap = tile, tile_overlap
        self.net = build_network(dict(network_g))
        if weights is not None:  # a misfit names the options that differ from those the checkpoint records
            load_network_weights(self.net, weights, param_key,
                                 expected_config={'network_g': network_g, 'network_prior': network_prior})
        self.net.to(self.device).eval()
        self.prior = build_prior(network_prior).to(self.device) if network_prior else None

    @classmethod
    def from_file(cls, path: str | Path, root: str | Path, tile: int | None = None, tile_overlap: int | None = None,
                  **kwargs) -> 'Restorer':
        """From a test/training option file (YAML) or from a checkpoint that difflid saved (.pth or .safetensors).

        ``tile``/``tile_overlap`` left as None take the option file's ``val.tile``/``val.tile_overlap`` (those
        the test tool uses; a checkpoint has none: whole images). Paths of the prior (and of an option file's
        weights) that do not exist are also looked for under the checkpoint's experiment folder, the project
        holding it (``<project>/experiments/<name>/models/``) and ``root``, so this works from any directory.
        Other keyword arguments go to the constructor.
        """
        path, root = Path(path), Path(root)
        given = {k: v for k, v in (('tile', tile), ('tile_overlap', tile_overlap)) if v is not None}
        if not path.is_file():
            raise FileNotFoundError(f'{path} not found: give an option file (.yml) or a checkpoint '
                                    '(.pth, .safetensors)')
        missing: list[str] = []

        def locate(block: dict | None, name: str, search: list[Path]) -> dict | None:
            if not block:
                return block
            block, not_found = locate_paths(block, name, search)
            missing.extend(not_found)
            return block

        def build(*args, **options) -> 'Restorer':
            try:
                return cls(*args, **options, **kwargs)
            except FileNotFoundError as err:  # the prior's own message says what to download; add where we looked
                if missing:
                    raise FileNotFoundError(f'{err}\n{path}: ' + '\n'.join(missing)) from err
                raise
            except OptionError as err:  # weights that do not fit: say where the network options came from
                if path.suffix in ('.yml', '.yaml'):
                    raise OptionError(f'{err}\n  (the network options are those of {path})') from err
                raise

        if path.suffix in ('.yml', '.yaml'):
            opt = yaml.safe_load(resolve_option_file(path).read_text(encoding='utf-8'))
            if is_training_options(opt):
                opt = training_to_test_options(opt, root)
            if 'network_g' not in opt:
                raise KeyError(f'{path} has no network_g block')
            prior = locate(opt.get('network_prior'), 'network_prior', [Path.cwd(), root, SHIPPED_ROOT])
            opt_path = locate(opt.get('path'), 'path', [Path.cwd(), root, SHIPPED_ROOT]) or {}
            val = opt.get('val') or {}
            from_file = {k: val[k] for k in ('tile', 'tile_overlap') if val.get(k) is not None and k not in given}
            if from_file:  # an error names the option file, not a flag the user never gave
                tiling = {'tile': 0, 'tile_overlap': 32, **from_file, **given}
                names = tuple(f'val.{k} in {path}' if k in from_file else k for k in ('tile', 'tile_overlap'))
                check_tiling(tiling['tile'], tiling['tile_overlap'], 32 if prior else 1, names)
            weights, param_key = opt_path.get('pretrain_network_g'), opt_path.get('param_key_g', 'params')
            return build(opt['network_g'], prior, weights, param_key, **from_file, **given)
        state = read_checkpoint(path)  # .pth or .safetensors
        config = state.get('config') if isinstance(state, dict) else None
        if not config:
            raise ValueError(f'{path} holds no network options (only checkpoints saved by difflid do); '
                             'pass the test option file with -opt instead')
        if 'noise_schedule' in config:
            raise ValueError(f'{path} is a diffusion prior (trained by DiffusionPriorModel), not a restoration '
                             'network: use it as network_prior.checkpoint, or sample from it with '
                             'tools/sample_prior.py')
        experiment = path.resolve().parent.parent  # basicsr saves to <project>/experiments/<name>/models/
        project = [experiment.parent.parent] if experiment.parent.name == 'experiments' else []
        prior = locate(config.get('network_prior'), 'network_prior',
                       [Path.cwd(), experiment, *project, root, SHIPPED_ROOT])
        return build(config['network_g'], prior, path, 'params_ema' if 'params_ema' in state else 'params', **given)

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) float32 RGB in [0, 1] -> restored (H, W, 3) float32 RGB in [0, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None].to(self.device)
        with autocast(self.device.type, self.dtype):  # the whole graph, the prior included (its fp32 yields)
            out = restore(self.net, x, self.prior, tile=self.tile, tile_overlap=self.tile_overlap)
        return out[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
