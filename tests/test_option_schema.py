"""Option files checked before anything starts (difflid.utils.option_schema, tools/sweep.py --check, tools' errors)."""
import copy
import runpy
import sys
from pathlib import Path

import pytest
import yaml
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils.data import Dataset

from difflid.analysis.probe import load_probe_options
from difflid.analysis.sweep import load_sweep
from difflid.utils.errors import OptionError
from difflid.utils.option_schema import load_raw_options, plan_summary, validate_dataset, validate_options
from difflid.utils.options import is_training_options
from tests.conftest import REPO_ROOT, write_pairs

QUICKSTART = REPO_ROOT / 'options' / 'quickstart.yml'
# Option files with a key their model never reads, found by this check; the fix belongs in the files.
KNOWN_PROBLEMS: dict[str, str] = {}


def _error(raw: dict, is_train: bool = True) -> str:
    with pytest.raises(OptionError) as err:
        validate_options(raw, is_train, 'x.yml')
    return str(err.value)


@pytest.fixture(scope='module')
def quickstart() -> dict:
    return load_raw_options(QUICKSTART)


@pytest.mark.parametrize('section, change, first_line', [
    ('top level', lambda o: o.__setitem__('trian', o.pop('train')),
     'x.yml: trian: unknown key (did you mean `train`?)'),
    ('dataset', lambda o: o['datasets']['train'].__setitem__('use_hfilp', True),
     'x.yml: datasets.train.use_hfilp: unknown key (did you mean `use_hflip`?)'),
    ('val', lambda o: o['val'].__setitem__('val_frequency', o['val'].pop('val_freq')),
     'x.yml: val.val_frequency: unknown key (did you mean `val_freq`?)'),
    ('network', lambda o: o['network_g'].__setitem__('num_feet', 8),
     'x.yml: network_g.num_feet: unknown key (did you mean `num_feat`?)'),
    ('prior', lambda o: o['network_prior'].__setitem__('timestep', [0, 5]),
     'x.yml: network_prior.timestep: unknown key (did you mean `timesteps`?)'),
    ('logger', lambda o: o['logger'].__setitem__('print_frq', 1),
     'x.yml: logger.print_frq: unknown key (did you mean `print_freq`?)'),
    ('path', lambda o: o['path'].__setitem__('pretrain_network', 'w.pth'),
     'x.yml: path.pretrain_network: unknown key (did you mean `pretrain_network_g`?)'),
    ('loss', lambda o: o['train']['pixel_opt'].__setitem__('loss_weigth', 1.0),
     'x.yml: train.pixel_opt.loss_weigth: unknown key (did you mean `loss_weight`?)'),
    ('metric', lambda o: o['val']['metrics']['psnr'].__setitem__('test_y_chanel', True),
     'x.yml: val.metrics.psnr.test_y_chanel: unknown key (did you mean `test_y_channel`?)'),
    ('dataset phase', lambda o: o['datasets'].__setitem__('vall', o['datasets'].pop('val')),
     'x.yml: datasets.vall: unknown key (did you mean `val`?)'),
    ('registered name', lambda o: o.__setitem__('model_type', 'DiffLI2DModle'),
     "x.yml: model_type: 'DiffLI2DModle' is not one of 16 registered names (did you mean `DiffLI2DModel`?)"),
    ('dist_params', lambda o: o.__setitem__('dist_params', {'backend': 'nccl', 'prot': 29500}),
     'x.yml: dist_params.prot: unknown key (did you mean `port`?)'),
])
def test_a_misspelt_key_of_any_section_is_one_error_naming_it_and_the_closest_key(quickstart, section, change,
                                                                                 first_line):
    raw = copy.deepcopy(quickstart)
    change(raw)
    assert _error(raw).splitlines()[0] == first_line


