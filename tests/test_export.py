"""Deployment: the ONNX graph of DiffLI²D and its prior (tools/export.py), run with onnxruntime (tools/infer.py), and
the torch.export program, against the PyTorch path (``Restorer``)."""
import contextlib
import importlib.util
import io
import os
import re
import runpy
import subprocess
import sys
from types import SimpleNamespace
from unittest import mock

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from difflid.archs.difflid_arch import DiffLI2D
from difflid.deploy import onnx_runner
from difflid.deploy.export import ExportError, GraphRestorer, PositionNoise, export_model, export_program, save_onnx
from difflid.inference import Restorer, restore
from difflid.priors.noise import position_noise
from difflid.utils import tiling
from difflid.utils.padding import pad_to_multiple
from tests.conftest import REPO_ROOT, hazy_astronaut, nontrivial_weights

ort = pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

# the quickstart model (options/_base_/quickstart.yml): tiny random-weight prior, small DiffLI2D
NET_G = dict(type='DiffLI2D', num_feat=16, width_mult=[1, 2, 4, 8], num_enc_blocks=[1, 1, 1], num_middle_blocks=1,
             num_heads=[1, 2, 4, 4], h_channels=64)
PRIOR = dict(type='HSpaceExtractor', unet='adm_tiny', checkpoint=None, random_weights=True, init_seed=0,
             timesteps=[0, 500], seed=0)
# onnxruntime vs PyTorch measured at 134-141 dB (float32 rounding); a wrong noise seed costs 110 dB
# (test_the_graph_follows_the_prior), tiles noised as corners 110 dB: any such bug falls far below this
THRESHOLD = 45.0

# Every other feature source (h-space on adm_tiny is the `model` fixture), each at the smallest network that runs its
# member's code: export time grows with the graph's node count (12-30 s per source on our shared 2-core CPU), not with
# the image size.
# (prior block, h_channels, h_stride), stated by hand: DiffLI2D checks the features' shape against them.
# adm_tiny's blocks (resblock_updown, scale-shift norm, attention at the middle block's stride) on two levels: stride 2
_ADM = {'preset': 'adm_tiny', 'image_size': 64, 'channel_mult': '1,2', 'attention_resolutions': '32'}
_UNET2D = dict(sample_size=32, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
               down_block_types=('DownBlock2D', 'AttnDownBlock2D'), up_block_types=('AttnUpBlock2D', 'UpBlock2D'))
SOURCES = {
    'layer_e': (dict(type='HSpaceExtractor', unet=_ADM, tap='layer_e'), 64, 2),
    'layer_d': (dict(type='HSpaceExtractor', unet=_ADM, tap='layer_d'), 64, 2),
    # a decoder block at stride 1 of a stride-2 UNet: the clean image is padded to 2, noised, and the features
    # cropped back to the image's grid
    'decoder-below-unet-stride': (dict(type='HSpaceExtractor', unet=_ADM, tap='output_blocks.1'), 64, 1),
    'released': (dict(type='ReleasedFeatureExtractor', unet=_ADM, stride=3), 6, 3),  # padded to 3, then lcm(3, 2) = 6
    'timm-resnet50': (dict(type='TimmFeatureExtractor', model='resnet50'), 2048, 32),
    'timm-vgg16': (dict(type='TimmFeatureExtractor', model='vgg16'), 512, 32),
    'diffusers': (dict(type='DiffusersUNetExtractor', config=_UNET2D), 32, 2),
}
# Exported and run by onnxruntime: all but layer_e, whose graph (the encoder) is a part of h-space's, exported by the
# `model` fixture, and layer_d, whose blocks all run in the decoder tap's graph; both are checked in PyTorch
# (GraphRestorer against restore).
EXPORTED_SOURCES = ['decoder-below-unet-stride', 'released', 'timm-resnet50', 'timm-vgg16', 'diffusers']
# no multiple of 32, and padding to the stride does not reach input_multiple: 37x61 -> 38x62 for the decoder tap,
# 39x63 -> 42x66 for the released features
SOURCE_SIZE = (37, 61)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float('inf') if mse == 0 else 10 * np.log10(1 / mse)


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    """A trained-like checkpoint (non-trivial DiffLI2D weights: a fresh one is the identity and ignores the prior)
    exported once by tools/export.py; its PyTorch Restorer, the onnxruntime runner and what the tool printed."""
    root = tmp_path_factory.mktemp('export')
    net = nontrivial_weights(DiffLI2D(**{k: v for k, v in NET_G.items() if k != 'type'}))
    checkpoint = root / 'net_g.pth'
    torch.save({'params': net.state_dict(), 'config': {'network_g': NET_G, 'network_prior': PRIOR}}, checkpoint)
    printed = io.StringIO()
    with mock.patch.object(sys, 'argv', ['export.py', '-opt', str(checkpoint), '-o', str(root / 'model.onnx')]), \
            contextlib.redirect_stdout(printed):
        runpy.run_path(str(REPO_ROOT / 'tools' / 'export.py'), run_name='__main__')
    return SimpleNamespace(root=root, checkpoint=checkpoint, onnx=root / 'model.onnx', printed=printed.getvalue(),
                           restorer=Restorer.from_file(checkpoint, REPO_ROOT),
                           runner=onnx_runner.OnnxRestorer(root / 'model.onnx', device='cpu', tile=0, threads=1))


