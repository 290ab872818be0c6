"""The all-in-one protocol files (options/allinone_{3,5}task*.yml, their test files, the t2 sweep) against the
protocols' stated sizes and recipe (PromptIR's options.py, train.py, utils/dataset_utils.py and data_dir/ lists), the
published tables (anchors.md section 7) and the paper's network (options/_base_/difflid_paper.yml). No data needed."""
import math
from decimal import ROUND_HALF_UP, Decimal

import pytest

from difflid.utils.option_schema import load_raw_options, validate_options
from difflid.utils.options import is_training_options
from tests.conftest import REPO_ROOT

OPTIONS = REPO_ROOT / 'options'
PROTOCOLS = ('3task', '5task')
TRAIN_FILES = [f'allinone_{p}{v}' for p in PROTOCOLS for v in ('', '_noprior')]
TEST_FILES = [f'test_{name}' for name in TRAIN_FILES]

# Published training-set sizes (the stand-in sets below have exactly these): BSD400 (400) + WED (4,744) clean images
# (PromptIR's data_dir/noisy/denoise.txt); Rain100L train (200, data_dir/rainy/rainTrain.txt); RESIDE OTS as PromptIR
# lists it (72,135, data_dir/hazy/hazy_outside.txt); GoPro train (2,103 pairs, Nah et al. CVPR'17); LOL-v1 our485.
PUBLISHED_TRAIN_SIZE = {'datasets/denoise_train': 400 + 4744, 'datasets/Rain100L/train.txt': 200,
                        'datasets/OTS/train.txt': 72135, 'datasets/GoPro/train.txt': 2103,
                        'datasets/LOL_v1/train.txt': 485}
# PromptIR's balance (PromptTrainDataset: each sigma's clean list x 3, rain x 120, haze x 1); the 5-task file adds
# GoPro x 11 and LOL x 49 (ours: about Rain100L's 24,000 samples per epoch each, stated in the file).
ENLARGE = {'3task': {'denoise_15': 3, 'denoise_25': 3, 'denoise_50': 3, 'derain': 120, 'dehaze': 1},
           '5task': {'denoise_25': 3, 'derain': 120, 'dehaze': 1, 'deblur': 11, 'lowlight': 49}}
# Samples per epoch, by hand: 3 x 3 x 5,144 + 120 x 200 + 72,135 (PromptIR's _merge_ids); 5-task: see its header.
EPOCH_SAMPLES = {'3task': 142431, '5task': 3 * 5144 + 120 * 200 + 72135 + 11 * 2103 + 49 * 485}
# PromptIR: 120 epochs, batch 8 x 4 GPUs, AdamW lr 2e-4, LinearWarmupCosineAnnealingLR(warmup 15, max 150), L1, 128.
PROMPTIR = {'epochs': 120, 'warmup': 15, 'max_epochs': 150, 'total_batch': 32, 'lr': 2e-4, 'patch': 128}
COLUMNS = {'3task': {'SOTS': ('SOTS_outdoor', None), 'Rain100L': ('Rain100L', None), 'σ15': ('CBSD68_sigma15', 15),
                     'σ25': ('CBSD68_sigma25', 25), 'σ50': ('CBSD68_sigma50', 50)},
           '5task': {'SOTS': ('SOTS_outdoor', None), 'Rain100L': ('Rain100L', None), 'σ25': ('CBSD68_sigma25', 25),
                     'GoPro': ('GoPro', None), 'LOL': ('LOL_v1', None)}}
# The published averages (anchors.md section 7), which each reference row must print and its cells reproduce.
PUBLISHED_AVERAGE = {'3task': {"PromptIR (NeurIPS'23)": '32.06/0.913', "AirNet (CVPR'22)": '31.20/0.910'},
                     '5task': {"AirNet (CVPR'22)": '25.49/0.846', "IDR (CVPR'23)": '28.34/0.893',
                               "PromptIR (NeurIPS'23)": '29.15/0.904', "DFPIR (CVPR'25)": '30.60/0.914',
                               "ABAIR (arXiv'24)": '31.24/0.921'}}


def _load(name: str) -> dict:
    return load_raw_options(OPTIONS / f'{name}.yml')


@pytest.fixture(scope='module')
def loaded() -> dict[str, dict]:
    return {name: _load(name) for name in TRAIN_FILES + TEST_FILES}


@pytest.mark.parametrize('name', TRAIN_FILES + TEST_FILES)
def test_every_file_passes_the_option_schema(loaded, name):
    raw = loaded[name]
    assert is_training_options(raw) == (name in TRAIN_FILES)
    assert validate_options(raw, name in TRAIN_FILES, f'{name}.yml') == []


