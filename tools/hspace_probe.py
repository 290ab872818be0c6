"""h-space probe: python tools/hspace_probe.py -opt options/probe_synthetic.yml [--device cpu]

Measures, per diffusion timestep, how far the prior's features of hazy and clear images separate content and
haze (1-NN, grouped linear probe), trains decoders D_t on clear features only (paper Eq. 5) and draws t-SNE maps,
always beside random-weight controls (probe.control_draws of them: mean and range) and image space noised with the
prior's own schedule. Every score comes with a 95 % scene-bootstrap interval, and probe.md's verdict column credits
the prior only where it lies outside the controls' range and prior - control excludes 0. Writes results/<name>/
(probe.json, probe.csv, probe.md, figures; features cached in cache/). Logic: difflid/analysis/probe.py.
"""
import argparse
import sys
import time
from pathlib import Path

import difflid  # noqa: F401  registers difflid's archs and datasets, patches basicsr

# isort: split
from difflid.analysis.probe import ProbeOptionError, load_probe_options, run_probe

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-opt', '--opt', required=True, help='probe option file, e.g. options/probe_synthetic.yml')
    parser.add_argument('--device', help="override probe.device: 'auto', 'cpu', 'cuda' or 'cuda:N'")
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        opt = load_probe_options(args.opt)
        run_probe(opt, ROOT, device=args.device)
    except (ProbeOptionError, FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    out = ROOT / 'results' / opt['name']
    print((out / 'probe.md').read_text(encoding='utf-8'))
    print(f'wrote {out}/ (probe.json, probe.csv, probe.md, separability.png, tsne_*.png, decoder_grid_*.png) '
          f'in {time.perf_counter() - start:.0f} s')


if __name__ == '__main__':
    main()
