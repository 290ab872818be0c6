"""HSpaceExtractor: the frozen diffusion prior of DiffLI²D (Sec. 4.1-4.2, Fig. 3a), and the ADM loading
that every ADM-based feature source shares (``build_adm_unet``, ``load_adm_checkpoint``).

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

Any public ADM checkpoint runs by its preset name (``ADM_PRESETS``; ``ADM_CHECKPOINTS`` names each one's file and
where it is published). The noise schedule is the preset's (``adm_noise_schedule``), and class-conditional
models (adm64/128/256/512_cond) get the fixed ImageNet label ``class_label`` (``resolve_class_label``).
"""
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from basicsr.utils.registry import ARCH_REGISTRY

from difflid.priors.adm_unet_arch import DECODER_PREFIXES, ADMUNet, adm_flags, adm_noise_schedule
from difflid.priors.base import GuidanceExtractor
from difflid.priors.schedules import named_alphas_cumprod
from difflid.utils.checkpoint_io import network_state, package_path
from difflid.utils.padding import pad_to_multiple

__all__ = ['DEFAULT_CLASS_LABEL', 'HSpaceExtractor', 'TAP_ALIASES', 'build_adm_unet', 'class_labels',
           'load_adm_checkpoint', 'resolve_class_label', 'resolve_tap', 'run_padded', 'use_adm_schedule']

logger = logging.getLogger('basicsr')

ADM_CHECKPOINT_HELP = (
    'Download 256x256_diffusion_uncond.pt (2.1 GB), the 256x256 unconditional ImageNet model listed in the '
    'guided-diffusion README (https://github.com/openai/guided-diffusion; direct link '
    'https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt), put it at '
    'pretrained/256x256_diffusion_uncond.pt, or set the `checkpoint` key of the prior block '
    '(`network_prior: checkpoint:` in the option file) to where it is.')

_MAX_LISTED = 5

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


def use_adm_schedule(extractor: GuidanceExtractor, unet: str | dict) -> None:
    """Give ``extractor`` the noise schedule its ADM UNet was trained with (``adm_noise_schedule``): a cosine
    preset replaces the base's linear ᾱ_t; a linear one keeps it (built from beta_start/beta_end)."""
    schedule = adm_noise_schedule(unet)
    if schedule != 'linear':
        extractor.set_schedule(named_alphas_cumprod(schedule, extractor.num_diffusion_steps))


def _listing(keys: Sequence[str]) -> str:
    shown = ', '.join(keys[:_MAX_LISTED])
    return f'{shown}, ... ({len(keys)} in all)' if len(keys) > _MAX_LISTED else shown


def load_adm_checkpoint(unet: ADMUNet, path: str | Path, noise_schedule: str | None = None) -> None:
    """Load an ADM checkpoint file into ``unet`` strictly, with errors that name the file.

    The file is a guided-diffusion state dict, or a checkpoint of a prior trained with ``DiffusionPriorModel``
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
        loaded = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # unpickling errors have many types; all mean "not a plain state dict"
        raise ValueError(f'cannot read {path} as a PyTorch state dict ({type(err).__name__}: {err}). '
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
    expected = unet.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f'{k} (file {tuple(state[k].shape)} vs model {tuple(v.shape)})'
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f'missing from the file: {_listing(missing)}')
        if unexpected:
            problems.append(f'not in the model: {_listing(unexpected)}')
        if shapes:
            problems.append(f'shape mismatch: {_listing(shapes)}')
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
    process and run, without touching the global RNG). The network records the schedule it was trained with as
    ``noise_schedule`` (DiffLoss reads it from a shared UNet)."""
    if checkpoint is None and not random_weights:
        raise ValueError(f'{owner}: no checkpoint given. {ADM_CHECKPOINT_HELP} '
                         '(For tests and demos only, `random_weights: true` builds a random prior.)')
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        net = ADMUNet(**adm_flags(unet), encoder_only=encoder_only)
    net.noise_schedule = adm_noise_schedule(unet)
    if checkpoint is None:
        logger.warning(f'{owner}: the diffusion prior has RANDOM weights (random_weights: true); '
                       'its features carry no ImageNet knowledge, fine for tests and demos only.')
    else:
        load_adm_checkpoint(net, checkpoint, net.noise_schedule)
        logger.info(f'{owner}: loaded diffusion prior from {checkpoint}')
    return net