def _torch(restorer: Restorer, x: torch.Tensor, **tiles) -> np.ndarray:
    with torch.no_grad():
        return restore(restorer.net, x, restorer.prior, **tiles).numpy()


@pytest.fixture(scope='module')
def source(request) -> Restorer:
    """A Restorer of a one-level DiffLI2D with non-trivial weights guided by one feature source (random weights)."""
    block, h_channels, h_stride = SOURCES[request.param]
    if block['type'] == 'DiffusersUNetExtractor':
        pytest.importorskip('diffusers')
    net_g = dict(type='DiffLI2D', num_feat=8, width_mult=[1], num_enc_blocks=[], num_middle_blocks=1, num_heads=[1],
                 h_channels=h_channels, h_stride=h_stride)
    with torch.random.fork_rng(devices=[]):  # DiffLI2D's initial weights, whatever ran before
        torch.manual_seed(0)
        restorer = Restorer(net_g, {**block, 'random_weights': True, 'timesteps': [0, 500], 'seed': 0})
    nontrivial_weights(restorer.net, std=0.5)  # at the default 0.2, zeroing resnet50's features costs only 48 dB
    return restorer


def _two_images(height: int, width: int) -> torch.Tensor:
    x = hazy_astronaut(height, width).repeat(2, 1, 1, 1)
    x[1] = x[1].flip(-1)
    return x


# ---- the graph ---------------------------------------------------------------------------------------------------

def test_noise_in_the_graph_is_position_noise_bit_for_bit(tmp_path):
    """The int64 hash must give the int32 hash's bits, and Box-Muller must run in float64 throughout: the exporter
    rounds Python float constants to float32, which changed a third of the values in their last bit."""
    noise = PositionNoise(seed=7, timesteps=[0, 500], channels=3)
    like = torch.zeros(1, 3, 37, 45)
    assert torch.equal(noise(like, torch.tensor([5, 1000])),
                       position_noise(7, [0, 500], 3, 37, 45, origin=(5, 1000)))
    dims = {2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    program = torch.export.export(noise, (like, torch.tensor([0, 0])), dynamic_shapes=(dims, None))
    onnx_program = torch.onnx.export(program, (), opset_version=18, dynamo=True)
    onnx_program.save(tmp_path / 'noise.onnx')
    session = ort.InferenceSession(str(tmp_path / 'noise.onnx'), providers=['CPUExecutionProvider'])
    for (height, width), origin in [((64, 96), (0, 0)), ((19, 70), (300, 4095))]:
        out = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, height, width), np.float32),
                                 session.get_inputs()[1].name: np.array(origin, np.int64)})[0]
        np.testing.assert_array_equal(out, position_noise(7, [0, 500], 3, height, width, origin=origin).numpy())


