"""Restore your own images (no ground truth needed), any size and aspect ratio.

    python tools/infer.py -opt options/test_sots_indoor.yml --input photos/ --output restored/
    python tools/infer.py -opt experiments/quickstart/models/net_g_latest.pth -i hazy.jpg -o out/ --tile 512
    python tools/infer.py -opt model.onnx -i photos/ -o restored/          # exported by tools/export.py

-opt takes a test or training option file (a training file uses that run's latest weights), a checkpoint
that difflid saved, or an ONNX model written by tools/export.py, which runs with onnxruntime and needs neither
torch nor basicsr. Images are turned upright by their EXIF orientation. Outputs keep the input file names
(extension from --ext) and, as far as the format holds them, their bit depth, grey/RGB and alpha (16-bit into
jpg/bmp/webp is scaled to 8 bits; alpha into jpg needs --background); the summary says what was written.
Unreadable files are skipped with a warning. Nothing is written when two inputs would give one output name,
when an output would be read back as an input (or overwrite one), or, without --overwrite, when an output
file exists already.
"""
import argparse
import fnmatch
import glob
import importlib.util
import os
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]


def _package_dir() -> Path:
    """difflid's folder, found without importing it (its ``__init__`` imports torch): this checkout's, else the
    installed one (tools/ copied elsewhere)."""
    if (ROOT / 'difflid').is_dir():
        return ROOT / 'difflid'
    spec = importlib.util.find_spec('difflid')
    return Path(spec.origin).parent if spec and spec.origin else ROOT / 'difflid'


PACKAGE = _package_dir()
ONNX_RUNNER = PACKAGE / 'deploy' / 'onnx_runner.py'
EXTENSIONS = {'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp'}
LISTED = 4  # names shown per problem before "... (N in all)"


def collect_inputs(spec: str) -> list[Path]:
    """A file, a folder (its images, sorted) or a glob pattern (the images it matches). A folder or pattern
    without images is an error: an empty run that exits 0 hides a wrong path."""
    path = Path(spec)
    if path.is_file():
        return [path]
    kinds = ', '.join(sorted(EXTENSIONS))
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not images:
            raise FileNotFoundError(f'--input {spec}: the folder holds no images (looked for {kinds})')
        return images
    matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    images = [p for p in matches if p.suffix.lower() in EXTENSIONS]
    if not images:
        found = f'it matches {len(matches)} file(s), none an image' if matches else 'it matches no file'
        raise FileNotFoundError(f'--input {spec}: no such file or folder, and as a pattern {found} '
                                f'(looked for {kinds})')
    return images


