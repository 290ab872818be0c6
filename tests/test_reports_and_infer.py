import runpy
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from basicsr.metrics import calculate_psnr

from difflid.archs.dcp_arch import DCP, dehaze_dcp
from difflid.archs.difflid_arch import DiffLI2D
from difflid.data.haze_synthesis import random_smooth_depth, synthesize_haze
from difflid.data.synthetic_haze_dataset import skimage_photo
from difflid.inference import Restorer
from difflid.reports import compare_results, read_metric_csv, write_metric_csv
from tests.conftest import REPO_ROOT

NET_G = dict(type='DiffLI2D', num_feat=8, num_heads=[1, 2, 2, 4], h_channels=64)
PRIOR = dict(type='HSpaceExtractor', unet='adm_tiny', random_weights=True)


def _psnr(a, b):
    return 10 * np.log10(1 / np.mean((a.astype(np.float64) - b) ** 2))


def _hazy_photo(name='coffee', size=(192, 288)):
    clear = cv2.resize(skimage_photo(name), size[::-1], interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    depth = random_smooth_depth(*size, np.random.default_rng(0))
    return clear, synthesize_haze(clear, 1.2, 0.9, depth)


def test_dcp_dehazes_a_synthetic_hazy_photo():
    clear, hazy = _hazy_photo()
    restored = dehaze_dcp(hazy)
    assert restored.shape == hazy.shape and restored.dtype == np.float32
    assert _psnr(restored, clear) > _psnr(hazy, clear) + 3
    net = DCP()
    assert not list(net.parameters())
    batch = torch.from_numpy(np.stack([hazy, hazy])).permute(0, 3, 1, 2)
    np.testing.assert_allclose(net(batch)[1].permute(1, 2, 0).numpy(), restored, atol=1e-6)


def test_dcp_restorer_from_a_test_option_file(tmp_path):
    option = tmp_path / 'dcp.yml'
    option.write_text('name: dcp\nmodel_type: ImageRestorationModel\nnetwork_g: {type: DCP}\n'
                      'path: {pretrain_network_g: ~}\n')
    restorer = Restorer.from_file(option, tmp_path)
    clear, hazy = _hazy_photo()
    restored = restorer(hazy[..., ::-1].copy())
    np.testing.assert_allclose(restored, dehaze_dcp(hazy[..., ::-1].copy()), atol=1e-5)


def test_compare_results_tables_two_methods(tmp_path):
    (tmp_path / 'A').mkdir()
    (tmp_path / 'B').mkdir()
    write_metric_csv(tmp_path / 'A' / 'metrics_SOTS.csv',
                     [{'image': 'x', 'psnr': 20.0, 'lpips': 0.2}, {'image': 'y', 'psnr': 30.0, 'lpips': 0.1}])
    write_metric_csv(tmp_path / 'B' / 'metrics_SOTS.csv',
                     [{'image': 'x', 'psnr': 22.0, 'lpips': 0.3}, {'image': 'y', 'psnr': 29.0, 'lpips': 0.05}])
    assert read_metric_csv(tmp_path / 'B' / 'metrics_SOTS.csv')[1] == {'image': 'y', 'psnr': 29.0, 'lpips': 0.05}
    table = compare_results([tmp_path / 'A', tmp_path / 'B'], ['DCP', 'ours'])
    assert '### SOTS' in table
    assert '| DCP | 2 | 25.0000 | **0.1500** |' in table  # lpips: lower is better
    assert '| ours | 2 | **25.5000** | 0.1750 | 1/2 |' in table
    with pytest.raises(FileNotFoundError, match='metrics_'):
        compare_results([tmp_path / 'A', tmp_path])


def _trained_like_checkpoint(path):
    torch.manual_seed(0)
    net = DiffLI2D(**{k: v for k, v in NET_G.items() if k != 'type'})
    torch.save({'params': net.state_dict(), 'config': {'network_g': NET_G, 'network_prior': PRIOR}}, path)


def test_tiled_inference_agrees_with_whole_images(tmp_path):
    _trained_like_checkpoint(tmp_path / 'net.pth')
    whole = Restorer.from_file(tmp_path / 'net.pth', tmp_path)
    tiled = Restorer.from_file(tmp_path / 'net.pth', tmp_path, tile=128, tile_overlap=64)
    _, hazy = _hazy_photo(size=(160, 230))
    a, b = whole(hazy[..., ::-1]), tiled(hazy[..., ::-1])
    assert a.shape == b.shape == (160, 230, 3)
    # Not equal by design: each tile gets its own prior features and HAE's channel gate pools over the tile,
    # not the image (measured: 31.9 dB on this photo with the identity-initialised network).
    assert _psnr(a, b) > 30
    with pytest.raises(ValueError, match='multiple of 32'):
        Restorer.from_file(tmp_path / 'net.pth', tmp_path, tile=100)
    with pytest.raises(ValueError, match='fp16 needs a GPU'):
        Restorer.from_file(tmp_path / 'net.pth', tmp_path, dtype='fp16')


def test_infer_handles_every_kind_of_input(tmp_path, monkeypatch, capsys):
    _trained_like_checkpoint(tmp_path / 'net.pth')
    inputs = tmp_path / 'in'
    inputs.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)
    cv2.imwrite(str(inputs / 'odd.jpg'), rgb)
    cv2.imwrite(str(inputs / 'gray.png'), rgb[..., 0])
    cv2.imwrite(str(inputs / 'alpha.png'), np.dstack([rgb, np.full((45, 70), 77, np.uint8)]))
    cv2.imwrite(str(inputs / 'deep.png'), rgb.astype(np.uint16) * 257)
    (inputs / 'broken.png').write_bytes(b'\x89PNG not really')
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    monkeypatch.setattr(sys, 'argv', ['infer.py', '-opt', str(tmp_path / 'net.pth'), '-i', str(inputs),
                                      '-o', str(tmp_path / 'out')])
    with pytest.raises(SystemExit) as code:
        runpy.run_path(str(REPO_ROOT / 'tools' / 'infer.py'), run_name='__main__')
    assert code.value.code == 0
    out = capsys.readouterr().out
    assert 'restored 4 of 5 images' in out and 'broken.png' in out and 'not a readable image' in out
    results = {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in (tmp_path / 'out').iterdir()}
    assert sorted(results) == ['alpha.png', 'deep.png', 'gray.png', 'odd.png']
    assert results['odd.png'].shape == (45, 70, 3) and results['gray.png'].shape == (45, 70)
    assert results['alpha.png'].shape == (45, 70, 4) and (results['alpha.png'][..., 3] == 77).all()
    assert results['deep.png'].dtype == np.uint16
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before
    # writing into the input folder with the same names is refused file by file, never overwriting
    monkeypatch.setattr(sys, 'argv', ['infer.py', '-opt', str(tmp_path / 'net.pth'), '-i', str(inputs / 'odd.jpg'),
                                      '-o', str(inputs), '--ext', 'same'])
    with pytest.raises(SystemExit) as code:
        runpy.run_path(str(REPO_ROOT / 'tools' / 'infer.py'), run_name='__main__')
    assert code.value.code == 1 and 'would overwrite the input' in capsys.readouterr().out
    assert (inputs / 'odd.jpg').read_bytes() == before['odd.jpg']


