"""Keep only what a trained prior needs: its (EMA) weights and its record, optionally in float16.

    python tools/export_prior.py experiments/prior_adm_tiny_bundled/models/net_g_latest.pth \
        difflid/weights/adm_tiny_bundled.pth --fp16

The output is a DiffusionPriorModel checkpoint ({'params', 'config'}) that loads like the input wherever a prior
checkpoint is taken (network_prior.checkpoint, tools/sample_prior.py); float16 halves its size and the loaders
convert it back to the network's float32.
"""
import argparse
import pickle
from pathlib import Path

import torch

from difflid.utils.checkpoint_io import atomic_torch_save, network_state
from difflid.utils.errors import user_error_exit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help='net_g_*.pth written by DiffusionPriorModel')
    parser.add_argument('output', help='the file to write')
    parser.add_argument('--fp16', action='store_true', help='store the weights in float16')
    args = parser.parse_args(argv)
    try:
        checkpoint = torch.load(args.checkpoint, map_location='cpu', weights_only=True)
    except FileNotFoundError as err:
        user_error_exit(err)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:  # not a checkpoint
        user_error_exit(f'{args.checkpoint}: not a PyTorch checkpoint (torch.load: {type(err).__name__})')
    state, record = network_state(checkpoint) if isinstance(checkpoint, dict) else (None, {})
    if state is None or 'noise_schedule' not in record:
        user_error_exit(f'{args.checkpoint} is not a checkpoint of DiffusionPriorModel')
    if args.fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({'params': state, 'config': record}, args.output)
    size = Path(args.output).stat().st_size / 2 ** 20
    print(f'{len(state)} tensors, {sum(v.numel() for v in state.values()):,} values -> {args.output} ({size:.1f} MiB)')


if __name__ == '__main__':
    main()
