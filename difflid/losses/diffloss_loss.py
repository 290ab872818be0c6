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

from difflid.priors.adm_unet_arch import ADMUNet, adm_flags, adm_noise_schedule
from difflid.priors.hspace_arch import class_labels, load_adm_checkpoint, resolve_class_label
from difflid.priors.schedules import named_alphas_cumprod, q_sample, to_diffusion_range
from difflid.utils.padding import pad_to_multiple
from difflid.utils.precision import DTYPES, autocast

__all__ = ['DiffLoss']

_DTYPES = {name: DTYPES[name] for name in ('fp32', 'bf16')}  # no fp16: basicsr's loop has no loss scaling


@LOSS_REGISTRY.register()
class DiffLoss(nn.Module):
    """Diffusion-model loss between a restored image and its ground truth.

    Args:
        eps_weight: Weight of the ε-space term (0 switches it off, and the decoder is not run).
        h_weight: Weight of the h-space term (0 switches it off).
        t_range: Inclusive range [t_min, t_max] of the timestep drawn uniformly per sample.
        unet: ADM preset name or guided-diffusion flags (as HSpaceExtractor). The noise schedule is the preset's
            (cosine for adm64_cond, else linear) unless the dict's ``noise_schedule`` key overrides it; with
            ``shared_unet``, the schedule that UNet was built with (``noise_schedule`` attribute, linear if none).
        checkpoint: guided-diffusion state dict (e.g. pretrained/256x256_diffusion_uncond.pt).
        random_weights: Allow ``checkpoint: ~`` (random UNet, for tests only).
        init_seed: Seed of those random weights.
        use_checkpoint: Gradient checkpointing inside the UNet (less activation memory, one more forward).
        dtype: 'fp32' or 'bf16' (autocast for the UNet pass; the loss itself stays fp32).
        num_diffusion_steps: T of the β schedule.
        loss_weight: Overall factor (basicsr convention), applied to both terms.
        class_label: ImageNet class id (0-999) for a class-conditional UNet (an error for an unconditional one).
            Default: the label of the prior sharing its UNet (``class_label`` attribute), else
            ``DEFAULT_CLASS_LABEL`` (see HSpaceExtractor).
        shared_unet: An already loaded frozen UNet to use instead of building one (DiffLI2DModel passes its
            prior's, so that the weights exist once per process). Not a YAML key.
    """

    def __init__(
        self,
        eps_weight: float = 1e-3,
        h_weight: float = 1e-6,
        t_range: tuple[int, int] = (0, 999),
        unet: str | dict = 'adm256_uncond',
        checkpoint: str | None = None,
        random_weights: bool = False,
        init_seed: int = 0,
        use_checkpoint: bool = False,
        dtype: str = 'fp32',
        num_diffusion_steps: int = 1000,
        loss_weight: float = 1.0,
        class_label: int | None = None,
        shared_unet: ADMUNet | None = None,
    ) -> None:
        super().__init__()
        if eps_weight < 0 or h_weight < 0 or eps_weight == h_weight == 0:
            raise ValueError(f'DiffLoss: eps_weight and h_weight must be >= 0 and not both 0, got {eps_weight}, '
                             f'{h_weight}')
        t_min, t_max = (int(v) for v in t_range)
        if not 0 <= t_min <= t_max < num_diffusion_steps:
            raise ValueError(f'DiffLoss: t_range must satisfy 0 <= t_min <= t_max < {num_diffusion_steps}, '
                             f'got {list(t_range)}')
        if dtype not in _DTYPES:
            raise ValueError(f'DiffLoss: dtype must be one of {sorted(_DTYPES)}, got {dtype!r}')
        self.eps_weight, self.h_weight = eps_weight * loss_weight, h_weight * loss_weight
        self.t_min, self.t_max, self.dtype = t_min, t_max, _DTYPES[dtype]
        if shared_unet is None:
            if checkpoint is None and not random_weights:
                raise ValueError('DiffLoss: set checkpoint (pretrained/256x256_diffusion_uncond.pt, see README) '
                                 'or, for tests only, random_weights: true')
            schedule = adm_noise_schedule(unet)
            self.class_label = resolve_class_label('DiffLoss', unet, class_label)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                shared_unet = ADMUNet(**adm_flags(unet), encoder_only=eps_weight == 0)
            if checkpoint is not None:
                load_adm_checkpoint(shared_unet, checkpoint, schedule)
        else:
            schedule = getattr(shared_unet, 'noise_schedule', 'linear')
            if class_label is None:
                class_label = getattr(shared_unet, 'class_label', None)
            self.class_label = resolve_class_label('DiffLoss', {'class_cond': shared_unet.num_classes is not None},
                                                   class_label)
        if eps_weight and shared_unet.encoder_only:
            raise ValueError('DiffLoss: the ε term needs the full UNet, but the shared one is encoder-only')
        # NOTE: a list, not a submodule, so a shared UNet is neither saved again nor moved twice with this loss
        self._unet = [shared_unet.eval().requires_grad_(False)]
        if use_checkpoint:
            for module in shared_unet.modules():
                if hasattr(module, 'use_checkpoint'):
                    module.use_checkpoint = True
        self.register_buffer('alphas_cumprod', named_alphas_cumprod(schedule, num_diffusion_steps), persistent=False)

    @property
    def unet(self) -> ADMUNet:
        return self._unet[0]

    def _apply(self, fn, recurse=True):  # .to()/.cuda() move the (unregistered) UNet too
        self._unet[0]._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def _unet_pass(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(ε̂ or None, h) in float32 for noised images x_t; the decoder runs only when the ε term is on."""
        y = class_labels(self.class_label, x_t.shape[0], x_t.device)
        with autocast(x_t.device.type, self.dtype):  # fp32: an enclosing autocast stays in force
            if self.eps_weight:
                out, h = self.unet.forward_with_hspace(x_t, t, *y)
                return out[:, :3].float(), h.float()  # with learn_sigma the other 3 channels are the variance
            return None, self.unet.forward_hspace(x_t, t, *y).float()

    def forward(self, restored: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(l_eps, l_h) for (B, 3, H, W) images in [0, 1]; a term is None when its weight is 0.

        The ground-truth branch runs without an autograd graph (it is a target), so only ŷ's activations
        are kept for the backward pass. Images are reflect-padded to the UNet's stride, and the padding is
        excluded from both terms: ε̂ is compared on the H x W image only, h cells are weighted by the
        fraction of their stride x stride area that lies inside the image.
        """
        b, _, height, width = restored.shape
        stride = self.unet.downsample_factor
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
