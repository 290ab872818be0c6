"""tools/infer.py with users' images: names that collide, outputs it would read back, existing files, 16-bit and
alpha into 8-bit formats without alpha, EXIF orientation (PyTorch and onnxruntime paths), unreadable files, and a
checkpoint that does not fit its option file.

The network is a fresh DiffLI2D, which is the identity (its last layers start at zero), so every output can be
compared with the input pixels; the onnxruntime path runs through tools/infer.py with an identity OnnxRestorer."""
import glob
import importlib.util
import runpy
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage import data

from difflid.archs.difflid_arch import DiffLI2D
from tests.conftest import REPO_ROOT

INFER = REPO_ROOT / 'tools' / 'infer.py'
NET_G = {'type': 'DiffLI2D', 'num_feat': 8, 'num_heads': [1, 2, 2, 4], 'h_channels': 64}
PRIOR = {'type': 'HSpaceExtractor', 'unet': 'adm_tiny', 'random_weights': True}
PHOTO = np.ascontiguousarray(data.astronaut()[40:88, 150:230])  # (48, 80, 3) RGB, not square


@pytest.fixture
def identity(tmp_path):
    """A difflid checkpoint whose network returns its input (a fresh DiffLI2D)."""
    path = tmp_path / 'identity.pth'
    net = DiffLI2D(**{k: v for k, v in NET_G.items() if k != 'type'})
    torch.save({'params': net.state_dict(), 'config': {'network_g': NET_G, 'network_prior': PRIOR}}, path)
    return path


def _infer(monkeypatch, capfd, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, 'argv', ['infer.py', *map(str, args)])
    capfd.readouterr()
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(INFER), run_name='__main__')
    out, err = capfd.readouterr()
    return done.value.code, out, err


def _user_error(code: int, err: str) -> None:
    lines = [line for line in err.splitlines() if 'RANDOM weights' not in line]  # the tiny prior's own warning
    assert code == 2 and lines[0].startswith('error: ') and len(lines) <= 12 and 'Traceback' not in err, err


def test_names_that_collide_or_outputs_read_back_are_refused_before_writing(tmp_path, identity, monkeypatch, capfd):
    shots = tmp_path / 'shots'
    shots.mkdir()
    for name in ('shot.jpg', 'shot.png', 'other.png'):
        cv2.imwrite(str(shots / name), PHOTO)
    code, _, err = _infer(monkeypatch, capfd, '-opt', identity, '-i', shots, '-o', tmp_path / 'out')
    _user_error(code, err)
    assert 'nothing was written' in err and 'written to shot.png' in err
    assert str(shots / 'shot.jpg') in err and str(shots / 'shot.png') in err and 'other' not in err
    assert not (tmp_path / 'out').exists()
    # the input folder as output: the next run would read these outputs
    before = sorted(p.name for p in shots.iterdir())
    code, out, _ = _infer(monkeypatch, capfd, '-opt', identity, '-i', shots / '*.png', '-o', shots, '--ext', 'tif')
    assert code == 0 and 'restored 2 of 2' in out  # *.png never reads .tif: allowed
    assert sorted(p.name for p in shots.iterdir()) == sorted([*before, 'other.tif', 'shot.tif'])
    code, _, err = _infer(monkeypatch, capfd, '-opt', identity, '-i', shots, '-o', shots, '--ext', 'tif',
                          '--overwrite')  # the .tif files are inputs now
    _user_error(code, err)
    assert '2 output(s) would overwrite their input: other.tif, shot.tif;' in err
    (tmp_path / 'one').mkdir()
    cv2.imwrite(str(tmp_path / 'one' / 'a.png'), PHOTO)
    for spec, out in ((tmp_path / 'one', tmp_path / 'one'), (tmp_path / '**' / 'a.*', tmp_path / 'one' / 'restored')):
        code, _, err = _infer(monkeypatch, capfd, '-opt', identity, '-i', spec, '-o', out, '--ext', 'jpg')
        _user_error(code, err)
        assert f'1 output(s) would be read as inputs by the next run with -i {spec}: a.jpg;' in err, err
    assert sorted(p.name for p in tmp_path.rglob('a.*')) == ['a.png']


