"""The quality study online vs precomputed prior features (tools/precompute_study.py,
difflid.analysis.precompute_study): the quick study end to end, and the table's statistics against an independent
computation."""
import json
import math
import runpy
import sys

import numpy as np
import pytest

from difflid.analysis.precompute_study import render_table, summarize
from difflid.utils.feature_store import FeatureStore
from tests.conftest import REPO_ROOT

PRIORS = {'random': 'random tiny prior', 'trained': 'trained tiny prior (bundled)'}
MODES = {'online': ('online', None), 'k1': ('precomputed K=1', 1), 'k4': ('precomputed K=4', 4)}


def table_rows(markdown: str) -> dict[tuple[str, str], list[str]]:
    """The table's body rows by (prior label, mode label); each row's remaining cells."""
    lines = [line for line in markdown.splitlines() if line.startswith('| ')][1:]  # the header is the first
    cells = [[c.strip() for c in line.strip().strip('|').split('|')] for line in lines]
    return {(c[0], c[1]): c[2:] for c in cells}


def run_tool(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, 'argv', ['precompute_study.py', *args])
    runpy.run_path(str(REPO_ROOT / 'tools' / 'precompute_study.py'), run_name='__main__')


@pytest.mark.slow
def test_quick_study_trains_every_row_and_precomputed_runs_read_the_store(tmp_path, monkeypatch, capsys):
    """6 rows with finite values; each run's numbers are its own test report's; online runs built the prior and
    precomputed ones did not (the random prior warns when it is built) but read their prior's one K = 4 store, and a
    rerun runs nothing."""
    workdir = tmp_path / 'study'
    run_tool(monkeypatch, '--quick', '--workdir', str(workdir))
    shown = capsys.readouterr().out
    markdown = (workdir / 'precompute_study.md').read_text(encoding='utf-8')
    assert markdown.strip() in shown
    rows = table_rows(markdown)
    assert set(rows) == {(p, m[0]) for p in PRIORS.values() for m in MODES.values()}
    for cells in rows.values():
        psnr, ssim = float(cells[0]), float(cells[1])  # one seed: the mean alone
        assert math.isfinite(psnr) and 10 < psnr < 50 and 0 < ssim <= 1

    report = json.loads((workdir / 'precompute_study.json').read_text(encoding='utf-8'))
    stores = {}
    for row in report['rows']:
        (run,) = row['runs']
        name = f'precompute_study_{row["prior"]}_{row["mode"]}_s0'
        assert run['name'] == name
        means = json.loads((workdir / 'results' / name / 'metrics_held_out.json').read_text(encoding='utf-8'))['means']
        assert (run['psnr'], run['ssim']) == (means['psnr'], means['ssim'])
        assert rows[(PRIORS[row['prior']], MODES[row['mode']][0])][:2] == [f'{means["psnr"]:.2f}',
                                                                           f'{means["ssim"]:.4f}']
        (log,) = (workdir / 'experiments' / name).glob('train_*.log')
        text = log.read_text(encoding='utf-8')
        built = 'RANDOM weights' in text  # HSpaceExtractor's warning when the random prior is built
        if row['mode'] == 'online':
            assert 'computed online' in text and 'precomputed in' not in text
            assert built == (row['prior'] == 'random')
            continue
        assert not built and 'computed online' not in text
        store = text.split('precomputed in ', 1)[1].split(' (', 1)[0]
        stores.setdefault(row['prior'], set()).add(store)
        index = FeatureStore(store).index()
        assert len(index) == 2 and all(r.draws == 4 and set(r.orientations) == {0, 1} for r in index.values())
    assert [len(s) for s in stores.values()] == [1, 1]  # K = 1 and K = 4 share their prior's store
    assert stores['random'] != stores['trained']

    steps = (workdir / 'steps.jsonl').read_text(encoding='utf-8').splitlines()
    assert len(steps) == 2 + 6 * 2  # a precompute per prior, a training and a test per run
    run_tool(monkeypatch, '--quick', '--workdir', str(workdir))
    assert capsys.readouterr().out.count('finished, skipped') == 6
    assert (workdir / 'steps.jsonl').read_text(encoding='utf-8').splitlines() == steps


def _report(values: dict[tuple[str, str], list[tuple[float, float]]]) -> dict:
    rows = [{'prior': p, 'prior_label': PRIORS[p], 'mode': m, 'mode_label': MODES[m][0], 'draws': MODES[m][1],
             'runs': [{'seed': s, 'psnr': psnr, 'ssim': ssim, 's_per_iter': 0.1} for s, (psnr, ssim) in enumerate(v)]}
            for (p, m), v in values.items()]
    report = {'seeds': [0, 1, 2], 'iterations': 10, 'batch': 8, 'crop': 64, 'orientations': 2,
              'train_set': {'images': ['a'], 'hazy_per_image': 2, 'max_side': 96},
              'test_set': {'name': 'held_out', 'images': ['b'], 'hazy_per_image': 3, 'max_side': 96},
              'input': {'psnr': 12.0, 'ssim': 0.5}, 'precompute': {}, 'steps': {}}
    return summarize(report, rows)


def test_table_gives_mean_and_sample_std_of_the_seeds_and_says_what_is_outside_the_spread():
    values = {
        ('random', 'online'): [(20.0, 0.80), (20.4, 0.81), (19.5, 0.79)],
        ('random', 'k1'): [(20.3, 0.805), (20.1, 0.82), (19.9, 0.80)],  # within online's spread
        ('random', 'k4'): [(21.0, 0.83), (21.3, 0.84), (21.1, 0.835)],
        ('trained', 'online'): [(20.0, 0.80), (20.2, 0.80), (20.1, 0.81)],
        ('trained', 'k1'): [(20.1, 0.801), (20.15, 0.80), (20.05, 0.81)],
        ('trained', 'k4'): [(22.0, 0.85), (22.1, 0.86), (21.9, 0.855)],  # far above online
    }
    markdown = render_table(_report(values))
    rows = table_rows(markdown)
    for (prior, mode), seeds in values.items():
        psnr, ssim = np.array(seeds).T
        cells = rows[(PRIORS[prior], MODES[mode][0])]
        assert cells[0] == f'{psnr.mean():.2f} ± {psnr.std(ddof=1):.2f}'
        assert cells[1] == f'{ssim.mean():.4f} ± {ssim.std(ddof=1):.4f}'
        assert cells[3] == ', '.join(f'{v:.2f}' for v in psnr) and cells[4] == ', '.join(f'{v:.4f}' for v in ssim)
    notes = {line.split(': PSNR')[0]: line for line in markdown.splitlines() if line.startswith('- ')}
    far = notes['- trained tiny prior (bundled): precomputed K=4 vs online']
    assert 'PSNR +1.90 dB (outside the spread)' in far
    assert 'PSNR +0.13 dB (within the spread)' in notes['- random tiny prior: precomputed K=1 vs online']
    between_priors = notes['- precomputed K=4: trained tiny prior (bundled) vs random tiny prior']
    assert 'PSNR +0.87 dB (outside the spread)' in between_priors
    assert 'SSIM +0.0200 (outside the spread)' in between_priors
