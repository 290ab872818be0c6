"""Turn public restoration datasets, as their archives unpack, into what difflid's options read.

A prepared dataset is one folder:

    <dst>/lq/...  <dst>/gt/...        the images (links to the originals, or copies; changed images are written)
    <dst>/<split>.txt                 pair lists, one ``lq/<name> gt/<name>`` per line (many LQ may share a GT)
    <dst>/lq.lmdb  <dst>/gt.lmdb      with --lmdb: the same images in basicsr LMDBs (keys: ``lmdb_key``)

An unpaired set (real haze with no ground truth: RTTS; ``prepare_unpaired``) has ``<dst>/lq/...`` and a list,
``<dst>/test.txt``, of one ``lq/<name>`` per line, which ``UnpairedImageDataset`` reads.

Every LQ is checked against its GT before anything is written: missing partners, duplicate names,
unreadable files, size mismatches and grayscale/RGBA/16-bit images are reported by file name and
skipped (or converted with ``convert=True``); images with an EXIF orientation are turned upright (basicsr's
readers apply it) and written. The folder is built under a temporary name and renamed
at the end, so an interrupted run never leaves a half-written dataset. Its folders get the mode ``mkdir`` gives
(0777 less the umask: 0755 under the usual 022), so a dataset prepared for a group is readable by it; ``umask 077``
first keeps one private.
"""
import os
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from difflid.image_io import apply_exif_orientation

__all__ = ['BENCHMARKS', 'UNPAIRED_SETS', 'PrepReport', 'Source', 'lmdb_key', 'prepare_dataset', 'prepare_unpaired']

IMAGE_EXTENSIONS = {'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff'}


def lmdb_key(rel_path: str) -> str:
    """LMDB key of a prepared image: its relative path without extension, dots made dashes (basicsr's
    LMDB meta reader cuts keys at the first dot, which would merge RESIDE's ``1_1_0.90179``/``1_1_0.81234``)."""
    return os.path.splitext(rel_path)[0].replace('.', '-')


@dataclass
class Source:
    """One split of a dataset as distributed: LQ and GT images and how their names pair up."""

    lq: list[Path]
    gt: list[Path]
    lq_key: Callable[[Path], str | None]  # None: the name does not follow the dataset's scheme
    gt_key: Callable[[Path], str | None]
    # the prepared file's name (default: the file's own); for layouts whose names repeat across folders (GoPro)
    rename: Callable[[Path], str] | None = None


