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
    val.cache_prior: compute the prior's features of each validation image (or tile) once per run and reuse them
        at every later validation (default true in training, false at test time, where each image is seen once;
        the seeded noise makes them identical each time).
    val.prior_cache_mb: memory budget of that cache in MiB (default 2048); entries beyond it go to
        ``<experiments_root>/prior_cache`` (training) or ``<results_root>/prior_cache`` (test).
    train.diff_opt: a DiffLoss block; when it names the prior's weights it uses the prior's UNet.
    train.prior_features: 'online' (default, the paper's way: the prior runs on every training crop) or
        'precomputed': every batch brings its features (``f_cim``, ``f_hae``) from the store that
        ``tools/precompute_prior.py`` wrote, and the prior is not even built unless DiffLoss needs its network
        (docs/precomputed_prior.md). Validation then uses the stored features of whole images (``val.tile`` is not
        used there). train.prior_draws, train.prior_store, train.prior_store_dtype: see ``difflid.entry.precompute``.
"""
import math
from pathlib import Path

import torch
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY
from torch import nn

from difflid.inference import restore
from difflid.losses.diffloss_loss import DiffLoss
from difflid.models.base_restoration import RestorationModel, check_arch_options
from difflid.priors.base import GuidanceExtractor
from difflid.priors.builder import build_prior, prior_class, same_network, with_denoiser
from difflid.priors.cache import CachedGuidance, prior_cache_key, prior_store_dir
from difflid.utils.feature_store import FeatureStore
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
        self.cache_prior, self.prior_cache_mb = _prior_cache_options(val_opt, default=bool(opt['is_train']))
        train_opt = (opt.get('train') or {}) if opt['is_train'] else {}
        self.fresh_prior_noise = bool(train_opt.get('fresh_prior_noise', True))
        self.precomputed = train_opt.get('prior_features', 'online') == 'precomputed'
        self.stored_features: tuple[torch.Tensor, torch.Tensor] | None = None
        # built before SRModel's set-up, so that a DiffLoss can share its UNet
        self.opt = opt
        diff_opt = train_opt.get('diff_opt')
        prior_opt = dict(opt['network_prior'])
        needs_denoiser = self._shares_prior(diff_opt) and diff_opt.get('eps_weight', 1e-3)
        if needs_denoiser:
            prior_opt = with_denoiser(prior_opt)  # DiffLoss's ε term needs the whole network
        device = torch.device('cuda' if opt['num_gpu'] != 0 else 'cpu')
        self.prior: GuidanceExtractor | None = None
        if self.precomputed:
            self.cache_prior = False  # every batch brings its features
            store = FeatureStore(prior_store_dir(opt['network_prior'], opt['datasets']['train'],
                                                 train_opt.get('prior_store')))
            meta = store.manifest()['meta']
            channels, stride, timesteps = int(meta['channels']), int(meta['stride']), list(meta['timesteps'])
            source = f'precomputed in {store.root}'
            if self._shares_prior(diff_opt):  # DiffLoss runs the prior's UNet on the restored image anyway
                self.prior = build_prior(prior_opt).to(device)
                source += ' (the prior is built for DiffLoss only)'
        else:
            self.prior = build_prior(prior_opt).to(device)
            channels, stride = self.prior.feature_channels, self.prior.downsample_factor
            timesteps = self.prior.timesteps
            source = 'computed online'
        # stamped now, when the weights are loaded; the cache itself is built at the first validation
        self._prior_cache_key = prior_cache_key(prior_opt, device, self.prior.dtype) if self.cache_prior else None
        self.prior_cache: CachedGuidance | None = None
        self.feature_stride = stride
        super().__init__(opt)
        bare = self.get_bare_model(self.net_g)
        for key, expected in (('h_channels', channels), ('h_stride', stride)):
            if getattr(bare, key, expected) != expected:
                raise ValueError(f'network_g.{key} is {getattr(bare, key)} but the prior '
                                 f"({opt['network_prior']['type']}) gives {expected}; set network_g.{key}: {expected}")
        t1, t2 = timesteps[:2]
        get_root_logger().info(f"Frozen prior: {opt['network_prior']['type']}, features at t1={t1}, t2={t2}, "
                               f'{channels} channels at stride {stride}, {source} (not trained, not saved with net_g)')

    def restore(self, net: nn.Module, lq: torch.Tensor, fresh_noise: bool, tile: int = 0,
                prior: GuidanceExtractor | CachedGuidance | None = None) -> torch.Tensor:
        """net(lq, f_cim, f_hae) for (B, 3, H, W) lq in [0, 1] of any size (see ``difflid.inference.restore``),
        guided by ``prior`` (default: the frozen prior itself)."""
        return restore(net, lq, self.prior if prior is None else prior, fresh_noise, tile, self.tile_overlap)

    def validation_prior(self) -> GuidanceExtractor | CachedGuidance:
        """The prior that ``test`` uses: the cached one (built at the first call) unless ``val.cache_prior`` is off."""
        if not self.cache_prior:
            return self.prior
        if self.prior_cache is None:
            root = self.opt['path'].get('experiments_root' if self.opt['is_train'] else 'results_root')
            disk_dir = Path(root) / 'prior_cache' if root else None
            self.prior_cache = CachedGuidance(self.prior, self._prior_cache_key, self.prior_cache_mb, disk_dir)
            beyond = f'then files in {disk_dir}' if disk_dir else 'the rest recomputed'
            get_root_logger().info(f'Validation caches the prior\'s features: {self.prior_cache_mb:g} MiB in memory, '
                                   f'{beyond} (val.cache_prior: false turns this off)')
        return self.prior_cache

    def feed_data(self, data: dict) -> None:
        """lq/gt as SRModel's; the batch's stored prior features when it brings them (precomputed training)."""
        super().feed_data(data)
        self.stored_features = ((data['f_cim'].to(self.device), data['f_hae'].to(self.device))
                                if 'f_cim' in data else None)

    def restore_train(self) -> torch.Tensor:
        if self.stored_features is not None:  # a stride-aligned crop and the window of its whole image's features
            return self.net_g(self.lq, *self.stored_features)
        if self.prior is None:
            raise RuntimeError('train.prior_features: precomputed, but the batch brings no f_cim/f_hae features')
        return self.restore(self.net_g, self.lq, fresh_noise=self.fresh_prior_noise)

    def build_diff_loss(self, diff_opt: dict) -> nn.Module:
        """DiffLoss on the prior's own network when both name the same one: one copy of the weights per process."""
        if not self._shares_prior(diff_opt):
            return super().build_diff_loss(diff_opt)
        loss_opt = {k: v for k, v in diff_opt.items() if k != 'type' and k not in DiffLoss.network_keys}
        get_root_logger().info('DiffLoss uses the frozen prior\'s network (one copy of the weights)')
        return DiffLoss(**loss_opt, shared_prior=self.prior).to(self.device)

    def _shares_prior(self, diff_opt: dict | None) -> bool:
        """Whether ``train.diff_opt`` is a DiffLoss on the very network of ``network_prior`` (same weights, same
        schedule), which the prior can run whole (``has_denoiser_option``)."""
        if not diff_opt or diff_opt.get('type') != 'DiffLoss':
            return False
        prior = self.opt['network_prior']
        return prior_class(prior).has_denoiser_option and same_network(DiffLoss.prior_block(diff_opt), prior)

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img: bool) -> None:
        """RestorationModel's, then the prior cache's counts in the log (the first validation fills it)."""
        super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        if self.prior_cache is not None:
            stats = self.prior_cache.stats
            get_root_logger().info(f'Prior cache: {stats.hits} hits ({stats.disk_reads} from disk), {stats.misses} '
                                   f'misses, {self.prior_cache.memory_entries} entries in memory so far')

    @torch.no_grad()
    def test(self) -> None:
        """Whole-image (or tiled) restoration with the prior's seeded noise: deterministic."""
        net = getattr(self, 'net_g_ema', self.net_g)
        was_training = net.training
        net.eval()
        if self.stored_features is not None:  # whole image: its stored features (draw 0, the seeded noise)
            self.output = restore(net, self.lq, StoredGuidance(*self.stored_features, self.feature_stride))
        else:
            self.output = self.restore(net, self.lq, fresh_noise=False, tile=self.tile, prior=self.validation_prior())
        net.train(was_training)


