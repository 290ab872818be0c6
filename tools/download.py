"""Fetch the published weight files difflid knows, verified and resumable (logic: difflid/priors/catalog.py).

    python tools/download.py adm256_uncond lpips-alex fid-inception [--dir pretrained] [--mirror URL]
"""
import argparse
import sys

import difflid  # noqa: F401  (compat before basicsr)
from difflid.priors.catalog import CATALOG, fetch, resolve_names
from difflid.utils.download import MIRROR_ENV, OFFLINE_ENV, DownloadError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog=f'Known names: {", ".join(CATALOG)}. Environment: {MIRROR_ENV}=URL (a '
                                            f'mirror), {OFFLINE_ENV}=1 (never download).')
    parser.add_argument('names', nargs='*', help='weight files to fetch (see --list)')
    parser.add_argument('--dir', default='pretrained', help='folder for the ADM checkpoints (default: pretrained)')
    parser.add_argument('--mirror', default=None, help=f'base URL serving the same file names (or {MIRROR_ENV})')
    parser.add_argument('--list', action='store_true', help='list the known names and where each file goes')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    if args.list or not args.names:
        for name, entry in CATALOG.items():
            print(f'{name:22s} {entry.destination(args.dir)}  ({entry.used_for}; {entry.url})')
        return 0
    try:
        entries = resolve_names(args.names)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    for name, entry in zip(args.names, entries, strict=True):
        try:
            path = fetch(entry, args.dir, args.mirror, progress=not args.no_progress)
        except DownloadError as err:
            print(f'error: {name}: {err}', file=sys.stderr)
            return 1
        print(f'{name}: {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
