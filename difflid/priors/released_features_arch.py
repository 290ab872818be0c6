"""ReleasedFeatureExtractor: the guidance features of the authors' released code, on DiffLI²D's grid.

The release (``shared/reference/official_code.md`` §1.3) does not tap the middle block: its "h" is the
frozen ADM UNet's final output, (B, 6, H, W) for learn_sigma models (3 ε̂ channels and the 3 variance
interpolation channels), and it passes ᾱ_t, a float in (0, 1], where the UNet expects the integer t
(the noising itself uses the correct ᾱ_t). This member reproduces both, to measure what they change.

It does not reproduce the release's memory blow-up: the release's CIM attended over all H·W output
positions (79 GB for a batch of 7 crops of 128², impossible at full resolution, §2.1). The output is
average-pooled over ``stride`` x ``stride`` cells (default 32, DiffLI2D's ``h_stride``), so CIM's keys
and values are H/32·W/32 tokens, as with h-space. ``stride: 1`` gives the release's full-resolution
features (and its memory).
"""
import math
from typing import Unpack

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch.nn import functional as F

from difflid.priors.adm import ADMFeatureSource
from difflid.priors.base import PriorOptions

__all__ = ['ReleasedFeatureExtractor']


@ARCH_REGISTRY.register()
class ReleasedFeatureExtractor(ADMFeatureSource):
    """The full ADM UNet's output at ᾱ_t as the timestep (the release's features), average-pooled to ``stride``.

    Features are (B, 6, ceil(H/stride), ceil(W/stride)) for learn_sigma models (3 without): every output
    channel, the variance ones included, as the release's ``h_channels: 6``. The full UNet needs H and W
    divisible by its down-sampling factor (32 for adm256_uncond): the clean image is reflect-padded to a multiple
    of both that and ``stride`` before noising, and the features are cropped back to the image's grid.

    Args:
        unet: Preset name (any key of ``ADM_PRESETS``) or a dict of guided-diffusion flags (as HSpaceExtractor);
            the noise schedule is the preset's unless the dict's ``noise_schedule`` key overrides it.
        checkpoint: Path of the guided-diffusion state dict (e.g. pretrained/256x256_diffusion_uncond.pt).
        stride: Average-pooling cell, the features' stride (DiffLI2D's ``h_stride``): 32 by default.
        random_weights: Allow ``checkpoint: ~``: random weights, for tests and demos only.
        init_seed: Seed of those random weights.
        class_label: ImageNet class id (0-999) for a class-conditional UNet, as HSpaceExtractor (default
            ``DEFAULT_CLASS_LABEL``); an error for an unconditional one.
        **options: ``PriorOptions``; the timesteps are those at which the image is noised, and the UNet is given ᾱ_t
            instead of t (release: t1=0, t2=500, i.e. 0.9999 and 0.0778). The seeded, position-indexed noise is not
            the release's (it draws fresh noise on every call; ``fresh_noise`` does that in training).
    """

    def __init__(
        self,
        unet: str | dict = 'adm256_uncond',
        checkpoint: str | None = None,
        stride: int = 32,
        random_weights: bool = False,
        init_seed: int = 0,
        class_label: int | None = None,
        **options: Unpack[PriorOptions],
    ) -> None:
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f'ReleasedFeatureExtractor: network_prior.stride must be a positive integer (32: '
                             f"DiffLI2D's h_stride), got {stride!r}")
        super().__init__(unet, checkpoint, random_weights, init_seed, class_label, False, options)
        self.stride = stride
        self.freeze()

    @property
    def feature_channels(self) -> int:
        """The UNet's output channels: 6 with learn_sigma (ε̂ and the variance interpolation), else 3."""
        return self.unet.out_channels

    @property
    def downsample_factor(self) -> int:
        """The pooling stride (32 by default)."""
        return self.stride

    @property
    def input_multiple(self) -> int:
        """The full UNet needs its own factor (32) and the pooling the stride: their least common multiple."""
        return math.lcm(self.stride, self.unet.downsample_factor)

    def _features(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = self.alphas_cumprod[t].float()  # the release's timestep argument
        return F.avg_pool2d(self.unet(x_t, alpha_bar, *self.labels(x_t)), self.stride)
