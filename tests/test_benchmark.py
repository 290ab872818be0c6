"""difflid.analysis.benchmark and tools/benchmark.py, its command line. One `tools/benchmark.py --quick` run (tiny
prior, seconds on a CPU) gives the report's structure; its arithmetic is checked on stand-in timings with a known
answer; the measuring primitives on cases with a known answer (sleeps, allocations, layers whose FLOPs are a
formula, guided-diffusion's own UNet). The full benchmark is never run here."""
import contextlib
import io
import itertools
import json
import math
import runpy
import time

import numpy as np
import pytest
import torch
from basicsr.archs import build_network
from torch import nn

from difflid.analysis import benchmark
from difflid.analysis.benchmark import BenchmarkOptions, run_benchmark
from difflid.analysis.benchmark_measure import (
    PeakResidentGrowth,
    Timing,
    attention_kernels,
    bf16_peak_tflops,
    count_flops,
    measure,
    resident_bytes,
    tensor_bytes,
)
from difflid.losses.diffloss_loss import DiffLoss
from difflid.priors.adm_unet_arch import ADMUNet, adm_flags
from difflid.priors.base import GuidanceExtractor
from tests.conftest import REPO_ROOT

TOOL = REPO_ROOT / 'tools/benchmark.py'
SECTION_TITLES = ('1. Prior', '2. Training step', '3. Validation', '4. Inference end to end',
                  '5. Parameters and FLOPs', '6. Attention kernels', '7. Precomputed prior features')
MIB = 2 ** 20


