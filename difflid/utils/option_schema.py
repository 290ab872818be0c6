"""Option files checked before anything starts: every key basicsr 1.4.2 and difflid read, as one JSON schema.

basicsr reads keys with ``opt['x']`` and ``opt.get('x', default)`` wherever it needs them, so a misspelt key
(``trian:``, ``use_hfilp``, ``val_frequency``) is silently ignored and a missing one fails hours in. Here the whole
option tree is checked at start-up, before any folder exists, with a JSON schema (the ``jsonschema`` library) built
from:

- written entries for what basicsr reads itself: the top level, ``path``, ``logger``, ``dist_params``, the
  loader keys of every dataset block, ``train`` and ``val`` of ``SRModel``, and the keys of its
  ``PairedImageDataset`` and ``SingleImageDataset``;
- the registries: network and loss blocks take ``type`` plus their class's constructor keys (``option_names``; a
  plain ``**kwargs`` accepts anything), metric blocks their function's keyword arguments, optimizers and schedulers
  their class's;
- the ``OPTION_KEYS`` (a ``DatasetKeys``) each difflid dataset declares, and ``MODEL_KEYS`` below for the model
  classes (looked up along the model's MRO, so a subclass inherits its base's keys).

A registered dataset type that declares no keys (another plugin's) is a warning, not an error; so is a model class
this module does not know (its ``train``/``val`` then accept unknown keys).
"""
import dataclasses
import difflib
import inspect
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

from difflid.utils.errors import OptionError
from difflid.utils.options import option_names, resolve_option_file

__all__ = ['LOADER_KEYS', 'MODEL_KEYS', 'OPTIMIZERS', 'PAIRED_IMAGE_KEYS', 'DatasetKeys', 'dataset_keys',
           'load_raw_options', 'options_schema', 'plan_summary', 'validate_dataset', 'validate_options']

# JSON schema fragments of option values
STR = {'type': 'string'}
STR_OR_NONE = {'type': ['string', 'null']}
INT = {'type': 'integer'}
INT_OR_NONE = {'type': ['integer', 'null']}
NUM = {'type': 'number'}
NUM_OR_NONE = {'type': ['number', 'null']}
BOOL = {'type': 'boolean'}
LIST = {'type': 'array'}
ANY: dict = {}
IO_BACKEND = {'type': 'object', 'required': ['type'],
              'properties': {'type': {'enum': ['disk', 'lmdb', 'memcached']}}}

# RestorationModel.get_optimizer's optimizers (torch.optim); basicsr's own SRModel knows only Adam
OPTIMIZERS = ('Adam', 'AdamW', 'Adamax', 'SGD', 'RMSprop')
_SCHEDULERS = {'MultiStepLR': 'MultiStepRestartLR', 'MultiStepRestartLR': 'MultiStepRestartLR',
               'CosineAnnealingRestartLR': 'CosineAnnealingRestartLR'}
_IMAGE_ARGS = {'img', 'img2', 'imgs', 'imgs2'}  # a metric function's inputs, not options


@dataclasses.dataclass(frozen=True)
class DatasetKeys:
    """The option keys a dataset class reads from its ``opt`` dict (besides the loader's ``LOADER_KEYS``).

    Args:
        properties: Each key and a JSON schema of its value (``{}``: any value).
        required: Keys it cannot do without.
        required_for_training: Keys it needs in the ``train`` phase (crop size, augmentation flags).
        top_level: Top-level keys it reads through the copy basicsr makes (``scale``).
        generates_data: It writes or holds its own images: there are no files to check before the run.
        member_blocks: The key whose list holds whole dataset blocks (a mix of datasets): each is checked as a
            dataset block, plus the class's ``MEMBER_KEYS``, and its files as any dataset's.
    """

    properties: dict[str, dict]
    required: tuple[str, ...] = ()
    required_for_training: tuple[str, ...] = ()
    top_level: tuple[str, ...] = ()
    generates_data: bool = False
    member_blocks: str | None = None

    def extended(self, properties: dict[str, dict] | None = None, drop: Iterable[str] = (),
                 **changes: Any) -> 'DatasetKeys':
        """A copy with more (or fewer) keys: a subclass's declaration from its base's."""
        props = {k: v for k, v in {**self.properties, **(properties or {})}.items() if k not in set(drop)}
        base = {'required': tuple(k for k in self.required if k in props),
                'required_for_training': tuple(k for k in self.required_for_training if k in props)}
        return dataclasses.replace(self, properties=props, **{**base, **changes})


