"""Sweeps: train and test several variants of one recipe and collect their test metrics in one table.

The paper's ablations are sweeps: Table 2 (CIM / HAE replaced by self-attention), Table 3 (other feature
sources than h-space) and Fig. 8 (PSNR against t1 and t2). A sweep file (YAML, ``options/sweeps/``) names
a training option file and its variants; ``tools/sweep.py`` trains and tests each variant with
``tools/train.py`` / ``tools/test.py``, one after another, or prints one self-contained command per run
for a cluster, and then writes a table shaped like the paper's (rows: variants; columns: test set x metric)
and, for a grid, a metric-against-parameter plot. Paths in a sweep file are relative to the sweep file::

    base: ../dehaze_its.yml          # training option file (mmengine _base_ allowed)
    test: ../test_sots_indoor.yml    # optional test option file; default: the base's validation sets
    set: {train.total_iter: 1000}    # optional overrides of every run
    metrics: [psnr, ssim]            # optional table columns; default: every metric of the test
    labels: {baseline: Baseline}     # optional row names for the table
    grid:                            # either a grid over one option ...
      key: network_prior.timesteps
      name: t2                       # runs <sweep>_t2_<x>; the plot's x axis
      index: 1                       # x = value[1] (for list values)
      values: [[0, 100], [0, 300]]
    variants:                        # ... or named variants: overrides of base, or another option file
      baseline: {network_g.cim: self, network_g.hae: self}
      wo_cim: ../paper/table2_its_wo_cim.yml

Overrides are ``dotted.key: value``; a dict value replaces the whole block (e.g. another ``network_prior``),
so no key of the old block leaks in. They are applied in this order: the sweep's ``set``, the variant's,
the command line's ``--set``. A key must exist in the options, with two exceptions: a key that the class
named by a block's ``type`` takes (``network_*`` blocks: ARCH_REGISTRY; ``train.*_opt``: LOSS_REGISTRY),
e.g. ``network_prior.tap``, and the optional keys in ``OPTIONAL_KEYS``, which basicsr and difflid read with
a default. No new top-level block can be added: a typo there would otherwise be ignored silently by basicsr.
Every typed block an override touches is checked against its class's signature, so ``network_prior.type:
TimmFeatureExtractor`` without replacing the block is refused (the h-space ``unet`` key would leak in).

A run with overrides is named ``<sweep>_<variant>``. A run whose options are exactly those of an option file
(a variant given as a file, or overrides that change nothing, e.g. Fig. 8's t2 = 500) keeps that file's
``name``: the full model is then trained once for Tables 2 and 3 and Fig. 8, and a run trained by hand with
``tools/train.py -opt options/dehaze_its.yml`` counts too. A run is finished when every test set has its
``results/<run>/metrics_<set>.json`` newer than ``experiments/<run>/models/net_g_latest.pth`` (then it is
skipped); a run with those weights but no such report is only tested. A run folder whose recorded options
differ from the sweep's (an edited sweep) is an error rather than a silent mix of two recipes.
"""
import copy
import csv
import difflib
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import yaml
from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY

from difflid.data.file_checks import check_dataset_files
from difflid.models.base_restoration import check_arch_options
from difflid.reports import SUMMARY_NAME, read_means
from difflid.utils.checkpoint_io import latest_weights_name
from difflid.utils.errors import OptionError
from difflid.utils.option_schema import plan_summary, validate_options
from difflid.utils.options import resolve_option_file, training_to_test_options
from difflid.utils.paths import locate_dataset_paths

__all__ = ['OPTIONAL_KEYS', 'Run', 'Sweep', 'SweepError', 'SweepTable', 'apply_overrides', 'check_sweeps', 'collect',
           'combined_name', 'execute', 'load_sweep', 'parse_assignments', 'plot_grid', 'print_commands',
           'run_status', 'write_option_files', 'write_table']

