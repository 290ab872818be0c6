"""The browser demo (tools/demo_app.py, difflid/deploy/web_demo.py): the restore logic on the shipped demo model, its
messages for bad inputs and models, automatic tiling, and one run of the real page in headless Chromium (slow)."""
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import cv2
import numpy as np
import pytest

os.environ['GRADIO_ANALYTICS_ENABLED'] = 'False'  # before gradio is imported
pytest.importorskip('gradio', reason='the demo needs gradio: pip install -e ".[demo]"')

# isort: split
from difflid.data.bundled_photos import HELD_OUT_PHOTOS  # noqa: E402
from difflid.deploy import web_demo  # noqa: E402
from difflid.deploy.onnx_runner import OnnxRestorer  # noqa: E402
from tests.conftest import REPO_ROOT, free_port  # noqa: E402

TOOL = REPO_ROOT / 'tools/demo_app.py'
CHANGED = 2.0  # mean absolute difference (0-255) above which the output is not the input: the demo model gives ~40


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


@pytest.fixture(scope='module')
def examples(tmp_path_factory):
    return web_demo.make_examples(tmp_path_factory.mktemp('examples'))


@pytest.fixture
def small_hazy(examples, tmp_path):
    """A 96x128 crop of a hazy example: restored in a fraction of a second."""
    path = tmp_path / 'small_hazy.png'
    cv2.imwrite(str(path), cv2.imread(str(examples[0]))[:96, :128])
    return path


def test_the_examples_are_hazy_held_out_photos_and_written_once(examples):
    assert set(web_demo.EXAMPLE_PHOTOS) <= set(HELD_OUT_PHOTOS)  # the demo model never trained on them
    assert [p.name for p in examples] == [f'{n}_hazy.png' for n in web_demo.EXAMPLE_PHOTOS]
    first = [p.read_bytes() for p in examples]
    assert web_demo.make_examples(examples[0].parent) == examples  # a second start reuses them
    assert [p.read_bytes() for p in examples] == first
    assert all(cv2.imread(str(p)).mean() > 120 for p in examples)  # veiled: brighter than the photos