class StoredGuidance:
    """Features that came with a batch, with the ``guidance`` interface of a prior (``difflid.inference.restore``
    pads the image to the stride and asks for the features of the padded image: these are they)."""

    def __init__(self, f_cim: torch.Tensor, f_hae: torch.Tensor, stride: int) -> None:
        self.features, self.downsample_factor = (f_cim, f_hae), stride

    def guidance(self, img: torch.Tensor, fresh_noise: bool = False,
                 origin: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, torch.Tensor]:
        cells = (img.shape[-2] // self.downsample_factor, img.shape[-1] // self.downsample_factor)
        if tuple(self.features[0].shape[-2:]) != cells:
            raise ValueError(f'stored features are {tuple(self.features[0].shape[-2:])} cells, the image needs {cells}')
        return self.features


def _prior_cache_options(val_opt: dict, default: bool) -> tuple[bool, float]:
    """(val.cache_prior, val.prior_cache_mb), checked: a wrong value fails at start-up, naming the key. The cache is
    on by default in training (every validation after the first reuses it) and off at test time (one pass)."""
    cache_prior = val_opt.get('cache_prior', default)
    if not isinstance(cache_prior, bool):
        raise ValueError(f'val.cache_prior must be true or false, got {cache_prior!r}')
    memory_mb = val_opt.get('prior_cache_mb', 2048)
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int | float) or not 0 <= memory_mb < math.inf:
        raise ValueError(f'val.prior_cache_mb must be a number of MiB >= 0 (e.g. 2048; 0 keeps nothing in memory), '
                         f'got {memory_mb!r}')
    return cache_prior, memory_mb