# basicsr's build_dataloader / EnlargedSampler, and difflid's total_batch_size (tools/train.py splits it)
LOADER_KEYS = {
    'name': STR, 'type': STR,
    'phase': STR, 'scale': INT,  # basicsr writes both into every block; harmless when given
    'batch_size_per_gpu': INT, 'total_batch_size': INT, 'num_worker_per_gpu': INT, 'dataset_enlarge_ratio': NUM,
    'prefetch_mode': {'enum': [None, 'cpu', 'cuda']}, 'num_prefetch_queue': INT, 'pin_memory': BOOL,
    'persistent_workers': BOOL,
}

# basicsr.data.paired_image_dataset.PairedImageDataset (1.4.2)
PAIRED_IMAGE_KEYS = DatasetKeys(
    {'dataroot_gt': STR, 'dataroot_lq': STR, 'io_backend': IO_BACKEND, 'meta_info_file': STR_OR_NONE,
     'filename_tmpl': STR, 'mean': LIST, 'std': LIST, 'color': {'enum': ['y']}, 'gt_size': INT, 'use_hflip': BOOL,
     'use_rot': BOOL},
    required=('dataroot_gt', 'dataroot_lq', 'io_backend'),
    required_for_training=('gt_size', 'use_hflip', 'use_rot'),
    top_level=('scale',))
_BASICSR_DATASETS = {
    'PairedImageDataset': PAIRED_IMAGE_KEYS,
    'SingleImageDataset': DatasetKeys({'dataroot_lq': STR, 'io_backend': IO_BACKEND, 'meta_info_file': STR,
                                       'mean': LIST, 'std': LIST, 'color': {'enum': ['y']}},
                                      required=('dataroot_lq', 'io_backend')),
}

# val.summary: the all-in-one table over the evaluated sets and tasks (difflid.reports.summary_report)
SUMMARY = {'type': 'object', 'additionalProperties': False, 'properties': {
    'metrics': {'type': 'array', 'items': STR, 'minItems': 1},
    'columns': {'type': 'object', 'additionalProperties': STR},
    'references': {'type': 'object', 'additionalProperties': {'type': 'object', 'additionalProperties': STR}}}}

# The model classes' keys, by class name along the MRO: 'top' (top-level blocks), 'train', 'val', 'network_g'
# (keys beside the arch's own), 'required' (top-level) and 'drop' ('section.key' a subclass no longer reads).
# Filled with typed-block placeholders: 'arch', 'loss', 'metrics', 'optim', 'scheduler'.
MODEL_KEYS: dict[str, dict[str, Any]] = {
    'BaseModel': {'top': {'network_g': 'arch', 'find_unused_parameters': BOOL}},
    'SRModel': {
        'required': ('network_g',),
        'train': {'optim_g': 'optim', 'scheduler': 'scheduler', 'total_iter': NUM, 'warmup_iter': NUM,
                  'ema_decay': NUM, 'pixel_opt': 'loss', 'perceptual_opt': 'loss'},
        'val': {'val_freq': NUM, 'save_img': BOOL, 'suffix': STR_OR_NONE, 'pbar': BOOL, 'metrics': 'metrics'},
    },
    'RestorationModel': {'train': {'diff_opt': 'loss'},
                         'val': {'input_metrics': BOOL, 'num_sheets': {'type': 'integer', 'minimum': 0},
                                 'summary': SUMMARY}},
    'ImageRestorationModel': {},
    'DiffLI2DModel': {
        'required': ('network_prior',),
        'top': {'network_prior': 'arch'},
        'train': {'fresh_prior_noise': BOOL, 'prior_features': {'enum': ['online', 'precomputed']},
                  'prior_draws': {'type': 'integer', 'minimum': 1}, 'prior_store': STR_OR_NONE,
                  'prior_store_dtype': {'enum': ['fp16', 'bf16', 'fp32']}},
        'val': {'tile': {'type': ['integer', 'null'], 'minimum': 0}, 'tile_overlap': {'type': 'integer', 'minimum': 0},
                'cache_prior': BOOL, 'prior_cache_mb': {'type': 'number', 'minimum': 0}},
    },
    'DiffusionPriorModel': {
        'network_g': {'preset': STR, 'noise_schedule': {'enum': ['linear', 'cosine']}, 'num_diffusion_steps': INT},
        'train': {'eps_opt': 'loss'},
        'val': {'timesteps': {'type': 'array', 'items': INT}, 'seed': INT, 'num_samples': INT, 'sample_steps': INT,
                'sample_size': INT},
        # its own init_training_settings and nondist_validation do not read these
        'drop': ('train.pixel_opt', 'train.perceptual_opt', 'train.diff_opt', 'val.metrics', 'val.suffix',
                 'val.pbar', 'val.input_metrics', 'val.num_sheets', 'val.summary'),
    },
}
_WHY = {  # said after "missing" for a required key
    'name': 'the run is experiments/<name> or results/<name>',
    'model_type': 'a registered model, e.g. DiffLI2DModel',
    'datasets': 'the train / val / test sets',
    'train': 'training needs optim_g, scheduler, total_iter',
    'logger': 'training needs print_freq, save_checkpoint_freq, use_tb_logger',
    'total_iter': 'the length of the run',
    'optim_g': 'the optimizer, e.g. {type: Adam, lr: 2.0e-4}',
    'scheduler': 'e.g. {type: MultiStepLR, milestones: [1000], gamma: 0.5}',
    'val_freq': 'training validates every val_freq iterations when there is a val block',
    'save_img': 'read at every validation',
    'gt_size': 'the training crop size',
    'use_hflip': 'PairedImageDataset reads it in training', 'use_rot': 'PairedImageDataset reads it in training',
    'num_worker_per_gpu': 'the training loader reads it (0: no worker processes)',
    'print_freq': 'the log interval in iterations', 'save_checkpoint_freq': 'the checkpoint interval in iterations',
    'use_tb_logger': 'true or false',
}
_FLOAT_TEXT = re.compile(r'[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+')


