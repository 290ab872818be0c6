"""The ADM (guided-diffusion) side of the prior family: loading a checkpoint strictly, building the frozen UNet of a
preset, its class label and noise schedule, and ``ADMFeatureSource``, the base of the members that run an ADM UNet
(``HSpaceExtractor``, ``ReleasedFeatureExtractor``): each member is then only "which tap".

Any public ADM checkpoint runs by its preset name (``ADM_PRESETS``; ``ADM_CHECKPOINTS`` names each one's file and
where it is published). The noise schedule is the preset's (``adm_noise_schedule``), and class-conditional models
(adm64/128/256/512_cond) get the fixed ImageNet label ``class_label`` (``resolve_class_label``).
"""
import logging
from pathlib import Path

import torch

from difflid.priors.adm_unet_arch import DECODER_PREFIXES, ADMUNet, adm_flags, adm_noise_schedule
from difflid.priors.base import GuidanceExtractor, PriorOptions
from difflid.priors.schedules import named_alphas_cumprod
from difflid.utils.checkpoint_io import network_state, package_path, read_checkpoint, state_dict_problems

__all__ = ['ADM_CHECKPOINT_HELP', 'DEFAULT_CLASS_LABEL', 'ADMFeatureSource', 'build_adm_unet', 'class_labels',
           'load_adm_checkpoint', 'resolve_class_label']

logger = logging.getLogger('basicsr')

ADM_CHECKPOINT_HELP = (
    'Download 256x256_diffusion_uncond.pt (2.1 GB), the 256x256 unconditional ImageNet model listed in the '
    'guided-diffusion README (https://github.com/openai/guided-diffusion; direct link '
    'https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt), put it at '
    'pretrained/256x256_diffusion_uncond.pt, or set the `checkpoint` key of the prior block '
    '(`network_prior: checkpoint:` in the option file) to where it is.')

# The ImageNet class a class-conditional prior is given when ``class_label`` is not set: 979, "valley". The label
# embedding is added to the timestep embedding that conditions every ResBlock, so a class-conditional model's
# h-space is a function of (x_t, t, label): there is no label-free h-space. The paper's prior is unconditional;
# a fixed label keeps features deterministic, and a landscape class is the closest ImageNet has to hazy outdoor
# scenes. It is a choice, not a measurement: set ``class_label`` (or sweep it) to compare.
DEFAULT_CLASS_LABEL = 979


def resolve_class_label(owner: str, unet: str | dict, class_label: int | None) -> int | None:
    """The label ``y`` to give the UNet of ``unet`` (preset name or flags): None for an unconditional model (where
    a ``class_label`` is an error), ``class_label`` or ``DEFAULT_CLASS_LABEL`` for a class-conditional one."""
    if not adm_flags(unet).get('class_cond', False):
        if class_label is not None:
            raise ValueError(f'{owner}: class_label={class_label!r} is given, but the UNet is unconditional '
                             '(class_cond false); remove class_label, or use a class-conditional preset')
        return None
    if class_label is None:
        return DEFAULT_CLASS_LABEL
    if isinstance(class_label, bool) or not isinstance(class_label, int) or not 0 <= class_label < 1000:
        raise ValueError(f'{owner}: class_label must be an ImageNet class id, an integer in [0, 999], '
                         f'got {class_label!r}')
    return class_label