def test_missing_required_keys_say_why_and_problems_are_counted(quickstart):
    raw = copy.deepcopy(quickstart)
    del raw['datasets']['train']['gt_size'], raw['datasets']['train']['total_batch_size']
    del raw['val']['val_freq'], raw['val']['save_img']
    raw['train']['optim_g']['lr'] = '1e-4'  # PyYAML's reading of 1e-4
    assert _error(raw).splitlines() == [
        'x.yml: datasets.train: missing the batch: total_batch_size (one optimizer step) or batch_size_per_gpu',
        '  datasets.train.gt_size: missing (the training crop size)',
        "  train.optim_g.lr: expected number, got '1e-4' (YAML reads 1e-4 as a string: write 1.0e-4)",
        '  val.val_freq: missing (training validates every val_freq iterations when there is a val block)',
        '  val.save_img: missing (read at every validation)',
        '(5 problems in x.yml)']
    test = {k: copy.deepcopy(v) for k, v in quickstart.items() if k not in ('train', 'logger', 'val')}
    test['datasets'] = {'test_1': quickstart['datasets']['val']}
    assert validate_options(test, False, 'x.yml') == []  # a test run needs no val block, val_freq or gt_size
    test['datasets'] = {'train': quickstart['datasets']['train']}
    assert _error(test, False).startswith('x.yml: datasets.train: unknown key')
    del raw['train']
    assert _error(raw).splitlines()[-2] == '  train: missing (training needs optim_g, scheduler, total_iter)'


def test_keys_depend_on_the_model_and_dataset_class(quickstart):
    raw = copy.deepcopy(quickstart)
    raw['model_type'] = 'ImageRestorationModel'  # no prior: network_prior and fresh_prior_noise are not read
    assert _error(raw).splitlines()[0] == 'x.yml: network_prior: unknown key (did you mean `network_g`?)'
    paired = copy.deepcopy(quickstart)
    paired['datasets']['train'].update(type='PairedImageDataset', dataroot_gt='gt', dataroot_lq='lq')
    del paired['scale']
    lines = _error(paired).splitlines()
    # SyntheticHazeDataset's keys are not PairedImageDataset's
    assert lines[0] == 'x.yml: datasets.train.dataroot: unknown key (did you mean `dataroot_lq`?)'
    assert '  scale: missing (datasets.train is a PairedImageDataset, which reads it)' in lines


def test_an_undeclared_dataset_type_is_a_warning(quickstart, monkeypatch):
    class ThirdPartyDataset(Dataset):
        def __init__(self, opt: dict) -> None:
            self.opt = opt

    monkeypatch.setitem(DATASET_REGISTRY._obj_map, 'ThirdPartyDataset', ThirdPartyDataset)
    raw = copy.deepcopy(quickstart)
    raw['datasets']['val'] = {'name': 'v', 'type': 'ThirdPartyDataset', 'anything': 1}
    assert validate_options(raw, True, 'x.yml') == [
        'x.yml: datasets.val: ThirdPartyDataset declares no option keys (OPTION_KEYS), so its keys are not checked']
    raw['datasets']['val']['type'] = 'ThirdPartyDatset'  # not registered at all: basicsr could not build it
    assert 'did you mean `ThirdPartyDataset`?' in _error(raw)


def test_force_yml_is_parsed_as_basicsr_does_and_its_keys_are_checked(tmp_path):
    raw = load_raw_options(QUICKSTART, ['train:total_iter=5', 'network_prior:timesteps=[0, 100]',
                                        'train:optim_g:lr=!!float 2e-4', 'val:save_img=true'])
    assert raw['train']['total_iter'] == 5 and raw['network_prior']['timesteps'] == [0, 100]
    assert raw['train']['optim_g']['lr'] == 2e-4 and raw['val']['save_img'] is True
    assert 'is_train' not in raw and 'experiments_root' not in raw['path']  # nothing derived
    with pytest.raises(OptionError) as err:
        load_raw_options(QUICKSTART, ['train:total_iters=5'])
    assert str(err.value) == ('--force_yml train:total_iters=5: train.total_iters: unknown key (did you mean '
                              '`total_iter`?)')
    with pytest.raises(OptionError, match=r'^--force_yml trian:total_iter=5: trian is not in .*quickstart.yml '
                                          r'\(did you mean `train`\?\)'):
        load_raw_options(QUICKSTART, ['trian:total_iter=5'])
    with pytest.raises(OptionError, match='expected KEY:KEY=VALUE'):
        load_raw_options(QUICKSTART, ['train:total_iter'])


