"""The precision names that option files and command lines use, their torch dtypes, and autocast for them."""
from contextlib import AbstractContextManager, nullcontext

import torch

__all__ = ['DTYPES', 'autocast']

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def autocast(device_type: str, dtype: torch.dtype) -> AbstractContextManager:
    """Autocast to ``dtype``, or, for float32, no context at all.

    NOTE: ``torch.autocast(..., enabled=False)`` would switch an enclosing autocast *off*: a module whose own
    option says fp32 would then silently undo the caller's bf16 (inference, validation). float32 here means
    "nothing asked for", so the caller's precision stays in force.
    """
    return nullcontext() if dtype == torch.float32 else torch.autocast(device_type, dtype=dtype)
