"""A start that fails creates and moves nothing; a reused name says where the old run went (issue 19, item 4).

The tools run in this process (``runpy``, as ``python tools/x.py`` would) from a scratch project root, so that
``experiments/``, ``tb_logger/`` and ``results/`` are the scratch root's, which the tests compare before and after.
"""
import hashlib
import logging
import logging.config
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from basicsr.utils import get_root_logger

from difflid.archs.difflid_arch import DiffLI2D
from difflid.entry.startup import StartupLog, prepare_folders
from tests.conftest import REPO_ROOT, write_pairs

PRIOR = {'type': 'HSpaceExtractor', 'unet': 'adm_tiny', 'checkpoint': None, 'random_weights': True, 'init_seed': 0,
         'timesteps': [0, 500], 'seed': 0}
NETWORK = {'type': 'DiffLI2D', 'num_feat': 8, 'num_heads': [1, 2, 2, 4], 'h_channels': 64}


def _dataset(data: Path, phase: str) -> dict:
    block = {'name': f'toy_{phase}', 'type': 'PairedImageDataset', 'dataroot_gt': str(data / 'gt'),
             'dataroot_lq': str(data / 'lq'), 'io_backend': {'type': 'disk'}}
    if phase == 'train':
        block.update(filename_tmpl='{}', gt_size=32, use_hflip=True, use_rot=False, num_worker_per_gpu=0,
                     batch_size_per_gpu=1)
    return block


def _train_options(data: Path) -> dict:
    return {'name': 'run', 'model_type': 'DiffLI2DModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
            'datasets': {'train': _dataset(data, 'train')}, 'network_prior': PRIOR, 'network_g': NETWORK,
            'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
            'train': {'optim_g': {'type': 'AdamW', 'lr': 1.0e-3}, 'total_iter': 2,
                      'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                      'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
            'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': True}}


def _test_options(data: Path, weights: Path) -> dict:
    return {'name': 'run', 'model_type': 'DiffLI2DModel', 'scale': 1, 'num_gpu': 0,
            'datasets': {'test_1': _dataset(data, 'test')}, 'network_prior': PRIOR, 'network_g': NETWORK,
            'path': {'pretrain_network_g': str(weights), 'strict_load_g': True, 'param_key_g': 'params'},
            'val': {'save_img': True, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0}}}}


@pytest.fixture
def project(tmp_path):
    """A scratch root with the tools, 2 generated pairs, and an earlier run and test of the same name."""
    shutil.copytree(REPO_ROOT / 'tools', tmp_path / 'tools', ignore=shutil.ignore_patterns('__pycache__'))
    write_pairs(tmp_path / 'data', 2)
    for folder, file in (('experiments/run/training_states', '40.state'), ('experiments/run/models', 'net_g_40.pth'),
                         ('tb_logger/run', 'events.out'), ('results/run', 'metrics_toy.csv')):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / file).write_text('an earlier run')
    return tmp_path


def _tree(root: Path) -> dict[str, str]:
    """Every file and folder under the output folders, with the files' digests."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else 'dir'
            for top in ('experiments', 'tb_logger', 'results') for p in sorted((root / top).rglob('*'))}


def _run_tool(project: Path, tool: str, options: dict, *extra: str, monkeypatch) -> int:
    """``python tools/<tool> -opt <options> ...`` in this process; returns its exit code."""
    path = project / 'options.yml'
    path.write_text(yaml.safe_dump(options))
    monkeypatch.setattr(sys, 'argv', [tool, '-opt', str(path), *extra])
    monkeypatch.chdir(project / 'data')
    try:
        runpy.run_path(str(project / 'tools' / tool), run_name='__main__')
    except SystemExit as exit_:
        return exit_.code
    return 0


def _error(capsys) -> str:
    """The tool's error message: the last lines of stderr, from the one starting ``error: ``, no traceback (the log
    lines of the start-up come before it)."""
    err = capsys.readouterr().err
    assert 'Traceback' not in err and err.count('error: ') == 1, err[-3000:]
    return err[err.index('error: '):] if err.startswith('error: ') else err[err.index('\nerror: ') + 1:]


def _other_checkpoint(project: Path) -> Path:
    """net_g weights (and the options record) of a DiffLI2D with num_feat 16, where the options say 8."""
    path = project / 'other.pth'
    net = DiffLI2D(**{**{k: v for k, v in NETWORK.items() if k != 'type'}, 'num_feat': 16})
    torch.save({'params': net.state_dict(), 'config': {'network_g': {**NETWORK, 'num_feat': 16},
                                                      'network_prior': PRIOR}}, path)
    return path


@pytest.mark.parametrize('breakage', ['missing dataset folder', 'typo in a key'])
def test_a_training_start_that_fails_leaves_every_folder_as_it_was(project, monkeypatch, capsys, breakage):
    options = _train_options(project / 'data')
    if breakage == 'missing dataset folder':
        options['datasets']['train']['dataroot_lq'] = str(project / 'data' / 'lq_missing')
        named = 'datasets.train.dataroot_lq'
    else:
        options['train']['total_iters'] = options['train'].pop('total_iter')
        named = 'total_iter'
    before = _tree(project)
    assert _run_tool(project, 'train.py', options, monkeypatch=monkeypatch) == 2
    assert _tree(project) == before
    assert named in _error(capsys)


def test_a_test_whose_weights_do_not_fit_leaves_the_earlier_results_in_place(project, monkeypatch, capsys):
    """The issue's case: tools/test.py renamed results/<name> to ..._archived_<time>, then failed."""
    before = _tree(project)
    options = _test_options(project / 'data', _other_checkpoint(project))
    assert _run_tool(project, 'test.py', options, monkeypatch=monkeypatch) == 2
    assert _tree(project) == before
    err = _error(capsys)
    assert 'other.pth' in err.splitlines()[0] and 'num_feat' in err

    options['datasets']['test_1']['dataroot_gt'] = 'no/such/folder'
    assert _run_tool(project, 'test.py', options, monkeypatch=monkeypatch) == 2
    assert _tree(project) == before
    assert 'datasets.test_1.dataroot_gt' in _error(capsys)


