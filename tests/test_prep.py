import os
import re
import runpy
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from basicsr.data import build_dataset

from difflid.utils.options import resolve_option_file
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
    with pytest.raises(SystemExit, match='2'):
        prepare(monkeypatch, capsys, 'lol-v1', '--src', src, '--dst', dst)
    assert capsys.readouterr().err.startswith(f'error: {dst} exists')
    (src / 'eval15' / 'high').rename(src / 'eval15' / 'gone')  # a broken source: the test split has no GT
    with pytest.raises(SystemExit, match='2'):
        prepare(monkeypatch, capsys, 'lol-v1', '--src', src, '--dst', dst, '--overwrite')
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'high' in err.splitlines()[0]
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


def test_paired_maps_numbered_inputs_to_their_clean_image(tmp_path, monkeypatch, capsys):
    """The stated rule: input NAME_k pairs with target NAME, unless a target is named NAME_k itself."""
    src, dst = tmp_path / 'src', tmp_path / 'prepared'
    for name, number in (('0001', 1), ('0002', 2), ('0003', 3), ('0003_1', 4)):
        write(src / 'target' / f'{name}.png', signature_image(number))
    for name, number in (('0001_1', 1), ('0001_2', 1), ('0001_10', 1), ('0002', 2), ('0003_1', 4), ('0009_1', 9)):
        write(src / 'input' / f'{name}.png', degrade(signature_image(number), k=len(name)))
    out = prepare(monkeypatch, capsys, 'paired', '--src', src, '--dst', dst, '--split', 'train')
    assert 'train: 5 pairs' in out
    assert sorted((dst / 'train.txt').read_text().splitlines()) == [
        'lq/0001_1.png gt/0001.png', 'lq/0001_10.png gt/0001.png', 'lq/0001_2.png gt/0001.png',
        'lq/0002.png gt/0002.png', 'lq/0003_1.png gt/0003_1.png']
    assert "0009_1.png: no GT image for key '0009_1'" in out and '0003.png: no LQ image for this GT' in out
    assert all(ident(s['lq']) == ident(s['gt']) for s in load(dst, 'train', 'disk'))


def test_prepared_folders_get_the_mode_the_umask_gives(tmp_path, monkeypatch, capsys):
    """Not mkdtemp's 0700 (unreadable to the group that shares a dataset) whatever the umask: what mkdir gives."""
    src = tmp_path / 'src'
    LAYOUTS['lol-v1'][0](src)
    for umask in (0o027, 0o077):
        old = os.umask(umask)
        try:
            prepare(monkeypatch, capsys, 'lol-v1', '--src', src, '--dst', tmp_path / f'LOL{umask:o}')
        finally:
            os.umask(old)
        for folder in ('', 'lq', 'gt'):
            mode = stat.S_IMODE((tmp_path / f'LOL{umask:o}' / folder).stat().st_mode)
            assert mode == 0o777 & ~umask, (folder, oct(mode), oct(umask))


QUICK_CHECK = ('options/colour_cast_quick.yml', 'tools/train.py', 'tools/test.py')  # what docs/new_task.md runs


