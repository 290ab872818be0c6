"""Speed and memory of DiffLI²D, measured against the released code's way.

    python tools/benchmark.py [--device cuda] [--sizes 128x128 256x256 620x460 1600x1200] [--train-batch 40]
                              [--compile] [--sections prior train val infer flops kernels] [--quick] [--json FILE]

Random weights throughout (speed does not depend on them): the real ``adm256_uncond`` prior and the default
``DiffLI2D`` (h_channels 1024). "The released code's way" is guided-diffusion's own UNet (the
``guided-diffusion-sdk`` package of the dev extra; difflid's ADMUNet stands in, and the row says so, when it is
not installed): a full forward, one pass per timestep (t = 0, then t = 500), fp32. "difflid's way" is
``HSpaceExtractor``: the encoder and middle block only, both timesteps in one batched pass, with its default
``dtype: auto`` (bf16 autocast on a GPU, fp32 on the CPU) and ``channels_last`` (on a GPU), optionally
``torch.compile`` (``--compile``).

Sections (one Markdown table each; ``--json FILE`` writes the same figures):
  1 prior: latency, images/s, peak memory and speed-up at 128², 256², 620×460 (SOTS) and 1600×1200 (Dense/NH-HAZE);
  2 training step at the paper's recipe (batch 40 of 128² crops, prior + DiffLI2D forward/backward/Adam), without
    and with DiffLoss, and the hours 420 k iterations take;
  3 validation: first and second pass over a set of 256² images with cached prior features (the quickstart model);
  4 inference end to end (prior + network) at 256² and SOTS size;
  5 parameters and FLOPs (torch.utils.flop_counter), with the fraction of the GPU's bf16 peak in section 1;
  6 attention kernels: which scaled_dot_product_attention kernels ran (GPU only, torch.profiler).

Sizes are written width×height. On the CPU the large sizes take minutes per image, so only those up to 256² run
unless ``--sizes`` names them. ``--quick`` (seconds on a CPU: the tiny prior and the quickstart network, batch 2,
one repeat) checks that the tool works; its figures mean nothing.
"""
import argparse
import functools
import gc
import json
import os
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import difflid  # noqa: F401  registers difflid and patches basicsr

# isort: split
import torch
import yaml
from basicsr.archs import build_network
from torch import nn
from torch.nn import functional as F

from difflid.inference import restore
from difflid.losses.diffloss_loss import DiffLoss
from difflid.priors.adm_unet_arch import ADMUNet, adm_flags
from difflid.priors.hspace_arch import HSpaceExtractor
from difflid.priors.schedules import to_diffusion_range
from difflid.utils.options import resolve_option_file
from difflid.utils.padding import pad_to_multiple
from difflid.utils.precision import resolve_dtype

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = REPO_ROOT / 'options' / '_base_' / 'quickstart.yml'
TIMESTEPS = (0, 500)  # paper Sec. 5.3: t1 = 0 (content), t2 = 500 (haze)
PAPER_ITERATIONS = 420_000  # options/dehaze_its.yml: 1200 epochs x 349 iterations = 418,800, rounded
GIB = 2 ** 30
# (width, height, name) of section 1; section 4 uses 256² and SOTS
PRIOR_SIZES = ((128, 128, ''), (256, 256, ''), (620, 460, 'SOTS'), (1600, 1200, 'Dense/NH-HAZE'))
INFER_SIZES = ((256, 256, ''), (620, 460, 'SOTS'))
CPU_MAX_PIXELS = 256 * 256  # larger sizes take minutes per image on a CPU: run only when --sizes names them
SKIPPED_ON_CPU = 'skipped on CPU (--sizes to force)'
OUT_OF_MEMORY = 'cannot run (out of memory)'
# DiffLoss at batch 40 must fit one 80 GB GPU: an H100/A100 80GB has 79.6 GiB, of which the CUDA context takes ~1
GPU_MEMORY_BUDGET_GIB = 78.5
# bf16 dense tensor-core peaks in TFLOP/s (NVIDIA datasheets, without sparsity), by a part of the device name
BF16_PEAK_TFLOPS = (('H200', None, 989.4), ('H100', ('SXM', 'HBM3'), 989.4), ('A100', None, 312.0))
SECTIONS = ('prior', 'train', 'val', 'infer', 'flops', 'kernels')

