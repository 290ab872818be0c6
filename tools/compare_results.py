"""Compare methods' test results in one table: python tools/compare_results.py results/A results/B [--names A B]

Reads each folder's metrics_<set>.csv (per image) and metrics_<set>.json (means, including set-level metrics
such as FID; older reports: metrics_<set>.md), all written by tools/test.py, and prints, per test set found in
all of them, the mean of every metric per method (best in bold) and on how many images each method beats the
first.
"""
import argparse
from pathlib import Path

from difflid.reports import compare_results
from difflid.utils.errors import user_error_exit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('folders', nargs='+', help='results/<name> folders')
    parser.add_argument('--names', nargs='+', help='method names (default: folder names)')
    parser.add_argument('--output', help='also write the table to this Markdown file')
    args = parser.parse_args()
    try:
        table = compare_results(args.folders, args.names)
    except (FileNotFoundError, ValueError) as err:
        user_error_exit(err)
    print(table)
    if args.output:
        Path(args.output).write_text(table, encoding='utf-8')


if __name__ == '__main__':
    main()
