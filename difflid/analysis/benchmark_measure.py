"""What the benchmark (``difflid.analysis.benchmark``) measures with: time, peak memory, FLOPs, attention kernels.

Kept apart from the report so that each one can be checked on a case with a known answer (a known sleep, a known
allocation, a convolution whose FLOPs are a formula) without running a benchmark.
"""
import gc
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ['BF16_PEAK_TFLOPS', 'GIB', 'Holder', 'PeakResidentGrowth', 'Timing', 'attention_kernels',
           'bf16_peak_tflops', 'count_flops', 'measure', 'measure_or_oom', 'resident_bytes', 'synchronize',
           'tensor_bytes']

GIB = 2 ** 30
# bf16 dense tensor-core peaks in TFLOP/s (NVIDIA datasheets, without sparsity), by a part of the device name
BF16_PEAK_TFLOPS = (('H200', None, 989.4), ('H100', ('SXM', 'HBM3'), 989.4), ('A100', None, 312.0))
# parts of the profiler's event names that belong to scaled_dot_product_attention (aten ops and CUDA kernels)
_ATTENTION_KEYWORDS = ('flash', 'fmha', 'efficient', 'scaled_dot_product', 'sdpa')

Holder = nn.Module | torch.optim.Optimizer | torch.Tensor


@dataclass
class Timing:
    """Median seconds per call, peak memory in GiB (None where not measurable), the first call's seconds."""

    seconds: float
    peak_gib: float | None
    first_call_s: float | None = None


def resident_bytes() -> int | None:
    """Resident memory of this process (Linux /proc); None elsewhere."""
    try:
        pages = int(Path('/proc/self/statm').read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf('SC_PAGE_SIZE')


class PeakResidentGrowth:
    """Peak growth of the process's resident memory while the block runs, sampled every 5 ms by a thread (torch
    releases the GIL in its kernels): the CPU's stand-in for torch.cuda.max_memory_allocated. It misses peaks
    shorter than the sampling interval, and memory the allocator kept from earlier calls."""

    def __enter__(self) -> 'PeakResidentGrowth':
        self.base = resident_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self.base is not None:
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, resident_bytes() or 0)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.base is not None:
            self._thread.join()
            self.peak = max(self.peak, resident_bytes() or 0)

    @property
    def gib(self) -> float | None:
        """The growth in GiB; None where resident memory cannot be read."""
        return None if self.base is None else (self.peak - self.base) / GIB


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that a timer stopped after it counts it; nothing on the CPU."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def tensor_bytes(*holders: Holder) -> int:
    """Bytes of the distinct tensors that ``holders`` keep: parameters and buffers, optimizer state, tensors.

    A storage shared by several holders (a view, a tied weight) counts once.
    """
    seen, total = set(), 0
    for holder in holders:
        if isinstance(holder, nn.Module):
            tensors = [*holder.parameters(), *holder.buffers()]
        elif isinstance(holder, torch.optim.Optimizer):
            tensors = [v for state in holder.state.values() for v in state.values() if torch.is_tensor(v)]
        else:
            tensors = [holder]
        for tensor in tensors:
            storage = tensor.untyped_storage()
            key = (tensor.device, storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
    return total


def measure(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int,
            holders: Sequence[Holder] = ()) -> Timing:
    """Time ``fn`` (median of ``repeats`` calls after ``warmup`` untimed ones).

    Peak memory is the same quantity on both devices: the tensors the row keeps (``holders``: its weights, optimizer
    state, inputs) plus the most the timed calls allocate on top (on a GPU the growth of
    torch.cuda.max_memory_allocated, on the CPU the growth of resident memory). Other models that happen to be
    loaded do not count.
    """
    first = None
    for i in range(warmup):
        start = time.perf_counter()
        fn()
        synchronize(device)
        if i == 0:
            first = time.perf_counter() - start
    gc.collect()
    kept = tensor_bytes(*holders) / GIB
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        start_allocated = torch.cuda.memory_allocated(device)
    times = []
    with PeakResidentGrowth() as resident:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
    if device.type == 'cuda':
        growth = (torch.cuda.max_memory_allocated(device) - start_allocated) / GIB
    else:
        growth = resident.gib
    return Timing(statistics.median(times), None if growth is None else kept + growth, first)


def measure_or_oom(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int,
                   holders: Sequence[Holder] = ()) -> Timing | None:
    """``measure``, or None when the GPU runs out of memory (the memory is released for the next run)."""
    try:
        return measure(fn, device, repeats, warmup, holders)
    except torch.cuda.OutOfMemoryError:
        gc.collect()
        torch.cuda.empty_cache()
        return None


def count_flops(build: Callable[[], nn.Module], run: Callable[[nn.Module], object], grad: bool = False) -> int:
    """FLOPs of ``run(build())`` by torch.utils.flop_counter (1 multiply-add = 2 FLOPs), on fake tensors: nothing is
    allocated or computed, so the 552 M-parameter UNet at 1600×1200 counts in a second. Attention is counted through
    the math backend (FlopCounterMode has no formula for the CPU's fused SDPA kernel, which would count 0); its
    matmuls are the FLOPs of every backend. ``grad``: autograd on, so that ``run`` may call ``backward()`` (a training
    step), whose FLOPs count too; elementwise work (an optimizer's update, normalisations) has no formula and
    counts 0."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with FakeTensorMode(allow_non_fake_inputs=True), sdpa_kernel(SDPBackend.MATH), torch.set_grad_enabled(grad):
        module = build()
        with counter:
            run(module)
    return counter.get_total_flops()


def bf16_peak_tflops(device_name: str) -> float | None:
    """The bf16 dense peak of a GPU in ``BF16_PEAK_TFLOPS``, None for others (and the CPU)."""
    for part, variants, peak in BF16_PEAK_TFLOPS:
        if part in device_name and (variants is None or any(v in device_name for v in variants)):
            return peak
    return None


def attention_kernels(names: Sequence[str]) -> dict[str, str]:
    """Which SDPA implementations a profile's event names show: the aten op names
    (``aten::_scaled_dot_product_flash_attention``, ``..._efficient_attention``, ``..._cudnn_attention``,
    ``..._attention_math``) and the CUDA kernels (``pytorch_flash::flash_fwd_kernel``, ``fmha_cutlass*``,
    ``cudnn_*_sdpa_*``). Returns yes/no per implementation and the names seen."""
    seen = sorted({n for n in names if any(k in n.lower() for k in _ATTENTION_KEYWORDS)})
    lowered = [n.lower() for n in seen]

    def shows(test: Callable[[str], bool]) -> str:
        return 'yes' if any(test(n) for n in lowered) else 'no'

    return {
        'flash': shows(lambda n: 'flash' in n),
        'memory-efficient': shows(lambda n: 'efficient' in n or 'fmha' in n),
        'cuDNN': shows(lambda n: 'cudnn' in n),
        'math fallback': shows(lambda n: 'math' in n),
        'kernels seen': '; '.join(n[:80] for n in seen) or 'none',
    }