# Keys absent from most option files that basicsr or difflid read with a default ('*': any dataset phase).
OPTIONAL_KEYS = (
    'val.tile', 'val.tile_overlap', 'val.input_metrics', 'val.num_sheets', 'val.pbar', 'val.save_img', 'val.suffix',
    'val.val_freq', 'val.metrics',
    'train.ema_decay', 'train.fresh_prior_noise', 'train.diff_opt', 'train.warmup_iter', 'train.pixel_opt',
    'train.prior_features', 'train.prior_draws', 'train.prior_store', 'train.prior_store_dtype',
    'path.pretrain_network_g', 'path.param_key_g', 'path.strict_load_g', 'path.resume_state',
    'datasets.*.num_worker_per_gpu', 'datasets.*.prefetch_mode', 'datasets.*.pin_memory',
    'datasets.*.persistent_workers', 'datasets.*.dataset_enlarge_ratio', 'datasets.*.use_hflip', 'datasets.*.use_rot',
    'logger.print_freq', 'logger.save_checkpoint_freq', 'logger.use_tb_logger',
)
# What decides the trained weights: a run folder recorded with other values than these is another recipe.
_RECIPE_KEYS = ('model_type', 'scale', 'manual_seed', 'network_g', 'network_prior', 'train')
_MODEL_KEYS = ('model_type', 'scale', 'network_g', 'network_prior')  # copied from a run's training to its test
_SWEEP_KEYS = {'base', 'test', 'set', 'metrics', 'labels', 'grid', 'variants'}
_GRID_KEYS = {'key', 'values', 'name', 'index'}
_LABEL = re.compile(r'[A-Za-z0-9_.-]+')
_FLOAT = re.compile(r'[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+')


class SweepError(ValueError):
    """A sweep file, override or run state that cannot go on; tools/sweep.py prints it without a traceback."""


@dataclass
class Run:
    """One variant of a sweep: its training and test options (as they will be written) and where it stands."""

    sweep: str
    label: str  # the variant's key in the sweep file (or the grid label)
    name: str  # experiments/<name>, results/<name>
    train_opt: dict
    test_opt: dict
    source: str  # what the options came from, for logs
    x: float | None = None  # the grid coordinate

    @property
    def precomputed(self) -> bool:
        """Whether the run trains on precomputed prior features (its stores are filled before it trains)."""
        return (self.train_opt.get('train') or {}).get('prior_features') == 'precomputed'

    @property
    def test_sets(self) -> list[str]:
        return [d['name'] for d in self.test_opt['datasets'].values()]


@dataclass
class Sweep:
    """A loaded sweep file: its runs in file order, and how to show them."""

    name: str
    path: Path
    runs: list[Run]
    metrics: list[str] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    grid_name: str | None = None
    warnings: list[str] = field(default_factory=list)  # option keys that could not be checked

    @property
    def is_grid(self) -> bool:
        return self.grid_name is not None or any(r.x is not None for r in self.runs)


@dataclass
class SweepTable:
    """Collected test metrics: ``rows[variant][column]`` with columns ``'<set> <metric>'``."""

    columns: list[str]
    rows: dict[str, dict[str, float]]
    runs: dict[str, list[str]]
    missing: list[str]


# --- overrides --------------------------------------------------------------------------------------------------
def parse_assignments(items: Iterable[str], flag: str = '--set') -> dict:
    """``['a.b=1', 'c=[0, 5]']`` -> ``{'a.b': 1, 'c': [0, 5]}``; values are YAML, and ``1e-4`` is a float."""
    out = {}
    for item in items:
        key, sep, text = item.partition('=')
        if not sep or not key.strip():
            raise SweepError(f'{flag} {item!r}: expected KEY=VALUE, e.g. {flag} train.total_iter=2')
        value = yaml.safe_load(text) if text.strip() else None
        if isinstance(value, str) and _FLOAT.fullmatch(text.strip()):
            value = float(text)  # PyYAML reads 1e-4 (no dot) as a string
        out[key.strip()] = value
    return out


def _registry_for(path: tuple[str, ...]):
    """The registry whose class a block at ``path`` names with ``type``, if difflid can check its keys."""
    if len(path) == 1 and path[0].startswith('network_'):
        return ARCH_REGISTRY
    if len(path) == 2 and path[0] == 'train' and path[1].endswith('_opt'):
        return LOSS_REGISTRY
    return None


def _close(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1)
    return f' (did you mean {match[0]!r}?)' if match else ''