def _printed_tables(text: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """{title: (columns, rows)} of the Markdown tables under '### title' headings."""
    tables, title, lines = {}, None, text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith('### '):
            title = line[4:]
        elif line.startswith('| ') and title is not None and title not in tables:
            block = list(itertools.takewhile(lambda row: row.startswith('|'), lines[i:]))
            cells = [[c.strip() for c in row.strip('|').split(' | ')] for row in block]
            tables[title] = (cells[0], cells[2:])
    return tables


def _same_figure(printed: str, value) -> bool:
    if value is None:
        return printed == '-'
    if isinstance(value, str | int):
        return printed == str(value)
    return math.isclose(float(printed), value, rel_tol=6e-3, abs_tol=1e-12)  # 3 significant figures


def _run(**options) -> tuple[str, dict]:
    """(printed text, report) of a --quick run on the CPU."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        report = run_benchmark(BenchmarkOptions(quick=True, device='cpu', **options), REPO_ROOT)
    return out.getvalue(), report


@pytest.fixture(scope='module')
def tool_main():
    """``main`` of tools/benchmark.py, loaded as the command line runs it."""
    return runpy.run_path(str(TOOL))['main']


@pytest.fixture(scope='module')
def quick_report(tool_main, tmp_path_factory) -> tuple[str, dict]:
    """(printed text, --json contents) of `python tools/benchmark.py --quick --device cpu --json FILE`."""
    path = tmp_path_factory.mktemp('bench') / 'report.json'
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        tool_main(['--quick', '--device', 'cpu', '--json', str(path)])
    return out.getvalue(), json.loads(path.read_text(encoding='utf-8'))


def _rows(report: dict, prefix: str) -> list[list]:
    return next(s for s in report['sections'] if s['title'].startswith(prefix))['rows']


def _measured(value) -> bool:
    return isinstance(value, float) and value > 0


# ------------------------------------------------------------------------------------- the report's structure


def test_prints_every_section_and_names_the_machine(quick_report):
    text, report = quick_report
    titles = [s['title'] for s in report['sections']]
    assert len(titles) == len(SECTION_TITLES)
    for title, expected in zip(titles, SECTION_TITLES, strict=True):
        assert title.startswith(expected) and f'### {title}' in text
    assert f'CPU, {torch.get_num_threads()} threads' in text.splitlines()[0] and torch.__version__ in text
    assert report['machine'] == f'CPU, {torch.get_num_threads()} threads' and report['torch'] == torch.__version__


def test_json_holds_the_printed_figures(quick_report):
    text, report = quick_report
    printed = _printed_tables(text)
    assert set(printed) == {s['title'] for s in report['sections']}
    for section in report['sections']:
        columns, rows = printed[section['title']]
        assert columns == section['columns']
        assert len(rows) == len(section['rows']), section['title']
        for printed_row, row in zip(rows, section['rows'], strict=True):
            assert len(printed_row) == len(row)
            for cell, value in zip(printed_row, row, strict=True):
                assert _same_figure(cell, value), f"{section['title']}: printed {cell!r}, json {value!r}"


def test_rows_measure_both_ways_and_skip_large_sizes_on_cpu(quick_report):
    report = quick_report[1]
    by_size: dict[str, list] = {}
    for row in _rows(report, '1. Prior'):
        by_size.setdefault(row[0], []).append(row)
    assert [r[2] for r in by_size['620×460 (SOTS)']] == [benchmark.SKIPPED_ON_CPU]
    assert [r[2] for r in by_size['1600×1200 (Dense/NH-HAZE)']] == [benchmark.SKIPPED_ON_CPU]
    for size in ('128×128', '256×256'):
        released, ours = by_size[size]
        assert released[1].startswith('released way (guided-diffusion UNet)')
        assert ours[1].startswith("difflid's way") and 'auto = float32' in ours[1]
        assert all(_measured(v) for v in (*released[2:6], *ours[2:6]))
    plain, diffloss = _rows(report, '2. Training step')
    assert 'DiffLoss' in diffloss[0] and plain[1] == diffloss[1] == 2  # --quick: batch 2
    assert all(_measured(v) for v in (*plain[2:], *diffloss[2:]))
    first, second = _rows(report, '3. Validation')  # --quick: the quickstart model only
    assert first[0] == second[0] == 'quickstart' and first[2] == second[2] == 2
    assert _measured(first[3]) and _measured(second[3])
    released, ours, sots = _rows(report, '4. Inference end to end')
    assert all(_measured(v) for v in (*released[2:], *ours[2:])) and sots[2] == benchmark.SKIPPED_ON_CPU


def test_params_and_flops_agree_with_guided_diffusion(quick_report):
    """Parameters against the UNets built here; FLOPs against guided-diffusion's own UNet run for real (its legacy
    attention is einsum, counted as plain matmuls): the full UNet once per timestep for the released way, the time
    embedding, encoder and middle block on both timesteps in one batch of 2 for difflid's way."""
    network, ours, released = _rows(quick_report[1], '5. Parameters and FLOPs')
    with torch.device('meta'):
        full, encoder = ADMUNet(**adm_flags('adm_tiny')), ADMUNet(**adm_flags('adm_tiny'), encoder_only=True)
    assert released[1] == pytest.approx(sum(p.numel() for p in full.parameters()) / 1e6)
    assert ours[1] == pytest.approx(sum(p.numel() for p in encoder.parameters()) / 1e6)
    assert 0 < network[2] < network[3]  # more pixels, more FLOPs
    script_util = pytest.importorskip('guided_diffusion.script_util', reason='reference: pip install -e .[dev]')
    from guided_diffusion.nn import timestep_embedding
    from torch.utils.flop_counter import FlopCounterMode

    reference = script_util.create_model(**adm_flags('adm_tiny')).eval()
    x = torch.randn(1, 3, 256, 256)
    released_way, encoder_way = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with torch.no_grad():
        with released_way:
            for t in (0, 500):
                reference(x, torch.tensor([t]))
        with encoder_way:
            emb = reference.time_embed(timestep_embedding(torch.tensor([0, 500]), reference.model_channels))
            h = x.expand(2, -1, -1, -1)
            for block in reference.input_blocks:
                h = block(h, emb)
            reference.middle_block(h, emb)
    assert released[2] == pytest.approx(released_way.get_total_flops() / 1e9, rel=1e-6)
    assert ours[2] == pytest.approx(encoder_way.get_total_flops() / 1e9, rel=1e-6)