Cell = float | int | str | None


@dataclass
class Table:
    """One section: a Markdown table and the notes under it; ``--json`` holds the same cells, unformatted."""

    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f'### {self.title}', '', '| ' + ' | '.join(self.columns) + ' |',
                 '|' + '---|' * len(self.columns)]
        lines += ['| ' + ' | '.join(format_cell(c) for c in row) + ' |' for row in self.rows]
        return '\n'.join(lines + [''] + [f'- {note}' for note in self.notes])


def format_cell(value: Cell) -> str:
    """Three significant figures at most; '-' for no value. Every number prints as something float() reads."""
    if value is None:
        return '-'
    if isinstance(value, str | int):
        return str(value)
    size = abs(value)
    if size >= 100:
        return f'{value:.0f}'
    if size >= 10:
        return f'{value:.1f}'
    if size >= 1:
        return f'{value:.2f}'
    return f'{value:.3g}'


@dataclass
class Timing:
    """Median seconds per call, peak memory in GiB (None where not measurable), the first call's seconds."""

    seconds: float
    peak_gib: float | None
    first_call_s: float | None = None


def _resident_bytes() -> int | None:
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
        self.base = _resident_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self.base is not None:
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _resident_bytes() or 0)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.base is not None:
            self._thread.join()
            self.peak = max(self.peak, _resident_bytes() or 0)

    @property
    def gib(self) -> float | None:
        return None if self.base is None else (self.peak - self.base) / GIB


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


Holder = nn.Module | torch.optim.Optimizer | torch.Tensor


def tensor_bytes(*holders: Holder) -> int:
    """Bytes of the distinct tensors that ``holders`` keep: parameters and buffers, optimizer state, tensors."""
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


