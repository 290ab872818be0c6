"""DiffusionPriorModel: train a diffusion UNet on clean images of your domain, to serve as DiffLI²D's prior.

The objective is the ε-prediction loss of DDPM (Eq. 4 of the DiffLI²D paper; Ho et al. 2020):
L = E_{x_0, t, ε} ||ε - ε_θ(sqrt(ᾱ_t)·x_0 + sqrt(1-ᾱ_t)·ε, t)||², t uniform in [0, T), ε ~ N(0, I), x_0 a clean
image in [-1, 1]. With ``learn_sigma`` flags (ADM's 6 output channels) the first 3 channels are ε̂; the variance
channels are not trained (neither h-space nor DDIM sampling reads them).

Everything else is basicsr's (and ``RestorationModel``'s): DDP, ``--auto_resume``, EMA (``train.ema_decay``),
tensorboard, atomic checkpoints, NaN guard. The checkpoint records the network options and the noise schedule,
and loads strictly into the prior: ``network_prior: {type: HSpaceExtractor, unet: <network_g without type>,
checkpoint: .../net_g_latest.pth}`` for ``ADMUNet`` (EMA weights when present), ``{type: DiffusersUNetExtractor,
config: <network_g.config>, checkpoint: ...}`` for ``DiffusersUNet2D``.

Options beyond basicsr's:
    network_g: ``{type: ADMUNet, preset: adm_tiny, ...guided-diffusion flags}`` (the same dict as the prior's
        ``unet:``) or ``{type: DiffusersUNet2D, config: {...}}``; ``noise_schedule`` ('linear' or 'cosine';
        default: the ADM preset's, else linear) and ``num_diffusion_steps`` (T, default 1000) also go here.
    train.eps_opt: the loss between ε̂ and ε (default ``{type: MSELoss, loss_weight: 1.0}``).
    val.timesteps: the timesteps at which validation scores ε-MSE, with the seeded position-indexed noise (the same
        at every validation); default [100, 300, 500, 700, 900].
    val.num_samples / val.sample_steps / val.sample_size: a DDIM sample grid of this many images (default 0: none)
        written to ``visualization/`` at each validation, from a fixed seed.
"""
from collections import OrderedDict
from os import path as osp

import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from difflid.models.base_restoration import RestorationModel
from difflid.priors.adm_unet_arch import adm_flags, adm_noise_schedule
from difflid.priors.noise import position_noise
from difflid.priors.sampling import write_image_grid
from difflid.priors.schedules import ddim_sample, named_alphas_cumprod, q_sample, to_diffusion_range

__all__ = ['DiffusionPriorModel', 'resolve_prior_network']

_MODEL_KEYS = ('noise_schedule', 'num_diffusion_steps')


def resolve_prior_network(network_g: dict) -> tuple[dict, str, int]:
    """(constructor block, noise schedule, T) of a prior's ``network_g``: an ADM ``preset`` is expanded into its
    flags (so the checkpoint records every flag), and the model-level keys are taken out."""
    block = {k: v for k, v in network_g.items() if k not in _MODEL_KEYS}
    steps = int(network_g.get('num_diffusion_steps', 1000))
    if block.get('type') == 'ADMUNet':
        flags = {k: v for k, v in network_g.items() if k not in ('type', 'num_diffusion_steps')}
        if adm_flags(flags).get('class_cond', False):
            raise ValueError('network_g: DiffusionPriorModel trains unconditional priors (a folder of images has no '
                             'class labels); set class_cond: false')
        return {'type': 'ADMUNet', **adm_flags(flags)}, adm_noise_schedule(flags), steps
    schedule = network_g.get('noise_schedule', 'linear')
    named_alphas_cumprod(schedule, 2)  # the error naming the valid schedules
    return block, schedule, steps