def apply_overrides(opt: dict, overrides: dict, where: str) -> dict:
    """A copy of ``opt`` with ``{dotted.key: value}`` applied, checked as the module docstring says.

    ``where`` names the overrides' origin in errors (e.g. "variant wo_cim of options/sweeps/table2_its.yml").
    Raises SweepError naming the key.
    """
    out = copy.deepcopy(opt)
    typed_blocks: dict[tuple[str, ...], list[str]] = {}  # block -> the override keys that touch it
    for dotted, value in overrides.items():
        path = tuple(dotted.split('.'))
        if not all(path):
            raise SweepError(f'{where}: malformed key {dotted!r}')
        if path == ('name',):
            raise SweepError(f"{where}: 'name' cannot be overridden: the sweep names its runs")
        node = out
        for depth, key in enumerate(path[:-1]):
            child = node.get(key)
            if not isinstance(child, dict):
                prefix = '.'.join(path[:depth + 1])
                what = 'is not a block' if key in node else 'is not in the options'
                raise SweepError(f'{where}: unknown key {dotted!r}: {prefix} {what}{_close(key, node)}; '
                                 f'{".".join(path[:depth]) or "the top level"} has: {", ".join(node)}')
            node = child
        leaf = path[-1]
        if leaf not in node:
            parent = path[:-1]
            if not parent:
                raise SweepError(f'{where}: unknown key {dotted!r}: the options have no top-level {leaf!r}'
                                 f'{_close(leaf, node)}, and a sweep does not add top-level blocks (basicsr would '
                                 f'ignore a misspelt one); top-level keys: {", ".join(node)}')
            optional = any(fnmatchcase(dotted, pattern) for pattern in OPTIONAL_KEYS)
            if not optional and _registry_for(parent) is None:
                raise SweepError(f'{where}: unknown key {dotted!r}: {".".join(parent)} has no {leaf!r}'
                                 f'{_close(leaf, node)} (it has: {", ".join(node)}); new keys are allowed in '
                                 'network_* and train.*_opt blocks when their class takes them, and for the optional '
                                 'keys in difflid.analysis.sweep.OPTIONAL_KEYS')
        node[leaf] = copy.deepcopy(value)
        for end in range(len(path), 0, -1):  # the innermost typed block at or above the key
            if _registry_for(path[:end]) is not None and isinstance(_get(out, path[:end]), dict):
                typed_blocks.setdefault(path[:end], []).append(dotted)
                break
    for block, keys in typed_blocks.items():
        try:
            check_arch_options('.'.join(block), _get(out, block), _registry_for(block))
        except KeyError as err:
            raise SweepError(f'{where}: override {", ".join(keys)}: {err.args[0]}') from err
    return out


def _get(opt: dict, path: tuple[str, ...]):
    for key in path:
        opt = opt[key]
    return opt


# --- loading ----------------------------------------------------------------------------------------------------
def _load_options(path: Path) -> dict:
    """An option file as the tools read it: ``_base_`` merged by mmengine."""
    try:
        resolved = resolve_option_file(path)
    except (FileNotFoundError, ValueError) as err:
        raise SweepError(str(err)) from err
    try:
        opt = yaml.safe_load(resolved.read_text(encoding='utf-8'))
    finally:
        if resolved != path:  # a merged copy in its own temporary folder
            shutil.rmtree(resolved.parent, ignore_errors=True)
    return opt


def _weights(name: str, train: dict) -> str:
    return f'experiments/{name}/models/{latest_weights_name(train)}'


def _test_options(train: dict, test_file_opt: dict | None, root: Path) -> dict:
    """The run's test options: the test file's sets and val block (or the training file's val sets) with the
    run's network, prior and latest weights."""
    name = train['name']
    if test_file_opt is None:
        with_weights = {**train, 'path': {**(train.get('path') or {}), 'pretrain_network_g': _weights(name, train)}}
        try:
            test = training_to_test_options(with_weights, root)
        except ValueError as err:
            raise SweepError(f'run {name}: {err}; give the sweep a test option file (test: ...)') from err
    else:
        test = copy.deepcopy(test_file_opt)
        if not test.get('datasets'):
            raise SweepError(f'run {name}: the test option file has no datasets')
    for key in _MODEL_KEYS:
        if key in train:
            test[key] = copy.deepcopy(train[key])
    ema = (train.get('train') or {}).get('ema_decay', 0) > 0
    path = {k: v for k, v in (test.get('path') or {}).items() if k != 'resume_state'}
    path.update(pretrain_network_g=_weights(name, train), param_key_g='params_ema' if ema else 'params',
                strict_load_g=True)
    test.update(name=name, path=path)
    return test


