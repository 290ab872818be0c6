"""Path-valued options that outlive the directory they were written in.

basicsr reads relative paths in option files from the working directory. A net_g checkpoint records its
network options so that tools/infer.py can rebuild the network; a relative prior checkpoint path in them
would then work only from the directory training ran in. ``absolute_paths`` is applied when saving,
``locate_paths`` when loading (it also copes with checkpoints saved before, and with moved projects).
``locate_dataset_paths`` gives dataset paths the same search (working directory, then the project root) at start-up.
"""
from pathlib import Path

from basicsr.utils.registry import DATASET_REGISTRY

from difflid.utils.errors import OptionError

__all__ = ['SHIPPED_ROOT', 'absolute_paths', 'is_dataset_path_key', 'is_path_key', 'locate_dataset_paths',
           'locate_paths']


def is_path_key(key: str) -> bool:
    """Option keys that hold a file or folder: ``checkpoint`` (every prior, DiffLoss), ``diffusers`` (a diffusers
    folder: DiffusersUNetExtractor, DiffusersUNet2D), ``*_checkpoint``, ``*_path``, ``*_file``, ``*_dir`` and
    basicsr's ``pretrain_network_*``. By name, because a value such as ``unet: adm_tiny`` is no path."""
    return key in ('checkpoint', 'diffusers') or key.startswith('pretrain_network_') or key.endswith(
        ('_checkpoint', '_path', '_file', '_dir'))


PACKAGE_DIR = Path(__file__).resolve().parents[1]  # difflid/: files shipped in it are found from anywhere
# where a shipped file's ``difflid/...`` path resolves: the checkout, or site-packages (a search folder of last resort)
SHIPPED_ROOT = PACKAGE_DIR.parent


def absolute_paths(block: dict, base: str | Path) -> dict:
    """A copy of an option block with each relative path value resolved against ``base`` (where it was read).

    A file shipped inside the difflid package (``difflid/weights/...``) keeps the form ``difflid/...``: the loaders
    find it from any directory and in any install, where an absolute path would name this machine's checkout (and
    a model shipped with difflid would carry it)."""
    out = dict(block)
    for key, value in block.items():
        if is_path_key(key) and isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            resolved = (Path(base) / value).resolve()
            if not resolved.exists() and (SHIPPED_ROOT / value).exists():  # read from the package (package_path)
                resolved = (SHIPPED_ROOT / value).resolve()
            shipped = resolved.is_relative_to(PACKAGE_DIR)
            out[key] = str(resolved.relative_to(PACKAGE_DIR.parent) if shipped else resolved)
    return out


def locate_paths(block: dict, block_name: str, search_dirs: list[Path]) -> tuple[dict, list[str]]:
    """A copy of ``block`` whose path values name existing files or folders where they can be found, and
    for each that cannot, a line saying where it was looked for.

    A value that exists (a relative one from the working directory) is kept. A missing relative value (a
    checkpoint saved before paths were made absolute) is tried under each of ``search_dirs`` in turn; a
    missing absolute one (a moved project) by its trailing parts, longest first, down to ``folder/file``.
    Values found nowhere are kept, so that the code that opens them raises its own error (which says what
    to download); the caller adds the lines to it.
    """
    out, missing = dict(block), []
    dirs = list(dict.fromkeys(Path(d) for d in search_dirs))
    for key, value in block.items():
        if not (is_path_key(key) and isinstance(value, str) and value):
            continue
        given = Path(value).expanduser()
        if given.exists():
            continue
        parts = given.parts[1:] if given.is_absolute() else given.parts
        tails = [Path(*parts[i:]) for i in range(len(parts) - 1)] if given.is_absolute() else [given]
        found = next((d / t for t in tails for d in dirs if (d / t).exists()), None)
        if found is not None:
            out[key] = str(found)
        elif given.is_absolute():
            missing.append(f'{block_name}.{key} {value!r} does not exist, and neither do its trailing parts '
                           f'({", ".join(map(str, tails))}) under any of:\n  ' + '\n  '.join(map(str, dirs)))
        else:
            missing.append(f'{block_name}.{key} {value!r} is at none of:\n  '
                           + '\n  '.join(str(d / given) for d in dirs))
    return out, missing


