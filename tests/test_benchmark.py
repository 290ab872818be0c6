"""tools/benchmark.py in --quick mode (tiny prior, seconds on a CPU): its sections, that --json holds the figures
it prints, and the arithmetic between them. The full benchmark is never run here."""
import contextlib
import importlib.util
import io
import itertools
import json
import math
import time

import pytest
import torch

from difflid.priors.adm_unet_arch import ADMUNet, adm_flags
from tests.conftest import REPO_ROOT

SECTION_TITLES = ('1. Prior', '2. Training step', '3. Validation', '4. Inference end to end',
                  '5. Parameters and FLOPs', '6. Attention kernels')


def _load_tool():
    spec = importlib.util.spec_from_file_location('difflid_benchmark_tool', REPO_ROOT / 'tools' / 'benchmark.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


benchmark = _load_tool()


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


@pytest.fixture(scope='module')
def quick_report(tmp_path_factory) -> tuple[str, dict]:
    """(printed text, --json contents) of one --quick run on the CPU."""
    path = tmp_path_factory.mktemp('bench') / 'report.json'
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        benchmark.main(['--quick', '--device', 'cpu', '--json', str(path)])
    return out.getvalue(), json.loads(path.read_text(encoding='utf-8'))


def _rows(report: dict, prefix: str) -> list[list]:
    return next(s for s in report['sections'] if s['title'].startswith(prefix))['rows']


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


def test_prior_rows_compare_both_ways_and_skip_large_sizes_on_cpu(quick_report):
    rows = _rows(quick_report[1], '1. Prior')
    by_size: dict[str, list] = {}
    for row in rows:
        by_size.setdefault(row[0], []).append(row)
    assert [r[2] for r in by_size['620×460 (SOTS)']] == [benchmark.SKIPPED_ON_CPU]
    assert [r[2] for r in by_size['1600×1200 (Dense/NH-HAZE)']] == [benchmark.SKIPPED_ON_CPU]
    for size in ('128×128', '256×256'):
        released, ours = by_size[size]
        assert released[1].startswith('released way (guided-diffusion UNet)') and released[5] == 1.0
        assert ours[1].startswith("difflid's way") and 'auto = float32' in ours[1]
        assert ours[3] == pytest.approx(1 / ours[2]) and released[3] == pytest.approx(1 / released[2])
        assert ours[5] == pytest.approx(released[2] / ours[2])  # speed-up = released latency / ours


def test_training_validation_and_inference_arithmetic(quick_report):
    report = quick_report[1]
    plain, diffloss = _rows(report, '2. Training step')
    assert 'DiffLoss' in diffloss[0] and plain[1] == diffloss[1] == 2  # --quick: batch 2
    for row in (plain, diffloss):
        assert row[2] == pytest.approx(1 / row[3]) and row[5] == pytest.approx(420_000 * row[3] / 3600)
    first, second = _rows(report, '3. Validation')  # --quick: the quickstart model only
    assert first[0] == second[0] == 'quickstart' and first[2] == second[2] == 2
    assert second[4] == pytest.approx(second[3] / first[3])
    released, ours, sots = _rows(report, '4. Inference end to end')
    assert ours[5] == pytest.approx(released[3] / ours[3]) and sots[2] == benchmark.SKIPPED_ON_CPU


def test_params_and_flops_agree_with_independent_counts(quick_report):
    network, ours, released = _rows(quick_report[1], '5. Parameters and FLOPs')
    with torch.device('meta'):
        full, encoder = ADMUNet(**adm_flags('adm_tiny')), ADMUNet(**adm_flags('adm_tiny'), encoder_only=True)
    assert released[1] == pytest.approx(sum(p.numel() for p in full.parameters()) / 1e6)
    assert ours[1] == pytest.approx(sum(p.numel() for p in encoder.parameters()) / 1e6)
    assert 0 < ours[2] < released[2] and 0 < network[2] < network[3]  # more pixels, more FLOPs
    # guided-diffusion's own UNet, run for real: its legacy attention is einsum, counted as plain matmuls
    script_util = pytest.importorskip('guided_diffusion.script_util', reason='reference: pip install -e .[dev]')
    from torch.utils.flop_counter import FlopCounterMode

    reference = script_util.create_model(**adm_flags('adm_tiny')).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        for t in (0, 500):
            reference(torch.randn(1, 3, 256, 256), torch.tensor([t]))
    assert released[2] == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-6)


def test_sizes_force_a_size_on_cpu(capsys):
    report = benchmark.main(['--quick', '--device', 'cpu', '--sections', 'prior', '--sizes', '96x64'])
    rows = _rows(report, '1. Prior')
    forced = [r for r in rows if r[0] == '96×64']
    assert len(forced) == 2 and all(isinstance(r[2], float) and r[2] > 0 for r in forced)
    assert [r[2] for r in rows if r[0] == '620×460 (SOTS)'] == [benchmark.SKIPPED_ON_CPU]
    assert '### 2.' not in capsys.readouterr().out


def test_peak_resident_growth_sees_an_allocation():
    if benchmark._resident_bytes() is None:
        pytest.skip('no /proc/self/statm on this system')
    with benchmark.PeakResidentGrowth() as growth:
        block = torch.ones(128 * 2 ** 20 // 4)  # 128 MiB, written so that its pages are resident
        time.sleep(0.1)  # the sampling thread sees it
        del block  # freed before the block ends: only the thread can have seen it
    assert growth.gib > 0.1


@pytest.mark.parametrize('name, peak', [('NVIDIA H100 80GB HBM3', 989.4), ('NVIDIA H100 SXM5', 989.4),
                                        ('NVIDIA H200', 989.4), ('NVIDIA A100-SXM4-80GB', 312.0),
                                        ('NVIDIA H100 PCIe', None), ('NVIDIA GeForce RTX 4090', None)])
def test_bf16_peak_by_device_name(name, peak):
    assert benchmark.bf16_peak_tflops(name) == peak


def test_size_argument():
    assert benchmark.parse_size('620x460') == (620, 460) and benchmark.parse_size('620×460') == (620, 460)
    with pytest.raises(Exception, match='WIDTHxHEIGHT'):
        benchmark.parse_size('620')


def _verdicts(found: dict[str, str]) -> tuple[str, ...]:
    return tuple(found[k] for k in ('flash', 'memory-efficient', 'cuDNN', 'math fallback'))


def test_attention_kernels_are_recognised_by_name():
    flash_kernel = 'void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4, false, cutlass::bf16'
    found = benchmark.attention_kernels(['aten::conv2d', 'aten::scaled_dot_product_attention',
                                         'aten::_scaled_dot_product_flash_attention', flash_kernel])
    assert _verdicts(found) == ('yes', 'no', 'no', 'no')
    assert 'aten::conv2d' not in found['kernels seen'] and 'flash_fwd_kernel' in found['kernels seen']
    found = benchmark.attention_kernels(['aten::_scaled_dot_product_efficient_attention',
                                         'fmha_cutlassF_f32_aligned_64x64_rf_sm80(AttentionKernel'])
    assert _verdicts(found) == ('no', 'yes', 'no', 'no')
    found = benchmark.attention_kernels(['aten::_scaled_dot_product_cudnn_attention', 'cudnn_generated_sdpa_sm90'])
    assert _verdicts(found) == ('no', 'no', 'yes', 'no')
    found = benchmark.attention_kernels(['aten::_scaled_dot_product_attention_math', 'aten::bmm'])
    assert _verdicts(found) == ('no', 'no', 'no', 'yes')
    assert benchmark.attention_kernels(['aten::conv2d'])['kernels seen'] == 'none'
