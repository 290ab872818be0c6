"""datasets_prep/prepare.py for the all-in-one protocols: clean-image sets, Rain100L, GoPro and PromptIR's data/.

Each layout is generated in miniature with its real names and its traps (missing partners, corrupt and grayscale
files, LR partners, blur_gamma); every GT carries a signature id (tests.miniature_datasets) and each LQ keeps its GT's,
so a prepared pair is right exactly when the two decoded ids agree, read back from the prepared files.
"""
import runpy
import sys

import cv2
import numpy as np
import pytest
from basicsr.data import build_dataset

from difflid.data.prep_promptir import prepare_promptir
from tests.conftest import REPO_ROOT
from tests.miniature_datasets import decode, degrade, signature_image, write

PREPARE = 'datasets_prep/prepare.py'
SIZE = (32, 32)  # DegradedImageDataset's whole-image validation crops to a multiple of 32


def image(ident, size=SIZE):
    return signature_image(ident, size=size)


def gray(ident):
    return cv2.cvtColor(image(ident), cv2.COLOR_BGR2GRAY)


def prepare(monkeypatch, capsys, *args):
    """Run datasets_prep/prepare.py in this process as a user would; return what it printed."""
    monkeypatch.setattr(sys, 'argv', ['prepare.py', *map(str, args)])
    runpy.run_path(str(REPO_ROOT / PREPARE), run_name='__main__')
    return capsys.readouterr().out


def listed(root, split):
    return (root / f'{split}.txt').read_text().splitlines()


def ids(root, rels):
    """Signature ids of prepared files (read through the links), in order."""
    return [decode(cv2.imread(str(root / rel))) for rel in rels]


def pair_ids(root, split):
    """[(LQ id, GT id)] of a prepared pair list."""
    return [tuple(ids(root, line.split())) for line in listed(root, split)]


def skipped(out):
    """{file name: reason} of the files a summary lists as skipped."""
    lines = [line.strip() for line in out.splitlines() if line.startswith('    ')]
    return {line.split(': ', 1)[0].rsplit('/', 1)[-1]: line.split(': ', 1)[1] for line in lines}


def test_bsd400_lists_colour_images_and_explains_grayscale(tmp_path, monkeypatch, capsys):
    src, dst = tmp_path / 'BSD400', tmp_path / 'denoise_train' / 'BSD400'
    write(src / '100080.jpg', image(1))
    write(src / 'more' / '101085.jpg', image(2))  # any depth
    write(src / 'test_001.png', gray(3))  # DnCNN's grayscale Train400
    (src / '12003.jpg').write_bytes(b'not a jpeg')
    out = prepare(monkeypatch, capsys, 'bsd400', '--src', src, '--dst', dst, '--lmdb')
    assert 'train: 2 images' in out and '2 files skipped' in out
    assert listed(dst, 'train') == ['gt/100080.jpg', 'gt/101085.jpg']
    assert ids(dst, listed(dst, 'train')) == [1, 2]
    reasons = skipped(out)
    assert reasons['12003.jpg'] == 'unreadable image'
    assert reasons['test_001.png'].startswith('grayscale image: ') and 'Train400' in reasons['test_001.png']
    # what the all-in-one options read: the folder (recursively) and the LMDB, keys from lmdb_key (basicsr adds .png)
    assert (dst / 'gt.lmdb' / 'meta_info.txt').read_text().split()[::3] == ['gt/100080.png', 'gt/101085.png']
    for root, backend in ((dst.parent, 'disk'), (dst / 'gt.lmdb', 'lmdb')):
        data = build_dataset({'name': 'n', 'type': 'DegradedImageDataset', 'phase': 'val', 'dataroot_gt': str(root),
                              'io_backend': {'type': backend}, 'degradation': {'type': 'GaussianNoise', 'sigma': 0}})
        assert sorted(decode(data[i]['gt'].permute(1, 2, 0).numpy()) for i in range(len(data))) == [1, 2]