@pytest.mark.parametrize('protocol', PROTOCOLS)
@pytest.mark.parametrize('kind', ['allinone', 'test_allinone'])
def test_the_baseline_is_the_same_run_without_the_prior(loaded, protocol, kind):
    """The prior file = the paper's network and prior; the no-prior file = the same network_g but cim/hae 'self', no
    prior, ImageRestorationModel; everything else (data, recipe, validation, summary) identical."""
    paper = _load('_base_/difflid_paper')
    prior, plain = loaded[f'{kind}_{protocol}'], loaded[f'{kind}_{protocol}_noprior']
    assert prior['model_type'] == 'DiffLI2DModel' and plain['model_type'] == 'ImageRestorationModel'
    assert prior['network_g'] == paper['network_g']
    assert plain['network_g'] == {**paper['network_g'], 'cim': 'self', 'hae': 'self'}
    assert prior['network_prior'] == paper['network_prior'] and 'network_prior' not in plain
    assert paper['network_prior']['unet'] == 'adm256_uncond' and paper['network_prior']['timesteps'] == [0, 500]
    assert plain['name'] == prior['name'] + '_noprior'
    if kind == 'test_allinone':
        assert prior['name'] == f'DiffLI2D_allinone_{protocol}'  # results/<run>/, where tools/train.py's run is
        for opt in (prior, plain):
            assert opt['path']['pretrain_network_g'] == f"experiments/{opt['name']}/models/net_g_latest.pth"
    skip = {'name', 'model_type', 'network_g', 'network_prior', 'path'}
    assert {k: v for k, v in prior.items() if k not in skip} == {k: v for k, v in plain.items() if k not in skip}
    assert {k: v for k, v in prior['path'].items() if k != 'pretrain_network_g'} == \
        {k: v for k, v in plain['path'].items() if k != 'pretrain_network_g'}


@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_the_training_mix_is_the_protocols(loaded, protocol):
    train = loaded[f'allinone_{protocol}']['datasets']['train']
    assert train['type'] == 'MixedTaskDataset' and train.get('mixing', 'ratios') == 'ratios'
    assert train['total_batch_size'] == PROMPTIR['total_batch'] and 'batch_size_per_gpu' not in train
    assert train.get('dataset_enlarge_ratio', 1) == 1
    members = train['members']
    assert {m['task']: m['enlarge_ratio'] for m in members} == ENLARGE[protocol]
    assert len(members) == len(ENLARGE[protocol])
    for member in members:
        assert member['gt_size'] == PROMPTIR['patch'] and member['use_hflip'] is True
        if member['type'] == 'DegradedImageDataset':  # sigma in the label is the sigma of the noise
            assert member['degradation'] == {'type': 'GaussianNoise', 'sigma': int(member['task'].split('_')[1])}
            assert member['dataroot_gt'] == 'datasets/denoise_train'
        else:
            assert member['type'] == 'PairListDataset' and member['use_rot'] is True
    assert sum(PUBLISHED_TRAIN_SIZE[_source(m)] * m['enlarge_ratio'] for m in members) == EPOCH_SAMPLES[protocol]
    opt = loaded[f'allinone_{protocol}']['train']
    assert opt['optim_g']['type'] == 'AdamW' and opt['optim_g']['lr'] == PROMPTIR['lr']
    assert opt['pixel_opt']['type'] == 'L1Loss'


def _source(member: dict) -> str:
    return member.get('meta_info_file') or member['dataroot_gt']


def _epoch_schedule(text: str) -> dict[str, list[int]]:
    """The ``# epochs: total=.. warmup=.. periods=a,b val_every=.. checkpoint_every=..`` line."""
    lines = [line for line in text.splitlines() if line.startswith('# epochs: ')]
    assert len(lines) == 1, 'a training option file states its schedule in epochs on one "# epochs: ..." line'
    return {key: [int(v) for v in value.split(',')] for key, value in
            (field.split('=') for field in lines[0][len('# epochs: '):].split())}