def test_the_graph_has_the_documented_signature(model):
    session = model.runner.session
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        ('image', 'tensor(float)', ['batch', 3, 'height', 'width']), ('origin', 'tensor(int64)', [2])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [('restored', ['batch', 3, 'height', 'width'])]
    meta = model.runner.metadata
    assert (meta['difflid.stride'], meta['difflid.attention'], meta['difflid.timesteps']) == ('32', 'fused', '[0, 500]')
    import onnx

    proto = onnx.load(str(model.onnx))
    assert {o.domain: o.version for o in proto.opset_import} == {'': 18, 'com.microsoft': 1}
    ops = {n.op_type for n in proto.graph.node}
    assert 'MultiHeadAttention' in ops and 'Softmax' not in ops  # every attention fused: no (queries x keys) matrix


@pytest.mark.parametrize('shape', [(1, 3, 64, 96), (2, 3, 75, 110), (1, 3, 12, 50)],
                         ids=['multiple-of-32', 'batch-2-odd-size', 'too-short-to-reflect'])
def test_onnxruntime_agrees_with_pytorch(model, shape):
    """Dynamic batch and size: the padding (reflect, or replicate below 16 px), noise, prior, network and crop."""
    x = hazy_astronaut(*shape[2:]).repeat(shape[0], 1, 1, 1)
    x[-1] = x[-1].flip(-1)  # two different images in a batch
    out = model.runner.run(x.numpy())
    assert out.shape == shape
    expected = _torch(model.restorer, x)
    for i in range(shape[0]):
        assert _psnr(out[i], expected[i]) > THRESHOLD
    assert _psnr(out, x.numpy()) < 20  # the network does something (output vs input measured: 7-8 dB)


def test_the_graph_follows_the_prior(model):
    """The output depends on the prior's features the way PyTorch's does: against the same network with a prior of
    another noise seed the agreement collapses (measured: 137 dB vs 25 dB)."""
    x = hazy_astronaut(96, 128)
    out = model.runner.run(x.numpy())
    other = Restorer(NET_G, {**PRIOR, 'seed': 1}, model.checkpoint)
    assert _psnr(out, _torch(model.restorer, x)) > THRESHOLD
    assert _psnr(out, _torch(other, x)) < THRESHOLD - 10


def test_tiles_agree_with_pytorch_tiles_and_use_their_origin(model, monkeypatch):
    """Each tile is noised as its window of the whole image: the runner passes the tile's origin to the graph."""
    rgb = hazy_astronaut(150, 230)[0].permute(1, 2, 0).numpy()
    tiled = onnx_runner.OnnxRestorer(model.onnx, device='cpu', tile=96, tile_overlap=32, threads=1)
    reference = Restorer.from_file(model.checkpoint, REPO_ROOT, tile=96, tile_overlap=32)
    expected = reference(rgb)
    out = tiled(rgb)
    assert out.shape == rgb.shape and out.dtype == np.float32
    assert _psnr(out, expected) > THRESHOLD
    assert _psnr(out, model.runner(rgb)) < THRESHOLD  # tiles are not the whole image (23 dB), so tiles were used
    original = tiled.run
    monkeypatch.setattr(tiled, 'run', lambda image, origin=(0, 0): original(image))
    assert _psnr(tiled(rgb), expected) < THRESHOLD  # every tile noised as a corner (29 dB): the check can fail


