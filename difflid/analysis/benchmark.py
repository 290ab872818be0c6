"""Speed and memory of DiffLI²D, measured against the released code's way (``tools/benchmark.py``).

Random weights throughout (speed does not depend on them): the real ``adm256_uncond`` prior and the default
``DiffLI2D`` (h_channels 1024). "The released code's way" is guided-diffusion's own UNet (the
``guided-diffusion-sdk`` package of the dev extra; difflid's ADMUNet stands in, and the row says so, when it is
not installed): a full forward, one pass per timestep (t = 0, then t = 500), fp32. "difflid's way" is
``HSpaceExtractor``: the encoder and middle block only, both timesteps in one batched pass, with its default
``dtype: auto`` (bf16 autocast on a GPU, fp32 on the CPU) and ``channels_last`` (on a GPU), optionally
``torch.compile``.

Sections (one Markdown table each, ``SECTIONS``; the report dict and ``--json`` hold the same figures):
  1 prior: latency, images/s, peak memory and speed-up at 128², 256², 620×460 (SOTS) and 1600×1200 (Dense/NH-HAZE);
  2 training step at the paper's recipe (batch 40 of 128² crops, prior + DiffLI2D forward/backward/Adam), without
    and with DiffLoss, and the hours 418,800 iterations take;
  3 validation: first and second pass over a set of 256² images with cached prior features (the quickstart model);
  4 inference end to end (prior + network) at 256² and SOTS size;
  5 parameters and FLOPs (torch.utils.flop_counter), with the fraction of the GPU's bf16 peak in section 1;
  6 attention kernels: which scaled_dot_product_attention kernels ran (GPU only, torch.profiler);
  7 precompute: training on precomputed prior features (``train.prior_features: precomputed``) against the online
    step at the paper's shapes, without and with DiffLoss (s/it, the ratio, the prior's share, FLOPs), the prior's
    throughput on whole ITS-sized images (620×460, both orientations), the storage of one such image per draw, and
    how fast ``FeatureStore`` reads the 128² crops' windows of features.

Sizes are written width×height. On the CPU the large sizes take minutes per image, so only those up to 256² run
unless ``sizes`` names them. ``quick`` (seconds on a CPU: the tiny prior and the quickstart network, batch 2,
one repeat) checks that the benchmark works; its figures mean nothing.
"""
import functools
import gc
import hashlib
import json
import random
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from basicsr.archs import build_network
from torch import nn
from torch.nn import functional as F

from difflid.analysis.benchmark_measure import (
    GIB,
    Timing,
    attention_kernels,
    bf16_peak_tflops,
    count_flops,
    measure,
    measure_or_oom,
    synchronize,
)
from difflid.inference import restore
from difflid.losses.diffloss_loss import DiffLoss
from difflid.priors.adm_unet_arch import ADMUNet, adm_flags
from difflid.priors.base import GuidanceExtractor
from difflid.priors.builder import build_prior, with_denoiser
from difflid.priors.cache import CachedGuidance, prior_cache_key
from difflid.priors.schedules import to_diffusion_range
from difflid.utils.feature_store import FeatureStore, encode_entry
from difflid.utils.options import resolve_option_file
from difflid.utils.padding import pad_to_multiple
from difflid.utils.precision import resolve_dtype

__all__ = ['OUT_OF_MEMORY', 'QUICKSTART', 'SECTIONS', 'SKIPPED_ON_CPU', 'BenchmarkOptions', 'Table', 'format_cell',
           'parse_size', 'run_benchmark']

