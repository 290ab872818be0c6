"""The quality study of issue 20: DiffLI²D trained with its prior's features computed online vs precomputed.

``train.prior_features: precomputed`` changes the training inputs (whole-image features of K fixed noise draws,
stride-aligned crops) instead of running the prior on every crop with fresh noise. This study measures what that
costs on data the tests can make: for each prior (the tiny one with random weights, the trained tiny one shipped with
difflid) x mode (online; precomputed with K = 1 and K = 4 draws) x seed (``manual_seed``), it trains the recipe of
one training option file (``options/precompute_study.yml``) the same number of iterations, tests it on the file's
validation set (held out: the study never validates during training) and writes one table: PSNR and SSIM as mean
± sample std over the seeds, seconds per iteration, and every seed's values; the notes say which differences are
larger than the spread. Every run is tested the same way, with ``tools/test.py`` running the prior on each whole
test image (its seeded noise, as inference does), so only the training differs.

Everything happens in a scratch working directory (``--workdir``): a copy of ``tools/`` (so that ``experiments/``,
``results/`` and the generated ``datasets/`` land there, never in the repository), the runs' option files under
``options/``, each step's output under ``logs/``. The steps are ``tools/precompute_prior.py`` (once per prior, K = 4:
the store serves K = 1 too, and every seed), ``tools/train.py`` and ``tools/test.py``, each in its own process forked
from a server that imported difflid once (``multiprocessing``'s forkserver): the isolation of a subprocess without
paying the seconds of ``import difflid`` 38 times. A rerun skips finished runs (``difflid.analysis.sweep.run_status``:
test results newer than the weights) and refuses a run folder trained with other options.
"""
import json
import math
import multiprocessing
import os
import re
import runpy
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
import yaml

from difflid.analysis.sweep import Run, SweepError, apply_overrides, run_status
from difflid.priors.cache import prior_store_dir
from difflid.reports import read_means
from difflid.utils.checkpoint_io import latest_weights_name
from difflid.utils.options import resolve_option_file, training_to_test_options

__all__ = ['MODES', 'PRIORS', 'QUICK', 'Mode', 'Prior', 'Study', 'StudyError', 'StudyRun', 'collect', 'execute',
           'plan_study', 'render_table', 'summarize', 'write_report']


class StudyError(ValueError):
    """A study that cannot go on (bad options, a failed step, a run folder of another recipe); printed without a
    traceback by tools/precompute_study.py."""


@dataclass(frozen=True)
class Prior:
    """One prior of the study: ``key`` in run names, ``label`` in the table, ``file`` (relative to the study's option
    file) whose ``network_prior`` block replaces the recipe's."""

    key: str
    label: str
    file: str


@dataclass(frozen=True)
class Mode:
    """How the training gets the prior's features: online (``draws`` None) or precomputed with ``draws`` = K."""

    key: str
    label: str
    draws: int | None


PRIORS = (Prior('random', 'random tiny prior', '_base_/prior_tiny.yml'),
          Prior('trained', 'trained tiny prior (bundled)', '_base_/prior_bundled.yml'))
MODES = (Mode('online', 'online', None), Mode('k1', 'precomputed K=1', 1), Mode('k4', 'precomputed K=4', 4))
# --quick: a check of the machinery in well under a minute (its numbers mean nothing): two small training images,
# one test image, 32-px crops, 4 iterations.
QUICK = {
    'datasets.train.images': ['astronaut', 'coffee'], 'datasets.train.hazy_per_image': 1,
    'datasets.train.max_side': 96, 'datasets.train.gt_size': 32, 'datasets.train.total_batch_size': 2,
    'datasets.train.dataset_enlarge_ratio': 1, 'datasets.val.images': ['chelsea'], 'datasets.val.hazy_per_image': 1,
    'datasets.val.max_side': 96, 'train.total_iter': 4, 'train.scheduler.milestones': [], 'val.val_freq': 4,
    'logger.print_freq': 2, 'logger.save_checkpoint_freq': 4,
}
METRICS = ('psnr', 'ssim')
_STAMP = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ')
_START = re.compile(r'Start training from epoch: \d+, iter: (\d+)')
_ITER = re.compile(r'\]\[epoch:\s*\d+, iter:\s*([\d,]+),')
_SOURCE = re.compile(r'Frozen prior: .*?, (computed online|precomputed in (.+?)) \((?:not trained|the prior is built)')
_STEPS = 'steps.jsonl'  # every step run in this working directory and its seconds, one JSON line each
_COMPUTED = re.compile(r'datasets\.train: (\d+) images computed .*? written in ([\d.]+) s')


