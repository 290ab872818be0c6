"""The local browser demo behind tools/demo_app.py: upload a photo (or pick a hazy example), restore it with a trained
model, compare input and result with a slider and download the result as PNG.

The logic is plain functions, testable without a browser: ``load_restorer`` (a checkpoint, option file or ONNX model,
loaded once per model file, device and tile size), ``make_examples`` (hazy versions of photos no demo model trained
on), ``restore_image`` (one request: every problem becomes a message for the page, never a traceback) and
``build_app``, the Gradio page wiring them together. Gradio is an optional extra, imported here only.
"""
import functools
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from difflid.data.bundled_photos import bundled_photo
from difflid.data.haze_synthesis import random_smooth_depth, synthesize_haze
from difflid.deploy.onnx_runner import OnnxRestorer
from difflid.image_io import UnreadableImage, read_image
from difflid.inference import Restorer
from difflid.utils.errors import format_user_error
from difflid.utils.paths import SHIPPED_ROOT

try:
    import gradio as gr
except ImportError as err:
    raise ImportError("the demo needs gradio: pip install -e '.[demo]'", name='gradio') from err

__all__ = ['DEFAULT_MAX_SIDE', 'DEFAULT_MODEL', 'DEFAULT_ROOT', 'EXAMPLE_PHOTOS', 'MODEL_ERRORS', 'MODEL_SUFFIXES',
           'available_devices', 'build_app', 'check_model_file', 'load_restorer', 'make_examples', 'restore_image',
           'tile_for']

# shipped in the package (package_data), so the demo runs from any directory with no download
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / 'weights' / 'dehaze_demo.safetensors'
# where difflid/ lies (the checkout, or site-packages): option files name the shipped weights as difflid/weights/...
DEFAULT_ROOT = SHIPPED_ROOT
DEFAULT_MAX_SIDE = 1024  # longer side, in pixels, above which an image is restored in tiles
AUTO_TILE = 512  # the tile size used then: a multiple of 32 (the prior's stride) that fits a CPU's memory
MODEL_SUFFIXES = ('.pth', '.safetensors', '.yml', '.yaml', '.onnx')
# among HELD_OUT_PHOTOS (no shipped or demo model trains on them): the examples show generalisation
EXAMPLE_PHOTOS = ('chelsea', 'china', 'flower', 'grace_hopper')
EXAMPLE_SEED = 0
EXAMPLE_BETA, EXAMPLE_AIRLIGHT = 1.2, 0.85  # a clearly visible, RESIDE-like haze
# what loading a model raises for a file that is missing, wrong or does not fit (the messages name the file)
MODEL_ERRORS = (OSError, ValueError, KeyError, ImportError, RuntimeError, yaml.YAMLError)
CACHED_MODELS = 4  # loaded models kept at once (a few (model, device, tile) choices; each holds its prior)

log = logging.getLogger(__name__)


def available_devices() -> list[str]:
    """The devices the page offers: the CPU, and CUDA when torch sees a GPU."""
    return ['cpu', 'cuda'] if torch.cuda.is_available() else ['cpu']


def check_model_file(model: str | Path) -> Path:
    """The model file as a Path, or an error naming it: missing, or not one of the kinds the demo loads."""
    if not str(model).strip():
        raise ValueError('no model given: enter a checkpoint (.pth, .safetensors), an option file (.yml) or an ONNX '
                         'model (.onnx)')
    path = Path(str(model).strip()).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'{path}: no such model file')
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise ValueError(f'{path}: not a model file the demo loads (expected {", ".join(MODEL_SUFFIXES)})')
    return path