def _loader_length(train_opt: dict, opt: dict, tmp_path) -> tuple[int, int]:
    """(samples per epoch, len(loader)) of basicsr's training loader over stand-in members of the published sizes."""
    from basicsr.utils import get_root_logger

    from difflid.entry import create_train_val_loaders, translate_options

    members = []
    for index, member in enumerate(train_opt['members']):
        pairs = tmp_path / f'member{index}.txt'
        pairs.write_text('lq/a.png gt/a.png\n' * PUBLISHED_TRAIN_SIZE[_source(member)])  # never read
        members.append({'type': 'PairListDataset', 'task': member['task'], 'enlarge_ratio': member['enlarge_ratio'],
                        'dataroot': str(tmp_path), 'meta_info_file': str(pairs), 'io_backend': {'type': 'disk'},
                        'gt_size': member['gt_size']})
    stand_in = {**train_opt, 'members': members, 'phase': 'train', 'scale': 1, 'num_worker_per_gpu': 0}
    run = translate_options({'datasets': {'train': stand_in}, 'dist': False, 'world_size': 1, 'rank': 0, 'num_gpu': 0,
                             'is_train': True, 'model_type': opt['model_type'], 'manual_seed': 0,
                             'train': {**opt['train'], 'prior_features': 'online'}})
    data = create_train_val_loaders(run, get_root_logger())
    return len(data.loader.dataset), len(data.loader)


@pytest.mark.parametrize('name', TRAIN_FILES)
def test_iterations_are_the_epoch_schedule_on_basicsrs_loader(loaded, tmp_path, name):
    """total_iter, warmup_iter, the cosine periods, val_freq and save_checkpoint_freq = epochs x len(the training
    loader) over stand-in sets of the published sizes; the epochs are PromptIR's (120, warmup 15, cosine to 150)."""
    text, opt = (OPTIONS / f'{name}.yml').read_text(encoding='utf-8'), loaded[name]
    samples, per_epoch = _loader_length(opt['datasets']['train'], opt, tmp_path)
    protocol = name.split('_')[1]
    assert samples == EPOCH_SAMPLES[protocol]
    assert per_epoch == EPOCH_SAMPLES[protocol] // PROMPTIR['total_batch']  # drop_last
    epochs = _epoch_schedule(text)
    assert epochs['total'] == [PROMPTIR['epochs']] and epochs['warmup'] == [PROMPTIR['warmup']]
    assert epochs['periods'] == [PROMPTIR['warmup'], PROMPTIR['max_epochs'] - PROMPTIR['warmup']]
    train = opt['train']
    assert train['total_iter'] == epochs['total'][0] * per_epoch
    assert train['warmup_iter'] == epochs['warmup'][0] * per_epoch
    assert train['scheduler'] == {'type': 'CosineAnnealingRestartLR', 'periods': [p * per_epoch for p in
                                  epochs['periods']], 'restart_weights': [1, 1], 'eta_min': 0}
    assert opt['val']['val_freq'] == epochs['val_every'][0] * per_epoch
    assert opt['logger']['save_checkpoint_freq'] == epochs['checkpoint_every'][0] * per_epoch
    assert f'{per_epoch:,} iterations per epoch' in text and f"{train['total_iter']:,} iterations" in text


