"""Evaluation without ground truth: the unpaired dataset, NIQE and the optional pyiqa metrics in tools/test.py's
reports (issue 22, part 2)."""
import builtins
import importlib.util
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.metrics import calculate_niqe

from difflid.archs.difflid_arch import DiffLI2D
from difflid.data.bundled_photos import bundled_photo
from difflid.data.haze_synthesis import random_smooth_depth, synthesize_haze
from difflid.data.unpaired_image_dataset import UnpairedImageDataset
from difflid.metrics import no_reference
from difflid.reports import read_metric_csv
from difflid.utils.errors import OptionError
from difflid.utils.options import resolve_option_file
from tests.conftest import REPO_ROOT, nontrivial_weights

PHOTOS = ('astronaut', 'coffee', 'rocket')
NET_G = dict(type='DiffLI2D', num_feat=8, num_heads=[1, 2, 2, 4], h_channels=64)
PRIOR = dict(type='HSpaceExtractor', unet='adm_tiny', random_weights=True)


def _photo(name: str, size: int = 192) -> np.ndarray:
    """A natural photo, uint8 BGR, size x size (NIQE needs at least two 96x96 blocks)."""
    return cv2.resize(bundled_photo(name), (size, size), interpolation=cv2.INTER_AREA)


def _hazy(name: str) -> np.ndarray:
    clear = _photo(name).astype(np.float32) / 255
    depth = random_smooth_depth(*clear.shape[:2], np.random.default_rng(0))
    return (synthesize_haze(clear, 1.5, 0.9, depth) * 255).round().astype(np.uint8)


@pytest.mark.parametrize('name', PHOTOS)
def test_niqe_scores_a_sharp_photo_better_than_its_blurred_copy(name):
    """NIQE's known property (Mittal et al. 2013): blur moves an image away from the natural-scene model."""
    sharp = _photo(name, 288)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 3)
    opt = {'type': 'calculate_niqe', 'crop_border': 0, 'better': 'lower'}
    assert no_reference.score_no_reference(opt, sharp, 'niqe', name) + 1 < \
        no_reference.score_no_reference(opt, blurred, 'niqe', name)


def test_niqe_refuses_an_image_too_small_naming_it():
    with pytest.raises(OptionError, match=r'val.metrics.niqe: .*image tiny is 64x64'):
        no_reference.score_no_reference({'type': 'calculate_niqe', 'crop_border': 0}, _photo('coffee', 64), 'niqe',
                                        'tiny')


def test_unpaired_dataset_reads_a_folder_or_a_list(tmp_path):
    (tmp_path / 'lq' / 'sub').mkdir(parents=True)
    cv2.imwrite(str(tmp_path / 'lq' / 'b.png'), _photo('coffee', 32))
    cv2.imwrite(str(tmp_path / 'lq' / 'sub' / 'a.jpg'), _photo('rocket', 32))
    (tmp_path / 'lq' / 'notes.txt').write_text('not an image')
    opt = {'name': 'mine', 'dataroot': str(tmp_path / 'lq'), 'io_backend': {'type': 'disk'}, 'phase': 'test'}
    folder = UnpairedImageDataset(opt)
    assert [folder[i]['lq_path'] for i in range(len(folder))] == [str(tmp_path / 'lq' / 'b.png'),
                                                                  str(tmp_path / 'lq' / 'sub' / 'a.jpg')]
    item = folder[0]
    assert set(item) == {'lq', 'lq_path'} and item['lq'].shape == (3, 32, 32)
    expected = cv2.cvtColor(_photo('coffee', 32), cv2.COLOR_BGR2RGB).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(item['lq'].numpy(), expected, atol=1e-6)
    (tmp_path / 'test.txt').write_text('sub/a.jpg\n')
    listed = UnpairedImageDataset({**opt, 'meta_info_file': str(tmp_path / 'test.txt')})
    assert len(listed) == 1 and listed[0]['lq_path'].endswith('a.jpg')


def test_an_unreadable_image_is_one_error_naming_the_file(tmp_path):
    cv2.imwrite(str(tmp_path / 'good.png'), _photo('coffee', 32))
    (tmp_path / 'broken.png').write_bytes(b'\x89PNG cut short')
    data = UnpairedImageDataset({'name': 'mine', 'dataroot': str(tmp_path), 'io_backend': {'type': 'disk'},
                                 'phase': 'test'})
    with pytest.raises(OptionError, match=r'dataset mine: cannot read image .*broken\.png'):
        data[0]


