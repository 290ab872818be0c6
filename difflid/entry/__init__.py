"""The tools' entry points: difflid owns the start-up and the training loop, built from basicsr's parts.

basicsr 1.4.2's ``train_pipeline``/``test_pipeline`` create or archive folders before building the datasets, install
no signal handling and restart an epoch from its first batch after a resume. ``train`` and ``test`` keep their
options and outputs (folder layout, log names, checkpoint and state files; runs of either resume with the other's
states) and add: every check before any folder exists (``startup``), SIGINT/SIGTERM that save (``signals``), exact
resume (``training``), CPU-safe and working-directory-independent resume, gloo on the CPU, ``total_batch_size`` and
the epoch count from the loader's real length. ``import difflid`` changes nothing in basicsr but a torchvision alias
(``difflid.compat``); DDP of CPU networks and the DataParallel policy live in ``RestorationModel.model_to_device``.
"""
import sys
from collections.abc import Callable
from pathlib import Path

from difflid.entry.signals import StopRequest
from difflid.entry.startup import (
    derive_options,
    init_dist,
    load_resume_state,
    parse_arguments,
    prepare_options,
    translate_options,
)
from difflid.entry.testing import test
from difflid.entry.training import create_train_val_loaders, train
from difflid.utils.errors import OptionError, data_parallel_message, user_error_exit

__all__ = ['OptionError', 'StopRequest', 'create_train_val_loaders', 'data_parallel_message', 'derive_options',
           'init_dist', 'load_resume_state', 'main', 'parse_arguments', 'prepare_options', 'test', 'train',
           'translate_options']

INTERRUPTED_EXIT = 130


def main(run: Callable[[Path, list[str]], None], root: str | Path, argv: list[str] | None = None) -> None:
    """What tools/train.py and tools/test.py do: ``run(root, argv)``; a user error (bad option, missing input) is
    printed as ``error: ...`` with exit code 2 and no traceback; Ctrl-C outside the training loop (which saves
    first) exits 130 with one line."""
    try:
        run(Path(root), sys.argv[1:] if argv is None else argv)
    except (OptionError, FileNotFoundError) as err:
        user_error_exit(err)
    except KeyboardInterrupt:  # before the training loop's own handling, or in a test
        print('interrupted (Ctrl-C)', file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED_EXIT)