@dataclass
class StudyRun:
    """One training + test of the study; ``run`` holds its name and option dicts (sweep's ``Run``)."""

    prior: Prior
    mode: Mode
    seed: int
    run: Run


@dataclass
class Study:
    """A planned study: every run's options and each prior's precompute options, nothing written yet."""

    name: str
    option_file: Path
    workdir: Path
    seeds: list[int]
    quick: bool
    runs: list[StudyRun]
    precompute: dict[str, dict]  # prior key -> the option dict tools/precompute_prior.py gets
    test_set: str

    @property
    def iterations(self) -> int:
        return int(self.runs[0].run.train_opt['train']['total_iter'])


# --- planning ---------------------------------------------------------------------------------------------------
def _load_options(path: Path) -> dict:
    """An option file as the tools read it (mmengine ``_base_`` merged)."""
    if not path.is_file():
        raise StudyError(f'option file not found: {path.resolve()}')
    try:
        resolved = resolve_option_file(path)
    except (FileNotFoundError, ValueError) as err:
        raise StudyError(f'{path}: {err}') from err
    try:
        return yaml.safe_load(resolved.read_text(encoding='utf-8')) or {}
    finally:
        if resolved != path:  # a merged copy in its own temporary folder
            shutil.rmtree(resolved.parent, ignore_errors=True)


def _check_recipe(opt: dict, where: str) -> str:
    """The name of the held-out set; StudyError when the file is not a study recipe (one train and one val set)."""
    datasets = opt.get('datasets') or {}
    if set(datasets) != {'train', 'val'}:
        raise StudyError(f'{where}: datasets must be exactly train and val (the held-out test set), got '
                         f'{sorted(datasets)}')
    if opt.get('model_type') != 'DiffLI2DModel' or 'network_prior' not in opt:
        raise StudyError(f'{where}: model_type must be DiffLI2DModel with a network_prior block')
    missing = [k for k in ('prior_features', 'prior_draws') if k not in (opt.get('train') or {})]
    if missing:
        raise StudyError(f'{where}: train must set {", ".join(missing)} (online and 1: the study changes them per run)')
    return datasets['val']['name']


def plan_study(option_file: str | Path, workdir: str | Path, seeds: int = 3, quick: bool = False,
               overrides: dict | None = None, priors: tuple[Prior, ...] = PRIORS,
               modes: tuple[Mode, ...] = MODES) -> Study:
    """Every run's training and test options (nothing is written).

    Args:
        option_file: The study's training option file (``options/precompute_study.yml``).
        workdir: The scratch working directory (relative option paths, e.g. ``dataroot``, are relative to it).
        seeds: Seeds 0 .. seeds - 1 (``manual_seed``).
        quick: Apply ``QUICK`` (a check of the machinery, not a measurement).
        overrides: ``{dotted.key: value}`` for every run (after ``QUICK``), as ``tools/sweep.py --set``.
        priors, modes: The grid's axes.
    """
    option_file, workdir = Path(option_file), Path(workdir)
    if seeds < 1:
        raise StudyError(f'--seeds must be at least 1, got {seeds}')
    base = _load_options(option_file)
    where = str(option_file)
    try:
        base = apply_overrides(base, {**(QUICK if quick else {}), **(overrides or {})}, f'{where} (--quick/--set)')
    except SweepError as err:
        raise StudyError(str(err)) from err
    test_set = _check_recipe(base, where)
    name = base['name']
    runs, precompute = [], {}
    for prior in priors:
        prior_block = _load_options(option_file.parent / prior.file).get('network_prior')
        if not isinstance(prior_block, dict):
            raise StudyError(f'{option_file.parent / prior.file}: no network_prior block (prior {prior.key})')
        draws = max((m.draws for m in modes if m.draws), default=None)
        if draws:
            precompute[prior.key] = _run_options(base, prior_block, 0, draws, f'{name}_{prior.key}_precompute', where)
        for mode in modes:
            for seed in range(seeds):
                run_name = f'{name}_{prior.key}_{mode.key}_s{seed}'
                full = _run_options(base, prior_block, seed, mode.draws, run_name, where)
                train = {**full, 'datasets': {'train': full['datasets']['train']}}  # no validation while training
                test = _test_options(full, run_name, workdir)
                runs.append(StudyRun(prior, mode, seed, Run(name, f'{prior.key}_{mode.key}_s{seed}', run_name, train,
                                                            test, f'{option_file.name}: {prior.label}, {mode.label}, '
                                                                  f'seed {seed}')))
    return Study(name, option_file, workdir, list(range(seeds)), quick, runs, precompute, test_set)


