"""Test reports: per-image metric CSVs, mean tables in Markdown (and the same means as JSON), side-by-side
sheets, and comparisons of several methods' result folders (``tools/compare_results.py``)."""
import csv
import json
from pathlib import Path

import cv2
import numpy as np

from difflid.utils.checkpoint_io import atomic_open

__all__ = ['SUMMARY_NAME', 'compare_results', 'format_cell', 'group_means', 'mean_table', 'read_means',
           'read_metric_csv', 'summary_report', 'summary_table', 'write_means', 'write_metric_csv', 'write_sheet',
           'write_summary']

SUMMARY_NAME = 'summary'  # results/<name>/metrics_summary.{md,csv,json}: the per-task columns and their average


def write_metric_csv(path: str | Path, records: list[dict]) -> None:
    """One row per image: ``image,<metric>,...``."""
    with atomic_open(path, 'w') as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]), lineterminator='\n')
        writer.writeheader()
        writer.writerows({k: (f'{v:.6f}' if isinstance(v, float) else v) for k, v in r.items()} for r in records)


def read_metric_csv(path: str | Path) -> list[dict]:
    """Rows of ``write_metric_csv``: metrics as floats, ``image`` and ``task`` as written."""
    with open(path, encoding='utf-8', newline='') as f:
        return [{k: (v if k in ('image', 'task') else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def _mean(records: list[dict], metric: str) -> float:
    return float(np.mean([r[metric] for r in records]))


def group_means(set_name: str, records: list[dict]) -> dict[str, dict]:
    """The evaluation groups of one test set: ``{label: {'set', 'task', 'images', 'means'}}``. A set of one task
    (or of none) is one group labelled by the set's name; a set mixing tasks (records with several ``task`` values)
    gives one group per task, labelled ``<set>/<task>``, in the order the tasks first appear."""
    metrics = [m for m in records[0] if m not in ('image', 'task')]
    tasks = list(dict.fromkeys(r.get('task') for r in records))
    if len(tasks) <= 1:
        return {set_name: {'set': set_name, 'task': tasks[0] if tasks else None, 'images': len(records),
                           'means': {m: _mean(records, m) for m in metrics}}}
    groups = {}
    for task in tasks:
        rows = [r for r in records if r.get('task') == task]
        groups[f'{set_name}/{task}'] = {'set': set_name, 'task': task, 'images': len(rows),
                                        'means': {m: _mean(rows, m) for m in metrics}}
    return groups


def format_cell(values: list[float]) -> str:
    """``30.58/0.974``: the field's way of printing PSNR/SSIM pairs (two decimals from 1 up, else three)."""
    return '/'.join(f'{v:.2f}' if abs(v) >= 1 else f'{v:.3f}' for v in values)


def summary_report(groups: dict[str, dict], summary_opt: dict | None = None) -> dict:
    """The all-in-one table: one column per group (``summary.columns``: {label: group}, in that order; default
    every group) and ``average``, the unweighted mean of the columns (how the field averages its five columns, so
    a large test set does not outweigh a small one), for each of ``summary.metrics`` (default: every metric the
    groups share). ``summary.references``: published rows ({method: {label: 'PSNR/SSIM'}}), kept verbatim."""
    summary_opt = summary_opt or {}
    columns = dict(summary_opt.get('columns') or {g: g for g in groups})
    missing = [f'{label}: {group}' for label, group in columns.items() if group not in groups]
    if missing:
        raise KeyError(f'val.summary.columns: no evaluated set or task named {", ".join(missing)}; evaluated: '
                       f'{", ".join(groups)}')
    shared = [m for m in next(iter(groups.values()))['means'] if all(m in g['means'] for g in groups.values())]
    metrics = list(summary_opt.get('metrics') or shared)
    unknown = [m for m in metrics if m not in shared]
    if unknown:
        raise KeyError(f'val.summary.metrics: {unknown} not scored in every column; scored: {shared}')
    values = {label: {m: groups[group]['means'][m] for m in metrics} for label, group in columns.items()}
    average = {m: float(np.mean([values[label][m] for label in columns])) for m in metrics}
    return {'metrics': metrics, 'columns': {label: {'group': group, 'images': groups[group]['images'],
                                                    'task': groups[group]['task'], **values[label]}
                                            for label, group in columns.items()},
            'average': average, 'references': dict(summary_opt.get('references') or {})}


def _summary_rows(labels: list[str], rows: dict[str, list[list[float]]], references: dict[str, dict]) -> str:
    """Markdown of the all-in-one table: one row per method (its cells, ``format_cell``ed, over ``labels`` then
    the average), then the published rows marked "(paper)", their cells verbatim ('-' where they have none)."""
    header = '| method | ' + ' | '.join([*labels, 'average']) + ' |\n' + '|---' * (len(labels) + 2) + '|\n'
    lines = [f'| {name} | ' + ' | '.join(format_cell(c) for c in cells) + ' |' for name, cells in rows.items()]
    lines += [f'| {method} (paper) | ' + ' | '.join(str(cells.get(c, '-')) for c in [*labels, 'average']) + ' |'
              for method, cells in references.items()]
    return header + '\n'.join(lines) + '\n'


def summary_table(report: dict, name: str) -> str:
    """Markdown: our row (``name``), then the references marked "(paper)"; cells ``PSNR/SSIM``."""
    metrics = report['metrics']
    cells = [[report['columns'][c][m] for m in metrics] for c in report['columns']]
    cells.append([report['average'][m] for m in metrics])
    return _summary_rows(list(report['columns']), {name: cells}, report['references']) + \
        f"\ncells: {'/'.join(metrics)}; average: the unweighted mean of the columns\n"


def write_summary(root: str | Path, report: dict, table: str) -> None:
    """``metrics_summary.{md,json,csv}`` in ``root``: ``table`` (``summary_table``'s) and the report."""
    root = Path(root)
    with atomic_open(root / f'metrics_{SUMMARY_NAME}.md', 'w') as f:
        f.write(table)
    with atomic_open(root / f'metrics_{SUMMARY_NAME}.json', 'w') as f:
        f.write(json.dumps(report, indent=2, ensure_ascii=False) + '\n')
    rows = [{'column': label, 'set_or_task': col['group'], 'images': col['images'],
             **{m: col[m] for m in report['metrics']}} for label, col in report['columns'].items()]
    rows.append({'column': 'average', 'set_or_task': '', 'images': sum(c['images'] for c in report['columns'].values()),
                 **report['average']})
    write_metric_csv(root / f'metrics_{SUMMARY_NAME}.csv', rows)


def mean_table(rows: dict[str, dict[str, float]], first_column: str = 'set') -> str:
    """Markdown table: one row per key of ``rows`` ({name: {'images': n, metric: value}})."""
    metrics = list(dict.fromkeys(m for values in rows.values() for m in values))
    lines = [f'| {first_column} | ' + ' | '.join(metrics) + ' |', '|---' * (len(metrics) + 1) + '|']
    for name, values in rows.items():
        cells = [(f'{values[m]:.4f}' if isinstance(values.get(m), float) else str(values.get(m, '-'))) for m in metrics]
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def write_means(path: str | Path, images: int, means: dict[str, float], set_level: set[str],
                lower_better: set[str], tasks: dict[str, dict] | None = None) -> None:
    """The mean table as JSON, so tools read set-level metrics (FID: in no per-image CSV) and each metric's
    direction (``better: lower`` in its options) without parsing Markdown; a set mixing tasks adds ``tasks``
    ({task: {images, means}})."""
    report = {'images': images, 'means': means, 'set_level': sorted(set_level & set(means)),
              'lower_better': sorted(lower_better & set(means))}
    if tasks:
        report['tasks'] = tasks
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
        found = {p.name[len('metrics_'):-len('.csv')]: read_metric_csv(p) for p in sorted(folder.glob('metrics_*.csv'))
                 if p.name != f'metrics_{SUMMARY_NAME}.csv'}
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
        metrics = [m for m in tables[0][0] if m not in ('image', 'task') and all(m in t[0] for t in tables)]
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
    summaries = [folder / f'metrics_{SUMMARY_NAME}.json' for folder in folders]
    if all(p.is_file() for p in summaries):
        out.append(_compare_summaries([json.loads(p.read_text(encoding='utf-8')) for p in summaries], names))
    return '\n'.join(out)


def _compare_summaries(reports: list[dict], names: list[str]) -> str:
    """The all-in-one table of several methods: the columns (and metrics) all share, each method's cells and its
    average over those columns recomputed (so methods tested on different extra columns compare on the same ones),
    then the first report's published references."""
    labels = [c for c in reports[0]['columns'] if all(c in r['columns'] for r in reports[1:])]
    metrics = [m for m in reports[0]['metrics'] if all(m in r['metrics'] for r in reports[1:])]
    rows = {}
    for name, report in zip(names, reports, strict=True):
        cells = [[report['columns'][c][m] for m in metrics] for c in labels]
        rows[name] = [*cells, [float(np.mean([cell[i] for cell in cells])) for i in range(len(metrics))]]
    return (f'### all-in-one summary ({"/".join(metrics)}; average: the unweighted mean of these columns)\n\n'
            + _summary_rows(labels, rows, reports[0].get('references', {})))