def run_padded(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, multiple: int,
               stride: int) -> torch.Tensor:
    """``fn`` of ``x`` reflect-padded to ``multiple``, cropped back to x's own grid at ``stride``.

    The full UNet (any decoder block, its output) needs H and W divisible by its down-sampling factor, while
    the base pads the image only to the feature stride; the extra cells are cut off again.
    """
    height, width = x.shape[-2:]
    return fn(pad_to_multiple(x, multiple))[..., :-(-height // stride), :-(-width // stride)]


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
class HSpaceExtractor(GuidanceExtractor):
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
    needs the decoder (built automatically) and runs it only up to the tapped block, on the input padded
    to the UNet's factor (32) when the block's stride is smaller (the features are cropped back).

    Args:
        unet: Preset name (any key of ``ADM_PRESETS``: 'adm256_uncond', 'adm64_cond', 'lsun_bedroom', 'dps_ffhq',
            'adm_tiny', ...) or a dict of guided-diffusion flags, optionally with ``preset`` to start from. The noise
            schedule is the preset's (cosine for adm64_cond, linear otherwise, linear for flags without a preset);
            a ``noise_schedule`` key ('linear' or 'cosine') in the dict overrides it.
        checkpoint: Path of the guided-diffusion state dict (e.g. pretrained/256x256_diffusion_uncond.pt).
        timesteps: Integer timesteps in [0, num_diffusion_steps); paper: t1=0 (content), t2=500 (haze).
        num_diffusion_steps: T of the β schedule.
        beta_start: β_1 of the linear schedule (for T=1000); unused by a cosine one.
        beta_end: β_T of the linear schedule (for T=1000); unused by a cosine one.
        seed: Seed of the fixed noise. ε is a function of (seed, t, channel, y, x) in absolute image
            coordinates (``difflid.priors.noise``), so the same image gives the same features on every call,
            in any batch position, on any device, and a tile or crop is noised exactly as the same window
            of the whole image.
        dtype: 'auto' (default: bf16 autocast when the input is on a CUDA GPU, fp32 on the CPU), 'fp32', or
            'bf16'/'fp16' autocast for the UNet (GroupNorm stays fp32). 'fp32' and 'auto' leave an enclosing
            autocast (e.g. ``tools/infer.py --dtype bf16``) in force.
        encoder_only: Build only the encoder and middle block. Default (None): exactly when the tap is not
            in the decoder; true with a decoder tap is an error; false builds the decoder anyway (DiffLoss's
            ε term on the shared UNet).
        random_weights: Allow ``checkpoint: ~``: random weights, for tests and demos only.
        init_seed: Seed of those random weights, so every process and every run builds the same prior.
        tap: 'middle' (h-space), 'layer_e', 'layer_d', 'middle_block', 'input_blocks.N' or 'output_blocks.N'.
        class_label: ImageNet class id (0-999) given to a class-conditional UNet as ``y``; its embedding joins the
            timestep embedding in every ResBlock, so the features (h-space included) depend on it. Default:
            ``DEFAULT_CLASS_LABEL`` (979, "valley": a fixed landscape class, for hazy outdoor scenes). An error
            for an unconditional UNet.
        channels_last: Run the UNet in channels_last layout (its 4-D weights and the input). Default (None): on
            CUDA, where cuDNN's tensor-core convolutions want it, not on the CPU.
        compile: ``torch.compile`` the UNet's feature function at the first call (compile time: tens of seconds
            on a GPU, see ``tools/benchmark.py --compile``).
    """

    def __init__(
        self,
        unet: str | dict = 'adm256_uncond',
        checkpoint: str | None = None,
        timesteps: Sequence[int] = (0, 500),
        num_diffusion_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        seed: int = 0,
        dtype: str = 'auto',
        encoder_only: bool | None = None,
        random_weights: bool = False,
        init_seed: int = 0,
        tap: str = 'middle',
        class_label: int | None = None,
        channels_last: bool | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(timesteps, num_diffusion_steps, beta_start, beta_end, seed, dtype, channels_last, compile)
        use_adm_schedule(self, unet)
        self.class_label = resolve_class_label('HSpaceExtractor', unet, class_label)
        with torch.device('meta'):  # the block layout without weights: a wrong tap fails at once
            layout = ADMUNet(**adm_flags(unet), encoder_only=True).block_layout
        self.tap = tap
        self.block = resolve_tap(tap, layout)
        decoder = self.block.startswith('output_blocks.')
        if encoder_only is None:
            encoder_only = not decoder
        elif encoder_only and decoder:
            raise ValueError(f'HSpaceExtractor: network_prior.tap {tap!r} ({self.block}) is in the decoder, but '
                             'network_prior.encoder_only is true; remove encoder_only (the decoder is then built '
                             'for decoder taps) or set it to false')
        self.unet = build_adm_unet('HSpaceExtractor', unet, checkpoint, random_weights, init_seed, encoder_only)
        self.unet.class_label = self.class_label  # DiffLoss on this shared UNet uses the same label
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

    def _features(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y = class_labels(self.class_label, x_t.shape[0], x_t.device)
        if self.block == 'middle_block':
            return self.unet.forward_hspace(x_t, t, *y)
        if not self.block.startswith('output_blocks.'):
            return self.unet.forward_block(x_t, t, self.block, *y)
        return run_padded(lambda x: self.unet.forward_block(x, t, self.block, *y), x_t, self.unet.downsample_factor,
                          self.downsample_factor)