def _run_options(base: dict, prior_block: dict, seed: int, draws: int | None, name: str, where: str) -> dict:
    changes = {'manual_seed': seed, 'network_prior': prior_block,
               'train.prior_features': 'precomputed' if draws else 'online', 'train.prior_draws': draws or 1}
    try:
        opt = apply_overrides(base, changes, f'{where} (run {name})')
    except SweepError as err:
        raise StudyError(str(err)) from err
    opt['name'] = name
    return opt


def _test_options(full: dict, name: str, workdir: Path) -> dict:
    """tools/test.py's options for a run: its held-out set with the run's latest weights, the prior run online."""
    weights = f'experiments/{name}/models/{latest_weights_name(full)}'
    ema = (full.get('train') or {}).get('ema_decay', 0) > 0
    test = training_to_test_options({**full, 'path': {**(full.get('path') or {}), 'pretrain_network_g': weights}},
                                    workdir)
    test['path'].update(param_key_g='params_ema' if ema else 'params', strict_load_g=True)
    test['val']['save_img'] = False
    return test


# --- running ----------------------------------------------------------------------------------------------------
@dataclass
class _Step:
    label: str  # also the name of its log file
    tool: str
    option_file: Path
    prior: str | None = None  # precompute steps: the prior's key


def _tool_process(workdir: str, tool: str, argv: list[str], log: str, threads: int) -> None:
    """A step's process (forked from the server that imported difflid): ``python tools/<tool> argv`` in ``workdir``,
    its stdout and stderr to ``log``; the tool's exit code is the process's."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(workdir)
    os.environ['OMP_NUM_THREADS'] = str(threads)
    torch.set_num_threads(threads)
    path = os.path.join(workdir, 'tools', tool)
    sys.argv = [path, *argv]
    runpy.run_path(path, run_name='__main__')


def _context():
    """forkserver where the platform has it (each step forks from one process that imported difflid), else spawn."""
    method = 'forkserver' if 'forkserver' in multiprocessing.get_all_start_methods() else 'spawn'
    ctx = multiprocessing.get_context(method)
    if method == 'forkserver':
        ctx.set_forkserver_preload([__name__])
    return ctx


def _tail(path: Path, lines: int = 8) -> str:
    text = path.read_text(encoding='utf-8', errors='replace').splitlines() if path.is_file() else []
    return '\n'.join(text[-lines:])


def _write_yaml(path: Path, opt: dict, what: str) -> None:
    header = f'# generated by tools/precompute_study.py: {what}\n'
    path.write_text(header + yaml.safe_dump(opt, sort_keys=False, allow_unicode=True), encoding='utf-8')


def prepare_workdir(study: Study, tools: Path) -> list[str]:
    """Copy ``tools`` into the working directory, write every option file, and return each run's status
    ('done', 'test', 'train'). StudyError for a run folder trained with other options."""
    workdir = study.workdir
    if (workdir / 'tools').resolve() == tools.resolve():
        raise StudyError(f'--workdir {workdir} is the repository itself: give a scratch folder (default: '
                         'results/precompute_study)')
    (workdir / 'options').mkdir(parents=True, exist_ok=True)
    (workdir / 'logs').mkdir(exist_ok=True)
    shutil.copytree(tools, workdir / 'tools', dirs_exist_ok=True, ignore=shutil.ignore_patterns('__pycache__'))
    try:
        statuses = [run_status(r.run, workdir) for r in study.runs]
    except SweepError as err:  # sweep's words for a run folder of another recipe; here the study is the recipe
        message = str(err).replace('this sweep', 'this study').replace('the sweep', 'the study')
        raise StudyError(f'{message}; or give the study another --workdir') from err
    for r in study.runs:
        _write_yaml(workdir / 'options' / f'{r.run.name}_train.yml', r.run.train_opt, f'training of {r.run.source}')
        _write_yaml(workdir / 'options' / f'{r.run.name}_test.yml', r.run.test_opt, f'test of {r.run.source}')
    for key, opt in study.precompute.items():
        _write_yaml(workdir / 'options' / f'{opt["name"]}.yml', opt, f'the prior features of prior {key}')
    return statuses


def _steps(study: Study, statuses: list[str]) -> list[_Step]:
    options = study.workdir / 'options'
    steps = []
    for key, opt in study.precompute.items():
        if any(r.prior.key == key and r.mode.draws and s == 'train' for r, s in zip(study.runs, statuses, strict=True)):
            steps.append(_Step(f'precompute_{key}', 'precompute_prior.py', options / f'{opt["name"]}.yml', key))
    for r, status in zip(study.runs, statuses, strict=True):
        if status == 'train':
            steps.append(_Step(f'{r.run.name}_train', 'train.py', options / f'{r.run.name}_train.yml'))
        if status in ('train', 'test'):
            steps.append(_Step(f'{r.run.name}_test', 'test.py', options / f'{r.run.name}_test.yml'))
    return steps


def execute(study: Study, tools: Path, threads: int = 1, dry_run: bool = False,
            echo: Callable[[str], None] = print) -> list[dict]:
    """Precompute, train and test every run not finished, one step at a time; returns each step's label and
    seconds. ``dry_run`` only says what would run. StudyError when a step fails, with the end of its output."""
    statuses = prepare_workdir(study, tools)
    for r, status in zip(study.runs, statuses, strict=True):
        if status == 'done':
            echo(f'{r.run.name}: finished, skipped')
    steps = _steps(study, statuses)
    if dry_run:
        for i, step in enumerate(steps, 1):
            echo(f'[{i}/{len(steps)}] would run tools/{step.tool} -opt {step.option_file}')
        return []
    timings = []
    ctx = _context() if steps else None
    for i, step in enumerate(steps, 1):
        log = study.workdir / 'logs' / f'{step.label}.log'
        tic = time.perf_counter()
        process = ctx.Process(target=_tool_process, args=(str(study.workdir.resolve()), step.tool,
                                                          ['-opt', str(step.option_file.resolve())], str(log),
                                                          threads))
        process.start()
        try:
            process.join()
        except KeyboardInterrupt:  # the step got the same Ctrl-C: a training saves a checkpoint, then stops
            process.join()
            raise
        seconds = time.perf_counter() - tic
        if process.exitcode != 0:
            raise StudyError(f'{step.label}: tools/{step.tool} exited with {process.exitcode} (output in {log}); '
                             f'rerun the study to go on from there\n{_tail(log)}')
        echo(f'[{i}/{len(steps)}] {step.label}: {seconds:.1f} s')
        timings.append({'step': step.label, 'seconds': round(seconds, 2)})
        with (study.workdir / _STEPS).open('a', encoding='utf-8') as records:  # the study's time over its reruns
            records.write(json.dumps(timings[-1]) + '\n')
        if step.prior is not None:
            _record_precompute(study, step, log, seconds)
    return timings


def _record_precompute(study: Study, step: _Step, log: Path, seconds: float) -> None:
    """Keep how long the prior's store took (``precompute_<prior>.json``) when this step computed it."""
    found = _COMPUTED.search(log.read_text(encoding='utf-8', errors='replace'))
    if found and int(found.group(1)) > 0:
        record = {'images': int(found.group(1)), 'prior_seconds': float(found.group(2)), 'step_seconds': seconds}
        (study.workdir / f'{step.label}.json').write_text(json.dumps(record, indent=2) + '\n', encoding='utf-8')


