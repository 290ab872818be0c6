"""SIGINT/SIGTERM during training: finish the iteration, save, say how to resume; a second signal stops at once.

Ctrl-C reaches every process of the terminal's group, and clusters send SIGTERM before preemption (SLURM's
``--signal`` too). Under torchrun the agent also forwards the signal it received to its workers, a few
milliseconds after the terminal or the scheduler did: a repeat within ``SAME_REQUEST_S`` is the same request,
not the second one that stops at once.
"""
import os
import signal
import sys
import time
from collections.abc import Callable

import torch
from torch import distributed as dist

__all__ = ['SAME_REQUEST_S', 'StopRequest']

SAME_REQUEST_S = 1.0
_HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set by the first SIGINT/SIGTERM; the training loop asks ``agreed()`` after every iteration.

    Args:
        exit_now: What a second signal calls with the exit code (128 + signal number); ``os._exit`` in the tools,
            which stops at once even inside a long torch call.
    """

    def __init__(self, exit_now: Callable[[int], object] = os._exit) -> None:
        self.signum = 0
        self._first_at = 0.0
        self._exit_now = exit_now
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for signum in _HANDLED:
            self._previous[signum] = signal.signal(signum, self.handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def handle(self, signum: int, frame: object = None) -> None:
        name = signal.Signals(signum).name
        if not self.signum:
            self.signum, self._first_at = signum, time.monotonic()
            print(f'{name}: finishing this iteration, then saving a checkpoint (send it again to stop at once, '
                  'without saving)', file=sys.stderr, flush=True)
        elif time.monotonic() - self._first_at > SAME_REQUEST_S:
            print(f'{name} again: stopping now, without saving this iteration', file=sys.stderr, flush=True)
            self._exit_now(128 + signum)

    def agreed(self, device: torch.device) -> int:
        """The signal every process stops for (0: none): under torch.distributed the largest signal number of any
        rank, so that all ranks stop after the same iteration and none waits in a collective for a rank that left."""
        if not (dist.is_available() and dist.is_initialized()):
            return self.signum
        flag = torch.tensor([self.signum], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())
