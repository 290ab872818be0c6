"""Export a trained prior-guided network (DiffLI²D and its frozen diffusion prior) as ONE graph: an ONNX file for
onnxruntime (``save_onnx``) or a ``torch.export`` program (``save_torch_export``).

The graph (``GraphRestorer``) is ``difflid.inference.restore`` for one image or tile, with nothing left to the
caller but tiling:

    inputs   image     (B, 3, H, W) float32 RGB in [0, 1]; B, H and W are dynamic, any size
             origin    (2,) int64: (top, left) of ``image`` in the whole image it was cut from; (0, 0) for a
                       whole image, a tile's position when tiling
    output   restored  (B, 3, H, W) float32, not clamped (as ``restore``)

Inside, as ``restore`` and ``GuidanceExtractor.forward``: padding to the prior's stride (``pad_by_gather``: the rows
and columns of ``pad_to_multiple``, reflect, or replicate where a side is too short), then on to the prior's
``input_multiple`` (larger than the stride for a decoder tap or the released features), the map to [-1, 1],
x_t = sqrt(ᾱ_t)·x + sqrt(1-ᾱ_t)·ε at t1 and t2 with ε computed in the graph from (seed, t, channel, y + top,
x + left) by ``PositionNoise`` (the same bits as ``difflid.priors.noise.position_noise``), the prior's tap
(``GuidanceExtractor._features``, in float32) cropped to the cells of the image padded to the stride, the network on
that image, and the crop back to H x W.

Attention: ``attention='fused'`` (default) exports ``scaled_dot_product_attention`` as onnxruntime's
``com.microsoft.MultiHeadAttention``, whose CPU kernel never holds the (queries x keys) matrix; ``'matmul'`` uses
standard ONNX ops only (MatMul, Softmax: any ONNX runtime), which hold it: DiffLI²D's CIM at full resolution has
H·W queries and H/32·W/32 keys, so a whole 1600x1200 image needs 14.6 GB per head for it alone.

The ``torch.export`` program is the same module, traced for one image at a time (batch 1) and for images with more
than one h position (not both sides <= 32): torch.export turns its internal layout decisions into checks of the
input size, which the ONNX graph does not keep (see ``export_program``).
"""
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.fx.experimental import _config as fx_config  # private, but the documented switch for export

from difflid.inference import Restorer, restore
from difflid.priors.base import GuidanceExtractor
from difflid.priors.noise import noise_key
from difflid.version import __version__

__all__ = ['ATTENTION_KINDS', 'OPSET', 'ExportError', 'GraphRestorer', 'PositionNoise', 'check_onnx', 'export_model',
           'export_program', 'pad_by_gather', 'save_onnx', 'save_torch_export']

OPSET = 18  # the noise hash's BitwiseXor/BitwiseAnd need 18
ATTENTION_KINDS = ('fused', 'matmul')
INSTALL_HINT = "pip install -e '.[onnx]' in the difflid repository (or pip install onnx onnxscript)"

_MASK = 0xFFFFFFFF


class ExportError(RuntimeError):
    """The model cannot be exported; the message says why and what to use instead."""


# ---------------------------------------------------------------------------------------------------------------
# The position-indexed noise, in int64 arithmetic that every ONNX runtime defines.
# NOTE: ``difflid.priors.noise`` hashes in wrapping int32. In ONNX, BitShift takes unsigned types only, and int32 Mul
# overflow is undefined behaviour in the C++ kernels; torch has no uint32 arithmetic to export. So the hash works on
# uint32 values held in int64: products are split into 16-bit halves (no intermediate reaches 2^63), right shifts
# are divisions by powers of two (exact on non-negative values), and every result is masked to 32 bits.

