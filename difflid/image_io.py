"""Reading and writing users' images for inference: 8/16-bit, grey, RGB and RGBA, turned upright by their EXIF
orientation, and written as the output format can hold them, saying what was written.

numpy, cv2 and Pillow only (Pillow reads the EXIF orientation, which cv2 ignores when it keeps the alpha channel):
the onnxruntime runner (``difflid.deploy.onnx_runner``) loads this very file, without torch or basicsr."""
import io
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

__all__ = ['BACKGROUNDS', 'FORMATS', 'LoadedImage', 'OutputFormat', 'UnreadableImage', 'apply_exif_orientation',
           'exif_orientation', 'has_alpha', 'output_format', 'parse_background', 'read_image', 'write_like']

_ORIENTATION_TAG = 0x0112
# EXIF 2.32 / TIFF 6.0 orientation: how to turn the stored rows and columns upright (1 = already upright)
_ORIENTATIONS: dict[int, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    2: ('mirrored left-right', lambda a: a[:, ::-1]),
    3: ('rotated 180°', lambda a: a[::-1, ::-1]),
    4: ('mirrored top-bottom', lambda a: a[::-1]),
    5: ('transposed', lambda a: a.swapaxes(0, 1)),
    6: ('rotated 90° clockwise', lambda a: np.rot90(a, -1)),
    7: ('transposed across the other diagonal', lambda a: a[::-1, ::-1].swapaxes(0, 1)),
    8: ('rotated 90° counter-clockwise', lambda a: np.rot90(a, 1)),
}
_OPENCV_LOG_PREFIX = re.compile(r'^\[ ?\w+:[\d@.]+\] global \S+ ')  # '[ WARN:0@0.020] global grfmt_tiff.cpp:123 '
_TIFF_MAGIC = (b'II*\0', b'MM\0*', b'II+\0', b'MM\0+')  # little/big-endian TIFF and BigTIFF
# what libjpeg says (on stderr, from C) when a file ends early; cv2.imread then returns the image grey-filled,
# cv2.imdecode (used here) returns None, quietly, in OpenCV 5.1
_TRUNCATED = 'Premature end of JPEG file'
_TRUNCATED_REASON = 'truncated JPEG (the file ends before its end marker)'