@MODEL_REGISTRY.register()
class DiffusionPriorModel(RestorationModel):
    """Trains ``net_g(x_t, t) -> ε̂`` with the ε-prediction loss (see the module docstring)."""

    def __init__(self, opt: dict) -> None:
        network_g, self.noise_schedule, self.num_diffusion_steps = resolve_prior_network(opt['network_g'])
        super().__init__({**opt, 'network_g': network_g})
        self.alphas_cumprod = named_alphas_cumprod(self.noise_schedule, self.num_diffusion_steps).to(self.device)
        get_root_logger().info(f'Diffusion prior: {self.noise_schedule} noise schedule, T={self.num_diffusion_steps}')

    def init_training_settings(self) -> None:
        """EMA, the ε loss, optimizer and schedulers (SRModel's, without its pixel/perceptual losses)."""
        self.net_g.train()
        train_opt = self.opt['train']
        self.ema_decay = train_opt.get('ema_decay', 0)
        if self.ema_decay > 0:
            self.net_g_ema = build_network(self.opt['network_g']).to(self.device).eval()
            load_path = self.opt['path'].get('pretrain_network_g')
            if load_path is not None:
                self.load_network(self.net_g_ema, load_path, self.opt['path'].get('strict_load_g', True), 'params_ema')
            else:
                self.model_ema(0)
        self.cri_eps = build_loss(dict(train_opt.get('eps_opt') or {'type': 'MSELoss', 'loss_weight': 1.0}))
        self.cri_eps = self.cri_eps.to(self.device)
        self.cri_diff = None
        self.setup_optimizers()
        self.setup_schedulers()

    def checkpoint_config(self) -> dict:
        """What a net_g checkpoint records: the network options and the noise schedule it was trained with."""
        return {**super().checkpoint_config(), 'noise_schedule': self.noise_schedule,
                'num_diffusion_steps': self.num_diffusion_steps}

    def feed_data(self, data: dict) -> None:
        self.gt = data['gt'].to(self.device)

    def predict_eps(self, net: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε̂ of ``net``: its output's first 3 channels (ADM with learn_sigma has 6)."""
        return net(x_t, t)[:, :3]

    def optimize_parameters(self, current_iter: int) -> None:
        self.optimizer_g.zero_grad()
        x0 = to_diffusion_range(self.gt)
        t = torch.randint(0, self.num_diffusion_steps, (x0.shape[0],), device=self.device)
        eps = torch.randn_like(x0)
        x_t = q_sample(x0, t, eps, self.alphas_cumprod)
        l_eps = self.cri_eps(self.predict_eps(self.net_g, x_t, t), eps)
        self.check_finite(l_eps, current_iter)
        l_eps.backward()
        self.optimizer_g.step()
        self.log_dict = self.reduce_loss_dict(OrderedDict(l_eps=l_eps))
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    @torch.no_grad()
    def eps_mse(self, net: torch.nn.Module, img: torch.Tensor, timesteps: list[int], seed: int) -> torch.Tensor:
        """MSE of ε̂ at each of ``timesteps`` for (B, 3, H, W) images in [0, 1], with seeded position-indexed noise:
        the same value at every validation for the same weights. Returns (len(timesteps),)."""
        x0 = to_diffusion_range(img)
        b = x0.shape[0]
        eps = position_noise(seed, timesteps, *x0.shape[1:], device=x0.device)  # (T', C, H, W), shared by the batch
        t = torch.tensor(timesteps, device=x0.device).repeat_interleave(b)
        eps = eps.repeat_interleave(b, dim=0)
        x_t = q_sample(x0.repeat(len(timesteps), 1, 1, 1), t, eps, self.alphas_cumprod)
        err = (self.predict_eps(net, x_t, t).float() - eps).square().flatten(1).mean(1)
        return err.view(len(timesteps), b).mean(1)

    @torch.no_grad()
    def sample(self, num: int, size: int, steps: int, seed: int = 0) -> torch.Tensor:
        """``num`` DDIM samples (num, 3, size, size) in [0, 1] from the EMA network when there is one."""
        net = getattr(self, 'net_g_ema', self.net_g)
        was_training = net.training
        net.eval()
        x = ddim_sample(lambda x_t, t: self.predict_eps(net, x_t, t), (num, 3, size, size), self.alphas_cumprod,
                        steps, generator=torch.Generator().manual_seed(seed), device=self.device)
        net.train(was_training)
        return (x + 1) / 2

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img: bool) -> None:
        """ε-MSE per validation timestep (logged as eps_mse_t<t> and their mean eps_mse), and a sample grid."""
        val_opt = self.opt['val']
        timesteps = [int(t) for t in val_opt.get('timesteps', (100, 300, 500, 700, 900))]
        net = getattr(self, 'net_g_ema', self.net_g)
        was_training = net.training
        net.eval()
        total, count = torch.zeros(len(timesteps), dtype=torch.float64), 0
        for data in dataloader:
            gt = data['gt'].to(self.device)
            total += self.eps_mse(net, gt, timesteps, int(val_opt.get('seed', 0))).double().cpu() * gt.shape[0]
            count += gt.shape[0]
        net.train(was_training)
        name = dataloader.dataset.opt['name']
        results = {f'eps_mse_t{t}': float(v) for t, v in zip(timesteps, total / max(count, 1), strict=True)}
        results = {'eps_mse': sum(results.values()) / len(results), **results}
        get_root_logger().info(f'Validation {name}, iter {current_iter}: '
                               + ', '.join(f'{k} {v:.5f}' for k, v in results.items()))
        if tb_logger:
            for key, value in results.items():
                tb_logger.add_scalar(f'metrics/{name}/{key}', value, current_iter)
        self.metric_results = results
        num_samples = int(val_opt.get('num_samples', 0))
        if num_samples and save_img:
            size = int(val_opt.get('sample_size', self.opt['datasets']['train'].get('gt_size', 64)))
            grid = self.sample(num_samples, size, int(val_opt.get('sample_steps', 50)))
            write_image_grid(grid, osp.join(self.opt['path']['visualization'], f'samples_{current_iter}.png'))

