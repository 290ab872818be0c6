"""GuidanceExtractor: the shared base of every frozen feature source that guides DiffLI²D (``network_prior``).

DiffLI²D's CIM and HAE consume two feature maps of the degraded image: h-space at t1 (content) and at t2
(haze) in the paper; the encoder/decoder layers of the same UNet, VGG16/ResNet50 features or the released
code's UNet output in its Table 3 and in ``official_code.md`` §1.3. Every member is "which network, which
tap": it implements ``_features(x_t, t)`` and the two properties ``feature_channels`` and
``downsample_factor``. The base owns everything they share, once:

- the input: images in [0, 1], reflect-padded to ``input_multiple`` (the stride, or the network's own factor when
  larger), mapped to [-1, 1] and noised to
  x_t = sqrt(ᾱ_t)·x + sqrt(1-ᾱ_t)·ε at each timestep (linear β schedule, T steps), all timesteps in one
  batched pass;
- the noise: seeded and indexed by absolute pixel position (``difflid.priors.noise``), so features are
  reproducible in any batch position and a tile is noised as its window of the whole image; or fresh;
- freezing: no gradients, always in eval mode, never trained or saved with ``net_g``;
- precision: autocast to ``dtype`` ('fp32' leaves an enclosing autocast in force; 'auto' is bf16 on CUDA, fp32 on
  the CPU, and yields to an enclosing autocast: ``difflid.utils.precision``);
- the fast GPU paths a member opts into: channels_last weights and inputs, and ``torch.compile`` of ``_features``.

``forward(img)`` returns ``{t: features}`` for the configured timesteps (or any given ones: the probe);
``guidance(img)`` returns the pair (f_cim, f_hae) that ``DiffLI2D(x, f_cim, f_hae)`` takes. Each map is
(B, feature_channels, ceil(H/s), ceil(W/s)) float32 with s = ``downsample_factor``.
"""
import difflib
from collections.abc import Callable, Sequence
from typing import TypedDict, Unpack

import torch
from torch import nn

from difflid.priors.noise import position_noise
from difflid.priors.schedules import linear_alphas_cumprod, q_sample, to_diffusion_range
from difflid.utils.options import option_defaults
from difflid.utils.padding import pad_to_multiple
from difflid.utils.precision import PRECISIONS, component_autocast, resolve_channels_last, resolve_dtype

__all__ = ['PRIOR_DEFAULTS', 'GuidanceExtractor', 'Origin', 'PriorOptions']

# (top, left) of an image in the whole image it was cut from, or one such pair per image of a batch
Origin = tuple[int, int] | Sequence[tuple[int, int]]


class PriorOptions(TypedDict, total=False):
    """The options every feature source takes besides its own (``network_prior`` keys; defaults in
    ``PRIOR_DEFAULTS``), declared once here and read by option checks through ``difflid.utils.options.option_names``.

    timesteps: Integer timesteps in [0, T) at which the input is noised; the first two feed CIM and HAE (paper:
        t1=0 content, t2=500 haze). More are allowed (analysis).
    num_diffusion_steps: T of the β schedule (a member's network may bring its own schedule and T).
    beta_start, beta_end: β_1 and β_T of the linear schedule (for T=1000); unused by a cosine one.
    seed: Seed of the fixed noise, a function of (seed, t, channel, y, x) in absolute image coordinates, so the same
        image gives the same features on every call, in any batch position, on any device, and a tile or crop is
        noised exactly as the same window of the whole image.
    dtype: 'auto' (bf16 autocast when the input is on a CUDA GPU with bf16, else fp32; an enclosing autocast is left
        in force), 'fp32', 'bf16' or 'fp16': autocast for the network. One default for every member, so tables that
        compare members compare them at one precision.
    channels_last: Convert the network's 4-D weights and the noised input to channels_last. None (default): on CUDA,
        for members whose network accepts channels_last tensors (``supports_channels_last``), else off.
    compile: ``torch.compile`` the member's ``_features`` at the first call (tens of seconds; a new input size may
        compile again).
    """

    timesteps: Sequence[int]
    num_diffusion_steps: int
    beta_start: float
    beta_end: float
    seed: int
    dtype: str
    channels_last: bool | None
    compile: bool


