"""compare_results bolds a best only where methods differ: never the degraded input's own columns."""
import numpy as np

from difflid.reports import compare_results, write_metric_csv

PSNR = {'A': [20.0, 30.0], 'B': [22.0, 29.0], 'C': [21.0, 28.0]}
INPUT_PSNR = [15.0, 18.0]  # the same degraded input for every method
SSIM = [0.8, 0.9]           # a metric on which all methods agree


def _cells(table: str, name: str) -> list[str]:
    row = next(line for line in table.splitlines() if line.startswith(f'| {name} |'))
    return [c.strip() for c in row.strip('|').split('|')]


def test_only_a_column_where_methods_differ_has_a_bold_best(tmp_path):
    for name, psnr in PSNR.items():
        (tmp_path / name).mkdir()
        write_metric_csv(tmp_path / name / 'metrics_Set.csv', [
            {'image': image, 'psnr': p, 'ssim': s, 'psnr_input': q}
            for image, p, s, q in zip(('x', 'y'), psnr, SSIM, INPUT_PSNR, strict=True)])
    table = compare_results([tmp_path / n for n in PSNR])
    assert '| method | images | psnr | ssim | psnr_input | psnr better than A |' in table
    means = {n: np.mean(p) for n, p in PSNR.items()}  # A 25.0, B 25.5, C 24.5
    best = max(means, key=means.get)
    for name in PSNR:
        cells = _cells(table, name)
        psnr = f'{means[name]:.4f}'
        assert cells[2] == (f'**{psnr}**' if name == best else psnr)
        assert cells[3] == f'{np.mean(SSIM):.4f}' and cells[4] == f'{np.mean(INPUT_PSNR):.4f}'  # not bold
    assert table.count('**') == 2  # one bold cell in the whole table