def test_pyiqa_missing_is_one_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_pyiqa(name, *args, **kwargs):
        if name == 'pyiqa' or name.startswith('pyiqa.'):
            raise ImportError("No module named 'pyiqa'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_pyiqa)
    metrics = {'brisque': {'type': 'pyiqa_metric', 'metric': 'brisque', 'better': 'lower'}}
    with pytest.raises(OptionError, match=r"val.metrics.brisque: pyiqa_metric needs the pyiqa package.*difflid\[iqa\]"):
        no_reference.check_no_reference_metrics(metrics)
    with pytest.raises(OptionError, match='pyiqa_metric needs the pyiqa package'):
        no_reference.pyiqa_metric(_photo('coffee', 32), metric='brisque')


UNPAIRED_TEST = """
name: unpaired
model_type: DiffLI2DModel
scale: 1
num_gpu: 0
manual_seed: 0
datasets:
  test_1: {{name: real_haze, type: UnpairedImageDataset, dataroot: {root}, io_backend: {{type: disk}}}}
network_prior: {prior}
network_g: {net_g}
path: {{pretrain_network_g: {weights}, strict_load_g: true}}
val:
  save_img: true
  suffix: ~
  input_metrics: true
  num_sheets: 2
  metrics:
    niqe: {{type: calculate_niqe, crop_border: 0, better: lower}}
{extra}"""


def _run_test_tool(tmp_path, extra: str = ''):
    root = tmp_path / 'real_haze'
    root.mkdir(exist_ok=True)
    for name in PHOTOS:
        cv2.imwrite(str(root / f'{name}.png'), _hazy(name))
    option = tmp_path / 'unpaired.yml'
    torch.manual_seed(0)  # non-trivial weights: a new DiffLI2D is the identity, whose output is its input
    net = nontrivial_weights(DiffLI2D(**{k: v for k, v in NET_G.items() if k != 'type'}))
    torch.save({'params': net.state_dict(), 'config': {'network_g': NET_G, 'network_prior': PRIOR}},
               tmp_path / 'net_g.pth')
    option.write_text(UNPAIRED_TEST.format(root=root, extra=extra, weights=tmp_path / 'net_g.pth',
                                           prior=json.dumps(PRIOR), net_g=json.dumps(NET_G)))
    shutil.copytree(REPO_ROOT / 'tools', tmp_path / 'tools', dirs_exist_ok=True)  # results/ lands under tmp_path
    return subprocess.run([sys.executable, 'tools/test.py', '-opt', str(option)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_an_unpaired_set_through_tools_test_reports_niqe_of_restored_and_input(tmp_path):
    proc = _run_test_tool(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = tmp_path / 'results' / 'unpaired'
    rows = {r['image']: r for r in read_metric_csv(results / 'metrics_real_haze.csv')}
    assert sorted(rows) == sorted(PHOTOS) and set(rows['coffee']) == {'image', 'niqe', 'niqe_input'}
    for name, row in rows.items():  # basicsr's NIQE called directly on the saved restored image and on the input
        saved = cv2.imread(str(results / 'visualization' / 'real_haze' / f'{name}_unpaired.png'))
        assert row['niqe'] == pytest.approx(calculate_niqe(saved, crop_border=0), abs=1e-5)
        assert row['niqe_input'] == pytest.approx(calculate_niqe(_hazy(name), crop_border=0), abs=1e-5)
        assert np.abs(saved.astype(int) - _hazy(name)).mean() > 1  # restored and input differ: two scores, not one
    report = json.loads((results / 'metrics_real_haze.json').read_text())
    assert report['means']['niqe'] == pytest.approx(np.mean([r['niqe'] for r in rows.values()]), abs=1e-5)
    assert report['lower_better'] == ['niqe', 'niqe_input']
    assert '| real_haze | 3 |' in (results / 'metrics_real_haze.md').read_text()
    sheets = sorted((results / 'sheets' / 'real_haze').iterdir())
    assert len(sheets) == 2 and cv2.imread(str(sheets[0])).shape == (192, 2 * 192 + 4, 3)  # input | restored


@pytest.mark.slow
def test_full_reference_metrics_on_an_unpaired_set_are_refused_at_start_up(tmp_path):
    proc = _run_test_tool(tmp_path, '    psnr: {type: calculate_psnr, crop_border: 0}\n')
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and errors[0].startswith('error: val.metrics: psnr compare with ground truth, which '
                                                     'datasets.test_1 (UnpairedImageDataset) does not have')
    assert 'Traceback' not in proc.stderr and not (tmp_path / 'results' / 'unpaired' / 'visualization').exists()


def test_prepare_rtts_writes_an_unpaired_list_from_the_voc_layout(tmp_path):
    """A miniature of RTTS as unzipped (RTTS/JPEGImages + Annotations + ImageSets), with traps: a second file of
    the same stem, a grayscale image, a file that is no image, macOS debris and the annotations themselves."""
    images = tmp_path / 'src' / 'RTTS' / 'JPEGImages'
    images.mkdir(parents=True)
    (tmp_path / 'src' / 'RTTS' / 'Annotations').mkdir()
    (tmp_path / 'src' / 'RTTS' / 'Annotations' / 'AM_Bing_211.xml').write_text('<annotation/>')
    (tmp_path / 'src' / 'RTTS' / 'ImageSets' / 'Main').mkdir(parents=True)
    (tmp_path / 'src' / 'RTTS' / 'ImageSets' / 'Main' / 'test.txt').write_text('AM_Bing_211\n')
    cv2.imwrite(str(images / 'AM_Bing_211.png'), _hazy('coffee')[:40, :48])
    cv2.imwrite(str(images / 'BD_Baidu_074.jpg'), _hazy('rocket')[:40, :48])
    cv2.imwrite(str(images / 'BD_Baidu_074.png'), _hazy('astronaut')[:40, :48])  # same stem: one report row
    cv2.imwrite(str(images / 'gray.png'), _photo('coffee', 32)[..., 0])
    (images / 'broken.png').write_bytes(b'\x89PNG not really')
    (images / '._AM_Bing_211.png').write_bytes(b'\x00\x05\x16\x07')
    dst = tmp_path / 'datasets' / 'RTTS'
    proc = subprocess.run([sys.executable, str(REPO_ROOT / 'datasets_prep' / 'prepare.py'), 'rtts', '--src',
                           str(tmp_path / 'src'), '--dst', str(dst)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (dst / 'test.txt').read_text().splitlines() == ['lq/AM_Bing_211.png', 'lq/BD_Baidu_074.jpg']
    assert sorted(p.name for p in (dst / 'lq').iterdir()) == ['AM_Bing_211.png', 'BD_Baidu_074.jpg']
    assert not (dst / 'gt').exists()
    out = proc.stdout
    assert 'test: 2 images' in out and '3 files skipped' in out
    assert "BD_Baidu_074.png: duplicate name 'BD_Baidu_074'" in out and 'gray.png: grayscale' in out
    assert 'broken.png: unreadable image' in out
    data = UnpairedImageDataset({'name': 'RTTS', 'dataroot': str(dst), 'meta_info_file': str(dst / 'test.txt'),
                                 'io_backend': {'type': 'disk'}, 'phase': 'test'})
    original = cv2.cvtColor(cv2.imread(str(images / 'AM_Bing_211.png')), cv2.COLOR_BGR2RGB)
    np.testing.assert_allclose(data[0]['lq'].numpy(), original.transpose(2, 0, 1) / 255, atol=1e-6)


@pytest.mark.slow
def test_options_test_rtts_runs_on_a_prepared_miniature(tmp_path):
    """options/test_rtts.yml as shipped, on RTTS prepared by datasets_prep/prepare.py rtts, with the prior and
    network made tiny on the command line: the NIQE of restored and input in the reports, no full-reference column."""
    for folder in ('tools', 'options'):  # the tools read datasets/ and write results/ beside themselves
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
    images = tmp_path / 'RTTS_download' / 'JPEGImages'
    images.mkdir(parents=True)
    (tmp_path / 'RTTS_download' / 'Annotations').mkdir()
    for index, name in enumerate(PHOTOS[:2]):
        cv2.imwrite(str(images / f'NW_Google_{index}.png'), _hazy(name))
    prep = subprocess.run([sys.executable, str(REPO_ROOT / 'datasets_prep' / 'prepare.py'), 'rtts', '--src',
                           str(tmp_path / 'RTTS_download'), '--dst', 'datasets/RTTS'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert prep.returncode == 0, prep.stderr
    torch.manual_seed(0)
    opt = yaml.safe_load(resolve_option_file(REPO_ROOT / 'options' / 'test_rtts.yml').read_text())
    tiny_g = {**opt['network_g'], 'num_feat': 8, 'num_heads': [1, 2, 2, 4], 'h_channels': 64}
    net = nontrivial_weights(DiffLI2D(**{k: v for k, v in tiny_g.items() if k != 'type'}))
    torch.save({'params': net.state_dict()}, tmp_path / 'net_g.pth')
    force = ['name=rtts_tiny', 'network_prior:unet=adm_tiny', 'network_prior:checkpoint=~',
             'network_prior:random_weights=true', 'network_g:num_feat=8', 'network_g:num_heads=[1,2,2,4]',
             'network_g:h_channels=64', f'path:pretrain_network_g={tmp_path / "net_g.pth"}']
    proc = subprocess.run([sys.executable, 'tools/test.py', '-opt', 'options/test_rtts.yml', '--force_yml', *force],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = tmp_path / 'results' / 'rtts_tiny'
    rows = read_metric_csv(results / 'metrics_RTTS.csv')
    assert [r['image'] for r in rows] == ['NW_Google_0', 'NW_Google_1'] and set(rows[0]) == {'image', 'niqe',
                                                                                            'niqe_input'}
    for index, row in enumerate(rows):
        saved = cv2.imread(str(results / 'visualization' / 'RTTS' / f'NW_Google_{index}_rtts_tiny.png'))
        assert row['niqe'] == pytest.approx(calculate_niqe(saved, crop_border=0), abs=1e-5)
        assert row['niqe_input'] == pytest.approx(calculate_niqe(_hazy(PHOTOS[index]), crop_border=0), abs=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec('pyiqa') is not None, reason='pyiqa is installed: no missing-package path')
def test_a_pyiqa_metric_without_pyiqa_stops_tools_test_with_one_error(tmp_path):
    proc = _run_test_tool(tmp_path, '    brisque: {type: pyiqa_metric, metric: brisque, better: lower}\n')
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert errors == ["error: val.metrics.brisque: pyiqa_metric needs the pyiqa package, which is not installed; "
                      "install it with: pip install 'difflid[iqa]' (or pip install pyiqa), or use type: "
                      'calculate_niqe, which needs nothing more']
    assert 'Traceback' not in proc.stderr
