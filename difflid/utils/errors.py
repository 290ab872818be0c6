"""User errors the tools print without a traceback, and the messages several layers give."""
import sys
from typing import NoReturn

__all__ = ['USER_ERROR_EXIT', 'OptionError', 'data_parallel_message', 'format_user_error', 'user_error_exit']

USER_ERROR_EXIT = 2  # argparse's code for a bad command line; a bad option file or input is the same kind of mistake
MAX_DETAIL_LINES = 10


class OptionError(ValueError):
    """An option file that cannot run as written; the tools print it without a traceback."""


def data_parallel_message(model_type: str, num_gpu: int) -> str:
    """Why difflid's models refuse DataParallel in training, and what to run instead."""
    return (f'{model_type} does not train with DataParallel, which basicsr uses for num_gpu: {num_gpu} without a '
            'launcher (the frozen prior would run the whole batch on GPU 0, and the batch would grow with the GPU '
            f'count). Train on {num_gpu} GPUs with one process each: torchrun --nproc_per_node={num_gpu} '
            'tools/train.py -opt <option file> --launcher pytorch; or on one GPU: set num_gpu: 1 '
            '(or CUDA_VISIBLE_DEVICES=0).')


def format_user_error(err: BaseException | str, max_detail: int = MAX_DETAIL_LINES) -> str:
    """``error: <first line>`` then at most ``max_detail`` lines of detail, and how many more were left out.

    A ``FileNotFoundError`` raised by ``open()`` carries its path in ``filename``: named here so the message
    always says which file, first (``missing.pth: No such file or directory``, not ``[Errno 2] ...``)."""
    text = str(err) if not isinstance(err, KeyError) else str(err.args[0]) if err.args else 'KeyError'
    if isinstance(err, OSError) and err.filename and (str(err.filename) not in text or text.startswith('[Errno')):
        text = f'{err.filename}: {err.strerror or text}'
    lines = [line for line in text.strip().splitlines() if line.strip()] or [type(err).__name__]
    head, detail = lines[0], lines[1:]
    if len(detail) > max_detail:
        detail = detail[:max_detail] + [f'... and {len(detail) - max_detail} more line(s)']
    return '\n'.join([f'error: {head.removeprefix("error: ")}', *detail])


def user_error_exit(err: BaseException | str) -> NoReturn:
    """What a tool does with a user error (bad option, missing input): the message on stderr, exit code 2, no
    traceback. Bugs are not caught and keep their traceback."""
    print(format_user_error(err), file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_EXIT)