def count_flops(build: Callable[[], nn.Module], run: Callable[[nn.Module], object]) -> int:
    """FLOPs of ``run(build())`` by torch.utils.flop_counter, on fake tensors: nothing is allocated or computed,
    so the 552 M-parameter UNet at 1600×1200 counts in a second. Attention is counted through the math backend
    (FlopCounterMode has no formula for the CPU's fused SDPA kernel); its matmuls are the FLOPs of every backend."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with FakeTensorMode(allow_non_fake_inputs=True), sdpa_kernel(SDPBackend.MATH), torch.no_grad():
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


def parse_size(text: str) -> tuple[int, int]:
    """'620x460' -> (620, 460), width first."""
    try:
        width, height = (int(v) for v in text.lower().replace('×', 'x').split('x'))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f'sizes are WIDTHxHEIGHT, e.g. 620x460; got {text!r}') from err
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f'sizes must be positive, got {text!r}')
    return width, height


def size_label(width: int, height: int, name: str = '') -> str:
    return f'{width}×{height}' + (f' ({name})' if name else '')


class Bench:
    """The settings, the device and the models the sections share (built once, freed after their last use)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.gpu = self.device.type == 'cuda'
        self.preset = 'adm_tiny' if args.quick else 'adm256_uncond'
        self.repeats = args.repeats if args.repeats is not None else (1 if args.quick or not self.gpu else 3)
        self.warmup = args.warmup if args.warmup is not None else (1 if self.gpu else 0)
        self.train_batch = args.train_batch if args.train_batch is not None else (
            2 if args.quick or not self.gpu else 40)
        self.val_images = args.val_images if args.val_images is not None else (2 if args.quick else 8)
        self.forced_sizes = set(args.sizes or ())
        self.quickstart = self._quickstart_options()
        self.network_opt = dict(self.quickstart['network_g']) if args.quick else {'type': 'DiffLI2D'}
        self.device_name = (torch.cuda.get_device_name(self.device) if self.gpu
                            else f'CPU, {torch.get_num_threads()} threads')
        self.peak_tflops = bf16_peak_tflops(self.device_name) if self.gpu else None
        self._released: tuple[nn.Module, str] | None = None
        self._extractor: HSpaceExtractor | None = None
        self.flops: dict[tuple[str, int, int], int] = {}

    @staticmethod
    def _quickstart_options() -> dict:
        return yaml.safe_load(resolve_option_file(QUICKSTART).read_text(encoding='utf-8'))

    def runs(self, width: int, height: int) -> bool:
        return self.gpu or (width, height) in self.forced_sizes or width * height <= CPU_MAX_PIXELS

    def network(self) -> nn.Module:
        torch.manual_seed(0)
        return build_network(dict(self.network_opt)).to(self.device)

    def extractor(self, dtype: str = 'auto', compile: bool = False, encoder_only: bool = True) -> HSpaceExtractor:
        """difflid's prior, random weights; the default one is kept for sections 1, 4 and 6."""
        default = dtype == 'auto' and not compile and encoder_only
        if default and self._extractor is not None:
            return self._extractor
        prior = HSpaceExtractor(unet=self.preset, random_weights=True, timesteps=TIMESTEPS, dtype=dtype,
                                compile=compile, encoder_only=encoder_only).to(self.device)
        if default:
            self._extractor = prior
        return prior

    def released(self) -> tuple[nn.Module, str]:
        """The released code's UNet (full, fp32) and the row label saying which implementation it is."""
        if self._released is None:
            torch.manual_seed(0)
            try:
                with warnings.catch_warnings():  # guided-diffusion's torch.cuda.amp decorators are deprecated
                    warnings.simplefilter('ignore', FutureWarning)
                    from guided_diffusion.script_util import create_model
                model, label = create_model(**adm_flags(self.preset)), 'released way (guided-diffusion UNet)'
            except ImportError:
                model = ADMUNet(**adm_flags(self.preset))
                label = 'released way (difflid ADMUNet full forward: guided-diffusion-sdk not installed)'
            self._released = model.to(self.device).eval().requires_grad_(False), label
        return self._released

    def free(self) -> None:
        self._released = self._extractor = None
        gc.collect()
        if self.gpu:
            torch.cuda.empty_cache()

    def image(self, width: int, height: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(batch, 3, height, width, generator=gen).to(self.device)


def released_features(model: nn.Module, img: torch.Tensor, multiple: int) -> list[torch.Tensor]:
    """The released code's way: the full UNet, one pass per timestep; returns each pass's middle-block output (the
    h-space a network is guided by), caught by a hook."""
    caught: list[torch.Tensor] = []
    hook = model.middle_block.register_forward_hook(lambda module, args, out: caught.append(out))
    try:
        x = to_diffusion_range(pad_to_multiple(img, multiple))
        with torch.no_grad():
            for t in TIMESTEPS:
                model(x, torch.full((x.shape[0],), t, device=x.device))
    finally:
        hook.remove()
    return caught


def prior_flops(bench: Bench, width: int, height: int) -> tuple[int, int]:
    """(difflid's way, released way) FLOPs of the prior for one image, both timesteps."""
    key = (bench.preset, width, height)
    if key not in bench.flops:
        ours = count_flops(lambda: HSpaceExtractor(unet=bench.preset, random_weights=True, timesteps=TIMESTEPS,
                                                   dtype='fp32'),
                           lambda prior: prior(torch.rand(1, 3, height, width)))

        def released_way(unet: ADMUNet) -> None:
            f = unet.downsample_factor
            x = torch.randn(1, 3, -(-height // f) * f, -(-width // f) * f)
            for t in TIMESTEPS:
                unet(x, torch.tensor([t]))

        theirs = count_flops(lambda: ADMUNet(**adm_flags(bench.preset)), released_way)
        bench.flops[key] = ours, theirs
    return bench.flops[key]


def prior_section(bench: Bench) -> Table:
    table = Table('1. Prior: released way vs difflid\'s way (batch 1, both timesteps)',
                  ['size', 'way', 'latency (s)', 'images/s', 'peak memory (GiB)', 'speed-up vs released (×)',
                   'bf16 peak (%)', 'compile (s)'])
    sizes = [*PRIOR_SIZES, *((w, h, '') for w, h in bench.args.sizes or () if (w, h) not in
                             {(pw, ph) for pw, ph, _ in PRIOR_SIZES})]
    variants = [('fp32', False), ('auto', False)] if bench.gpu else [('auto', False)]
    if bench.args.compile:
        variants.append(('auto', True))
    priors = {variant: bench.extractor(*variant) for variant in variants}  # built once: compiled once
    released, released_label = bench.released()
    factor = bench.extractor().downsample_factor
    for width, height, name in sizes:
        label = size_label(width, height, name)
        if not bench.runs(width, height):
            table.rows.append([label, 'all', SKIPPED_ON_CPU, None, None, None, None, None])
            continue
        img = bench.image(width, height)
        base = measure_or_oom(functools.partial(released_features, released, img, factor), bench.device,
                              bench.repeats, bench.warmup, (released, img))
        if base is None:
            table.rows.append([label, released_label + ', fp32', OUT_OF_MEMORY, None, None, None, None, None])
        else:
            table.rows.append([label, released_label + ', fp32', base.seconds, 1 / base.seconds, base.peak_gib, 1.0,
                               None, None])
        flops = prior_flops(bench, width, height)[0]
        for (dtype, compiled), prior in priors.items():
            warmup = max(bench.warmup, 1) if compiled else bench.warmup  # the first call compiles
            timing = measure_or_oom(functools.partial(prior, img), bench.device, bench.repeats, warmup, (prior, img))
            resolved = resolve_dtype(dtype, bench.device)
            way = (f"difflid's way (encoder only, 1 batched pass), dtype {dtype}"
                   + (f' = {str(resolved).removeprefix("torch.")}' if dtype == 'auto' else '')
                   + (' + torch.compile' if compiled else ''))
            if timing is None:
                table.rows.append([label, way, OUT_OF_MEMORY, None, None, None, None, None])
                continue
            peak_pct = (100 * flops / timing.seconds / (bench.peak_tflops * 1e12)
                        if bench.peak_tflops and resolved == torch.bfloat16 else None)
            compile_s = timing.first_call_s - timing.seconds if compiled and timing.first_call_s else None
            table.rows.append([label, way, timing.seconds, 1 / timing.seconds, timing.peak_gib,
                               base.seconds / timing.seconds if base else None, peak_pct, compile_s])
    del priors
    table.notes += [
        "Both ways get the same image; difflid's way includes its padding and position-indexed noise.",
        'Peak memory: the row\'s weights and input plus the most its calls allocate on top (GPU: '
        'torch.cuda.max_memory_allocated; CPU: resident memory sampled every 5 ms, a lower bound, as the allocator '
        'reuses memory that earlier calls freed).',
        'bf16 peak (%): FLOPs (section 5) per second over the GPU\'s bf16 dense peak, for bf16 rows on a GPU of '
        'known peak (H100 SXM, H200: 989.4 TFLOP/s; A100: 312).',
        'compile (s): the first call minus a later one, with --compile.',
    ]
    return table


def train_step(net: nn.Module, prior: HSpaceExtractor, optimizer: torch.optim.Optimizer, lq: torch.Tensor,
               gt: torch.Tensor, diffloss: DiffLoss | None) -> None:
    """One iteration of DiffLI2DModel's training: fresh-noise prior features, L1 (+ DiffLoss), Adam."""
    f_cim, f_hae = prior.guidance(lq, fresh_noise=True)
    out = net(lq, f_cim, f_hae)
    loss = F.l1_loss(out, gt)
    if diffloss is not None:
        loss = loss + sum(term for term in diffloss(out, gt) if term is not None)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def time_training(bench: Bench, prior: HSpaceExtractor, lq: torch.Tensor, gt: torch.Tensor,
                  make_loss: Callable[[], DiffLoss] | None) -> Timing | None:
    """Training steps of a new network (and its Adam state), freed on return."""
    net = bench.network().train()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.9, 0.999))
    diffloss = make_loss().to(bench.device) if make_loss else None
    holders = (net, prior, optimizer, lq, gt, *((diffloss,) if diffloss else ()))
    return measure_or_oom(functools.partial(train_step, net, prior, optimizer, lq, gt, diffloss), bench.device,
                          bench.repeats, bench.warmup, holders)


def train_section(bench: Bench) -> Table:
    batch = bench.train_batch
    table = Table(f'2. Training step (128² crops, batch {batch}, Adam)',
                  ['run', 'batch', 'it/s', 's/it', 'peak memory (GiB)', f'hours for {PAPER_ITERATIONS:,} it'])
    bench.free()  # the GPU holds only this section's tensors: its peak memory is what training needs
    # one prior with its decoder, so that DiffLoss runs on its UNet (as DiffLI2DModel shares it)
    prior = bench.extractor(encoder_only=False)
    lq, gt = bench.image(128, 128, batch, seed=1), bench.image(128, 128, batch, seed=2)
    runs = [('DiffLI²D + prior, L1', None),
            ('DiffLI²D + prior, L1 + DiffLoss (use_checkpoint)', lambda: DiffLoss(shared_unet=prior.unet,
                                                                               use_checkpoint=True))]
    for label, make_loss in runs:
        timing = time_training(bench, prior, lq, gt, make_loss)
        if timing is None:
            table.rows.append([label, batch, OUT_OF_MEMORY, None, None, None])
            continue
        table.rows.append([label, batch, 1 / timing.seconds, timing.seconds, timing.peak_gib,
                           PAPER_ITERATIONS * timing.seconds / 3600])
        if make_loss is not None and bench.gpu:
            reserved = torch.cuda.max_memory_reserved(bench.device) / GIB  # what the allocator took from the GPU
            fits = 'fits' if reserved < GPU_MEMORY_BUDGET_GIB else 'does NOT fit'
            table.notes.append(f'DiffLoss at batch {batch}: peak {timing.peak_gib:.1f} GiB allocated, {reserved:.1f} '
                               f'GiB reserved: {fits} one 80 GB GPU ({GPU_MEMORY_BUDGET_GIB} GiB usable).')
    table.notes.append(f'The paper trains at batch 40 (options/dehaze_its.yml); the hours are for '
                       f'{PAPER_ITERATIONS:,} iterations at the batch shown.')
    if not bench.gpu:
        table.notes.append('CPU: a smaller batch by default (--train-batch to change it).')
    return table


def validation_passes(bench: Bench, net: nn.Module, prior_opt: dict, images: list[torch.Tensor]) -> list[float]:
    """images/s of a first and a second validation pass of ``net`` over ``images`` with the prior's features cached."""
    from difflid.priors.cache import CachedGuidance, prior_cache_key

    prior = build_network(dict(prior_opt)).to(bench.device)
    cached = CachedGuidance(prior, prior_cache_key(prior_opt, bench.device, prior.dtype), memory_mb=2048,
                            disk_dir=None)
    rates = []
    with torch.no_grad():
        restore(net, images[0][..., :64, :64], prior)  # warm-up outside the cache
        synchronize(bench.device)
        for _ in range(2):
            start = time.perf_counter()
            for img in images:
                restore(net, img, prior=cached)
            synchronize(bench.device)
            rates.append(len(images) / (time.perf_counter() - start))
    return rates


def validation_section(bench: Bench) -> Table:
    """The quickstart model, and (not with --quick) the paper's: adm256_uncond and the default DiffLI2D, where the
    prior's share of the cost, and so what the cache saves, is far larger."""
    table = Table('3. Validation: images of 256×256, prior features cached from the first pass',
                  ['model', 'pass', 'images', 'images/s', 'vs first pass (×)'])
    torch.manual_seed(0)
    models = [('quickstart', build_network(dict(bench.quickstart['network_g'])),
               dict(bench.quickstart['network_prior']), bench.val_images)]
    if not bench.args.quick:
        models.append((f'paper ({bench.preset} + DiffLI2D)', build_network({'type': 'DiffLI2D'}),
                       {'type': 'HSpaceExtractor', 'unet': bench.preset, 'random_weights': True,
                        'timesteps': list(TIMESTEPS)}, bench.val_images if bench.gpu else 2))
    for label, net, prior_opt, count in models:
        images = [bench.image(256, 256, seed=10 + i) for i in range(count)]
        rates = validation_passes(bench, net.to(bench.device).eval(), prior_opt, images)
        table.rows.append([label, 'first (computes the prior\'s features)', count, rates[0], 1.0])
        table.rows.append([label, 'second (cached features)', count, rates[1], rates[1] / rates[0]])
        del net
        gc.collect()
    table.notes.append(f"quickstart: {options_name(QUICKSTART)} (network_g and its prior); CachedGuidance(memory_mb="
                       '2048). The second pass runs only the network, so its gain is the prior\'s share of the cost.')
    return table


def options_name(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def inference_section(bench: Bench) -> Table:
    table = Table('4. Inference end to end (prior + network, batch 1)',
                  ['size', 'way', 'images/s', 's/image', 'peak memory (GiB)', 'speed-up vs released (×)'])
    net = bench.network().eval()
    prior = bench.extractor()
    released, released_label = bench.released()
    def released_way(img: torch.Tensor) -> torch.Tensor:
        height, width = img.shape[-2:]
        padded = pad_to_multiple(img, prior.downsample_factor)
        h_t1, h_t2 = released_features(released, img, prior.downsample_factor)
        with torch.no_grad():
            return net(padded, h_t1.float(), h_t2.float())[..., :height, :width]

    def ours(img: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return restore(net, img, prior)

    for width, height, name in INFER_SIZES:
        label = size_label(width, height, name)
        if not bench.runs(width, height):
            table.rows.append([label, 'all', SKIPPED_ON_CPU, None, None, None])
            continue
        img = bench.image(width, height)
        base = measure_or_oom(functools.partial(released_way, img), bench.device, bench.repeats, bench.warmup,
                              (net, released, img))
        table.rows.append([label, released_label + ' + network', *(
            (1 / base.seconds, base.seconds, base.peak_gib, 1.0) if base else (OUT_OF_MEMORY, None, None, None))])
        timing = measure_or_oom(functools.partial(ours, img), bench.device, bench.repeats, bench.warmup,
                                (net, prior, img))
        dtype = str(prior.dtype).removeprefix('torch.')
        table.rows.append([label, f"difflid's way (restore(), prior {dtype}) + network", *(
            (1 / timing.seconds, timing.seconds, timing.peak_gib, base.seconds / timing.seconds if base else None)
            if timing else (OUT_OF_MEMORY, None, None, None))])
    table.notes.append(f"network: {bench.network_opt['type']} "
                       f"({sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters), fp32.")
    return table


def flops_section(bench: Bench) -> Table:
    sizes = [(256, 256, ''), (620, 460, 'SOTS')]
    table = Table('5. Parameters and FLOPs (per image)',
                  ['component', 'params (M)', *(f'GFLOP at {size_label(*s)}' for s in sizes)])
    with torch.device('meta'):
        net = build_network(dict(bench.network_opt))
        full = ADMUNet(**adm_flags(bench.preset))
        encoder = ADMUNet(**adm_flags(bench.preset), encoder_only=True)

    def network_flops(width: int, height: int) -> int:
        channels, stride = encoder.hspace_channels, encoder.downsample_factor
        h = torch.rand(1, channels, -(-height // stride), -(-width // stride))
        return count_flops(lambda: build_network(dict(bench.network_opt)),
                           lambda n: n(torch.rand(1, 3, height, width), h, h))

    net_flops = [network_flops(w, h) for w, h, _ in sizes]
    priors = [prior_flops(bench, w, h) for w, h, _ in sizes]

    def params(module: nn.Module) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e6

    table.rows.append([f"network ({bench.network_opt['type']})", params(net), *(f / 1e9 for f in net_flops)])
    table.rows.append([f"prior, difflid's way ({bench.preset} encoder, 2 timesteps in 1 pass)", params(encoder),
                       *(p[0] / 1e9 for p in priors)])
    table.rows.append([f'prior, released way ({bench.preset} full UNet, 2 passes)', params(full),
                       *(p[1] / 1e9 for p in priors)])
    table.notes.append('Counted by torch.utils.flop_counter.FlopCounterMode on fake tensors (convolutions, matmuls, '
                       'attention; 1 multiply-add = 2 FLOPs); inputs padded to a multiple of 32.')
    peak = f'{bench.peak_tflops} TFLOP/s' if bench.peak_tflops else 'not known for this device'
    table.notes.append(f'bf16 dense peak of {bench.device_name}: {peak}.')
    return table


ATTENTION_KEYWORDS = ('flash', 'fmha', 'efficient', 'scaled_dot_product', 'sdpa')


def attention_kernels(names: Sequence[str]) -> dict[str, str]:
    """Which SDPA implementations a profile's event names show: the aten op names
    (``aten::_scaled_dot_product_flash_attention``, ``..._efficient_attention``, ``..._cudnn_attention``,
    ``..._attention_math``) and the CUDA kernels (``pytorch_flash::flash_fwd_kernel``, ``fmha_cutlass*``,
    ``cudnn_*_sdpa_*``). Returns yes/no per implementation and the names seen."""
    seen = sorted({n for n in names if any(k in n.lower() for k in ATTENTION_KEYWORDS)})
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


def kernels_section(bench: Bench) -> Table:
    columns = ['flash', 'memory-efficient', 'cuDNN', 'math fallback', 'kernels seen']
    table = Table("6. Attention kernels of difflid's way (torch.profiler, 256×256)", ['dtype', *columns])
    if not bench.gpu:
        table.rows.append(['-', None, None, None, None, 'not run (no GPU)'])
        return table
    from torch.profiler import ProfilerActivity, profile

    img = bench.image(256, 256)
    for dtype in ('fp32', 'auto'):
        prior = bench.extractor(dtype)
        prior(img)
        synchronize(bench.device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            prior(img)
            synchronize(bench.device)
        found = attention_kernels([event.key for event in prof.key_averages()])
        resolved = str(resolve_dtype(dtype, bench.device)).removeprefix('torch.')
        table.rows.append([f'{dtype} = {resolved}', *(found[c] for c in columns)])
    table.notes.append('The encoder\'s attention runs scaled_dot_product_attention; "math fallback" means the '
                       'unfused (T, T) matrix was built.')
    return table


SECTION_RUNNERS = {'prior': prior_section, 'train': train_section, 'val': validation_section,
                   'infer': inference_section, 'flops': flops_section, 'kernels': kernels_section}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='cpu or cuda (default: cuda when torch sees a GPU)')
    parser.add_argument('--sizes', type=parse_size, nargs='+', metavar='WxH',
                        help='run these sizes in sections 1 and 4 even on the CPU (extra ones are added to section 1)')
    parser.add_argument('--train-batch', type=int, help='batch of section 2 (default: 40 on a GPU, 2 on the CPU)')
    parser.add_argument('--val-images', type=int, help='images of section 3 (default 8, --quick 2)')
    parser.add_argument('--repeats', type=int, help='timed calls per row, median (default: 3 on a GPU, 1 on the CPU)')
    parser.add_argument('--warmup', type=int, help='untimed calls first (default: 1 on a GPU, 0 on the CPU, where a '
                                                   'call takes seconds and its one-off costs are negligible)')
    parser.add_argument('--compile', action='store_true', help="add difflid's way with torch.compile to section 1")
    parser.add_argument('--sections', nargs='+', choices=SECTIONS, default=list(SECTIONS),
                        help=f'sections to run (default: all of {", ".join(SECTIONS)})')
    parser.add_argument('--quick', action='store_true', help='tiny prior, quickstart network, batch 2, 1 repeat: a '
                                                             'check that runs in seconds, not a measurement')
    parser.add_argument('--json', type=Path, metavar='FILE', help='also write the figures to FILE')
    args = parser.parse_args(argv)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error('--device cuda asked for, but torch sees no GPU; use --device cpu')
    for name in ('train_batch', 'val_images', 'repeats'):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1')
    if args.warmup is not None and args.warmup < 0:
        parser.error('--warmup must be at least 0')
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the chosen sections, print the Markdown report, write --json; returns the report's figures."""
    args = parse_args(argv)
    bench = Bench(args)
    torch.manual_seed(0)
    header = {
        'machine': bench.device_name, 'torch': torch.__version__, 'device': str(bench.device),
        'prior': f'{bench.preset} (random weights)', 'network': bench.network_opt['type'],
        'repeats': bench.repeats, 'warmup': bench.warmup, 'quick': args.quick,
    }
    print(f"## difflid benchmark: {header['machine']}, torch {header['torch']}")
    print()
    print(f"prior {header['prior']}, network {header['network']}; median of {bench.repeats} timed call(s) per row "
          f'after {bench.warmup} warm-up call(s)' + (' (--quick: a check, not a measurement)' if args.quick else ''))
    print()
    sys.stdout.flush()
    tables = []
    for name in SECTIONS:
        if name not in args.sections:
            continue
        table = SECTION_RUNNERS[name](bench)
        tables.append(table)
        print(table.markdown())
        print()
        sys.stdout.flush()
    bench.free()
    report = {**header, 'sections': [asdict(t) for t in tables]}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding='utf-8')
    return report


if __name__ == '__main__':
    main()
