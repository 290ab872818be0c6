"""PromptIR's ``data/`` folder, as its users unzip it, prepared in one command into the sets the all-in-one option
files read.

PromptIR's layout (its INSTALL.md, ``options.py`` and ``utils/dataset_utils.py``, va1shn9v/PromptIR)::

    Train/Denoise/                       BSD400 + WED clean images           -> denoise_train/  (clean, train.txt)
    Train/Derain/{rainy,gt}/             rain-<n>.png, norain-<n>.png        -> Rain100L/       (train.txt)
    Train/Dehaze/{synthetic,original}/   OTS: part<k>/<id>_<A>_<b>.jpg, <id>.jpg -> OTS/        (train.txt)
    test/derain/Rain100L/{input,target}/ the same names on both sides        -> Rain100L/       (test.txt)
    test/dehaze/{input,target}/          SOTS-outdoor: <id>_<A>_<b>.jpg, <id>.png -> SOTS_outdoor/ (test.txt)
    test/denoise/bsd68/                  CBSD68 clean images                 -> CBSD68/         (clean, test.txt)
    test/denoise/urban100/               Urban100 clean images               -> Urban100/       (clean, test.txt)

Each output folder is built atomically (``difflid.data.prep``); existing ones are refused, all named, before anything
is written, unless ``overwrite``. A set whose source folders are all absent (Urban100 is optional) is left out, said.
"""
from collections.abc import Callable
from pathlib import Path

from difflid.data.prep import BENCHMARKS, PrepReport, Source, _find_dir, _rain_split, prepare_dataset
from difflid.data.prep_clean import CleanSource, cbsd68, denoise_train, prepare_clean, urban100

__all__ = ['PROMPTIR_SETS', 'prepare_promptir']

# output folder -> (kind, {split: path under PromptIR's data/}); kind 'clean' reads CleanSource, else Source
PROMPTIR_SETS: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    'denoise_train': ('clean', {'train': ('Train', 'Denoise')}),
    'Rain100L': ('pairs', {'train': ('Train', 'Derain'), 'test': ('test', 'derain', 'Rain100L')}),
    'OTS': ('pairs', {'train': ('Train', 'Dehaze')}),
    'SOTS_outdoor': ('pairs', {'test': ('test', 'dehaze')}),
    'CBSD68': ('clean', {'test': ('test', 'denoise', 'bsd68')}),
    'Urban100': ('clean', {'test': ('test', 'denoise', 'urban100')}),
}

_READERS: dict[str, Callable[[Path], Source | CleanSource]] = {
    'denoise_train': denoise_train,
    'Rain100L': _rain_split,
    'OTS': lambda folder: BENCHMARKS['ots'][0](folder)['train'],
    'SOTS_outdoor': lambda folder: BENCHMARKS['sots-outdoor'][0](folder)['test'],
    'CBSD68': cbsd68,
    'Urban100': urban100,
}


def _find_path(root: Path, parts: tuple[str, ...]) -> Path | None:
    """``root/parts...`` with each name matched case-insensitively; None if absent."""
    try:
        for part in parts:
            root = _find_dir(root, part)
    except FileNotFoundError:
        return None
    return root


def prepare_promptir(
    src: str | Path,
    dst: str | Path,
    lmdb: bool = False,
    copy: bool = False,
    convert: bool = False,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, PrepReport]:
    """Prepare every set of PromptIR's ``data/`` at ``src`` under ``dst/<set>`` (see the module docstring); ``echo``
    gets each set's summary as soon as it is written. Returns the reports by output folder name."""
    src, dst = Path(src), Path(dst)
    if _find_path(src, ('Train',)) is None and _find_path(src, ('test',)) is None:
        raise FileNotFoundError(f"{src}: expected PromptIR's data/ folder, with Train/ and test/")
    found = {name: {split: folder for split, parts in splits.items() if (folder := _find_path(src, parts))}
             for name, (_, splits) in PROMPTIR_SETS.items()}
    found = {name: splits for name, splits in found.items() if splits}
    existing = [str(dst / name) for name in found if (dst / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f'{", ".join(existing)} exist(s); choose another --dst or pass --overwrite')
    reports = {}
    for name, (kind, splits) in PROMPTIR_SETS.items():
        if name not in found:
            echo(f'left out {dst / name}: no {" or ".join("/".join(p) for p in splits.values())} in {src}')
            continue
        sources = {split: _READERS[name](folder) for split, folder in found[name].items()}
        try:
            if kind == 'clean':
                report = prepare_clean(sources, dst / name, lmdb=lmdb, copy=copy, convert=convert,
                                       overwrite=overwrite)
            else:
                report = prepare_dataset(sources, dst / name, lmdb=lmdb, copy=copy, convert=convert,
                                         gt_border_crop=BENCHMARKS['sots-outdoor'][1] if name == 'SOTS_outdoor' else 0,
                                         overwrite=overwrite)
        except ValueError as err:  # the sets before it are complete: said on the first line
            first, *rest = str(err).splitlines()
            raise ValueError('\n'.join([f"{first} (prepared before it: {', '.join(reports) or 'none'})", *rest])) \
                from err
        echo(report.summary(dst / name))
        reports[name] = report
    return reports
