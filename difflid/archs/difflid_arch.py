"""DiffLI²D: the dehazing U-Net guided by diffusion h-space features.

Paper: "Unleashing the Potential of the Semantic Latent Space in Diffusion Models for Image Dehazing"
(ECCV 2024), Sec. 4.2 and Fig. 3. Each block is a Content Integration Module (CIM, Eq. 6: cross-attention
from the feature map to h_t1) followed by a Haze-Aware Enhancement module (HAE, Eq. 7-8: SFT modulation
by h_t2 and a sigmoid channel gate). The paper gives no widths; the default configuration (widths
64/128/256/512, one block per level on each side and one in the bottleneck, 2x2 stride-2 convolutions
down, bilinear x2 + 3x3 convolutions up (no checkerboard artefacts, unlike transposed convolutions),
additive skips) has 8.75 M trainable parameters with C_h = 1024, the paper's Table 1 reporting 8.63 M.
The frozen diffusion prior is not part of this network.

Queries are the feature-map positions; keys and values are the H/32 x W/32 h positions (never the
full-resolution map), so memory grows linearly with the image size.
"""
from collections.abc import Sequence

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn
from torch.nn import functional as F

from difflid.utils.padding import pad_to_multiple

__all__ = ['DiffLI2D']

_CIM_KINDS = ('cross', 'self')
_HAE_KINDS = ('sft', 'self')


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, heads, H*W, C/heads), contiguous: on the CPU, scaled_dot_product_attention falls back
    to materialising the whole attention matrix for strided inputs (15 GB for a 1600x1200 image)."""
    b, c = x.shape[:2]
    return x.reshape(b, heads, c // heads, -1).transpose(-1, -2).contiguous()


class ContentIntegration(nn.Module):
    """CIM (Eq. 6): F' = W_O · softmax(Q Kᵀ / sqrt(d)) · V + F, Q = W_Q F, K, V = W_K, W_V (W_c h_t1), multi-head."""

    def __init__(self, num_feat: int, h_channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.proj_h = nn.Conv2d(h_channels, num_feat, 1)  # W_c
        self.to_q = nn.Conv2d(num_feat, num_feat, 1)
        self.to_k = nn.Conv2d(num_feat, num_feat, 1)
        self.to_v = nn.Conv2d(num_feat, num_feat, 1)
        self.to_out = nn.Conv2d(num_feat, num_feat, 1)  # W_O
        # NOTE: zero W_O makes the block start as the identity (stable training without normalisation layers)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, feat: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        b, c, height, width = feat.shape
        h = self.proj_h(h)
        q = _split_heads(self.to_q(feat), self.num_heads)
        k = _split_heads(self.to_k(h), self.num_heads)
        v = _split_heads(self.to_v(h), self.num_heads)
        attended = F.scaled_dot_product_attention(q, k, v)  # softmax over the h positions
        attended = attended.transpose(-1, -2).reshape(b, c, height, width)
        return feat + self.to_out(attended)


class HazeAwareEnhancement(nn.Module):
    """HAE (Eq. 7-8): F_m = W_γ(h_t2)·F' + W_β(h_t2); F_o = σ(W_L AvgPool(F_m))·F_m + F'.

    W_γ and W_β are 1x1 convolutions; they are applied at h's resolution and the resulting maps are
    resized bilinearly to the level's resolution, which equals resizing h first (both are linear
    and the interpolation weights sum to one) at a fraction of the cost.
    """

    def __init__(self, num_feat: int, h_channels: int) -> None:
        super().__init__()
        self.to_gamma = nn.Conv2d(h_channels, num_feat, 1)
        self.to_beta = nn.Conv2d(h_channels, num_feat, 1)
        self.gate = nn.Linear(num_feat, num_feat)  # W_L
        # NOTE: start from the identity modulation (γ = 1, β = 0); training learns how h_t2 should modulate
        for layer, bias in ((self.to_gamma, 1.0), (self.to_beta, 0.0)):
            nn.init.zeros_(layer.weight)
            nn.init.constant_(layer.bias, bias)

    def forward(self, feat: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        size = feat.shape[-2:]
        gamma = F.interpolate(self.to_gamma(h), size=size, mode='bilinear', align_corners=False)
        beta = F.interpolate(self.to_beta(h), size=size, mode='bilinear', align_corners=False)
        modulated = gamma * feat + beta
        weight = torch.sigmoid(self.gate(modulated.mean(dim=(2, 3))))[..., None, None]
        return weight * modulated + feat


def _channel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Multi-head attention across channels (transposed attention): per head, a (d x d) softmax map from the
    cosine similarities of the L2-normalised q and k rows, applied to v. Linear in H*W, so it runs on whole
    images, where attention across the H*W positions would need an (H*W)^2 matrix.

    Args:
        q, k, v: (B, D, H, W), D divisible by the number of heads.
        temperature: (heads, 1, 1) learned scale of the similarities.
    """
    b, d, height, width = q.shape
    q, k, v = (t.reshape(b, temperature.shape[0], -1, height * width) for t in (q, k, v))
    attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)) * temperature
    return (attn.softmax(dim=-1) @ v).reshape(b, d, height, width)


class CIMStandIn(nn.Module):
    """Ablation "w/o CIM" (paper Table 2): CIM with its keys and values taken from the features, not h_t1.

    F' = W_O · Attn(W_Q F, W_K c, W_V c) + F with c = W_c2 W_c1 F in place of CIM's c = W_c h_t1. The paper
    says only "a self-attention module that has similar number of parameters as CIM", so the stand-in keeps
    what CIM has and h does not feed: W_Q, W_K, W_V, W_O (zero W_O: it starts as the identity, like CIM).
    W_c (C_h -> C) has no input without h; its C_h*C + C parameters go to the pair W_c1 (C -> m, no bias),
    W_c2 (m -> C) with m = C_h / 2. There is no activation between them: like CIM's own W_K·W_c, the pair is
    a factorised linear map, so the module matches CIM's size without a non-linearity CIM lacks. Total:
    CIM's count plus one temperature per head. The attention runs across channels (``_channel_attention``).
    It ignores h and runs on any size.

    Args:
        num_feat: Channels C.
        num_heads: Attention heads (C must be divisible by it).
        match_params: Parameter count to match (the replaced CIM's); sets m.
    """

    def __init__(self, num_feat: int, num_heads: int, match_params: int) -> None:
        super().__init__()
        attention_params = 4 * (num_feat * num_feat + num_feat) + num_heads
        # the pair has 2 * C * m + C parameters
        hidden = max(1, round((match_params - attention_params - num_feat) / (2 * num_feat)))
        self.to_context = nn.Sequential(nn.Conv2d(num_feat, hidden, 1, bias=False), nn.Conv2d(hidden, num_feat, 1))
        self.to_q = nn.Conv2d(num_feat, num_feat, 1)
        self.to_k = nn.Conv2d(num_feat, num_feat, 1)
        self.to_v = nn.Conv2d(num_feat, num_feat, 1)
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.to_out = nn.Conv2d(num_feat, num_feat, 1)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, feat: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        context = self.to_context(feat)
        attended = _channel_attention(self.to_q(feat), self.to_k(context), self.to_v(context), self.temperature)
        return feat + self.to_out(attended)


class HAEStandIn(nn.Module):
    """Ablation "w/o HAE" (paper Table 2): HAE with self-attention in place of the h_t2 terms of Eq. 7.

    HAE's Eq. 7 is F_m = (b_γ + W_γ h)·F' + (b_β + W_β h). The stand-in keeps the terms h does not enter,
    the per-channel b_γ, b_β, and replaces the rest by self-attention; Eq. 8, the sigmoid channel gate, is
    HAE's own:

        F_m = b_γ·F' + b_β + W_O · Attn(W_Q F', W_K F', W_V F');  F_o = σ(W_L AvgPool(F_m))·F_m + F'.

    W_Q, W_K, W_V (C -> D) and W_O (D -> C) have no bias, and the inner width D (a multiple of the heads)
    takes W_γ's and W_β's 2*C_h*C parameters: D = C_h / 2. The only non-linearities are HAE's (the product,
    the sigmoid gate) and the softmax that makes it self-attention; the count is HAE's plus one temperature
    per head. It starts as HAE does (b_γ = 1, b_β = 0, zero W_O). It ignores h and runs on any size.

    Args:
        num_feat: Channels C.
        num_heads: Attention heads.
        match_params: Parameter count to match (the replaced HAE's); sets D.
    """

    def __init__(self, num_feat: int, num_heads: int, match_params: int) -> None:
        super().__init__()
        fixed = num_feat * num_feat + 3 * num_feat + num_heads  # W_L, its bias, b_γ, b_β, temperatures
        inner = num_heads * max(1, round((match_params - fixed) / (4 * num_feat * num_heads)))
        self.gamma = nn.Parameter(torch.ones(1, num_feat, 1, 1))  # b_γ
        self.beta = nn.Parameter(torch.zeros(1, num_feat, 1, 1))  # b_β
        self.to_qkv = nn.Conv2d(num_feat, 3 * inner, 1, bias=False)
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.to_out = nn.Conv2d(inner, num_feat, 1, bias=False)
        nn.init.zeros_(self.to_out.weight)
        self.gate = nn.Linear(num_feat, num_feat)  # W_L

    def forward(self, feat: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        attended = _channel_attention(*self.to_qkv(feat).chunk(3, dim=1), self.temperature)
        modulated = self.gamma * feat + self.beta + self.to_out(attended)
        weight = torch.sigmoid(self.gate(modulated.mean(dim=(2, 3))))[..., None, None]
        return weight * modulated + feat


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class DiffLI2DBlock(nn.Module):
    """CIM then HAE, or for the ablations their self-attention stand-ins of the same size."""

    def __init__(self, num_feat: int, h_channels: int, num_heads: int, cim: str, hae: str) -> None:
        super().__init__()
        paper_cim = ContentIntegration(num_feat, h_channels, num_heads)
        paper_hae = HazeAwareEnhancement(num_feat, h_channels)
        self.cim = paper_cim if cim == 'cross' else CIMStandIn(num_feat, num_heads, _count(paper_cim))
        self.hae = paper_hae if hae == 'sft' else HAEStandIn(num_feat, num_heads, _count(paper_hae))

    def forward(self, feat: torch.Tensor, h_t1: torch.Tensor, h_t2: torch.Tensor) -> torch.Tensor:
        return self.hae(self.cim(feat, h_t1), h_t2)


class _Stage(nn.ModuleList):
    def forward(self, feat: torch.Tensor, h_t1: torch.Tensor, h_t2: torch.Tensor) -> torch.Tensor:
        for block in self:
            feat = block(feat, h_t1, h_t2)
        return feat


@ARCH_REGISTRY.register()
class DiffLI2D(nn.Module):
    """DiffLI²D U-Net: restores (B, 3, H, W) images in [0, 1] given h-space features h_t1 and h_t2.

    Args:
        num_in_ch: Image channels, in and out.
        num_feat: Width of the first level; level l has num_feat * width_mult[l] channels.
        width_mult: Width multipliers, one per level (its length is the number of levels).
        num_enc_blocks: Blocks per encoder level (and per decoder level, mirrored); one entry per level
            except the last.
        num_middle_blocks: Blocks in the bottleneck (the last level).
        num_heads: CIM heads per level (each level's width must be divisible by its count).
        h_channels: C_h, channels of the h-space features (1024 for adm256_uncond, 64 for adm_tiny).
        h_stride: Down-sampling factor of the h-space features; inputs are reflect-padded to a multiple
            of it so that h covers the padded image exactly (32 for both ADM presets).
        cim: 'cross' (paper) or 'self' (ablation "w/o CIM": ``CIMStandIn``).
        hae: 'sft' (paper) or 'self' (ablation "w/o HAE": ``HAEStandIn``). Both 'self' is the ablation "Baseline".
            A stand-in has its module's parameter count plus one per attention head. With both stand-ins the network
            reads no features (``uses_prior`` False): ``net(x)`` runs alone, the no-prior baseline of the same size
            (``ImageRestorationModel``, no prior built).
    """

    def __init__(
        self,
        num_in_ch: int = 3,
        num_feat: int = 64,
        width_mult: Sequence[int] = (1, 2, 4, 8),
        num_enc_blocks: Sequence[int] = (1, 1, 1),
        num_middle_blocks: int = 1,
        num_heads: Sequence[int] = (1, 2, 4, 8),
        h_channels: int = 1024,
        h_stride: int = 32,
        cim: str = 'cross',
        hae: str = 'sft',
    ) -> None:
        super().__init__()
        levels = len(width_mult)
        if cim not in _CIM_KINDS or hae not in _HAE_KINDS:
            raise ValueError(f'DiffLI2D: cim must be one of {_CIM_KINDS} and hae one of {_HAE_KINDS}, '
                             f'got cim={cim!r}, hae={hae!r}')
        if len(num_enc_blocks) != levels - 1 or len(num_heads) != levels:
            raise ValueError(f'DiffLI2D: width_mult has {levels} levels, so num_enc_blocks needs {levels - 1} '
                             f'entries and num_heads {levels}; got {list(num_enc_blocks)} and {list(num_heads)}')
        widths = [num_feat * m for m in width_mult]
        for width, heads in zip(widths, num_heads, strict=True):
            if width % heads:
                raise ValueError(f'DiffLI2D: level width {width} is not divisible by its num_heads {heads}')
        if h_stride % 2 ** (levels - 1):
            raise ValueError(f'DiffLI2D: h_stride {h_stride} must be a multiple of 2^(levels-1) = {2 ** (levels - 1)}')
        self.h_stride = h_stride
        self.h_channels = h_channels
        self.uses_prior = cim == 'cross' or hae == 'sft'  # capability: whether forward needs h_t1 and h_t2

        def stage(level: int, count: int) -> _Stage:
            return _Stage(DiffLI2DBlock(widths[level], h_channels, num_heads[level], cim, hae) for _ in range(count))

        self.stem = nn.Conv2d(num_in_ch, widths[0], 3, padding=1)
        self.encoders = nn.ModuleList(stage(lv, n) for lv, n in enumerate(num_enc_blocks))
        self.downs = nn.ModuleList(nn.Conv2d(widths[lv], widths[lv + 1], 2, stride=2) for lv in range(levels - 1))
        self.middle = stage(levels - 1, num_middle_blocks)
        self.ups = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False),
                          nn.Conv2d(widths[lv + 1], widths[lv], 3, padding=1))
            for lv in range(levels - 1))
        self.decoders = nn.ModuleList(stage(lv, n) for lv, n in enumerate(num_enc_blocks))
        self.head = nn.Conv2d(widths[0], num_in_ch, 3, padding=1)
        # NOTE: a zero head makes a new network return its input; it learns the residual from there
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, h_t1: torch.Tensor | None = None, h_t2: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Restore ``x``.

        Args:
            x: (B, C, H, W) degraded images in [0, 1], any H and W.
            h_t1: (B, C_h, ceil(H/h_stride), ceil(W/h_stride)) content features (t1 = 0); None only when the
                network uses no prior (both stand-ins).
            h_t2: same shape, haze features (t2 = 500).

        Returns:
            (B, C, H, W) restored images: x plus a predicted residual (not clamped).
        """
        height, width = x.shape[-2:]
        expected = (-(-height // self.h_stride), -(-width // self.h_stride))
        for name, h in (('h_t1', h_t1), ('h_t2', h_t2)):
            if h is None and not self.uses_prior:
                continue
            if h is None:
                raise ValueError(f'DiffLI2D: {name} is missing; a network with cim: cross or hae: sft needs the '
                                 "prior's features (model_type DiffLI2DModel with a network_prior)")
            if tuple(h.shape[-2:]) != expected:
                raise ValueError(f'DiffLI2D: {name} is {tuple(h.shape[-2:])} for a {height}x{width} image; '
                                 f'expected {expected} (features of the image padded to a multiple of {self.h_stride})')
        feat = self.stem(pad_to_multiple(x, self.h_stride))
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            feat = encoder(feat, h_t1, h_t2)
            skips.append(feat)
            feat = down(feat)
        feat = self.middle(feat, h_t1, h_t2)
        for up, decoder in reversed(list(zip(self.ups, self.decoders, strict=True))):
            feat = decoder(up(feat) + skips.pop(), h_t1, h_t2)
        return x + self.head(feat)[..., :height, :width]
