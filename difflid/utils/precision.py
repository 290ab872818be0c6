"""The precision names that option files and command lines use, their torch dtypes, and autocast for them.

Two rules hold everywhere: a component whose option says 'fp32' does not switch an enclosing autocast off, and
'auto' (the frozen priors' default) means bf16 on a CUDA GPU that has it and fp32 elsewhere, unless the caller
already runs an autocast, which it then leaves in force.
"""
from contextlib import AbstractContextManager, nullcontext

import torch

__all__ = ['DTYPES', 'PRECISIONS', 'autocast', 'component_autocast', 'resolve_channels_last', 'resolve_dtype']

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
# the values a frozen prior's ``dtype`` option takes: 'auto' decides by the device the input is on
PRECISIONS = ('auto', *DTYPES)


def autocast(device_type: str, dtype: torch.dtype) -> AbstractContextManager:
    """Autocast to ``dtype``, or, for float32, no context at all.

    NOTE: ``torch.autocast(..., enabled=False)`` would switch an enclosing autocast *off*: a module whose own
    option says fp32 would then silently undo the caller's bf16 (inference, validation). float32 here means
    "nothing asked for", so the caller's precision stays in force.
    """
    return nullcontext() if dtype == torch.float32 else torch.autocast(device_type, dtype=dtype)


def _cuda_has_bf16(device: torch.device) -> bool:
    """Whether the GPU computes bf16 natively (compute capability 8.0, Ampere, and later). Without a visible GPU
    the question cannot be asked; the answer is then yes, as for every data-centre GPU since 2020 (nothing runs
    on such a device anyway)."""
    if not torch.cuda.is_available():
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The dtype a component whose ``dtype`` option is ``name`` computes in on ``device``.

    'auto' is bf16 on a CUDA device with native bf16 (the frozen prior: 2-3x faster, half the activation memory,
    features within the tolerance that ``tests/test_gpu_paths.py`` measures) and fp32 elsewhere: on the CPU bf16
    is emulated and slower, and on older GPUs bf16 autocast fails. Other names map through ``DTYPES``.
    """
    if name not in PRECISIONS:
        raise ValueError(f'dtype must be one of {list(PRECISIONS)}, got {name!r}')
    if name != 'auto':
        return DTYPES[name]
    device = torch.device(device)
    return torch.bfloat16 if device.type == 'cuda' and _cuda_has_bf16(device) else torch.float32


def component_autocast(name: str, device: torch.device) -> AbstractContextManager:
    """The autocast a component whose ``dtype`` option is ``name`` runs under on ``device``.

    An explicit name is ``autocast`` of its dtype (so 'fp32' leaves an enclosing autocast in force, and 'bf16'
    sets bf16 whatever encloses it). 'auto' yields to an enclosing autocast, whose precision the caller chose
    (``tools/infer.py --dtype``), and otherwise is ``resolve_dtype``'s choice for the device.
    """
    device = torch.device(device)
    if name == 'auto' and torch.is_autocast_enabled(device.type):
        return nullcontext()
    return autocast(device.type, resolve_dtype(name, device))


def resolve_channels_last(option: bool | None, device: torch.device | str) -> bool:
    """Whether to run convolutions in channels_last layout: ``option`` when given, else on CUDA only (cuDNN's
    tensor-core kernels want NHWC; on the CPU oneDNN reorders anyway and the gain is nil or negative)."""
    if option is not None:
        return bool(option)
    return torch.device(device).type == 'cuda'
