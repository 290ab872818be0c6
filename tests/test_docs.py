"""Every command that README.md and docs/*.md show is run here, or names the test that runs it.

A command block is a fenced block whose info string is bash, sh, shell or console, or any fenced block with a line
that starts with ``python ``, ``torchrun `` or ``bash ``. It carries a tag: an HTML comment (invisible on GitHub)
that ends on the line right before its opening fence. The tags:

``<!-- doc: run -->``
    The block is executed by ``test_run_blocks`` (slow), line by line, in a scratch copy of ``tools/``, ``options/``
    and ``datasets_prep/`` that is also the working directory, so that ``experiments/``, ``results/`` and
    ``datasets/`` land in the copy. Each line must be ``python tools/<script>.py ...`` or
    ``python datasets_prep/<script>.py ...``; all lines of one block run in one interpreter (one start-up).
``<!-- doc: run SCRIPT: ARGS ... ; FILE.yml: KEY.PATH=VALUE ... -->``
    The same, shortened by stated overrides. ``SCRIPT: ARGS`` (e.g. ``train.py: --force_yml train:total_iter=1``)
    appends ARGS to every line of the block that runs that script. ``options/x.yml: KEY.PATH=VALUE`` (e.g.
    ``probe.timesteps=[0]``) sets keys, YAML values, in the scratch copy of that option file before the block runs.
    ARGS are split as a shell splits them: quote a value with brackets for basicsr's ``--force_yml``.
``<!-- doc: covered-by tests/test_x.py::test_name [tests/test_y.py::test_other ...] -->``
    A command too heavy to run here. Each named test must exist (the file is parsed with ``ast``), and every option
    file and every tool the block names must appear in one of the named tests' modules: a test that stops running
    them shows up here.
``<!-- doc: ci [tests/test_x.py::test_name] -->``
    ``.ci/run`` runs this line as it is; or, for a line that it does not hold, ``.ci/run`` runs the whole suite and
    in it the named test runs the line's option files (checked as for ``covered-by``).

Whatever the tag, a ``pip install -e ".[extra]"`` line must name an extra that setup.py defines. A command block
without a tag fails ``test_every_command_block_is_tagged``, naming its page and line. Commands in the prose (inline
code) are not checked, but every repository path and link on the pages is (``test_paths_named_on_the_pages_exist``,
``test_links_between_the_pages_resolve``).
"""
import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

PAGES = [REPO_ROOT / 'README.md', *sorted((REPO_ROOT / 'docs').glob('*.md'))]
COMMAND_LANGUAGES = {'bash', 'sh', 'shell', 'console'}
COMMAND_STARTS = ('python ', 'torchrun ', 'bash ')
TAG_KINDS = ('run', 'covered-by', 'ci')
FENCE = re.compile(r'^ {0,3}(`{3,}|~{3,})(.*)$')
TEST_ID = re.compile(r'^(tests/[\w/]+\.py)::(\w+)$')
OPTION_FILE = re.compile(r'(?<![\w/.-])(options/[\w./-]+\.yml)')
TOOL = re.compile(r'(?<![\w/.-])((?:tools|datasets_prep)/\w+\.py)')
SCRATCH = ('tools', 'options', 'datasets_prep')  # what a run block's scratch root holds
OUTPUTS = ('experiments', 'results', 'datasets', 'tb_logger')  # never written in the repository by a run block
# Commands that no CPU test without downloads can run: the test below checks their option files instead. Each entry
# is a gap to close when data or a GPU is available to the tests.
CHECKED_ONLY = {
    'python tools/hspace_probe.py -opt options/probe_its.yml':
        'needs pretrained/256x256_diffusion_uncond.pt and prepared RESIDE ITS pairs',
}


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: where it opens, its info string, its text and its tag (None: untagged)."""

    page: Path
    line: int
    info: str
    text: str
    tag: str | None

    @property
    def where(self) -> str:
        return f'{self.page.relative_to(REPO_ROOT)}:{self.line}'

    @property
    def is_command(self) -> bool:
        words = self.info.split()
        return (bool(words) and words[0] in COMMAND_LANGUAGES) or any(
            line.lstrip().startswith(COMMAND_STARTS) for line in self.text.splitlines())

    @property
    def kind(self) -> str | None:
        return self.tag.split()[0] if self.tag else None

    @property
    def arguments(self) -> str:
        return self.tag.split(None, 1)[1] if self.tag and len(self.tag.split()) > 1 else ''

    def lines(self) -> list[str]:
        """The block's command lines as written, continuations joined; empty and comment lines dropped."""
        joined = re.sub(r'\\\n\s*', ' ', self.text)
        return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith('#')]


