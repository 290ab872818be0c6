"""Online vs precomputed prior features, measured: python tools/precompute_study.py [--seeds 3] [--quick] [...]

For each prior (the tiny one with random weights, the trained tiny one shipped with difflid) x prior features
(online; precomputed with K = 1 and K = 4 noise draws) x seed, trains the recipe of options/precompute_study.yml and
tests it on its held-out set, in a scratch working directory (default results/precompute_study/, or
results/precompute_study_quick/ with --quick), then writes <workdir>/precompute_study.md (the table: PSNR and SSIM mean
± sample std over the seeds, s/iteration, each seed's values, and which differences are outside the spread) and
<workdir>/precompute_study.json, and prints the table. A rerun skips the finished runs. How it runs:
difflid/analysis/precompute_study.py.

  --quick      1 seed, 4 iterations on two small images, one test image: checks the machinery in well under a
               minute (its numbers mean nothing)
  --threads N  torch threads per run (default 1: the runs are small, and one thread is also the fastest on a
               machine shared with other work)
  --set K=V    override an option of every run (dotted keys, YAML values: train.total_iter=100)
  --dry-run    write the option files and say what would run
"""
import argparse
import functools
import sys
import time
from pathlib import Path

import difflid  # noqa: F401  registers difflid's archs, against which the runs' options are checked

# isort: split
from difflid.analysis.precompute_study import StudyError, collect, execute, plan_study, render_table, write_report
from difflid.analysis.sweep import SweepError, parse_assignments
from difflid.utils.errors import OptionError, user_error_exit

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('-opt', default=str(ROOT / 'options' / 'precompute_study.yml'),
                        help='the study\'s training option file (default: options/precompute_study.yml)')
    parser.add_argument('--seeds', type=int, default=None, help='seeds 0 .. N-1 (default 3; 1 with --quick)')
    parser.add_argument('--workdir', default=None, help='scratch working directory (default: '
                        'results/precompute_study, or results/precompute_study_quick with --quick)')
    parser.add_argument('--quick', action='store_true', help='a check of the machinery in well under a minute')
    parser.add_argument('--threads', type=int, default=1, help='torch threads per run (default 1)')
    parser.add_argument('--set', nargs='+', action='extend', default=[], metavar='KEY=VALUE',
                        help='override for every run, e.g. train.total_iter=100')
    parser.add_argument('--dry-run', action='store_true', help='write the option files, say what would run')
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or ROOT / 'results' / ('precompute_study_quick' if args.quick else 'precompute_study'))
    seeds = args.seeds if args.seeds is not None else 1 if args.quick else 3
    try:
        if args.threads < 1:
            raise StudyError(f'--threads must be at least 1, got {args.threads}')
        study = plan_study(args.opt, workdir, seeds, args.quick, parse_assignments(args.set))
        tic = time.perf_counter()
        execute(study, ROOT / 'tools', args.threads, dry_run=args.dry_run, echo=functools.partial(print, flush=True))
        if args.dry_run:
            return
        report = collect(study, time.perf_counter() - tic, args.threads)
        md, out = write_report(report, workdir, study.name)
    except (StudyError, SweepError, OptionError) as err:
        user_error_exit(err)
    except KeyboardInterrupt:
        print('interrupted (Ctrl-C): run the same command again to go on (finished runs are skipped)', file=sys.stderr)
        sys.exit(130)
    print(render_table(report))
    print(f'wrote {md} and {out}', file=sys.stderr)


if __name__ == '__main__':
    main()