def test_check_prints_the_plan_and_creates_nothing(project, monkeypatch, capsys):
    """Also: a dataset path relative to the project root is found from another working directory, and said so."""
    options = _train_options(Path('data'))
    before = _tree(project)
    assert _run_tool(project, 'train.py', options, '--check', monkeypatch=monkeypatch) == 0
    assert _tree(project) == before
    out = capsys.readouterr().out
    assert f'datasets.train.dataroot_gt: data/gt -> {project / "data" / "gt"}' in out


def test_a_reused_name_is_moved_aside_in_one_line_that_says_how_to_continue_it(project):
    exp, tb = project / 'experiments' / 'run', project / 'tb_logger' / 'run'
    opt = {'name': 'run', 'rank': 0, 'is_train': True, 'root_path': str(project), 'logger': {'use_tb_logger': True},
           'path': {'experiments_root': str(exp), 'models': str(exp / 'models'), 'log': str(exp),
                    'training_states': str(exp / 'training_states'), 'pretrain_network_g': None}}
    (line,) = prepare_folders(opt, resumed=False)
    archived = sorted(p for p in (project / 'experiments').iterdir() if p.name.startswith('run_archived_'))
    assert len(archived) == 1 and (archived[0] / 'training_states' / '40.state').is_file()
    assert str(archived[0]) in line and str(exp) in line and '--auto_resume' in line and str(tb) in line
    assert (exp / 'models').is_dir() and not list((exp / 'models').iterdir())
    assert prepare_folders(opt, resumed=True) == [] and (exp / 'models').is_dir()  # resuming moves nothing


def test_the_run_log_is_written_even_after_a_library_disabled_existing_loggers(tmp_path):
    """logging.config.dictConfig (disable_existing_loggers, the default) in the same process, as some libraries call
    it, disabled basicsr's logger: a run started afterwards wrote an empty log file."""
    logger = get_root_logger()
    logging.config.dictConfig({'version': 1, 'disable_existing_loggers': True})
    assert logger.disabled
    log = StartupLog()
    try:
        log.logger.info('a line of the run')
        log.attach_file(str(tmp_path / 'train.log'))
        assert 'a line of the run' in (tmp_path / 'train.log').read_text(encoding='utf-8')
    finally:
        for handler in [h for h in logger.handlers if getattr(h, 'baseFilename', '') == str(tmp_path / 'train.log')]:
            logger.removeHandler(handler)
            handler.close()


def test_weights_named_relative_to_the_project_are_found_from_another_directory(tmp_path, monkeypatch):
    """tools/train.py writes experiments/ under the project root; a test file naming its weights relative to it
    (experiments/<run>/models/net_g_latest.pth) works from any working directory, as dataset paths do."""
    from difflid.entry.startup import prepare_options

    project, elsewhere = tmp_path / 'project', tmp_path / 'elsewhere'
    write_pairs(project / 'data', 2)
    weights = project / 'experiments' / 'run' / 'models' / 'net_g_latest.pth'
    weights.parent.mkdir(parents=True)
    weights.touch()
    opt_file = project / 'test.yml'
    relative = Path('experiments/run/models/net_g_latest.pth')
    opt_file.write_text(yaml.safe_dump(_test_options(project / 'data', relative)))
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = prepare_options(['-opt', str(opt_file)], project, is_train=False)
    assert run.opt['path']['pretrain_network_g'] == str(weights)
