"""Restore your own photos in the browser: a local Gradio page (logic: difflid/deploy/web_demo.py).

    python tools/demo_app.py                     # the bundled demo dehazing model, on http://127.0.0.1:7860
    python tools/demo_app.py -opt experiments/quickstart/models/net_g_latest.pth --port 8080
    python tools/demo_app.py -opt options/test_sots_indoor.yml --device cuda
    python tools/demo_app.py -opt quickstart.onnx --max-side 2048          # exported by tools/export.py

-opt takes what tools/infer.py takes: a difflid checkpoint (.pth, .safetensors), a test or training option file
(.yml) or an ONNX model (.onnx). Without it, the small dehazing model shipped in difflid/weights/ runs. The page
binds 127.0.0.1 (this machine only) unless --host says otherwise; --share asks Gradio for a public gradio.live link
(it needs internet, and then the page's model path is fixed). Needs the demo extra: pip install -e '.[demo]'.
"""
import argparse
import os
import sys
from pathlib import Path

os.environ['GRADIO_ANALYTICS_ENABLED'] = 'False'  # before gradio is imported: it would report usage otherwise

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-opt', help='checkpoint (.pth, .safetensors), option file (.yml) or ONNX model (.onnx); '
                        'default: the demo model shipped in difflid/weights/')
    parser.add_argument('--host', default='127.0.0.1', help='address to bind (default 127.0.0.1: this machine only)')
    parser.add_argument('--port', type=int, help='port (default: 7860, or the next free one)')
    parser.add_argument('--share', action='store_true', help='also make a public gradio.live link (needs internet)')
    parser.add_argument('--device', choices=['cpu', 'cuda'], help='default: cuda when torch sees a GPU, else cpu')
    parser.add_argument('--max-side', type=int, help='images longer than this (px) are restored in tiles '
                        '(default 1024)')
    args = parser.parse_args(argv)
    # checked before the imports below, which take seconds (torch, gradio)
    if args.opt is not None and not Path(args.opt).is_file():
        print(f'error: -opt {args.opt}: no such file', file=sys.stderr)
        return 2
    if args.max_side is not None and args.max_side < 64:
        print(f'error: --max-side must be at least 64 (two tiles of 32 px), got {args.max_side}', file=sys.stderr)
        return 2

    try:
        import difflid  # noqa: F401  registers difflid's classes (and the torchvision alias basicsr needs)

        # isort: split
        from difflid.deploy import web_demo
        from difflid.utils.errors import format_user_error
    except ImportError as err:  # gradio missing: the message names the pip command
        print(f'error: {err}', file=sys.stderr)
        return 2
    device = args.device or web_demo.available_devices()[-1]
    model = args.opt or web_demo.DEFAULT_MODEL
    try:  # a model that cannot load fails here, not at the first request
        web_demo.load_restorer(model, device, 0, ROOT)
    except web_demo.MODEL_ERRORS as err:
        print(format_user_error(err), file=sys.stderr)
        return 2
    app = web_demo.build_app(model, device, args.max_side or web_demo.DEFAULT_MAX_SIDE, ROOT,
                             model_editable=not args.share)
    print(f'model: {model} on {device}')
    app.launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


if __name__ == '__main__':
    sys.exit(main())