def _grid_variants(grid: dict, where: str) -> list[tuple[str, dict, float | None]]:
    unknown = set(grid) - _GRID_KEYS
    if unknown or 'key' not in grid or not isinstance(grid.get('values'), list) or not grid['values']:
        raise SweepError(f'{where}: grid needs key and a non-empty list of values (optional: name, index); '
                         f'got keys {sorted(grid)}')
    index, name = grid.get('index'), grid.get('name')
    out = []
    for value in grid['values']:
        try:
            x = value[index] if index is not None else value
        except (TypeError, IndexError) as err:
            raise SweepError(f'{where}: grid.index {index} does not pick from value {value!r}') from err
        flat = '_'.join(str(v) for v in (value if isinstance(value, list) else [value]))
        label = f'{name}_{x}' if name else flat
        numeric = isinstance(x, int | float) and not isinstance(x, bool)
        out.append((re.sub(r'[^A-Za-z0-9_.-]', '_', label), {grid['key']: value}, float(x) if numeric else None))
    return out


def load_sweep(path: str | Path, root: Path, cli_set: dict | None = None, cli_set_test: dict | None = None) -> Sweep:
    """Read a sweep file and build every run's training and test options (nothing is written).

    Args:
        path: The sweep file.
        root: The repository root (experiments/ and results/ are under it).
        cli_set: ``--set`` overrides for every run's training options (applied last).
        cli_set_test: ``--set-test`` overrides for every run's test options.
    """
    path = Path(path)
    if not path.is_file():
        raise SweepError(f'sweep file not found: {path.resolve()}')
    spec = yaml.safe_load(path.read_text(encoding='utf-8'))
    where = str(path)
    if not isinstance(spec, dict):
        raise SweepError(f'{where}: a sweep file holds a YAML mapping (base, test, grid or variants, ...)')
    unknown = set(spec) - _SWEEP_KEYS
    if unknown:
        raise SweepError(f'{where}: unknown sweep key(s) {sorted(unknown)}; allowed: {sorted(_SWEEP_KEYS)}')
    if ('grid' in spec) == ('variants' in spec):
        raise SweepError(f'{where}: give either grid or variants')
    def near(relative: str) -> Path:  # paths in a sweep file are relative to it
        return Path(os.path.normpath(path.parent / relative))

    base_path = near(spec['base']) if spec.get('base') else None
    base = _load_options(base_path) if base_path else None
    test_file_opt = _load_options(near(spec['test'])) if spec.get('test') else None
    common = spec.get('set') or {}
    if not isinstance(common, dict):
        raise SweepError(f'{where}: set must map dotted keys to values, e.g. set: {{train.total_iter: 1000}}')
    if 'grid' in spec:
        variants = _grid_variants(spec['grid'], where)
    elif isinstance(spec['variants'], dict) and spec['variants']:
        variants = [(str(k), v if v is not None else {}, None) for k, v in spec['variants'].items()]
    else:
        raise SweepError(f'{where}: variants must map names to overrides or option files')
    sweep_name = path.stem
    runs, warnings = [], []
    for label, variant, x in variants:
        if not _LABEL.fullmatch(label):
            raise SweepError(f'{where}: variant name {label!r} may hold only letters, digits, _ . -')
        if isinstance(variant, str):
            source_path, overrides = near(variant), {}
            source = _load_options(source_path)
        elif isinstance(variant, dict):
            if base is None:
                raise SweepError(f'{where}: variant {label} gives overrides but the sweep names no base file')
            source_path, source, overrides = base_path, base, variant
        else:
            raise SweepError(f'{where}: variant {label}: expected overrides (a mapping) or an option file path')
        if 'name' not in source:
            raise SweepError(f'{source_path}: option file has no name')
        train = source
        for origin, items in ((f'{where} (set)', common), (f'{where} (variant {label})', overrides),
                              ('--set', cli_set or {})):
            train = apply_overrides(train, items, origin)
        train = {**train, 'name': source['name'] if train == source else f'{sweep_name}_{label}'}
        test = apply_overrides(_test_options(train, test_file_opt, root), cli_set_test or {}, '--set-test')
        warnings += _validate_run(train, test, f'{where} (variant {label}')
        shown = ', '.join(f'{k}={v}' for k, v in {**common, **overrides, **(cli_set or {})}.items())
        runs.append(Run(sweep_name, label, train['name'], train, test, f'{source_path}' + (f' + {shown}' if shown
                                                                                              else ''), x))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise SweepError(f'{where}: two variants give the same run: {sorted({n for n in names if names.count(n) > 1})}')
    metrics = spec.get('metrics')
    if metrics is not None and (not isinstance(metrics, list) or not metrics):
        raise SweepError(f'{where}: metrics must be a list of metric names, e.g. [psnr, ssim]')
    labels = {str(k): str(v) for k, v in (spec.get('labels') or {}).items()}
    grid_name = spec['grid'].get('name', spec['grid']['key']) if 'grid' in spec else None
    return Sweep(sweep_name, path, runs, metrics, labels, grid_name, list(dict.fromkeys(warnings)))


