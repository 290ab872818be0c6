"""Test reports: per-image metric CSVs, mean tables in Markdown (and the same means as JSON), side-by-side
sheets, and comparisons of several methods' result folders (``tools/compare_results.py``)."""
import csv
import json
from pathlib import Path

import cv2
import numpy as np

from difflid.utils.checkpoint_io import atomic_open

__all__ = ['compare_results', 'mean_table', 'read_means', 'read_metric_csv', 'write_means', 'write_metric_csv',
           'write_sheet']


def write_metric_csv(path: str | Path, records: list[dict]) -> None:
    """One row per image: ``image,<metric>,...``."""
    with atomic_open(path, 'w') as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]), lineterminator='\n')
        writer.writeheader()
        writer.writerows({k: (f'{v:.6f}' if isinstance(v, float) else v) for k, v in r.items()} for r in records)


def read_metric_csv(path: str | Path) -> list[dict]:
    with open(path, encoding='utf-8', newline='') as f:
        return [{k: (v if k == 'image' else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def mean_table(rows: dict[str, dict[str, float]], first_column: str = 'set') -> str:
    """Markdown table: one row per key of ``rows`` ({name: {'images': n, metric: value}})."""
    metrics = list(dict.fromkeys(m for values in rows.values() for m in values))
    lines = [f'| {first_column} | ' + ' | '.join(metrics) + ' |', '|---' * (len(metrics) + 1) + '|']
    for name, values in rows.items():
        cells = [(f'{values[m]:.4f}' if isinstance(values.get(m), float) else str(values.get(m, '-'))) for m in metrics]
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def write_means(path: str | Path, images: int, means: dict[str, float], set_level: set[str],
                lower_better: set[str]) -> None:
    """The mean table as JSON, so tools read set-level metrics (FID: in no per-image CSV) and each metric's
    direction (``better: lower`` in its options) without parsing Markdown."""
    report = {'images': images, 'means': means, 'set_level': sorted(set_level & set(means)),
              'lower_better': sorted(lower_better & set(means))}
    with atomic_open(path, 'w') as f:
        f.write(json.dumps(report, indent=2) + '\n')


def read_means(results: str | Path, set_name: str) -> dict:
    """``{'means': {metric: value}, 'lower_better': [...] or None}`` of one test set in a results folder: from
    ``metrics_<set>.json``, else (reports written before it existed) from the table in ``metrics_<set>.md``,
    which does not record directions. Empty means when neither file is there."""
    json_path, md_path = Path(results) / f'metrics_{set_name}.json', Path(results) / f'metrics_{set_name}.md'
    if json_path.is_file():
        report = json.loads(json_path.read_text(encoding='utf-8'))
        return {'means': report['means'], 'lower_better': report.get('lower_better')}
    means = {}
    if md_path.is_file():
        rows = [[c.strip() for c in line.strip().strip('|').split('|')]
                for line in md_path.read_text(encoding='utf-8').splitlines() if line.startswith('|')]
        if len(rows) >= 3:  # header, separator, the set's row (see ``mean_table``)
            for column, cell in zip(rows[0][1:], rows[2][1:], strict=False):
                try:
                    means[column] = float(cell.strip('*'))
                except ValueError:
                    continue  # '-' or text
        means.pop('images', None)
    return {'means': means, 'lower_better': None}


def _lower_is_better(metric: str, reports: list[dict]) -> bool:
    """As the reports' options say; by name (LPIPS, FID, NIQE) for reports that do not record it."""
    if any(metric in (r['lower_better'] or ()) for r in reports):
        return True
    return any(word in metric.lower() for word in ('lpips', 'fid', 'niqe'))


def _ranked(metric: str, shown: dict[str, str]) -> bool:
    """Whether a column's best is worth bolding: not the degraded input's own score (``<metric>_input``, the same
    input for every method), and not a column where every method shows the same value (nothing is best)."""
    return not metric.endswith('_input') and len(set(shown.values())) > 1


def _label(img: np.ndarray, text: str) -> np.ndarray:
    img = img.copy()
    scale = max(0.4, img.shape[1] / 600)
    (_, height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 3)
    origin = (6, height + 6)  # baseline below the text's full height: nothing clipped at the top
    cv2.putText(img, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def write_sheet(path: str | Path, panels: dict[str, np.ndarray]) -> None:
    """Side-by-side PNG of equally sized uint8 BGR images, each labelled (e.g. input | restored | GT)."""
    gap = np.full((next(iter(panels.values())).shape[0], 4, 3), 255, np.uint8)
    row = [x for name, img in panels.items() for x in (_label(img, name), gap)][:-1]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        f.write(cv2.imencode('.png', np.concatenate(row, axis=1))[1].tobytes())


def compare_results(folders: list[str | Path], names: list[str] | None = None) -> str:
    """One Markdown table per test set found in every folder: mean of each metric per method, the best in bold
    (as shown, to 4 decimals; not in the inputs' own ``*_input`` columns nor where all methods agree), and,
    against the first method, on how many images each other method scores better on the first per-image metric.
    Per-image metrics come from ``metrics_<set>.csv``; set-level ones (FID) from ``metrics_<set>.json`` (or, for
    older reports, the ``metrics_<set>.md`` mean table), since no per-image CSV can hold them."""
    folders = [Path(f) for f in folders]
    names = names or [f.name for f in folders]
    if len(names) != len(folders):
        raise ValueError(f'{len(folders)} folders but {len(names)} names')
    per_folder = []
    for folder in folders:
        found = {p.name[len('metrics_'):-len('.csv')]: read_metric_csv(p) for p in sorted(folder.glob('metrics_*.csv'))}
        if not found:
            raise FileNotFoundError(f'no metrics_<set>.csv in {folder} (write them with tools/test.py)')
        per_folder.append(found)
    common = [s for s in per_folder[0] if all(s in f for f in per_folder[1:])]
    if not common:
        raise ValueError('the folders have no test set in common: ' + '; '.join(
            f'{n}: {sorted(f)}' for n, f in zip(names, per_folder, strict=True)))
    out = []
    for set_name in common:
        tables = [f[set_name] for f in per_folder]
        reports = [read_means(folder, set_name) for folder in folders]
        metrics = [m for m in tables[0][0] if m != 'image' and all(m in t[0] for t in tables)]
        set_level = [m for m in reports[0]['means'] if all(m in r['means'] and m not in t[0]
                                                             for r, t in zip(reports, tables, strict=True))]
        base = {r['image']: r for r in tables[0]}
        rows = {}
        for name, table, report in zip(names, tables, reports, strict=True):
            rows[name] = {'images': len(table), **{m: float(np.mean([r[m] for r in table])) for m in metrics},
                          **{m: float(report['means'][m]) for m in set_level}}
        for m in metrics + set_level:
            lower_better = _lower_is_better(m, reports)
            shown = {n: f'{rows[n][m]:.4f}' for n in names}
            best = (min if lower_better else max)(shown.values(), key=float)
            for n in names:
                rows[n][m] = f'**{shown[n]}**' if _ranked(m, shown) and shown[n] == best else shown[n]
            if len(names) > 1 and metrics and m == metrics[0]:
                for name, table in zip(names[1:], tables[1:], strict=True):
                    paired = [(r[m], base[r['image']][m]) for r in table if r['image'] in base]
                    wins = sum((a < b) if lower_better else (a > b) for a, b in paired)
                    rows[name][f'{m} better than {names[0]}'] = f'{wins}/{len(paired)}'
        out.append(f'### {set_name}\n\n' + mean_table(rows, 'method'))
    return '\n'.join(out)