def dataset_keys(cls: type) -> DatasetKeys | None:
    """What a dataset class declares (``OPTION_KEYS`` in its own body, not inherited: a subclass may read more), or
    the written entry of a basicsr dataset; None when nothing is known."""
    declared = cls.__dict__.get('OPTION_KEYS')
    if isinstance(declared, DatasetKeys):
        return declared
    return _BASICSR_DATASETS.get(cls.__name__) if cls.__module__.startswith('basicsr.') else None


# --- the schema -------------------------------------------------------------------------------------------------
def _value_schema(param: inspect.Parameter) -> dict:
    """A parameter's value type where it is plain: annotated (or, unannotated, defaulting to) a bool or a number.
    Anything wider (``int | None``, ``float | Tensor``, tuples) is left unchecked."""
    annotation = param.annotation
    if annotation is param.empty:
        annotation = type(param.default) if isinstance(param.default, bool | int | float) else None
    if annotation in (bool, 'bool'):
        return BOOL
    if annotation in (int, float, 'int', 'float'):
        return NUM
    return ANY


def _signature_keys(fn: Callable, skip: set[str]) -> tuple[dict[str, dict], list[str]]:
    """(keys, required keys) of a callable's named parameters, leaving out ``skip`` and ``*args``/``**kwargs``."""
    props, required = {}, []
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        props[p.name] = _value_schema(p)
        if p.default is p.empty:
            required.append(p.name)
    return props, required


def _typed_block(choices: dict[str, tuple[dict[str, dict] | None, list[str]]], extra: dict | None = None) -> dict:
    """``{type: <one of choices>, ...that choice's keys}``; a choice whose keys are None accepts any key."""
    branches = []
    for name, (props, required) in sorted(choices.items()):
        if props is None:
            continue
        branches.append({'if': {'properties': {'type': {'const': name}}, 'required': ['type']},
                         'then': {'properties': {'type': ANY, **props, **(extra or {})},
                                  'additionalProperties': False, 'required': required}})
    return {'type': 'object', 'required': ['type'], 'properties': {'type': {'enum': sorted(choices)}},
            'allOf': branches}


def _registered(registry) -> dict:
    """A registry's classes by every name it answers to: basicsr's ``Registry.get`` also finds ``X_basicsr``
    (basicsr's own copy of a name that another package registered first) under ``X``."""
    names = dict(registry._obj_map)
    for name, obj in registry._obj_map.items():
        if name.endswith('_basicsr'):
            names.setdefault(name.removesuffix('_basicsr'), obj)
    return names


def _registry_choices(registry) -> dict[str, tuple[dict[str, dict] | None, list[str]]]:
    """Each registered class's keys: ``option_names`` (a declared ``**options`` included), typed where plain."""
    out = {}
    for name, cls in _registered(registry).items():
        try:
            names = option_names(cls)
            named, required = _signature_keys(cls, {'self'})
        except (TypeError, ValueError):  # no inspectable signature: accept any key
            names, named, required = None, {}, []
        out[name] = (None if names is None else {k: named.get(k, ANY) for k in names}, required)
    return out


def _metric_choices() -> dict[str, tuple[dict[str, dict], list[str]]]:
    """Metric functions take the images and then their options; basicsr's swallow the rest in **kwargs, which the
    metric options must not rely on. ``better`` (higher/lower) is difflid's, read by the reports."""
    out = {}
    for name, fn in _registered(METRIC_REGISTRY).items():
        props, required = _signature_keys(fn, _IMAGE_ARGS)
        out[name] = ({**props, 'better': {'enum': ['higher', 'lower']}}, required)
    return out


