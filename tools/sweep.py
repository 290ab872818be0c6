"""Sweep: python tools/sweep.py options/sweeps/<sweep>.yml [...] [--set K=V ...] [--print | --dry-run | --collect]

Trains and tests every variant of the sweep files not finished yet (tools/train.py then tools/test.py, one after
another, from the repository root), then writes results/sweeps/<sweep>/<sweep>.md and .csv (rows: variants;
columns: test set x metric) and, for a grid, <sweep>_<metric>.png. With several sweep files, also one joint
table named after their common prefix (table2_its + table2_nh_haze -> results/sweeps/table2/).
The sweep file format is in difflid/analysis/sweep.py.

  --print      write each pending run's option files to experiments/sweeps/<sweep>/ and print one command per run
               (to submit to a cluster; run them from the repository root, then collect with --collect)
  --dry-run    say what would run, write nothing
  --collect    only write the tables and plots from the results there are
  --check      check every run's options and dataset files and print what each run would do; write nothing
               (every variant's options are checked before the first run in any case)
  --set K=V    override an option of every run's training (dotted keys: train.total_iter=2); test options get the
               run's network and prior; --set-test K=V overrides the test options (val.tile=512)
"""
import argparse
import sys
from pathlib import Path

import difflid  # noqa: F401  registers difflid's archs and losses, against which overrides are checked

# isort: split
from difflid.analysis.sweep import (
    SweepError,
    check_sweeps,
    collect,
    combined_name,
    execute,
    load_sweep,
    parse_assignments,
    plot_grid,
    print_commands,
    write_table,
)
from difflid.utils.errors import OptionError, user_error_exit

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('sweeps', nargs='+', help='sweep files (options/sweeps/*.yml)')
    parser.add_argument('--set', nargs='+', action='extend', default=[], metavar='KEY=VALUE',
                        help='override for every run\'s training options, e.g. train.total_iter=2')
    parser.add_argument('--set-test', nargs='+', action='extend', default=[], metavar='KEY=VALUE',
                        help='override for every run\'s test options, e.g. val.tile=512')
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--print', action='store_true', help='print one command per pending run instead of running')
    mode.add_argument('--dry-run', action='store_true', help='say what would run; write nothing')
    mode.add_argument('--collect', action='store_true', help='only write the tables and plots')
    mode.add_argument('--check', action='store_true', help="check every run's options and dataset files, print "
                                                           'the plan; write nothing')
    parser.add_argument('--auto_resume', action='store_true', help='resume interrupted trainings (tools/train.py)')
    args = parser.parse_args(argv)
    try:
        cli_set, cli_set_test = parse_assignments(args.set), parse_assignments(args.set_test, '--set-test')
        sweeps = [load_sweep(path, ROOT, cli_set, cli_set_test) for path in args.sweeps]
        for warning in dict.fromkeys(w for s in sweeps for w in s.warnings):
            print(f'warning: {warning}', file=sys.stderr)
        if args.check:
            check_sweeps(sweeps, ROOT)
            print('options and dataset files checked: nothing written')
            return
        if args.print:
            print(f'# run each line from the repository root ({ROOT})', file=sys.stderr)
            print_commands(sweeps, ROOT, args.auto_resume)
            return
        if not args.collect:
            execute(sweeps, ROOT, args.auto_resume, dry_run=args.dry_run)
        if args.dry_run:
            return
        groups = [(s.name, [s]) for s in sweeps] + ([(combined_name(sweeps), sweeps)] if len(sweeps) > 1 else [])
        for name, group in groups:
            folder = ROOT / 'results' / 'sweeps' / name
            table = collect(group, ROOT)
            written = list(write_table(table, folder, name))
            written += [plot_grid(s, ROOT, folder) for s in group if s.is_grid and len(group) == 1]
            print((folder / f'{name}.md').read_text(encoding='utf-8'))
            print('wrote ' + ', '.join(str(p.relative_to(ROOT)) for p in written if p is not None))
    except (SweepError, OptionError) as err:
        user_error_exit(err)


if __name__ == '__main__':
    main()
