"""ADM UNet: the ε-prediction network of Dhariwal & Nichol, "Diffusion Models Beat GANs on Image
Synthesis" (NeurIPS 2021), written for difflid so that OpenAI's released guided-diffusion
checkpoints (e.g. ``256x256_diffusion_uncond.pt``) load with ``strict=True``.

Nothing here is copied from guided-diffusion; it is written from the checkpoint's documented layout
(``shared/reference/official_code.md`` §6). What a checkpoint fixes, and this file honours:

* module names and ``nn.Sequential`` indices (parameter-less SiLU/Dropout slots included), and
  ``Conv1d`` shapes ``(3C, C, 1)`` for attention ``qkv`` and ``(C, C, 1)`` for ``proj_out``;
* the sinusoidal timestep embedding with the cosine half first;
* the legacy attention order: heads are split *before* q/k/v (``use_new_attention_order=False``).
  Attention runs through ``scaled_dot_product_attention``, which never materialises the (T, T) matrix
  at full resolution and equals the legacy ``softmax((q·s)ᵀ(k·s))`` with ``s = d^-1/4``.

Beyond the released network, ``forward_hspace`` stops after the middle block (the "h-space" of
Kwon et al.), ``forward_block`` after any named block (``block_layout`` gives each block's channels
and stride), and ``encoder_only=True`` does not build the decoder at all; its ``load_state_dict``
accepts a full checkpoint and checks that only decoder keys go unused. The timestep may be a float
(the authors' release passes ᾱ_t; the sinusoidal embedding is defined for any real t).

Weights start from PyTorch's default initialisation, not guided-diffusion's zero-initialised output
layers: this network is never trained here, and a random-weight model (tests, demos) then has
features that depend on the timestep.
"""
import math
from collections.abc import Sequence

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from difflid.utils.precision import autocast

__all__ = ['ADMUNet', 'ADM_CHECKPOINTS', 'ADM_PRESETS', 'DECODER_PREFIXES', 'NOISE_SCHEDULES', 'adm_flags',
           'adm_noise_schedule']

# State-dict keys of the decoder, which h-space never needs.
DECODER_PREFIXES = ('output_blocks.', 'out.')

# guided-diffusion's default channel multipliers per image size (used when channel_mult is "").
_DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}

# Flags by name (constructor flags only: ``ADMUNet(**ADM_PRESETS[name])`` and guided-diffusion's
# ``create_model(**ADM_PRESETS[name])`` build the same network). Each public preset is named after its checkpoint
# (``ADM_CHECKPOINTS`` gives the file, where it is published, and the noise schedule it was trained with) and holds
# the flags published with it: the guided-diffusion README's sampling commands (merged into guided-diffusion's
# ``model_and_diffusion_defaults``), and DPS's ``configs/model_config.yaml`` for ``ffhq_10m.pt``. Every flag that
# shapes the network is spelled out, so no preset depends on ADMUNet's own defaults. ``use_fp16`` is left out
# (the extractors' ``dtype`` decides precision); ``dropout`` is kept although it is inactive in eval mode.
# ``adm_tiny`` keeps adm256_uncond's depth (h-space at H/32) with a few channels, for tests and demos.
_ADM256 = dict(
    image_size=256,
    num_channels=256,
    num_res_blocks=2,
    channel_mult='',
    learn_sigma=True,
    class_cond=False,
    attention_resolutions='32,16,8',
    num_heads=4,
    num_head_channels=64,
    num_heads_upsample=-1,
    use_scale_shift_norm=True,
    dropout=0.0,
    resblock_updown=True,
    use_new_attention_order=False,
)
_ADM256_UNCOND = dict(image_size=256, num_channels=256, num_res_blocks=2, channel_mult='', learn_sigma=True,
                      class_cond=False, attention_resolutions='32,16,8', num_head_channels=64, resblock_updown=True,
                      use_scale_shift_norm=True)