def test_tool_wires_its_flags_through(tool_main, tmp_path, capsys):
    """--sizes forces a size on the CPU, --sections picks, --json writes the report; bad flags exit with one line."""
    path = tmp_path / 'report.json'
    report = tool_main(['--quick', '--device', 'cpu', '--sections', 'prior', '--sizes', '96x64', '--json',
                           str(path)])
    assert json.loads(path.read_text(encoding='utf-8')) == json.loads(json.dumps(report))
    rows = _rows(report, '1. Prior')
    forced = [r for r in rows if r[0] == '96×64']
    assert len(forced) == 2 and all(_measured(r[2]) for r in forced)
    assert [r[2] for r in rows if r[0] == '620×460 (SOTS)'] == [benchmark.SKIPPED_ON_CPU]
    out = capsys.readouterr().out
    assert '### 1. Prior' in out and '### 2.' not in out and report['repeats'] == 1
    for argv, message in ((['--train-batch', '0'], 'train_batch (--train-batch) must be at least 1'),
                          (['--warmup', '-1'], 'must be at least 0'), (['--sizes', '620'], 'WIDTHxHEIGHT'),
                          (['--sections', 'speed'], 'invalid choice')):
        with pytest.raises(SystemExit):
            tool_main([*argv, '--quick', '--device', 'cpu', '--sections', 'kernels'])  # no GPU: nothing runs
        assert message in capsys.readouterr().err


PRECOMPUTE_ROWS = {'online': 'online step, L1:', 'prior part': 'its prior part', 'precomputed': 'precomputed step, L1:',
                   'flops': 'FLOPs, L1:', 'online diffloss': 'online step, L1 + DiffLoss',
                   'precomputed diffloss': 'precomputed step, L1 + DiffLoss', 'flops diffloss': 'FLOPs, L1 + DiffLoss',
                   'precompute': 'precompute: the prior on one whole', 'storage': 'storage: one 620×460 (ITS) image',
                   'storage file': 'storage: the same entry', 'loader windows': 'loader: random',
                   'loader entries': 'loader, for contrast'}  # section 7's rows, in order, by the start of their label
# section 7's columns
S, RATE, VS, SHARE, PEAK, HOURS, GFLOP, MB, MB_S = range(2, 11)


def _precompute_rows(report: dict) -> dict[str, list]:
    rows = _rows(report, '7. Precomputed prior features')
    assert len(rows) == len(PRECOMPUTE_ROWS)
    for row, start in zip(rows, PRECOMPUTE_ROWS.values(), strict=True):
        assert row[0].startswith(start), (row[0], start)
    return dict(zip(PRECOMPUTE_ROWS, rows, strict=True))


def _tiny_store_shape() -> tuple[int, int, int]:
    """(rows, cols, channels) of an ITS-sized (620×460) entry of the tiny prior, from its UNet's own attributes."""
    with torch.device('meta'):
        encoder = ADMUNet(**adm_flags('adm_tiny'), encoder_only=True)
    stride = encoder.downsample_factor
    return math.ceil(460 / stride), math.ceil(620 / stride), encoder.hspace_channels