# --- results ----------------------------------------------------------------------------------------------------
def _stamp(line: str) -> datetime | None:
    found = _STAMP.match(line)
    return datetime.strptime(found.group(1), '%Y-%m-%d %H:%M:%S,%f') if found else None


def read_training_log(path: Path) -> dict:
    """From a training log: ``s_per_iter`` (time from the start of the loop to the last logged iteration, per
    iteration) and ``features`` ('online', or the store's path as the model logged it)."""
    lines = path.read_text(encoding='utf-8', errors='replace').splitlines()
    start = features = None
    last = None
    for line in lines:
        if (found := _START.search(line)) and _stamp(line):
            start, last = (_stamp(line), int(found.group(1))), None
        elif (found := _ITER.search(line)) and start and _stamp(line):
            last = (_stamp(line), int(found.group(1).replace(',', '')))
        elif found := _SOURCE.search(line):
            features = 'online' if found.group(1) == 'computed online' else found.group(2)
    per_iter = None
    if start and last and last[1] > start[1]:
        per_iter = (last[0] - start[0]).total_seconds() / (last[1] - start[1])
    return {'s_per_iter': per_iter, 'features': features}


def _latest_log(workdir: Path, name: str) -> Path:
    logs = sorted((workdir / 'experiments' / name).glob(f'train_{name}_*.log'), key=lambda p: p.stat().st_mtime)
    if not logs:
        raise StudyError(f'run {name}: no training log in {workdir / "experiments" / name}')
    return logs[-1]


