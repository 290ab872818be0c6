"""Export a trained model (DiffLI²D and its frozen diffusion prior) as one graph for deployment.

    python tools/export.py -opt experiments/quickstart/models/net_g_latest.pth -o quickstart.onnx
    python tools/infer.py -opt quickstart.onnx -i hazy.jpg -o out/          # onnxruntime; no torch, no basicsr
    python tools/export.py -opt options/test_sots_indoor.yml -o difflid.pt2 --format torch-export

-opt takes what tools/infer.py takes (a test/training option file or a difflid checkpoint). The ONNX graph takes
`image` (B, 3, H, W) float32 in [0, 1], any size, and `origin` (2,) int64 (a tile's (top, left); (0, 0) for a
whole image) and returns `restored`; the prior's seeded noise is computed inside it. After an ONNX export the
graph is run once with onnxruntime (when installed) on a small image and compared with PyTorch.
"""
import argparse
from pathlib import Path

import difflid  # noqa: F401  registers difflid and patches basicsr

# isort: split
from difflid.deploy.export import ATTENTION_KINDS, ExportError, check_onnx, export_model
from difflid.utils.errors import user_error_exit

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-opt', required=True, help='test/training option file (.yml) or difflid checkpoint (.pth)')
    parser.add_argument('-o', '--output', required=True, help='file to write: *.onnx, or *.pt2 for torch-export')
    parser.add_argument('--format', choices=['onnx', 'torch-export'], default='onnx',
                        help='onnx (default; run with tools/infer.py or onnxruntime) or torch-export '
                             '(torch.export.save; load with torch.export.load(path).module())')
    parser.add_argument('--attention', choices=ATTENTION_KINDS, default='fused',
                        help="ONNX attention: fused (default; onnxruntime's MultiHeadAttention, memory-efficient) or "
                             'matmul (standard ONNX ops for other runtimes; memory grows with queries x keys)')
    parser.add_argument('--no-check', action='store_true', help='skip the onnxruntime vs PyTorch comparison')
    args = parser.parse_args()

    try:
        restorer = export_model(args.opt, args.output, ROOT, args.format, args.attention)
    except (FileNotFoundError, ValueError, KeyError, ImportError, ExportError) as err:
        user_error_exit(err)
    size = Path(args.output).stat().st_size / 2 ** 20
    print(f'wrote {args.output} ({size:.1f} MiB, {args.format})')
    if args.format != 'onnx' or args.no_check:
        return
    try:
        psnr = check_onnx(restorer, args.output)
    except ImportError as err:
        print(f'not checked: {err}')
        return
    print(f'onnxruntime vs PyTorch on a 70x100 image: {psnr:.1f} dB PSNR')


if __name__ == '__main__':
    main()