def test_precompute_section_measures_every_row_and_the_stored_bytes(quick_report):
    """Section 7 of --quick: every row measured; the entry's bytes against the formula and against np.save of an
    array of that shape; the loader's windows (--quick: 32² crops, 1 cell) and whole entries against their
    sizes, and its MB/s against bytes over time."""
    rows = _precompute_rows(quick_report[1])
    height, width, channels = _tiny_store_shape()
    entry = height * width * 2 * channels * 2  # cells x (t1, t2) x channels x fp16
    assert rows['storage'][MB] == pytest.approx(entry / 1e6, rel=1e-12)
    npy = io.BytesIO()
    np.save(npy, np.zeros((height, width, 2, channels), np.float16))
    assert rows['storage file'][MB] == pytest.approx(len(npy.getvalue()) / 1e6, rel=1e-12)
    window = benchmark.QUICK_CROP // 32  # cells a side; the stride of adm_tiny's h-space is 32, as adm256_uncond's
    assert rows['loader windows'][MB] == pytest.approx(window ** 2 * 2 * channels * 2 / 1e6, rel=1e-12)
    assert rows['loader entries'][MB] == pytest.approx(entry / 1e6, rel=1e-12)
    for name in ('loader windows', 'loader entries'):
        row = rows[name]
        assert _measured(row[S]) and row[RATE] == pytest.approx(1 / row[S])
        assert row[MB_S] == pytest.approx(row[MB] / row[S])
    for name in ('online', 'prior part', 'precomputed', 'online diffloss', 'precomputed diffloss', 'precompute'):
        assert _measured(rows[name][S]) and _measured(rows[name][PEAK]), name
    assert f'{benchmark.QUICK_CROP}×{benchmark.QUICK_CROP} image (a stand-in' in rows['precompute'][0]  # on the CPU
    for loss in ('', ' diffloss'):
        online, precomputed, flops = rows['online' + loss], rows['precomputed' + loss], rows['flops' + loss]
        assert flops[VS] == pytest.approx(online[GFLOP] / precomputed[GFLOP]) and flops[VS] > 1
        assert flops[SHARE] == pytest.approx(100 * rows['prior part'][GFLOP] / online[GFLOP])


# ------------------------------------------------------------------------ the arithmetic, on known timings

SECONDS = {'released': 2.0, 'ours': 0.5, 'L1': 0.36, 'DiffLoss': 1.8}  # stand-in s per call, and their answers:
# speed-up 2.0 / 0.5 = 4; hours for 418,800 iterations: 0.36 s -> 41.88, 1.8 s -> 209.4; it/s 1 / 0.36 = 2.78


def _stand_in_measure(fn, device, repeats, warmup, holders=()) -> Timing:
    """A timing chosen by what the row holds, without calling ``fn``; 1.5 GiB peak memory."""
    if any(isinstance(h, DiffLoss) for h in holders):
        way = 'DiffLoss'
    elif any(isinstance(h, torch.optim.Optimizer) for h in holders):
        way = 'L1'
    else:
        way = 'ours' if any(isinstance(h, GuidanceExtractor) for h in holders) else 'released'
    return Timing(SECONDS[way], 1.5)


def test_rows_derive_rates_speed_up_and_hours_from_the_timings(monkeypatch):
    monkeypatch.setattr(benchmark, 'measure_or_oom', _stand_in_measure)
    monkeypatch.setattr(benchmark, 'validation_passes', lambda *args: [2.0, 8.0])  # images/s, first and second
    _, report = _run(sections=('prior', 'train', 'val', 'infer'))
    prior = _rows(report, '1. Prior')
    assert prior[0][2:6] == [2.0, 0.5, 1.5, 1.0] and prior[1][2:6] == [0.5, 2.0, 1.5, pytest.approx(4.0)]
    plain, diffloss = _rows(report, '2. Training step')
    assert plain[2:] == [pytest.approx(2.778, abs=1e-3), 0.36, 1.5, pytest.approx(41.88)]
    assert diffloss[2:] == [pytest.approx(0.5556, abs=1e-4), 1.8, 1.5, pytest.approx(209.4)]
    assert [row[3:] for row in _rows(report, '3. Validation')] == [[2.0, 1.0], [8.0, 4.0]]
    released, ours, _ = _rows(report, '4. Inference end to end')
    assert released[2:] == [0.5, 2.0, 1.5, 1.0] and ours[2:] == [2.0, 0.5, 1.5, pytest.approx(4.0)]