def _check_features(r: StudyRun, features: str | None, workdir: Path) -> None:
    """The run trained as its mode says: online runs ran the prior; precomputed ones read the prior's store."""
    if r.mode.draws is None:
        if features != 'online':
            raise StudyError(f'run {r.run.name}: an online run, but its training log says the features were '
                             f'{features or "not named"}')
        return
    train_opt = r.run.train_opt
    expected = prior_store_dir(train_opt['network_prior'], train_opt['datasets']['train'],
                               train_opt['train'].get('prior_store'))
    logged = Path(features) if features and features != 'online' else None
    if logged is None or (workdir / logged).resolve() != (workdir / expected).resolve():
        raise StudyError(f'run {r.run.name}: a precomputed run, but its training log says the features were '
                         f'{features or "not named"}, not the store {expected}')


def collect(study: Study, seconds: float | None = None, threads: int | None = None) -> dict:
    """The study's report (the JSON file's content): every run's test means, s/iteration and feature source, each
    row's statistics (``summarize``), the precompute records, every step's seconds (over all invocations in this
    working directory), this invocation's ``seconds`` and ``threads``. StudyError when a run has no result or did not
    get its features as its mode says."""
    workdir = study.workdir
    rows: dict[tuple[str, str], dict] = {}
    inputs: dict[str, list[float]] = {m: [] for m in METRICS}
    for r in study.runs:
        means = read_means(workdir / 'results' / r.run.name, study.test_set)['means']
        if not all(m in means for m in METRICS):
            raise StudyError(f'run {r.run.name}: no {"/".join(METRICS)} in {workdir / "results" / r.run.name}; rerun '
                             'the study')
        log = read_training_log(_latest_log(workdir, r.run.name))
        _check_features(r, log['features'], workdir)
        for m in METRICS:
            if f'{m}_input' in means:
                inputs[m].append(float(means[f'{m}_input']))
        row = rows.setdefault((r.prior.key, r.mode.key), {
            'prior': r.prior.key, 'prior_label': r.prior.label, 'prior_file': r.prior.file, 'mode': r.mode.key,
            'mode_label': r.mode.label, 'draws': r.mode.draws, 'runs': []})
        row['runs'].append({'seed': r.seed, 'name': r.run.name, **{m: float(means[m]) for m in METRICS},
                            's_per_iter': log['s_per_iter'], 'features': log['features']})
    precompute = {}
    for key in study.precompute:
        path = workdir / f'precompute_{key}.json'
        if path.is_file():
            precompute[key] = json.loads(path.read_text(encoding='utf-8'))
    train = study.runs[0].run.train_opt['datasets']['train']
    test = study.runs[0].run.test_opt['datasets']['test_1']
    report = {
        'study': study.name, 'option_file': str(study.option_file), 'workdir': str(study.workdir),
        'quick': study.quick, 'seeds': study.seeds, 'iterations': study.iterations,
        'batch': train.get('total_batch_size', train.get('batch_size_per_gpu')), 'crop': train.get('gt_size'),
        'train_set': {'images': train.get('images'), 'hazy_per_image': train.get('hazy_per_image'),
                      'max_side': train.get('max_side')},
        'test_set': {'name': study.test_set, 'images': test.get('images'), 'hazy_per_image': test.get('hazy_per_image'),
                     'max_side': test.get('max_side')},
        'input': {m: statistics.mean(v) for m, v in inputs.items() if v},
        'orientations': 2 if train.get('use_hflip') else 1, 'precompute': precompute, 'threads': threads,
        'steps': _step_seconds(study), 'seconds': seconds,
    }
    report['steps_seconds'] = sum(report['steps'].values())
    return summarize(report, list(rows.values()))


