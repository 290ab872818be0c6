import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.metrics import calculate_psnr

from difflid.archs.dcp_arch import DCP, dehaze_dcp
from difflid.archs.difflid_arch import DiffLI2D
from difflid.data.bundled_photos import bundled_photo
from difflid.data.haze_synthesis import random_smooth_depth, synthesize_haze
from difflid.inference import Restorer
from difflid.losses import diffloss_loss
from difflid.models.base_restoration import RestorationModel
from difflid.priors.adm_unet_arch import ADMUNet, adm_flags
from difflid.reports import compare_results, read_metric_csv, write_metric_csv
from tests.conftest import REPO_ROOT, nontrivial_weights

NET_G = dict(type='DiffLI2D', num_feat=8, num_heads=[1, 2, 2, 4], h_channels=64)
PRIOR = dict(type='HSpaceExtractor', unet='adm_tiny', random_weights=True)


def _psnr(a, b):
    return 10 * np.log10(1 / np.mean((a.astype(np.float64) - b) ** 2))


def _hazy_photo(name='coffee', size=(192, 288)):
    clear = cv2.resize(bundled_photo(name), size[::-1], interpolation=cv2.INTER_AREA).astype(np.float32) / 255
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


def _write_reports(results_root, dataset_name, records, means, metrics):
    """Run the model's report writer on its own: a stand-in ``self`` carries the options it reads."""
    model = SimpleNamespace(opt={'path': {'results_root': str(results_root)}, 'val': {'metrics': metrics}})
    Path(results_root).mkdir(parents=True, exist_ok=True)
    RestorationModel._write_reports(model, dataset_name, records, means)


def test_compare_results_includes_set_level_metrics(tmp_path):
    # 'frechet' is scored once per set (FID), so it is in no per-image CSV; its name gives no hint that lower
    # is better, only its option does
    metrics = {'psnr': {'type': 'calculate_psnr', 'crop_border': 0},
               'frechet': {'type': 'calculate_fid', 'better': 'lower'}}
    for name, psnr, fid in (('A', [20.0, 30.0], 40.0), ('B', [22.0, 29.0], 35.5)):
        records = [{'image': 'x', 'psnr': psnr[0]}, {'image': 'y', 'psnr': psnr[1]}]
        _write_reports(tmp_path / name, 'LOL', records, {'psnr': float(np.mean(psnr)), 'frechet': fid}, metrics)
    table = compare_results([tmp_path / 'A', tmp_path / 'B'])
    assert '| method | images | psnr | frechet | psnr better than A |' in table
    assert '| A | 2 | 25.0000 | 40.0000 | - |' in table
    assert '| B | 2 | **25.5000** | **35.5000** | 1/2 |' in table
    # results written before the means file existed: the set-level value comes from the Markdown mean table
    for name in ('A', 'B'):
        (tmp_path / name / 'metrics_LOL.json').unlink()
    assert '| B | 2 | **25.5000** | 35.5000 | 1/2 |' in compare_results([tmp_path / 'A', tmp_path / 'B'])


def _trained_like_checkpoint(path):
    torch.manual_seed(0)  # non-trivial weights: a new DiffLI2D is the identity, on which the prior has no effect
    net = nontrivial_weights(DiffLI2D(**{k: v for k, v in NET_G.items() if k != 'type'}))
    torch.save({'params': net.state_dict(), 'config': {'network_g': NET_G, 'network_prior': PRIOR}}, path)