class UnreadableImage(ValueError):
    """An input that cannot be restored; ``reason`` without the path, for listings that name the file already."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f'{path}: {reason}')
        self.path, self.reason = Path(path), reason


@dataclass
class LoadedImage:
    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1], upright
    alpha: np.ndarray | None  # (H, W) in the source's dtype, upright, re-attached (or composited) on writing
    dtype: np.dtype  # uint8 or uint16
    gray: bool
    note: str  # '' or what the file held and what reading did to it, for the summary


@dataclass(frozen=True)
class OutputFormat:
    """What cv2 writes for an extension (checked by reading the files back in tests/test_image_io.py)."""

    deep: bool  # 16 bits per channel (else 8)
    alpha: bool
    gray: bool  # one channel (else grey is written as RGB)


FORMATS = {
    '.png': OutputFormat(deep=True, alpha=True, gray=True),
    '.tif': OutputFormat(deep=True, alpha=True, gray=True),
    '.tiff': OutputFormat(deep=True, alpha=True, gray=True),
    '.jpg': OutputFormat(deep=False, alpha=False, gray=True),
    '.jpeg': OutputFormat(deep=False, alpha=False, gray=True),
    '.bmp': OutputFormat(deep=False, alpha=True, gray=True),
    '.webp': OutputFormat(deep=False, alpha=True, gray=False),
}
BACKGROUNDS = {'white': (255, 255, 255), 'black': (0, 0, 0)}


def output_format(path_or_ext: str | Path) -> OutputFormat:
    """The format a file name (or an extension such as 'jpg') is written in; ValueError for one cv2 is not trusted
    to write here."""
    text = str(path_or_ext)
    ext = (Path(text).suffix or '.' + text.lstrip('.')).lower()
    if ext not in FORMATS:
        raise ValueError(f'{path_or_ext}: cannot write {ext!r} images; use one of {", ".join(sorted(FORMATS))}')
    return FORMATS[ext]


def parse_background(spec: str) -> tuple[int, int, int]:
    """'white', 'black' or '#rrggbb' -> (r, g, b) in 0..255."""
    text = spec.strip().lower()
    if text in BACKGROUNDS:
        return BACKGROUNDS[text]
    digits = text.removeprefix('#')
    if len(digits) == 6 and all(c in '0123456789abcdef' for c in digits):
        return tuple(int(digits[i:i + 2], 16) for i in (0, 2, 4))
    raise ValueError(f'--background {spec!r}: expected white, black or #rrggbb (e.g. #808080)')


# --- reading -------------------------------------------------------------------------------------------------------

def exif_orientation(path_or_bytes: str | Path | bytes) -> int:
    """The EXIF orientation (1-8) of an image file or its bytes; 1 when it has none (or Pillow cannot open it)."""
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes | bytearray) else path_or_bytes
    try:
        with warnings.catch_warnings():  # only the header is read: a huge image is no decompression bomb here
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            with Image.open(source) as im:
                value = im.getexif().get(_ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return 1
    return value if value in _ORIENTATIONS else 1


def apply_exif_orientation(img: np.ndarray, path_or_bytes: str | Path | bytes) -> tuple[np.ndarray, str]:
    """``img`` (H, W[, C]) as cv2 decoded it from the file, turned upright by the file's EXIF orientation, and a note
    saying what was done ('' when the file has no orientation to apply).

    For pixels decoded with cv2's ``IMREAD_UNCHANGED`` (the only flag that keeps alpha and 16 bits as they are), which
    ignores the orientation that ``IMREAD_COLOR`` (basicsr's ``imfrombytes``) applies. A TIFF is returned as it is,
    with the note: OpenCV's TIFF decoder turns it itself, whatever the flag (OpenCV 5.1; tests/test_image_io.py)."""
    orientation = exif_orientation(path_or_bytes)
    if orientation not in _ORIENTATIONS:
        return img, ''
    if isinstance(path_or_bytes, bytes | bytearray):
        head = bytes(path_or_bytes[:4])
    else:
        with open(path_or_bytes, 'rb') as f:
            head = f.read(4)
    if head in _TIFF_MAGIC:
        return img, _orientation_note(orientation)
    return np.ascontiguousarray(_ORIENTATIONS[orientation][1](img)), _orientation_note(orientation)


def _orientation_note(orientation: int) -> str:
    return f'EXIF orientation {orientation}: {_ORIENTATIONS[orientation][0]} to stand upright'


@contextmanager
def _stderr_of_c_code() -> Iterator[list[str]]:
    """Collects what C libraries (libjpeg, libpng, OpenCV's log) write to file descriptor 2 meanwhile."""
    lines: list[str] = []
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a detached process): nothing to keep quiet
        yield lines
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines += [line.strip() for line in capture.read().decode(errors='replace').splitlines() if line.strip()]