def _tag_before(lines: list[str], fence: int) -> str | None:
    """The text after ``doc:`` of the HTML comment that ends on the line before ``lines[fence]``."""
    end = fence - 1
    if end < 0 or not lines[end].rstrip().endswith('-->'):
        return None
    start = end
    while start > 0 and '<!--' not in lines[start]:
        start -= 1
    match = re.search(r'<!--\s*doc:(.*?)-->\s*$', ' '.join(lines[start:end + 1]), re.DOTALL)
    return ' '.join(match.group(1).split()) if match else None


def read_blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, in order (a closing fence is the opening one's character, at least as long)."""
    lines = page.read_text(encoding='utf-8').splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence = match.group(1)
        end = i + 1
        while end < len(lines) and not re.match(rf'^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$', lines[end]):
            end += 1
        blocks.append(Block(page, i + 1, match.group(2).strip(), '\n'.join(lines[i + 1:end]), _tag_before(lines, i)))
        i = end + 1
    return blocks


BLOCKS = [block for page in PAGES for block in read_blocks(page)]
COMMAND_BLOCKS = [block for block in BLOCKS if block.is_command]


def _named_tests(block: Block) -> list[tuple[Path, str]]:
    words = block.arguments.split() if block.kind in ('covered-by', 'ci') else []
    bad = [w for w in words if not TEST_ID.match(w)]
    assert not bad, f'{block.where}: {block.kind} takes tests/<file>.py::<test>, got {bad}'
    return [(REPO_ROOT / m.group(1), m.group(2)) for m in map(TEST_ID.match, words)]


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding='utf-8'))
    return {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name.startswith('test')}


def _named_files(text: str) -> tuple[set[str], set[str]]:
    """Option files and tool scripts that ``text`` names, without placeholders such as ``options/<task>.yml``."""
    return set(OPTION_FILE.findall(text)), set(TOOL.findall(text))


def test_every_command_block_is_tagged():
    problems = [f'{b.where}: a command block needs <!-- doc: run|covered-by|ci ... --> on the line before its fence'
                for b in COMMAND_BLOCKS if b.kind not in TAG_KINDS]
    problems += [f'{b.where}: a tag on a block without commands' for b in BLOCKS if b.tag and not b.is_command]
    assert not problems, '\n'.join(problems)


def test_the_pages_have_commands_in_each_kind_of_tag():
    """The parser sees the pages' blocks at all (a fence it missed would make every other test here vacuous)."""
    kinds = {b.kind for b in COMMAND_BLOCKS}
    assert kinds == set(TAG_KINDS), kinds
    assert len(PAGES) > 5 and len(COMMAND_BLOCKS) > 10


@pytest.mark.parametrize('block', [b for b in COMMAND_BLOCKS if b.kind in ('covered-by', 'ci')], ids=lambda b: b.where)
def test_named_tests_exist_and_mention_what_the_block_runs(block):
    tests = _named_tests(block)
    assert tests or block.kind == 'ci', f'{block.where}: covered-by names no test'
    for path, name in tests:
        assert path.is_file(), f'{block.where}: no test file {path.relative_to(REPO_ROOT)}'
        assert name in _test_functions(path), f'{block.where}: {path.relative_to(REPO_ROOT)} has no test {name}'
    ci_lines = set((REPO_ROOT / '.ci' / 'run').read_text().splitlines())
    text = '\n'.join(line for line in block.lines() if line not in ci_lines)  # what .ci/run does not run itself
    option_files, tools = _named_files(text)
    sources = '\n'.join(path.read_text(encoding='utf-8') for path, _ in tests)
    missing = sorted(Path(f).stem for f in option_files if Path(f).stem not in sources)
    missing += sorted(Path(t).name for t in tools if Path(t).name not in sources)
    names = ', '.join(name for _, name in tests) or 'no test'
    assert not missing, f'{block.where}: {names} never name {missing}: name the tests that run them'


