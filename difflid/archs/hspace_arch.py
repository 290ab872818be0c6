"""HSpaceExtractor: the frozen diffusion prior of DiffLI²D (Sec. 4.1-4.2, Fig. 3a).

A [0, 1] image x is mapped to [-1, 1], noised to x_t = sqrt(ᾱ_t)·x + sqrt(1-ᾱ_t)·ε for each requested
timestep t (linear β schedule, T=1000), and sent through the frozen ADM UNet's encoder and middle
block with the *integer* t. The middle-block output is the h-space feature (1024 channels at H/32 for
``adm256_uncond``). All timesteps go through one batched encoder pass; the decoder is never built.

Differences from the authors' release (``shared/reference/official_code.md`` §1.3): h is the
middle-block output, not the UNet's final output; the UNet gets t, not ᾱ_t; noise is reproducible.
"""
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from basicsr.utils.registry import ARCH_REGISTRY

from difflid.archs.adm_unet_arch import DECODER_PREFIXES, ADMUNet, adm_flags
from difflid.archs.guidance_base import GuidanceExtractor

__all__ = ['HSpaceExtractor', 'load_adm_checkpoint']

logger = logging.getLogger('basicsr')

ADM_CHECKPOINT_HELP = (
    'Download 256x256_diffusion_uncond.pt (2.1 GB), the 256x256 unconditional ImageNet model listed in the '
    'guided-diffusion README (https://github.com/openai/guided-diffusion; direct link '
    'https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt), put it at '
    'pretrained/256x256_diffusion_uncond.pt, or set the `checkpoint` key of the prior block '
    '(`network_prior: checkpoint:` in the option file) to where it is.')

_MAX_LISTED = 5


def _listing(keys: Sequence[str]) -> str:
    shown = ', '.join(keys[:_MAX_LISTED])
    return f'{shown}, ... ({len(keys)} in all)' if len(keys) > _MAX_LISTED else shown


def load_adm_checkpoint(unet: ADMUNet, path: str | Path) -> None:
    """Load a guided-diffusion state dict file into ``unet`` strictly, with errors that name the file.

    An encoder-only ``unet`` ignores the decoder keys and checks all others (see ``ADMUNet.load_state_dict``).
    Raises FileNotFoundError (what to download and where) or ValueError (first mismatching keys/shapes).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'diffusion prior checkpoint not found: {path.resolve()}. {ADM_CHECKPOINT_HELP}')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # unpickling errors have many types; all mean "not a plain state dict"
        raise ValueError(f'cannot read {path} as a PyTorch state dict ({type(err).__name__}: {err}). '
                         f'{ADM_CHECKPOINT_HELP}') from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f'{path} is not a state dict of tensors (got {type(state).__name__}). {ADM_CHECKPOINT_HELP}')
    state = {k.removeprefix('module.'): v for k, v in state.items()}
    if unet.encoder_only:
        state = {k: v for k, v in state.items() if not k.startswith(DECODER_PREFIXES)}
    expected = unet.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f'{k} (file {tuple(state[k].shape)} vs model {tuple(v.shape)})'
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f'missing from the file: {_listing(missing)}')
        if unexpected:
            problems.append(f'not in the model: {_listing(unexpected)}')
        if shapes:
            problems.append(f'shape mismatch: {_listing(shapes)}')
        raise ValueError(
            f'checkpoint {path} does not fit the configured ADM UNet: ' + '; '.join(problems) +
            '. Check the UNet flags (class_cond, learn_sigma, num_channels, num_res_blocks, channel_mult, '
            'attention_resolutions, resblock_updown) against those the checkpoint was trained with; '
            'preset adm256_uncond matches 256x256_diffusion_uncond.pt.')
    unet.load_state_dict(state, strict=True)


@ARCH_REGISTRY.register()
class HSpaceExtractor(GuidanceExtractor):
    """Frozen diffusion UNet returning h-space features of an image at several timesteps.

    Inputs whose H or W is not a multiple of the UNet's down-sampling factor (32 for both presets) are
    reflect-padded at the bottom/right, so h has ceil(H/32) x ceil(W/32) positions. Noise, freezing and
    precision are the ``GuidanceExtractor`` base's.

    Args:
        unet: Preset name ('adm256_uncond', 'adm_tiny') or a dict of guided-diffusion flags, optionally
            with ``preset`` to start from.
        checkpoint: Path of the guided-diffusion state dict (e.g. pretrained/256x256_diffusion_uncond.pt).
        timesteps: Integer timesteps in [0, num_diffusion_steps); paper: t1=0 (content), t2=500 (haze).
        num_diffusion_steps: T of the linear β schedule.
        beta_start: β_1 of the linear schedule (for T=1000).
        beta_end: β_T of the linear schedule (for T=1000).
        seed: Seed of the fixed noise. ε is a function of (seed, t, channel, y, x) in absolute image
            coordinates (``difflid.utils.noise``), so the same image gives the same features on every call,
            in any batch position, on any device, and a tile or crop is noised exactly as the same window
            of the whole image.
        dtype: 'fp32', or 'bf16'/'fp16' autocast for the UNet (GroupNorm stays fp32). 'fp32'
            leaves an enclosing autocast (e.g. ``tools/infer.py --dtype bf16``) in force.
        encoder_only: Build only the encoder and middle block (all h-space needs).
        random_weights: Allow ``checkpoint: ~``: random weights, for tests and demos only.
        init_seed: Seed of those random weights, so every process and every run builds the same prior.
    """

    def __init__(
        self,
        unet: str | dict = 'adm256_uncond',
        checkpoint: str | None = None,
        timesteps: Sequence[int] = (0, 500),
        num_diffusion_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        seed: int = 0,
        dtype: str = 'fp32',
        encoder_only: bool = True,
        random_weights: bool = False,
        init_seed: int = 0,
    ) -> None:
        super().__init__(timesteps, num_diffusion_steps, beta_start, beta_end, seed, dtype)
        if checkpoint is None and not random_weights:
            raise ValueError(f'HSpaceExtractor: no checkpoint given. {ADM_CHECKPOINT_HELP} '
                             '(For tests and demos only, `random_weights: true` builds a random prior.)')
        flags = adm_flags(unet)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.unet = ADMUNet(**flags, encoder_only=encoder_only)
        if checkpoint is None:
            logger.warning('HSpaceExtractor: the diffusion prior has RANDOM weights (random_weights: true); '
                           'its features carry no ImageNet knowledge, fine for tests and demos only.')
        else:
            load_adm_checkpoint(self.unet, checkpoint)
            logger.info(f'HSpaceExtractor: loaded diffusion prior from {checkpoint}')
        self.freeze()

    @property
    def feature_channels(self) -> int:
        """C_h, the channel count of h (1024 for adm256_uncond)."""
        return self.unet.hspace_channels

    @property
    def hspace_channels(self) -> int:
        """C_h (the name this class had before the feature-source family)."""
        return self.feature_channels

    @property
    def downsample_factor(self) -> int:
        """Spatial stride of h (32 for both presets)."""
        return self.unet.downsample_factor

    def _features(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet.forward_hspace(x_t, t)
