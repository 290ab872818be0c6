"""h-space probe: python tools/hspace_probe.py -opt options/probe_synthetic.yml [--device cpu] [--check]

Measures, per diffusion timestep, how far the prior's features of hazy and clear images separate content and
haze (1-NN, grouped linear probe), trains decoders D_t on clear features only (paper Eq. 5) and draws t-SNE maps,
always beside random-weight controls (probe.control_draws of them: mean and range) and image space noised with the
prior's own schedule. Every score comes with a 95 % scene-bootstrap interval, and probe.md's verdict column credits
the prior only where it lies outside the controls' range and prior - control excludes 0. Writes results/<name>/
(probe.json, probe.csv, probe.md, figures; features cached in cache/). Logic: difflid/analysis/probe.py.
With probe.degradations (a list of degradation blocks, datasets.probe a CleanImageDataset) it measures instead how
well the features tell the degradation type apart (1-NN, grouped multinomial probe), with the same controls,
intervals and verdicts (difflid/analysis/degradation_probe.py; no decoders or t-SNE).
--check checks the option file and the dataset's files, says what would run, and stops.
"""
import argparse
import sys
import time
from pathlib import Path

import difflid  # noqa: F401  registers difflid's archs and datasets, patches basicsr

# isort: split
from difflid.analysis.degradation_probe import run_degradation_probe
from difflid.analysis.probe import ProbeOptionError, load_probe_options, run_probe
from difflid.data.file_checks import check_dataset_files
from difflid.utils.errors import OptionError, user_error_exit
from difflid.utils.option_schema import validate_dataset

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-opt', '--opt', required=True, help='probe option file, e.g. options/probe_synthetic.yml')
    parser.add_argument('--device', help="override probe.device: 'auto', 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--check', action='store_true', help="check the options and the dataset's files, print what "
                                                             'would run, and stop')
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        opt = load_probe_options(args.opt)
        for warning in validate_dataset(opt['datasets']['probe'], 'datasets.probe', args.opt):
            print(f'warning: {warning}', file=sys.stderr)
        if args.check:
            check_dataset_files(opt)
            block, settings = opt['datasets']['probe'], opt['probe']
            print(f"probe {opt['name']}: prior {opt['network_prior']['type']}, dataset {block['name']} "
                  f"({block['type']}), timesteps {settings['timesteps']}, {settings['control_draws']} control draws "
                  f"-> results/{opt['name']}/\noptions and dataset files checked: nothing written")
            return
        (run_degradation_probe if opt['probe']['degradations'] else run_probe)(opt, ROOT, device=args.device)
    except (ProbeOptionError, OptionError, FileNotFoundError, ValueError) as err:
        user_error_exit(err)
    out = ROOT / 'results' / opt['name']
    print((out / 'probe.md').read_text(encoding='utf-8'))
    figures = 'separability.png' if opt['probe']['degradations'] else \
        'separability.png, tsne_*.png, decoder_grid_*.png'
    print(f'wrote {out}/ (probe.json, probe.csv, probe.md, {figures}) in {time.perf_counter() - start:.0f} s')


if __name__ == '__main__':
    main()
