"""DiffLoss: a frozen diffusion model as an auxiliary restoration loss.

Paper: "DiffLoss: unleashing diffusion model as constraint for training image restoration network",
J. Tan, H. Yu, J. Huang, Z. Yang, F. Zhao, ACCV 2024 (arXiv 2406.19030). The restored
image ŷ and the ground truth y (both in [0, 1], mapped to [-1, 1]) are noised with the same timestep t and
the same noise ε per sample and sent through the frozen ADM UNet, y without an autograd graph (it is the
target). The loss compares what the UNet sees in them:

    eps_weight · MSE(ε̂(ŷ_t), ε̂(y_t))  +  h_weight · MSE(h(ŷ_t), h(y_t))

(naturalness in ε-space, semantics in h-space; the paper's code weights 1e-3 and 1e-6). Unlike the
authors' release, which computes both terms under ``no_grad`` so that they train nothing
(``shared/reference/official_code.md`` §7), gradients flow through the frozen UNet into ŷ and so into
the restoration network; the UNet's own parameters never receive gradients.
"""
import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn
from torch.nn import functional as F

from difflid.priors.base import GuidanceExtractor
from difflid.priors.builder import build_prior, with_denoiser
from difflid.priors.schedules import q_sample, to_diffusion_range
from difflid.utils.padding import pad_to_multiple
from difflid.utils.precision import DTYPES, autocast

__all__ = ['DiffLoss']

_DTYPES = {name: DTYPES[name] for name in ('fp32', 'bf16')}  # no fp16: basicsr's loop has no loss scaling
# The keys of an ADM prior that DiffLoss takes itself (the shorthand for ``prior: {type: HSpaceExtractor, ...}``).
_ADM_KEYS = ('unet', 'checkpoint', 'random_weights', 'init_seed', 'class_label', 'num_diffusion_steps', 'beta_start',
             'beta_end')