def _validate_run(train: dict, test: dict, where: str) -> list[str]:
    """Both option sets of a run checked as tools/train.py and tools/test.py check them, before any run starts."""
    warnings = []
    for opt, is_train, what in ((train, True, 'training'), (test, False, 'test')):
        try:
            warnings += validate_options(opt, is_train, f'{where}, {what} options)')
        except OptionError as err:
            raise SweepError(str(err)) from err
    return warnings


def check_sweeps(sweeps: list[Sweep], root: Path, echo: Callable[[str], None] = print) -> None:
    """``--check``: each run's plan, after its dataset files are checked (options were checked when loading), from
    ``root`` as the runs will start. Nothing is written. Raises SweepError naming the run."""
    runs = _unique_runs(sweeps)
    for i, run in enumerate(runs, 1):
        echo(f'[{i}/{len(runs)}] {run.name}   ({run.source})')
        for opt, is_train in ((run.train_opt, True), (run.test_opt, False)):
            opt = copy.deepcopy(opt)
            try:
                locate_dataset_paths(opt, [root])  # the tools run from the root and read relative paths from there
                check_dataset_files(opt)
            except OptionError as err:
                raise SweepError(f'run {run.name} ({"training" if is_train else "test"}): {err}') from err
            echo(plan_summary(opt, is_train))


def _check_consistent(sweeps: list[Sweep]) -> None:
    """One run name, one recipe: the same run listed by several sweeps must have the same options."""
    seen: dict[str, Run] = {}
    for sweep in sweeps:
        for run in sweep.runs:
            other = seen.setdefault(run.name, run)
            if other.train_opt != run.train_opt:
                raise SweepError(f'run {run.name} has other options in {sweep.name} than in {other.sweep}')


# --- state of a run ---------------------------------------------------------------------------------------------
def _recipe(opt: dict) -> dict:
    return {**{k: opt.get(k) for k in _RECIPE_KEYS}, 'datasets.train': (opt.get('datasets') or {}).get('train')}


def _first_difference(a, b, prefix: str = '') -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f'{prefix}.{key}' if prefix else key)
    return f'{prefix}: {a!r} vs {b!r}'


def run_status(run: Run, root: Path) -> str:
    """'done' (tested after its last training), 'test' (trained, not tested) or 'train'.

    Raises SweepError when experiments/<run> was made with another recipe than the run's options.
    """
    exp = root / 'experiments' / run.name
    recorded = sorted(exp.glob('*.yml'), key=lambda p: p.stat().st_mtime) if exp.is_dir() else []
    if recorded:  # basicsr copies the option file it trained with into the experiment folder
        old = yaml.safe_load(recorded[-1].read_text(encoding='utf-8')) or {}
        if _recipe(old) != _recipe(run.train_opt):
            raise SweepError(f'run {run.name}: {exp} was trained with other options than this sweep gives '
                             f'({_first_difference(_recipe(old), _recipe(run.train_opt))}, recorded in '
                             f'{recorded[-1].name} vs the sweep); move experiments/{run.name} and results/{run.name} '
                             'away to train it again, or change the sweep')
    weights = root / _weights(run.name, run.train_opt)
    if not weights.is_file():
        return 'train'
    reports = [root / 'results' / run.name / f'metrics_{s}.json' for s in run.test_sets]
    trained = weights.stat().st_mtime
    return 'done' if all(p.is_file() and p.stat().st_mtime >= trained for p in reports) else 'test'


def _option_paths(run: Run, root: Path) -> tuple[Path, Path]:
    folder = root / 'experiments' / 'sweeps' / run.sweep
    return folder / f'{run.name}_train.yml', folder / f'{run.name}_test.yml'