def _step_seconds(study: Study) -> dict[str, float]:
    """The latest recorded seconds of each step of this study (``steps.jsonl``), in the order they ran."""
    labels = {f'precompute_{key}' for key in study.precompute}
    labels |= {f'{r.run.name}_{tool}' for r in study.runs for tool in ('train', 'test')}
    path = study.workdir / _STEPS
    steps = {}
    for line in path.read_text(encoding='utf-8').splitlines() if path.is_file() else []:
        record = json.loads(line)
        if record['step'] in labels:
            steps[record['step']] = record['seconds']
    return steps


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def summarize(report: dict, rows: list[dict]) -> dict:
    """``report`` with ``rows`` (each with its per-seed ``runs``) given their mean and sample std (n - 1) per metric
    and mean s/iteration, and ``comparisons``: for each prior every pair of modes, for each mode the two priors."""
    for row in rows:
        for m in METRICS:
            row[f'{m}_mean'], row[f'{m}_std'] = _mean_std([run[m] for run in row['runs']])
        times = [run['s_per_iter'] for run in row['runs'] if run.get('s_per_iter') is not None]
        row['s_per_iter'] = statistics.mean(times) if times else None
    by_key = {(row['prior'], row['mode']): row for row in rows}
    priors = list(dict.fromkeys(row['prior'] for row in rows))
    modes = list(dict.fromkeys(row['mode'] for row in rows))
    pairs = [((p, a), (p, b)) for p in priors for i, a in enumerate(modes) for b in modes[i + 1:]]
    pairs += [((p, m), (q, m)) for m in modes for i, p in enumerate(priors) for q in priors[i + 1:]]
    comparisons = []
    for a, b in pairs:
        if a not in by_key or b not in by_key:
            continue
        ra, rb = by_key[a], by_key[b]
        entry = {'a': list(a), 'b': list(b)}
        for m in METRICS:
            delta = rb[f'{m}_mean'] - ra[f'{m}_mean']
            spread = None if ra[f'{m}_std'] is None or rb[f'{m}_std'] is None else ra[f'{m}_std'] + rb[f'{m}_std']
            entry[m] = {'delta': delta, 'spread': spread, 'outside': None if spread is None else abs(delta) > spread}
        comparisons.append(entry)
    return {**report, 'rows': rows, 'comparisons': comparisons}