@dataclass
class PrepReport:
    pairs: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    converted: list[str] = field(default_factory=list)
    turned: list[str] = field(default_factory=list)  # images turned upright by their EXIF orientation
    cropped: int = 0
    unit: str = 'pairs'  # what ``pairs`` counts ('images' for clean-image sets)
    ignored: list[str] = field(default_factory=list)  # files the layout holds but never uses (Urban100's LR images)

    def summary(self, dst: Path) -> str:
        lines = [f'prepared {dst}: ' + ', '.join(f'{split}: {n} {self.unit}' for split, n in self.pairs.items())]
        if self.ignored:
            lines.append(f'  {len(self.ignored)} files ignored (not part of the set): ' + ', '.join(self.ignored[:5])
                         + (', ...' if len(self.ignored) > 5 else ''))
        if self.cropped:
            lines.append(f'  {self.cropped} GT images centre-cropped to their LQ size')
        if self.turned:
            lines.append(f'  {len(self.turned)} images turned upright by their EXIF orientation and written as PNG: '
                         + ', '.join(self.turned[:10]))
        if self.converted:
            lines.append(f'  {len(self.converted)} images converted to 8-bit 3-channel: '
                         + ', '.join(self.converted[:10]))
        lines.append(f'  {len(self.skipped)} files skipped' + (':' if self.skipped else ''))
        lines += [f'    {name}: {reason}' for name, reason in self.skipped]
        return '\n'.join(lines)


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files under ``folder``, sorted; macOS archive debris (``__MACOSX``, ``._*``) is ignored."""
    if not folder.is_dir():
        raise FileNotFoundError(f'expected a folder of images at {folder}')
    files = folder.rglob('*') if recursive else folder.iterdir()
    return sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and '__MACOSX' not in p.parts and not p.name.startswith('._'))


def _umask() -> int:
    """The process umask (read by setting it, so it is restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pair(source: Source, report: PrepReport) -> list[tuple[Path, Path]]:
    by_key: dict[str, list[Path]] = defaultdict(list)
    for gt in source.gt:
        key = source.gt_key(gt)
        if key is None:
            report.skipped.append((str(gt), 'GT name does not follow the dataset naming scheme'))
        else:
            by_key[key].append(gt)
    gt_of = {}
    for key, files in by_key.items():
        if len(files) > 1:
            report.skipped += [(str(f), f'duplicate GT name for key {key!r}: {[p.name for p in files]}') for f in files]
        else:
            gt_of[key] = files[0]
    pairs, used, seen_lq = [], set(), {}
    for lq in source.lq:
        key = source.lq_key(lq)
        stem = str(lq.with_suffix(''))
        if key is None:
            report.skipped.append((str(lq), 'LQ name does not follow the dataset naming scheme'))
        elif stem in seen_lq:
            report.skipped.append((str(lq), f'duplicate LQ name (also {seen_lq[stem].name})'))
        elif key not in gt_of:
            if key not in by_key:
                report.skipped.append((str(lq), f'no GT image for key {key!r}'))
            else:
                report.skipped.append((str(lq), f'its GT {key!r} is ambiguous (duplicate names)'))
        else:
            pairs.append((lq, gt_of[key]))
            used.add(key)
        seen_lq.setdefault(stem, lq)
    report.skipped += [(str(gt), 'no LQ image for this GT') for key, gt in gt_of.items() if key not in used]
    return pairs


def _load(path: Path, convert: bool, report: PrepReport, grayscale_hint: str = '') -> tuple[np.ndarray | None, bool]:
    """(image as 8-bit BGR, whether it had to be converted); None if unusable (reason recorded).

    ``grayscale_hint`` says, in the reason a grayscale image is skipped for, why the set needs colour."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        report.skipped.append((str(path), 'unreadable image'))
        return None, False
    # IMREAD_UNCHANGED (which keeps alpha and 16 bits to report them) ignores EXIF orientation, which basicsr's
    # readers apply: turned upright here and written, so that sizes are checked, and LMDBs hold, what training reads
    img, turned = apply_exif_orientation(img, path)
    if turned:
        report.turned.append(f'{path.name} ({turned})')
    problems = []
    if img.ndim == 2 or img.shape[2] == 1:
        problems.append('grayscale')
    elif img.shape[2] == 4:
        problems.append('RGBA')
    if img.dtype != np.uint8:
        problems.append(f'{img.dtype} ({img.dtype.itemsize * 8}-bit)')
    if not problems:
        return img, bool(turned)
    if not convert:
        gray = problems[0] == 'grayscale'
        hint = f': {grayscale_hint}' if grayscale_hint and gray else ''
        how = 'use --convert to convert to 8-bit RGB' + (' (3 equal channels)' if gray else '')
        report.skipped.append((str(path), ', '.join(problems) + f' image{hint} ({how})'))
        return None, False
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img.astype(np.float32) * (255 if img.max() <= 1 else 1), 0, 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 1:
        img = cv2.cvtColor(img[..., 0], cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    report.converted.append(str(path))
    return img, True


def prepare_dataset(
    splits: dict[str, Source],
    dst: str | Path,
    lmdb: bool = False,
    copy: bool = False,
    convert: bool = False,
    gt_border_crop: int = 0,
    overwrite: bool = False,
) -> PrepReport:
    """Check, pair and write a dataset (see the module docstring).

    Args:
        splits: Source per split name (e.g. 'train', 'test').
        dst: Output folder.
        lmdb: Also write lq.lmdb and gt.lmdb with basicsr's LMDB writer.
        copy: Copy unchanged images instead of linking to them.
        convert: Convert grayscale/RGBA/16-bit images to 8-bit 3-channel instead of skipping them.
        gt_border_crop: A GT exactly 2*this larger than its LQ in both sides is centre-cropped (SOTS: 10).
        overwrite: Replace an existing ``dst`` (only once the new one is complete).
    """
    dst = Path(dst)
    with atomic_folder(dst, overwrite) as tmp:
        writer = _PairWriter(tmp, copy, convert, gt_border_crop)
        for split, source in splits.items():
            lines = [entry for lq, gt in _pair(source, writer.report)
                     if (entry := writer.write(lq, gt, source.rename))]
            if not lines:
                raise ValueError(f'no usable pairs for split {split!r} in {dst}:\n' + writer.report.summary(dst))
            (tmp / f'{split}.txt').write_text('\n'.join(lines) + '\n', encoding='utf-8')
            writer.report.pairs[split] = len(lines)
        if lmdb:
            write_lmdbs(tmp, ('lq', 'gt'))
    return writer.report


@contextmanager
def atomic_folder(dst: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside ``dst`` that becomes ``dst`` when the block completes (an interrupted run leaves
    nothing half-written); it replaces an existing ``dst`` only with ``overwrite``, and only then."""
    if dst.exists() and not overwrite:
        raise FileExistsError(f'{dst} exists; choose another --dst or pass --overwrite')
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{dst.name}.', dir=dst.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would make a dataset others cannot read whatever the umask
    try:
        yield tmp
        if dst.exists():
            old = dst.with_name(f'.{dst.name}.old')
            os.rename(dst, old)
            os.rename(tmp, dst)
            shutil.rmtree(old)
        else:
            os.rename(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _PairWriter:
    """Writes checked pairs under ``root``; each GT is read and written once however many LQ share it."""

    def __init__(self, root: Path, copy: bool, convert: bool, gt_border_crop: int) -> None:
        self.root, self.copy, self.convert, self.crop = root, copy, convert, gt_border_crop
        self.report = PrepReport()
        self.gt_images: dict[Path, tuple[np.ndarray, bool] | None] = {}
        self.gt_rel: dict[Path, str] = {}
        self.lines: dict[tuple[Path, Path], str] = {}  # pairs already written for an earlier split
        self.names: dict[str, set[str]] = {'lq': set(), 'gt': set()}

    def write(self, lq_path: Path, gt_path: Path, rename: Callable[[Path], str] | None = None) -> str | None:
        """Write one pair; return its pair-list line, or None if it was skipped (reason recorded).
        A pair listed in several splits (NTIRE's train and train45) is written once."""
        if (lq_path, gt_path) not in self.lines:
            line = self._write(lq_path, gt_path, rename)
            if line is None:
                return None
            self.lines[lq_path, gt_path] = line
        return self.lines[lq_path, gt_path]

    def _write(self, lq_path: Path, gt_path: Path, rename: Callable[[Path], str] | None) -> str | None:
        lq, lq_changed = _load(lq_path, self.convert, self.report)
        if lq is None:
            return None
        if gt_path not in self.gt_images:
            gt, changed = _load(gt_path, self.convert, self.report)
            self.gt_images[gt_path] = None if gt is None else (gt, changed)
        if self.gt_images[gt_path] is None:
            self.report.skipped.append((str(lq_path), f'its GT {gt_path.name} is unusable'))
            return None
        gt, gt_changed = self.gt_images[gt_path]
        if gt.shape != lq.shape:
            c = self.crop
            if not (c and gt.shape[0] == lq.shape[0] + 2 * c and gt.shape[1] == lq.shape[1] + 2 * c):
                self.report.skipped.append((str(lq_path), f'size {lq.shape[1]}x{lq.shape[0]} differs from its GT '
                                                          f'{gt_path.name} {gt.shape[1]}x{gt.shape[0]}'))
                return None
            if gt_path not in self.gt_rel:  # centred: the 10-px white NYU border on every side
                gt, gt_changed = gt[c:-c, c:-c], True
                self.report.cropped += 1
        name = rename or (lambda path: path.name)
        if gt_path not in self.gt_rel:
            self.gt_rel[gt_path] = self._place('gt', gt_path, gt if gt_changed else None, name(gt_path))
        return f"{self._place('lq', lq_path, lq if lq_changed else None, name(lq_path))} {self.gt_rel[gt_path]}"

    def _place(self, side: str, src: Path, changed: np.ndarray | None, name: str) -> str:
        return place_image(self.root, side, src, changed, name, self.copy, self.names[side])


def place_image(root: Path, side: str, src: Path, changed: np.ndarray | None, name: str, copy: bool,
                taken: set[str]) -> str:
    """Write ``src`` as ``<root>/<side>/<name>`` (a link, a copy, or ``changed`` as PNG); return its relative path.
    ``taken``: the names already written on that side (two files written under one name are refused)."""
    if changed is not None:
        name = Path(name).with_suffix('.png').name
    if not name.isascii() or any(ch.isspace() for ch in name):
        raise ValueError(f'{src}: file names must be ASCII without spaces (they become LMDB keys)')
    if name in taken:
        raise ValueError(f'{src}: another {side.upper()} file is already written as {name!r}; rename one')
    taken.add(name)
    dst = root / side / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    if changed is not None:
        if not cv2.imwrite(str(dst), changed):
            raise OSError(f'could not write {dst}')
    elif copy:
        shutil.copy2(src, dst)
    else:
        os.symlink(src.resolve(), dst)
    return f'{side}/{name}'


def write_lmdbs(root: Path, sides: tuple[str, ...]) -> None:
    """``<root>/<side>.lmdb`` for each side, with basicsr's writer and ``lmdb_key`` keys."""
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs

    for side in sides:
        rels = sorted(f'{side}/{p.name}' for p in (root / side).iterdir())
        raw = sum(cv2.imread(str(root / r), cv2.IMREAD_UNCHANGED).nbytes for r in rels)
        make_lmdb_from_imgs(str(root), str(root / f'{side}.lmdb'), rels, [lmdb_key(r) for r in rels],
                            map_size=int(raw * 1.5) + 2**26)


# --- the benchmarks' layouts -------------------------------------------------------------------------------------


def _prefix_key(path: Path) -> str:
    return path.stem.split('_')[0]


def _stem(path: Path) -> str:
    return path.stem


def _strip_prefix(*prefixes: str) -> Callable[[Path], str]:
    pattern = re.compile(rf'^(?:{"|".join(prefixes)})[-_]?', re.IGNORECASE)
    return lambda path: pattern.sub('', path.stem)


def _find_dir(root: Path, *names: str) -> Path:
    """The first of ``names`` (case-insensitive) directly under ``root``."""
    if root.is_dir():
        children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
        for name in names:
            if name.lower() in children:
                return children[name.lower()]
    raise FileNotFoundError(f'{root}: expected a sub-folder named one of {list(names)}')


def _reside(split: str, recursive: bool = False) -> Callable[[Path], dict[str, Source]]:
    """RESIDE: hazy/<id>_<...>.<ext> pairs with clear/<id>.<ext> (ITS, OTS) or gt/<id>.png (SOTS).

    Also PromptIR's copies (its INSTALL.md and ``utils/dataset_utils.py``, va1shn9v/PromptIR): OTS as
    ``Train/Dehaze/synthetic/part<k>/<id>_<A>_<beta>.jpg`` with ``original/<id>.jpg``, SOTS-outdoor as
    ``test/dehaze/input/<id>_<...>.jpg`` with ``target/<id>.png``.
    """
    def layout(root: Path) -> dict[str, Source]:
        hazy = list_images(_find_dir(root, 'hazy', 'haze', 'synthetic', 'input'), recursive)
        gt = list_images(_find_dir(root, 'clear', 'gt', 'clear_images', 'original', 'target'), recursive)
        return {split: Source(hazy, gt, _prefix_key, _stem)}
    return layout


def _ntire(root: Path) -> dict[str, Source]:
    """Dense-Haze / NH-HAZE: NN_hazy.png and NN_GT.png (in one folder or in hazy/ and GT/); 01-50 train, 51-55 test.

    When images 46-50 are present it also writes train45 (01-45) and val (46-50): a validation set that is
    neither trained on nor the test set, so a checkpoint chosen on it was not chosen on test images.
    """
    files = list_images(root, recursive=True)

    def key(suffix: str) -> Callable[[Path], str | None]:
        def number(path: Path) -> str | None:
            m = re.fullmatch(rf'(\d+)_{suffix}', path.stem, re.IGNORECASE)
            return m.group(1).zfill(2) if m else None
        return number

    lq = [p for p in files if key('hazy')(p)]
    gt = [p for p in files if key('GT')(p)]
    if not lq:
        raise FileNotFoundError(f'{root}: no NN_hazy images found')
    rules = {'train': lambda n: n <= 50, 'test': lambda n: n > 50}
    if any(46 <= int(key('hazy')(p)) <= 50 for p in lq):
        rules.update(train45=lambda n: n <= 45, val=lambda n: 46 <= n <= 50)
    return {split: Source([p for p in lq if keep(int(key('hazy')(p)))], [p for p in gt if keep(int(key('GT')(p)))],
                          key('hazy'), key('GT'))
            for split, keep in rules.items()}


def _lol_v1(root: Path) -> dict[str, Source]:
    return {split: Source(list_images(_find_dir(_find_dir(root, folder), 'low')),
                          list_images(_find_dir(_find_dir(root, folder), 'high')), _stem, _stem)
            for split, folder in (('train', 'our485'), ('test', 'eval15'))}


def _lol_v2(part: str) -> Callable[[Path], dict[str, Source]]:
    def layout(root: Path) -> dict[str, Source]:
        if root.name.lower() != part.lower():
            root = _find_dir(root, part)
        return {split.lower(): Source(list_images(_find_dir(_find_dir(root, split), 'Low')),
                                      list_images(_find_dir(_find_dir(root, split), 'Normal')),
                                      _strip_prefix('low'), _strip_prefix('normal'))
                for split in ('Train', 'Test')}
    return layout


def _paired(split: str) -> Callable[[Path], dict[str, Source]]:
    """Restormer's deraining layout: <root>/input and <root>/target with the same names (also rain-/norain-).

    Several degraded versions of one clean image: an input ``NAME_k`` (k a number: ``0001_1.png``, ``0001_2.png``)
    pairs with the target ``NAME`` (``0001.png``) when no target is named ``NAME_k`` itself.
    """
    def layout(root: Path) -> dict[str, Source]:
        gt, gt_key = list_images(_find_dir(root, 'target', 'norain', 'gt')), _strip_prefix('norain')
        return {split: Source(list_images(_find_dir(root, 'input', 'rain', 'lq')), gt,
                              _numbered_versions(_strip_prefix('rain'), {gt_key(p) for p in gt}), gt_key)}
    return layout


def _numbered_versions(key: Callable[[Path], str], gt_keys: set[str]) -> Callable[[Path], str]:
    """``key``, but ``NAME_k`` becomes ``NAME`` when ``NAME`` is a target's key and ``NAME_k`` is not."""
    def version_of(path: Path) -> str:
        name = key(path)
        numbered = re.fullmatch(r'(.+)_\d+', name)
        return numbered.group(1) if numbered and name not in gt_keys and numbered.group(1) in gt_keys else name
    return version_of


RAIN_LQ_FOLDERS = {'input', 'rain', 'rainy', 'lq'}
RAIN_GT_FOLDERS = {'target', 'norain', 'gt'}
RAIN_TRAIN_NAMES = ('RainTrainL', 'train', 'rain_data_train_Light')
RAIN_TEST_NAMES = ('Rain100L', 'test', 'rain_data_test_Light')


def _rain_key(path: Path) -> str:
    """``rain-12``, ``norain-012``, JORDER's ``norain-012x2`` -> ``12``; other names (input/ and target/ with equal
    names) -> the name itself."""
    m = re.fullmatch(r'(?:no)?rain[-_]?(\d+)(?:x2)?', path.stem, re.IGNORECASE)
    return str(int(m.group(1))) if m else path.stem


def _rain_split(root: Path) -> Source:
    """One Rain100L split: rain-N with norain-N in one folder, or in rain/ (JORDER: rain/X2/norain-Nx2) and norain/,
    rainy/ and gt/ (PromptIR's Train/Derain), input/ and target/ (PromptIR's test/derain/Rain100L, Restormer)."""
    lq, gt = [], []
    for path in list_images(root, recursive=True):
        folders = {part.lower() for part in path.relative_to(root).parts[:-1]}
        is_gt = bool(folders & RAIN_GT_FOLDERS) or (not folders & RAIN_LQ_FOLDERS
                                                     and path.stem.lower().startswith('norain'))
        (gt if is_gt else lq).append(path)
    return Source(lq, gt, _rain_key, _rain_key)


def _rain100l(root: Path) -> dict[str, Source]:
    """Rain100L (Yang et al., JORDER) as PReNet's README and PromptIR's INSTALL.md distribute it: RainTrainL (200 pairs,
    ``rain-<n>.png``/``norain-<n>.png``) and Rain100L (100 pairs, ``rain-<nnn>``/``norain-<nnn>`` or input/target).
    ``root`` holds RainTrainL/ and/or Rain100L/ (or train/, test/), or is one of them."""
    splits = {}
    for split, names in (('train', RAIN_TRAIN_NAMES), ('test', RAIN_TEST_NAMES)):
        try:
            splits[split] = _rain_split(_find_dir(root, *names))
        except FileNotFoundError:
            pass
    if splits:
        return splits
    for split, names in (('train', RAIN_TRAIN_NAMES), ('test', RAIN_TEST_NAMES)):
        if root.is_dir() and root.name.lower() in {name.lower() for name in names}:
            return {split: _rain_split(root)}
    raise FileNotFoundError(f'{root}: expected RainTrainL/ and/or Rain100L/ (or train/, test/), or --src one of them')


def _gopro_key(path: Path) -> str:
    """``GOPR0372_07_00/blur/000047.png`` -> ``GOPR0372_07_00_000047`` (frame names repeat across sequences)."""
    return f'{path.parent.parent.name}_{path.stem}'


def _gopro(root: Path) -> dict[str, Source]:
    """GoPro (Nah et al.) as ``GOPRO_Large.zip`` unpacks: ``{train,test}/GOPR<seq>/{blur,blur_gamma,sharp}/<frame>.png``
    (DeepDeblur-PyTorch's and the GoPro site's layout; 2103 train and 1111 test pairs). The LQ is ``blur`` (linear
    averaging, what the all-in-one papers use), never ``blur_gamma``."""
    if not (root.is_dir() and any(p.is_dir() and p.name.lower() in ('train', 'test') for p in root.iterdir())):
        root = _find_dir(root, 'GOPRO_Large')
    splits = {}
    for split in ('train', 'test'):
        lq, gt = [], []
        for seq in sorted(p for p in _find_dir(root, split).iterdir() if p.is_dir() and p.name != '__MACOSX'):
            for images, names in ((lq, ('blur',)), (gt, ('sharp',))):
                try:
                    images += list_images(_find_dir(seq, *names))
                except FileNotFoundError:  # a sequence without its blur/ or sharp/: its partners are reported
                    pass
        splits[split] = Source(lq, gt, _gopro_key, _gopro_key, rename=lambda path: _gopro_key(path) + path.suffix)
    return splits


# name -> (layout reader, GT border to centre-crop, what --src is)
BENCHMARKS: dict[str, tuple[Callable[[Path], dict[str, Source]], int, str]] = {
    'its': (_reside('train'), 0, 'RESIDE ITS folder with hazy/ and clear/'),
    'sots-indoor': (_reside('test'), 10, 'SOTS indoor folder with hazy/ and gt/'),
    'sots-outdoor': (_reside('test'), 10, 'SOTS outdoor folder with hazy/ and gt/'),
    'ots': (_reside('train', recursive=True), 0, 'RESIDE OTS folder with hazy/ (any depth) and clear/'),
    'dense-haze': (_ntire, 0, 'Dense-Haze folder (NN_hazy.png, NN_GT.png)'),
    'nh-haze': (_ntire, 0, 'NH-HAZE folder (NN_hazy.png, NN_GT.png)'),
    'lol-v1': (_lol_v1, 0, 'LOL folder with our485/ and eval15/'),
    'lol-v2-real': (_lol_v2('Real_captured'), 0, 'LOL-v2 folder (or its Real_captured/)'),
    'lol-v2-synthetic': (_lol_v2('Synthetic'), 0, 'LOL-v2 folder (or its Synthetic/)'),
    'rain13k': (_paired('train'), 0, 'Rain13K training folder with input/ and target/'),
    'rain-test': (_paired('test'), 0, 'a deraining test set (Rain100H, Test100, ...) with input/ and target/'),
    'rain100l': (_rain100l, 0, 'folder with RainTrainL/ and/or Rain100L/ (rain-N/norain-N, together or in rain/ '
                               'norain/, rainy/ gt/, input/ target/), or one of them'),
    'gopro': (_gopro, 0, 'GOPRO_Large folder with train/ and test/ (GOPR<seq>/blur and sharp; blur_gamma unused)'),
    'paired': (_paired('train'), 0, 'any folder with input/ (or lq/) and target/ (or gt/), same file names, '
                                    'or input NAME_k -> target NAME'),
}


def prepare_unpaired(
    images: list[Path],
    dst: str | Path,
    split: str = 'test',
    copy: bool = False,
    convert: bool = False,
    overwrite: bool = False,
) -> PrepReport:
    """Check and write degraded images that have no ground truth: ``<dst>/lq/<name>`` and ``<dst>/<split>.txt``.

    Unreadable, grayscale/RGBA/16-bit (unless ``convert``) and same-stem files (``a.png`` beside ``a.jpg``, which
    would share a report row and an LMDB key) are skipped and reported by name, as for pairs.
    """
    dst = Path(dst)
    report = PrepReport(unit='images')
    with atomic_folder(dst, overwrite) as tmp:
        taken: set[str] = set()
        first: dict[str, Path] = {}
        lines = []
        for path in images:
            if path.stem in first:
                report.skipped.append((str(path), f'duplicate name {path.stem!r} (also {first[path.stem].name})'))
                continue
            first[path.stem] = path
            img, changed = _load(path, convert, report, 'NIQE and the restoration networks read colour images')
            if img is not None:
                lines.append(place_image(tmp, 'lq', path, img if changed else None, path.name, copy, taken))
        if not lines:
            raise ValueError(f'no usable images in {dst}:\n' + report.summary(dst))
        (tmp / f'{split}.txt').write_text('\n'.join(lines) + '\n', encoding='utf-8')
        report.pairs[split] = len(lines)
    return report


def _rtts(root: Path) -> list[Path]:
    """RTTS (RESIDE's Real-world Task-driven Testing Set, 4,322 real hazy photos, VOC layout): the images in
    ``JPEGImages/`` (under ``--src`` or its ``RTTS/``); ``Annotations/`` (object boxes) and ``ImageSets/`` are not
    images to restore and are left out."""
    if root.is_dir() and not any(p.is_dir() and p.name.lower() == 'jpegimages' for p in root.iterdir()):
        root = _find_dir(root, 'RTTS')
    return list_images(_find_dir(root, 'JPEGImages'))


# name -> (layout reader: the images, what --src is); prepared by ``prepare_unpaired``
UNPAIRED_SETS: dict[str, tuple[Callable[[Path], list[Path]], str]] = {
    'rtts': (_rtts, 'RESIDE RTTS folder with JPEGImages/ (and Annotations/), or the folder holding RTTS/'),
}
