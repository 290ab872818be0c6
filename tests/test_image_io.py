"""difflid/image_io.py (users' images in and out of inference, shared by the PyTorch and onnxruntime paths) and
difflid.utils.checkpoint_io.load_network_weights (a checkpoint that does not fit its options)."""
import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from difflid import image_io
from difflid.archs.difflid_arch import DiffLI2D
from difflid.data.pair_list_dataset import PairListDataset
from difflid.utils.checkpoint_io import load_network_weights
from difflid.utils.errors import OptionError, format_user_error

PHOTO = np.ascontiguousarray(data.astronaut()[40:88, 150:230])  # (48, 80, 3) RGB: a missed turn changes the shape


def _jpeg_with_orientation(path, rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Write ``rgb`` as a JPEG whose EXIF says ``orientation``; return its pixels as stored (cv2 BGR, unturned)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, 'JPEG', quality=95, exif=exif)
    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # IMREAD_UNCHANGED ignores the orientation
    assert stored.shape == rgb.shape
    return stored


@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_is_applied_as_opencv_applies_it(tmp_path, orientation):
    stored = _jpeg_with_orientation(tmp_path / 'phone.jpg', PHOTO, orientation)
    loaded = image_io.read_image(tmp_path / 'phone.jpg')
    upright = cv2.imread(str(tmp_path / 'phone.jpg'), cv2.IMREAD_COLOR)  # OpenCV's own EXIF handling
    got = (loaded.rgb[..., ::-1] * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(got, upright)
    if orientation == 6:  # "rotate 90° clockwise to view": np.rot90 by -1 of the stored rows
        np.testing.assert_array_equal(got, np.rot90(stored, -1))
        assert got.shape == (80, 48, 3)
    assert ('EXIF orientation' in loaded.note) == (orientation != 1)
    assert f'EXIF orientation {orientation}' in loaded.note or orientation == 1


def test_exif_orientation_turns_alpha_and_16_bit_grey_too(tmp_path):
    rgba = np.dstack([PHOTO, np.arange(48 * 80, dtype=np.uint8).reshape(48, 80)])
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(rgba).save(tmp_path / 'rgba.png', exif=exif)
    loaded = image_io.read_image(tmp_path / 'rgba.png')
    np.testing.assert_array_equal(loaded.alpha, np.rot90(rgba[..., 3], 1))
    np.testing.assert_allclose(loaded.rgb, np.rot90(PHOTO, 1) / 255, atol=1e-6)
    grey16 = (PHOTO[..., 1].astype(np.uint16) * 257 + 3)
    Image.fromarray(grey16).save(tmp_path / 'grey16.png', exif=exif)
    loaded = image_io.read_image(tmp_path / 'grey16.png')
    assert loaded.dtype == np.uint16 and loaded.gray and 'EXIF orientation 8' in loaded.note
    np.testing.assert_allclose(loaded.rgb[..., 0], np.rot90(grey16, 1) / 65535, atol=1e-6)
    # the same from bytes, as a dataset reading an LMDB would call it
    turned, note = image_io.apply_exif_orientation(grey16, (tmp_path / 'grey16.png').read_bytes())
    np.testing.assert_array_equal(turned, np.rot90(grey16, 1))
    assert note.startswith('EXIF orientation 8')


@pytest.mark.parametrize('orientation', [3, 6])
def test_a_tiff_is_turned_once(tmp_path, orientation):
    """OpenCV's TIFF decoder applies the orientation tag itself (OpenCV 5.1, even with IMREAD_UNCHANGED): read_image
    must not turn it a second time, and still say what was done."""
    tifffile = pytest.importorskip('tifffile')
    rgba16 = np.dstack([PHOTO, PHOTO[..., 0]]).astype(np.uint16) * 257
    tifffile.imwrite(tmp_path / 'deep.tif', rgba16, photometric='rgb', extrasamples=[2],
                     extratags=[(0x0112, 'H', 1, orientation, True)])
    loaded = image_io.read_image(tmp_path / 'deep.tif')
    turns = {3: 2, 6: -1}[orientation]  # np.rot90's counter-clockwise quarter turns
    np.testing.assert_array_equal(loaded.alpha, np.rot90(rgba16[..., 3], turns))
    np.testing.assert_allclose(loaded.rgb, np.rot90(rgba16[..., :3], turns) / 65535, atol=1e-6)
    assert f'EXIF orientation {orientation}' in loaded.note and loaded.dtype == np.uint16
    # cv2.imread returns None here for orientations 5-8 (OpenCV 5.1: "Internal imread issue"); imdecode works
    decoded = cv2.imdecode(np.fromfile(tmp_path / 'deep.tif', np.uint8), cv2.IMREAD_UNCHANGED)
    turned, note = image_io.apply_exif_orientation(decoded, tmp_path / 'deep.tif')
    assert turned is decoded and turned.shape[:2] == loaded.rgb.shape[:2] and note.startswith('EXIF orientation')


def test_datasets_read_exif_rotated_photos_upright(tmp_path):
    """basicsr's imfrombytes decodes with cv2.IMREAD_COLOR, which applies the EXIF orientation: the datasets need
    no change (this test keeps it so)."""
    (tmp_path / 'lq').mkdir()
    (tmp_path / 'gt').mkdir()
    stored = _jpeg_with_orientation(tmp_path / 'lq' / 'a.jpg', PHOTO, 6)
    _jpeg_with_orientation(tmp_path / 'gt' / 'a.jpg', PHOTO, 6)
    (tmp_path / 'test.txt').write_text('lq/a.jpg gt/a.jpg\n')
    dataset = PairListDataset({'name': 'exif', 'dataroot': str(tmp_path), 'meta_info_file': str(tmp_path / 'test.txt'),
                               'io_backend': {'type': 'disk'}, 'phase': 'val'})
    item = dataset[0]
    expected = np.rot90(stored[..., ::-1], -1).astype(np.float32) / 255  # RGB, turned clockwise
    for key in ('lq', 'gt'):
        assert item[key].shape == (3, 80, 48)
        np.testing.assert_allclose(item[key].permute(1, 2, 0).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize('ext', sorted(image_io.FORMATS))
def test_what_is_written_is_what_the_note_says(tmp_path, ext):
    """A 16-bit RGBA and an 8-bit grey source into every format: read back, the depth and channels are those the
    returned note names; 16 bits into an 8-bit format are scaled (not clipped: 40000/65535 -> 156, never 255)."""
    rng = np.random.default_rng(0)
    alpha = np.linspace(0, 65535, 80).round().astype(np.uint16)  # transparent on the left, opaque on the right
    # mid-range colours (20000 to 45500 of 65535): clipping to 8 bits would write 255 everywhere
    bgra16 = np.dstack([PHOTO[..., ::-1].astype(np.uint16) * 100 + 20000, np.broadcast_to(alpha, (48, 80))])
    cv2.imwrite(str(tmp_path / 'deep.png'), bgra16)
    grey = rng.integers(0, 256, (24, 40), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'grey.png'), grey)
    fmt = image_io.output_format(ext)
    for name, background in (('deep', (255, 255, 255) if not fmt.alpha else None), ('grey', None)):
        source = image_io.read_image(tmp_path / f'{name}.png')
        target = tmp_path / f'out_{name}{ext}'
        note = image_io.write_like(target, source.rgb, source, background)
        back = cv2.imread(str(target), cv2.IMREAD_UNCHANGED)
        bits = 8 * back.dtype.itemsize
        kind = {2: 'grayscale', 3: 'RGB', 4: 'RGBA'}[back.ndim if back.ndim == 2 else back.shape[2] + 0]
        assert f'written as {bits}-bit {kind}' in note, (ext, name, note, back.shape, back.dtype)
        lossy = ext in ('.jpg', '.jpeg')
        if name == 'deep':
            assert bits == (16 if fmt.deep else 8) and ('scaled from 16 to 8 bits' in note) == (not fmt.deep)
            colour = bgra16[..., :3].astype(np.float64) / 65535
            alpha = bgra16[..., 3:].astype(np.float64) / 65535
            if fmt.alpha:  # the alpha is kept, at the written depth
                expected_alpha = bgra16[..., 3] if fmt.deep else np.round(bgra16[..., 3] / 257)
                np.testing.assert_array_equal(back[..., 3], expected_alpha)
            else:  # composited onto white, as the note says
                colour = colour * alpha + (1 - alpha)
                assert 'alpha composited onto #ffffff' in note and note.startswith('warning:')
            expected = colour * (65535 if fmt.deep else 255)
            visible = alpha[..., 0] > 0  # webp drops the colour of fully transparent pixels
            assert np.abs(back[..., :3] - expected)[visible].mean() <= (2.5 if lossy else 0.5)
        else:
            assert bits == 8
            written = back if back.ndim == 2 else back[..., 0]
            assert np.abs(written.astype(float) - grey).mean() <= (8 if lossy else 0)  # noise: JPEG's worst case
            assert (kind == 'grayscale') == fmt.gray and ('has no grayscale' in note) == (not fmt.gray)


def test_alpha_into_a_format_without_alpha_needs_a_background(tmp_path):
    cv2.imwrite(str(tmp_path / 'a.png'), np.full((8, 8, 4), 200, np.uint8))
    source = image_io.read_image(tmp_path / 'a.png')
    with pytest.raises(ValueError, match='no alpha channel.*--background'):
        image_io.write_like(tmp_path / 'a.jpg', source.rgb, source)
    assert not (tmp_path / 'a.jpg').exists()
    assert image_io.has_alpha(tmp_path / 'a.png') and image_io.parse_background('#FF8000') == (255, 128, 0)
    with pytest.raises(ValueError, match='white, black or #rrggbb'):
        image_io.parse_background('red')


def test_a_truncated_jpeg_is_unreadable_and_libjpeg_stays_quiet(tmp_path, capfd):
    """cv2 returns a truncated JPEG grey-filled (and libjpeg prints on stderr, from C): refused, quietly."""
    Image.fromarray(PHOTO).save(tmp_path / 'whole.jpg', quality=95)
    (tmp_path / 'cut.jpg').write_bytes((tmp_path / 'whole.jpg').read_bytes()[:1500])
    assert cv2.imread(str(tmp_path / 'cut.jpg')) is not None  # what cv2 alone does
    capfd.readouterr()
    with pytest.raises(image_io.UnreadableImage) as err:
        image_io.read_image(tmp_path / 'cut.jpg')
    assert err.value.reason.startswith('truncated JPEG') and str(tmp_path / 'cut.jpg') not in err.value.reason
    assert 'Premature end' not in capfd.readouterr().err
    assert image_io.read_image(tmp_path / 'whole.jpg').note == ''


# ---- load_network_weights ----------------------------------------------------------------------------------------

NET_G = {'type': 'DiffLI2D', 'num_feat': 8, 'num_heads': [1, 2, 2, 4], 'h_channels': 64}


def _net(**changes) -> DiffLI2D:
    return DiffLI2D(**{k: v for k, v in {**NET_G, **changes}.items() if k != 'type'})


def test_a_checkpoint_of_other_options_names_the_options_that_differ(tmp_path):
    torch.manual_seed(0)
    saved = _net()
    prior = {'type': 'HSpaceExtractor', 'unet': 'adm_tiny', 'checkpoint': str(tmp_path / 'pretrained' / 'tiny.pt')}
    torch.save({'params': saved.state_dict(), 'config': {'network_g': NET_G, 'network_prior': prior}},
               tmp_path / 'net_g.pth')
    options = {'network_g': {**NET_G, 'num_feat': 16}, 'network_prior': {**prior, 'checkpoint': 'pretrained/tiny.pt'}}
    with pytest.raises(OptionError) as err:
        load_network_weights(_net(num_feat=16), tmp_path / 'net_g.pth', 'params', expected_config=options)
    message = format_user_error(err.value).splitlines()
    assert str(tmp_path / 'net_g.pth') in message[0] and len(message) <= 4, message
    # the one option that differs; the prior's checkpoint, relative here and absolute in the file, is the same
    assert [line for line in message if line.startswith('  checkpoint has')] == [
        '  checkpoint has network_g.num_feat: 8, options say 16']
    # without recorded options (a third-party or basicsr file): the first mismatching tensors and their count
    torch.save({'params': saved.state_dict()}, tmp_path / 'bare.pth')
    with pytest.raises(OptionError) as err:
        load_network_weights(_net(num_feat=16), tmp_path / 'bare.pth', 'params', expected_config=options)
    message = format_user_error(err.value).splitlines()
    expected_count = len(_net(num_feat=16).state_dict())  # every tensor of this net changes shape with num_feat
    shapes = sum(a.shape != b.shape for a, b in zip(saved.state_dict().values(), _net(num_feat=16).state_dict()
                                                    .values(), strict=True))
    assert str(tmp_path / 'bare.pth') in message[0] and f'{shapes} tensors do not match' in message[0]
    assert len(message) <= 4 and message[1].startswith('  shape mismatch: ') and expected_count >= shapes > 5


def test_weights_load_as_basicsr_loads_them(tmp_path):
    torch.manual_seed(0)
    saved = _net()
    torch.save({'params': {f'module.{k}': v for k, v in saved.state_dict().items()}}, tmp_path / 'net_g.pth')
    net = _net()
    load_network_weights(net, tmp_path / 'net_g.pth', 'params_ema')  # falls back to params, drops module.
    for (name, a), b in zip(saved.state_dict().items(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # strict=False: what fits is loaded, other shapes are left alone (basicsr's behaviour), not an error
    wider = _net(num_feat=16)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    load_network_weights(wider, tmp_path / 'net_g.pth', 'params', strict=False)
    same_shape = [k for k, v in saved.state_dict().items() if v.shape == before[k].shape]
    assert same_shape and all(torch.equal(wider.state_dict()[k], saved.state_dict()[k]) for k in same_shape)
    torch.save({'something': 1}, tmp_path / 'other.pth')
    with pytest.raises(OptionError, match='holds no network weights'):
        load_network_weights(net, tmp_path / 'other.pth', 'params')
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        load_network_weights(net, tmp_path / 'missing.pth', 'params')
    (tmp_path / 'text.pth').write_bytes(io.BytesIO(b'not a checkpoint').getvalue())
    with pytest.raises(OptionError, match='not a PyTorch checkpoint'):
        load_network_weights(net, tmp_path / 'text.pth', 'params')
