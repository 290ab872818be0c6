"""Option files for the tools: ``_base_`` inheritance and argv fixes, done before basicsr parses anything.

basicsr reads one flat YAML. difflid option files may inherit shared parts with mmengine's
``_base_`` (and ``_delete_``); ``resolve_option_file`` merges them into one YAML that basicsr reads and
copies into the experiment folder, so every run keeps the exact options it used.
"""
import tempfile
from pathlib import Path

import yaml

__all__ = ['prepare_argv', 'resolve_option_file']


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
    merged = Config.fromfile(str(path)).to_dict()
    out = Path(tempfile.mkdtemp(prefix='difflid_opt_')) / path.name
    header = f'# {path.name} with its _base_ files {bases} merged by difflid (source: {path.resolve()})\n'
    out.write_text(header + yaml.safe_dump(merged, sort_keys=False, allow_unicode=True), encoding='utf-8')
    return out


def prepare_argv(argv: list[str]) -> list[str]:
    """Rewrite a tool's argv for basicsr's parser: ``-opt`` points at the resolved option file, and
    ``--local-rank`` (passed by ``torch.distributed.launch`` since PyTorch 2.0) becomes ``--local_rank``."""
    out = [arg.replace('--local-rank', '--local_rank', 1) if arg.startswith('--local-rank') else arg for arg in argv]
    for flag in ('-opt', '--opt'):
        if flag in out[:-1]:
            i = out.index(flag) + 1
            out[i] = str(resolve_option_file(out[i]))
    return out
