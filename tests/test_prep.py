import runpy
import sys

import pytest
import torch
from basicsr.data import build_dataset

from tests.conftest import REPO_ROOT
from tests.miniature_datasets import LAYOUTS, decode, degrade, signature_image, write


def prepare(monkeypatch, capsys, *args):
    """Run datasets_prep/prepare.py as a user would; return what it printed."""
    monkeypatch.setattr(sys, 'argv', ['prepare.py', *map(str, args)])
    runpy.run_path(str(REPO_ROOT / 'datasets_prep' / 'prepare.py'), run_name='__main__')
    return capsys.readouterr().out


def ident(tensor):
    """The signature id of a (3, H, W) dataset tensor."""
    return decode(tensor.permute(1, 2, 0).numpy())


def load(root, split, backend):
    opt = {'name': f'{root.name}_{split}', 'type': 'PairListDataset', 'dataroot': str(root), 'phase': 'test',
           'meta_info_file': str(root / f'{split}.txt'), 'io_backend': {'type': backend}}
    return build_dataset(opt)


@pytest.mark.parametrize('name', sorted(LAYOUTS))
def test_every_layout_pairs_each_lq_with_its_own_gt(tmp_path, monkeypatch, capsys, name):
    builder, expected, reported = LAYOUTS[name]
    src, dst = tmp_path / 'src', tmp_path / 'prepared'
    builder(src)
    out = prepare(monkeypatch, capsys, name, '--src', src, '--dst', dst, '--lmdb')
    for split, count in expected.items():
        assert f'{split}: {count} pairs' in out
        disk, lmdb = load(dst, split, 'disk'), load(dst, split, 'lmdb')
        assert len(disk) == len(lmdb) == count
        for i in range(count):
            a, b = disk[i], lmdb[i]
            assert ident(a['gt']) == ident(a['lq']) > 0, a['lq_path']
            assert torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt'])  # LMDB == folders
    for file_name in reported:
        assert any(line.strip().split('/')[-1].startswith(file_name) for line in out.splitlines()), (file_name, out)


def test_its_keeps_dotted_names_apart_and_shares_gt(tmp_path, monkeypatch, capsys):
    LAYOUTS['its'][0](tmp_path / 'src')
    out = prepare(monkeypatch, capsys, 'its', '--src', tmp_path / 'src', '--dst', tmp_path / 'ITS', '--lmdb')
    lines = (tmp_path / 'ITS' / 'train.txt').read_text().splitlines()
    assert 'lq/1_1_0.90179.png gt/1.png' in lines and 'lq/1_2_0.81234.png gt/1.png' in lines
    meta = (tmp_path / 'ITS' / 'lq.lmdb' / 'meta_info.txt').read_text()
    assert 'lq/1_1_0-90179.png' in meta and 'lq/1_2_0-81234.png' in meta  # dot-free keys
    assert len(list((tmp_path / 'ITS' / 'gt').iterdir())) == 3  # one GT file per clear image, not per hazy
    assert "duplicate GT name for key '4'" in out and 'no GT image' in out and 'unreadable' in out
    assert 'grayscale' in out and 'no LQ image for this GT' in out


def test_sots_gt_is_centre_cropped_and_counted(tmp_path, monkeypatch, capsys):
    LAYOUTS['sots-indoor'][0](tmp_path / 'src')
    out = prepare(monkeypatch, capsys, 'sots-indoor', '--src', tmp_path / 'src', '--dst', tmp_path / 'SOTS')
    assert '2 GT images centre-cropped' in out
    assert 'RGBA' in out and '16-bit' in out and 'differs from its GT' in out
    # centred, not top-left: the signature checks in the layout test would fail after a corner crop
    cropped = tmp_path / 'SOTS' / 'gt' / '1400.png'
    assert cropped.is_file() and not cropped.is_symlink()


def test_convert_keeps_unusual_images(tmp_path, monkeypatch, capsys):
    LAYOUTS['sots-indoor'][0](tmp_path / 'src')
    out = prepare(monkeypatch, capsys, 'sots-indoor', '--src', tmp_path / 'src', '--dst', tmp_path / 'SOTS',
                  '--convert')
    assert 'test: 8 pairs' in out and '2 images converted' in out
    dataset = load(tmp_path / 'SOTS', 'test', 'disk')
    assert all(ident(s['lq']) == ident(s['gt']) for s in dataset)


def test_nothing_is_written_half_way(tmp_path, monkeypatch, capsys):
    src, dst = tmp_path / 'src', tmp_path / 'LOL'
    LAYOUTS['lol-v1'][0](src)
    prepare(monkeypatch, capsys, 'lol-v1', '--src', src, '--dst', dst)
    before = (dst / 'train.txt').read_text()
    with pytest.raises(SystemExit, match='exists'):
        prepare(monkeypatch, capsys, 'lol-v1', '--src', src, '--dst', dst)
    (src / 'eval15' / 'high').rename(src / 'eval15' / 'gone')  # a broken source: the test split has no GT
    with pytest.raises(SystemExit, match='high'):
        prepare(monkeypatch, capsys, 'lol-v1', '--src', src, '--dst', dst, '--overwrite')
    assert (dst / 'train.txt').read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['LOL', 'src']  # no temporary folder left behind


def test_dataset_errors_name_the_file(tmp_path, monkeypatch, capsys):
    src, dst = tmp_path / 'src', tmp_path / 'rain'
    LAYOUTS['rain13k'][0](src)
    prepare(monkeypatch, capsys, 'rain13k', '--src', src, '--dst', dst, '--copy')
    (dst / 'lq' / '2.png').write_bytes(b'broken')
    dataset = load(dst, 'train', 'disk')
    with pytest.raises(OSError, match='2.png'):
        dataset[1]
    with pytest.raises(FileNotFoundError, match='--lmdb'):
        load(dst, 'train', 'lmdb')
    with pytest.raises(FileNotFoundError, match='test.txt'):
        load(dst, 'test', 'disk')


@pytest.mark.parametrize('name', ['dense-haze', 'nh-haze'])
def test_ntire_holds_out_46_to_50_for_validation(tmp_path, monkeypatch, capsys, name):
    src, dst = tmp_path / 'src', tmp_path / 'prepared'
    for number in (1, 45, 46, 50, 51, 55):
        write(src / f'{number:02d}_GT.png', signature_image(number % 20 + 1))
        write(src / f'{number:02d}_hazy.png', degrade(signature_image(number % 20 + 1)))
    out = prepare(monkeypatch, capsys, name, '--src', src, '--dst', dst, '--lmdb')
    assert 'train: 4 pairs, test: 2 pairs, train45: 2 pairs, val: 2 pairs' in out

    def numbers(split):
        return [line.split()[0] for line in (dst / f'{split}.txt').read_text().splitlines()]

    assert numbers('train') == ['lq/01_hazy.png', 'lq/45_hazy.png', 'lq/46_hazy.png', 'lq/50_hazy.png']
    assert numbers('train45') == ['lq/01_hazy.png', 'lq/45_hazy.png']  # what the option files train on
    assert numbers('val') == ['lq/46_hazy.png', 'lq/50_hazy.png']       # neither trained on nor tested on
    assert numbers('test') == ['lq/51_hazy.png', 'lq/55_hazy.png']
    assert len(list((dst / 'lq').iterdir())) == 6  # images listed in two splits are written once
    for backend in ('disk', 'lmdb'):
        assert [ident(s['lq']) for s in load(dst, 'val', backend)] == [7, 11]