def test_a_mapping_over_a_base_string_names_the_key_and_the_delete_fix(tmp_path):
    (tmp_path / 'base.yml').write_text('network_prior: {type: HSpaceExtractor, unet: adm_tiny}\n')
    child = tmp_path / 'child.yml'
    child.write_text('_base_: base.yml\nname: x\nnetwork_prior:\n  unet: {preset: adm_tiny, num_channels: 32}\n')
    with pytest.raises(OptionError) as err:
        load_raw_options(child)
    assert str(err.value) == (f"{child}: network_prior.unet is a mapping here but str 'adm_tiny' in its _base_ file "
                              'base.yml: mmengine cannot merge the two; add `_delete_: true` inside network_prior.unet '
                              'to replace the base value')
    child.write_text('_base_: base.yml\nname: x\nnetwork_prior:\n  unet: {_delete_: true, preset: adm_tiny}\n')
    assert load_raw_options(child)['network_prior']['unet'] == {'preset': 'adm_tiny'}
    child.write_text('name: [x\n')
    with pytest.raises(OptionError, match=r'child.yml: not valid YAML \(line 2, column 1\)'):
        load_raw_options(child)


def _option_files() -> list[Path]:
    files = sorted((REPO_ROOT / 'options').rglob('*.yml'))
    return [f for f in files if '_base_' not in f.parts and 'sweeps' not in f.parts]


@pytest.mark.parametrize('path', _option_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_shipped_option_file_passes(path):
    source = str(path.relative_to(REPO_ROOT))
    if path.name.startswith('probe_'):  # tools/hspace_probe.py's own format; its dataset block is checked here
        opt = load_probe_options(path)
        assert validate_dataset(opt['datasets']['probe'], 'datasets.probe', source) == []
        return
    raw = load_raw_options(path)
    if source in KNOWN_PROBLEMS:
        assert KNOWN_PROBLEMS[source] in _error(raw), 'fixed? then drop it from KNOWN_PROBLEMS'
        return
    assert validate_options(raw, is_training_options(raw), source) == []
    assert raw['name'] in plan_summary(raw, is_training_options(raw))


@pytest.mark.parametrize('path', sorted((REPO_ROOT / 'options' / 'sweeps').glob('*.yml')), ids=lambda p: p.stem)
def test_every_sweep_variant_passes(path):
    assert load_sweep(path, REPO_ROOT).warnings == []  # load_sweep checks every run's training and test options


def test_plan_summary_says_what_will_run(quickstart):
    plan = plan_summary(quickstart, True)
    assert plan.splitlines()[0] == 'training run quickstart: model DiffLI2DModel'
    # 5 photos x 8 hazy versions = 40 pairs, enlarged 10 times, batch 8 -> 50 iterations per epoch
    assert 'datasets.train: quickstart_train (SyntheticHazeDataset, 40 images' in plan
    assert 'train: 500 iterations, 50 iterations per epoch' in plan and 'experiments/quickstart/' in plan


def test_an_optimizer_the_model_cannot_build_is_refused(quickstart):
    raw = copy.deepcopy(quickstart)
    raw['train']['optim_g'] = {'type': 'Adadelta', 'lr': 1.0}
    assert _error(raw).startswith("x.yml: train.optim_g.type: 'Adadelta' is not one of Adam, AdamW, Adamax")


# --- tools ------------------------------------------------------------------------------------------------------
def _sweep_project(tmp_path: Path) -> Path:
    """tools/ and options/_base_ with a tiny training file over generated pairs and a sweep of two variants."""
    import shutil

    shutil.copytree(REPO_ROOT / 'tools', tmp_path / 'tools')
    shutil.copytree(REPO_ROOT / 'options' / '_base_', tmp_path / 'options' / '_base_')
    gt, lq = write_pairs(tmp_path / 'data', 2, size=(32, 32))
    train = yaml.safe_load((REPO_ROOT / 'options' / 'quickstart.yml').read_text())
    train.update(name='tiny', _base_='_base_/quickstart.yml')
    val = {'name': 'toy_val', 'type': 'PairedImageDataset', 'dataroot_gt': str(gt), 'dataroot_lq': str(lq),
           'io_backend': {'type': 'disk'}}
    train['datasets'] = {'train': {**val, 'name': 'toy', 'gt_size': 32, 'use_hflip': False, 'use_rot': False,
                                   'num_worker_per_gpu': 0, 'batch_size_per_gpu': 1}, 'val': val}
    (tmp_path / 'options' / 'tiny.yml').write_text(yaml.safe_dump(train))
    sweeps = tmp_path / 'options' / 'sweeps'
    sweeps.mkdir()
    (sweeps / 'two.yml').write_text('base: ../tiny.yml\nvariants:\n  full: {}\n  typo: {network_g.cim: self}\n')
    return tmp_path


def _run_tool(tool: Path, monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, 'argv', [tool.name, *args])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(tool), run_name='__main__')
        raise SystemExit(0)
    return done.value.code