QUICKSTART = Path('options') / '_base_' / 'quickstart.yml'  # under the repository root: the --quick model
TIMESTEPS = (0, 500)  # paper Sec. 5.3: t1 = 0 (content), t2 = 500 (haze)
PAPER_ITERATIONS = 418_800  # options/dehaze_its.yml: 1200 epochs x 349 iterations
PAPER_CROP = 128  # options/dehaze_its.yml: gt_size
QUICK_CROP = 32  # section 7's crops (and its precompute image) with quick: one feature cell
# (width, height, name) of section 1; section 4 uses 256² and SOTS
PRIOR_SIZES = ((128, 128, ''), (256, 256, ''), (620, 460, 'SOTS'), (1600, 1200, 'Dense/NH-HAZE'))
INFER_SIZES = ((256, 256, ''), (620, 460, 'SOTS'))
CPU_MAX_PIXELS = 256 * 256  # larger sizes take minutes per image on a CPU: run only when `sizes` names them
SKIPPED_ON_CPU = 'skipped on CPU (--sizes to force)'
OUT_OF_MEMORY = 'cannot run (out of memory)'
# DiffLoss at batch 40 must fit one 80 GB GPU: an H100/A100 80GB has 79.6 GiB, of which the CUDA context takes ~1
GPU_MEMORY_BUDGET_GIB = 78.5
# section 7: one RESIDE ITS image, the unit of a precomputed feature store (ITS has 13,990 hazy images)
ITS_SIZE, ITS_IMAGES = (620, 460, 'ITS'), 13_990
LOADER_BATCH = 40  # windows per loader batch: the paper's batch
LOADER_ENTRIES = 64  # ITS-sized entries the loader rows read from (quick: 8)
LOADER_BATCHES = 20  # timed loader batches per row (quick: 3), of which the median is reported
SECTIONS = ('prior', 'train', 'val', 'infer', 'flops', 'kernels', 'precompute')

Cell = float | int | str | None


@dataclass
class BenchmarkOptions:
    """What to measure and how; ``None`` means the device's default (shown beside each field).

    Args:
        device: 'cpu', 'cuda' or 'cuda:N'. Default: cuda when torch sees a GPU.
        sizes: (width, height) to run in sections 1 and 4 even on the CPU (ones not in section 1 are added to it).
        train_batch: Batch of section 2. Default: 40 on a GPU, 2 on the CPU or with ``quick``.
        val_images: Images of section 3. Default: 8, 2 with ``quick``.
        repeats: Timed calls per row, of which the median is reported. Default: 3 on a GPU, 1 on the CPU or with
            ``quick``.
        warmup: Untimed calls first. Default: 1 on a GPU, 0 on the CPU (a call takes seconds, its one-off costs
            are negligible).
        compile: Add difflid's way with torch.compile to section 1.
        sections: Which of ``SECTIONS`` to run (always in that order).
        quick: Tiny prior, quickstart network, batch 2, 1 repeat: a check that runs in seconds, not a measurement.
        json_path: Also write the report there.
    """

    device: str | None = None
    sizes: tuple[tuple[int, int], ...] = ()
    train_batch: int | None = None
    val_images: int | None = None
    repeats: int | None = None
    warmup: int | None = None
    compile: bool = False
    sections: tuple[str, ...] = SECTIONS
    quick: bool = False
    json_path: Path | None = None

    def __post_init__(self) -> None:
        if self.device is None:
            self.device = 'cuda' if torch.cuda.is_available() else 'cpu'
        if self.device.startswith('cuda') and not torch.cuda.is_available():
            raise ValueError(f'device {self.device} (--device) asked for, but torch sees no GPU; use cpu')
        for name, least in (('train_batch', 1), ('val_images', 1), ('repeats', 1), ('warmup', 0)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f'{name} (--{name.replace("_", "-")}) must be at least {least}, got {value}')
        unknown = [s for s in self.sections if s not in SECTIONS]
        if unknown:
            raise ValueError(f'unknown section {unknown[0]!r}; choose from {", ".join(SECTIONS)}')
        self.sizes = tuple(tuple(s) for s in self.sizes)
        if any(w <= 0 or h <= 0 for w, h in self.sizes):
            raise ValueError(f'sizes must be positive, got {self.sizes}')


@dataclass
class Table:
    """One section: a Markdown table and the notes under it; the report holds the same cells, unformatted."""

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


def parse_size(text: str) -> tuple[int, int]:
    """'620x460' (or '620×460') -> (620, 460), width first; ValueError saying the format otherwise."""
    try:
        width, height = (int(v) for v in text.lower().replace('×', 'x').split('x'))
    except ValueError as err:
        raise ValueError(f'sizes are WIDTHxHEIGHT, e.g. 620x460; got {text!r}') from err
    if width <= 0 or height <= 0:
        raise ValueError(f'sizes must be positive, got {text!r}')
    return width, height


