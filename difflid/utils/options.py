"""Option files for the tools: ``_base_`` inheritance and argv fixes, done before basicsr parses anything.

basicsr reads one flat YAML. difflid option files may inherit shared parts with mmengine's
``_base_`` (and ``_delete_``); ``resolve_option_file`` merges them into one YAML that basicsr reads and
copies into the experiment folder, so every run keeps the exact options it used.
"""
import inspect
import tempfile
import typing
from pathlib import Path
from typing import Any

import yaml

from difflid.utils.checkpoint_io import latest_weights_name

__all__ = ['is_training_options', 'option_defaults', 'option_names', 'prepare_argv', 'resolve_option_file',
           'training_to_test_options']


def resolve_option_file(path: str | Path) -> Path:
    """Return ``path`` itself, or, if it uses ``_base_``, a merged copy with the same file name.

    Raises FileNotFoundError naming the file (or base file) that is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'option file not found: {path.resolve()}')
    with path.open(encoding='utf-8') as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict):
        raise ValueError(f'option file {path} must hold a YAML mapping at the top level')
    if '_base_' not in raw:
        return path
    from mmengine.config import Config

    bases = raw['_base_'] if isinstance(raw['_base_'], list) else [raw['_base_']]
    for base in bases:
        if not (path.parent / base).is_file():
            looked = (path.parent / base).resolve()
            raise FileNotFoundError(f'{path}: _base_ file {base!r} not found (looked for {looked})')
    try:
        merged = Config.fromfile(str(path)).to_dict()
    except Exception as err:  # mmengine raises KeyError/TypeError/... for bad inheritance
        raise ValueError(f'{path}: cannot merge its _base_ files {bases}: {err}') from err
    out = Path(tempfile.mkdtemp(prefix='difflid_opt_')) / path.name
    header = f'# {path.name} with its _base_ files {bases} merged by difflid (source: {path.resolve()})\n'
    out.write_text(header + yaml.safe_dump(merged, sort_keys=False, allow_unicode=True), encoding='utf-8')
    return out


def is_training_options(opt: dict) -> bool:
    """Whether parsed options describe a training run (a ``train`` block or a train dataset)."""
    return 'train' in opt or 'train' in (opt.get('datasets') or {})


def training_to_test_options(opt: dict, root: Path) -> dict:
    """Test options from a training option file: its validation sets become test sets, and the run's
    latest weights (``experiments/<name>/models/net_g_latest.pth``) are loaded unless the file names some.

    Raises FileNotFoundError when the run has no saved model yet, ValueError when it has no val set.
    """
    val_sets = [dict(d) for phase, d in (opt.get('datasets') or {}).items() if phase.startswith('val')]
    if not val_sets:
        raise ValueError(f"training options '{opt.get('name')}' have no val dataset to test on; "
                         'add datasets.val or use a test option file')
    test = {k: v for k, v in opt.items() if k not in ('train', 'logger', 'datasets')}
    test['datasets'] = {f'test_{i}': d for i, d in enumerate(val_sets, 1)}
    path = {k: v for k, v in (opt.get('path') or {}).items() if k != 'resume_state'}
    if not path.get('pretrain_network_g'):
        weights = root / 'experiments' / opt['name'] / 'models' / latest_weights_name(opt)
        if not weights.is_file():
            raise FileNotFoundError(f"no trained model at {weights}: train first (tools/train.py -opt <this file>) "
                                    'or set path.pretrain_network_g')
        path['pretrain_network_g'] = str(weights)
        path['param_key_g'] = 'params_ema' if (opt.get('train') or {}).get('ema_decay', 0) > 0 else 'params'
    test['path'] = path
    test['val'] = {**{k: v for k, v in (opt.get('val') or {}).items() if k != 'val_freq'}, 'save_img': True}
    test['val'].setdefault('suffix', None)
    return test


def prepare_argv(argv: list[str], root: Path | None = None) -> list[str]:
    """Rewrite a tool's argv for basicsr's parser: ``-opt`` points at the resolved option file, and
    ``--local-rank`` (passed by ``torch.distributed.launch`` since PyTorch 2.0) becomes ``--local_rank``.

    With ``root`` (tools/test.py), a training option file is turned into test options
    (``training_to_test_options``), so ``tools/test.py -opt options/lol_v1.yml`` tests that run.
    """
    out = [arg.replace('--local-rank', '--local_rank', 1) if arg.startswith('--local-rank') else arg for arg in argv]
    for flag in ('-opt', '--opt'):
        if flag in out[:-1]:
            i = out.index(flag) + 1
            resolved = resolve_option_file(out[i])
            if root is not None:
                opt = yaml.safe_load(resolved.read_text(encoding='utf-8'))
                if is_training_options(opt):
                    resolved = Path(tempfile.mkdtemp(prefix='difflid_opt_')) / resolved.name
                    resolved.write_text(yaml.safe_dump(training_to_test_options(opt, root), sort_keys=False),
                                        encoding='utf-8')
            out[i] = str(resolved)
    return out


def _declared_kwargs(param: inspect.Parameter) -> dict[str, Any]:
    """The keys (and their annotations) of a ``**kwargs: Unpack[SomeTypedDict]`` parameter; empty for a plain one."""
    annotation = param.annotation
    if typing.get_origin(annotation) is typing.Unpack:
        declared = typing.get_args(annotation)[0]
        return dict(typing.get_type_hints(declared))
    return {}


def option_names(cls: type) -> set[str] | None:
    """The option keys a registered class takes: its named constructor parameters plus the keys of a declared
    ``**options: Unpack[TypedDict]``; None when it swallows any keyword (a plain ``**kwargs``)."""
    names = set()
    for param in inspect.signature(cls).parameters.values():
        if param.kind is param.VAR_KEYWORD:
            declared = _declared_kwargs(param)
            if not declared:
                return None
            names |= set(declared)
        elif param.kind is not param.VAR_POSITIONAL:
            names.add(param.name)
    return names


def option_defaults(cls: type, shared_defaults: dict | None = None) -> dict[str, Any]:
    """The default of every named constructor parameter of ``cls`` that has one, plus ``shared_defaults`` (those of
    its declared ``**options``)."""
    params = inspect.signature(cls).parameters.values()
    named = {p.name: p.default for p in params if p.default is not p.empty and p.kind is not p.VAR_KEYWORD}
    return {**(shared_defaults or {}), **named}
