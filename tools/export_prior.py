"""Keep only what a trained prior needs: its (EMA) weights and its record, optionally in float16.

    python tools/export_prior.py experiments/prior_adm_tiny_bundled/models/net_g_latest.pth \
        difflid/weights/adm_tiny_bundled.pth --fp16

The output is a DiffusionPriorModel checkpoint ({'params', 'config'}) that loads like the input wherever a prior
checkpoint is taken (network_prior.checkpoint, tools/sample_prior.py); float16 halves its size and the loaders
convert it back to the network's float32. ``--format safetensors`` (or an output name ending in .safetensors) writes
it as safetensors, the record in the file's metadata as JSON: loading it runs no pickle. The input may be either.
"""
import argparse
from pathlib import Path

from difflid.utils.checkpoint_io import CHECKPOINT_FORMATS, network_state, read_checkpoint, save_checkpoint
from difflid.utils.errors import OptionError, user_error_exit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help='net_g_*.pth (or .safetensors) written by DiffusionPriorModel')
    parser.add_argument('output', help='the file to write')
    parser.add_argument('--fp16', action='store_true', help='store the weights in float16')
    parser.add_argument('--format', choices=sorted(CHECKPOINT_FORMATS), default=None,
                        help="the output's format (default: by its suffix, .safetensors or else pth); the suffix is "
                             'set to match')
    args = parser.parse_args(argv)
    output = Path(args.output)
    fmt = args.format or ('safetensors' if output.suffix == '.safetensors' else 'pth')
    if output.suffix != CHECKPOINT_FORMATS[fmt]:
        output = output.with_suffix(CHECKPOINT_FORMATS[fmt])
    if not Path(args.checkpoint).is_file():
        user_error_exit(f'{args.checkpoint}: No such file or directory')
    try:
        checkpoint = read_checkpoint(args.checkpoint)
    except OptionError as err:  # not a checkpoint
        user_error_exit(err)
    state, record = network_state(checkpoint) if isinstance(checkpoint, dict) else (None, {})
    if state is None or 'noise_schedule' not in record:
        user_error_exit(f'{args.checkpoint} is not a checkpoint of DiffusionPriorModel')
    if args.fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    output.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({'params': state, 'config': record}, output)
    size = output.stat().st_size / 2 ** 20
    print(f'{len(state)} tensors, {sum(v.numel() for v in state.values()):,} values -> {output} ({size:.1f} MiB)')


if __name__ == '__main__':
    main()