@pytest.mark.parametrize('block', [b for b in COMMAND_BLOCKS if b.kind == 'ci'], ids=lambda b: b.where)
def test_ci_blocks_are_what_ci_runs(block):
    ci = (REPO_ROOT / '.ci' / 'run').read_text()
    assert '-m pytest --slow' in ci, '.ci/run no longer runs the slow tests, which ci tags rely on'
    for line in block.text.splitlines():
        if line.strip() and line not in ci.splitlines():
            assert _named_tests(block), f'{block.where}: .ci/run does not run {line!r} and the tag names no test'


def _extras() -> set[str]:
    """The extras_require keys of setup.py, read from its syntax tree (setup.py is not run)."""
    for node in ast.walk(ast.parse((REPO_ROOT / 'setup.py').read_text())):
        if isinstance(node, ast.keyword) and node.arg == 'extras_require':
            return {key.value for key in node.value.keys}
    raise AssertionError('setup.py has no extras_require')


def test_pip_extras_on_the_pages_exist():
    named = {(b.where, extra) for b in COMMAND_BLOCKS for line in b.lines()
             for extra in re.findall(r'pip install .*-e \S*\[([\w-]+)\]', line)}
    assert named, 'the pages name no extra: the pattern no longer matches the install lines'
    unknown = [f'{where}: extra [{extra}]' for where, extra in sorted(named) if extra not in _extras()]
    assert not unknown, f'setup.py defines {sorted(_extras())}; the pages name ' + ', '.join(unknown)


def test_paths_named_on_the_pages_exist():
    """Every repository file or folder the pages name (prose and blocks) exists: moved code leaves no stale path."""
    pattern = re.compile(r'(?<![\w/.-])((?:difflid|options|tools|tests|docs|datasets_prep|\.ci)/[\w./-]*[\w/])')
    missing = []
    for page in PAGES:
        for number, line in enumerate(page.read_text(encoding='utf-8').splitlines(), 1):
            for path in pattern.findall(line):
                if not (REPO_ROOT / path).exists() and not line[line.index(path) + len(path):].startswith(('<', '*')):
                    missing.append(f'{page.relative_to(REPO_ROOT)}:{number}: {path}')
    allowed = {'options/colour_cast.yml', 'options/colour_cast_quick.yml'}  # docs/new_task.md has the reader write them
    missing = [m for m in missing if m.rsplit(': ', 1)[1] not in allowed]
    assert not missing, 'no such file or folder:\n' + '\n'.join(missing)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but hyphens dropped, spaces to hyphens."""
    text = re.sub(r'`|\*\*|\[([^\]]*)\]\([^)]*\)', r'\1', heading.strip().lower())
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def _anchors(page: Path) -> set[str]:
    text = page.read_text(encoding='utf-8')
    outside = re.sub(r'^(```|~~~).*?^\1', '', text, flags=re.DOTALL | re.MULTILINE)
    return {_slug(h) for h in re.findall(r'^#{1,6} (.*)$', outside, re.MULTILINE)}


def test_links_between_the_pages_resolve():
    broken = []
    for page in PAGES:
        text = re.sub(r'^(```|~~~).*?^\1', '', page.read_text(encoding='utf-8'), flags=re.DOTALL | re.MULTILINE)
        for target in re.findall(r'\]\(([^)\s]+)\)', text):
            if re.match(r'\w+://', target):
                continue
            file, _, anchor = target.partition('#')
            path = (page.parent / file).resolve() if file else page
            if not path.exists() or (anchor and path.suffix == '.md' and anchor not in _anchors(path)):
                broken.append(f'{page.relative_to(REPO_ROOT)}: ({target})')
    assert not broken, 'broken links:\n' + '\n'.join(broken)


def test_commands_no_cpu_test_can_run_have_valid_option_files():
    """CHECKED_ONLY: each command is still on a page, and its option file merges its bases and passes the check that
    the tool itself runs first (tools/hspace_probe.py: load_probe_options)."""
    from difflid.analysis.probe import load_probe_options

    shown = {line.split('#')[0].strip() for b in COMMAND_BLOCKS for line in b.lines()}
    for command in CHECKED_ONLY:
        assert command in shown, f'no page shows {command!r} any more: drop it from CHECKED_ONLY'
        opt = load_probe_options(REPO_ROOT / shlex.split(command)[-1])
        assert opt['network_prior'] and opt['datasets']['probe']


def _run_overrides(block: Block) -> tuple[dict[str, list[str]], dict[str, dict]]:
    """A run tag's ``SCRIPT: ARGS`` (appended per script) and ``FILE.yml: KEY=VALUE`` (option file edits)."""
    appended, edits, target = {}, {}, None
    for word in shlex.split(block.arguments.replace(';', ' ')):
        if word.endswith(':') and (word.endswith('.py:') or word.endswith('.yml:')):
            target = word[:-1]
            (edits if target.endswith('.yml') else appended).setdefault(target, [] if target.endswith('.py') else {})
        elif target is None:
            raise AssertionError(f'{block.where}: run arguments start with SCRIPT: or FILE.yml:, got {word!r}')
        elif target.endswith('.py'):
            appended[target].append(word)
        else:
            key, sep, value = word.partition('=')
            assert sep, f'{block.where}: {target} takes KEY.PATH=VALUE, got {word!r}'
            edits[target][key] = yaml.safe_load(value)
    return appended, edits