def test_tiled_inference_agrees_with_whole_images(tmp_path, monkeypatch):
    _trained_like_checkpoint(tmp_path / 'net.pth')
    whole = Restorer.from_file(tmp_path / 'net.pth', tmp_path)
    tiled = Restorer.from_file(tmp_path / 'net.pth', tmp_path, tile=192, tile_overlap=96)
    _, hazy = _hazy_photo(size=(256, 380))
    a, b = whole(hazy[..., ::-1]), tiled(hazy[..., ::-1])
    assert a.shape == b.shape == (256, 380, 3)
    # Not equal by design: a tile's prior features lack the rest of the image (the random prior's attention is
    # global) and HAE's channel gate pools over the tile. Measured with these non-trivial weights (output vs
    # input: 10.8 dB): tiles vs whole 27.7 dB; each tile noised as if it were the image's corner (the old
    # size-dependent noise): 24.7 dB.
    assert _psnr(a, b) > 26.5
    original = tiled.prior.forward
    monkeypatch.setattr(tiled.prior, 'forward', lambda x, fresh_noise=False, origin=(0, 0): original(x, fresh_noise))
    assert _psnr(a, tiled(hazy[..., ::-1])) < 26.5
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
    # writing into the input folder with the same names is refused before anything is written
    monkeypatch.setattr(sys, 'argv', ['infer.py', '-opt', str(tmp_path / 'net.pth'), '-i', str(inputs / 'odd.jpg'),
                                      '-o', str(inputs), '--ext', 'same'])
    with pytest.raises(SystemExit) as code:
        runpy.run_path(str(REPO_ROOT / 'tools' / 'infer.py'), run_name='__main__')
    assert code.value.code == 2 and 'would overwrite their input: odd.jpg' in capsys.readouterr().err
    assert (inputs / 'odd.jpg').read_bytes() == before['odd.jpg']


def test_infer_without_images_is_an_error_naming_what_it_looked_for(tmp_path, monkeypatch, capsys):
    _trained_like_checkpoint(tmp_path / 'net.pth')
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'notes.txt').write_text('not an image')
    for spec in (empty, empty / '*.png', empty / '*'):
        monkeypatch.setattr(sys, 'argv', ['infer.py', '-opt', str(tmp_path / 'net.pth'), '-i', str(spec),
                                          '-o', str(tmp_path / 'out')])
        with pytest.raises(SystemExit) as code:
            runpy.run_path(str(REPO_ROOT / 'tools' / 'infer.py'), run_name='__main__')
        message = capsys.readouterr().err
        assert code.value.code == 2 and str(spec) in message and '.png' in message and '.jpg' in message
    assert not (tmp_path / 'out').exists()


def test_tile_options_come_from_the_option_file_unless_given(tmp_path, monkeypatch, capsys):
    _trained_like_checkpoint(tmp_path / 'net.pth')
    option = tmp_path / 'test.yml'
    opt = {'name': 't', 'model_type': 'DiffLI2DModel', 'network_g': NET_G, 'network_prior': PRIOR,
           'path': {'pretrain_network_g': str(tmp_path / 'net.pth')}, 'val': {'tile': 128, 'tile_overlap': 64}}
    option.write_text(yaml.safe_dump(opt))
    restorer = Restorer.from_file(option, tmp_path)
    assert (restorer.tile, restorer.tile_overlap) == (128, 64)
    restorer = Restorer.from_file(option, tmp_path, tile_overlap=32)
    assert (restorer.tile, restorer.tile_overlap) == (128, 32)
    assert Restorer.from_file(option, tmp_path, tile=0).tile == 0
    # tools/infer.py passes only the flags given: the option file's (here invalid) tile reaches the Restorer
    option.write_text(yaml.safe_dump({**opt, 'val': {'tile': 100}}))
    cv2.imwrite(str(tmp_path / 'a.png'), np.zeros((40, 40, 3), np.uint8))
    for flags, expected in (([], 'val.tile'), (['--tile', '0'], None)):
        monkeypatch.setattr(sys, 'argv', ['infer.py', '-opt', str(option), '-i', str(tmp_path / 'a.png'),
                                          '-o', str(tmp_path / 'out'), *flags])
        with pytest.raises(SystemExit) as code:
            runpy.run_path(str(REPO_ROOT / 'tools' / 'infer.py'), run_name='__main__')
        if expected:
            message = capsys.readouterr().err
            assert code.value.code == 2 and 'multiple of 32' in message and str(option) in message
        else:
            assert code.value.code == 0 and 'restored 1 of 1' in capsys.readouterr().out