def test_tiling_defaults_come_from_the_file(model, tmp_path):
    """The option file's val.tile/val.tile_overlap travel in the model's metadata (a checkpoint has none: 0)."""
    import onnx

    assert (model.runner.metadata['difflid.tile'], model.runner.metadata['difflid.tile_overlap']) == ('0', '32')
    proto = onnx.load(str(model.onnx))
    for prop in proto.metadata_props:
        prop.value = {'difflid.tile': '64', 'difflid.tile_overlap': '16'}.get(prop.key, prop.value)
    onnx.save(proto, str(tmp_path / 'tiled.onnx'))
    runner = onnx_runner.OnnxRestorer(tmp_path / 'tiled.onnx', device='cpu')
    assert (runner.tile, runner.tile_overlap) == (64, 16)
    assert (onnx_runner.OnnxRestorer(tmp_path / 'tiled.onnx', device='cpu', tile=0).tile) == 0
    with pytest.raises(ValueError, match='multiple of 32'):
        onnx_runner.OnnxRestorer(tmp_path / 'tiled.onnx', device='cpu', tile=100)
    with pytest.raises(ValueError, match='no difflid metadata'):
        del proto.metadata_props[:]
        onnx.save(proto, str(tmp_path / 'foreign.onnx'))
        onnx_runner.OnnxRestorer(tmp_path / 'foreign.onnx', device='cpu')


@pytest.mark.slow
def test_torch_export_program_agrees_with_pytorch(model, tmp_path):
    """A torch.export program: fixed batch 1 (see export_program), any size with more than one h position."""
    path = tmp_path / 'model.pt2'
    export_model(model.checkpoint, path, REPO_ROOT, fmt='torch-export')
    program = torch.export.load(path).module()
    for hw in [(40, 100), (256, 256), (12, 100)]:  # odd, a multiple of 32, a side that cannot be reflected (12 < 20)
        x = hazy_astronaut(*hw)
        with torch.no_grad():
            out = program(x, torch.tensor([0, 0]))
        assert _psnr(out.numpy(), _torch(model.restorer, x)) > THRESHOLD


@pytest.mark.parametrize('source', list(SOURCES), indirect=True)
def test_the_graph_module_restates_each_source_s_input_path(source):
    """``GraphRestorer`` in PyTorch (no export) against ``restore``: padding to the stride and on to the member's
    input_multiple, noise, q_sample, the crop of the features, the network, the crop back."""
    x = _two_images(*SOURCE_SIZE)
    with torch.no_grad():
        out = GraphRestorer(source.net, source.prior).eval()(x, torch.tensor([0, 0])).numpy()
    expected = _torch(source, x)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)  # measured: identical, diffusers 1.2e-7 apart
    # the features matter, here and in the onnxruntime test: the network given no features (zeros) or each other's
    # (t1 and t2 swapped) falls well below THRESHOLD (measured: at most 31.7 and 34.3 dB, both resnet50's)
    padded = pad_to_multiple(x, source.prior.downsample_factor)
    with torch.no_grad():
        f_cim, f_hae = source.prior.guidance(padded)
        for feats in ((f_cim * 0, f_hae * 0), (f_hae, f_cim)):
            other = source.net(padded, *feats)[..., :SOURCE_SIZE[0], :SOURCE_SIZE[1]].numpy()
            assert _psnr(other, expected) < THRESHOLD - 5


@pytest.mark.slow
@pytest.mark.parametrize('source', EXPORTED_SOURCES, indirect=True)
def test_feature_sources_export_and_onnxruntime_agrees_with_pytorch(source, tmp_path):
    """Each source exported to ONNX (its own ops: a decoder tap, the full UNet fed ᾱ_t and pooled, timm's
    classifiers, diffusers' blocks) and run by onnxruntime at sizes and a batch that differ from the example the graph
    was traced with; a height of 2 is replicated, not reflected, to 32 (timm) and, after reflecting to 3, to 6
    (released), as pad_to_multiple does."""
    save_onnx(export_program(source), tmp_path / 'model.onnx')
    session = ort.InferenceSession(str(tmp_path / 'model.onnx'), providers=['CPUExecutionProvider'])
    for x in (_two_images(*SOURCE_SIZE), hazy_astronaut(2, 40)):
        out = session.run(['restored'], {'image': x.numpy(), 'origin': np.zeros(2, np.int64)})[0]
        expected = _torch(source, x)
        assert out.shape == expected.shape
        for i in range(len(x)):
            assert _psnr(out[i], expected[i]) > THRESHOLD


# ---- errors ------------------------------------------------------------------------------------------------------