def test_an_example_is_restored_by_the_default_model_to_a_png_of_its_size(examples, tmp_path):
    assert web_demo.DEFAULT_MODEL.is_file()  # shipped in the package, found from any working directory
    pair, status, png = web_demo.restore_image(examples[0], output_dir=tmp_path)
    hazy = cv2.cvtColor(cv2.imread(str(examples[0])), cv2.COLOR_BGR2RGB)
    assert pair is not None, status
    assert np.array_equal(pair[0], hazy)
    assert pair[1].shape == hazy.shape and pair[1].dtype == np.uint8
    assert _difference(pair[1], hazy) > CHANGED
    assert 'Restored' in status and 'whole image' in status
    written = cv2.cvtColor(cv2.imread(str(png), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    assert png.endswith('chelsea_hazy_restored.png') and np.array_equal(written, pair[1])


def test_the_model_is_loaded_once_per_model_device_and_tile(small_hazy, tmp_path):
    first = web_demo.load_restorer(web_demo.DEFAULT_MODEL, 'cpu', 0)
    assert web_demo.load_restorer(str(web_demo.DEFAULT_MODEL), 'cpu', 0) is first
    tiled = web_demo.load_restorer(web_demo.DEFAULT_MODEL, 'cpu', 64)
    assert tiled is not first and tiled.tile == 64 and first.tile == 0
    before = web_demo._load.cache_info().misses
    for _ in range(2):
        assert web_demo.restore_image(small_hazy, output_dir=tmp_path)[0] is not None
    assert web_demo._load.cache_info().misses == before


def test_an_image_over_max_side_is_restored_in_tiles(small_hazy, tmp_path):
    wide = tmp_path / 'wide.png'  # 64x96: two tiles of 64 px
    cv2.imwrite(str(wide), cv2.imread(str(small_hazy))[:64, :96])
    pair, status, _ = web_demo.restore_image(wide, max_side=64, output_dir=tmp_path)
    assert pair is not None and pair[1].shape == (64, 96, 3), status
    assert 'tiles of 64 px' in status and 'larger than 64 px' in status
    assert web_demo.load_restorer(web_demo.DEFAULT_MODEL, 'cpu', 64).tile == 64  # the cached one that ran


def test_the_tile_size_is_chosen_by_the_longer_side():
    assert web_demo.tile_for(1024, 700, 0, 1024)[0] == 0  # at the limit: whole
    assert web_demo.tile_for(700, 1025, 0, 1024)[0] == web_demo.AUTO_TILE
    assert web_demo.tile_for(300, 400, 0, 200)[0] == 192  # at most max_side, a multiple of 32
    assert web_demo.tile_for(300, 400, 128, 1024) == (128, 'in tiles of 128 px')  # the user's choice is kept


@pytest.mark.parametrize('content', [b'', b'not an image at all', b'\x89PNG\r\n\x1a\n' + b'\0' * 40],
                         ids=['empty', 'text', 'truncated-png'])
def test_a_bad_file_gives_a_message_not_an_exception(content, tmp_path):
    bad = tmp_path / 'photo.png'
    bad.write_bytes(content)
    pair, status, png = web_demo.restore_image(bad, output_dir=tmp_path)
    assert (pair, png) == (None, None)
    assert status.startswith('**Cannot read photo.png:**')
    assert 'Upload an image' in web_demo.restore_image(None)[1]  # Restore pressed before any upload


@pytest.mark.parametrize('kind', ['grey', 'rgba', 'grey16'])
def test_grey_and_rgba_uploads_are_restored_as_rgb(kind, small_hazy, tmp_path):
    bgr = cv2.imread(str(small_hazy))
    image = {'grey': cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY),
             'grey16': cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257,
             'rgba': np.dstack([bgr, np.full(bgr.shape[:2], 128, np.uint8)])}[kind]
    path = tmp_path / f'{kind}.png'
    cv2.imwrite(str(path), image)
    pair, status, png = web_demo.restore_image(path, output_dir=tmp_path)
    assert pair is not None, status
    assert pair[0].shape == pair[1].shape == (96, 128, 3)
    assert cv2.imread(str(png), cv2.IMREAD_UNCHANGED).shape == (96, 128, 3)  # 8-bit RGB, no alpha
    assert _difference(pair[0], pair[1]) > CHANGED
    assert ('grayscale' if 'grey' in kind else 'alpha') in status


def test_a_missing_or_wrong_model_gives_a_message_naming_it(small_hazy, tmp_path):
    missing = tmp_path / 'no_such_model.pth'
    pair, status, png = web_demo.restore_image(small_hazy, missing, output_dir=tmp_path)
    assert (pair, png) == (None, None) and str(missing) in status and 'no such model file' in status
    garbage = tmp_path / 'garbage.safetensors'
    garbage.write_bytes(b'not a checkpoint')
    assert 'garbage.safetensors' in web_demo.restore_image(small_hazy, garbage, output_dir=tmp_path)[1]
    broken_yaml = tmp_path / 'broken.yml'
    broken_yaml.write_text('network_g: [unclosed\n')
    assert web_demo.restore_image(small_hazy, broken_yaml, output_dir=tmp_path)[0] is None
    assert 'not a model file' in web_demo.restore_image(small_hazy, small_hazy, output_dir=tmp_path)[1]
    bad_tile = web_demo.restore_image(small_hazy, tile=48, output_dir=tmp_path)[1]  # not a multiple of 32
    assert 'multiple of 32' in bad_tile


def test_an_option_file_is_accepted(small_hazy, tmp_path):
    """options/test_dehaze_demo.yml, the shipped model's test file (its weights, difflid/weights/..., found from any
    working directory): the default model's output."""
    pair, status, _ = web_demo.restore_image(small_hazy, REPO_ROOT / 'options/test_dehaze_demo.yml',
                                             output_dir=tmp_path)
    assert pair is not None, status
    default = web_demo.restore_image(small_hazy, output_dir=tmp_path)[0]
    assert np.array_equal(pair[1], default[1])  # the same network and weights


def _tiny_onnx(path, stride: int = 32) -> None:
    """A hand-made graph with the exported models' contract (``image``, ``origin`` -> ``restored``) and metadata:
    restored = 1 - image. Exporting a real model takes half a minute; tests/test_export.py does that."""
    onnx = pytest.importorskip('onnx')
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node('Sub', ['one', 'image'], ['restored'])], 'invert',
        [helper.make_tensor_value_info('image', TensorProto.FLOAT, ['batch', 3, 'height', 'width']),
         helper.make_tensor_value_info('origin', TensorProto.INT64, [2])],
        [helper.make_tensor_value_info('restored', TensorProto.FLOAT, ['batch', 3, 'height', 'width'])],
        [helper.make_tensor('one', TensorProto.FLOAT, [], [1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)])
    model.ir_version = 9
    helper.set_model_props(model, {'difflid.stride': str(stride)})
    onnx.save(model, path)


def test_an_onnx_model_is_accepted(small_hazy, tmp_path):
    pytest.importorskip('onnxruntime')
    model = tmp_path / 'invert.onnx'
    _tiny_onnx(model)
    pair, status, _ = web_demo.restore_image(small_hazy, model, max_side=96, output_dir=tmp_path)
    assert pair is not None, status
    assert np.abs(pair[1].astype(int) - (255 - pair[0].astype(int))).max() <= 1  # ran the graph, in tiles
    restorer = web_demo.load_restorer(model, 'cpu', 96)
    assert isinstance(restorer, OnnxRestorer) and restorer.tile == 96
    assert 'tiles of 96 px' in status