def test_out_of_memory_is_a_row_not_a_crash(monkeypatch):
    def released_runs_out(fn, device, repeats, warmup, holders=()):
        return None if not any(isinstance(h, GuidanceExtractor) for h in holders) else Timing(0.5, 1.5)

    monkeypatch.setattr(benchmark, 'measure_or_oom', released_runs_out)
    _, report = _run(sections=('prior', 'infer'))
    for prefix in ('1. Prior', '4. Inference'):
        released, ours = _rows(report, prefix)[:2]
        assert released[2] == benchmark.OUT_OF_MEMORY and released[3:6] == [None] * 3
        assert ours[5] is None and _measured(ours[4])  # no speed-up without a baseline


def test_precomputed_steps_never_run_the_prior_and_rows_derive_from_timings(monkeypatch):
    """Each timed call of section 7 runs once for real, and its stand-in time tells how often the prior's forward ran:
    1 + 2 s per call for a training step, 0.5 + 1 s per call otherwise. An online step runs the prior once, a
    precomputed one never (DiffLoss runs the UNet through ``diffusion_pass``, not the guidance). --sizes 620x460 asks
    for the ITS-sized precompute on the CPU: its input is checked (both orientations of one image)
    instead of run (seconds)."""
    calls, precompute_inputs = [], []
    forward = GuidanceExtractor.forward

    def counted_forward(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return forward(self, *args, **kwargs)

    def run_once(fn, device, repeats, warmup, holders=()) -> Timing:
        its = [h for h in holders if torch.is_tensor(h) and h.shape[-1] == 620]
        if its:
            precompute_inputs.extend(its)
            return Timing(1.5, 1.5)
        before = len(calls)
        fn()
        ran = len(calls) - before
        training = any(isinstance(h, torch.optim.Optimizer) for h in holders)
        return Timing(1.0 + 2.0 * ran if training else 0.5 + ran, 1.5)

    monkeypatch.setattr(GuidanceExtractor, 'forward', counted_forward)
    monkeypatch.setattr(benchmark, 'measure_or_oom', run_once)
    monkeypatch.setattr(benchmark, 'guidance_flops', lambda *args: 3e9)  # FLOPs: the prior 3 G, the step 1 G / 9 G
    monkeypatch.setattr(benchmark, 'step_flops', lambda *args: 9e9 if args[-1] else 1e9)
    monkeypatch.setattr(benchmark, 'count_flops', lambda *args, **kwargs: 5e9)
    _, report = _run(sections=('precompute',), sizes=((620, 460),))
    rows = _precompute_rows(report)
    hours = benchmark.PAPER_ITERATIONS / 3600
    assert rows['online'][S:GFLOP + 1] == [3.0, pytest.approx(1 / 3), pytest.approx(3.0), pytest.approx(50.0), 1.5,
                                           pytest.approx(3 * hours), pytest.approx(4.0)]
    assert rows['prior part'][S:GFLOP + 1] == [1.5, pytest.approx(1 / 1.5), None, pytest.approx(50.0), 1.5, None,
                                               pytest.approx(3.0)]
    assert rows['precomputed'][S:GFLOP + 1] == [1.0, 1.0, 1.0, None, 1.5, pytest.approx(hours), pytest.approx(1.0)]
    assert rows['online diffloss'][S:GFLOP + 1] == [3.0, pytest.approx(1 / 3), pytest.approx(3.0),
                                                    pytest.approx(50.0), 1.5, pytest.approx(3 * hours),
                                                    pytest.approx(12.0)]
    assert rows['precomputed diffloss'][S:HOURS + 1] == [1.0, 1.0, 1.0, None, 1.5, pytest.approx(hours)]
    assert rows['flops'][VS:SHARE + 1] == [pytest.approx(4.0), pytest.approx(75.0)]
    assert rows['flops diffloss'][VS:SHARE + 1] == [pytest.approx(12 / 9), pytest.approx(25.0)]
    height, width, channels = _tiny_store_shape()
    stored = 2 * height * width * 2 * channels * 2 / 1e6  # both orientations of one 620×460 image, fp16
    assert rows['precompute'][0].startswith('precompute: the prior on one whole 620×460 (ITS) image, both orient')
    (images,) = precompute_inputs
    assert images.shape == (2, 3, 460, 620) and torch.equal(images[1], images[0].flip(-1))
    assert rows['precompute'][S:] == [1.5, pytest.approx(1 / 1.5), None, None, 1.5, None, 5.0,
                                      pytest.approx(stored), pytest.approx(stored / 1.5)]


def test_flop_ratio_of_the_paper_step_against_its_parts():
    """At the paper's shapes (adm256_uncond, DiffLI2D, 128² crops; batch 1: FLOPs scale with it), on fake tensors:
    the prior's part is the UNet encoder's forward on both timesteps, counted here on ADMUNet itself; the
    precomputed step is the network's forward and backward, 2 to 3 forwards counted here; the ratio is the issue's
    'FLOPs say up to 9.6×' give or take the backward's estimate."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    block = {'type': 'HSpaceExtractor', 'unet': 'adm256_uncond', 'random_weights': True, 'timesteps': [0, 500],
             'dtype': 'fp32'}
    prior = benchmark.guidance_flops(block, 1, 128)
    step = benchmark.step_flops({'type': 'DiffLI2D'}, block, 1, 128, False)
    encoder_pass, network_forward = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with FakeTensorMode(allow_non_fake_inputs=True), sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        encoder = ADMUNet(**adm_flags('adm256_uncond'), encoder_only=True)
        with encoder_pass:
            encoder.forward_hspace(torch.randn(2, 3, 128, 128), torch.tensor([0, 500]))
        net = build_network({'type': 'DiffLI2D'})
        h = torch.randn(1, encoder.hspace_channels, 4, 4)
        with network_forward:
            net(torch.rand(1, 3, 128, 128), h, h)
    assert prior == encoder_pass.get_total_flops()
    assert 2 * network_forward.get_total_flops() < step <= 3 * network_forward.get_total_flops()
    assert 8 < (prior + step) / step < 12


# ------------------------------------------------------------------------ the measuring primitives


def test_measure_reports_the_median_timed_call_and_the_first_warmup():
    sleeps = iter([0.2, 0.01, 0.01, 0.4])  # one warm-up call, then three timed ones (mean 0.14 s, median 0.01 s)
    timing = measure(lambda: time.sleep(next(sleeps)), torch.device('cpu'), repeats=3, warmup=1)
    assert 0.01 <= timing.seconds < 0.1 and timing.first_call_s >= 0.2


def test_measure_adds_what_the_row_holds_to_what_its_calls_allocate():
    if resident_bytes() is None:
        pytest.skip('no /proc/self/statm on this system')
    held = torch.empty(96 * MIB // 4)  # 0.094 GiB, counted from its size (never touched, so not resident)

    def allocate():
        block = torch.ones(128 * MIB // 4)  # 0.125 GiB, written so that its pages are resident
        time.sleep(0.05)  # the sampling thread sees it
        del block

    timing = measure(allocate, torch.device('cpu'), repeats=1, warmup=0, holders=(held,))
    assert 0.2 < timing.peak_gib < 0.6  # 0.094 + 0.125 = 0.219


def test_peak_resident_growth_sees_an_allocation():
    if resident_bytes() is None:
        pytest.skip('no /proc/self/statm on this system')
    with PeakResidentGrowth() as growth:
        block = torch.ones(128 * MIB // 4)  # 128 MiB, written so that its pages are resident
        time.sleep(0.1)  # the sampling thread sees it
        del block  # freed before the block ends: only the thread can have seen it
    assert 0.1 < growth.gib < 0.5


def test_tensor_bytes_counts_each_storage_once():
    x = torch.zeros(1000)
    assert tensor_bytes(x, x[:10], x.view(10, 100)) == 4000
    linear = nn.Linear(10, 20)  # 200 + 20 float32 parameters
    optimizer = torch.optim.Adam(linear.parameters())
    linear(torch.rand(1, 10)).sum().backward()
    optimizer.step()  # state per parameter: exp_avg, exp_avg_sq, and a float32 step
    assert tensor_bytes(linear, linear.weight) == 880
    assert tensor_bytes(optimizer) == 2 * 880 + 2 * 4
    assert tensor_bytes(linear, optimizer) == 3 * 880 + 2 * 4


def test_count_flops_matches_the_formulas():
    """conv: 2·Cin·Cout·k²·H·W; linear: 2·in·out per row; attention: 2 matmuls of 2·T·T·D per head (the CPU's fused
    kernel has no formula in FlopCounterMode, so this also sees the math backend being forced)."""
    conv = count_flops(lambda: nn.Conv2d(3, 8, 3, padding=1, bias=False), lambda m: m(torch.rand(1, 3, 16, 12)))
    assert conv == 2 * 3 * 8 * 9 * 16 * 12
    linear = count_flops(lambda: nn.Linear(8, 4), lambda m: m(torch.rand(5, 8)))
    assert linear == 2 * 8 * 4 * 5
    q = torch.rand(2, 3, 16, 8)  # (B, heads, T, D)
    attention = count_flops(nn.Identity, lambda m: nn.functional.scaled_dot_product_attention(m(q), q, q))
    assert attention == 2 * (2 * 2 * 3 * 16 * 16 * 8)


@pytest.mark.parametrize('name, peak', [('NVIDIA H100 80GB HBM3', 989.4), ('NVIDIA H100 SXM5', 989.4),
                                        ('NVIDIA H200', 989.4), ('NVIDIA A100-SXM4-80GB', 312.0),
                                        ('NVIDIA H100 PCIe', None), ('NVIDIA GeForce RTX 4090', None)])
def test_bf16_peak_by_device_name(name, peak):
    assert bf16_peak_tflops(name) == peak


@pytest.mark.parametrize('value, printed', [(None, '-'), ('x', 'x'), (40, '40'), (1234.4, '1234'), (12.345, '12.3'),
                                            (1.2345, '1.23'), (0.012345, '0.0123'), (-0.5, '-0.5')])
def test_cells_print_three_significant_figures_at_most(value, printed):
    assert benchmark.format_cell(value) == printed


def test_size_argument():
    assert benchmark.parse_size('620x460') == (620, 460) and benchmark.parse_size('620×460') == (620, 460)
    with pytest.raises(ValueError, match='WIDTHxHEIGHT'):
        benchmark.parse_size('620')
    with pytest.raises(ValueError, match='positive'):
        benchmark.parse_size('0x460')


def _verdicts(found: dict[str, str]) -> tuple[str, ...]:
    return tuple(found[k] for k in ('flash', 'memory-efficient', 'cuDNN', 'math fallback'))


def test_attention_kernels_are_recognised_by_name():
    flash_kernel = 'void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4, false, cutlass::bf16'
    found = attention_kernels(['aten::conv2d', 'aten::scaled_dot_product_attention',
                               'aten::_scaled_dot_product_flash_attention', flash_kernel])
    assert _verdicts(found) == ('yes', 'no', 'no', 'no')
    assert 'aten::conv2d' not in found['kernels seen'] and 'flash_fwd_kernel' in found['kernels seen']
    found = attention_kernels(['aten::_scaled_dot_product_efficient_attention',
                               'fmha_cutlassF_f32_aligned_64x64_rf_sm80(AttentionKernel'])
    assert _verdicts(found) == ('no', 'yes', 'no', 'no')
    assert _verdicts(attention_kernels(['fmha_cutlassF_f32_aligned_64x64_rf_sm80'])) == ('no', 'yes', 'no', 'no')
    found = attention_kernels(['aten::_scaled_dot_product_cudnn_attention', 'cudnn_generated_sdpa_sm90'])
    assert _verdicts(found) == ('no', 'no', 'yes', 'no')
    found = attention_kernels(['aten::_scaled_dot_product_attention_math', 'aten::bmm'])
    assert _verdicts(found) == ('no', 'no', 'no', 'yes')
    assert attention_kernels(['aten::conv2d'])['kernels seen'] == 'none'