def test_wed_reads_pristine_images_only(tmp_path, monkeypatch, capsys):
    src, dst = tmp_path / 'exploration_database_and_code', tmp_path / 'WED'
    write(src / 'pristine_images' / '00001.bmp', image(1))
    write(src / 'pristine_images' / '00002.bmp', image(2))
    write(src / 'distorted' / '00001_1.bmp', degrade(image(1)))  # not a clean image: never read
    out = prepare(monkeypatch, capsys, 'wed', '--src', src, '--dst', dst, '--copy')
    assert 'train: 2 images' in out and '0 files skipped' in out
    assert listed(dst, 'train') == ['gt/00001.bmp', 'gt/00002.bmp']
    assert not (dst / 'gt' / '00001.bmp').is_symlink() and ids(dst, listed(dst, 'train')) == [1, 2]


def test_cbsd68_skips_grayscale_bsd68_or_converts_it(tmp_path, monkeypatch, capsys):
    src = tmp_path / 'CBSD68'
    write(src / 'original_png' / '3096.png', image(4))
    write(src / 'original_png' / '12084.png', gray(5))
    write(src / 'noisy25' / '3096.png', degrade(image(9)))  # the repository's noisy copies are not clean images
    out = prepare(monkeypatch, capsys, 'cbsd68', '--src', src, '--dst', tmp_path / 'a')
    assert 'test: 1 images' in out and listed(tmp_path / 'a', 'test') == ['gt/3096.png']
    assert 'grayscale image: the colour protocol uses CBSD68' in skipped(out)['12084.png']
    out = prepare(monkeypatch, capsys, 'cbsd68', '--src', src, '--dst', tmp_path / 'b', '--convert')
    assert 'test: 2 images' in out and '1 images converted' in out
    converted = cv2.imread(str(tmp_path / 'b' / 'gt' / '12084.png'), cv2.IMREAD_UNCHANGED)
    assert converted.shape == (*SIZE, 3) and np.array_equal(converted[..., 0], gray(5))
    assert np.array_equal(converted[..., 0], converted[..., 1]) and np.array_equal(converted[..., 1], converted[..., 2])


def test_urban100_keeps_hr_images_and_ignores_lr_partners(tmp_path, monkeypatch, capsys):
    src, dst = tmp_path / 'Urban100', tmp_path / 'prepared'
    write(src / 'image_SRF_2' / 'img_001_SRF_2_HR.png', image(1, (32, 48)))
    write(src / 'image_SRF_2' / 'img_001_SRF_2_LR.png', degrade(image(7)))
    write(src / 'image_SRF_2' / 'img_001_SRF_2_bicubic.png', degrade(image(7)))
    write(src / 'image_SRF_4' / 'img_001_SRF_4_HR.png', image(1))  # the same image, cropped for x4: not kept
    write(src / 'image_SRF_4' / 'img_002_SRF_4_HR.png', image(2))
    write(src / 'image_SRF_4' / 'img_002_SRF_4_LR.png', degrade(image(7)))
    write(src / 'HR' / 'img003.png', image(3))  # EDSR's benchmark layout
    write(src / 'LR_bicubic' / 'X4' / 'img004.png', degrade(image(7)))  # an HR-like name in an LR folder
    out = prepare(monkeypatch, capsys, 'urban100', '--src', src, '--dst', dst)
    assert 'test: 3 images' in out and '0 files skipped' in out and '5 files ignored' in out
    assert listed(dst, 'test') == ['gt/img_001.png', 'gt/img_002.png', 'gt/img_003.png']
    assert ids(dst, listed(dst, 'test')) == [1, 2, 3]
    assert cv2.imread(str(dst / 'gt' / 'img_001.png')).shape == (32, 48, 3)  # from SRF 2, the least cropped


