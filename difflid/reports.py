"""Test reports: per-image metric CSVs, mean tables in Markdown, side-by-side sheets, and comparisons
of several methods' result folders (``tools/compare_results.py``)."""
import csv
from pathlib import Path

import cv2
import numpy as np

from difflid.utils.checkpoint_io import atomic_open

__all__ = ['compare_results', 'mean_table', 'read_metric_csv', 'write_metric_csv', 'write_sheet']


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
    """One Markdown table per test set found in every folder: mean of each metric per method, the best in bold,
    and, against the first method, on how many images each other method scores higher (PSNR/SSIM) or lower
    (LPIPS)."""
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
        metrics = [m for m in tables[0][0] if m != 'image' and all(m in t[0] for t in tables)]
        base = {r['image']: r for r in tables[0]}
        rows = {}
        for name, table in zip(names, tables, strict=True):
            rows[name] = {'images': len(table), **{m: float(np.mean([r[m] for r in table])) for m in metrics}}
        for m in metrics:
            lower_better = 'lpips' in m.lower() or 'fid' in m.lower()
            best = (min if lower_better else max)(rows[n][m] for n in names)
            for n in names:
                rows[n][m] = f'**{rows[n][m]:.4f}**' if rows[n][m] == best else f'{rows[n][m]:.4f}'
            if len(names) > 1 and metrics and m == metrics[0]:
                for name, table in zip(names[1:], tables[1:], strict=True):
                    paired = [(r[m], base[r['image']][m]) for r in table if r['image'] in base]
                    wins = sum((a < b) if lower_better else (a > b) for a, b in paired)
                    rows[name][f'{m} better than {names[0]}'] = f'{wins}/{len(paired)}'
        out.append(f'### {set_name}\n\n' + mean_table(rows, 'method'))
    return '\n'.join(out)
