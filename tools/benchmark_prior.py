"""Benchmark the frozen prior: full UNet forward vs h-space extraction (forward_hspace, encoder-only model).

    python tools/benchmark_prior.py [--preset adm256_uncond] [--size 256] [--repeats 3] [--device cuda]

Random weights (speed does not depend on them). Prints seconds per image, the speed-up of h extraction
over a full forward (target: >= 2x), and on a GPU the peak memory, bf16 figures and a 1600x1200 input.
"""
import argparse
import time

import difflid  # noqa: F401  registers difflid and patches basicsr

# isort: split
import torch

from difflid.archs.adm_unet_arch import ADM_PRESETS, ADMUNet, adm_flags
from difflid.utils.padding import pad_to_multiple
from difflid.utils.precision import DTYPES


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_call(fn, x: torch.Tensor, repeats: int, dtype: torch.dtype) -> tuple[float, float | None]:
    """Median seconds per call after one warm-up, and peak GPU memory in GiB (None on CPU)."""
    device = x.device
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        fn(x)
        _sync(device)
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            _sync(device)
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else None
    return sorted(times)[len(times) // 2], peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--preset', default='adm256_uncond', choices=sorted(ADM_PRESETS))
    parser.add_argument('--size', type=int, nargs=2, default=[256, 256], metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtypes', nargs='+', default=None, choices=sorted(DTYPES),
                        help='default: fp32 on CPU, fp32 and bf16 on GPU')
    parser.add_argument('--large', type=int, nargs=2, default=[1200, 1600], metavar=('H', 'W'),
                        help='extra h-extraction size on GPU (0 0 to skip)')
    args = parser.parse_args()
    device = torch.device(args.device)
    dtypes = args.dtypes or (['fp32', 'bf16'] if device.type == 'cuda' else ['fp32'])
    torch.manual_seed(0)
    with torch.device(device):
        full = ADMUNet(**adm_flags(args.preset)).eval().requires_grad_(False)
        encoder = ADMUNet(**adm_flags(args.preset), encoder_only=True).eval().requires_grad_(False)
    encoder.load_state_dict(full.state_dict())
    n_full = sum(p.numel() for p in full.parameters())
    n_enc = sum(p.numel() for p in encoder.parameters())
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f'{args.preset}: {n_full / 1e6:.1f} M parameters (encoder-only {n_enc / 1e6:.1f} M) on {name}, '
          f'torch {torch.__version__}')
    t = torch.full((args.batch,), 500, device=device)
    x = torch.randn(args.batch, 3, *args.size, device=device)
    rows = []
    for dt in dtypes:
        runs = {
            'full forward': lambda inp: full(inp, t),
            'forward_hspace (full model)': lambda inp: full.forward_hspace(inp, t),
            'encoder-only model': lambda inp: encoder.forward_hspace(inp, t),
        }
        results = {label: time_call(fn, x, args.repeats, DTYPES[dt]) for label, fn in runs.items()}
        base = results['full forward'][0]
        for label, (sec, peak) in results.items():
            rows.append((dt, f'{args.size[0]}x{args.size[1]}', label, sec / args.batch, base / sec, peak))
        if device.type == 'cuda' and args.large[0] > 0:
            big = pad_to_multiple(torch.randn(1, 3, *args.large, device=device), encoder.downsample_factor)
            sec, peak = time_call(lambda inp: encoder.forward_hspace(inp, 500), big, args.repeats, DTYPES[dt])
            rows.append((dt, f'{args.large[0]}x{args.large[1]}', 'encoder-only model', sec, None, peak))
    print(f"{'dtype':<6} {'input':<10} {'run':<28} {'s/image':>9} {'vs full':>8} {'peak GiB':>9}")
    for dt, size, label, sec, ratio, peak in rows:
        ratio_s = f'{ratio:.2f}x' if ratio is not None else '-'
        peak_s = f'{peak:.2f}' if peak is not None else '-'
        print(f'{dt:<6} {size:<10} {label:<28} {sec:>9.3f} {ratio_s:>8} {peak_s:>9}')


if __name__ == '__main__':
    main()