ADM_PRESETS: dict[str, dict] = {
    'adm64_cond': {**_ADM256, 'image_size': 64, 'num_channels': 192, 'num_res_blocks': 3, 'class_cond': True,
                   'dropout': 0.1, 'use_new_attention_order': True},
    'adm128_cond': {**_ADM256, 'image_size': 128, 'class_cond': True, 'num_head_channels': -1},
    'adm256_cond': {**_ADM256, 'class_cond': True},
    # unchanged since the first release (ADMUNet's defaults supply num_heads 4, dropout 0, the legacy order)
    'adm256_uncond': _ADM256_UNCOND,
    'adm512_cond': {**_ADM256, 'image_size': 512, 'class_cond': True},  # channel_mult (0.5,1,1,2,2,4,4)
    'lsun_bedroom': {**_ADM256, 'dropout': 0.1},
    'lsun_cat': {**_ADM256, 'dropout': 0.1},
    'lsun_horse': {**_ADM256, 'dropout': 0.1},
    'lsun_horse_nodropout': {**_ADM256, 'dropout': 0.0},
    'dps_ffhq': {**_ADM256, 'num_channels': 128, 'num_res_blocks': 1, 'attention_resolutions': '16'},
    # the same depth as the 256x256 models (h-space still at H/32) with 2.3 M parameters: tests and demos
    'adm_tiny': {**_ADM256_UNCOND, 'num_channels': 32, 'num_res_blocks': 1, 'channel_mult': '1,1,1,2,2,2',
                 'attention_resolutions': '16,8', 'num_head_channels': 32},
}

_OPENAI = 'https://openaipublic.blob.core.windows.net/diffusion/jul-2021/'
_GUIDED_README = 'https://github.com/openai/guided-diffusion'
_DPS_FOLDER = 'https://drive.google.com/drive/folders/1jElnRoFv7b31fG0v6pTSQkelbSX3xGZh'
# What a preset's checkpoint is and how it was trained, beside its flags: the file name, its download address
# (``url``), the page that publishes it and its flags (``source``), and the noise schedule of its training (all
# 1000 steps; ``adm_noise_schedule``). Every preset has an entry; adm_tiny has no file.
ADM_CHECKPOINTS: dict[str, dict] = {
    **{name: dict(file=file, url=_OPENAI + file, source=_GUIDED_README, noise_schedule=schedule)
       for name, file, schedule in (
           ('adm64_cond', '64x64_diffusion.pt', 'cosine'),
           ('adm128_cond', '128x128_diffusion.pt', 'linear'),
           ('adm256_cond', '256x256_diffusion.pt', 'linear'),
           ('adm256_uncond', '256x256_diffusion_uncond.pt', 'linear'),
           ('adm512_cond', '512x512_diffusion.pt', 'linear'),
           ('lsun_bedroom', 'lsun_bedroom.pt', 'linear'),
           ('lsun_cat', 'lsun_cat.pt', 'linear'),
           ('lsun_horse', 'lsun_horse.pt', 'linear'),
           ('lsun_horse_nodropout', 'lsun_horse_nodropout.pt', 'linear'),
       )},
    # DPS (Chung et al., ICLR 2023) publishes its FFHQ model in a Google Drive folder, no direct link
    'dps_ffhq': dict(file='ffhq_10m.pt', url=_DPS_FOLDER,
                     source='https://github.com/DPS2022/diffusion-posterior-sampling', noise_schedule='linear'),
    'adm_tiny': dict(file=None, url=None, source=None, noise_schedule='linear'),
}

NOISE_SCHEDULES = ('linear', 'cosine')


def adm_flags(preset_or_flags: str | dict) -> dict:
    """Resolve a preset name, or a flag dict optionally holding ``preset``, into constructor flags.

    A ``noise_schedule`` key (see ``adm_noise_schedule``) is not a constructor flag and is dropped here.
    """
    if isinstance(preset_or_flags, str):
        preset_or_flags = {'preset': preset_or_flags}
    flags = dict(preset_or_flags)
    flags.pop('noise_schedule', None)
    name = flags.pop('preset', None)
    if name is None:
        return flags
    if name not in ADM_PRESETS:
        raise ValueError(f'unknown ADM UNet preset {name!r}; choose one of {sorted(ADM_PRESETS)} '
                         'or give guided-diffusion flags instead')
    return {**ADM_PRESETS[name], **flags}