def test_unsupported_models_fail_export_with_a_clear_message(tmp_path, model):
    dcp = tmp_path / 'dcp.yml'
    dcp.write_text('name: dcp\nmodel_type: ImageRestorationModel\nnetwork_g: {type: DCP}\n'
                   'path: {pretrain_network_g: ~}\n')
    with pytest.raises(ExportError, match='network_g DCP has no network_prior'):
        export_model(dcp, tmp_path / 'dcp.onnx', REPO_ROOT)
    with pytest.raises(ValueError, match='must end in .onnx'):
        export_model(model.checkpoint, tmp_path / 'model.bin', REPO_ROOT)
    with pytest.raises(ValueError, match="format must be 'onnx' or 'torch-export'"):
        export_model(model.checkpoint, tmp_path / 'model.onnx', REPO_ROOT, fmt='tflite')
    with pytest.raises(ValueError, match='attention must be one of'):
        save_onnx(None, tmp_path / 'model.onnx', attention='flash')


def test_a_feature_source_that_does_not_trace_is_named(model, monkeypatch):
    def data_dependent(x_t, t):  # a Python branch on tensor values: what torch.export cannot capture
        return x_t[:, :1, ::32, ::32].repeat(1, 64, 1, 1) if x_t.mean() > 0 else x_t

    monkeypatch.setattr(model.restorer.prior, '_features', data_dependent)
    with pytest.raises(ExportError, match='torch.export failed on network_g DiffLI2D with network_prior HSpaceExt'):
        export_program(model.restorer)


