"""DiffusersUNetExtractor: a diffusers ``UNet2DModel`` folder as DiffLI²D's frozen diffusion prior.

Any unconditional pixel-space DDPM/DDIM UNet saved with diffusers' ``save_pretrained`` (``config.json`` and
``diffusion_pytorch_model.safetensors``/``.bin``), or a pipeline folder holding it under ``unet/``, becomes
the h-space source: x_t is formed by the ``GuidanceExtractor`` base (seeded position-indexed noise) with the
ᾱ_t of the model's own scheduler config when one is found (``scheduler_config.json`` in the folder, in
``scheduler/`` of a pipeline folder, or in ``../scheduler/`` of a pipeline's ``unet/`` folder), else with the
base's linear schedule. The UNet gets the integer t; h is the output of its ``mid_block``. Only the time
embedding, ``conv_in``, the down blocks and the middle block are run (exactly as ``UNet2DModel.forward`` runs
them); the up blocks are not kept. h has ``block_out_channels[-1]`` channels at stride 2**(down blocks that
down-sample), e.g. 8 for a four-block 32x32 CIFAR-10 DDPM, 32 for a six-block 256x256 model.

Nothing is ever downloaded: the folder must be local (``local_files_only``). diffusers is an optional
dependency (``pip install -e ".[diffusers]"``), imported only when this extractor is built.
"""
import json
import logging
from pathlib import Path
from typing import Unpack

import torch
from basicsr.utils.registry import ARCH_REGISTRY

from difflid.priors.base import PRIOR_DEFAULTS, GuidanceExtractor, PriorOptions
from difflid.priors.schedules import PREDICTION_TYPES, epsilon_from_prediction, named_alphas_cumprod
from difflid.utils.checkpoint_io import network_state, package_path, read_checkpoint

__all__ = ['DiffusersUNetExtractor', 'find_scheduler_config', 'import_diffusers', 'load_diffusers_prior',
           'load_trained_unet', 'unet_downsample_factor',
           'resolve_unet_folder']

logger = logging.getLogger('basicsr')

INSTALL_HELP = ('DiffusersUNetExtractor needs the diffusers package: pip install -e ".[diffusers]" '
                '(or pip install diffusers)')
_WEIGHT_FILES = ('diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.bin',
                 'diffusion_pytorch_model.safetensors.index.json', 'diffusion_pytorch_model.bin.index.json')
_SCHEDULER_FILE = 'scheduler_config.json'


def import_diffusers():
    try:
        import diffusers
    except ImportError as err:
        raise ImportError(INSTALL_HELP) from err
    return diffusers


