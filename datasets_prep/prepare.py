"""Prepare a public dataset for difflid's options: pair lists (and LMDBs) from the folder as you unzipped it.

    python datasets_prep/prepare.py its         --src /data/RESIDE/ITS          --dst datasets/ITS [--lmdb]
    python datasets_prep/prepare.py sots-indoor --src /data/RESIDE/SOTS/indoor  --dst datasets/SOTS_indoor
    python datasets_prep/prepare.py lol-v1      --src /data/LOL                 --dst datasets/LOL_v1
    python datasets_prep/prepare.py rain-test   --src /data/Rain100H            --dst datasets/Rain100H

Writes <dst>/lq, <dst>/gt (links to your files; --copy to copy), <dst>/<split>.txt pair lists and, with
--lmdb, <dst>/lq.lmdb and <dst>/gt.lmdb. Prints what was paired and every file skipped, with the reason.
'paired': several degraded versions of one clean image pair by name: input NAME_k (k a number) -> target NAME,
unless a target is named NAME_k itself. Folders get the mode mkdir gives them (0777 less your umask).
"""
import argparse
from pathlib import Path

import difflid  # noqa: F401  basicsr's LMDB writer needs the compat shim

# isort: split
from difflid.data.prep import BENCHMARKS, prepare_dataset
from difflid.utils.errors import user_error_exit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('dataset', choices=sorted(BENCHMARKS),
                        help='; '.join(f'{name}: {what}' for name, (_, _, what) in sorted(BENCHMARKS.items())))
    parser.add_argument('--src', required=True, help='the dataset folder as unzipped')
    parser.add_argument('--dst', required=True, help='output folder (must not exist unless --overwrite)')
    parser.add_argument('--split', help="split name for 'paired'/'rain13k'/'rain-test' (default: train/test)")
    parser.add_argument('--lmdb', action='store_true', help='also write lq.lmdb and gt.lmdb')
    parser.add_argument('--copy', action='store_true', help='copy unchanged images instead of linking to them')
    parser.add_argument('--convert', action='store_true',
                        help='convert grayscale/RGBA/16-bit images to 8-bit RGB instead of skipping them')
    parser.add_argument('--overwrite', action='store_true', help='replace --dst once the new copy is complete')
    args = parser.parse_args()

    layout, border, _ = BENCHMARKS[args.dataset]
    try:
        splits = layout(Path(args.src))
        if args.split:
            if len(splits) != 1:
                user_error_exit(f'--split applies to single-split datasets, {args.dataset} has {sorted(splits)}')
            splits = {args.split: next(iter(splits.values()))}
        report = prepare_dataset(splits, args.dst, lmdb=args.lmdb, copy=args.copy, convert=args.convert,
                                 gt_border_crop=border, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, OSError) as err:
        user_error_exit(err)
    print(report.summary(Path(args.dst)))


if __name__ == '__main__':
    main()
