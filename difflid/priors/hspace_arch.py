"""HSpaceExtractor: the frozen diffusion prior of DiffLI²D (Sec. 4.1-4.2, Fig. 3a).

A [0, 1] image x is mapped to [-1, 1], noised to x_t = sqrt(ᾱ_t)·x + sqrt(1-ᾱ_t)·ε for each requested
timestep t (the prior's own β schedule, T=1000: linear for most presets, cosine for adm64_cond), and sent
through the frozen ADM UNet's encoder and middle block with the *integer* t. The middle-block output is the
h-space feature (1024 channels at H/32 for ``adm256_uncond``). All timesteps go through one batched encoder
pass; the decoder is not built.
The ``tap`` option takes another block instead (the paper's Table 3 "Layer-E" / "Layer-D", or any
block by name); a decoder tap builds the decoder and runs it only up to the tapped block.

Differences from the authors' release (``shared/reference/official_code.md`` §1.3): h is the
middle-block output, not the UNet's final output; the UNet gets t, not ᾱ_t; noise is reproducible.
(``ReleasedFeatureExtractor`` reproduces the release's features.)

The UNet, its checkpoint, schedule and class label are ``ADMFeatureSource``'s (``difflid.priors.adm``).
"""
from collections.abc import Callable
from typing import Unpack

import torch
from basicsr.utils.registry import ARCH_REGISTRY

from difflid.priors.adm import ADMFeatureSource
from difflid.priors.adm_unet_arch import ADMUNet, adm_flags
from difflid.priors.base import PriorOptions

__all__ = ['HSpaceExtractor', 'TAP_ALIASES', 'resolve_tap']


# The paper's names (Table 3) of blocks; the functions give the block name from the UNet's ``block_layout``.
TAP_ALIASES: dict[str, Callable[[dict[str, tuple[int, int]]], str]] = {
    'middle': lambda layout: 'middle_block',  # h-space
    'layer_e': lambda layout: [k for k in layout if k.startswith('input_blocks.')][-1],  # the middle block's input
    'layer_d': lambda layout: 'output_blocks.0',  # right after the middle block
}


def resolve_tap(tap: str, layout: dict[str, tuple[int, int]]) -> str:
    """The block name (a key of ``ADMUNet.block_layout``) of a tap: an alias of ``TAP_ALIASES`` or a block name.
    Raises ValueError naming ``network_prior.tap`` and every valid value for this UNet."""
    if isinstance(tap, str) and tap in TAP_ALIASES:
        return TAP_ALIASES[tap](layout)
    if isinstance(tap, str) and tap in layout:
        return tap
    n_in = sum(k.startswith('input_blocks.') for k in layout)
    n_out = sum(k.startswith('output_blocks.') for k in layout)
    aliases = ', '.join(f'{a} (= {f(layout)})' for a, f in TAP_ALIASES.items())
    raise ValueError(f'network_prior.tap: unknown tap {tap!r}; choose {aliases}, middle_block, '
                     f'input_blocks.0 to input_blocks.{n_in - 1} or output_blocks.0 to output_blocks.{n_out - 1} '
                     '(this UNet\'s blocks, as named in its state dict)')