@functools.lru_cache(maxsize=CACHED_MODELS)
def _load(path: Path, modified_ns: int, device: str, tile: int, root: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The cached load; ``modified_ns`` is in the key so that a model file replaced on disk is read again."""
    if path.suffix.lower() == '.onnx':
        return OnnxRestorer(path, device=device, tile=tile)
    return Restorer.from_file(path, root, tile=tile, device=device)


def load_restorer(model: str | Path, device: str = 'cpu', tile: int = 0,
                  root: str | Path | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The restorer of a checkpoint, option file (``Restorer.from_file``) or ONNX model (``OnnxRestorer``), loaded
    once per (model file, device, tile): each request of the page would otherwise rebuild the network and its prior.

    ``root`` is where a prior checkpoint or an option file's weights are also looked for, after the working
    directory (the repository; default ``DEFAULT_ROOT``). Errors (``MODEL_ERRORS``) name the file.
    """
    path = check_model_file(model).resolve()
    return _load(path, path.stat().st_mtime_ns, device, int(tile), Path(root or DEFAULT_ROOT).resolve())


def make_examples(folder: str | Path) -> list[Path]:
    """Write hazy example photos (PNG, synthetic haze with a fixed seed) into ``folder``, once, and return them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(EXAMPLE_SEED)
    paths = []
    for name in EXAMPLE_PHOTOS:
        clear = bundled_photo(name)
        depth = random_smooth_depth(*clear.shape[:2], rng)  # drawn even when the file exists: same seed, same order
        path = folder / f'{name}_hazy.png'
        if not path.is_file():
            hazy = synthesize_haze(clear.astype(np.float32) / 255, EXAMPLE_BETA, EXAMPLE_AIRLIGHT, depth)
            cv2.imwrite(str(path), (hazy * 255).round().astype(np.uint8))
        paths.append(path)
    return paths


def tile_for(height: int, width: int, tile: int, max_side: int) -> tuple[int, str]:
    """The tile size to restore with and a sentence about it: the asked one, or ``AUTO_TILE`` (at most ``max_side``)
    when the whole image was asked for but its longer side exceeds ``max_side``."""
    if tile:
        return tile, f'in tiles of {tile} px'
    if max(height, width) <= max_side:
        return 0, 'as a whole image'
    auto = max(64, min(AUTO_TILE, max_side // 32 * 32))
    return auto, (f'in tiles of {auto} px, automatically: the image is larger than {max_side} px on its longer side '
                  '(--max-side)')


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def _problem(what: str, err: BaseException | str) -> str:
    return f'**{what}:** {format_user_error(err).removeprefix("error: ")}'


def restore_image(image_path: str | Path | None, model: str | Path = DEFAULT_MODEL, tile: int = 0,
                  device: str = 'cpu', max_side: int = DEFAULT_MAX_SIDE, root: str | Path | None = None,
                  output_dir: str | Path | None = None) -> tuple[tuple[np.ndarray, np.ndarray] | None, str, str | None]:
    """One request of the page: ((input, restored) as (H, W, 3) uint8 RGB for the slider, a Markdown status, the
    path of the restored PNG to download), or (None, what went wrong, None) for a missing or unreadable image, a
    model that cannot be loaded, or a failed run. Grey and RGBA images are restored as RGB (the alpha is dropped)."""
    if not image_path:
        return None, 'Upload an image, or pick an example, then press **Restore**.', None
    image_path = Path(image_path)
    try:
        image = read_image(image_path)
    except (UnreadableImage, OSError) as err:
        return None, _problem(f'Cannot read {image_path.name}', getattr(err, 'reason', err)), None
    rgb = image.rgb
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        return None, f'**Cannot restore {image_path.name}:** expected 3 colour channels, got shape {rgb.shape}', None
    height, width = rgb.shape[:2]
    tile, how = tile_for(height, width, int(tile or 0), max_side)
    try:
        restorer = load_restorer(model, device, tile, root)
    except MODEL_ERRORS as err:
        return None, _problem(f'Cannot load the model {Path(str(model)).name or "(none)"}', err), None
    started = time.perf_counter()
    try:
        restored = restorer(rgb)
    except (RuntimeError, ValueError, MemoryError) as err:  # out of memory, a network that does not fit the image
        advice = ' (a smaller tile size needs less memory)' if tile else ' (tiles need less memory: set a tile size)'
        return None, _problem(f'Restoring {image_path.name} failed{advice}', err), None
    seconds = time.perf_counter() - started
    pair = (_to_uint8(rgb), _to_uint8(restored))
    output_dir = Path(output_dir or Path(tempfile.gettempdir()) / 'difflid-demo-results')
    output_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix='restored-', dir=output_dir))  # one per request: the name stays the input's
    png = folder / f'{image_path.stem}_restored.png'
    if not cv2.imwrite(str(png), cv2.cvtColor(pair[1], cv2.COLOR_RGB2BGR)):
        return pair, f'**Restored, but could not write {png}**', None
    lines = [f'Restored **{image_path.name}** ({width}×{height}) with {Path(str(model)).name} on {device}, {how}, '
             f'in {seconds:.1f} s.']
    if image.note:
        lines.append(f'Input: {image.note}; the result is 8-bit RGB.')
    return pair, '\n\n'.join(lines), str(png)


def build_app(model: str | Path = DEFAULT_MODEL, device: str = 'cpu', max_side: int = DEFAULT_MAX_SIDE,
              root: str | Path | None = None, examples_dir: str | Path | None = None,
              model_editable: bool = True) -> gr.Blocks:
    """The page. ``model_editable`` False fixes the model (a public ``--share`` link must not let visitors load any
    file of this machine); ``examples_dir`` None keeps the examples in the temporary folder, written at the first
    start only."""
    examples = make_examples(examples_dir or Path(tempfile.gettempdir()) / 'difflid-demo-examples')
    output_dir = Path(tempfile.gettempdir()) / 'difflid-demo-results'

    def run(image_path, model_file, tile, device_name):
        if not model_editable:  # what the page's API was sent is ignored too, not only the greyed-out textbox
            model_file = model
        try:
            return restore_image(image_path, model_file, tile, device_name, max_side, root, output_dir)
        except Exception as err:  # a bug: the traceback goes to the console, the page gets one line
            log.exception('restoring %s failed', image_path)
            return None, f'**Internal error** (the console has the traceback): {type(err).__name__}: {err}', None

    with gr.Blocks(title='DiffLI²D restoration demo') as app:
        gr.Markdown('# DiffLI²D: image restoration guided by a frozen diffusion prior\n'
                    'Upload a photo (or pick a hazy example below), then press **Restore**. Images larger than '
                    f'{max_side} px on their longer side are restored in tiles.')
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label='Image', file_types=['image'], type='filepath', elem_id='upload')
                model_box = gr.Textbox(value=str(model), label='Model: checkpoint (.pth, .safetensors), option file '
                                       '(.yml) or ONNX (.onnx)', interactive=model_editable, elem_id='model')
                tile = gr.Slider(0, 2048, value=0, step=32, label='Tile size in px (0 = whole image)',
                                 elem_id='tile')
                devices = available_devices()
                device_choice = gr.Radio(devices, value=device if device in devices else 'cpu', label='Device',
                                         elem_id='device')
                button = gr.Button('Restore', variant='primary', elem_id='restore')
                gr.Examples([[str(p)] for p in examples], inputs=[upload], label='Hazy examples (synthetic haze on '
                            'photos no demo model was trained on)', example_labels=[p.stem for p in examples])
            with gr.Column(scale=2):
                comparison = gr.ImageSlider(label='Input | restored', type='numpy', format='png', interactive=False,
                                            elem_id='comparison')
                status = gr.Markdown(elem_id='status')
                download = gr.File(label='Restored image (PNG)', interactive=False, elem_id='download')
        button.click(run, [upload, model_box, tile, device_choice], [comparison, status, download])
    return app