def _optimizer_choices() -> dict[str, tuple[dict[str, dict], list[str]]]:
    import torch

    out = {}
    for name in OPTIMIZERS:
        props, _ = _signature_keys(getattr(torch.optim, name), {'self', 'params'})
        out[name] = ({**props, 'lr': NUM, 'weight_decay': NUM, 'eps': NUM}, ['lr'])
    return out


def _scheduler_choices() -> dict[str, tuple[dict[str, dict], list[str]]]:
    from basicsr.models import lr_scheduler

    return {name: _signature_keys(getattr(lr_scheduler, cls), {'self', 'optimizer'}) for name, cls in
            _SCHEDULERS.items()}


def _dataset_block(training: bool, member_keys: dict[str, dict] | None = None) -> dict:
    """A dataset block: loader keys, and the keys its type declares (types that declare none accept any key).
    With ``member_keys``: a member of a mix (no loader settings, no name needed, plus the mix's member keys)."""
    choices = {}
    for name, cls in _registered(DATASET_REGISTRY).items():
        keys = dataset_keys(cls)
        if keys is None:
            choices[name] = (None, [])
        else:
            required = [*keys.required, *(keys.required_for_training if training else ())]
            choices[name] = ({**LOADER_KEYS, **keys.properties, **(member_keys or {})},
                             required if member_keys is not None else ['name', *required])
    block = _typed_block(choices)
    block['properties'].update({k: v for k, v in LOADER_KEYS.items() if k != 'type'})
    if member_keys is not None:
        return block
    block['required'] = ['name', 'type']
    if training:
        block['required'].append('num_worker_per_gpu')
        block['anyOf'] = [{'required': ['batch_size_per_gpu']}, {'required': ['total_batch_size']}]
        block['description'] = 'missing the batch: total_batch_size (one optimizer step) or batch_size_per_gpu'
    return block


def _model_entries(model_type: Any) -> tuple[list[dict], bool]:
    """The ``MODEL_KEYS`` entries along the model class's MRO (base first), and whether all of it is known."""
    cls = _registered(MODEL_REGISTRY).get(model_type) if isinstance(model_type, str) else None
    if cls is None:  # an unknown model_type is reported by itself: meanwhile any model's keys are accepted
        entries = [{k: v for k, v in entry.items() if k not in ('drop', 'required')} for entry in MODEL_KEYS.values()]
        return entries, True
    mro = [c.__name__ for c in reversed(cls.__mro__) if c.__name__ not in ('object', 'Module')]
    return [MODEL_KEYS[n] for n in mro if n in MODEL_KEYS], all(n in MODEL_KEYS for n in mro)