@ARCH_REGISTRY.register()
class HSpaceExtractor(ADMFeatureSource):
    """Frozen diffusion UNet returning h-space features (or another block's output) at several timesteps.

    Inputs whose H or W is not a multiple of the feature stride (32 for h-space in adm256_uncond) are
    reflect-padded at the bottom/right, so h has ceil(H/32) x ceil(W/32) positions. Noise, freezing and
    precision are the ``GuidanceExtractor`` base's.

    ``tap`` chooses the block (``ADMUNet.block_layout`` has every block's channels and stride):

    ==================  ============================================  ==========================
    tap                 block                                         adm256_uncond: C, stride
    ==================  ============================================  ==========================
    middle (default)    middle_block: h-space                         1024, 32
    layer_e             input_blocks.17, the last encoder block       1024, 32
                        (the middle block's input; Table 3 Layer-E)
    layer_d             output_blocks.0, the first decoder block      1024, 32
                        (right after the middle block; Layer-D)
    input_blocks.N      encoder block N (0-17)                        256/512/1024, 1-32
    output_blocks.N     decoder block N (0-17); 2, 5, 8, 11 and 14    1024-256, 32-1
                        end with an upsample (stride 16, 8, 4, 2, 1)
    ==================  ============================================  ==========================

    The paper does not say which encoder/decoder layers Table 3 used; Layer-E and Layer-D default to the
    blocks at h-space's resolution on either side of the middle block, so that only the block differs
    (same channels, same stride, same DiffLI2D). An encoder tap stops the encoder there; a decoder tap
    needs the decoder (built automatically) and runs it only up to the tapped block, on the clean image padded
    to the UNet's factor (32) before noising when the block's stride is smaller (the features are cropped back).

    Args:
        unet: Preset name (any key of ``ADM_PRESETS``: 'adm256_uncond', 'adm64_cond', 'lsun_bedroom', 'dps_ffhq',
            'adm_tiny', ...) or a dict of guided-diffusion flags, optionally with ``preset`` to start from. The noise
            schedule is the preset's (cosine for adm64_cond, linear otherwise, linear for flags without a preset);
            a ``noise_schedule`` key ('linear' or 'cosine') in the dict overrides it.
        checkpoint: Path of the guided-diffusion state dict (e.g. pretrained/256x256_diffusion_uncond.pt).
        encoder_only: Build only the encoder and middle block. Default (None): exactly when the tap is not
            in the decoder; true with a decoder tap is an error; false builds the decoder anyway (DiffLoss's
            ε term on the shared UNet, sampling).
        random_weights: Allow ``checkpoint: ~``: random weights, for tests and demos only.
        init_seed: Seed of those random weights, so every process and every run builds the same prior.
        tap: 'middle' (h-space), 'layer_e', 'layer_d', 'middle_block', 'input_blocks.N' or 'output_blocks.N'.
        class_label: ImageNet class id (0-999) given to a class-conditional UNet as ``y``; its embedding joins the
            timestep embedding in every ResBlock, so the features (h-space included) depend on it. Default:
            ``DEFAULT_CLASS_LABEL`` (979, "valley": a fixed landscape class, for hazy outdoor scenes). An error
            for an unconditional UNet.
        **options: ``PriorOptions``: timesteps (paper: t1=0 content, t2=500 haze), num_diffusion_steps, beta_start,
            beta_end, seed, dtype ('auto': bf16 on a CUDA GPU, fp32 on the CPU), channels_last (default: on CUDA),
            compile.
    """

    supports_channels_last = True

    @classmethod
    def denoiser_options(cls) -> dict:
        return {'encoder_only': False}

    def __init__(
        self,
        unet: str | dict = 'adm256_uncond',
        checkpoint: str | None = None,
        encoder_only: bool | None = None,
        random_weights: bool = False,
        init_seed: int = 0,
        tap: str = 'middle',
        class_label: int | None = None,
        **options: Unpack[PriorOptions],
    ) -> None:
        with torch.device('meta'):  # the block layout without weights: a wrong tap fails at once
            layout = ADMUNet(**adm_flags(unet), encoder_only=True).block_layout
        block = resolve_tap(tap, layout)
        decoder = block.startswith('output_blocks.')
        if encoder_only is None:
            encoder_only = not decoder
        elif encoder_only and decoder:
            raise ValueError(f'HSpaceExtractor: network_prior.tap {tap!r} ({block}) is in the decoder, but '
                             'network_prior.encoder_only is true; remove encoder_only (the decoder is then built '
                             'for decoder taps) or set it to false')
        super().__init__(unet, checkpoint, random_weights, init_seed, class_label, encoder_only, options)
        self.tap, self.block = tap, block
        self.freeze()

    @property
    def feature_channels(self) -> int:
        """Channels of the tapped block (C_h: 1024 for adm256_uncond's h-space)."""
        return self.unet.block_layout[self.block][0]

    @property
    def hspace_channels(self) -> int:
        """C_h (the name this class had before the feature-source family)."""
        return self.feature_channels

    @property
    def downsample_factor(self) -> int:
        """Spatial stride of the tapped block (32 for h-space in adm256_uncond)."""
        return self.unet.block_layout[self.block][1]

    @property
    def input_multiple(self) -> int:
        """A decoder block needs the whole UNet's factor (32), even when its own stride is smaller."""
        return self.unet.downsample_factor if self.block.startswith('output_blocks.') else self.downsample_factor

    def _features(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.block == 'middle_block':
            return self.unet.forward_hspace(x_t, t, *self.labels(x_t))
        return self.unet.forward_block(x_t, t, self.block, *self.labels(x_t))