@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_the_learning_rate_follows_promptirs_schedule(loaded, protocol):
    """basicsr's scheduler and warmup, as the training loop drives them (scheduler.step() from iteration 2, the
    warmup overriding it before warmup_iter), against PromptIR's closed form at each epoch after the warmup:
    lr(e) = 0.5 lr0 (1 + cos(pi (e - 15) / (150 - 15))), eta_min 0."""
    import torch
    from basicsr.models.lr_scheduler import CosineAnnealingRestartLR

    train = loaded[f'allinone_{protocol}']['train']
    per_epoch = EPOCH_SAMPLES[protocol] // PROMPTIR['total_batch']
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=train['optim_g']['lr'])
    options = {k: v for k, v in train['scheduler'].items() if k != 'type'}
    scheduler = CosineAnnealingRestartLR(optimizer, **options)

    def lr_at(current_iter: int) -> float:  # basicsr's update_learning_rate(current_iter, warmup_iter)
        if current_iter < train['warmup_iter']:
            return train['optim_g']['lr'] * current_iter / train['warmup_iter']
        scheduler.last_epoch = current_iter - 1  # steps from iteration 2 on: last_epoch = current_iter - 1
        return scheduler.get_lr()[0]

    lr0, warmup, max_epochs = PROMPTIR['lr'], PROMPTIR['warmup'], PROMPTIR['max_epochs']

    def promptir(epoch: int) -> float:
        return 0.5 * lr0 * (1 + math.cos(math.pi * (epoch - warmup) / (max_epochs - warmup)))

    for epoch in range(warmup, PROMPTIR['epochs']):
        first, last = lr_at(epoch * per_epoch + 2), lr_at((epoch + 1) * per_epoch)
        assert first == pytest.approx(promptir(epoch), rel=1e-4, abs=1e-9)
        assert promptir(epoch) >= last >= promptir(epoch + 1)  # within the epoch: between PromptIR's two steps
    assert lr_at(per_epoch * warmup // 2) == pytest.approx(lr0 / 2)  # linear warmup from 0
    assert lr_at(train['total_iter']) > 0.1 * lr0  # stopped at 120 of 150 epochs: the cosine never reaches 0


def _cell(text: str) -> tuple[Decimal, Decimal]:
    psnr, ssim = text.split('/')
    return Decimal(psnr), Decimal(ssim)


@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_the_summary_columns_and_the_published_rows(loaded, protocol):
    """Columns: the protocol's five sets (and sigma the noise's); each published row prints the anchored average,
    which the unweighted mean of its cells reproduces (PSNR to the printed 0.01, SSIM within the 0.001 that rounding
    the printed cells can move it)."""
    test = loaded[f'test_allinone_{protocol}']
    summary = test['val']['summary']
    assert summary['metrics'] == ['psnr', 'ssim']
    sets = {d['name']: d for d in test['datasets'].values()}
    assert {label: group for label, group in summary['columns'].items()} == \
        {label: name for label, (name, _) in COLUMNS[protocol].items()}
    for name, sigma in COLUMNS[protocol].values():
        if sigma is not None:
            assert sets[name]['degradation'] == {'type': 'GaussianNoise', 'sigma': sigma} and sets[name]['seed'] == 0
            assert sets[name]['dataroot_gt'] == 'datasets/CBSD68' and sets[name]['task'] == f'denoise_{sigma}'
    extra = set(sets) - set(summary['columns'].values())
    assert extra == ({f'Urban100_sigma{s}' for s in (15, 25, 50)} if protocol == '3task' else set())
    train = loaded[f'allinone_{protocol}']
    assert train['val']['summary']['columns'] == summary['columns']  # validation prints the same table
    assert {d['name'] for p, d in train['datasets'].items() if p != 'train'} == set(summary['columns'].values())
    references = summary['references']
    for method, average in PUBLISHED_AVERAGE[protocol].items():
        assert references[method]['average'] == average
    for method, row in references.items():
        assert all(isinstance(v, str) for v in row.values()), method  # verbatim strings, not numbers
        cells = [_cell(row[label]) for label in summary['columns'] if label in row]
        if not cells:
            continue
        assert len(cells) == len(summary['columns']), method
        psnr, ssim = _cell(row['average'])
        mean_psnr = sum(c[0] for c in cells) / len(cells)
        assert mean_psnr.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP) == psnr, method
        assert abs(sum(c[1] for c in cells) / len(cells) - ssim) <= Decimal('0.0011'), method


def test_promptirs_3task_average_is_the_mean_of_its_five_columns(loaded):
    row = loaded['test_allinone_3task']['val']['summary']['references']["PromptIR (NeurIPS'23)"]
    assert [row[c] for c in ('SOTS', 'Rain100L', 'σ15', 'σ25', 'σ50')] == \
        ['30.58/0.974', '36.37/0.972', '33.98/0.933', '31.31/0.888', '28.06/0.799']  # anchors.md section 7
    assert round((30.58 + 36.37 + 33.98 + 31.31 + 28.06) / 5, 2) == 32.06 and row['average'] == '32.06/0.913'


def test_the_t2_sweep_tests_every_task_at_every_t2():
    from difflid.analysis.sweep import load_sweep

    sweep = load_sweep(OPTIONS / 'sweeps' / 'allinone_3task_t2.yml', REPO_ROOT)
    assert sweep.warnings == [] and sweep.grid_name == 't2'
    assert [run.x for run in sweep.runs] == [100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 999.0]
    base = _load('allinone_3task')
    for run in sweep.runs:
        assert run.train_opt['network_prior']['timesteps'] == [0, int(run.x)]
        assert run.test_opt['network_prior'] == run.train_opt['network_prior']
        assert {k: v for k, v in run.train_opt.items() if k not in ('name', 'network_prior')} == \
            {k: v for k, v in base.items() if k not in ('name', 'network_prior')}
        assert set(COLUMNS['3task'][c][0] for c in COLUMNS['3task']) <= set(run.test_sets)  # one column per task
    assert next(r for r in sweep.runs if r.x == 500).name == 'DiffLI2D_allinone_3task'  # the main run, shared