def is_dataset_path_key(key: str) -> bool:
    """Keys of a dataset block that hold a file or folder: basicsr's ``dataroot`` and ``dataroot_*`` (``_gt``,
    ``_lq``), ``meta_info_file``, ``pair_list``, and every key ``is_path_key`` names (``*_file``, ``*_dir``, ...)."""
    return key == 'dataroot' or key.startswith('dataroot_') or key == 'pair_list' or is_path_key(key)


def _generated_path_keys(block: dict) -> tuple[str, ...]:
    """The keys whose folders a dataset writes itself when they are missing (``GENERATED_PATH_KEYS`` of its
    registered class: SyntheticHazeDataset's ``dataroot``); such a path is an output, not an input to find."""
    name = block.get('type')
    cls = DATASET_REGISTRY.get(name) if isinstance(name, str) and name in DATASET_REGISTRY else None
    return tuple(getattr(cls, 'GENERATED_PATH_KEYS', ()))


def locate_dataset_paths(opt: dict, search_dirs: list[Path]) -> list[str]:
    """Resolve, in place, every relative path of every block in ``opt['datasets']``, as prior checkpoints are found.

    basicsr opens dataset paths from the working directory, so ``dataroot: datasets/ITS`` used to work only from
    the project folder, while experiments, priors and checkpoints are found from anywhere. Each relative value is
    looked for under ``search_dirs`` in order (the working directory first, then the project root when running from
    a checkout) and replaced by the absolute path where it exists. A path that a dataset writes itself
    (``GENERATED_PATH_KEYS``) is taken where it already exists, else kept as given: the dataset writes it there.

    Returns:
        Log lines, one per path: the option, its value and where it was found (or will be written).
    Raises:
        OptionError: a path found nowhere, for each one the option and the places tried.
    """
    dirs = list(dict.fromkeys(Path(d).resolve() for d in search_dirs))
    lines, missing = [], []
    blocks = [(f'datasets.{name}', block) for name, block in (opt.get('datasets') or {}).items()]
    while blocks:
        where, block = blocks.pop(0)
        if not isinstance(block, dict):
            continue
        # the dataset blocks a block holds (a mix's members): their paths are resolved the same way
        blocks += [(f'{where}.{key}[{i}]', item) for key, value in block.items() if isinstance(value, list)
                   for i, item in enumerate(value) if isinstance(item, dict) and 'type' in item]
        generated = _generated_path_keys(block)
        for key, value in block.items():
            if not (is_dataset_path_key(key) and isinstance(value, str) and value):
                continue
            option, given = f'{where}.{key}', Path(value).expanduser()
            places = [given] if given.is_absolute() else [d / given for d in dirs]
            found = next((p for p in places if p.exists()), None)
            if found is not None:
                block[key] = str(found)
                lines.append(f'{option}: {value} -> {found}')
            elif key in generated:  # kept relative: the dataset opens it from the working directory
                where = given if given.is_absolute() else Path.cwd() / given
                lines.append(f'{option}: {value} does not exist yet; the dataset writes its data to {where}')
            else:
                missing.append((option, value, places))
    if missing:
        head = (f'{missing[0][0]}: {missing[0][1]!r} not found' if len(missing) == 1 else
                f'{len(missing)} dataset paths not found: ' + ', '.join(option for option, _, _ in missing))
        detail = [f'{option}: {value!r}, looked for at ' + ', '.join(map(str, places)) for option, value, places in
                  missing]
        hint = ('prepare the dataset (docs/datasets.md), or give the path from the working directory or as an '
                'absolute path')
        raise OptionError('\n'.join([head, hint, *detail]))  # the hint before the list, which may be cut short
    return lines