def size_label(width: int, height: int, name: str = '') -> str:
    return f'{width}×{height}' + (f' ({name})' if name else '')


class Bench:
    """The settings, the device and the models the sections share (built once, freed after their last use)."""

    def __init__(self, options: BenchmarkOptions, root: Path) -> None:
        self.options = options
        self.root = root
        self.device = torch.device(options.device)
        self.gpu = self.device.type == 'cuda'
        self.preset = 'adm_tiny' if options.quick else 'adm256_uncond'
        quick_or_cpu = options.quick or not self.gpu
        self.repeats = options.repeats if options.repeats is not None else (1 if quick_or_cpu else 3)
        self.warmup = options.warmup if options.warmup is not None else (1 if self.gpu else 0)
        self.train_batch = options.train_batch if options.train_batch is not None else (2 if quick_or_cpu else 40)
        self.val_images = options.val_images if options.val_images is not None else (2 if options.quick else 8)
        self.forced_sizes = set(options.sizes)
        self.quickstart = yaml.safe_load(resolve_option_file(root / QUICKSTART).read_text(encoding='utf-8'))
        self.network_opt = dict(self.quickstart['network_g']) if options.quick else {'type': 'DiffLI2D'}
        self.device_name = (torch.cuda.get_device_name(self.device) if self.gpu
                            else f'CPU, {torch.get_num_threads()} threads')
        self.peak_tflops = bf16_peak_tflops(self.device_name) if self.gpu else None
        self._released: tuple[nn.Module, str] | None = None
        self._extractor: GuidanceExtractor | None = None
        self.flops: dict[tuple[str, int, int], tuple[int, int]] = {}

    def runs(self, width: int, height: int) -> bool:
        return self.gpu or (width, height) in self.forced_sizes or width * height <= CPU_MAX_PIXELS

    def network(self) -> nn.Module:
        torch.manual_seed(0)
        return build_network(dict(self.network_opt)).to(self.device)

    def prior_block(self, dtype: str = 'auto', compile: bool = False) -> dict:
        """The ``network_prior`` block of difflid's way: random weights, both timesteps."""
        return {'type': 'HSpaceExtractor', 'unet': self.preset, 'random_weights': True, 'timesteps': list(TIMESTEPS),
                'dtype': dtype, 'compile': compile}

    def extractor(self, dtype: str = 'auto', compile: bool = False, denoiser: bool = False) -> GuidanceExtractor:
        """difflid's prior (``denoiser``: with the decoder DiffLoss needs); the default one is kept for sections 1, 4
        and 6."""
        default = dtype == 'auto' and not compile and not denoiser
        if default and self._extractor is not None:
            return self._extractor
        block = self.prior_block(dtype, compile)
        prior = build_prior(with_denoiser(block) if denoiser else block).to(self.device)
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

    def options_name(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)


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
        ours = count_flops(lambda: build_prior(bench.prior_block('fp32')),
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
    known = {(w, h) for w, h, _ in PRIOR_SIZES}
    sizes = [*PRIOR_SIZES, *((w, h, '') for w, h in bench.options.sizes if (w, h) not in known)]
    variants = [('fp32', False), ('auto', False)] if bench.gpu else [('auto', False)]
    if bench.options.compile:
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
        flops = prior_flops(bench, width, height)[0] if bench.peak_tflops else None  # for the bf16 peak (%) only
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


def train_step(net: nn.Module, prior: GuidanceExtractor | None, optimizer: torch.optim.Optimizer, lq: torch.Tensor,
               gt: torch.Tensor, diffloss: DiffLoss | None,
               features: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """One iteration of DiffLI2DModel's training: fresh-noise prior features (or the given ``features``, as with
    ``train.prior_features: precomputed``), L1 (+ DiffLoss), Adam."""
    f_cim, f_hae = features if features is not None else prior.guidance(lq, fresh_noise=True)
    out = net(lq, f_cim, f_hae)
    loss = F.l1_loss(out, gt)
    if diffloss is not None:
        loss = loss + sum(term for term in diffloss(out, gt) if term is not None)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def time_training(bench: Bench, prior: GuidanceExtractor, lq: torch.Tensor, gt: torch.Tensor, with_diffloss: bool,
                  features: tuple[torch.Tensor, torch.Tensor] | None = None, repeats: int | None = None,
                  warmup: int | None = None) -> Timing | None:
    """Training steps of a new network (and its Adam state), freed on return. DiffLoss runs on ``prior`` itself
    (``shared_prior``), as DiffLI2DModel's does: one copy of the weights. With ``features`` (precomputed) the prior
    does not run, and is not held unless DiffLoss needs it. ``repeats``, ``warmup``: timed and untimed steps (default:
    the bench's)."""
    net = bench.network().train()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.9, 0.999))
    diffloss = DiffLoss(shared_prior=prior, use_checkpoint=True).to(bench.device) if with_diffloss else None
    uses_prior = features is None or with_diffloss
    holders = (net, *((prior,) if uses_prior else ()), optimizer, lq, gt, *(features or ()),
               *((diffloss,) if diffloss else ()))
    return measure_or_oom(functools.partial(train_step, net, prior if uses_prior else None, optimizer, lq, gt,
                                            diffloss, features), bench.device,
                          bench.repeats if repeats is None else repeats, bench.warmup if warmup is None else warmup,
                          holders)