def test_rain100l_pairs_train_and_test(tmp_path, monkeypatch, capsys):
    src, dst = tmp_path / 'rain', tmp_path / 'Rain100L'
    for n in (1, 2, 10):  # RainTrainL: rain-<n>/norain-<n> in one folder, unpadded
        write(src / 'RainTrainL' / f'norain-{n}.png', image(n))
        write(src / 'RainTrainL' / f'rain-{n}.png', degrade(image(n)))
    write(src / 'RainTrainL' / 'rain-3.png', degrade(image(3)))  # no partner
    write(src / 'RainTrainL' / 'norain-4.png', image(4))  # no partner
    for n in (1, 2, 3):  # JORDER's test layout: rain/X2/norain-<nnn>x2.png with norain/norain-<nnn>.png
        write(src / 'Rain100L' / 'norain' / f'norain-{n:03d}.png', image(n + 10))
        write(src / 'Rain100L' / 'rain' / 'X2' / f'norain-{n:03d}x2.png', degrade(image(n + 10)))
    (src / 'Rain100L' / 'rain' / 'X2' / 'norain-003x2.png').write_bytes(b'corrupt')
    out = prepare(monkeypatch, capsys, 'rain100l', '--src', src, '--dst', dst)
    assert 'train: 3 pairs, test: 2 pairs' in out
    assert listed(dst, 'train') == ['lq/rain-1.png gt/norain-1.png', 'lq/rain-10.png gt/norain-10.png',
                                    'lq/rain-2.png gt/norain-2.png']
    assert pair_ids(dst, 'train') == [(1, 1), (10, 10), (2, 2)]
    assert pair_ids(dst, 'test') == [(11, 11), (12, 12)]
    reasons = skipped(out)
    assert reasons['rain-3.png'] == "no GT image for key '3'" and reasons['norain-4.png'] == 'no LQ image for this GT'
    assert reasons['norain-003x2.png'] == 'unreadable image'


def test_gopro_pairs_blur_with_sharp_by_sequence(tmp_path, monkeypatch, capsys):
    src, dst = tmp_path / 'GOPRO_Large', tmp_path / 'GoPro'
    frames = {('train', 'GOPR0372_07_00'): (1, 2), ('train', 'GOPR0374_11_00'): (3,), ('test', 'GOPR0384_11_00'): (4,)}
    for (split, seq), idents in frames.items():
        for frame, ident in enumerate(idents, 47):  # frame names repeat across sequences
            write(src / split / seq / 'sharp' / f'{frame:06d}.png', image(ident))
            write(src / split / seq / 'blur' / f'{frame:06d}.png', degrade(image(ident)))
            write(src / split / seq / 'blur_gamma' / f'{frame:06d}.png', degrade(image(9)))  # never used
    write(src / 'train' / 'GOPR0374_11_00' / 'blur' / '000099.png', degrade(image(5)))  # no sharp frame
    out = prepare(monkeypatch, capsys, 'gopro', '--src', tmp_path, '--dst', dst)  # the folder holding GOPRO_Large
    assert 'train: 3 pairs, test: 1 pairs' in out
    assert listed(dst, 'train') == ['lq/GOPR0372_07_00_000047.png gt/GOPR0372_07_00_000047.png',
                                    'lq/GOPR0372_07_00_000048.png gt/GOPR0372_07_00_000048.png',
                                    'lq/GOPR0374_11_00_000047.png gt/GOPR0374_11_00_000047.png']
    assert pair_ids(dst, 'train') == [(1, 1), (2, 2), (3, 3)] and pair_ids(dst, 'test') == [(4, 4)]
    assert skipped(out) == {'000099.png': "no GT image for key 'GOPR0374_11_00_000099'"}
    assert 'blur_gamma' not in out