def test_a_fixed_model_ignores_the_model_sent_by_the_page(small_hazy, tmp_path):
    """With --share the model path must not come from visitors: the textbox is read-only, and the API ignores it."""
    def restore_button(app):
        return next(f.fn for f in app.fns.values() if f.name == 'run')

    other = tmp_path / 'elsewhere.pth'
    fixed = web_demo.build_app(model_editable=False, examples_dir=tmp_path / 'examples')
    assert 'Restored' in restore_button(fixed)(str(small_hazy), str(other), 0, 'cpu')[1]
    editable = web_demo.build_app(examples_dir=tmp_path / 'examples')
    assert str(other) in restore_button(editable)(str(small_hazy), str(other), 0, 'cpu')[1]


def _run_tool(*args, cwd):
    return subprocess.run([sys.executable, str(TOOL), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_the_tool_prints_its_help_and_refuses_a_missing_model_in_one_line(tmp_path):
    shown = _run_tool('--help', cwd=tmp_path)
    assert shown.returncode == 0 and '-opt' in shown.stdout and '--max-side' in shown.stdout
    refused = _run_tool('-opt', 'no_such_model.pth', cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip() == 'error: -opt no_such_model.pth: no such file'
    assert refused.stdout == ''


# ---- the page in a browser ----------------------------------------------------------------------------------------

def _chromium_driver():
    """Headless Chromium from Debian's packages (tools/install_env.sh --dev installs them), or a skip saying why."""
    webdriver = pytest.importorskip('selenium.webdriver', reason='the browser test needs selenium')
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which('chromium') or shutil.which('chromium-browser')
    driver = shutil.which('chromedriver')
    if not browser or not driver:
        pytest.skip('the browser test needs chromium and chromedriver (apt-get install chromium chromium-driver)')
    options = Options()
    for flag in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                 '--window-size=1280,1000'):
        options.add_argument(flag)
    options.binary_location = browser
    return webdriver.Chrome(service=Service(driver), options=options)


def _fetch_image(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as response:
        data = np.frombuffer(response.read(), np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    assert image is not None, f'{url} is not an image'
    return image


def _serving(process: subprocess.Popen, port: int, timeout: float) -> bool:
    """Whether the tool answers on ``port`` within ``timeout`` seconds (False once it has exited)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and process.poll() is None:
        try:
            with urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=5):
                return True
        except OSError:
            time.sleep(0.5)
    return False


@pytest.mark.slow
def test_the_page_restores_an_uploaded_image_in_a_browser(small_hazy, tmp_path):
    """python tools/demo_app.py (the default model, run from another directory), then in headless Chromium: upload
    through the page's file input, press Restore, fetch what the page shows and offers to download."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _chromium_driver()
    port = free_port()
    log = (tmp_path / 'demo_app.log').open('w')
    started = time.perf_counter()
    app = subprocess.Popen([sys.executable, str(TOOL), '--port', str(port), '--device', 'cpu'], cwd=tmp_path,
                           stdout=log, stderr=subprocess.STDOUT, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    try:
        assert _serving(app, port, 120), (tmp_path / 'demo_app.log').read_text()
        serving = time.perf_counter()
        driver.get(f'http://127.0.0.1:{port}/')
        wait = WebDriverWait(driver, 120)
        upload = wait.until(expected_conditions.presence_of_element_located(
            (By.CSS_SELECTOR, '#upload input[type=file]')))
        upload.send_keys(str(small_hazy))
        wait.until(expected_conditions.text_to_be_present_in_element((By.ID, 'upload'), small_hazy.stem))  # uploaded
        driver.find_element(By.CSS_SELECTOR, '#restore').click()
        link = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, '#download a[href]')))
        restored = _fetch_image(link.get_attribute('href'))
        hazy = cv2.imread(str(small_hazy))
        assert restored.shape == hazy.shape
        assert _difference(restored, hazy) > CHANGED
        assert 'Restored' in driver.find_element(By.ID, 'status').text
        shown = [_fetch_image(img.get_attribute('src'))
                 for img in driver.find_elements(By.CSS_SELECTOR, '#comparison img')]
        assert sorted(_difference(img, hazy) < 1 for img in shown) == [False, True]  # input and result, side by side
        screenshot = tmp_path / 'page.png'
        driver.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 0
        print(f'the tool served after {serving - started:.1f} s; the page restored the upload in '
              f'{time.perf_counter() - serving:.1f} s')
    finally:
        driver.quit()
        app.terminate()
        try:
            app.wait(timeout=20)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait()
        log.close()