def options_schema(is_train: bool | None, model_type: str | None = 'DiffLI2DModel') -> dict:
    """The JSON schema of an option file for ``model_type`` (its train/val keys depend on it); ``is_train`` None
    leaves out what is required (the check of ``--force_yml`` keys)."""
    blocks = {'arch': _typed_block(_registry_choices(ARCH_REGISTRY)),
              'loss': _typed_block(_registry_choices(LOSS_REGISTRY)),
              'optim': _typed_block(_optimizer_choices()),
              'scheduler': _typed_block(_scheduler_choices()),
              'metrics': {'type': 'object', 'additionalProperties': _typed_block(_metric_choices())}}
    entries, known = _model_entries(model_type)
    sections: dict[str, dict] = {'top': {}, 'train': {}, 'val': {}, 'network_g': {}}
    required_top: list[str] = []
    for entry in entries:
        for section in sections:
            sections[section].update(entry.get(section, {}))
        required_top += entry.get('required', ())
        for dotted in entry.get('drop', ()):
            section, key = dotted.split('.')
            sections[section].pop(key, None)
    typed = {k: {s: blocks.get(v, v) if isinstance(v, str) else v for s, v in section.items()}
             for k, section in sections.items()}
    if typed['network_g'] and 'network_g' in typed['top']:
        typed['top']['network_g'] = _typed_block(_registry_choices(ARCH_REGISTRY), extra=typed['network_g'])
    required = is_train is not None
    train = {'type': 'object', 'properties': typed['train'], 'additionalProperties': not known,
             'required': ['total_iter', 'optim_g', 'scheduler'] if required and 'optim_g' in typed['train'] else []}
    val = {'type': 'object', 'properties': typed['val'], 'additionalProperties': not known,
           'required': ['val_freq', 'save_img'] if is_train else []}
    # basicsr's phases: the part of the name before the first '_'; training takes train and val sets
    phases = {'^train$': _dataset_block(bool(is_train)), '^val(_.*)?$': _dataset_block(False)}
    if is_train is not True:
        phases['^test(_.*)?$'] = _dataset_block(False)
    if is_train is False:
        del phases['^train$']
    datasets = {'type': 'object', 'additionalProperties': False, 'patternProperties': phases,
                'x-keys': ['train', 'val', 'val_<name>'] if is_train else ['test', 'test_<name>', 'val', 'val_<name>']}
    if is_train:
        datasets['required'] = ['train']
    elif is_train is False:
        datasets['minProperties'] = 1
    logger = {'type': 'object', 'additionalProperties': False,
              'properties': {'print_freq': NUM, 'save_checkpoint_freq': NUM, 'use_tb_logger': BOOL,
                             'save_checkpoint_format': {'enum': ['pth', 'safetensors']},
                             'wandb': {'type': ['object', 'null'], 'additionalProperties': False,
                                       'properties': {'project': STR_OR_NONE, 'resume_id': STR_OR_NONE}}},
              'required': ['print_freq', 'save_checkpoint_freq', 'use_tb_logger'] if is_train else []}
    path = {'type': 'object', 'additionalProperties': False,
            'properties': {'pretrain_network_g': STR_OR_NONE, 'param_key_g': STR_OR_NONE, 'strict_load_g': BOOL,
                           'resume_state': STR_OR_NONE, 'ignore_resume_networks': {'type': ['array', 'null']}},
            'patternProperties': {'^pretrain_network_\\w+$': STR_OR_NONE, '^param_key_\\w+$': STR_OR_NONE,
                                  '^strict_load_\\w+$': BOOL}}
    top = {
        'name': {'type': 'string', 'minLength': 1}, 'model_type': {'enum': sorted(MODEL_REGISTRY._obj_map)},
        'scale': INT, 'num_gpu': {'anyOf': [INT, {'const': 'auto'}], 'description': "num_gpu: a number or 'auto'"},
        'manual_seed': INT_OR_NONE, 'datasets': datasets, 'path': path, 'train': train, 'val': val, 'logger': logger,
        'dist_params': {'type': 'object', 'additionalProperties': False,
                        'properties': {'backend': {'enum': ['nccl', 'gloo', 'mpi']}, 'port': INT}},
        **typed['top'],
    }
    out = {'$schema': 'https://json-schema.org/draft/2020-12/schema',
           'title': f'difflid option file ({model_type}, {"training" if is_train else "test"})',
           'type': 'object', 'properties': top, 'additionalProperties': False,
           'patternProperties': {'^network_(?!g$|prior$)': blocks['arch']}}
    if required:
        # num_gpu (default auto) and path (default {}) are filled in by difflid's start-up
        out['required'] = ['name', 'model_type', 'datasets', *(['train', 'logger'] if is_train else []), *required_top]
    return out


# --- problems and their messages --------------------------------------------------------------------------------
def _dotted(path: Iterable) -> str:
    out = ''
    for part in path:
        out += f'[{part}]' if isinstance(part, int) else (f'.{part}' if out else str(part))
    return out


def _closest(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f' (did you mean `{match[0]}`?)' if match else ''


def _valid_keys(schema: dict) -> list[str]:
    keys = list(schema.get('properties', {})) + schema.get('x-keys', [])
    for branch in schema.get('allOf', []):
        keys += [k for k in branch.get('then', {}).get('properties', {}) if k not in keys]
    return keys


def _describe(err: jsonschema.ValidationError) -> list[tuple[tuple, str]]:
    """(path, message) for one schema violation; an unknown-keys violation gives one per key."""
    path, kind, inst = tuple(err.absolute_path), err.validator, err.instance
    if kind == 'additionalProperties' and isinstance(inst, dict):
        known, patterns = set(err.schema.get('properties', {})), list(err.schema.get('patternProperties', {}))
        extras = [k for k in inst if k not in known and not any(re.search(p, str(k)) for p in patterns)]
        valid = _valid_keys(err.schema)
        return [((*path, k), f'unknown key{_closest(k, valid) or "; valid here: " + ", ".join(sorted(valid))}')
                for k in extras]
    if kind == 'required':
        missing = [k for k in err.validator_value if k not in inst]
        return [((*path, k), f'missing ({_WHY[k]})' if k in _WHY else 'missing') for k in missing]
    if kind in ('enum', 'const'):
        allowed = err.validator_value if kind == 'enum' else [err.validator_value]
        hint = _closest(inst, [a for a in allowed if isinstance(a, str)]) if isinstance(inst, str) else ''
        shown = ', '.join(map(str, allowed)) if len(allowed) <= 12 else f'{len(allowed)} registered names'
        return [(path, f'{inst!r} is not one of {shown}{hint}')]
    if kind == 'type':
        hint = ' (YAML reads 1e-4 as a string: write 1.0e-4)' if isinstance(inst, str) and _FLOAT_TEXT.fullmatch(
            inst) else ''
        types = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        return [(path, f'expected {" or ".join(types)}, got {inst!r}{hint}')]
    if kind in ('anyOf', 'oneOf') and 'description' in err.schema:
        return [(path, err.schema['description'])]
    if kind == 'minProperties':
        return [(path, 'empty: at least one entry is needed')]
    return [(path, err.message)]


def _order(raw: Any, path: tuple) -> tuple:
    """Where a path comes in the file: problems are reported top to bottom."""
    out, node = [], raw
    for part in path:
        keys = list(node) if isinstance(node, dict) else []
        out.append(keys.index(part) if part in keys else len(keys))
        node = node.get(part) if isinstance(node, dict) else None
    return tuple(out)


def _schema_problems(raw: dict, schema: dict) -> list[tuple[tuple, str]]:
    validator = jsonschema.Draft202012Validator(schema)
    problems = [p for err in validator.iter_errors(raw) for p in _describe(err)]
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: _order(raw, p[0]))