def build_promptir(data, urban100=True):
    """PromptIR's data/ folder in miniature (names from its INSTALL.md and utils/dataset_utils.py)."""
    write(data / 'Train' / 'Denoise' / '100080.jpg', image(1))  # BSD400
    write(data / 'Train' / 'Denoise' / '00001.bmp', image(2))  # WED
    for n in (1, 2):
        write(data / 'Train' / 'Derain' / 'gt' / f'norain-{n}.png', image(n + 2))
        write(data / 'Train' / 'Derain' / 'rainy' / f'rain-{n}.png', degrade(image(n + 2)))
        write(data / 'test' / 'derain' / 'Rain100L' / 'target' / f'rain-{n:03d}.png', image(n + 5))
        write(data / 'test' / 'derain' / 'Rain100L' / 'input' / f'rain-{n:03d}.png', degrade(image(n + 5)))
    write(data / 'Train' / 'Dehaze' / 'original' / '0025.jpg', image(8))
    for part, beta in ((1, '0.04'), (2, '0.2')):
        write(data / 'Train' / 'Dehaze' / 'synthetic' / f'part{part}' / f'0025_0.8_{beta}.jpg', degrade(image(8)))
    write(data / 'test' / 'dehaze' / 'target' / '0001.png', image(9))
    write(data / 'test' / 'dehaze' / 'input' / '0001_0.8_0.2.jpg', degrade(image(9)))
    write(data / 'test' / 'denoise' / 'bsd68' / '3096.png', image(10))
    write(data / 'test' / 'denoise' / 'bsd68' / 'test001.png', gray(11))  # the grayscale BSD68
    if urban100:
        write(data / 'test' / 'denoise' / 'urban100' / 'img_001.png', image(12))


PROMPTIR_LISTS = {  # folder -> split -> (count, ids); pairs: LQ ids equal GT ids
    'denoise_train': {'train': [2, 1]},  # 00001.bmp, 100080.jpg
    'Rain100L': {'train': [3, 4], 'test': [6, 7]},
    'OTS': {'train': [8, 8]},
    'SOTS_outdoor': {'test': [9]},
    'CBSD68': {'test': [10]},
    'Urban100': {'test': [12]},
}


def test_promptir_end_to_end_through_the_cli(tmp_path, monkeypatch, capsys):
    data, dst = tmp_path / 'PromptIR' / 'data', tmp_path / 'datasets'
    build_promptir(data)
    out = prepare(monkeypatch, capsys, 'promptir', '--src', data, '--dst', dst)
    assert sorted(p.name for p in dst.iterdir()) == sorted(PROMPTIR_LISTS)  # no temporary folder left
    for name, splits in PROMPTIR_LISTS.items():
        assert f'prepared {dst / name}: ' in out
        assert sorted(p.name for p in (dst / name).glob('*.txt')) == sorted(f'{s}.txt' for s in splits)
        for split, expected in splits.items():
            lines = listed(dst / name, split)
            if name in ('denoise_train', 'CBSD68', 'Urban100'):
                assert ids(dst / name, lines) == expected, name
            else:
                assert pair_ids(dst / name, split) == [(i, i) for i in expected], name
    assert 'the colour protocol uses CBSD68' in skipped(out)['test001.png']

    # a second run refuses, naming the existing folders on its one error line, and writes nothing
    before = {p: p.read_text() for p in dst.rglob('*.txt')}
    with pytest.raises(SystemExit, match='2'):
        prepare(monkeypatch, capsys, 'promptir', '--src', data, '--dst', dst)
    err = capsys.readouterr().err
    assert err.startswith('error: ') and len(err.splitlines()) == 1
    assert str(dst / 'OTS') in err and str(dst / 'Urban100') in err and '--overwrite' in err
    assert {p: p.read_text() for p in dst.rglob('*.txt')} == before


def test_promptir_refuses_one_existing_folder_before_writing_any(tmp_path, capsys):
    data, dst = tmp_path / 'data', tmp_path / 'datasets'
    build_promptir(data, urban100=False)
    (dst / 'SOTS_outdoor').mkdir(parents=True)
    with pytest.raises(FileExistsError, match='SOTS_outdoor'):
        prepare_promptir(data, dst)
    assert [p.name for p in dst.iterdir()] == ['SOTS_outdoor']  # nothing else written
    reports = prepare_promptir(data, dst, overwrite=True)
    assert sorted(reports) == sorted(set(PROMPTIR_LISTS) - {'Urban100'})
    assert f'left out {dst / "Urban100"}: no test/denoise/urban100' in capsys.readouterr().out
    assert listed(dst / 'SOTS_outdoor', 'test') == ['lq/0001_0.8_0.2.jpg gt/0001.png']