def resolve_unet_folder(path: str | Path, option: str = 'DiffusersUNetExtractor: network_prior.diffusers') -> Path:
    """The folder holding the UNet's ``config.json``: ``path`` itself, or ``path/unet`` of a pipeline folder.
    Raises FileNotFoundError naming the path when neither exists."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f'{option} folder not found: {folder.resolve()} '
                                '(a UNet2DModel saved with save_pretrained, or a pipeline folder with unet/)')
    for candidate in (folder, folder / 'unet'):
        if (candidate / 'config.json').is_file():
            return candidate
    raise FileNotFoundError(f'{option}: no config.json in {folder.resolve()} nor in its unet/ subfolder '
                            '(it must be a UNet2DModel save_pretrained folder or a pipeline '
                            'folder with unet/)')


def find_scheduler_config(unet_folder: Path) -> Path | None:
    """The scheduler config that goes with a UNet folder: in the folder, in ``scheduler/`` below it (a pipeline
    folder given directly) or in ``../scheduler/`` (the ``unet/`` of a pipeline); None when there is none."""
    for folder in (unet_folder, unet_folder / 'scheduler', unet_folder.parent / 'scheduler'):
        if (folder / _SCHEDULER_FILE).is_file():
            return folder / _SCHEDULER_FILE
    return None


def scheduler_alphas_cumprod(config_file: Path) -> torch.Tensor:
    """ᾱ_t of a diffusers scheduler config, computed by diffusers itself: the class the config names when it has
    ``alphas_cumprod`` (DDPM, DDIM, PNDM, ...), else DDPMScheduler with the same β fields."""
    diffusers = import_diffusers()
    config = json.loads(config_file.read_text())
    cls = getattr(diffusers, str(config.get('_class_name')), None)
    if cls is not None and hasattr(cls, 'from_config'):
        try:
            scheduler = cls.from_config(config)
        except Exception:  # a scheduler class that cannot be built from its own fields: the DDPM reading below
            scheduler = None
        if scheduler is not None and isinstance(getattr(scheduler, 'alphas_cumprod', None), torch.Tensor):
            return scheduler.alphas_cumprod.double()
    return diffusers.DDPMScheduler.from_config(config).alphas_cumprod.double()


def load_trained_unet(unet: torch.nn.Module, path: str | Path) -> str | None:
    """Load the weights of a trained ``DiffusersUNet2D`` checkpoint strictly into ``unet``; return the noise schedule
    the checkpoint records (None for a bare state dict)."""
    path = package_path(path)
    if not path.is_file():
        raise FileNotFoundError(f'DiffusersUNetExtractor: network_prior.checkpoint not found: {path.resolve()} (a '
                                'net_g_*.pth written by DiffusionPriorModel with network_g.type DiffusersUNet2D)')
    state, record = network_state(read_checkpoint(path))
    if state is None:
        raise ValueError(f'DiffusersUNetExtractor: {path} is not a checkpoint of tensors')
    state = {k.removeprefix('module.').removeprefix('unet.'): v for k, v in state.items()}
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f'DiffusersUNetExtractor: checkpoint {path} does not fit network_prior.config (use the '
                         f'training\'s network_g.config): {err}') from err
    return record.get('noise_schedule')


def load_diffusers_prior(diffusers: str | None, config: dict | None, checkpoint: str | None, random_weights: bool,
                         init_seed: int, noise_schedule: str = 'linear', num_diffusion_steps: int = 1000,
                         beta_start: float = 1e-4, beta_end: float = 0.02,
                         prediction_type: str | None = None) -> tuple[torch.nn.Module, torch.Tensor, str]:
    """The whole ``UNet2DModel`` of a diffusers prior, its ᾱ_t (float64, (T,)) and what its output predicts
    (``PREDICTION_TYPES``), from the options of ``DiffusersUNetExtractor`` (see there).

    ᾱ_t comes from the folder's scheduler config when there is one, else from ``noise_schedule``; the prediction type
    from ``prediction_type`` when given (it must then agree with the scheduler config's), else from the scheduler
    config, else 'epsilon' (what ``DiffusionPriorModel`` trains).
    """
    if diffusers is None and not ((random_weights or checkpoint) and config is not None):
        raise ValueError('DiffusersUNetExtractor: no network_prior.diffusers folder given (a UNet2DModel '
                         'save_pretrained folder or a pipeline folder with unet/), nor a trained checkpoint with '
                         'its config (network_prior.checkpoint and network_prior.config, the training\'s '
                         'network_g.config). (For tests and demos only, `random_weights: true` with a `config:` '
                         'dict of UNet2DModel arguments builds a random prior.)')
    library = import_diffusers()
    folder = None if diffusers is None else resolve_unet_folder(diffusers)
    scheduler_file = None if folder is None else find_scheduler_config(folder)
    if scheduler_file is None:
        alphas_cumprod = named_alphas_cumprod(noise_schedule, num_diffusion_steps, beta_start, beta_end)
        logger.info(f'DiffusersUNetExtractor: no {_SCHEDULER_FILE} found with {diffusers or checkpoint}; using '
                    f'the {noise_schedule} β schedule (network_prior.noise_schedule, T={num_diffusion_steps})')
    else:
        alphas_cumprod = scheduler_alphas_cumprod(scheduler_file)
        logger.info(f'DiffusersUNetExtractor: ᾱ_t from {scheduler_file} (T={len(alphas_cumprod)})')
    prediction_type = _prediction_type(scheduler_file, prediction_type)
    if random_weights or checkpoint is not None:
        kwargs = dict(config) if config is not None else library.UNet2DModel.load_config(folder,
                                                                                      local_files_only=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            unet = library.UNet2DModel.from_config(kwargs)
        if random_weights:
            logger.warning('DiffusersUNetExtractor: the diffusion prior has RANDOM weights (random_weights: '
                           'true); fine for tests and demos only.')
        else:
            trained = load_trained_unet(unet, checkpoint)
            if trained is not None and scheduler_file is None and trained != noise_schedule:
                raise ValueError(f'DiffusersUNetExtractor: checkpoint {checkpoint} was trained with the {trained} '
                                 f'noise schedule; set network_prior.noise_schedule: {trained}')
            logger.info(f'DiffusersUNetExtractor: loaded trained UNet2DModel weights from {checkpoint}')
    else:
        if not any((folder / name).is_file() for name in _WEIGHT_FILES):
            raise FileNotFoundError(f'DiffusersUNetExtractor: no weights in {folder.resolve()} (expected one of '
                                    f'{", ".join(_WEIGHT_FILES[:2])}, as save_pretrained writes)')
        unet = library.UNet2DModel.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
        logger.info(f'DiffusersUNetExtractor: loaded UNet2DModel from {folder}')
    return unet, alphas_cumprod, prediction_type


def _prediction_type(scheduler_file: Path | None, option: str | None) -> str:
    """The network's output type: the option, the scheduler config's ``prediction_type`` or 'epsilon'; an error when
    the two disagree or the value is unknown (a v- or x0-model read as ε would give silent garbage)."""
    configured = None if scheduler_file is None else json.loads(scheduler_file.read_text()).get('prediction_type')
    if option is not None and configured is not None and option != configured:
        raise ValueError(f'DiffusersUNetExtractor: network_prior.prediction_type is {option!r}, but {scheduler_file} '
                         f'says {configured!r}; remove the option or make them agree')
    prediction_type = option or configured or 'epsilon'
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f'DiffusersUNetExtractor: prediction_type {prediction_type!r} '
                         f'({scheduler_file or "network_prior.prediction_type"}) is not supported; supported: '
                         f'{", ".join(PREDICTION_TYPES)}')
    return prediction_type


def unet_downsample_factor(unet: torch.nn.Module) -> int:
    """2 ** (number of down blocks that down-sample): every block but the last in a UNet2DModel. Inputs must be
    multiples of it, and the mid block (h-space) is at this stride."""
    return 2 ** sum(getattr(block, 'downsamplers', None) is not None for block in unet.down_blocks)


@ARCH_REGISTRY.register()
class DiffusersUNetExtractor(GuidanceExtractor):
    """Frozen diffusers ``UNet2DModel`` returning its middle-block output (h-space) at several timesteps.

    Args:
        diffusers: Folder of a ``UNet2DModel`` saved with ``save_pretrained`` (config.json and weights), or of a
            pipeline with ``unet/`` (and ``scheduler/``). Loaded with ``local_files_only``: never a download.
        random_weights: Random weights instead of the folder's (tests and demos only; also the random control of
            ``control_options``): the architecture comes from ``config`` or else from the folder's config.json.
        init_seed: Seed of the random weights.
        config: ``UNet2DModel`` keyword arguments for ``random_weights`` or ``checkpoint`` without a folder (or
            instead of its config.json).
        checkpoint: Weights of a ``DiffusersUNet2D`` trained with ``DiffusionPriorModel`` (its ``net_g_*.pth``; EMA
            weights when present), loaded strictly into the architecture of ``config`` (the same dict as the
            training's ``network_g.config``) or of the folder.
        noise_schedule: 'linear' or 'cosine': the schedule when no scheduler config is found (a trained checkpoint
            records its own, which must agree).
        prediction_type: What the UNet's output is: 'epsilon', 'v_prediction' or 'sample' (x_0). Default: the
            scheduler config's, else 'epsilon'. DiffLoss and sampling convert it to ε.
        keep_decoder: Keep the up blocks (the whole network: DiffLoss's ε term, sampling). Default: only the encoder
            and middle block, which is all the features need.
        **options: ``PriorOptions``; the timesteps are checked against T of the scheduler config when there is one
            (``num_diffusion_steps``, ``beta_start`` and ``beta_end`` then go unused).
    """

    has_denoiser_option = True
    tap_options = (*GuidanceExtractor.tap_options, 'keep_decoder')

    @classmethod
    def denoiser_options(cls) -> dict:
        return {'keep_decoder': True}

    def __init__(
        self,
        diffusers: str | None = None,
        random_weights: bool = False,
        init_seed: int = 0,
        config: dict | None = None,
        checkpoint: str | None = None,
        noise_schedule: str = 'linear',
        prediction_type: str | None = None,
        keep_decoder: bool = False,
        **options: Unpack[PriorOptions],
    ) -> None:
        super().__init__(**{**options, 'timesteps': [0]})
        betas = (options.get(k, PRIOR_DEFAULTS[k]) for k in ('beta_start', 'beta_end'))
        unet, alphas_cumprod, self.prediction_type = load_diffusers_prior(
            diffusers, config, checkpoint, random_weights, init_seed, noise_schedule, self.num_diffusion_steps, *betas,
            prediction_type)
        # the schedule first: timesteps are checked against the scheduler's T, not the linear default's
        self.set_schedule(alphas_cumprod)
        self.timesteps = self.check_timesteps(options.get('timesteps', PRIOR_DEFAULTS['timesteps']))
        self._check_supported(unet, diffusers)
        if not keep_decoder:  # h is the middle block's output: the decoder is not needed
            unet.up_blocks = torch.nn.ModuleList()
            unet.conv_norm_out = unet.conv_act = unet.conv_out = None
        self.keep_decoder = keep_decoder
        self.unet = unet
        size = unet.config.sample_size
        self.native_size = int((size[0] if isinstance(size, list | tuple) else size) or 64)
        self.freeze()

    @staticmethod
    def _check_supported(unet, source) -> None:
        cfg = unet.config
        problems = []
        if unet.mid_block is None:
            problems.append('it has no mid_block (mid_block_type is None), so no h-space')
        if unet.class_embedding is not None:
            problems.append(f'it is class-conditional (class_embed_type={cfg.class_embed_type!r}, '
                            f'num_class_embeds={cfg.num_class_embeds!r}); only unconditional models are supported')
        if cfg.time_embedding_type != 'positional':
            problems.append(f'its time_embedding_type is {cfg.time_embedding_type!r} (it takes noise levels, not '
                            'integer DDPM timesteps); only positional is supported')
        if cfg.in_channels != 3:
            problems.append(f'it takes {cfg.in_channels} input channels, not RGB (3)')
        if problems:
            raise ValueError(f'DiffusersUNetExtractor: the UNet2DModel of {source} cannot serve as the prior: '
                             + '; '.join(problems))

    @property
    def feature_channels(self) -> int:
        """Channels of the middle block (``block_out_channels[-1]``)."""
        return int(self.unet.config.block_out_channels[-1])

    @property
    def downsample_factor(self) -> int:
        """The mid block's stride (``unet_downsample_factor``)."""
        return unet_downsample_factor(self.unet)

    @property
    def has_denoiser(self) -> bool:
        return self.keep_decoder

    def diffusion_pass(self, x_t: torch.Tensor, t: torch.Tensor,
                       with_eps: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        if not with_eps:
            return None, self._features(x_t, t)
        if not self.has_denoiser:
            raise ValueError('DiffusersUNetExtractor: the ε prediction needs the whole UNet; build it with '
                             'keep_decoder: true')
        middle: list[torch.Tensor] = []
        hook = self.unet.mid_block.register_forward_hook(lambda module, args, out: middle.append(out))
        try:
            out = self.unet(x_t, t).sample[:, :3]
        finally:
            hook.remove()
        alpha_bar = self.alphas_cumprod[t].float()[:, None, None, None]
        return epsilon_from_prediction(out, x_t, alpha_bar, self.prediction_type), middle[0]

    def _features(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``UNet2DModel.forward`` up to and including the middle block (its steps 0-4)."""
        unet = self.unet
        sample = 2 * x_t - 1.0 if unet.config.center_input_sample else x_t
        emb = unet.time_embedding(unet.time_proj(t).to(dtype=unet.dtype))
        skip_sample = sample
        sample = unet.conv_in(sample)
        for block in unet.down_blocks:
            if hasattr(block, 'skip_conv'):
                sample, _, skip_sample = block(hidden_states=sample, temb=emb, skip_sample=skip_sample)
            else:
                sample, _ = block(hidden_states=sample, temb=emb)
        return unet.mid_block(sample, emb)
