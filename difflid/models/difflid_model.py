"""DiffLI2DModel: trains and tests a restoration network guided by a frozen diffusion prior.

Every batch goes through the frozen feature source built from ``network_prior`` (any registered
``GuidanceExtractor``: h-space by default, no gradient) and then through ``net_g(lq, f_cim, f_hae)``.
The prior exists once per process: it is not part of ``net_g``, so it is never wrapped in DDP, never
saved in ``net_g`` checkpoints and never given to the optimizer.

Options beyond basicsr's:
    network_prior: a ``GuidanceExtractor`` block (``HSpaceExtractor`` for the paper) with exactly two
        timesteps [t1, t2].
    train.fresh_prior_noise: draw new diffusion noise for every training batch (default true, as the
        paper's q(x_t|x_0)); validation and test always use the prior's seeded noise, so two test runs
        give identical outputs.
    val.tile / val.tile_overlap: restore images in overlapping tiles of this size (a multiple of 32;
        0 = whole image, the default), blended without seams.
    train.diff_opt: a DiffLoss block; when it names the prior's weights it uses the prior's UNet.
"""
import torch
from basicsr.archs import build_network
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY
from torch import nn

from difflid.archs.adm_unet_arch import adm_flags
from difflid.archs.guidance_base import GuidanceExtractor
from difflid.inference import restore
from difflid.losses.diffloss_loss import DiffLoss
from difflid.models.base_restoration import RestorationModel, check_arch_options
from difflid.utils.tiling import check_tiling

__all__ = ['DiffLI2DModel']


@MODEL_REGISTRY.register()
class DiffLI2DModel(RestorationModel):
    """SRModel whose generator also receives h-space features of its input from a frozen prior."""

    def __init__(self, opt: dict) -> None:
        check_arch_options('network_prior', opt.get('network_prior'))
        timesteps = opt['network_prior'].get('timesteps', [0, 500])
        if len(timesteps) != 2:
            raise ValueError(f'network_prior.timesteps must be [t1, t2] (content, haze), got {timesteps}')
        val_opt = opt.get('val') or {}
        self.tile, self.tile_overlap = int(val_opt.get('tile', 0) or 0), int(val_opt.get('tile_overlap', 32))
        check_tiling(self.tile, self.tile_overlap, 32, ('val.tile', 'val.tile_overlap'))
        self.fresh_prior_noise = bool((opt.get('train') or {}).get('fresh_prior_noise', True))
        # built before SRModel's set-up, so that a DiffLoss can share its UNet
        self.opt = opt
        diff_opt = (opt.get('train') or {}).get('diff_opt') if opt['is_train'] else None
        prior_opt = dict(opt['network_prior'])
        if self._shares_prior(diff_opt) and diff_opt.get('eps_weight', 1e-3):
            prior_opt['encoder_only'] = False  # DiffLoss's ε term needs the decoder too
        device = torch.device('cuda' if opt['num_gpu'] != 0 else 'cpu')
        self.prior: GuidanceExtractor = build_network(prior_opt).to(device)
        if not isinstance(self.prior, GuidanceExtractor):
            raise KeyError(f"network_prior.type must be a feature source (a GuidanceExtractor such as "
                           f"HSpaceExtractor), got {opt['network_prior']['type']!r}")
        super().__init__(opt)
        bare = self.get_bare_model(self.net_g)
        for key, expected in (('h_channels', self.prior.feature_channels), ('h_stride', self.prior.downsample_factor)):
            if getattr(bare, key, expected) != expected:
                raise ValueError(f'network_g.{key} is {getattr(bare, key)} but the prior '
                                 f"({opt['network_prior']['type']}) gives {expected}; set network_g.{key}: {expected}")
        t1, t2 = self.prior.timesteps
        get_root_logger().info(f'Frozen prior: {type(self.prior).__name__}, features at t1={t1}, t2={t2}, '
                               f'{self.prior.feature_channels} channels at stride {self.prior.downsample_factor} '
                               '(not trained, not saved with net_g)')

    def restore(self, net: nn.Module, lq: torch.Tensor, fresh_noise: bool, tile: int = 0) -> torch.Tensor:
        """net(lq, f_cim, f_hae) for (B, 3, H, W) lq in [0, 1] of any size (see ``difflid.inference.restore``)."""
        return restore(net, lq, self.prior, fresh_noise, tile, self.tile_overlap)

    def restore_train(self) -> torch.Tensor:
        return self.restore(self.net_g, self.lq, fresh_noise=self.fresh_prior_noise)

    def build_diff_loss(self, diff_opt: dict) -> nn.Module:
        """DiffLoss on the prior's own UNet when both name the same weights: one copy per process."""
        if not self._shares_prior(diff_opt):
            return super().build_diff_loss(diff_opt)
        diff_opt.pop('type')
        for key in ('unet', 'checkpoint', 'random_weights', 'init_seed'):
            diff_opt.pop(key, None)
        get_root_logger().info('DiffLoss uses the frozen prior\'s UNet (one copy of the weights)')
        return DiffLoss(**diff_opt, shared_unet=self.prior.unet).to(self.device)

    def _shares_prior(self, diff_opt: dict | None) -> bool:
        if not diff_opt or diff_opt.get('type') != 'DiffLoss' or self.opt['network_prior']['type'] != 'HSpaceExtractor':
            return False
        prior = self.opt['network_prior']
        same = [adm_flags(diff_opt.get('unet', 'adm256_uncond')) == adm_flags(prior.get('unet', 'adm256_uncond'))]
        same += [diff_opt.get(k, d) == prior.get(k, d) for k, d in (('checkpoint', None), ('random_weights', False),
                                                                    ('init_seed', 0))]
        return all(same)

    @torch.no_grad()
    def test(self) -> None:
        """Whole-image (or tiled) restoration with the prior's seeded noise: deterministic."""
        net = getattr(self, 'net_g_ema', self.net_g)
        was_training = net.training
        net.eval()
        self.output = self.restore(net, self.lq, fresh_noise=False, tile=self.tile)
        net.train(was_training)