def train_section(bench: Bench) -> Table:
    batch = bench.train_batch
    table = Table(f'2. Training step (128² crops, batch {batch}, Adam)',
                  ['run', 'batch', 'it/s', 's/it', 'peak memory (GiB)', f'hours for {PAPER_ITERATIONS:,} it'])
    bench.free()  # the GPU holds only this section's tensors: its peak memory is what training needs
    prior = bench.extractor(denoiser=True)  # with its decoder, so that DiffLoss runs on its UNet
    lq, gt = bench.image(128, 128, batch, seed=1), bench.image(128, 128, batch, seed=2)
    for label, with_diffloss in (('DiffLI²D + prior, L1', False),
                                 ('DiffLI²D + prior, L1 + DiffLoss (use_checkpoint)', True)):
        timing = time_training(bench, prior, lq, gt, with_diffloss)
        if timing is None:
            table.rows.append([label, batch, OUT_OF_MEMORY, None, None, None])
            continue
        table.rows.append([label, batch, 1 / timing.seconds, timing.seconds, timing.peak_gib,
                           PAPER_ITERATIONS * timing.seconds / 3600])
        if with_diffloss and bench.gpu:
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
    prior = build_prior(prior_opt).to(bench.device)
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
    """The quickstart model, and (not with quick) the paper's: adm256_uncond and the default DiffLI2D, where the
    prior's share of the cost, and so what the cache saves, is far larger."""
    table = Table('3. Validation: images of 256×256, prior features cached from the first pass',
                  ['model', 'pass', 'images', 'images/s', 'vs first pass (×)'])
    torch.manual_seed(0)
    models = [('quickstart', build_network(dict(bench.quickstart['network_g'])),
               dict(bench.quickstart['network_prior']), bench.val_images)]
    if not bench.options.quick:
        models.append((f'paper ({bench.preset} + DiffLI2D)', build_network({'type': 'DiffLI2D'}),
                       bench.prior_block(), bench.val_images if bench.gpu else 2))
    for label, net, prior_opt, count in models:
        images = [bench.image(256, 256, seed=10 + i) for i in range(count)]
        rates = validation_passes(bench, net.to(bench.device).eval(), prior_opt, images)
        table.rows.append([label, 'first (computes the prior\'s features)', count, rates[0], 1.0])
        table.rows.append([label, 'second (cached features)', count, rates[1], rates[1] / rates[0]])
        del net
        gc.collect()
    table.notes.append(f"quickstart: {bench.options_name(bench.root / QUICKSTART)} (network_g and its prior); "
                       'CachedGuidance(memory_mb=2048). The second pass runs only the network, so its gain is the '
                       'prior\'s share of the cost.')
    return table


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

    def params(module: nn.Module) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e6

    net_flops = [network_flops(w, h) for w, h, _ in sizes]
    priors = [prior_flops(bench, w, h) for w, h, _ in sizes]
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