def _cross_problems(raw: dict, is_train: bool) -> list[tuple[tuple, str]]:
    """What one JSON schema cannot say simply: a dataset's need of a top-level key, a val set without a val block."""
    problems = []
    datasets = raw.get('datasets') if isinstance(raw.get('datasets'), dict) else {}
    for phase, block in datasets.items():
        cls = _registered(DATASET_REGISTRY).get(block.get('type')) if isinstance(block, dict) else None
        keys = dataset_keys(cls) if cls is not None else None
        for key in keys.top_level if keys else ():
            if key not in raw and key not in block:
                problems.append(((key,), f'missing (datasets.{phase} is a {block["type"]}, which reads it)'))
        if keys and keys.member_blocks and isinstance(block.get(keys.member_blocks), list):
            member_schema = _dataset_block(is_train and phase == 'train', getattr(cls, 'MEMBER_KEYS', {}))
            for index, member in enumerate(block[keys.member_blocks]):
                prefix = ('datasets', phase, keys.member_blocks, index)
                problems += [((*prefix, *path), message) for path, message in _schema_problems(member, member_schema)]
    summary = (raw.get('val') or {}).get('summary') if isinstance(raw.get('val'), dict) else None
    columns = summary.get('columns') if isinstance(summary, dict) else None
    if isinstance(columns, dict):  # each column a test set's name, or <set name>/<task> for a set mixing tasks
        names = [b.get('name') for p, b in datasets.items() if isinstance(b, dict) and (not is_train or p != 'train')]
        for label, group in columns.items():
            if isinstance(group, str) and group not in names and group.split('/')[0] not in names:
                problems.append((('val', 'summary', 'columns', label), f'{group!r} is not the name of a '
                                 f'{"validation" if is_train else "test"} set ({", ".join(map(str, names))}) nor '
                                 '<set name>/<task>'))
    val_sets = [p for p in datasets if str(p).startswith('val')]
    if is_train and val_sets and 'val' not in raw:
        problems.append((('val',), f'missing: datasets.{val_sets[0]} is never used without a val block '
                                   '(e.g. val: {val_freq: 1000, save_img: false, metrics: ...})'))
    return problems


def _report(source: str, problems: list[tuple[tuple, str]], max_lines: int = 9) -> str:
    lines = [f'{source}: {_dotted(path) or "(top level)"}: {message}' for path, message in problems]
    more = len(lines) - 1
    detail = [f'  {line.removeprefix(source + ": ")}' for line in lines[1:1 + max_lines]]
    if more > max_lines:
        detail.append(f'  ... and {more - max_lines} more')
    tail = [f'({len(lines)} problems in {source})'] if more else []
    return '\n'.join([lines[0], *detail, *tail])


def _undeclared(source: str, where: str, type_name: str) -> str:
    return f'{source}: {where}: {type_name} declares no option keys (OPTION_KEYS), so its keys are not checked'


def validate_options(raw: dict, is_train: bool, source: str) -> list[str]:
    """Check an option dict as written (``_base_`` merged, ``--force_yml`` applied, before basicsr adds its keys).

    Raises OptionError: the first problem as ``<source>: <dotted.key>: ...`` (with "did you mean" for an unknown key),
    then the next few and their count. Returns warnings (keys that cannot be checked: another plugin's dataset
    type, a model class this module does not know).
    """
    if not isinstance(raw, dict):
        raise OptionError(f'{source}: an option file holds a mapping (name, model_type, datasets, ...) at the top')
    model_type = raw.get('model_type')
    problems = _schema_problems(raw, options_schema(is_train, model_type)) + _cross_problems(raw, is_train)
    if problems:
        raise OptionError(_report(source, problems))
    warnings = []
    _, known = _model_entries(model_type)
    if not known:
        warnings.append(f'{source}: model_type {model_type}: the train and val keys of this model class are not '
                        'all known to difflid; unknown keys there are not reported')
    for phase, block in (raw.get('datasets') or {}).items():
        cls = _registered(DATASET_REGISTRY).get(block.get('type'))
        if cls is not None and dataset_keys(cls) is None:
            warnings.append(_undeclared(source, f'datasets.{phase}', block['type']))
    return warnings