def test_the_read_back_check_agrees_with_glob(tmp_path):
    """tools/infer.py's would_read against an independent oracle: create the file, then ask glob (as -i does)."""
    infer = runpy.run_path(str(INFER), run_name='infer_module')
    (tmp_path / 'a' / 'b').mkdir(parents=True)
    cases = [('**/*.png', 'a/b/x.png'), ('**/*.png', 'x.png'), ('a/*.png', 'a/b/x.png'), ('a/*/*.png', 'a/b/x.png'),
             ('a/*.png', 'a/x.jpg'), ('a/?.png', 'a/xy.png'), ('*/[ab]/*', 'a/b/x.tif'), ('a/**', 'a/b/x.png')]
    for pattern, name in cases:
        target = tmp_path / name
        spec = str(tmp_path / pattern)
        predicted = infer['would_read'](spec, target)
        target.write_bytes(b'')
        try:
            found = set(glob.glob(spec, recursive=True))
        finally:
            target.unlink()
        actual = str(target) in found and target.suffix in infer['EXTENSIONS']
        assert predicted == actual, (pattern, name)


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, identity, monkeypatch, capfd):
    cv2.imwrite(str(tmp_path / 'a.png'), PHOTO)
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'a.png').write_bytes(b'an earlier result')
    code, _, err = _infer(monkeypatch, capfd, '-opt', identity, '-i', tmp_path / 'a.png', '-o', tmp_path / 'out')
    _user_error(code, err)
    assert 'exist already: a.png' in err and '--overwrite' in err
    assert (tmp_path / 'out' / 'a.png').read_bytes() == b'an earlier result'
    code, out, _ = _infer(monkeypatch, capfd, '-opt', identity, '-i', tmp_path / 'a.png', '-o', tmp_path / 'out',
                          '--overwrite')
    assert code == 0 and 'restored 1 of 1' in out
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / 'out' / 'a.png')), PHOTO)


def test_16_bit_and_alpha_into_jpg(tmp_path, identity, monkeypatch, capfd):
    """16 bits are scaled to 8 (not clipped: the old output was almost white), alpha needs --background, and the
    summary says what was written: checked by reading the JPEG back."""
    (tmp_path / 'in').mkdir()
    colour16 = PHOTO[..., ::-1].astype(np.uint16) * 100 + 20000  # BGR, 20000..45500: clipping would give 255
    alpha16 = np.broadcast_to(np.linspace(0, 65535, 80).round().astype(np.uint16), (48, 80))
    cv2.imwrite(str(tmp_path / 'in' / 'deep.png'), np.dstack([colour16, alpha16]))
    cv2.imwrite(str(tmp_path / 'in' / 'plain.png'), PHOTO[..., ::-1])
    code, _, err = _infer(monkeypatch, capfd, '-opt', identity, '-i', tmp_path / 'in', '-o', tmp_path / 'out',
                          '--ext', 'jpg')
    _user_error(code, err)
    assert '1 input(s) have an alpha channel' in err and 'deep.png' in err and '--background' in err
    assert not (tmp_path / 'out').exists()
    code, out, _ = _infer(monkeypatch, capfd, '-opt', identity, '-i', tmp_path / 'in', '-o', tmp_path / 'out',
                          '--ext', 'jpg', '--background', 'white')
    assert code == 0 and 'restored 2 of 2' in out
    note = next(line for line in out.splitlines() if line.strip().startswith('deep.png'))
    assert '16-bit' in note and 'warning: written as 8-bit RGB' in note and 'scaled from 16 to 8 bits' in note
    assert 'alpha composited onto #ffffff' in note and 'plain.png' not in out
    back = cv2.imread(str(tmp_path / 'out' / 'deep.jpg'), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint8 and back.shape == (48, 80, 3)
    a = alpha16[..., None] / 65535
    expected = (colour16 / 65535 * a + (1 - a)) * 255
    assert np.abs(back - expected).mean() < 2.5  # JPEG's loss only
    assert not (tmp_path / 'out' / 'deep.png').exists()


def _onnx_identity(monkeypatch):
    """tools/infer.py's onnxruntime path, its runner module loaded as infer loads it, with an identity model."""
    spec = importlib.util.spec_from_file_location('difflid_onnx_runner', REPO_ROOT / 'difflid/deploy/onnx_runner.py')
    runner = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, runner)
    spec.loader.exec_module(runner)

    class Identity:
        def __init__(self, path, **kwargs) -> None:
            pass

        def __call__(self, rgb: np.ndarray) -> np.ndarray:
            return rgb

    monkeypatch.setattr(runner, 'OnnxRestorer', Identity)