def class_labels(label: int | None, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The trailing ``y`` argument of a UNet call for a batch: ``(y,)`` with ``label`` for every sample, or ``()``
    for an unconditional model (so the call is the plain ``(x, t)`` one)."""
    return () if label is None else (torch.full((batch,), label, dtype=torch.long, device=device),)


def load_adm_checkpoint(unet: ADMUNet, path: str | Path, noise_schedule: str | None = None) -> None:
    """Load an ADM checkpoint file into ``unet`` strictly, with errors that name the file.

    The file (.pt/.pth, or .safetensors as ``tools/export_prior.py --format safetensors`` writes) is a
    guided-diffusion state dict, or a checkpoint of a prior trained with ``DiffusionPriorModel``
    (its EMA weights when it has them; its recorded noise schedule must equal ``noise_schedule``, the one the
    features are computed with). A relative path missing from the working directory is also looked for among the
    files shipped with difflid (``package_path``). An encoder-only ``unet`` ignores the decoder keys and checks all
    others (see ``ADMUNet.load_state_dict``).
    Raises FileNotFoundError (what to download and where) or ValueError (first mismatching keys/shapes).
    """
    path = package_path(path)
    if not path.is_file():
        raise FileNotFoundError(f'diffusion prior checkpoint not found: {path.resolve()}. {ADM_CHECKPOINT_HELP}')
    try:
        loaded = read_checkpoint(path)  # .pth/.pt (no pickle beyond tensors) or .safetensors
    except Exception as err:  # unpickling errors have many types; all mean "not a plain state dict"
        raise ValueError(f'cannot read {path} as a checkpoint ({type(err).__name__}: {err}). '
                         f'{ADM_CHECKPOINT_HELP}') from err
    state, record = network_state(loaded)
    if state is None:
        raise ValueError(f'{path} is not a state dict of tensors (got {type(loaded).__name__}). {ADM_CHECKPOINT_HELP}')
    trained = record.get('noise_schedule')
    if noise_schedule is not None and trained is not None and trained != noise_schedule:
        raise ValueError(f'checkpoint {path} was trained with the {trained} noise schedule, but the prior is '
                         f'configured with the {noise_schedule} one; add noise_schedule: {trained} to the UNet flags '
                         f'(unet: {{preset: ..., noise_schedule: {trained}}})')
    state = {k.removeprefix('module.'): v for k, v in state.items()}
    if unet.encoder_only:
        state = {k: v for k, v in state.items() if not k.startswith(DECODER_PREFIXES)}
    problems = state_dict_problems(unet.state_dict(), state)
    if problems:
        raise ValueError(
            f'checkpoint {path} does not fit the configured ADM UNet: ' + '; '.join(problems) +
            '. Check the UNet flags (class_cond, learn_sigma, num_channels, num_res_blocks, channel_mult, '
            'attention_resolutions, resblock_updown) against those the checkpoint was trained with; '
            'each public checkpoint has a preset named after it (ADM_CHECKPOINTS in difflid/priors/adm_unet_arch.py, '
            'e.g. adm256_uncond for 256x256_diffusion_uncond.pt).')
    unet.load_state_dict(state, strict=True)


def build_adm_unet(owner: str, unet: str | dict, checkpoint: str | None, random_weights: bool, init_seed: int,
                   encoder_only: bool) -> ADMUNet:
    """The frozen ADM UNet of a feature source (``owner`` names it in errors and logs): the guided-diffusion
    ``checkpoint``, or, only with ``random_weights``, weights drawn from ``init_seed`` (the same in every
    process and run, without touching the global RNG). A trained checkpoint's recorded schedule must be the one the
    flags name (``adm_noise_schedule``)."""
    if checkpoint is None and not random_weights:
        raise ValueError(f'{owner}: no checkpoint given. {ADM_CHECKPOINT_HELP} '
                         '(For tests and demos only, `random_weights: true` builds a random prior.)')
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        net = ADMUNet(**adm_flags(unet), encoder_only=encoder_only)
    if checkpoint is None:
        logger.warning(f'{owner}: the diffusion prior has RANDOM weights (random_weights: true); '
                       'its features carry no ImageNet knowledge, fine for tests and demos only.')
    else:
        load_adm_checkpoint(net, checkpoint, adm_noise_schedule(unet))
        logger.info(f'{owner}: loaded diffusion prior from {checkpoint}')
    return net


class ADMFeatureSource(GuidanceExtractor):
    """Base of the members that run a frozen ADM UNet: builds it from a preset or flags with its checkpoint, gives the
    extractor the UNet's own noise schedule and class label, and provides the diffusion capability (ε̂ and h-space
    of the whole UNet) when the decoder is built. A member adds only its tap (``_features``, ``feature_channels``,
    ``downsample_factor``).

    Args:
        unet: Preset name (any key of ``ADM_PRESETS``) or a dict of guided-diffusion flags, optionally with
            ``preset`` to start from and ``noise_schedule`` ('linear' or 'cosine') to override the preset's.
        checkpoint: The guided-diffusion state dict, or a ``DiffusionPriorModel`` checkpoint.
        random_weights: Allow ``checkpoint: ~``: random weights, for tests and demos only.
        init_seed: Seed of those random weights, so every process and every run builds the same prior.
        class_label: ImageNet class id (0-999) for a class-conditional UNet (default ``DEFAULT_CLASS_LABEL``); an
            error for an unconditional one.
        encoder_only: Build only the encoder and middle block.
        options: ``PriorOptions``.
    """

    has_denoiser_option = True
    tap_options = (*GuidanceExtractor.tap_options, 'tap', 'encoder_only', 'stride')

    @classmethod
    def network_identity(cls, block: dict) -> dict:
        """The base's, with ``unet`` resolved to its flags and noise schedule (a preset name and its flags are one
        network)."""
        identity = super().network_identity(block)
        unet = identity['unet']
        identity['unet'] = {'flags': adm_flags(unet), 'noise_schedule': adm_noise_schedule(unet)}
        return identity

    def __init__(self, unet: str | dict, checkpoint: str | None, random_weights: bool, init_seed: int,
                 class_label: int | None, encoder_only: bool, options: PriorOptions) -> None:
        super().__init__(**options)
        owner = type(self).__name__
        schedule = adm_noise_schedule(unet)
        if schedule != 'linear':  # a cosine preset replaces the base's linear ᾱ_t (built from beta_start/beta_end)
            self.set_schedule(named_alphas_cumprod(schedule, self.num_diffusion_steps))
        self.class_label = resolve_class_label(owner, unet, class_label)
        self.unet = build_adm_unet(owner, unet, checkpoint, random_weights, init_seed, encoder_only)
        self.native_size = int(adm_flags(unet).get('image_size', 256))

    @property
    def has_denoiser(self) -> bool:
        return not self.unet.encoder_only

    @property
    def denoiser_multiple(self) -> int:
        return self.unet.downsample_factor

    def labels(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The UNet call's trailing ``y`` for a batch like ``x`` (empty for an unconditional UNet)."""
        return class_labels(self.class_label, x.shape[0], x.device)

    def diffusion_pass(self, x_t: torch.Tensor, t: torch.Tensor,
                       with_eps: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        if not with_eps:
            return None, self.unet.forward_hspace(x_t, t, *self.labels(x_t))
        if not self.has_denoiser:
            raise ValueError(f'{type(self).__name__}: the ε prediction needs the full UNet, but this one is '
                             'encoder-only (build it with encoder_only: false)')
        out, h = self.unet.forward_with_hspace(x_t, t, *self.labels(x_t))
        return out[:, :3], h  # with learn_sigma the other 3 channels are the variance