PRIOR_DEFAULTS: PriorOptions = {'timesteps': (0, 500), 'num_diffusion_steps': 1000, 'beta_start': 1e-4,
                                'beta_end': 0.02, 'seed': 0, 'dtype': 'auto', 'channels_last': None, 'compile': False}


class GuidanceExtractor(nn.Module):
    """Frozen source of DiffLI²D's two guidance feature maps (see the module docstring).

    Args:
        **options: ``PriorOptions`` (timesteps, schedule, seed, dtype, channels_last, compile); an unknown key is an
            error naming it and the closest valid one.
    """

    # Capabilities of a member, read by its consumers instead of its class name.
    # has_denoiser_option: the member can keep its full ε-prediction network (``denoiser_options()`` are the keys
    # that ask for it), so DiffLoss's ε term and DDIM sampling can use it (``diffusion_pass``).
    has_denoiser_option: bool = False
    # supports_channels_last: the member's network accepts channels_last tensors (no ``.view`` on them).
    supports_channels_last: bool = False
    # native_size: the resolution a diffusion network was trained at (the default size of samples); 0 for none.
    native_size: int = 0

    # Options that choose what the member computes from its network (tap, precision, noise), not which network it runs
    # with which schedule: two blocks that differ only in these can share one copy of the weights.
    tap_options: tuple[str, ...] = ('timesteps', 'seed', 'dtype', 'channels_last', 'compile')

    @classmethod
    def denoiser_options(cls) -> dict:
        """The option keys that make the member keep its full ε-prediction network (see ``has_denoiser_option``)."""
        return {}

    @classmethod
    def network_identity(cls, block: dict) -> dict:
        """What identifies the network (weights and noise schedule) that an option block of this member builds:
        the block with its defaults filled in, without ``type`` and the ``tap_options``."""
        full = {**option_defaults(cls, dict(PRIOR_DEFAULTS)), **block}
        return {k: v for k, v in full.items() if k != 'type' and k not in cls.tap_options}

    def __init__(self, **options: Unpack[PriorOptions]) -> None:
        super().__init__()
        name = type(self).__name__
        unknown = sorted(set(options) - set(PRIOR_DEFAULTS))
        if unknown:
            close = difflib.get_close_matches(unknown[0], PRIOR_DEFAULTS, n=1)
            hint = f' (did you mean {close[0]}?)' if close else ''
            raise TypeError(f'{name}: unknown option {unknown[0]!r}{hint}')
        opt = {**PRIOR_DEFAULTS, **options}
        self.num_diffusion_steps = opt['num_diffusion_steps']
        self.timesteps = self.check_timesteps(opt['timesteps'])
        if opt['dtype'] not in PRECISIONS:
            raise ValueError(f'{name}: dtype must be one of {list(PRECISIONS)}, got {opt["dtype"]!r}')
        channels_last, compile = opt['channels_last'], opt['compile']
        if channels_last is not None and not isinstance(channels_last, bool):
            raise ValueError(f'{name}: channels_last must be true, false or ~ (on CUDA only), got {channels_last!r}')
        if not isinstance(compile, bool):
            raise ValueError(f'{name}: compile must be true or false, got {compile!r}')
        self.seed = opt['seed']
        self.precision = opt['dtype']
        self.channels_last = False if channels_last is None and not self.supports_channels_last else channels_last
        self.compile_features = compile
        self._compiled_features = None
        self._weights_format = torch.contiguous_format
        self.register_buffer('alphas_cumprod', linear_alphas_cumprod(self.num_diffusion_steps, opt['beta_start'],
                                                                     opt['beta_end']), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        """The precision the network computes in where the extractor now is (its ``dtype`` option resolved for
        the device of its buffers; an enclosing autocast can still override 'auto' and 'fp32')."""
        return resolve_dtype(self.precision, self.alphas_cumprod.device)

    def set_schedule(self, alphas_cumprod: torch.Tensor) -> None:
        """Replace the linear schedule by the network's own ᾱ_t (T values; e.g. a cosine preset or a diffusers
        scheduler config); the timesteps are checked again against the new T."""
        steps, self.num_diffusion_steps = self.num_diffusion_steps, len(alphas_cumprod)
        try:
            self.timesteps = self.check_timesteps(self.timesteps)
        except ValueError:
            self.num_diffusion_steps = steps
            raise
        self.alphas_cumprod = alphas_cumprod.to(self.alphas_cumprod)

    def check_timesteps(self, timesteps: Sequence[int]) -> list[int]:
        """The timesteps as a list; an error names the extractor when one is not an integer in [0, T)."""
        name, steps = type(self).__name__, self.num_diffusion_steps
        timesteps = list(timesteps)
        if not timesteps:
            raise ValueError(f'{name}: timesteps is empty; give at least one, e.g. [0, 500]')
        for t in timesteps:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < steps:
                raise ValueError(f'{name}: timesteps must be integers in [0, {steps - 1}], got {t!r}')
        return timesteps

    @property
    def feature_channels(self) -> int:
        """Channels of each guidance map (DiffLI2D's ``h_channels``)."""
        raise NotImplementedError

    @property
    def downsample_factor(self) -> int:
        """Spatial stride of the guidance maps (DiffLI2D's ``h_stride``); inputs are padded to a multiple of it."""
        raise NotImplementedError

    @property
    def has_denoiser(self) -> bool:
        """Whether this instance holds its full ε-prediction network (a member with ``has_denoiser_option`` built
        with ``denoiser_options()``): what DiffLoss's ε term and sampling need."""
        return False

    @property
    def denoiser_multiple(self) -> int:
        """H and W of ``diffusion_pass``'s input must be multiples of this (the full network's down-sampling)."""
        return self.input_multiple

    def diffusion_pass(self, x_t: torch.Tensor, t: torch.Tensor,
                       with_eps: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(ε̂, h) of the member's diffusion network for noised images x_t in [-1, 1] (N, 3, H, W), H and W multiples
        of ``denoiser_multiple``, at integer timesteps t (N,): the predicted noise (N, 3, H, W), converted to ε from
        the network's own parameterisation, or None without ``with_eps`` (the decoder is then not run), and the
        h-space (the middle block's output). No autocast and no ``no_grad`` here: DiffLoss back-propagates through
        it. Members without a diffusion network (``has_denoiser_option`` false) raise ValueError."""
        raise ValueError(f'{type(self).__name__} has no diffusion network (no ε prediction, no h-space): DiffLoss and '
                         'sampling need a diffusion prior such as HSpaceExtractor')

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε̂ of ``diffusion_pass`` alone (the sampler's network)."""
        return self.diffusion_pass(x_t, t)[0]

    @property
    def input_multiple(self) -> int:
        """H and W of the noised input the member's network needs to be multiples of: the stride, or more when the
        network down-samples further than its tap (a decoder block, the full UNet's output). The base reflect-pads the
        clean image to it *before* noising, so every padded cell gets its own position's noise (never mirrored noise)
        and a tile sees its window of the whole image's x_t whatever the tap."""
        return self.downsample_factor

    def _features(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The member's tap: (N, 3, H, W) noised images in [-1, 1] (H, W multiples of ``input_multiple``) and their
        integer timesteps (N,) -> (N, feature_channels, H/s, W/s). Runs under the extractor's autocast."""
        raise NotImplementedError

    def freeze(self) -> None:
        """No gradients, eval mode: call at the end of a member's ``__init__``."""
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> 'GuidanceExtractor':
        """The extractor stays in eval mode whatever its parent does (it is never trained)."""
        return super().train(False)

    def noise(self, shape: tuple[int, ...], batch: int, device: torch.device, fresh: bool,
              origin: Origin = (0, 0), timesteps: Sequence[int] | None = None) -> torch.Tensor:
        """ε for every timestep and sample, (len(timesteps), batch, C, H, W) for ``shape`` = (C, H, W).

        The seeded ε is the window at ``origin`` = (top, left) of the position-indexed noise, the same for
        every sample of the batch, or one window per sample for a list of ``batch`` origins; fresh ε comes
        from the global RNG.
        """
        timesteps = self.timesteps if timesteps is None else timesteps
        n = len(timesteps)
        if fresh:
            return torch.randn(n, batch, *shape, device=device)
        if isinstance(origin[0], int):
            return position_noise(self.seed, timesteps, *shape, origin=origin, device=device)[:, None].expand(
                n, batch, *shape)
        if len(origin) != batch:
            raise ValueError(f'{type(self).__name__}: {len(origin)} origins for a batch of {batch}')
        return torch.stack([position_noise(self.seed, timesteps, *shape, origin=o, device=device) for o in origin],
                           dim=1)

    @torch.no_grad()
    def forward(self, img: torch.Tensor, fresh_noise: bool = False, origin: Origin = (0, 0),
                timesteps: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
        """Features of ``img`` at every configured timestep (or at ``timesteps``), one batched pass.

        Args:
            img: (B, 3, H, W) images in [0, 1], any H and W.
            fresh_noise: Draw ε from the global RNG (training) instead of the fixed seeded noise.
            origin: (top, left) of ``img`` in the whole image it was cut from (tiles), so that it is
                noised as that window of the whole image; or one (top, left) per image, so that each image
                gets its own noise in one batched pass (the probe's ``noise: per_image``).
            timesteps: Other timesteps than the configured ones (e.g. the probe's sweep).

        Returns:
            {t: (B, feature_channels, ceil(H/s), ceil(W/s)) float32}, in the order of the timesteps.
        """
        if img.ndim != 4 or img.shape[1] != 3:
            raise ValueError(f'{type(self).__name__} expects (B, 3, H, W) images, got shape {tuple(img.shape)}')
        unique = list(dict.fromkeys(self.timesteps if timesteps is None else self.check_timesteps(timesteps)))
        stride, height, width = self.downsample_factor, img.shape[-2], img.shape[-1]
        x0 = to_diffusion_range(pad_to_multiple(img.float(), self.input_multiple))
        b = x0.shape[0]
        eps = self.noise(tuple(x0.shape[1:]), b, x0.device, fresh_noise, origin, unique)
        t = torch.tensor(unique, device=x0.device).repeat_interleave(b)
        x_t = q_sample(x0.repeat(len(unique), 1, 1, 1), t, eps.flatten(0, 1), self.alphas_cumprod)
        x_t = x_t.contiguous(memory_format=self._memory_format(x_t.device))
        with component_autocast(self.precision, x_t.device):
            feats = self._feature_function()(x_t, t)
        feats = feats[..., :-(-height // stride), :-(-width // stride)]  # the cells of the image padded to the stride
        return dict(zip(unique, feats.float().contiguous().split(b), strict=True))

    def _memory_format(self, device: torch.device) -> torch.memory_format:
        """The layout the network runs in on ``device``; converts the weights once when it changes."""
        wanted = torch.channels_last if resolve_channels_last(self.channels_last, device) else torch.contiguous_format
        if wanted != self._weights_format:
            self.to(memory_format=wanted)  # 4-D weights only; 1-D/3-D tensors (attention's Conv1d) are unchanged
            self._weights_format = wanted
        return wanted

    def _feature_function(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``_features``, or its compiled version with ``compile``. The class's function is compiled, not the bound
        method, so that a deep copy of the extractor does not call the original's network."""
        if not self.compile_features:
            return self._features
        if self._compiled_features is None:
            self._compiled_features = torch.compile(type(self)._features)
        return lambda x_t, t: self._compiled_features(self, x_t, t)

    def guidance(self, img: torch.Tensor, fresh_noise: bool = False,
                 origin: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, torch.Tensor]:
        """(f_cim, f_hae): the features at the first two configured timesteps, as DiffLI2D takes them."""
        if len(self.timesteps) < 2:
            raise ValueError(f'{type(self).__name__}: DiffLI²D needs two timesteps [t1, t2], got {self.timesteps}')
        feats = self(img, fresh_noise=fresh_noise, origin=origin)
        t1, t2 = self.timesteps[:2]
        return feats[t1], feats[t2]

