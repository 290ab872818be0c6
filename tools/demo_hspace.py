"""h-space demo: python tools/demo_hspace.py [--image FILE] [--checkpoint pretrained/256x256_diffusion_uncond.pt]

Without --checkpoint it uses the tiny prior with random weights (no downloads; numbers show the
pipeline, not ImageNet knowledge). Writes results/demo_hspace/ (hazy.png, hspace_t<t>.png, summary.json).
"""
import argparse
from pathlib import Path

import difflid  # noqa: F401  registers difflid's classes (and the torchvision alias basicsr needs)

# isort: split
import cv2
import torch

from difflid.demo import hspace_demo
from difflid.priors.adm_unet_arch import ADM_PRESETS
from difflid.priors.hspace_arch import HSpaceExtractor
from difflid.utils.errors import user_error_exit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--image', help="RGB image file (default: scikit-image's bundled 'coffee' photo)")
    parser.add_argument('--checkpoint', help='guided-diffusion state dict, e.g. 256x256_diffusion_uncond.pt')
    parser.add_argument('--preset', choices=sorted(ADM_PRESETS),
                        help='UNet preset (default: adm256_uncond with --checkpoint, else adm_tiny)')
    parser.add_argument('--timesteps', type=int, nargs='+', default=[0, 500], help='diffusion timesteps')
    parser.add_argument('--output', default=str(Path(__file__).resolve().parents[1] / 'results' / 'demo_hspace'))
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=['cpu', 'cuda'])
    args = parser.parse_args()

    if args.image:
        bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
        if bgr is None:
            user_error_exit(f'--image {args.image}: cannot read it as an image'
                            + ('' if Path(args.image).is_file() else ' (no such file)'))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        name = args.image
    else:
        from skimage import data

        rgb, name = data.coffee(), "scikit-image's 'coffee' sample"
    preset = args.preset or ('adm256_uncond' if args.checkpoint else 'adm_tiny')
    try:
        extractor = HSpaceExtractor(unet=preset, checkpoint=args.checkpoint, timesteps=args.timesteps,
                                    random_weights=args.checkpoint is None).to(args.device)
    except (FileNotFoundError, ValueError) as err:
        user_error_exit(err)
    weights = args.checkpoint or 'RANDOM weights (no checkpoint: the numbers show the pipeline only)'
    print(f'image: {name} {rgb.shape[1]}x{rgb.shape[0]}; prior: {preset}, {weights}')
    summary = hspace_demo(rgb, extractor, args.output)
    print(f"synthetic haze: PSNR of the hazy copy vs the clear image {summary['hazy_psnr']:.2f} dB")
    print(f"{'t':>5} {'h shape':>16} {'mean':>9} {'std':>9} {'cos(clear,hazy)':>16} {'rel. L2':>8}")
    for t, s in summary['timesteps'].items():
        print(f"{t:>5} {str(tuple(s['shape'])):>16} {s['mean']:>9.4f} {s['std']:>9.4f} "
              f"{s['cosine_clear_hazy']:>16.4f} {s['relative_l2_clear_hazy']:>8.4f}")
    print(f'wrote {args.output}/ (hazy.png, hspace_t<t>.png: PCA of h, clear | hazy; summary.json)')


if __name__ == '__main__':
    main()
