"""The demo's shipped model (difflid/weights/dehaze_demo.safetensors): made by its committed option file
(options/dehaze_demo.yml), trained on photos other than the held-out ones, tested on the held-out ones with the
same haze it was trained on, and better there than the dark channel prior (the claim docs/demo.md makes)."""
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from difflid.data.bundled_photos import HELD_OUT_PHOTOS, bundled_photo
from difflid.inference import Restorer
from difflid.utils.checkpoint_io import read_checkpoint
from difflid.utils.option_schema import load_raw_options
from difflid.utils.paths import absolute_paths
from tests.conftest import REPO_ROOT

OPTIONS = REPO_ROOT / 'options'
SHIPPED = REPO_ROOT / 'difflid' / 'weights' / 'dehaze_demo.safetensors'


def test_the_shipped_model_is_the_network_its_option_file_trains():
    """The checkpoint's recorded options are those of options/dehaze_demo.yml, and its tensors load strictly into
    the network that the test file builds (a retrained file with other options, or a stale one, fails here)."""
    train = load_raw_options(OPTIONS / 'dehaze_demo.yml')
    config = read_checkpoint(SHIPPED)['config']
    assert config['network_g'] == train['network_g']
    assert config['network_prior'] == train['network_prior']
    restorer = Restorer.from_file(OPTIONS / 'test_dehaze_demo.yml', REPO_ROOT)
    assert sum(p.numel() for p in restorer.net.parameters()) == 1_122_723


def test_a_run_records_shipped_files_package_relative_and_others_absolute(tmp_path):
    """The shipped model records its prior as ``difflid/weights/...`` (found in any install), not as the absolute
    path of the checkout it was trained in; a run's own files stay absolute (found from any directory)."""
    recorded = absolute_paths({'checkpoint': 'difflid/weights/adm_tiny_bundled.pth', 'other_file': 'pretrained/a.pt'},
                              REPO_ROOT)
    assert recorded == {'checkpoint': 'difflid/weights/adm_tiny_bundled.pth',
                        'other_file': str(REPO_ROOT / 'pretrained' / 'a.pt')}
    elsewhere = absolute_paths({'checkpoint': 'difflid/weights/adm_tiny_bundled.pth'}, tmp_path)  # run elsewhere
    assert elsewhere == {'checkpoint': 'difflid/weights/adm_tiny_bundled.pth'}


def test_the_shipped_model_restores_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # neither the working directory nor the root holds difflid/weights/
    restorer = Restorer.from_file(SHIPPED, tmp_path)
    hazy = np.random.default_rng(0).uniform(0.3, 0.9, (40, 72, 3)).astype(np.float32)
    assert restorer(hazy).shape == hazy.shape


def test_the_test_sets_are_the_held_out_photos_with_the_training_haze():
    train = load_raw_options(OPTIONS / 'dehaze_demo.yml')['datasets']
    test = load_raw_options(OPTIONS / 'test_dehaze_demo.yml')['datasets']
    assert not set(train['train']['images']) & set(HELD_OUT_PHOTOS)
    assert set(train['val']['images']) <= set(HELD_OUT_PHOTOS)
    assert {name: block['images'] for name, block in test.items()} == {
        'test_reside': list(HELD_OUT_PHOTOS), 'test_wide': list(HELD_OUT_PHOTOS)}
    assert test['test_wide']['degradation'] == train['train']['degradation']
    assert test['test_reside']['degradation'] == {'type': 'HazeDegradation'}  # RESIDE's ranges: the defaults
    for other in ('test_dehaze_demo_dcp.yml', 'test_dehaze_demo_quickstart.yml'):  # every method, the same inputs
        assert load_raw_options(OPTIONS / other)['datasets'] == test


def _psnr_of_saved_images(folder) -> float:
    """Mean PSNR of the saved restored images against the clean held-out photos, by scikit-image (not basicsr)."""
    values = []
    for name in HELD_OUT_PHOTOS:
        restored = cv2.imread(str(next(folder.glob(f'{name}*.png'))))
        clean = bundled_photo(name)
        top, left = (clean.shape[0] - restored.shape[0]) // 2, (clean.shape[1] - restored.shape[1]) // 2
        clean = clean[top:top + restored.shape[0], left:left + restored.shape[1]]
        values.append(peak_signal_noise_ratio(clean, restored, data_range=255))
    return float(np.mean(values))


@pytest.mark.slow
def test_the_shipped_model_beats_dcp_on_held_out_haze(tmp_path):
    """docs/demo.md's commands: the shipped model and DCP on the held-out sets. The summary's cells are recomputed from
    the saved images with scikit-image, and the model's average PSNR is above DCP's."""
    for folder in ('tools', 'options'):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
    for opt_file in ('options/test_dehaze_demo.yml', 'options/test_dehaze_demo_dcp.yml'):
        proc = subprocess.run([sys.executable, 'tools/test.py', '-opt', opt_file], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summaries = {}
    for method in ('dehaze_demo', 'dehaze_demo_dcp'):
        summary = json.loads((tmp_path / 'results' / method / 'metrics_summary.json').read_text())
        summaries[method] = summary
        for label, set_name in (('RESIDE-like haze', 'reside_haze'), ('wide haze', 'wide_haze')):
            independent = _psnr_of_saved_images(tmp_path / 'results' / method / 'visualization' / set_name)
            assert summary['columns'][label]['psnr'] == pytest.approx(independent, abs=0.01)
    assert summaries['dehaze_demo']['average']['psnr'] > summaries['dehaze_demo_dcp']['average']['psnr']
    proc = subprocess.run([sys.executable, 'tools/compare_results.py', 'results/dehaze_demo',
                           'results/dehaze_demo_dcp'], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and '| dehaze_demo |' in proc.stdout, proc.stderr


@pytest.mark.slow
def test_the_option_file_makes_a_file_the_demo_loads(tmp_path):
    """docs/demo.md's recipe, shortened to 2 iterations: the run writes a safetensors checkpoint (the shipped file's
    format) whose records are the shipped file's, and the demo's loader restores an image with it."""
    for folder in ('tools', 'options'):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
    proc = subprocess.run([sys.executable, 'tools/train.py', '-opt', 'options/dehaze_demo.yml', '--force_yml',
                           'train:total_iter=2', 'val:val_freq=2', 'logger:save_checkpoint_freq=2',
                           "datasets:val:images=['chelsea']"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    made = tmp_path / 'experiments' / 'dehaze_demo' / 'models' / 'net_g_latest.safetensors'
    assert read_checkpoint(made)['config'] == read_checkpoint(SHIPPED)['config']
    restorer = Restorer.from_file(made, REPO_ROOT)
    hazy = np.random.default_rng(0).uniform(0.3, 0.9, (40, 72, 3)).astype(np.float32)
    assert restorer(hazy).shape == hazy.shape
