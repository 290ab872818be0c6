"""Speed and memory of DiffLI²D against the released code's way (random weights: speed does not depend on them).

    python tools/benchmark.py [--device cuda] [--sizes 128x128 256x256 620x460 1600x1200] [--train-batch 40]
                              [--compile] [--sections prior train val infer flops kernels precompute] [--quick]
                              [--json FILE]

Sections, one Markdown table each (--json FILE writes the same figures): 1 prior (released way: guided-diffusion's
full UNet, one fp32 pass per timestep; difflid's way: HSpaceExtractor, encoder only, both timesteps in one pass),
2 training step, 3 validation with cached prior features, 4 inference end to end, 5 parameters and FLOPs,
6 attention kernels (GPU only), 7 precompute: training on precomputed prior features against the online step (with
and without DiffLoss, and their FLOPs), the precompute's images/s on 620×460 (ITS) images, the storage per image and
draw, and the feature store's read speed. Sizes are WIDTHxHEIGHT; on the CPU only those up to 256² run unless
--sizes names them (620x460 for section 7's precompute row). --quick (tiny prior, quickstart network, seconds on a
CPU) checks that the tool works; its figures mean nothing. What each row measures: difflid/analysis/benchmark.py.
"""
import argparse
from collections.abc import Sequence
from pathlib import Path

import difflid  # noqa: F401  registers difflid and patches basicsr

# isort: split
from difflid.analysis.benchmark import SECTIONS, BenchmarkOptions, parse_size, run_benchmark
from difflid.utils.errors import user_error_exit

ROOT = Path(__file__).resolve().parents[1]


def _size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse the flags, run the benchmark (it prints the report); returns the report's figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', help='cpu or cuda (default: cuda when torch sees a GPU)')
    parser.add_argument('--sizes', type=_size, nargs='+', default=[], metavar='WxH',
                        help='run these sizes in sections 1 and 4 (620x460: also 7) even on the CPU (extra ones are '
                             'added to section 1)')
    parser.add_argument('--train-batch', type=int, help='batch of sections 2 and 7 (default: 40 on a GPU, 2 on the '
                                                        'CPU)')
    parser.add_argument('--val-images', type=int, help='images of section 3 (default 8, --quick 2)')
    parser.add_argument('--repeats', type=int, help='timed calls per row, median (default: 3 on a GPU, 1 on the CPU; '
                                                    "section 7's L1 rows: at least 3)")
    parser.add_argument('--warmup', type=int, help='untimed calls first (default: 1 on a GPU, 0 on the CPU, where a '
                                                   'call takes seconds and its one-off costs are negligible; '
                                                   "section 7's L1 rows: at least 1)")
    parser.add_argument('--compile', action='store_true', help="add difflid's way with torch.compile to section 1")
    parser.add_argument('--sections', nargs='+', choices=SECTIONS, default=list(SECTIONS),
                        help=f'sections to run (default: all of {", ".join(SECTIONS)})')
    parser.add_argument('--quick', action='store_true', help='tiny prior, quickstart network, batch 2, 1 repeat: a '
                                                             'check that runs in seconds, not a measurement')
    parser.add_argument('--json', type=Path, metavar='FILE', help='also write the figures to FILE')
    args = parser.parse_args(argv)
    try:
        options = BenchmarkOptions(device=args.device, sizes=tuple(args.sizes), train_batch=args.train_batch,
                                   val_images=args.val_images, repeats=args.repeats, warmup=args.warmup,
                                   compile=args.compile, sections=tuple(args.sections), quick=args.quick,
                                   json_path=args.json)
    except ValueError as err:
        user_error_exit(err)
    return run_benchmark(options, ROOT)


if __name__ == '__main__':
    main()