def write_option_files(run: Run, root: Path) -> tuple[Path, Path]:
    """Write the run's training and test option files under experiments/sweeps/<sweep>/; return their paths."""
    paths = _option_paths(run, root)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for path, opt, tool in zip(paths, (run.train_opt, run.test_opt), ('train', 'test'), strict=True):
        header = (f'# generated by tools/sweep.py for tools/{tool}.py (run from the repository root): sweep '
                  f'{run.sweep}, variant {run.label}\n# from {run.source}\n')
        path.write_text(header + yaml.safe_dump(opt, sort_keys=False, allow_unicode=True), encoding='utf-8')
    return paths


def _unique_runs(sweeps: list[Sweep]) -> list[Run]:
    _check_consistent(sweeps)
    seen, out = set(), []
    for run in (r for s in sweeps for r in s.runs):
        if run.name not in seen:
            seen.add(run.name)
            out.append(run)
    return out


def _relative(path: Path, root: Path) -> str:
    return shlex.quote(str(path.relative_to(root)))


def print_commands(sweeps: list[Sweep], root: Path, auto_resume: bool = False,
                   echo: Callable[[str], None] = print) -> list[str]:
    """Write the option files of every run not finished and return (and echo) one shell command per run, to
    be run from the repository root: training (unless done) then testing. Finished runs are left out."""
    commands = []
    runs = _unique_runs(sweeps)
    for run, status in zip(runs, [run_status(r, root) for r in runs], strict=True):  # all checked before any output
        if status == 'done':
            continue
        train_file, test_file = write_option_files(run, root)
        steps = [f'python tools/test.py -opt {_relative(test_file, root)}']
        if status == 'train':
            steps.insert(0, f'python tools/train.py -opt {_relative(train_file, root)}'
                            + (' --auto_resume' if auto_resume else ''))
            if run.precomputed:  # resumable and skips what is stored: runs sharing a store pay for it once
                steps.insert(0, f'python tools/precompute_prior.py -opt {_relative(train_file, root)}')
        commands.append(' && '.join(steps))
        echo(commands[-1])
    return commands


def execute(sweeps: list[Sweep], root: Path, auto_resume: bool = False, dry_run: bool = False,
            echo: Callable[[str], None] = print) -> None:
    """Train and test every run that is not finished, one after another, with tools/train.py and tools/test.py
    (from ``root``, in subprocesses). ``dry_run`` only says what would run. Raises SweepError when a tool fails."""
    runs = _unique_runs(sweeps)
    statuses = [run_status(r, root) for r in runs]  # a run folder of another recipe stops the sweep before it starts
    for i, (run, status) in enumerate(zip(runs, statuses, strict=True), 1):
        action = {'done': 'finished, skipped', 'test': 'trained; test only', 'train': 'train + test'}[status]
        echo(f'[{i}/{len(runs)}] {run.name}: {action}   ({run.source})')
        if dry_run or status == 'done':
            continue
        train_file, test_file = write_option_files(run, root)
        if status == 'train':
            if run.precomputed:  # resumable and skips what is stored: runs sharing a store pay for it once
                _call(root, 'precompute_prior.py', train_file, [], run.name)
            _call(root, 'train.py', train_file, ['--auto_resume'] if auto_resume else [], run.name)
        _call(root, 'test.py', test_file, [], run.name)


def _call(root: Path, tool: str, option_file: Path, extra: list[str], name: str) -> None:
    cmd = [sys.executable, str(root / 'tools' / tool), '-opt', str(option_file), *extra]
    code = subprocess.run(cmd, cwd=root, check=False).returncode
    if code != 0:
        where = {'train.py': f'experiments/{name}/', 'test.py': f'results/{name}/'}.get(tool, 'its output above')
        raise SweepError(f'run {name}: tools/{tool} exited with {code} (log in {where}); rerun the sweep to go on '
                         '(with --auto_resume to continue an interrupted training)')