def validate_dataset(block: Any, where: str, source: str, is_train: bool = False) -> list[str]:
    """One dataset block outside a run's options (the probe's ``datasets.probe``), checked as ``validate_options``
    checks a run's: raises OptionError naming ``<source>: <where>.<key>``; returns warnings."""
    prefix = tuple(where.split('.'))
    problems = [((*prefix, *path), message) for path, message in _schema_problems(block, _dataset_block(is_train))]
    if problems:
        raise OptionError(_report(source, problems))
    cls = _registered(DATASET_REGISTRY).get(block.get('type'))
    if cls is not None and dataset_keys(cls) is None:
        return [_undeclared(source, where, block['type'])]
    return []


# --- reading an option file -------------------------------------------------------------------------------------
def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding='utf-8'))
    except yaml.YAMLError as err:
        mark = getattr(err, 'problem_mark', None)
        where = f' (line {mark.line + 1}, column {mark.column + 1})' if mark else ''
        raise OptionError(f'{path}: not valid YAML{where}: {getattr(err, "problem", None) or err}') from err


def _merge_conflicts(child: Any, base: Any, prefix: tuple = ()) -> Iterable[tuple[tuple, Any]]:
    """Where the child file gives a mapping that mmengine would merge into a base value that is not one."""
    if not isinstance(child, dict) or not isinstance(base, dict):
        return
    for key, value in child.items():
        if key == '_base_' or not isinstance(value, dict) or value.get('_delete_'):
            continue
        if key in base and not isinstance(base[key], dict):
            yield (*prefix, key), base[key]
        else:
            yield from _merge_conflicts(value, base.get(key), (*prefix, key))


def _merge_error(path: Path, err: BaseException) -> OptionError:
    """mmengine's merge error, with the whole key path and the fix."""
    own = _load_yaml(path) or {}
    bases = own.get('_base_', [])
    for base in bases if isinstance(bases, list) else [bases]:
        try:
            base_opt = load_raw_options(path.parent / base)
        except OptionError:
            continue
        for key_path, value in _merge_conflicts(own, base_opt):
            dotted = _dotted(key_path)
            kind = 'a list' if isinstance(value, list) else f'{type(value).__name__} {value!r}'
            return OptionError(f'{path}: {dotted} is a mapping here but {kind} in its _base_ file {base}: mmengine '
                               f'cannot merge the two; add `_delete_: true` inside {dotted} to replace the base value')
    return OptionError(f'{path}: cannot merge its _base_ files {bases}: {err}')


def load_raw_options(path: str | Path, force_yml: list[str] | None = None) -> dict:
    """The option file as written: its ``_base_`` files merged (mmengine) and each ``--force_yml a:b=value`` applied
    (the value parsed as basicsr parses it); nothing derived is added. Raises OptionError naming the file (or the
    ``--force_yml`` entry) and the key."""
    from basicsr.utils.options import _postprocess_yml_value

    path = Path(path)
    try:
        resolved = resolve_option_file(path)
    except FileNotFoundError as err:
        raise OptionError(str(err)) from err
    except yaml.YAMLError:
        _load_yaml(path)  # raises the message with the line
        raise
    except ValueError as err:
        if isinstance(err.__cause__, (TypeError, KeyError)):
            raise _merge_error(path, err.__cause__) from err
        raise OptionError(str(err)) from err
    try:
        raw = _load_yaml(resolved)
    finally:
        if resolved != path:  # a merged copy in its own temporary folder
            shutil.rmtree(resolved.parent, ignore_errors=True)
    if not isinstance(raw, dict):
        raise OptionError(f'{path}: an option file holds a mapping (name, model_type, datasets, ...) at the top')
    forced = []
    for entry in force_yml or []:
        keys_text, sep, value_text = entry.partition('=')
        keys = [k.strip() for k in keys_text.split(':')]
        if not sep or not all(keys):
            raise OptionError(f'--force_yml {entry}: expected KEY:KEY=VALUE, e.g. --force_yml train:total_iter=5')
        node = raw
        for depth, key in enumerate(keys[:-1]):
            if not isinstance(node.get(key), dict):
                what = 'is not a block' if key in node else f'is not in {path}'
                raise OptionError(f'--force_yml {entry}: {_dotted(keys[:depth + 1])} {what}'
                                  f'{_closest(key, node)}; {_dotted(keys[:depth]) or "the top level"} has: '
                                  f'{", ".join(map(str, node))}')
            node = node[key]
        try:  # basicsr evaluates a value that looks like a list as Python
            node[keys[-1]] = _postprocess_yml_value(value_text.strip())
        except Exception as err:  # noqa: BLE001  (eval raises anything: NameError, SyntaxError, ...)
            raise OptionError(f'--force_yml {entry}: cannot read the value {value_text.strip()!r} ({err}); a list is '
                              "read as Python: quote its strings, e.g. images=['a','b']") from None
        forced.append((tuple(keys), entry))
    if forced:
        schema = options_schema(None, raw.get('model_type'))
        for key_path, message in _schema_problems(raw, schema):
            entry = next((e for p, e in forced if key_path[:len(p)] == p), None)
            if entry is not None:
                raise OptionError(f'--force_yml {entry}: {_dotted(key_path)}: {message}')
    return raw


