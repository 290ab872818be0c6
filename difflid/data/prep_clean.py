"""Clean-image sets of the all-in-one protocols (BSD400, WED, CBSD68, Urban100): no LQ is stored, since
``DegradedImageDataset`` degrades them on the fly, so preparing one only checks, names and lists its images.

A prepared clean set is one folder:

    <dst>/gt/<name>.<ext>     the images (links to the originals, or copies; converted images are written as PNG)
    <dst>/<split>.txt         one ``gt/<name>.<ext>`` per line
    <dst>/gt.lmdb             with --lmdb: the same images in a basicsr LMDB (keys: ``lmdb_key``)

Checks as for paired sets (``difflid.data.prep``): unreadable, RGBA and 16-bit files are reported and skipped (or
converted with ``convert``); a grayscale image is skipped with the reason the protocol needs colour (its colour test
set is CBSD68, not the grayscale BSD68), or made 3 equal channels with ``convert``. Built atomically, as paired sets.

Layouts, as checked (search of public repositories and pages, 2026):

- BSD400: the 400 colour BSDS photos (``100080.jpg``, ...) that PromptIR's INSTALL.md links and AirNet trains on; any
  folder depth. DnCNN's ``Train400`` (``test_001.png``...) is grayscale: skipped with that reason.
- WED (Waterloo Exploration Database, Ma et al.): ``exploration_database_and_code/pristine_images/00001.bmp`` ...
  ``04744.bmp``; ``--src`` the unzipped folder or its ``pristine_images/``.
- CBSD68: DnCNN's ``testsets/CBSD68/*.png``, PromptIR's ``test/denoise/bsd68``; the CBSD68-dataset repository's
  ``original_png/`` (its ``noisy<σ>/`` folders are not clean images and are ignored).
- Urban100 (Huang et al., SelfExSR): ``image_SRF_<s>/img_001_SRF_<s>_HR.png`` beside LR images and other methods'
  results (``_LR``, ``_bicubic``, ...; ignored, as are repeats of an image in another SRF folder: the lowest SRF is
  kept); EDSR's benchmark ``HR/img001.png`` (``LR_bicubic/`` ignored); PromptIR's ``test/denoise/urban100/img_001.png``.
  Prepared as ``img_001.png``.
"""
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from difflid.data.prep import PrepReport, _find_dir, _load, atomic_folder, list_images, place_image, write_lmdbs

__all__ = ['CLEAN_SETS', 'CleanSource', 'prepare_clean']

COLOUR = 'the colour protocol needs 3 channels'


@dataclass
class CleanSource:
    """One split of a clean-image set: (file, prepared name) pairs, and the files the set holds but does not use."""

    images: list[tuple[Path, str]]
    ignored: list[str] = field(default_factory=list)
    grayscale_hint: str = COLOUR  # why a grayscale image is skipped


def prepare_clean(
    splits: dict[str, CleanSource],
    dst: str | Path,
    lmdb: bool = False,
    copy: bool = False,
    convert: bool = False,
    overwrite: bool = False,
) -> PrepReport:
    """Check, name and write a clean-image set (see the module docstring); ``report.pairs`` counts images."""
    dst = Path(dst)
    report = PrepReport(unit='images')
    with atomic_folder(dst, overwrite) as tmp:
        taken: set[str] = set()
        written: dict[Path, str] = {}  # a file listed in several splits is written once
        first: dict[str, Path] = {}  # prepared name without extension -> the file that has it
        for split, source in splits.items():
            report.ignored += source.ignored
            lines = []
            for path, name in source.images:
                if path not in written:
                    stem = Path(name).stem
                    if stem in first:
                        report.skipped.append((str(path), f'duplicate name {stem!r} (also {first[stem]})'))
                        continue
                    first[stem] = path
                    img, changed = _load(path, convert, report, source.grayscale_hint)
                    if img is None:
                        continue
                    written[path] = place_image(tmp, 'gt', path, img if changed else None, name, copy, taken)
                lines.append(written[path])
            if not lines:
                raise ValueError(f'no usable images for split {split!r} in {dst}:\n' + report.summary(dst))
            (tmp / f'{split}.txt').write_text('\n'.join(lines) + '\n', encoding='utf-8')
            report.pairs[split] = len(lines)
        if lmdb:
            write_lmdbs(tmp, ('gt',))
    return report


def _named(paths: list[Path], hint: str = COLOUR) -> CleanSource:
    return CleanSource([(path, path.name) for path in paths], grayscale_hint=hint)


def _subfolder(root: Path, *names: str) -> Path:
    """``root``'s sub-folder of one of ``names`` if it has one, else ``root``."""
    try:
        return _find_dir(root, *names)
    except FileNotFoundError:
        return root


def bsd400(root: Path) -> CleanSource:
    return _named(list_images(root, recursive=True),
                  "the colour protocol trains on the colour BSD400 (BSDS photos), not DnCNN's grayscale Train400")


def wed(root: Path) -> CleanSource:
    return _named(list_images(_subfolder(root, 'pristine_images'), recursive=True))


def denoise_train(root: Path) -> CleanSource:
    """PromptIR's ``Train/Denoise``: BSD400 and WED together, flat or in sub-folders."""
    return _named(list_images(root, recursive=True), COLOUR + ' (BSD400 and WED both have colour versions)')


def cbsd68(root: Path) -> CleanSource:
    return _named(list_images(_subfolder(root, 'original_png', 'original')),
                  'the colour protocol uses CBSD68, not the grayscale BSD68')


_URBAN_HR = re.compile(r'img_?(\d+)(?:_SRF_(\d+))?(?:_HR)?', re.IGNORECASE)


def urban100(root: Path) -> CleanSource:
    """Urban100's HR images by name (see the module docstring); LR images and repeats are ignored."""
    candidates: dict[int, list[tuple[int, Path]]] = {}
    ignored = []
    for path in list_images(root, recursive=True):
        folders = [part.lower() for part in path.relative_to(root).parts[:-1]]
        m = _URBAN_HR.fullmatch(path.stem)
        if m is None or any(part.startswith('lr') or re.fullmatch(r'x\d+', part) for part in folders):
            ignored.append(str(path.relative_to(root)))
        else:
            candidates.setdefault(int(m.group(1)), []).append((int(m.group(2) or 0), path))
    images = []
    for number, found in sorted(candidates.items()):
        found.sort()
        images.append((found[0][1], f'img_{number:03d}{found[0][1].suffix.lower()}'))
        ignored += [str(path.relative_to(root)) for _, path in found[1:]]
    return CleanSource(images, ignored)


# name -> (layout reader, default split, what --src is)
CLEAN_SETS: dict[str, tuple[Callable[[Path], CleanSource], str, str]] = {
    'bsd400': (bsd400, 'train', 'BSD400 colour images (any depth)'),
    'wed': (wed, 'train', 'Waterloo Exploration Database folder (or its pristine_images/)'),
    'cbsd68': (cbsd68, 'test', 'CBSD68 folder of colour images (or one with original_png/)'),
    'urban100': (urban100, 'test', 'Urban100 folder (img_001.png, img_001_HR.png or SRF folders; LR images ignored)'),
}
