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

from difflid import image_io
from difflid.archs.difflid_arch import DiffLI2D
from difflid.deploy import onnx_runner
from difflid.deploy.export import ExportError, PositionNoise, export_model, export_program, save_onnx
from difflid.inference import Restorer, restore
from difflid.priors.noise import position_noise
from difflid.utils import tiling
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


@pytest.mark.parametrize('shape', [(1, 3, 64, 96), (2, 3, 75, 110), (1, 3, 20, 50)],
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
    for hw in [(40, 100), (256, 256), (20, 100)]:  # odd, a multiple of 32, a side that cannot be reflected
        x = hazy_astronaut(*hw)
        with torch.no_grad():
            out = program(x, torch.tensor([0, 0]))
        assert _psnr(out.numpy(), _torch(model.restorer, x)) > THRESHOLD


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


# ---- the runner's numpy mirrors of the torch side ----------------------------------------------------------------

def test_numpy_tiling_is_the_torch_tiling():
    x = torch.rand(2, 3, 150, 230)

    def shifted(tile, origin):  # position-dependent, as the prior's noise is
        return tile * (1 + origin[0] / 100) + origin[1] / 1000

    for tile, overlap in [(64, 16), (96, 0), (256, 32)]:
        expected = tiling.tiled_apply(shifted, x, tile, overlap).numpy()
        np.testing.assert_allclose(onnx_runner.tiled_apply(shifted, x.numpy(), tile, overlap), expected, rtol=1e-6)
    for args in [(100, 16, 32), (64, 64, 32), (64, -1, 32)]:
        with pytest.raises(ValueError) as expected:
            tiling.check_tiling(*args)
        with pytest.raises(ValueError, match=re.escape(str(expected.value))):
            onnx_runner.check_tiling(*args)


@pytest.mark.parametrize('kind', ['rgb8', 'rgba16', 'gray8'])
def test_numpy_image_io_is_difflid_image_io(tmp_path, kind):
    rng = np.random.default_rng(0)
    img = {'rgb8': rng.integers(0, 256, (9, 11, 3), dtype=np.uint8),
           'rgba16': rng.integers(0, 65536, (9, 11, 4), dtype=np.uint16),
           'gray8': rng.integers(0, 256, (9, 11), dtype=np.uint8)}[kind]
    cv2.imwrite(str(tmp_path / 'in.png'), img)
    ours, theirs = onnx_runner.read_image(tmp_path / 'in.png'), image_io.read_image(tmp_path / 'in.png')
    for field in ('rgb', 'alpha', 'dtype', 'gray', 'note'):
        np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field))
    restored = rng.random((9, 11, 3), dtype=np.float32) * 1.2 - 0.1  # out of range too: both clip
    onnx_runner.write_like(tmp_path / 'ours.png', restored, ours)
    image_io.write_like(tmp_path / 'theirs.png', restored, theirs)
    assert (tmp_path / 'ours.png').read_bytes() == (tmp_path / 'theirs.png').read_bytes()


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


def test_infer_with_an_onnx_model_rejects_other_precisions(model, tmp_path, monkeypatch):
    _inputs(tmp_path / 'in')
    monkeypatch.setattr(sys, 'argv', ['infer.py', '-opt', str(model.onnx), '-i', str(tmp_path / 'in'), '-o',
                                      str(tmp_path / 'out'), '--dtype', 'bf16'])
    with pytest.raises(SystemExit, match='computes in float32'):
        runpy.run_path(str(REPO_ROOT / 'tools' / 'infer.py'), run_name='__main__')


def test_export_tool_reports_the_check_and_fails_in_one_line(model, tmp_path, monkeypatch):
    psnr = float(model.printed.split('onnxruntime vs PyTorch on a 70x100 image: ')[1].split(' dB')[0])
    assert psnr > THRESHOLD and f'wrote {model.onnx}' in model.printed
    monkeypatch.setattr(sys, 'argv', ['export.py', '-opt', str(tmp_path / 'missing.pth'), '-o', 'x.onnx'])
    with pytest.raises(SystemExit, match='error: .*missing.pth not found'):
        runpy.run_path(str(REPO_ROOT / 'tools' / 'export.py'), run_name='__main__')


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