# --- what --check prints ----------------------------------------------------------------------------------------
_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


def _dataset_size(block: dict) -> int | None:
    """Images (pairs) a dataset block lists, counted cheaply; None when that needs the dataset itself."""
    meta = block.get('meta_info_file')
    if meta and Path(meta).is_file():
        return sum(1 for line in Path(meta).read_text(encoding='utf-8').splitlines() if line.strip())
    for key in ('dataroot_lq', 'dataroot_gt'):
        folder = Path(block[key]) if block.get(key) else None
        if folder is not None and folder.is_dir():
            count = sum(1 for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
            # clean-image sets are read recursively (a prepared one keeps its images in gt/)
            return count or sum(1 for p in folder.rglob('*') if p.suffix.lower() in _IMAGE_SUFFIXES)
    folder = Path(block['dataroot']) / 'lq' if block.get('dataroot') else None
    if folder is not None and folder.is_dir():
        return sum(1 for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if block.get('images') is not None and block.get('hazy_per_image') is not None:
        return len(block['images']) * int(block['hazy_per_image'])
    return None


def _brief(block: Any) -> str:
    if not isinstance(block, dict):
        return str(block)
    rest = ', '.join(f'{k}: {v}' for k, v in block.items() if k != 'type')
    return f'{block.get("type")} ({rest})' if rest else str(block.get('type'))


def plan_summary(raw: dict, is_train: bool) -> str:
    """The few lines ``--check`` prints: run, model, networks, datasets with their sizes, length, outputs."""
    name = raw.get('name')
    lines = [f'{"training" if is_train else "test"} run {name}: model {raw.get("model_type")}',
             f'  network_g: {_brief(raw.get("network_g"))}']
    if 'network_prior' in raw:
        lines.append(f'  network_prior: {_brief(raw["network_prior"])}')
    train = raw.get('train') or {}
    per_epoch = None
    for phase, block in (raw.get('datasets') or {}).items():
        size = _dataset_size(block)
        cls = _registered(DATASET_REGISTRY).get(block.get('type'))
        keys = dataset_keys(cls) if cls is not None else None
        where = block.get('dataroot') or block.get('dataroot_lq') or block.get('dataroot_gt') or block.get('source')
        made = ' (generated on first use)' if keys and keys.generates_data and not (
            where and Path(str(where)).exists()) else ''
        count = f'{size} images' if size is not None else 'size known once built'
        if keys and keys.member_blocks and isinstance(block.get(keys.member_blocks), list):
            tasks = [str(m.get('task')) for m in block[keys.member_blocks] if isinstance(m, dict)]
            count = f'{len(tasks)} members: {", ".join(tasks)}'
            where = 'mixed'
        line = f'  datasets.{phase}: {block.get("name")} ({block.get("type")}, {count}{made}, {where})'
        if phase == 'train':
            batch = block.get('total_batch_size') or block.get('batch_size_per_gpu')
            enlarge = block.get('dataset_enlarge_ratio', 1)
            line += f', batch {batch}, crops {block.get("gt_size")}'
            if size and batch:
                per_epoch = int(size * enlarge // batch)
        lines.append(line)
    if is_train:
        total = train.get('total_iter')
        epochs = f', {per_epoch} iterations per epoch (one process)' if per_epoch else ''
        lines.append(f'  train: {total} iterations{epochs}; optimizer {_brief(train.get("optim_g"))}; '
                     f'scheduler {_brief(train.get("scheduler"))}')
        val, logger = raw.get('val') or {}, raw.get('logger') or {}
        lines.append(f'  validation every {val.get("val_freq", "-")} iterations, checkpoints every '
                     f'{logger.get("save_checkpoint_freq")}')
        lines.append(f'  outputs: experiments/{name}/ (models, training states, log)'
                     + (f', tb_logger/{name}/' if logger.get('use_tb_logger') else ''))
    else:
        weights = (raw.get('path') or {}).get('pretrain_network_g')
        lines.append(f'  weights: {weights}')
        lines.append(f'  outputs: results/{name}/ (metrics, images, log)')
    return '\n'.join(lines)

