"""DiffLI2DModel: trains and tests a restoration network guided by a frozen diffusion prior.

Every batch goes through the frozen ``HSpaceExtractor`` (built from ``network_prior``, no gradient)
and then through ``net_g(lq, h_t1, h_t2)``. The prior exists once per process: it is not part of
``net_g``, so it is never wrapped in DDP, never saved in ``net_g`` checkpoints and never given to the
optimizer.

Options beyond basicsr's:
    network_prior: an ``HSpaceExtractor`` block with exactly two timesteps [t1, t2].
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
from difflid.archs.hspace_arch import HSpaceExtractor
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
        if opt['network_prior']['type'] != 'HSpaceExtractor':
            raise KeyError(f"network_prior.type must be HSpaceExtractor, got {opt['network_prior']['type']!r}")
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
        self.prior: HSpaceExtractor = build_network(prior_opt).to(device)
        super().__init__(opt)
        h_channels = getattr(self.get_bare_model(self.net_g), 'h_channels', self.prior.hspace_channels)
        if h_channels != self.prior.hspace_channels:
            raise ValueError(f'network_g.h_channels is {h_channels} but the prior gives '
                             f'{self.prior.hspace_channels}-channel features; set network_g.h_channels: '
                             f'{self.prior.hspace_channels}')
        t1, t2 = self.prior.timesteps
        get_root_logger().info(f'Frozen prior: {self.prior.unet.__class__.__name__}, h at t1={t1}, t2={t2}, '
                               f'{self.prior.hspace_channels} channels (not trained, not saved with net_g)')

    def restore(self, net: nn.Module, lq: torch.Tensor, fresh_noise: bool, tile: int = 0) -> torch.Tensor:
        """net(lq, h_t1, h_t2) for (B, 3, H, W) lq in [0, 1] of any size (see ``difflid.inference.restore``)."""
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
        if not diff_opt or diff_opt.get('type') != 'DiffLoss':
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
