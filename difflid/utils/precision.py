"""The precision names that option files and command lines use, and their torch dtypes."""
import torch

__all__ = ['DTYPES']

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