DCP_TEST = """
name: dcp_test
model_type: ImageRestorationModel
scale: 1
num_gpu: 0
datasets:
  test_1: {{name: hazy, type: PairedImageDataset, dataroot_gt: {root}/gt, dataroot_lq: {root}/lq,
           io_backend: {{type: disk}}}}
network_g: {{type: DCP}}
path: {{pretrain_network_g: ~, strict_load_g: true}}
val:
  save_img: true
  suffix: ~
  input_metrics: true
  num_sheets: 2
  metrics:
    psnr: {{type: calculate_psnr, crop_border: 0, test_y_channel: false}}
    ssim: {{type: calculate_ssim, crop_border: 0, test_y_channel: false}}
"""


@pytest.mark.slow
def test_dcp_through_tools_test_writes_reports_and_sheets(tmp_path):
    shutil.copytree(REPO_ROOT / 'tools', tmp_path / 'tools')
    for name in ('coffee', 'astronaut', 'rocket'):
        clear, hazy = _hazy_photo(name, (128, 160))
        for folder, img in (('gt', clear), ('lq', hazy)):
            (tmp_path / 'data' / folder).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(tmp_path / 'data' / folder / f'{name}.png'), (img * 255).round().astype(np.uint8))
    option = tmp_path / 'dcp_test.yml'
    option.write_text(DCP_TEST.format(root=tmp_path / 'data'))
    proc = subprocess.run([sys.executable, 'tools/test.py', '-opt', str(option)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = tmp_path / 'results' / 'dcp_test'
    rows = {r['image']: r for r in read_metric_csv(results / 'metrics_hazy.csv')}
    assert sorted(rows) == ['astronaut', 'coffee', 'rocket']
    for name, row in rows.items():  # recompute PSNR from the saved image, independently of the report
        saved = cv2.imread(str(results / 'visualization' / 'hazy' / f'{name}_dcp_test.png'))
        gt = cv2.imread(str(tmp_path / 'data' / 'gt' / f'{name}.png'))
        assert row['psnr'] == pytest.approx(_psnr(saved / 255, gt / 255), abs=1e-4)
        assert row['psnr'] == pytest.approx(calculate_psnr(saved, gt, crop_border=0), abs=1e-4)
        assert row['psnr'] > row['psnr_input']  # the classical baseline does dehaze
    table = (results / 'metrics_hazy.md').read_text()
    mean = np.mean([r['psnr'] for r in rows.values()])
    assert f'| hazy | 3 | {mean:.4f} |' in table and 'Test metrics' in proc.stderr + proc.stdout + ''.join(
        p.read_text() for p in results.glob('*.log'))
    sheets = sorted(p.name for p in (results / 'sheets' / 'hazy').iterdir())
    assert len(sheets) == 2 and cv2.imread(str(results / 'sheets' / 'hazy' / sheets[0])).shape == (128, 3 * 160 + 8, 3)


@pytest.mark.slow
def test_a_1600x1200_image_goes_through_on_cpu_with_tiles(tmp_path):
    _trained_like_checkpoint(tmp_path / 'net.pth')
    big = cv2.resize(skimage_photo('astronaut'), (1600, 1200))
    cv2.imwrite(str(tmp_path / 'big.png'), big)
    script = ('import resource, runpy, sys; sys.argv = sys.argv[1:]; '
              'code = 0\ntry: runpy.run_path(sys.argv[0], run_name="__main__")\n'
              'except SystemExit as e: code = e.code\n'
              'print("maxrss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)')
    proc = subprocess.run([sys.executable, '-c', script, str(REPO_ROOT / 'tools' / 'infer.py'), '-opt',
                           str(tmp_path / 'net.pth'), '-i', str(tmp_path / 'big.png'), '-o', str(tmp_path / 'out'),
                           '--tile', '256', '--device', 'cpu'], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cv2.imread(str(tmp_path / 'out' / 'big.png')).shape == (1200, 1600, 3)
    peak_gb = int(proc.stdout.split('maxrss_kb')[1].split()[0]) / 2**20
    assert peak_gb < 3, f'peak memory {peak_gb:.2f} GB'
