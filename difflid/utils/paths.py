"""Path-valued options that outlive the directory they were written in.

basicsr reads relative paths in option files from the working directory. A net_g checkpoint records its
network options so that tools/infer.py can rebuild the network; a relative prior checkpoint path in them
would then work only from the directory training ran in. ``absolute_paths`` is applied when saving,
``locate_paths`` when loading (it also copes with checkpoints saved before, and with moved projects).
"""
from pathlib import Path

__all__ = ['absolute_paths', 'is_path_key', 'locate_paths']


def is_path_key(key: str) -> bool:
    """Option keys that hold a file or folder: ``checkpoint`` (every prior, DiffLoss), ``diffusers`` (a diffusers
    folder: DiffusersUNetExtractor, DiffusersUNet2D), ``*_checkpoint``, ``*_path``, ``*_file``, ``*_dir`` and
    basicsr's ``pretrain_network_*``. By name, because a value such as ``unet: adm_tiny`` is no path."""
    return key in ('checkpoint', 'diffusers') or key.startswith('pretrain_network_') or key.endswith(
        ('_checkpoint', '_path', '_file', '_dir'))


def absolute_paths(block: dict, base: str | Path) -> dict:
    """A copy of an option block with each relative path value resolved against ``base`` (where it was read)."""
    out = dict(block)
    for key, value in block.items():
        if is_path_key(key) and isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            out[key] = str((Path(base) / value).resolve())
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