def _mul32(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(x * factor) mod 2^32 for x in [0, 2^32) held in int64, without overflow: x = hi·2^16 + lo."""
    lo, hi = x & 0xFFFF, x // 65536
    return (lo * factor + ((hi * (factor & 0xFFFF)) & 0xFFFF) * 65536) & _MASK


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 mixer (as ``difflid.priors.noise``) on uint32 values held in int64."""
    x = x ^ (x // 2 ** 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x // 2 ** 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x // 2 ** 16)


class PositionNoise(nn.Module):
    """``position_noise(seed, timesteps, channels, H, W, origin)`` as a module with a dynamic size and origin.

    Args:
        seed: Seed of the noise (the prior's ``seed``).
        timesteps: Timesteps, in the order of the output's first axis.
        channels: Image channels.
    """

    def __init__(self, seed: int, timesteps: Sequence[int], channels: int = 3) -> None:
        super().__init__()
        # the keys of difflid.priors.noise, as the uint32 values its int32 bit patterns stand for
        keys = [[noise_key(seed, t, c, stream) & _MASK for stream in (0, 1)]
                for t in timesteps for c in range(channels)]
        self.register_buffer('keys', torch.tensor(keys, dtype=torch.int64)[..., None, None], persistent=False)
        # NOTE: a buffer, not a Python float: the ONNX exporter rounds Python scalars to float32 (2π would be off
        # by 1.7e-7, enough to change a third of the float32 noise values in their last bit)
        self.register_buffer('two_pi', torch.tensor(2 * math.pi, dtype=torch.float64), persistent=False)
        self.shape = (len(timesteps), channels)

    def forward(self, like: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
        """ε (len(timesteps), channels, H, W) float32 for the window of H x W = ``like``'s size at ``origin``."""
        height, width = like.shape[-2:]
        ys = torch.arange(height, dtype=torch.int64, device=like.device) + origin[0]
        xs = torch.arange(width, dtype=torch.int64, device=like.device) + origin[1]
        pixel = _hash32(_hash32(xs ^ 0x5BD1E995)[None, :] ^ ys[:, None])  # (H, W)
        bits = _hash32(_hash32(pixel ^ self.keys))  # (planes, 2 streams, H, W)
        uniform = (bits.double() + 0.5) / 2 ** 32  # in (0, 1): never 0 (log) nor 1
        normal = torch.sqrt(-2 * torch.log(uniform[:, 0])) * torch.cos(uniform[:, 1] * self.two_pi)  # Box-Muller
        return normal.float().reshape(*self.shape, height, width)


def _pad_rows(size: torch.SymInt | int, multiple: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Source rows of a side padded to a multiple: (reflected, replicated); a reflected index < 0 means the side is
    too short to reflect."""
    index = torch.arange((size + multiple - 1) // multiple * multiple, device=device)
    return torch.where(index < size, index, 2 * (size - 1) - index), index.clamp(max=size - 1)


def pad_by_gather(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``pad_to_multiple`` as two index gathers: the same values (reflect at the bottom/right, replicate on both
    axes when either side is too short to reflect), with no Python branch on the size, so one exported graph serves
    every size (a branch on a symbolic size would fix it at the example's)."""
    rows, rows_replicated = _pad_rows(x.shape[-2], multiple, x.device)
    cols, cols_replicated = _pad_rows(x.shape[-1], multiple, x.device)
    reflect = (rows.min() >= 0) & (cols.min() >= 0)
    rows = torch.where(reflect, rows, rows_replicated)
    cols = torch.where(reflect, cols, cols_replicated)
    return x.index_select(-2, rows).index_select(-1, cols)


class GraphRestorer(nn.Module):
    """``restore(net, image, prior)`` for one image or tile at ``origin``, written for export (see the module
    docstring for the graph's inputs and output). It reuses the network and the prior's ``_features`` as they are
    and re-states only the prior's input path (pad to the stride and on to ``input_multiple``, noise, q_sample, the
    crop of the features) without the Python branches on sizes that would fix the exported size.

    Args:
        net: The trained network, ``net(x, f_cim, f_hae)``.
        prior: Its frozen feature source; the features at its first two timesteps go to the network.
    """

    def __init__(self, net: nn.Module, prior: GuidanceExtractor) -> None:
        super().__init__()
        self.net, self.prior = net, prior
        t1, t2 = prior.timesteps[:2]
        unique = list(dict.fromkeys((t1, t2)))
        self.pick = (unique.index(t1), unique.index(t2))
        self.stride, self.input_multiple = prior.downsample_factor, prior.input_multiple
        self.noise = PositionNoise(prior.seed, unique, 3)
        # as q_sample: ᾱ_t taken to float32 first, the square roots in float32
        alpha = prior.alphas_cumprod.detach().cpu()[torch.tensor(unique)].float()[:, None, None, None, None]
        self.register_buffer('sqrt_alpha', alpha.sqrt(), persistent=False)
        self.register_buffer('sqrt_one_minus_alpha', (1 - alpha).sqrt(), persistent=False)
        self.register_buffer('timesteps', torch.tensor(unique), persistent=False)

    def forward(self, image: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = image.shape
        padded = pad_by_gather(image, self.stride)  # the network's input, as restore()
        # the prior's input, as GuidanceExtractor.forward: the clean image padded on to input_multiple before noising
        x0 = padded if self.input_multiple == self.stride else pad_by_gather(padded, self.input_multiple)
        eps = self.noise(x0, origin)  # (T, 3, H'', W''): one window for every image of the batch
        x_t = self.sqrt_alpha * (x0 * 2 - 1)[None] + self.sqrt_one_minus_alpha * eps[:, None]  # (T, B, 3, H'', W'')
        # (T·B,) timesteps, t-major like x_t; a sum, not expand().flatten(), whose copy-or-view would guard on B == 1
        t = (self.timesteps[:, None] + torch.zeros(1, batch, dtype=torch.int64, device=image.device)).flatten()
        feats = self.prior._features(x_t.flatten(0, 1), t).float()
        if self.input_multiple != self.stride:  # the cells of the image padded to the stride (gathers: see below)
            feats = feats.index_select(-2, torch.arange(padded.shape[-2] // self.stride, device=image.device))
            feats = feats.index_select(-1, torch.arange(padded.shape[-1] // self.stride, device=image.device))
        f_cim, f_hae = (feats[i * batch:(i + 1) * batch] for i in self.pick)
        restored = self.net(padded, f_cim, f_hae)
        # NOTE: the crop as gathers too: a slice makes torch.export guard on whether it is a no-op (H' == H)
        return restored.index_select(-2, torch.arange(height, device=image.device)).index_select(
            -1, torch.arange(width, device=image.device))


def _check_exportable(restorer: Restorer) -> None:
    net = type(restorer.net).__name__
    if restorer.prior is None:
        raise ExportError(f'network_g {net} has no network_prior: the exporter takes prior-guided networks '
                          '(DiffLI2D with a network_prior block); run this model with tools/infer.py and its '
                          'option file or checkpoint instead')
    if not isinstance(restorer.prior, GuidanceExtractor):
        raise ExportError(f'network_prior {type(restorer.prior).__name__} is not a GuidanceExtractor')
    if len(restorer.prior.timesteps) < 2:
        raise ExportError(f'network_prior has timesteps {restorer.prior.timesteps}; DiffLI2D needs two')


def export_program(restorer: Restorer, batch: int | None = None) -> torch.export.ExportedProgram:
    """The ``GraphRestorer`` of ``restorer`` (CPU, float32) as a ``torch.export`` program with dynamic height and
    width. Raises ExportError naming the part that does not export.

    torch.export records the decisions PyTorch's kernels take from sizes (a convolution's memory layout for a batch
    of 1, whether ``.contiguous()`` copies) as checks of the input size. The ONNX translation drops them (they decide
    layouts, not values; tests/test_export.py checks batch 1 and 2, sizes below, at and above multiples of 32), but
    a ``torch.export`` program enforces them when it runs.

    Args:
        restorer: The model, on the CPU.
        batch: None: a dynamic batch, for ONNX. An int: that fixed batch, for a ``torch.export`` program (1: one
            image or tile at a time), traced with size-oblivious reasoning so that its checks do not fix H and W
            either; one remains from ADMUNet's attention (more than one h position: not both sides <= 32).
    """
    _check_exportable(restorer)
    if restorer.device.type != 'cpu':
        raise ExportError(f'export from a CPU Restorer (got {restorer.device}); the graph runs on any device')
    module = GraphRestorer(restorer.net, restorer.prior).eval().requires_grad_(False)
    stride = module.stride
    gen = torch.Generator().manual_seed(0)
    # an example size that is no multiple of the stride and no 0/1 (torch.export specialises those)
    image = torch.rand(batch or 2, 3, 2 * stride + 6, 3 * stride + 10, generator=gen)
    dims = {2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    if batch is None:
        dims[0] = torch.export.Dim.AUTO
    oblivious = fx_config.patch(backed_size_oblivious=batch is not None)
    try:
        with torch.no_grad(), oblivious:
            return torch.export.export(module, (image, torch.zeros(2, dtype=torch.int64)),
                                       dynamic_shapes=(dims, None), strict=False)
    except Exception as err:  # torch.export raises many types; all mean "this network or prior does not trace"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ''
        raise ExportError(f'torch.export failed on network_g {type(restorer.net).__name__} with network_prior '
                          f'{type(restorer.prior).__name__} ({type(err).__name__}: {first}); known to export '
                          '(tests/test_export.py): DiffLI2D with HSpaceExtractor, ReleasedFeatureExtractor, '
                          'TimmFeatureExtractor or DiffusersUNetExtractor') from err


def _fused_attention_translation() -> Callable:
    """The ONNX translation of ``scaled_dot_product_attention`` to onnxruntime's ``com.microsoft.MultiHeadAttention``
    ((B, S, heads·d) inputs), built on first use so that onnx and onnxscript are imported only for ONNX export."""
    from onnx.defs import OpSchema
    from onnxscript import opset18 as op
    from onnxscript.values import Op, Opset

    param = OpSchema.FormalParameter
    schema = OpSchema(  # the subset of the contrib op's schema used here (onnx's registry does not know it)
        'MultiHeadAttention', 'com.microsoft', 1,
        inputs=[param('query', 'T'), param('key', 'T'), param('value', 'T')], outputs=[param('output', 'T')],
        type_constraints=[('T', ['tensor(float)', 'tensor(float16)'], 'float tensors')],
        attributes=[OpSchema.Attribute('num_heads', OpSchema.AttrType.INT, 'number of heads'),
                    OpSchema.Attribute('scale', OpSchema.AttrType.FLOAT, 'softmax scale', required=False)])
    multi_head_attention = Op(Opset('com.microsoft', 1), 'MultiHeadAttention', schema)

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if attn_mask is not None or dropout_p or is_causal or enable_gqa:
            raise ExportError('attention="fused" handles plain attention only (no mask, dropout, causal or grouped '
                              'queries); export with attention="matmul"')
        heads, head_dim = query.shape[1], query.shape[3]
        if not isinstance(heads, int) or not isinstance(head_dim, int):
            raise ExportError(f'attention="fused" needs a static head count and size, got {query.shape}')

        def merge_heads(x):  # (B, heads, S, d) -> (B, S, heads·d)
            return op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))

        extra = {} if scale is None else {'scale': float(scale)}  # None: 1/sqrt(d), the default of both
        out = multi_head_attention(merge_heads(query), merge_heads(key), merge_heads(value), num_heads=heads, **extra)
        return op.Transpose(op.Reshape(out, op.Constant(value_ints=[0, 0, heads, head_dim])), perm=[0, 2, 1, 3])

    return attention


def _metadata(restorer: Restorer, source: str | Path, attention: str) -> dict[str, str]:
    """What the runner needs beside the graph (stride, the option file's tiling) and what made the file."""
    prior = restorer.prior
    return {
        'difflid.version': __version__,
        'difflid.source': str(source),
        'difflid.stride': str(restorer.prior.downsample_factor),
        'difflid.tile': str(restorer.tile),
        'difflid.tile_overlap': str(restorer.tile_overlap),
        'difflid.attention': attention,
        'difflid.network_g': type(restorer.net).__name__,
        'difflid.network_prior': type(prior).__name__,
        'difflid.seed': str(prior.seed),
        'difflid.timesteps': json.dumps(prior.timesteps[:2]),
    }


def save_onnx(program: torch.export.ExportedProgram, path: str | Path, attention: str = 'fused',
              metadata: dict[str, str] | None = None) -> Path:
    """Write ``program`` as an ONNX model (opset ``OPSET``; weights in a side file only past 2 GB)."""
    if attention not in ATTENTION_KINDS:
        raise ValueError(f'attention must be one of {ATTENTION_KINDS}, got {attention!r}')
    try:
        import onnx  # noqa: F401  the exporter needs both; a clear message beats its own
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError(f'ONNX export needs onnx and onnxscript ({err.name} is missing): {INSTALL_HINT}') from err
    table = ({torch.ops.aten.scaled_dot_product_attention.default: _fused_attention_translation()}
             if attention == 'fused' else None)
    onnx_program = torch.onnx.export(program, (), opset_version=OPSET, dynamo=True, output_names=['restored'],
                                     custom_translation_table=table, verbose=False)
    _name_dims(onnx_program.model)
    onnx_program.model.metadata_props.update(metadata or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program.save(path)
    return path


def _name_dims(model) -> None:
    """Name the dynamic axes of the graph's inputs and output batch, height and width (torch.export calls them s0,
    s1, ...), so that tools that show the signature show what they are."""
    import onnx_ir as ir

    names = {dim.value: name for dim, name in zip(model.graph.inputs[0].shape, ('batch', None, 'height', 'width'),
                                                  strict=True) if name and isinstance(dim, ir.SymbolicDim)}
    for value in (*model.graph.inputs, *model.graph.outputs):
        if value.shape is not None:
            value.shape = ir.Shape([ir.SymbolicDim(names.get(d.value, d.value)) if isinstance(d, ir.SymbolicDim)
                                    else d for d in value.shape])


def save_torch_export(program: torch.export.ExportedProgram, path: str | Path,
                      metadata: dict[str, str] | None = None) -> Path:
    """Write ``program`` with ``torch.export.save`` (load with ``torch.export.load(path).module()``, call it with
    ``(image, origin)`` as the ONNX graph); the metadata goes in the archive's extra file ``difflid.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, path, extra_files={'difflid.json': json.dumps(metadata or {})})
    return path


def export_model(source: str | Path, output: str | Path, root: str | Path, fmt: str = 'onnx',
                 attention: str = 'fused') -> Restorer:
    """Export the model of an option file or difflid checkpoint (``Restorer.from_file``) to ``output``.

    Args:
        source: Test/training option file or checkpoint saved by difflid.
        output: The file to write: ``*.onnx`` for ``fmt='onnx'`` (tools/infer.py recognises the suffix), any name
            (conventionally ``*.pt2``) for ``fmt='torch-export'``.
        root: The repository root, where ``Restorer.from_file`` also looks for the prior checkpoint.
        fmt: 'onnx' or 'torch-export'.
        attention: ONNX only: 'fused' (onnxruntime's MultiHeadAttention) or 'matmul' (standard ops).

    Returns:
        The Restorer the graph was made from (PyTorch reference for checks).
    """
    if fmt not in ('onnx', 'torch-export'):
        raise ValueError(f"format must be 'onnx' or 'torch-export', got {fmt!r}")
    if fmt == 'onnx' and Path(output).suffix.lower() != '.onnx':
        raise ValueError(f'{output}: an ONNX model must end in .onnx (tools/infer.py recognises it by the suffix)')
    restorer = Restorer.from_file(source, root, device='cpu')
    program = export_program(restorer, None if fmt == 'onnx' else 1)
    metadata = _metadata(restorer, source, attention if fmt == 'onnx' else 'torch')
    if fmt == 'onnx':
        save_onnx(program, output, attention, metadata)
    else:
        save_torch_export(program, output, metadata)
    return restorer



def check_onnx(restorer: Restorer, path: str | Path, size: tuple[int, int] = (70, 100)) -> float:
    """PSNR (dB) between onnxruntime's output for the ONNX model at ``path`` and ``restorer``'s (PyTorch), whole
    images, on a random image of ``size`` (no multiple of 32, so padding and cropping are checked too)."""
    from difflid.deploy.onnx_runner import OnnxRestorer

    rgb = np.random.default_rng(0).random((*size, 3), dtype=np.float32)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    with torch.no_grad():
        reference = restore(restorer.net, x, restorer.prior)[0].clamp(0, 1).permute(1, 2, 0).numpy()
    mse = float(np.mean((OnnxRestorer(path, device='cpu', tile=0)(rgb).astype(np.float64) - reference) ** 2))
    return float('inf') if mse == 0 else 10 * math.log10(1 / mse)