@LOSS_REGISTRY.register()
class DiffLoss(nn.Module):
    """Diffusion-model loss between a restored image and its ground truth.

    The frozen network comes from the prior family's builder, so a schedule, β range or class label option means the
    same here as in the extractor and the sampler: ``prior`` is any ``network_prior`` block of a member with a
    diffusion network (``has_denoiser_option``), or, by default, ``HSpaceExtractor`` with the ADM keys below.

    Args:
        eps_weight: Weight of the ε-space term (0 switches it off, and the decoder is not built or run).
        h_weight: Weight of the h-space term (0 switches it off).
        t_range: Inclusive range [t_min, t_max] of the timestep drawn uniformly per sample.
        unet: ADM preset name or guided-diffusion flags (as HSpaceExtractor, whose schedule rules apply).
        checkpoint: guided-diffusion state dict (e.g. pretrained/256x256_diffusion_uncond.pt).
        random_weights: Allow ``checkpoint: ~`` (random UNet, for tests only).
        init_seed: Seed of those random weights.
        class_label: ImageNet class id (0-999) for a class-conditional UNet (an error for an unconditional one);
            default ``DEFAULT_CLASS_LABEL``.
        num_diffusion_steps: T of the β schedule.
        beta_start: β_1 of a linear schedule.
        beta_end: β_T of a linear schedule.
        prior: Instead of the ADM keys: a ``network_prior``-style block of any member with a diffusion network
            (e.g. ``{type: DiffusersUNetExtractor, diffusers: ...}``).
        use_checkpoint: Gradient checkpointing inside the UNet (less activation memory, one more forward).
        dtype: 'fp32' or 'bf16' (autocast for the UNet pass; the loss itself stays fp32).
        loss_weight: Overall factor (basicsr convention), applied to both terms.
        shared_prior: An already built frozen prior to use instead of building one (DiffLI2DModel passes its own
            when both name the same network, so that the weights exist once per process). Not a YAML key.
    """

    network_keys = (*_ADM_KEYS, 'prior')  # the options that choose the network (see ``prior_block``)

    def __init__(
        self,
        eps_weight: float = 1e-3,
        h_weight: float = 1e-6,
        t_range: tuple[int, int] = (0, 999),
        unet: str | dict = 'adm256_uncond',
        checkpoint: str | None = None,
        random_weights: bool = False,
        init_seed: int = 0,
        class_label: int | None = None,
        num_diffusion_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prior: dict | None = None,
        use_checkpoint: bool = False,
        dtype: str = 'fp32',
        loss_weight: float = 1.0,
        shared_prior: GuidanceExtractor | None = None,
    ) -> None:
        super().__init__()
        if eps_weight < 0 or h_weight < 0 or eps_weight == h_weight == 0:
            raise ValueError(f'DiffLoss: eps_weight and h_weight must be >= 0 and not both 0, got {eps_weight}, '
                             f'{h_weight}')
        if dtype not in _DTYPES:
            raise ValueError(f'DiffLoss: dtype must be one of {sorted(_DTYPES)}, got {dtype!r}')
        self.eps_weight, self.h_weight = eps_weight * loss_weight, h_weight * loss_weight
        self.dtype = _DTYPES[dtype]
        if shared_prior is None:
            block = self.prior_block(dict(unet=unet, checkpoint=checkpoint, random_weights=random_weights,
                                          init_seed=init_seed, class_label=class_label, prior=prior,
                                          num_diffusion_steps=num_diffusion_steps, beta_start=beta_start,
                                          beta_end=beta_end))
            shared_prior = build_prior(with_denoiser(block, 'train.diff_opt.prior') if eps_weight else block,
                                       'train.diff_opt.prior')
        if not shared_prior.has_denoiser_option:
            raise ValueError(f'DiffLoss: {type(shared_prior).__name__} has no diffusion network (no ε prediction, no '
                             'h-space); use a diffusion prior such as HSpaceExtractor')
        if eps_weight and not shared_prior.has_denoiser:
            raise ValueError('DiffLoss: the ε term needs the full diffusion network, but the shared prior has only '
                             'its encoder')
        t_min, t_max = (int(v) for v in t_range)
        steps = len(shared_prior.alphas_cumprod)
        if not 0 <= t_min <= t_max < steps:
            raise ValueError(f'DiffLoss: t_range must satisfy 0 <= t_min <= t_max < {steps}, got {list(t_range)}')
        self.t_min, self.t_max = t_min, t_max
        # NOTE: a list, not a submodule, so a shared prior is neither saved again nor moved twice with this loss
        self._prior = [shared_prior]
        if use_checkpoint:
            for module in shared_prior.modules():
                if hasattr(module, 'use_checkpoint'):
                    module.use_checkpoint = True

    @staticmethod
    def prior_block(options: dict) -> dict:
        """The ``network_prior``-style block of DiffLoss's options (``prior``, or HSpaceExtractor with the ADM keys):
        what it builds, and what DiffLI2DModel compares with its own prior to share one copy."""
        if options.get('prior') is not None:
            return dict(options['prior'])
        defaults = {'unet': 'adm256_uncond', 'random_weights': False, 'init_seed': 0, 'num_diffusion_steps': 1000,
                    'beta_start': 1e-4, 'beta_end': 0.02}
        block = {k: options.get(k, defaults.get(k)) for k in _ADM_KEYS}
        # timesteps: DiffLoss draws its own t; [0] keeps the extractor's check valid for any T
        return {'type': 'HSpaceExtractor', **{k: v for k, v in block.items() if v is not None}, 'timesteps': [0]}

    @property
    def prior(self) -> GuidanceExtractor:
        return self._prior[0]

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """The prior's own ᾱ_t: the schedule its network was trained with."""
        return self.prior.alphas_cumprod

    def _apply(self, fn, recurse=True):  # .to()/.cuda() move the (unregistered) prior too
        self._prior[0]._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def _unet_pass(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(ε̂ or None, h) in float32 for noised images x_t; the decoder runs only when the ε term is on."""
        with autocast(x_t.device.type, self.dtype):  # fp32: an enclosing autocast stays in force
            eps, h = self.prior.diffusion_pass(x_t, t, with_eps=bool(self.eps_weight))
        return (None if eps is None else eps.float()), h.float()

    def forward(self, restored: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(l_eps, l_h) for (B, 3, H, W) images in [0, 1]; a term is None when its weight is 0.

        The ground-truth branch runs without an autograd graph (it is a target), so only ŷ's activations
        are kept for the backward pass. Images are reflect-padded to the UNet's stride, and the padding is
        excluded from both terms: ε̂ is compared on the H x W image only, h cells are weighted by the
        fraction of their stride x stride area that lies inside the image.
        """
        b, _, height, width = restored.shape
        stride = self.prior.denoiser_multiple
        t = torch.randint(self.t_min, self.t_max + 1, (b,), device=restored.device)
        padded = pad_to_multiple(restored, stride)
        noise = torch.randn_like(padded)

        def noised(img: torch.Tensor) -> torch.Tensor:
            # the same t and ε for ŷ and y: their difference after noising is sqrt(ᾱ_t)·(ŷ - y), nothing random
            return q_sample(to_diffusion_range(img), t, noise, self.alphas_cumprod)

        with torch.no_grad():
            eps_target, h_target = self._unet_pass(noised(pad_to_multiple(gt, stride)), t)
        eps_hat, h = self._unet_pass(noised(padded), t)
        l_eps = l_h = None
        if self.eps_weight:
            crop = (..., slice(0, height), slice(0, width))
            l_eps = self.eps_weight * F.mse_loss(eps_hat[crop], eps_target[crop])
        if self.h_weight:
            weight = _coverage(height, stride, h.shape[-2], h.device)[:, None] * _coverage(width, stride, h.shape[-1],
                                                                                             h.device)
            per_cell = (h - h_target).square().mean(dim=(0, 1))
            l_h = self.h_weight * (per_cell * weight).sum() / weight.sum()
        return l_eps, l_h


def _coverage(length: int, stride: int, cells: int, device: torch.device) -> torch.Tensor:
    """Fraction of each of ``cells`` feature cells (``stride`` pixels each) that lies inside ``length`` pixels."""
    starts = torch.arange(cells, device=device, dtype=torch.float32) * stride
    return (length - starts).clamp(0, stride) / stride
