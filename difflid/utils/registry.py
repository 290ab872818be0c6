"""BasicSR-style registration by file suffix: importing a subpackage imports (and so registers)
every ``*_<suffix>.py`` in its folder, so there is no list of modules to keep up to date."""
import importlib
from pathlib import Path

__all__ = ['import_by_suffix']


def import_by_suffix(package: str, package_file: str, suffix: str) -> list[str]:
    """Import ``<package>.<name>`` for every ``<name>_<suffix>.py`` beside ``package_file``; return the names."""
    names = sorted(p.stem for p in Path(package_file).parent.glob(f'*_{suffix}.py'))
    for name in names:
        importlib.import_module(f'{package}.{name}')
    return names
