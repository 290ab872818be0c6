"""The package's layers (setup.cfg, [importlinter]) point down: no module imports from a layer above its own, no two
independent siblings import each other, and every module of difflid is placed in a layer."""
import configparser
import contextlib
import io
import os
import pkgutil
import shutil
import subprocess
import sys

import difflid
from tests.conftest import REPO_ROOT


def _layers() -> list[list[str]]:
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / 'setup.cfg')
    lines = config['importlinter:contract:layers']['layers'].split('\n')
    return [[name.strip() for name in line.replace(':', '|').split('|')] for line in lines if line.strip()]


def test_every_module_is_in_a_layer():
    """A new top-level module or subpackage must be placed in the contract, or it would escape it."""
    placed = {name for layer in _layers() for name in layer}
    modules = {f'difflid.{info.name}' for info in pkgutil.iter_modules(difflid.__path__)}
    assert modules - placed == set(), 'add these to [importlinter:contract:layers] in setup.cfg'
    assert placed - modules == set(), 'the contract names modules that do not exist'


def test_imports_point_down(monkeypatch):
    from importlinter.cli import lint_imports

    monkeypatch.chdir(REPO_ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = lint_imports(config_filename=os.fspath(REPO_ROOT / 'setup.cfg'), no_cache=True, no_logo=True)
    assert code == 0, out.getvalue()


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract has teeth: the same layers over a copy of the package in which utils imports models fail."""
    shutil.copytree(REPO_ROOT / 'difflid', tmp_path / 'difflid', ignore=shutil.ignore_patterns('*.pth', '__pycache__'))
    (tmp_path / 'difflid' / 'utils' / 'upward.py').write_text('from difflid.models import base_restoration\n')
    shutil.copy(REPO_ROOT / 'setup.cfg', tmp_path / 'setup.cfg')
    run = subprocess.run([sys.executable, '-c', 'from importlinter.cli import lint_imports; '
                          'raise SystemExit(lint_imports(config_filename="setup.cfg", no_cache=True, no_logo=True))'],
                         cwd=tmp_path, env={**os.environ, 'PYTHONPATH': str(tmp_path)}, capture_output=True, text=True)
    assert 'difflid.utils.upward -> difflid.models.base_restoration' in run.stdout, run.stdout + run.stderr
    assert run.returncode == 1