def _fmt(value: float | None, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '-'
    return f'{value:.4f}' if metric == 'ssim' else f'{value:.2f}' if metric == 'psnr' else f'{value:.3f}'


def _cell(row: dict, metric: str) -> str:
    std = row[f'{metric}_std']
    return _fmt(row[f'{metric}_mean'], metric) + ('' if std is None else f' ± {_fmt(std, metric)}')


def _signed(value: float, metric: str) -> str:
    return ('+' if value >= 0 else '−') + _fmt(abs(value), metric) + (' dB' if metric == 'psnr' else '')


def render_table(report: dict) -> str:
    """The Markdown table (rows: prior x mode) and its notes."""
    seeds = report['seeds']
    lines = ['| prior | prior features | PSNR (dB) | SSIM | s/iteration | PSNR per seed | SSIM per seed |',
             '|---|---|---|---|---|---|---|']
    for row in report['rows']:
        runs = sorted(row['runs'], key=lambda r: r['seed'])
        lines.append(f'| {row["prior_label"]} | {row["mode_label"]} | {_cell(row, "psnr")} | {_cell(row, "ssim")} | '
                     f'{_fmt(row["s_per_iter"], "time")} | {", ".join(_fmt(r["psnr"], "psnr") for r in runs)} | '
                     f'{", ".join(_fmt(r["ssim"], "ssim") for r in runs)} |')
    test, train = report['test_set'], report['train_set']
    n_test = len(test['images'] or []) * (test['hazy_per_image'] or 1)
    notes = ['', f'{report["iterations"]} iterations at batch {report["batch"]} on {report["crop"]}-px crops of '
                 f'{len(train["images"] or [])} photos x {train["hazy_per_image"]} synthetic hazy versions (at most '
                 f'{train["max_side"]} px), seeds {", ".join(str(s) for s in seeds)} (manual_seed); PSNR/SSIM: mean '
                 f'over the {n_test} held-out images ({", ".join(test["images"] or [])} x {test["hazy_per_image"]} '
                 f'hazy versions, RGB, no border crop), tested alike for every mode (tools/test.py runs the prior on '
                 'each whole image).']
    if report.get('input'):
        notes.append(f'Hazy inputs: {_fmt(report["input"].get("psnr"), "psnr")} dB, SSIM '
                     f'{_fmt(report["input"].get("ssim"), "ssim")}.')
    if len(seeds) > 1:
        notes.append(f'± is the sample standard deviation over the {len(seeds)} seeds (n - 1). A difference is '
                     '"outside the spread" when |Δ mean| > std_a + std_b (the mean ± std intervals do not overlap): a '
                     'coarse screen with this few seeds, not a significance test.')
    else:
        notes.append('One seed: no spread.')
    labels = {(row['prior'], row['mode']): (row['prior_label'], row['mode_label']) for row in report['rows']}
    for c in report['comparisons']:
        (pa, ma), (pb, mb) = labels[tuple(c['a'])], labels[tuple(c['b'])]
        what = f'{pa}: {mb} vs {ma}' if c['a'][0] == c['b'][0] else f'{ma}: {pb} vs {pa}'
        parts = []
        for m in METRICS:
            verdict = {True: 'outside the spread', False: 'within the spread', None: 'no spread'}[c[m]['outside']]
            parts.append(f'{m.upper()} {_signed(c[m]["delta"], m)} ({verdict})')
        notes.append(f'- {what}: ' + ', '.join(parts))
    prior_labels = {row['prior']: row['prior_label'] for row in report['rows']}
    draws = max(row['draws'] or 0 for row in report['rows'])
    for key, record in report.get('precompute', {}).items():
        notes.append(f'Precomputing the store of the {prior_labels.get(key, key)} ({record["images"]} training images '
                     f'x {report["orientations"]} orientation(s) x {draws} draws, shared by every precomputed row and '
                     f'seed): {record["prior_seconds"]:.0f} s ({record["step_seconds"]:.0f} s with start-up).')
    notes.append('s/iteration: from the training log, first to last iteration, mean over the seeds; runs one after '
                 'another on the same machine' + (f', {report["threads"]} thread(s) each' if report.get('threads')
                                                  else '') + '.')
    if report.get('steps'):
        notes.append(f'Study time: {report["steps_seconds"] / 60:.1f} min, the sum of its {len(report["steps"])} '
                     'steps (precompute, train, test; start-ups included)'
                     + (f'; this invocation: {report["seconds"] / 60:.1f} min.' if report.get('seconds') else '.'))
    return '\n'.join(lines + notes) + '\n'


def write_report(report: dict, folder: Path, name: str) -> tuple[Path, Path]:
    """``<folder>/<name>.md`` (the table) and ``<name>.json`` (the report); returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    md, out = folder / f'{name}.md', folder / f'{name}.json'
    md.write_text(render_table(report), encoding='utf-8')
    out.write_text(json.dumps(report, indent=2) + '\n', encoding='utf-8')
    return md, out
