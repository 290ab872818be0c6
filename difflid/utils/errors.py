"""User errors the tools print without a traceback, and the messages several layers give."""

__all__ = ['OptionError', 'data_parallel_message']


class OptionError(ValueError):
    """An option file that cannot run as written; the tools print it without a traceback."""


def data_parallel_message(model_type: str, num_gpu: int) -> str:
    """Why difflid's models refuse DataParallel in training, and what to run instead."""
    return (f'{model_type} does not train with DataParallel, which basicsr uses for num_gpu: {num_gpu} without a '
            'launcher (the frozen prior would run the whole batch on GPU 0, and the batch would grow with the GPU '
            f'count). Train on {num_gpu} GPUs with one process each: torchrun --nproc_per_node={num_gpu} '
            'tools/train.py -opt <option file> --launcher pytorch; or on one GPU: set num_gpu: 1 '
            '(or CUDA_VISIBLE_DEVICES=0).')