def guidance_flops(prior_block: dict, batch: int, crop: int) -> int:
    """FLOPs of the prior's guidance on ``batch`` crops of ``crop``²: the part of an online step that precomputing
    removes."""
    return count_flops(lambda: build_prior(prior_block),
                       lambda prior: prior.guidance(torch.rand(batch, 3, crop, crop), fresh_noise=True))


def step_flops(network_opt: dict, prior_block: dict, batch: int, crop: int, with_diffloss: bool) -> int:
    """FLOPs of one precomputed training iteration (``train_step`` with features given) at ``batch`` crops of
    ``crop``², forward and backward (Adam's elementwise update counts 0). The online step is this plus
    ``guidance_flops``: it is the same step on the features that the guidance pass computes."""
    block = with_denoiser(prior_block) if with_diffloss else prior_block

    def build() -> nn.ModuleDict:
        return nn.ModuleDict({'net': build_network(dict(network_opt)).train(), 'prior': build_prior(block)})

    def step(modules: nn.ModuleDict) -> None:
        net, prior = modules['net'], modules['prior']
        cells = -(-crop // prior.downsample_factor)
        features = tuple(torch.randn(batch, prior.feature_channels, cells, cells) for _ in range(2))
        diffloss = DiffLoss(shared_prior=prior, use_checkpoint=True) if with_diffloss else None
        train_step(net, None, torch.optim.Adam(net.parameters(), lr=2e-4), torch.rand(batch, 3, crop, crop),
                   torch.rand(batch, 3, crop, crop), diffloss, features)

    return count_flops(build, step, grad=True)


def entry_bytes(width: int, height: int, stride: int, channels: int, itemsize: int = 2) -> int:
    """Bytes of one stored entry (one image, orientation and draw) without the file's header: every stride×stride
    cell of the image padded to the stride holds both maps (t1, t2) of ``channels`` values (fp16: 2 bytes)."""
    return -(-height // stride) * -(-width // stride) * 2 * channels * itemsize


def read_rate(store: FeatureStore, digests: list[str], grid: tuple[int, int], window: int | None, batches: int,
              seed: int = 0) -> tuple[float, int]:
    """(median seconds, bytes read) per loader batch of ``LOADER_BATCH`` reads of random entries of ``store``
    (orientation 0, draw 0; ``grid`` = their (rows, cols) of cells): ``window``×``window``-cell windows at random
    cells, or whole entries (None). One untimed batch first."""
    picker = random.Random(seed)
    rows, cols = grid
    got: list[int] = []

    def one_batch() -> None:
        total = 0
        for _ in range(LOADER_BATCH):
            if window is None:
                part = store.read(picker.choice(digests), 0, 0)
            else:
                top, left = picker.randrange(rows - window + 1), picker.randrange(cols - window + 1)
                part = store.read(picker.choice(digests), 0, 0, slice(top, top + window), slice(left, left + window))
            total += part.nbytes
        got.append(total)

    timing = measure(one_batch, torch.device('cpu'), repeats=batches, warmup=1)
    return timing.seconds, got[-1]


def precompute_rate(bench: Bench, prior: GuidanceExtractor) -> tuple[str, tuple[int, int], Timing | None]:
    """(row label, (width, height), timing) of the prior on one whole image as ``tools/precompute_prior.py`` computes
    it: both horizontal orientations, one pass each, the prior's seeded noise, both maps to fp16 on the host. An
    ITS-sized image, or on the CPU, unless ``sizes`` names 620x460, a 256² one (quick: ``QUICK_CROP``²)."""
    width, height, name = ITS_SIZE
    label = f'precompute: the prior on one whole {size_label(width, height, name)} image'
    if not bench.runs(width, height):
        width = height = QUICK_CROP if bench.options.quick else 256
        label = (f'precompute: the prior on one whole {width}×{height} image (a stand-in: {size_label(*ITS_SIZE)} is '
                 'skipped on the CPU, --sizes 620x460 runs it)')
    img = bench.image(width, height, seed=4)
    images = torch.cat([img, img.flip(-1)])  # orientations 0 and 1
    t1, t2 = prior.timesteps[:2]

    def compute() -> list[np.ndarray]:  # one pass per orientation: the numbers a test-time pass gives
        entries = []
        for image in images.split(1):
            feats = prior(image)
            entries.append(encode_entry([feats[t1][0], feats[t2][0]], 'fp16'))
        return entries

    timing = measure_or_oom(compute, bench.device, bench.repeats, bench.warmup, (prior, images))
    dtype = str(prior.dtype).removeprefix('torch.')
    return (f'{label}, both orientations (one pass each), seeded noise, prior in {dtype}, to fp16 on the host',
            (width, height), timing)


def precompute_section(bench: Bench) -> Table:
    """Online step vs precomputed step at the paper's shapes (and with DiffLoss), the precompute's throughput, the
    storage per ITS image and draw, and the loader's read speed (see the notes the table carries)."""
    batch, crop = bench.train_batch, QUICK_CROP if bench.options.quick else PAPER_CROP
    # The L1 rows are the headline, and the precomputed step is cheap: a first call's one-off costs (kernel selection)
    # or one noisy call would distort its ratio, so they get at least 1 untimed and 3 timed calls (unless set).
    warmup = bench.warmup if bench.options.warmup is not None else max(bench.warmup, 1)
    repeats = bench.repeats if bench.options.repeats is not None or bench.options.quick else max(bench.repeats, 3)
    hours = f'hours for {PAPER_ITERATIONS:,} it'
    table = Table(f'7. Precomputed prior features: training without the prior ({crop}² crops, batch {batch}), '
                  'precompute, storage, loader',
                  ['row', 'unit', 's/unit', 'units/s', 'online / precomputed (×)', "prior's share (%)",
                   'peak memory (GiB)', hours, 'GFLOP/unit', 'MB/unit', 'MB/s'])
    bench.free()  # the GPU holds only this section's tensors
    prior = bench.extractor()
    stride, channels = prior.downsample_factor, prior.feature_channels
    lq, gt = bench.image(crop, crop, batch, seed=1), bench.image(crop, crop, batch, seed=2)
    cells = -(-crop // stride)
    gen = torch.Generator().manual_seed(3)
    features = tuple(torch.randn(batch, channels, cells, cells, generator=gen).to(bench.device) for _ in range(2))
    unit = f'it (batch {batch})'

    def seconds(timing: Timing | None) -> float | None:
        return timing.seconds if timing else None

    def ratio(a: float | None, b: float | None, scale: float = 1.0) -> float | None:
        return scale * a / b if a and b else None

    def step_row(label: str, timing: Timing | None, share: float | None, vs: float | None, flops: int,
                 training: bool = True) -> list[Cell]:
        if timing is None:
            return [label, unit, OUT_OF_MEMORY, None, None, None, None, None, flops / 1e9, None, None]
        return [label, unit, timing.seconds, 1 / timing.seconds, vs, share, timing.peak_gib,
                PAPER_ITERATIONS * timing.seconds / 3600 if training else None, flops / 1e9, None, None]

    # the prior part, and the L1 pair, with the encoder-only prior DiffLI2DModel builds for L1
    guidance = measure_or_oom(functools.partial(prior.guidance, lq, fresh_noise=True), bench.device, repeats, warmup,
                              (prior, lq))
    steps = {('online', False): time_training(bench, prior, lq, gt, False, None, repeats, warmup),
             ('precomputed', False): time_training(bench, prior, lq, gt, False, features, repeats, warmup)}
    precompute_label, (pre_w, pre_h), precompute = precompute_rate(bench, prior)
    del prior
    bench.free()
    # the DiffLoss pair: the prior keeps its decoder, DiffLoss runs on its UNet (as DiffLI2DModel shares it)
    prior = bench.extractor(denoiser=True)
    for mode, given in (('online', None), ('precomputed', features)):
        steps[mode, True] = time_training(bench, prior, lq, gt, True, given)
    del prior
    gc.collect()

    prior_part_flops = guidance_flops(bench.prior_block('fp32'), batch, crop)
    for with_diffloss, loss in ((False, 'L1'), (True, 'L1 + DiffLoss (use_checkpoint)')):
        precomputed_flops = step_flops(bench.network_opt, bench.prior_block('fp32'), batch, crop, with_diffloss)
        online_flops = prior_part_flops + precomputed_flops
        online, precomputed = seconds(steps['online', with_diffloss]), seconds(steps['precomputed', with_diffloss])
        table.rows.append(step_row(f'online step, {loss}: the prior (fresh noise) + DiffLI²D forward/backward + Adam',
                                   steps['online', with_diffloss], ratio(seconds(guidance), online, 100),
                                   ratio(online, precomputed), online_flops))
        if not with_diffloss:
            table.rows.append(step_row("its prior part: the prior's guidance alone (no_grad)", guidance,
                                       ratio(seconds(guidance), online, 100), None, prior_part_flops, training=False))
        what = ('DiffLI²D forward/backward + Adam on features already on the device' if not with_diffloss else
                "the same, DiffLoss still runs the prior's UNet on the restored and GT images")
        table.rows.append(step_row(f'precomputed step, {loss}: {what}', steps['precomputed', with_diffloss], None,
                                   1.0 if precomputed else None, precomputed_flops))
        table.rows.append([f'FLOPs, {loss}: online / precomputed step, and the prior\'s share', unit, None, None,
                           online_flops / precomputed_flops, 100 * prior_part_flops / online_flops, None, None, None,
                           None, None])

    # precompute throughput: one image (both orientations), one draw
    pre_bytes = 2 * entry_bytes(pre_w, pre_h, stride, channels)
    pre_flops = count_flops(lambda: build_prior(bench.prior_block('fp32')),
                            lambda p: p(torch.rand(2, 3, pre_h, pre_w)))
    if precompute is None:
        table.rows.append([precompute_label, 'image, 1 draw', OUT_OF_MEMORY, None, None, None, None, None,
                           pre_flops / 1e9, pre_bytes / 1e6, None])
    else:
        table.rows.append([precompute_label, 'image, 1 draw', precompute.seconds, 1 / precompute.seconds, None, None,
                           precompute.peak_gib, None, pre_flops / 1e9, pre_bytes / 1e6,
                           pre_bytes / 1e6 / precompute.seconds])

    # storage, and the loader's reads, on a temporary store of ITS-sized fp16 entries
    width, height, name = ITS_SIZE
    grid = (-(-height // stride), -(-width // stride))
    formula = entry_bytes(width, height, stride, channels)
    count, batches = (8, 3) if bench.options.quick else (LOADER_ENTRIES, LOADER_BATCHES)
    window = crop // stride
    array = np.random.default_rng(0).standard_normal((*grid, 2, channels), dtype=np.float32).astype(np.float16)
    with tempfile.TemporaryDirectory(prefix='difflid-bench-store-') as folder:
        store = FeatureStore(folder)
        digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(count)]
        written = [store.write(digest, 0, 0, array) for digest in digests][0]
        window_s, window_bytes = read_rate(store, digests, grid, window, batches)
        whole_s, whole_bytes = read_rate(store, digests, grid, None, batches)
    table.rows.append([f'storage: one {size_label(width, height, name)} image, 1 orientation, 1 draw, fp16: '
                       f'{grid[0]}×{grid[1]} cells × 2 maps × {channels} channels × 2 B', 'entry', None, None, None,
                       None, None, None, None, formula / 1e6, None])
    table.rows.append(['storage: the same entry as FeatureStore.write stores it (.npy)', 'entry', None, None, None,
                       None, None, None, None, written / 1e6, None])
    for label, unit_name, s_batch, n_bytes in (
            (f'loader: random {window}×{window}-cell windows (a {crop}² crop each) of {count} entries, '
             'FeatureStore.read (memory-mapped)', 'window', window_s, window_bytes),
            (f'loader, for contrast: whole entries of {count}, FeatureStore.read', 'entry', whole_s, whole_bytes)):
        table.rows.append([label, unit_name, s_batch / LOADER_BATCH, LOADER_BATCH / s_batch, None, None, None, None,
                           None, n_bytes / LOADER_BATCH / 1e6, n_bytes / s_batch / 1e6])

    table.notes += [
        'Precomputed step: what DiffLI2DModel does with train.prior_features: precomputed (the batch brings f_cim and '
        f'f_hae, here ({batch}, {channels}, {cells}, {cells}) float32 tensors already on the device); the loader\'s '
        'reads (rows below) run in its workers, beside the step. The prior\'s share is its part over the online step.',
        'FLOPs by torch.utils.flop_counter on fake tensors, forward and backward (convolutions, matmuls, attention); '
        'elementwise work (Adam, normalisations, activations) counts 0, so a measured ratio below the FLOP ratio '
        'means the network\'s memory-bound work weighs more than its FLOPs say.',
        'With DiffLoss, precomputing saves the guidance pass only (the encoder on the LQ crop at both timesteps): '
        'DiffLoss still runs the prior\'s full UNet on the restored image (forward, checkpoint recompute, backward) '
        'and on the GT (forward), and the UNet stays in memory.',
        'Precompute: tools/precompute_prior.py\'s work per image and draw (K draws take K times as long); MB/unit is '
        'what it stores (both orientations), MB/s the write rate that keeps up.'
        + (f' All of ITS ({ITS_IMAGES:,} images) takes {ITS_IMAGES * precompute.seconds / 3600:.3g} h per draw at '
           'this rate.' if precompute and (pre_w, pre_h) == ITS_SIZE[:2] else ''),
        f'Storage: the .npy header adds {written - formula} B to the {formula:,} B of the formula; ITS with both '
        f'orientations is {ITS_IMAGES * 2 * written / 1e9:.3g} GB per draw.',
        f'Loader: {count} entries just written to a temporary folder, so the figures are warm-page-cache ones (caches '
        f'cannot be dropped here; a cold disk reads {window} runs of {window * 2 * channels * 2:,} B per window). A '
        f'batch of {LOADER_BATCH} windows takes {1e3 * window_s:.3g} ms, {LOADER_BATCH} whole entries '
        f'{1e3 * whole_s:.3g} ms (median of {batches} batches).',
    ]
    table.notes.append(f'The L1 rows (online step, prior part, precomputed step) are the median of {repeats} timed '
                       f'call(s) after {warmup} untimed one(s) (--repeats, --warmup), as one-off costs or one noisy '
                       'call would weigh on the cheap precomputed step; the other rows use the bench\'s settings.')
    if bench.options.quick:
        table.notes.append(f'--quick: {crop}² crops and precompute image, the tiny prior: a check, not a measurement.')
    elif not bench.gpu:
        table.notes.append('CPU: a smaller batch by default (--train-batch to change it).')
    return table


SECTION_RUNNERS = {'prior': prior_section, 'train': train_section, 'val': validation_section,
                   'infer': inference_section, 'flops': flops_section, 'kernels': kernels_section,
                   'precompute': precompute_section}


def run_benchmark(options: BenchmarkOptions, root: str | Path) -> dict:
    """Run the chosen sections, print the Markdown report as each section ends, write ``options.json_path``.

    Args:
        options: What to measure.
        root: Repository root (``QUICKSTART`` is read from under it).

    Returns:
        The report: the header fields (machine, torch, device, prior, network, repeats, warmup, quick) and
        ``sections``, one dict per table (title, columns, rows of unformatted cells, notes).
    """
    bench = Bench(options, Path(root))
    torch.manual_seed(0)
    header = {
        'machine': bench.device_name, 'torch': torch.__version__, 'device': str(bench.device),
        'prior': f'{bench.preset} (random weights)', 'network': bench.network_opt['type'],
        'repeats': bench.repeats, 'warmup': bench.warmup, 'quick': options.quick,
    }
    print(f"## difflid benchmark: {header['machine']}, torch {header['torch']}")
    print()
    print(f"prior {header['prior']}, network {header['network']}; median of {bench.repeats} timed call(s) per row "
          f'after {bench.warmup} warm-up call(s)' + (' (--quick: a check, not a measurement)' if options.quick else ''))
    print()
    sys.stdout.flush()
    tables = []
    for name in SECTIONS:
        if name not in options.sections:
            continue
        table = SECTION_RUNNERS[name](bench)
        tables.append(table)
        print(table.markdown())
        print()
        sys.stdout.flush()
    bench.free()
    report = {**header, 'sections': [asdict(t) for t in tables]}
    if options.json_path is not None:
        Path(options.json_path).write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding='utf-8')
    return report