@pytest.mark.slow
def test_new_task_quick_check_from_the_docs(tmp_path, monkeypatch, capsys):
    """docs/new_task.md's quick check, followed literally on a generated task with several inputs per target: its
    prepare commands, its two option files and its commands (training shortened to 2 iterations)."""
    doc = (REPO_ROOT / 'docs' / 'new_task.md').read_text()
    for folder in ('tools', 'options'):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
    for root, first in (('my_colour_cast', 1), ('my_colour_cast_test', 7)):
        for number in range(first, first + 2):
            clean = signature_image(number, size=(72, 96))
            write(tmp_path / root / 'target' / f'{number:04d}.png', clean)
            for k in (1, 2):
                write(tmp_path / root / 'input' / f'{number:04d}_{k}.png', degrade(clean, k))
    monkeypatch.chdir(tmp_path)
    for command in re.findall(r'^python datasets_prep/prepare.py .*$', doc, re.MULTILINE):
        monkeypatch.setattr(sys, 'argv', command.split()[1:])
        runpy.run_path(str(REPO_ROOT / 'datasets_prep' / 'prepare.py'), run_name='__main__')
    assert 'train: 4 pairs' in capsys.readouterr().out  # 0001_1, 0001_2 -> 0001; 0002_1, 0002_2 -> 0002
    blocks = re.findall(r'```yaml\n(.*?)```', doc, re.DOTALL)
    (tmp_path / 'options' / 'colour_cast.yml').write_text(next(b for b in blocks if b.startswith('_base_:')))
    quick = next(b for b in blocks if b.startswith(f'# {QUICK_CHECK[0]}\n'))
    (tmp_path / QUICK_CHECK[0]).write_text(quick)
    commands = re.search(r'quick_check_from_the_docs -->\n```bash\n(.*?)```', doc, re.DOTALL).group(1).splitlines()
    assert [c.split()[:4] for c in commands] == [['python', tool, '-opt', QUICK_CHECK[0]] for tool in QUICK_CHECK[1:]]
    short = {'tools/train.py': ['--force_yml', 'train:total_iter=2', 'val:val_freq=2', 'logger:save_checkpoint_freq=2']}
    for command in commands:
        args = command.split()[1:]
        proc = subprocess.run([sys.executable, *args, *short.get(args[0], [])], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = next((tmp_path / 'experiments' / 'DiffLI2D_ColourCast_quick').glob('train_*.log')).read_text()
    assert 'adm_tiny_bundled.pth' in log and 'RANDOM' not in log  # the built-in trained prior, not a random one
    assert re.search(r'num_feat: 16\b', log)
    table = (tmp_path / 'results' / 'DiffLI2D_ColourCast_quick' / 'metrics_ColourCast_test.md').read_text()
    assert '| ColourCast_test | 4 |' in table


def test_new_task_delete_example_replaces_a_preset_name(tmp_path):
    """The page's `_delete_: true` example resolves (mmengine refuses a dict merged into a name without it)."""
    doc = (REPO_ROOT / 'docs' / 'new_task.md').read_text()
    example = next(b for b in re.findall(r'```yaml\n(.*?)```', doc, re.DOTALL) if '_delete_: true' in b)
    shutil.copytree(REPO_ROOT / 'options' / '_base_', tmp_path / '_base_')
    (tmp_path / 'mine.yml').write_text('_base_: _base_/difflid_paper.yml\n' + example)
    opt = yaml.safe_load(resolve_option_file(tmp_path / 'mine.yml').read_text())
    assert opt['network_prior']['unet'] == {'preset': 'adm256_uncond', 'noise_schedule': 'cosine'}
    assert opt['network_prior']['checkpoint'] == 'pretrained/my_cosine_prior.pth'
    assert opt['network_prior']['timesteps'] == [0, 500]  # the rest of the block is inherited
    (tmp_path / 'mine.yml').write_text('_base_: _base_/difflid_paper.yml\n' + example.replace('_delete_: true, ', ''))
    with pytest.raises(ValueError, match='_delete_'):
        resolve_option_file(tmp_path / 'mine.yml')


def test_exif_orientation_is_applied_before_pairing(tmp_path, monkeypatch, capsys):
    """A phone JPEG stored sideways with EXIF orientation 6 (turn 90° clockwise to view) pairs with its upright GT,
    and the prepared LQ is the upright image, as basicsr's readers (IMREAD_COLOR) would show it."""
    from PIL import Image

    src, dst = tmp_path / 'src', tmp_path / 'prepared'
    clean = signature_image(3, size=(48, 80))
    write(src / 'target' / 'a.png', clean)
    upright = degrade(clean)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # the sensor's rows: the upright image turned left
    (src / 'input').mkdir(parents=True)
    Image.fromarray(stored[..., ::-1]).save(src / 'input' / 'a.jpg', quality=100, subsampling=0, exif=exif)
    out = prepare(monkeypatch, capsys, 'paired', '--src', src, '--dst', dst, '--split', 'train', '--lmdb')
    assert 'train: 1 pairs' in out and 'a.jpg (EXIF orientation 6' in out
    for backend in ('disk', 'lmdb'):
        (sample,) = load(dst, 'train', backend)
        assert sample['lq'].shape == sample['gt'].shape == (3, 48, 80)
        lq = sample['lq'].permute(1, 2, 0).numpy()[..., ::-1] * 255  # BGR, as written
        assert np.abs(lq - upright).mean() < 3  # JPEG's loss only