def _tiny_prior_checkpoint(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(ADMUNet(**adm_flags('adm_tiny')).state_dict(), path)


def test_infer_finds_the_prior_of_a_checkpoint_from_any_directory(tmp_path, monkeypatch):
    """A training run names its prior relative to its working directory; infer must work from elsewhere."""
    project = tmp_path / 'project'
    _tiny_prior_checkpoint(project / 'pretrained' / 'tiny.pt')
    models = project / 'experiments' / 'run' / 'models'
    models.mkdir(parents=True)
    prior = {'type': 'HSpaceExtractor', 'unet': 'adm_tiny', 'checkpoint': 'pretrained/tiny.pt'}
    opt = {'network_g': NET_G, 'network_prior': prior, 'path': {'models': str(models)}}
    model = SimpleNamespace(opt=opt, get_bare_model=lambda net: net)
    model.checkpoint_config = lambda: RestorationModel.checkpoint_config(model)
    torch.manual_seed(0)
    net = DiffLI2D(**{k: v for k, v in NET_G.items() if k != 'type'})
    monkeypatch.chdir(project)  # where tools/train.py ran
    RestorationModel.save_network(model, net, 'net_g', -1)
    assert opt['network_prior']['checkpoint'] == 'pretrained/tiny.pt'  # the run's own options are not changed
    saved = torch.load(models / 'net_g_latest.pth', weights_only=True)['config']['network_prior']
    assert saved['checkpoint'] == str(project / 'pretrained' / 'tiny.pt') and saved['unet'] == 'adm_tiny'

    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    image = np.random.default_rng(0).random((40, 52, 3), dtype=np.float32)
    reference = Restorer.from_file(models / 'net_g_latest.pth', elsewhere)(image)
    # a checkpoint saved with the working-directory-relative path (as before) is found from the project layout
    state = torch.load(models / 'net_g_latest.pth', weights_only=True)
    state['config'] = {'network_g': NET_G, 'network_prior': prior}
    torch.save(state, models / 'old.pth')
    np.testing.assert_array_equal(Restorer.from_file(models / 'old.pth', elsewhere)(image), reference)
    # the whole project moved: the saved absolute path is gone, the same file under the new root is used
    moved = tmp_path / 'moved'
    shutil.move(project, moved)
    np.testing.assert_array_equal(
        Restorer.from_file(moved / 'experiments' / 'run' / 'models' / 'net_g_latest.pth', elsewhere)(image), reference)
    # nowhere to be found: one error that lists every place it looked
    (moved / 'pretrained' / 'tiny.pt').unlink()
    for name in ('old.pth', 'net_g_latest.pth'):
        with pytest.raises(FileNotFoundError) as err:
            Restorer.from_file(moved / 'experiments' / 'run' / 'models' / name, elsewhere)
        message = str(err.value)
        assert 'Download 256x256_diffusion_uncond.pt' in message  # the prior's own advice comes first
        assert f'{name}: network_prior.checkpoint' in message and 'pretrained/tiny.pt' in message
        for place in (elsewhere, moved / 'experiments' / 'run', moved):
            assert (str(place / 'pretrained' / 'tiny.pt') if name == 'old.pth' else f'\n  {place}') in message


def test_diffloss_cites_its_accv_paper():
    title = 'DiffLoss: unleashing diffusion model as constraint for training image restoration network'
    readme = (REPO_ROOT / 'README.md').read_text(encoding='utf-8')
    for text in (readme, diffloss_loss.__doc__):
        assert title in text and 'ACCV 2024' in text and 'Plug-and-Play' not in text


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
    assert json.loads((results / 'metrics_hazy.json').read_text())['means']['psnr'] == pytest.approx(mean, abs=1e-5)
    assert f'| hazy | 3 | {mean:.4f} |' in table and 'Test metrics' in proc.stderr + proc.stdout + ''.join(
        p.read_text() for p in results.glob('*.log'))
    sheets = sorted(p.name for p in (results / 'sheets' / 'hazy').iterdir())
    assert len(sheets) == 2 and cv2.imread(str(results / 'sheets' / 'hazy' / sheets[0])).shape == (128, 3 * 160 + 8, 3)


@pytest.mark.slow
def test_a_1600x1200_image_goes_through_on_cpu_with_tiles(tmp_path):
    _trained_like_checkpoint(tmp_path / 'net.pth')
    big = cv2.resize(bundled_photo('astronaut'), (1600, 1200))
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