# --- tables and plots -------------------------------------------------------------------------------------------
def collect(sweeps: list[Sweep], root: Path) -> SweepTable:
    """Each run's test means (``results/<run>/metrics_<set>.json``) as one table; runs of several sweeps with the
    same variant name share a row (Table 2 on three datasets). A ``degraded input`` row holds the test's
    ``<metric>_input`` values when it scored the inputs."""
    columns, rows, runs, missing, inputs = [], {}, {}, [], {}
    for sweep in sweeps:
        for run in sweep.runs:
            row = sweep.labels.get(run.label, run.label)
            rows.setdefault(row, {})
            runs.setdefault(row, []).append(run.name)
            for set_name in run.test_sets:
                means = read_means(root / 'results' / run.name, set_name)['means']
                if not means:
                    missing.append(f'{run.name} ({set_name})')
                    continue
                metrics = sweep.metrics or [m for m in means if not m.endswith('_input')]
                for metric in metrics:
                    column = f'{set_name} {metric}'
                    if column not in columns:
                        columns.append(column)
                    if metric in means:
                        rows[row][column] = float(means[metric])
                    if f'{metric}_input' in means:
                        inputs.setdefault(column, float(means[f'{metric}_input']))
            summary = root / 'results' / run.name / f'metrics_{SUMMARY_NAME}.json'
            if summary.is_file():  # an all-in-one test: the average of its columns, as the field reports it
                average = json.loads(summary.read_text(encoding='utf-8'))['average']
                for metric in sweep.metrics or list(average):
                    column = f'average {metric}'
                    if column not in columns:
                        columns.append(column)
                    if metric in average:
                        rows[row][column] = float(average[metric])
    if inputs:
        rows['degraded input'] = inputs
        runs['degraded input'] = []
    return SweepTable(columns, rows, runs, list(dict.fromkeys(missing)))


def _cell(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '-'
    return f'{value:.2f}' if abs(value) >= 1 else f'{value:.4f}'


def write_table(table: SweepTable, folder: Path, name: str) -> tuple[Path, Path]:
    """``<folder>/<name>.md`` (rounded, '-' where a run has no result yet) and ``<name>.csv`` (full precision,
    with the runs of each row); returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ['| variant | ' + ' | '.join(table.columns) + ' |', '|---' * (len(table.columns) + 1) + '|']
    lines += [f'| {row} | ' + ' | '.join(_cell(values.get(c)) for c in table.columns) + ' |'
              for row, values in table.rows.items()]
    if table.missing:
        lines += ['', 'No results yet: ' + ', '.join(table.missing)]
    md = folder / f'{name}.md'
    md.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(['variant', 'runs', *table.columns])
    for row, values in table.rows.items():
        writer.writerow([row, ' '.join(table.runs[row]),
                         *(f'{values[c]:.6f}' if c in values else '' for c in table.columns)])
    out_csv = folder / f'{name}.csv'
    out_csv.write_text(buffer.getvalue(), encoding='utf-8')
    return md, out_csv


def plot_grid(sweep: Sweep, root: Path, folder: Path, metric: str | None = None) -> Path | None:
    """``<folder>/<sweep>_<metric>.png``: the metric (default: the sweep's first, else psnr) against the grid
    coordinate, one line per test set (the paper's Fig. 8). None when no run of the grid has a result yet."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = metric or (sweep.metrics or ['psnr'])[0]
    series: dict[str, list[tuple[float, float]]] = {}
    for run in sweep.runs:
        for set_name in run.test_sets:
            value = read_means(root / 'results' / run.name, set_name)['means'].get(metric)
            if run.x is not None and value is not None:
                series.setdefault(set_name, []).append((run.x, float(value)))
    if not series:
        return None
    fig = Figure(figsize=(4.8, 3.4), layout='constrained')
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for set_name, points in series.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker='o', label=set_name)
        best = max(points, key=lambda p: p[1]) if 'lpips' not in metric else min(points, key=lambda p: p[1])
        ax.annotate(f'{best[1]:.2f}', best, textcoords='offset points', xytext=(0, 6), ha='center', fontsize=8)
    ax.set_xlabel(sweep.grid_name or 'value')
    ax.set_ylabel('PSNR (dB)' if metric == 'psnr' else metric)
    ax.set_title(sweep.name)
    ax.margins(y=0.15)  # room for the best value's label
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f'{sweep.name}_{metric}.png'
    fig.savefig(out, dpi=150)
    return out


def combined_name(sweeps: list[Sweep]) -> str:
    """The name of several sweeps' joint table: their common prefix ('table2' for table2_its, table2_nh_haze), or
    their names joined by '+' where that prefix is empty or one sweep's own name (its table's folder)."""
    names = [s.name for s in sweeps]
    prefix = re.sub(r'[_.-]+$', '', os.path.commonprefix(names))
    return prefix if prefix and prefix not in names else '+'.join(names)