def _decode(path: str | Path) -> tuple[bytes, np.ndarray, list[str]]:
    """(file bytes, pixels as stored, what the decoder printed); UnreadableImage for an unusable file."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise UnreadableImage(path, f'cannot be read ({err.strerror or err})') from err
    with _stderr_of_c_code() as printed:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if any(_TRUNCATED in line for line in printed):
        raise UnreadableImage(path, _TRUNCATED_REASON)
    if img is None:
        truncated = data.startswith(b'\xff\xd8\xff') and not data.rstrip(b'\0').endswith(b'\xff\xd9')
        raise UnreadableImage(path, _TRUNCATED_REASON if truncated else 'not a readable image')
    return data, img, printed


def has_alpha(path: str | Path) -> bool:
    """Whether the image has an alpha channel (False for an unreadable file: it is skipped later anyway)."""
    try:
        img = _decode(path)[1]
    except UnreadableImage:
        return False
    return img.ndim == 3 and img.shape[2] == 4


def read_image(path: str | Path) -> LoadedImage:
    """Read any 8/16-bit grey, BGR or BGRA image, upright; UnreadableImage (a ValueError) naming the file if it
    cannot be used. Decoder warnings other than a truncation are kept in the note."""
    data, img, printed = _decode(path)
    if img.dtype not in (np.uint8, np.uint16):
        raise UnreadableImage(path, f'{img.dtype} images are not supported (8- or 16-bit integers only)')
    if img.ndim == 3 and img.shape[2] not in (1, 3, 4):
        raise UnreadableImage(path, f'{img.shape[2]}-channel images are not supported')
    img, turned = apply_exif_orientation(img, data)
    notes, alpha, gray = [turned] if turned else [], None, False
    if img.ndim == 2 or img.shape[2] == 1:
        img, gray = cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2BGR), True
        notes.append('grayscale (restored as RGB)')
    elif img.shape[2] == 4:
        img, alpha = img[..., :3], np.ascontiguousarray(img[..., 3])
        notes.append('RGBA (alpha set aside, not restored)')
    if img.dtype == np.uint16:
        notes.append('16-bit')
    notes += [f'decoder said: {_OPENCV_LOG_PREFIX.sub("", line)}' for line in printed]
    scale = float(np.iinfo(img.dtype).max)
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / scale
    return LoadedImage(rgb, alpha, img.dtype, gray, '; '.join(notes))


# --- writing -------------------------------------------------------------------------------------------------------

def write_like(path: str | Path, rgb: np.ndarray, source: LoadedImage,
               background: tuple[int, int, int] | None = None) -> str:
    """Write restored (H, W, 3) RGB in [0, 1] with the source's depth, channels and alpha, as far as the format of
    ``path`` holds them, and say what was written (for the summary; lossy steps start with 'warning:').

    16-bit into an 8-bit format is scaled (65535 -> 255), never clipped. Alpha is re-attached; with ``background``
    (r, g, b), or never for a format without alpha, the restored colours are composited onto it instead: a source
    with alpha and no background for such a format is a ValueError, raised before anything is written.
    """
    fmt = output_format(path)
    ext = Path(path).suffix.lower()
    rgb = np.clip(np.asarray(rgb, dtype=np.float32), 0, 1)
    alpha = None if source.alpha is None else source.alpha.astype(np.float32) / np.iinfo(source.dtype).max
    losses = []
    if alpha is not None and (background is not None or not fmt.alpha):
        if background is None:
            raise ValueError(f'{path}: {ext} has no alpha channel; composite the image onto a colour with '
                             '--background white|black|#rrggbb, or write .png')
        colour = np.asarray(background, np.float32) / 255
        rgb = rgb * alpha[..., None] + colour * (1 - alpha[..., None])
        hex_colour = '#' + ''.join(f'{c:02x}' for c in background)
        losses.append(f'alpha composited onto {hex_colour}' + ('' if fmt.alpha else f' ({ext} has no alpha)'))
        alpha = None
    dtype = source.dtype if fmt.deep else np.dtype(np.uint8)
    if dtype != source.dtype:
        losses.append(f'scaled from {8 * source.dtype.itemsize} to 8 bits ({ext} holds 8)')
    top = np.iinfo(dtype).max
    out = cv2.cvtColor((rgb * top).round().astype(dtype), cv2.COLOR_RGB2BGR)
    kind = 'RGB'
    if source.gray and fmt.gray:
        out, kind = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY), 'grayscale'
    elif source.gray:
        losses.append(f'grayscale written as RGB ({ext} has no grayscale)')
    if alpha is not None:  # as it came when the depth is kept
        alpha = source.alpha if dtype == source.dtype else (alpha * top).round().astype(dtype)
        out, kind = np.dstack([out, alpha]), 'RGBA'
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), out):
        raise OSError(f'could not write {path}')
    written = f'written as {8 * dtype.itemsize}-bit {kind}'
    return f'warning: {written}: ' + ', '.join(losses) if losses else written
