"""Restore your own images (no ground truth needed), any size and aspect ratio.

    python tools/infer.py -opt options/test_sots_indoor.yml --input photos/ --output restored/
    python tools/infer.py -opt experiments/quickstart/models/net_g_latest.pth -i hazy.jpg -o out/ --tile 512
    python tools/infer.py -opt model.onnx -i photos/ -o restored/          # exported by tools/export.py

-opt takes a test or training option file (a training file uses that run's latest weights), a checkpoint
that difflid saved, or an ONNX model written by tools/export.py, which runs with onnxruntime and needs neither
torch nor basicsr. Outputs keep the input file names (extension from --ext) and their bit depth, grey/RGB
and alpha; unreadable files are skipped with a warning; inputs are never overwritten.
"""
import argparse
import glob
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
ONNX_RUNNER = ROOT / 'difflid' / 'deploy' / 'onnx_runner.py'
EXTENSIONS = {'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp'}


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


def load_onnx_runner() -> ModuleType:
    """difflid/deploy/onnx_runner.py as a module of its own: ``import difflid...`` would first run difflid's
    ``__init__``, which imports basicsr and torch, which an ONNX model does not need."""
    if 'difflid_onnx_runner' not in sys.modules:
        spec = importlib.util.spec_from_file_location('difflid_onnx_runner', ONNX_RUNNER)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules['difflid_onnx_runner']


def onnx_restorer(args: argparse.Namespace) -> tuple:
    """(restorer, read_image, write_like) for an ONNX model: onnxruntime, numpy and cv2 only."""
    if args.dtype != 'fp32':
        raise ValueError(f'--dtype {args.dtype}: an exported ONNX model computes in float32; --dtype applies to '
                         'PyTorch models (option files and checkpoints)')
    runner = load_onnx_runner()
    restorer = runner.OnnxRestorer(args.opt, device=args.device, tile=args.tile, tile_overlap=args.tile_overlap)
    return restorer, runner.read_image, runner.write_like


def torch_restorer(args: argparse.Namespace) -> tuple:
    """(restorer, read_image, write_like) for an option file or checkpoint: PyTorch and basicsr."""
    import difflid  # noqa: F401  registers difflid's classes (and the torchvision alias basicsr needs)

    # isort: split
    import torch

    from difflid.image_io import read_image, write_like
    from difflid.inference import Restorer

    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    restorer = Restorer.from_file(args.opt, ROOT, device=device, dtype=args.dtype, tile=args.tile,
                                  tile_overlap=args.tile_overlap)
    return restorer, read_image, write_like


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
    parser.add_argument('--ext', default='png', help="output format: png (default), tif, jpg, ... or 'same'")
    args = parser.parse_args()

    # decided before anything imports difflid: an ONNX model needs neither torch nor basicsr
    make = onnx_restorer if Path(args.opt).suffix.lower() == '.onnx' else torch_restorer
    expected = (FileNotFoundError, ValueError, KeyError) + ((ImportError,) if make is onnx_restorer else ())
    try:
        inputs = collect_inputs(args.input)
        restorer, read_image, write_like = make(args)
    except expected as err:  # a missing onnxruntime names its pip command
        sys.exit(f'error: {err}')
    out_dir = Path(args.output)
    restored, skipped, notes = 0, [], []
    for path in tqdm(inputs, unit='image'):
        target = out_dir / (path.name if args.ext == 'same' else f'{path.stem}.{args.ext.lstrip(".")}')
        if target.resolve() == path.resolve():
            skipped.append((path, 'output would overwrite the input; choose another --output'))
            continue
        try:
            image = read_image(path)
        except ValueError as err:
            tqdm.write(f'warning: skipping {err}')
            skipped.append((path, str(err)))
            continue
        write_like(target, restorer(image.rgb), image)
        restored += 1
        if image.note:
            notes.append(f'{path.name}: {image.note}')
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
