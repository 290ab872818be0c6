"""Prepare a public dataset for difflid's options: pair lists (and LMDBs) from the folder as you unzipped it.

    python datasets_prep/prepare.py its         --src /data/RESIDE/ITS          --dst datasets/ITS [--lmdb]
    python datasets_prep/prepare.py sots-indoor --src /data/RESIDE/SOTS/indoor  --dst datasets/SOTS_indoor
    python datasets_prep/prepare.py lol-v1      --src /data/LOL                 --dst datasets/LOL_v1
    python datasets_prep/prepare.py rain-test   --src /data/Rain100H            --dst datasets/Rain100H
    python datasets_prep/prepare.py promptir    --src /data/PromptIR/data       --dst datasets
    python datasets_prep/prepare.py cbsd68      --src /data/CBSD68              --dst datasets/CBSD68
    python datasets_prep/prepare.py rtts        --src /data/RESIDE/RTTS         --dst datasets/RTTS

Writes <dst>/lq, <dst>/gt (links to your files; --copy to copy), <dst>/<split>.txt pair lists and, with
--lmdb, <dst>/lq.lmdb and <dst>/gt.lmdb. Prints what was paired and every file skipped, with the reason.
'paired': several degraded versions of one clean image pair by name: input NAME_k (k a number) -> target NAME,
unless a target is named NAME_k itself. Folders get the mode mkdir gives them (0777 less your umask).

Clean-image sets (bsd400, wed, cbsd68, urban100: degraded on the fly by DegradedImageDataset) write <dst>/gt,
<dst>/<split>.txt (one gt/<name> per line) and, with --lmdb, <dst>/gt.lmdb. 'promptir' prepares PromptIR's whole
data/ folder: one sub-folder of --dst per set (denoise_train, Rain100L, OTS, SOTS_outdoor, CBSD68, Urban100).

Sets without ground truth (rtts: real hazy photos, scored by no-reference metrics) write <dst>/lq and
<dst>/test.txt (one lq/<name> per line), which UnpairedImageDataset reads; --lmdb does not apply.
"""
import argparse
from pathlib import Path

import difflid  # noqa: F401  basicsr's LMDB writer needs the compat shim

# isort: split
from difflid.data.prep import BENCHMARKS, UNPAIRED_SETS, prepare_dataset, prepare_unpaired
from difflid.data.prep_clean import CLEAN_SETS, prepare_clean
from difflid.data.prep_promptir import prepare_promptir
from difflid.utils.errors import user_error_exit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = {name: what for name, (_, _, what) in {**BENCHMARKS, **CLEAN_SETS}.items()}
    what.update({name: text for name, (_, text) in UNPAIRED_SETS.items()})
    what['promptir'] = "PromptIR's data/ folder (Train/, test/); --dst gets one sub-folder per set"
    parser.add_argument('dataset', choices=sorted(what),
                        help='; '.join(f'{name}: {text}' for name, text in sorted(what.items())))
    parser.add_argument('--src', required=True, help='the dataset folder as unzipped')
    parser.add_argument('--dst', required=True, help='output folder (must not exist unless --overwrite)')
    parser.add_argument('--split', help="split name for 'paired'/'rain13k'/'rain-test' and the clean-image sets "
                                        '(default: train/test)')
    parser.add_argument('--lmdb', action='store_true', help='also write lq.lmdb and gt.lmdb')
    parser.add_argument('--copy', action='store_true', help='copy unchanged images instead of linking to them')
    parser.add_argument('--convert', action='store_true',
                        help='convert grayscale/RGBA/16-bit images to 8-bit RGB instead of skipping them')
    parser.add_argument('--overwrite', action='store_true', help='replace --dst once the new copy is complete')
    args = parser.parse_args()

    common = dict(lmdb=args.lmdb, copy=args.copy, convert=args.convert, overwrite=args.overwrite)
    try:
        if args.dataset == 'promptir':
            if args.split:
                user_error_exit('--split does not apply to promptir: each set keeps its own splits')
            prepare_promptir(args.src, args.dst, **common)  # prints each set's summary as it is written
            return
        if args.dataset in UNPAIRED_SETS:
            if args.lmdb:
                user_error_exit(f'--lmdb does not apply to {args.dataset}: its images are read from disk')
            layout, _ = UNPAIRED_SETS[args.dataset]
            report = prepare_unpaired(layout(Path(args.src)), args.dst, split=args.split or 'test', copy=args.copy,
                                      convert=args.convert, overwrite=args.overwrite)
            print(report.summary(Path(args.dst)))
            return
        if args.dataset in CLEAN_SETS:
            layout, split, _ = CLEAN_SETS[args.dataset]
            report = prepare_clean({args.split or split: layout(Path(args.src))}, args.dst, **common)
        else:
            layout, border, _ = BENCHMARKS[args.dataset]
            splits = layout(Path(args.src))
            if args.split:
                if len(splits) != 1:
                    user_error_exit(f'--split applies to single-split datasets, {args.dataset} has {sorted(splits)}')
                splits = {args.split: next(iter(splits.values()))}
            report = prepare_dataset(splits, args.dst, gt_border_crop=border, **common)
    except (FileNotFoundError, FileExistsError, ValueError, OSError) as err:
        user_error_exit(err)
    print(report.summary(Path(args.dst)))


if __name__ == '__main__':
    main()
