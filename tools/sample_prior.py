"""Draw DDIM samples from a diffusion prior into one grid PNG: the quick look that a prior learned something.

    python tools/sample_prior.py -opt options/prior/adm_tiny_bundled.yml -o samples.png          # that run's prior
    python tools/sample_prior.py -opt difflid/weights/adm_tiny_bundled.pth -n 16 --size 64
    python tools/sample_prior.py -opt options/dehaze_its.yml --size 256 --device cuda             # its network_prior
    python tools/sample_prior.py -opt path/to/diffusers_folder

-opt takes a checkpoint of DiffusionPriorModel, a diffusers folder, a DiffusionPriorModel training file, or any
option file with a network_prior block (ADM presets and checkpoints, diffusers folders or trained configs).
"""
import argparse
from pathlib import Path

import difflid  # noqa: F401  registers difflid's archs

# isort: split
import torch

from difflid.priors.sampling import load_denoiser, sample_images, write_image_grid
from difflid.utils.errors import user_error_exit

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-opt', required=True, help='prior checkpoint (.pth), diffusers folder or option file')
    parser.add_argument('-o', '--output', default='results/prior_samples.png', help='grid PNG to write')
    parser.add_argument('-n', '--num', type=int, default=16, help='number of samples')
    parser.add_argument('--size', type=int, default=None, help='side of each sample (default: the prior\'s own)')
    parser.add_argument('--steps', type=int, default=50, help='DDIM steps')
    parser.add_argument('--eta', type=float, default=0.0, help='DDIM eta (0: deterministic)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args(argv)
    try:
        denoiser = load_denoiser(args.opt, ROOT)
        images = sample_images(denoiser, args.num, args.size, args.steps, args.eta, args.seed, args.device)
    except (FileNotFoundError, KeyError, ValueError, ImportError) as err:
        user_error_exit(err)
    write_image_grid(images, args.output)
    print(f'{args.num} samples of {tuple(images.shape[-2:])} from {denoiser.description} '
          f'({args.steps} DDIM steps) -> {args.output}')


if __name__ == '__main__':
    main()