def test_missing_extras_name_the_pip_command(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import onnxruntime now raises ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[onnxruntime\]'"):
        onnx_runner.OnnxRestorer(model.onnx)
    monkeypatch.setitem(sys.modules, 'onnxscript', None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[onnx\]'"):
        save_onnx(None, tmp_path / 'model.onnx')


# ---- the runner's image I/O and tiles, against references -------------------------------------------------------

# Tiles of 4 with an overlap of 2 along a side of 10 start at 0, 2, 4, 6 (the last ends at the border) with weights
# 0.25, 0.75, 0.75, 0.25; a function that returns its tile's start then blends to these values (by hand). Without
# overlap (tiles at 0, 4, 6, weight 1) and on a side shorter than a tile (one tile at 0):
BLENDED_STARTS = {(10, 4, 2): [0, 0, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6, 6], (10, 4, 0): [0, 0, 0, 0, 4, 4, 5, 5, 6, 6],
                  (3, 4, 2): [0, 0, 0]}


@pytest.mark.parametrize('side, tile, overlap', list(BLENDED_STARTS))
def test_tiles_and_blend_match_a_layout_computed_by_hand(side, tile, overlap):
    """The runner's numpy ``tiled_apply`` and the torch one against the hand-made layout above: each tile gets its
    own pixels and its (top, left), and the blend is the weighted mean (separable: rows and columns add up)."""
    x = np.random.default_rng(0).random((2, 3, side, side), dtype=np.float32)
    blended = np.asarray(BLENDED_STARTS[side, tile, overlap], np.float32)
    expected = x + 100 * blended[:, None] + blended[None, :]

    def shifted(part, origin):  # the tile's pixels plus its position: a misplaced tile or origin shows
        return part + 100 * origin[0] + origin[1]

    np.testing.assert_allclose(onnx_runner.tiled_apply(shifted, x, tile, overlap), expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(tiling.tiled_apply(shifted, torch.from_numpy(x), tile, overlap).numpy(), expected,
                               rtol=0, atol=1e-4)


def test_the_runner_checks_tiles_as_documented():
    onnx_runner.check_tiling(0, -5, 32)  # 0: tiling off, the overlap unused
    onnx_runner.check_tiling(96, 0, 32)
    for args, message in [((100, 16, 32), 'tile must be 0 (off) or a multiple of 32, got 100'),
                          ((-32, 16, 32), 'tile must be 0 (off) or a multiple of 32, got -32'),
                          ((64, 64, 32), 'tile_overlap must be in [0, tile), got 64'),
                          ((64, -1, 32), 'tile_overlap must be in [0, tile), got -1')]:
        with pytest.raises(ValueError) as err:
            onnx_runner.check_tiling(*args)
        assert str(err.value) == message


def _write_reference(path, pixels: np.ndarray) -> None:
    """``pixels`` (RGB order) written by a library other than cv2: PIL, or tifffile (uncompressed) for 16-bit colour,
    which PIL cannot write."""
    if pixels.dtype == np.uint16 and pixels.shape[2] > 1:
        tifffile = pytest.importorskip('tifffile')
        tifffile.imwrite(path, pixels, photometric='rgb', extrasamples=['unassalpha'] if pixels.shape[2] == 4 else [])
    else:
        Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(path)


@pytest.mark.parametrize('kind', ['rgb8', 'rgba8', 'gray8', 'gray16', 'rgba16'])
def test_the_runner_reads_and_writes_known_pixels(tmp_path, kind):
    """The runner's image I/O (difflid/image_io.py, loaded by file) on files with known pixel values written by PIL
    or tifffile: RGB order, scaling by the bit depth, grey and alpha kept; then what it writes, read back by PIL
    (cv2 for 16-bit colour, whose channel order is BGR): the depth, channels and alpha of the source, the restored
    values clipped to [0, 1] and rounded to the nearest level (not truncated), grey as the luma of the RGB."""
    rng = np.random.default_rng(0)
    dtype = np.uint16 if kind.endswith('16') else np.uint8
    top = np.iinfo(dtype).max
    channels = {'rgb': 3, 'rgba': 4, 'gray': 1}[kind[:-2] if kind.endswith('16') else kind[:-1]]
    pixels = rng.integers(0, top + 1, (9, 11, channels), dtype=dtype)
    source = tmp_path / ('in.tif' if dtype == np.uint16 and channels > 1 else 'in.png')
    _write_reference(source, pixels)

    loaded = onnx_runner.read_image(source)
    colour = np.repeat(pixels, 3, axis=2) if channels == 1 else pixels[..., :3]
    assert loaded.rgb.dtype == np.float32 and loaded.dtype == dtype and loaded.gray == (channels == 1)
    assert [word in loaded.note for word in ('grayscale', 'RGBA', '16-bit')] == [
        channels == 1, channels == 4, dtype == np.uint16]  # what tools/infer.py's summary says was converted
    np.testing.assert_allclose(loaded.rgb, colour / top, rtol=1e-6, atol=0)
    if channels == 4:
        np.testing.assert_array_equal(loaded.alpha, pixels[..., 3])
    else:
        assert loaded.alpha is None

    levels = rng.integers(0, top + 1, (9, 11, 3))
    restored = ((levels + rng.uniform(-0.3, 0.3, levels.shape)) / top).astype(np.float32)  # rounds to `levels`
    restored[0, :3], levels[0, :3] = [-0.1, 1.2, 0.3 / top], [0, top, 0]  # clipped, clipped, rounded down
    onnx_runner.write_like(tmp_path / 'out.png', restored, loaded)
    if dtype == np.uint16 and channels > 1:
        written = cv2.imread(str(tmp_path / 'out.png'), cv2.IMREAD_UNCHANGED)
        written = np.concatenate([written[..., 2::-1], written[..., 3:]], axis=2)  # cv2's BGR(A) -> RGB(A)
    else:
        written = np.asarray(Image.open(tmp_path / 'out.png'))
    assert written.dtype == dtype
    if channels == 1:  # ITU-R BT.601 luma of the written levels, to cv2's 14-bit fixed-point weights and rounding
        luma = levels @ np.array([0.299, 0.587, 0.114])
        assert written.shape == (9, 11) and np.abs(written - luma).max() <= 1 + top / 2 ** 14
    else:
        assert written.shape == (9, 11, channels)
        np.testing.assert_array_equal(written[..., :3], levels)
    if channels == 4:
        np.testing.assert_array_equal(written[..., 3], pixels[..., 3])


# ---- tools/infer.py -------------------------------------------------------------------------------------------------

def _inputs(folder):
    folder.mkdir()
    photo = (hazy_astronaut(70, 90)[0].permute(1, 2, 0).numpy()[..., ::-1] * 255).round().astype(np.uint8)
    cv2.imwrite(str(folder / 'photo.png'), photo)
    cv2.imwrite(str(folder / 'grey.png'), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    alpha = np.full((70, 90, 1), 40000, np.uint16)
    cv2.imwrite(str(folder / 'deep.png'), np.concatenate([photo.astype(np.uint16) * 257, alpha], axis=2))


def test_infer_with_an_onnx_model_imports_neither_torch_nor_basicsr_and_writes_what_pytorch_writes(model, tmp_path,
                                                                                                  monkeypatch):
    _inputs(tmp_path / 'in')
    script = ('import runpy, sys\nsys.argv = sys.argv[1:]\ncode = 0\n'
              'try:\n    runpy.run_path(sys.argv[0], run_name="__main__")\nexcept SystemExit as e:\n    code = e.code\n'
              'print("loaded:", sorted(m for m in ("torch", "basicsr", "difflid") if m in sys.modules))\n'
              'sys.exit(code)\n')
    proc = subprocess.run([sys.executable, '-c', script, str(REPO_ROOT / 'tools' / 'infer.py'), '-opt',
                           str(model.onnx), '-i', str(tmp_path / 'in'), '-o', str(tmp_path / 'onnx'), '--tile', '64',
                           '--tile-overlap', '32'], capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'loaded: []' in proc.stdout and 'restored 3 of 3 images' in proc.stdout
    monkeypatch.setattr(sys, 'argv', ['infer.py', '-opt', str(model.checkpoint), '-i', str(tmp_path / 'in'), '-o',
                                      str(tmp_path / 'torch'), '--tile', '64', '--tile-overlap', '32'])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO_ROOT / 'tools' / 'infer.py'), run_name='__main__')
    assert done.value.code == 0
    for name in ('photo.png', 'grey.png', 'deep.png'):
        ours = cv2.imread(str(tmp_path / 'onnx' / name), cv2.IMREAD_UNCHANGED)
        theirs = cv2.imread(str(tmp_path / 'torch' / name), cv2.IMREAD_UNCHANGED)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        assert np.abs(ours.astype(np.int64) - theirs).max() <= 1  # one rounding step at most


def test_infer_with_an_onnx_model_rejects_other_precisions(model, tmp_path, monkeypatch, capsys):
    _inputs(tmp_path / 'in')
    monkeypatch.setattr(sys, 'argv', ['infer.py', '-opt', str(model.onnx), '-i', str(tmp_path / 'in'), '-o',
                                      str(tmp_path / 'out'), '--dtype', 'bf16'])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO_ROOT / 'tools' / 'infer.py'), run_name='__main__')
    assert done.value.code == 2 and 'computes in float32' in capsys.readouterr().err


def test_export_tool_reports_the_check_and_fails_in_one_line(model, tmp_path, monkeypatch, capsys):
    psnr = float(model.printed.split('onnxruntime vs PyTorch on a 70x100 image: ')[1].split(' dB')[0])
    assert psnr > THRESHOLD and f'wrote {model.onnx}' in model.printed
    monkeypatch.setattr(sys, 'argv', ['export.py', '-opt', str(tmp_path / 'missing.pth'), '-o', 'x.onnx'])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO_ROOT / 'tools' / 'export.py'), run_name='__main__')
    assert done.value.code == 2 and re.search('error: .*missing.pth not found', capsys.readouterr().err)


def test_the_runner_file_loads_without_the_package():
    """tools/infer.py's loader: the runner must not import difflid (relative or absolute)."""
    spec = importlib.util.spec_from_file_location('runner_alone', REPO_ROOT / 'difflid' / 'deploy' / 'onnx_runner.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    source = (REPO_ROOT / 'difflid' / 'deploy' / 'onnx_runner.py').read_text()
    assert 'import torch' not in source and 'difflid' not in ''.join(
        line for line in source.splitlines() if line.startswith(('import', 'from')))