def adm_noise_schedule(preset_or_flags: str | dict) -> str:
    """The noise schedule ('linear' or 'cosine') the network of a preset name or flag dict was trained with.

    Order: the dict's own ``noise_schedule`` key (the explicit override, e.g. ``unet: {preset: adm64_cond,
    noise_schedule: linear}`` or flags of a self-trained cosine model), else the preset's (``ADM_CHECKPOINTS``),
    else 'linear' (plain flags, as guided-diffusion's default).
    """
    flags = {'preset': preset_or_flags} if isinstance(preset_or_flags, str) else dict(preset_or_flags)
    schedule = flags.get('noise_schedule')
    if schedule is None:
        name = flags.get('preset')
        if name is not None and name not in ADM_PRESETS:
            adm_flags(flags)  # the error naming every preset
        schedule = ADM_CHECKPOINTS.get(name, {}).get('noise_schedule', 'linear')
    if schedule not in NOISE_SCHEDULES:
        raise ValueError(f'unknown noise_schedule {schedule!r} in the UNet flags; choose one of {NOISE_SCHEDULES}')
    return schedule


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim), cosine half first (as the checkpoints expect)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (fp16/bf16 statistics are too coarse)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float()).to(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


class TimestepSequential(nn.Sequential):
    """A Sequential whose ResBlocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Downsample(nn.Module):
    """Halve H and W: strided 3x3 conv (``op``) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError('pooling cannot change the channel count')
            self.op = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W with nearest-neighbour interpolation, optionally followed by a 3x3 conv (``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode='nearest')
        return self.conv(x) if self.use_conv else x


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding, optionally resampling (``up``/``down``).

    With ``use_scale_shift_norm`` the embedding gives a scale and a shift applied as
    ``norm(h) * (1 + scale) + shift``; otherwise it is added to the features.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.Sequential(
            _norm(self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1))
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            # Non-reentrant checkpointing works with frozen parameters (guided-diffusion's custom one does not).
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, with a residual connection.

    ``new_order=False`` reproduces guided-diffusion's legacy layout, where the ``qkv`` channels are
    grouped per head (``[q_j, k_j, v_j]`` for head j); ``new_order=True`` chunks q, k, v first.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_checkpoint: bool = False,
        new_order: bool = False,
    ) -> None:
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f'{channels} channels are not divisible by num_head_channels={num_head_channels}')
            self.num_heads = channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.new_order = new_order
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3C, T) -> q, k, v each (B, heads, T, C/heads), in the checkpoint's channel order."""
        b, c3, t = qkv.shape
        heads = self.num_heads
        if self.new_order:
            qkv = qkv.reshape(b, 3, heads, c3 // (3 * heads), t).transpose(1, 2)
        else:
            qkv = qkv.reshape(b, heads, 3, c3 // (3 * heads), t)
        # contiguous: for strided inputs the CPU kernel falls back to materialising the (T, T) matrix
        return tuple(t.transpose(-1, -2).contiguous() for t in qkv.unbind(dim=2))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        q, k, v = self.split_heads(self.qkv(self.norm(flat)))
        # Default scale 1/sqrt(d) equals the legacy scaling of q and k by d^-1/4 each.
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(b, c, -1)
        return (flat + self.proj_out(h)).reshape(b, c, *spatial)


def _parse_ints(value: str | Sequence[int], name: str) -> tuple[int, ...]:
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.split(',') if v.strip())
        except ValueError as err:
            raise ValueError(f'{name} must be comma-separated integers, got {value!r}') from err
    return tuple(int(v) for v in value)


def _parse_channel_mult(channel_mult: str | Sequence[float], image_size: int) -> tuple[float, ...]:
    if channel_mult in ('', None):
        if image_size not in _DEFAULT_CHANNEL_MULT:
            raise ValueError(f'no default channel_mult for image_size={image_size}; '
                             f'give channel_mult explicitly (defaults exist for {sorted(_DEFAULT_CHANNEL_MULT)})')
        return _DEFAULT_CHANNEL_MULT[image_size]
    if isinstance(channel_mult, str):
        return tuple(float(v) if '.' in v else int(v) for v in channel_mult.split(',') if v.strip())
    return tuple(channel_mult)


@ARCH_REGISTRY.register()
class ADMUNet(nn.Module):
    """Guided-diffusion's UNet, accepting the flag names of OpenAI's README.

    Args:
        image_size: Training resolution of the checkpoint; selects the default ``channel_mult`` and
            turns ``attention_resolutions`` into down-sampling factors. Inputs may be of any size that
            is a multiple of 2^(levels-1).
        num_channels: Base width (``model_channels``).
        num_res_blocks: ResBlocks per level.
        channel_mult: Comma-separated width multipliers per level, "" for the image size's default.
        learn_sigma: Output 6 channels (ε and the variance interpolation) instead of 3.
        class_cond: Add a 1000-class label embedding (``y`` in ``forward``).
        use_checkpoint: Gradient checkpointing in ResBlocks and attention (saves activation memory
            when gradients flow through the frozen network, e.g. for DiffLoss).
        attention_resolutions: Comma-separated resolutions (relative to ``image_size``) with attention.
        num_heads: Attention heads, when ``num_head_channels`` is -1.
        num_head_channels: Channels per head; overrides ``num_heads`` unless -1.
        num_heads_upsample: Heads in the decoder, -1 for ``num_heads``.
        use_scale_shift_norm: FiLM-style timestep conditioning.
        dropout: Dropout in the ResBlocks (inactive in eval mode).
        resblock_updown: Resample with ResBlocks instead of plain (conv) resampling layers.
        use_fp16: Run the blocks under float16 autocast (GroupNorm stays float32).
        use_new_attention_order: q/k/v split before heads; the released checkpoints use False.
        in_channels: Image channels in.
        encoder_only: Build only ``time_embed``, ``input_blocks`` and ``middle_block``; the model then
            offers ``forward_hspace`` (and ``forward_block`` up to the middle block) alone and loads full
            checkpoints, ignoring decoder keys.

    Attributes:
        block_layout: {block name: (channels, stride)} of every block's output, in running order
            (``input_blocks.*``, ``middle_block``, ``output_blocks.*``), the decoder's included when it is
            not built.
    """

    def __init__(
        self,
        image_size: int = 256,
        num_channels: int = 256,
        num_res_blocks: int = 2,
        channel_mult: str | Sequence[float] = '',
        learn_sigma: bool = True,
        class_cond: bool = False,
        use_checkpoint: bool = False,
        attention_resolutions: str | Sequence[int] = '32,16,8',
        num_heads: int = 4,
        num_head_channels: int = 64,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = True,
        dropout: float = 0.0,
        resblock_updown: bool = True,
        use_fp16: bool = False,
        use_new_attention_order: bool = False,
        in_channels: int = 3,
        encoder_only: bool = False,
    ) -> None:
        super().__init__()
        mult = _parse_channel_mult(channel_mult, image_size)
        attn_ds = {image_size // r for r in _parse_ints(attention_resolutions, 'attention_resolutions')}
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.model_channels = num_channels
        self.out_channels = 6 if learn_sigma else 3
        self.num_classes = 1000 if class_cond else None
        self.encoder_only = encoder_only
        self.dtype = torch.float16 if use_fp16 else torch.float32
        self.downsample_factor = 2 ** (len(mult) - 1)
        emb_ch = 4 * num_channels

        def res(ch: int, out: int, **kw) -> ResBlock:
            return ResBlock(ch, emb_ch, dropout, out, use_scale_shift_norm=use_scale_shift_norm,
                            use_checkpoint=use_checkpoint, **kw)

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, num_head_channels, use_checkpoint, use_new_attention_order)

        self.time_embed = nn.Sequential(nn.Linear(num_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        if self.num_classes is not None:
            self.label_emb = nn.Embedding(self.num_classes, emb_ch)

        ch = int(mult[0] * num_channels)
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        # (channels, stride) of every block's output, by state-dict name; the decoder's even when it is not built
        layout = {'input_blocks.0': (ch, 1)}
        skip_chans = [ch]
        ds = 1
        for level, m in enumerate(mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(m * num_channels))]
                ch = int(m * num_channels)
                if ds in attn_ds:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(TimestepSequential(*layers))
                layout[f'input_blocks.{len(self.input_blocks) - 1}'] = (ch, ds)
                skip_chans.append(ch)
            if level != len(mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, True)
                self.input_blocks.append(TimestepSequential(down))
                ds *= 2
                layout[f'input_blocks.{len(self.input_blocks) - 1}'] = (ch, ds)
                skip_chans.append(ch)
        self.middle_block = TimestepSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))
        layout['middle_block'] = (ch, ds)
        self.hspace_channels = ch
        self.block_layout: dict[str, tuple[int, int]] = layout

        output_blocks: list[nn.Module] = []
        decoder = [(level, m, i) for level, m in list(enumerate(mult))[::-1] for i in range(num_res_blocks + 1)]
        for index, (level, m, i) in enumerate(decoder):
            in_ch, ch = ch + skip_chans.pop(), int(num_channels * m)
            up = level > 0 and i == num_res_blocks
            if not encoder_only:
                layers = [res(in_ch, ch)]
                if ds in attn_ds:
                    layers.append(attn(ch, num_heads_upsample))
                if up:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, True))
                output_blocks.append(TimestepSequential(*layers))
            if up:
                ds //= 2
            layout[f'output_blocks.{index}'] = (ch, ds)
        if encoder_only:
            return
        self.output_blocks = nn.ModuleList(output_blocks)
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, self.out_channels, 3, padding=1))

    def _embed(self, t: torch.Tensor, batch: int, y: torch.Tensor | None) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.time_embed[0].weight.device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f'timesteps must be a scalar or of shape ({batch},), got {tuple(t.shape)}')
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(self.time_embed[0].weight.dtype))
        if (y is None) != (self.num_classes is None):
            raise ValueError('class labels y must be given exactly when the model is class-conditional')
        if y is not None:
            emb = emb + self.label_emb(y)
        return emb

    def _encode(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, keep_skips: bool
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        emb = self._embed(t, x.shape[0], y)
        h, skips = x, []
        for block in self.input_blocks:
            h = block(h, emb)
            if keep_skips:  # only the decoder needs them; at full resolution they are most of the memory
                skips.append(h)
        return self.middle_block(h, emb), emb, skips

    def forward_hspace(self, x: torch.Tensor, t: torch.Tensor | int, y: torch.Tensor | None = None) -> torch.Tensor:
        """h-space: the middle-block output, (B, C_h, H/2^(L-1), W/2^(L-1)); the decoder is not run.

        Args:
            x: Noisy images x_t, (B, C, H, W) in the diffusion range [-1, 1] (plus noise).
            t: Integer timesteps in [0, T), a scalar or (B,).
            y: Class labels (B,), only for class-conditional models.
        """
        with autocast(x.device.type, self.dtype):  # fp32: an enclosing autocast stays in force
            h, _, _ = self._encode(x, t, y, keep_skips=False)
        return h.to(x.dtype) if self.dtype != x.dtype else h

    def forward_block(
        self, x: torch.Tensor, t: torch.Tensor | float, block: str, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The output of one block, named as in the state dict: ``input_blocks.N``, ``middle_block`` or
        ``output_blocks.N``; the blocks after it do not run (for ``output_blocks.N``, decoder blocks N+1.. and
        ``out`` are skipped).

        Args:
            x: Noisy images x_t, (B, C, H, W); H and W divisible by ``downsample_factor`` for a decoder block
                (its skip connections must match), by the block's stride for an encoder block.
            t: Timesteps, a scalar or (B,).
            block: A key of ``block_layout``, whose value (C, s) gives the output shape (B, C, H/s, W/s).
            y: Class labels (B,), only for class-conditional models.
        """
        if block not in self.block_layout:
            raise ValueError(f'ADMUNet has no block {block!r}; blocks are input_blocks.0-{len(self.input_blocks) - 1},'
                             f' middle_block and output_blocks.0-{len(self.block_layout) - len(self.input_blocks) - 2}')
        kind, _, index = block.partition('.')
        decoder = kind == 'output_blocks'
        if decoder:
            if self.encoder_only:
                raise RuntimeError(f'this ADMUNet was built with encoder_only=True: {block} is in the decoder')
            self._check_decodable(x)
        with autocast(x.device.type, self.dtype):  # fp32: an enclosing autocast stays in force
            emb = self._embed(t, x.shape[0], y)
            h, skips = x, []
            for layer in self.input_blocks[:int(index) + 1 if kind == 'input_blocks' else None]:
                h = layer(h, emb)
                if decoder:
                    skips.append(h)
            if kind != 'input_blocks':
                h = self.middle_block(h, emb)
            if decoder:
                for layer in self.output_blocks[:int(index) + 1]:
                    h = layer(torch.cat([h, skips.pop()], dim=1), emb)
        return h.to(x.dtype) if self.dtype != x.dtype else h

    def _check_decodable(self, x: torch.Tensor) -> None:
        f = self.downsample_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f'the full UNet needs H and W divisible by {f}, got {tuple(x.shape[-2:])}; '
                             'pad the input (difflid.utils.pad_to_multiple)')

    def forward(self, x: torch.Tensor, t: torch.Tensor | int, y: torch.Tensor | None = None) -> torch.Tensor:
        """Full UNet output (B, 6 or 3, H, W): ε (and the variance interpolation when learn_sigma)."""
        return self.forward_with_hspace(x, t, y)[0]

    def forward_with_hspace(
        self, x: torch.Tensor, t: torch.Tensor | int, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Full output and h-space from one pass (what DiffLoss needs)."""
        if self.encoder_only:
            raise RuntimeError('this ADMUNet was built with encoder_only=True: only forward_hspace is available')
        self._check_decodable(x)
        with autocast(x.device.type, self.dtype):  # fp32: an enclosing autocast stays in force
            hspace, emb, skips = self._encode(x, t, y, keep_skips=True)
            h = hspace
            for block in self.output_blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            out = self.out(h)
        if self.dtype != x.dtype:  # use_fp16: computed in half precision, returned in the input's dtype
            out, hspace = out.to(x.dtype), hspace.to(x.dtype)
        return out, hspace

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a guided-diffusion state dict. An encoder-only model drops the decoder keys
        (``output_blocks.*``, ``out.*``) first, so a strict load still checks every encoder key."""
        if self.encoder_only:
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(DECODER_PREFIXES)}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