def test_sweep_checks_every_variant_before_the_first_run(tmp_path, monkeypatch, capsys):
    project = _sweep_project(tmp_path)
    monkeypatch.chdir(project)
    tool = project / 'tools' / 'sweep.py'
    assert _run_tool(tool, monkeypatch, 'options/sweeps/two.yml', '--check') == 0
    out = capsys.readouterr().out
    assert '[2/2] two_typo' in out and 'datasets.val: toy_val (PairedImageDataset, 2 images' in out
    assert 'nothing written' in out and not (project / 'experiments').exists()
    # a variant's typo stops the sweep before its first run trains
    (project / 'options' / 'sweeps' / 'two.yml').write_text('base: ../tiny.yml\nvariants:\n  full: {}\n'
                                                            '  typo: {val.val_freq: 1, val.pbar: yes}\n'
                                                            '  late: {val.save_img: 0}\n')
    assert _run_tool(tool, monkeypatch, 'options/sweeps/two.yml') == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'variant late, training options): val.save_img: expected boolean, got 0' \
        in err.splitlines()[0] and 'Traceback' not in err
    assert not (project / 'experiments').exists()
    # a missing validation image is found by --check, before anything trains
    (project / 'options' / 'sweeps' / 'two.yml').write_text('base: ../tiny.yml\nvariants:\n  full: {}\n')
    (project / 'data' / 'lq' / '001.png').unlink()
    assert _run_tool(tool, monkeypatch, 'options/sweeps/two.yml', '--check') == 2
    assert 'datasets.train' in capsys.readouterr().err


@pytest.mark.parametrize('tool, args, message', [
    ('export_prior.py', ['missing.pth', 'out.pth'], 'error: missing.pth: No such file or directory'),
    ('compare_results.py', ['nowhere'], 'error: '),
    ('sample_prior.py', ['-opt', 'missing.yml'], 'error: '),
])
def test_tools_print_a_user_error_without_a_traceback(tmp_path, monkeypatch, capsys, tool, args, message):
    monkeypatch.chdir(tmp_path)
    assert _run_tool(REPO_ROOT / 'tools' / tool, monkeypatch, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and 'Traceback' not in err and len(err.strip().splitlines()) <= 11