def _file_module(name: str, path: Path) -> ModuleType:
    """A torch-free file of difflid as a module of its own: ``import difflid...`` would first run difflid's
    ``__init__``, which imports basicsr and torch, which an ONNX model does not need."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_onnx_runner() -> ModuleType:
    """difflid/deploy/onnx_runner.py, loaded by its file (see ``_file_module``)."""
    return _file_module('difflid_onnx_runner', ONNX_RUNNER)


def _listing(paths: list) -> str:
    shown = ', '.join(str(p) for p in paths[:LISTED])
    return f'{shown}, ... ({len(paths)} in all)' if len(paths) > LISTED else shown


def _glob_reads(pattern: list[str], parts: list[str]) -> bool:
    """Whether glob's ``pattern`` (path components; ``**`` recursive) matches the path ``parts``."""
    if not pattern:
        return not parts
    if pattern[0] == '**':
        return any(_glob_reads(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _glob_reads(pattern[1:], parts[1:])


def would_read(spec: str, path: Path) -> bool:
    """Whether ``collect_inputs(spec)`` would take ``path`` as an input once it exists: a run must never read (or
    overwrite) what an earlier run wrote."""
    given = Path(spec)
    if path.suffix.lower() not in EXTENSIONS:
        return False
    if given.is_file():
        return path.resolve() == given.resolve()
    if given.is_dir():
        return path.parent.resolve() == given.resolve()
    return _glob_reads(Path(os.path.abspath(spec)).parts, Path(os.path.abspath(path)).parts)


def plan_outputs(inputs: list[Path], args: argparse.Namespace, image_io: ModuleType,
                 background: tuple[int, int, int] | None) -> list[Path]:
    """The output file of every input, or a ValueError listing every reason to write nothing at all."""
    out_dir = Path(args.output)
    targets = [out_dir / (p.name if args.ext == 'same' else f'{p.stem}.{args.ext}') for p in inputs]
    problems = []
    by_target = defaultdict(list)
    for path, target in zip(inputs, targets, strict=True):
        by_target[target.resolve()].append(path)
    clashes = [(target, paths) for target, paths in by_target.items() if len(paths) > 1]
    for target, paths in clashes[:LISTED]:
        problems.append(f'{len(paths)} inputs would all be written to {target.name}: {_listing(paths)} (use --ext '
                        'same, rename, or restore them separately)')
    if len(clashes) > LISTED:
        problems.append(f'... {len(clashes)} output names in all are taken more than once')
    read_back = [t for t in dict.fromkeys(targets) if would_read(args.input, t)]
    resolved_inputs = {p.resolve() for p in inputs}
    overwritten = [t for t in read_back if t.resolve() in resolved_inputs]
    if overwritten:
        problems.append(f'{len(overwritten)} output(s) would overwrite their input: '
                        f'{_listing([t.name for t in overwritten])}; choose another --output')
    if len(read_back) > len(overwritten):
        others = [t.name for t in read_back if t not in overwritten]
        problems.append(f'{len(others)} output(s) would be read as inputs by the next run with -i {args.input}: '
                        f'{_listing(others)}; choose another --output')
    existing = [t for t in dict.fromkeys(targets) if t.exists() and t not in read_back]
    if existing and not args.overwrite:
        problems.append(f'{len(existing)} output file(s) exist already: {_listing([t.name for t in existing])}; '
                        'pass --overwrite to replace them, or choose another --output')
    if background is None:
        no_alpha = {t.suffix.lower() for t in targets if not image_io.output_format(t).alpha}
        alpha = [p for p, t in zip(inputs, targets, strict=True) if t.suffix.lower() in no_alpha
                 and image_io.has_alpha(p)]
        if alpha:
            problems.append(f'{len(alpha)} input(s) have an alpha channel, which {"/".join(sorted(no_alpha))} '
                            f'cannot hold: {_listing([p.name for p in alpha])}; add --background white|black|#rrggbb '
                            'to composite them onto a colour, or write png')
    if problems:
        raise ValueError(f'--output {out_dir}: nothing was written, because:\n  ' + '\n  '.join(problems))
    return targets


def onnx_restorer(args: argparse.Namespace) -> Callable:
    """The restorer of an ONNX model: onnxruntime, numpy, cv2 and Pillow only."""
    if args.dtype != 'fp32':
        raise ValueError(f'--dtype {args.dtype}: an exported ONNX model computes in float32; --dtype applies to '
                         'PyTorch models (option files and checkpoints)')
    runner = load_onnx_runner()
    return runner.OnnxRestorer(args.opt, device=args.device, tile=args.tile, tile_overlap=args.tile_overlap)


def torch_restorer(args: argparse.Namespace) -> Callable:
    """The restorer of an option file or checkpoint: PyTorch and basicsr."""
    import difflid  # noqa: F401  registers difflid's classes (and the torchvision alias basicsr needs)

    # isort: split
    import torch

    from difflid.inference import Restorer

    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    return Restorer.from_file(args.opt, ROOT, device=device, dtype=args.dtype, tile=args.tile,
                              tile_overlap=args.tile_overlap)


def image_io_module(onnx: bool) -> ModuleType:
    """difflid/image_io.py: loaded by its file for an ONNX model (as the runner does), else ``difflid.image_io``."""
    if onnx:
        return load_onnx_runner().image_io
    import difflid.image_io  # registers difflid too, which the option file's classes need

    return difflid.image_io


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-opt', required=True, help='test/training option file (.yml), difflid checkpoint (.pth) or '
                        'ONNX model (.onnx, from tools/export.py)')
    parser.add_argument('-i', '--input', required=True, help='image file, folder or glob pattern')
    parser.add_argument('-o', '--output', required=True, help='output folder')
    parser.add_argument('--tile', type=int, help='tile size for large images (multiple of 32; 0 = whole image; '
                        "default: the option file's val.tile, else 0)")
    parser.add_argument('--tile-overlap', type=int, help="overlap between tiles, in pixels (default: the option "
                        "file's val.tile_overlap, else 32)")
    parser.add_argument('--device', choices=['cpu', 'cuda'], help='default: cuda when available (for an ONNX model: '
                        "when onnxruntime has the CUDAExecutionProvider), else cpu")
    parser.add_argument('--dtype', choices=['fp32', 'bf16', 'fp16'], default='fp32', help='PyTorch models only')
    parser.add_argument('--ext', default='png', type=lambda s: s.lower().lstrip('.'),
                        choices=['same', *sorted(e.lstrip('.') for e in EXTENSIONS)],
                        help="output format (default png), or 'same' as each input; 16-bit is kept by png and tif "
                        'only (scaled to 8 bits otherwise), alpha by png, tif, webp and bmp')
    parser.add_argument('--background', help='white, black or #rrggbb: composite images with alpha onto this colour '
                        'and write them without alpha (needed for jpg, which has none)')
    parser.add_argument('--overwrite', action='store_true', help='replace output files that exist already (inputs '
                        'are never overwritten)')
    args = parser.parse_args()

    # decided before anything imports difflid: an ONNX model needs neither torch nor basicsr
    onnx = Path(args.opt).suffix.lower() == '.onnx'
    errors = _file_module('difflid_infer_errors', PACKAGE / 'utils' / 'errors.py')
    expected = (FileNotFoundError, ValueError, KeyError) + ((ImportError,) if onnx else ())
    try:
        inputs = collect_inputs(args.input)
        image_io = image_io_module(onnx)
        background = None if args.background is None else image_io.parse_background(args.background)
        targets = plan_outputs(inputs, args, image_io, background)
        restorer = onnx_restorer(args) if onnx else torch_restorer(args)
    except expected as err:  # a missing onnxruntime names its pip command; a misfit checkpoint, its options
        errors.user_error_exit(err)
    out_dir = Path(args.output)
    restored, skipped, notes = 0, [], []
    for path, target in zip(tqdm(inputs, unit='image'), targets, strict=True):
        try:
            image = image_io.read_image(path)
        except image_io.UnreadableImage as err:
            tqdm.write(f'warning: skipping {err}')
            skipped.append((path, err.reason))
            continue
        written = image_io.write_like(target, restorer(image.rgb), image, background)
        restored += 1
        if image.note or written.startswith('warning'):
            notes.append(f'{path.name}: {"; ".join(n for n in (image.note, written) if n)}')
    print(f'restored {restored} of {len(inputs)} images into {out_dir}')
    for note in notes:
        print(f'  {note}')
    if skipped:
        print(f'skipped {len(skipped)}:')
        for path, reason in skipped:
            print(f'  {path}: {reason}')
    sys.exit(1 if skipped and not restored else 0)


if __name__ == '__main__':
    main()