@pytest.mark.parametrize('path', ['torch', 'onnxruntime'])
def test_exif_orientation_is_applied_and_said(tmp_path, identity, monkeypatch, capfd, path):
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone held upright: stored sideways, "rotate 90° clockwise to view"
    (tmp_path / 'in').mkdir()
    Image.fromarray(PHOTO).save(tmp_path / 'in' / 'phone.jpg', quality=95, exif=exif)
    stored = cv2.imread(str(tmp_path / 'in' / 'phone.jpg'), cv2.IMREAD_UNCHANGED)  # ignores the orientation
    model = identity
    if path == 'onnxruntime':
        _onnx_identity(monkeypatch)
        model = tmp_path / 'model.onnx'
    code, out, _ = _infer(monkeypatch, capfd, '-opt', model, '-i', tmp_path / 'in', '-o', tmp_path / 'out')
    assert code == 0 and 'phone.jpg: EXIF orientation 6: rotated 90° clockwise' in out
    written = cv2.imread(str(tmp_path / 'out' / 'phone.png'), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(written, np.rot90(stored, -1))


def test_a_truncated_jpeg_is_skipped_quietly_and_named_once(tmp_path, identity, monkeypatch, capfd):
    (tmp_path / 'in').mkdir()
    Image.fromarray(PHOTO).save(tmp_path / 'whole.jpg', quality=95)
    cut = tmp_path / 'in' / 'cut.jpg'
    cut.write_bytes((tmp_path / 'whole.jpg').read_bytes()[:1500])
    cv2.imwrite(str(tmp_path / 'in' / 'fine.png'), PHOTO)
    code, out, err = _infer(monkeypatch, capfd, '-opt', identity, '-i', tmp_path / 'in', '-o', tmp_path / 'out')
    assert code == 0 and 'restored 1 of 2' in out and 'Premature end' not in out + err
    listed = [line for line in (out + err).splitlines() if str(cut) in line]
    assert listed and all(line.count(str(cut)) == 1 and 'truncated JPEG' in line for line in listed), listed
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['fine.png']


def test_a_checkpoint_of_another_configuration_is_one_error(tmp_path, identity, monkeypatch, capfd):
    option = tmp_path / 'test.yml'
    wider = {**NET_G, 'num_feat': 16}
    option.write_text(yaml.safe_dump({'name': 't', 'model_type': 'DiffLI2DModel', 'network_g': wider,
                                      'network_prior': PRIOR, 'path': {'pretrain_network_g': str(identity)}}))
    cv2.imwrite(str(tmp_path / 'a.png'), PHOTO)
    code, _, err = _infer(monkeypatch, capfd, '-opt', option, '-i', tmp_path / 'a.png', '-o', tmp_path / 'out')
    _user_error(code, err)
    assert str(identity) in err.splitlines()[0] and 'checkpoint has network_g.num_feat: 8, options say 16' in err
    assert str(option) in err and 'size mismatch' not in err
    assert not (tmp_path / 'out').exists()