def _edit_option_file(path: Path, edits: dict) -> None:
    opt = yaml.safe_load(path.read_text(encoding='utf-8'))
    for dotted, value in edits.items():
        *parents, last = dotted.split('.')
        node = opt
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path.write_text(yaml.safe_dump(opt, sort_keys=False), encoding='utf-8')


RUNNER = """
import runpy, shlex, sys
for argv in {commands!r}:
    print('$ python', shlex.join(argv), flush=True)
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name='__main__')
    except SystemExit as exit:
        if exit.code not in (None, 0):
            raise
"""


@pytest.mark.slow
@pytest.mark.parametrize('block', [b for b in COMMAND_BLOCKS if b.kind == 'run'], ids=lambda b: b.where)
def test_run_blocks(block, tmp_path):
    """The block's commands, as the page shows them plus its tag's overrides, exit 0 in a scratch copy."""
    root = tmp_path / 'root'
    for folder in SCRATCH:
        shutil.copytree(REPO_ROOT / folder, root / folder)
    appended, edits = _run_overrides(block)
    for option_file, changes in edits.items():
        assert (root / option_file).is_file(), f'{block.where}: no option file {option_file} to edit'
        _edit_option_file(root / option_file, changes)
    commands = []
    for line in block.lines():
        words = shlex.split(line, comments=True)
        assert words[0] == 'python' and re.fullmatch(r'(tools|datasets_prep)/\w+\.py', words[1]), \
            f'{block.where}: a run block holds only python tools/*.py or datasets_prep/*.py lines, got {line!r}'
        commands.append([*words[1:], *appended.get(Path(words[1]).name, [])])
    unused = set(appended) - {Path(c[0]).name for c in commands}
    assert not unused, f'{block.where}: overrides for {sorted(unused)}, which the block does not run'
    before = {name: sorted(os.listdir(REPO_ROOT / name)) if (REPO_ROOT / name).is_dir() else None for name in OUTPUTS}
    # -P: the scratch root is the working directory but not on sys.path (a difflid/ folder written there must not
    # shadow the installed package)
    proc = subprocess.run([sys.executable, '-P', '-c', RUNNER.format(commands=commands)], cwd=root,
                          capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, f'{block.where}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    after = {name: sorted(os.listdir(REPO_ROOT / name)) if (REPO_ROOT / name).is_dir() else None for name in OUTPUTS}
    assert after == before, f'{block.where} wrote into the repository: {after} (was {before})'
