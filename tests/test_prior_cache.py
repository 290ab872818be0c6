"""The validation prior cache (difflid.priors.cache, val.cache_prior): cached outputs are bit-identical to
uncached ones, a repeated input never reaches the prior, and anything the features depend on (pixels, shape, tile
origin, the prior's options and weights) makes a miss."""
import os
from types import SimpleNamespace

import pytest
import torch
from basicsr.models import build_model

from difflid.archs.difflid_arch import DiffLI2D
from difflid.inference import restore
from difflid.priors.cache import CachedGuidance, prior_cache_key
from difflid.priors.hspace_arch import HSpaceExtractor
from tests.conftest import nontrivial_weights
from tests.test_difflid_model import NET_G, PRIOR, make_opt

PRIOR_OPT = {k: v for k, v in PRIOR.items() if k != 'type'}
KEY = prior_cache_key(PRIOR, 'cpu', torch.float32)


def count_calls(monkeypatch, prior: HSpaceExtractor) -> list[dict]:
    """Record every ``prior.guidance`` call (its origin and noise mode) and let it run."""
    calls: list[dict] = []
    original = prior.guidance

    def spy(img, fresh_noise=False, origin=(0, 0)):
        calls.append({'origin': origin, 'fresh_noise': fresh_noise})
        return original(img, fresh_noise=fresh_noise, origin=origin)

    monkeypatch.setattr(prior, 'guidance', spy)
    return calls


@pytest.fixture(scope='module')
def prior() -> HSpaceExtractor:
    return HSpaceExtractor(**PRIOR_OPT)


@pytest.fixture(scope='module')
def net() -> DiffLI2D:
    # a new DiffLI2D is the identity: the prior would have no effect and a wrong feature could not show
    torch.manual_seed(0)
    return nontrivial_weights(DiffLI2D(**{k: v for k, v in NET_G.items() if k != 'type'}))


def _image(hw=(70, 100), seed=0) -> torch.Tensor:
    return torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(seed)) * 0.6 + 0.3


@pytest.mark.parametrize('tile, calls_per_pass', [(0, 1), (64, 6)])
@torch.no_grad()
def test_cached_outputs_are_bit_identical_and_the_second_pass_skips_the_prior(monkeypatch, prior, net, tile,
                                                                               calls_per_pass):
    img = _image()
    uncached = restore(net, img, prior, tile=tile, tile_overlap=32)
    other_seed = HSpaceExtractor(**{**PRIOR_OPT, 'seed': 1})
    assert (restore(net, img, other_seed, tile=tile, tile_overlap=32) - uncached).abs().max() > 1e-3  # h matters
    calls = count_calls(monkeypatch, prior)
    cache = CachedGuidance(prior, KEY)
    first = restore(net, img, cache, tile=tile, tile_overlap=32)
    assert len(calls) == calls_per_pass and cache.stats.misses == calls_per_pass and cache.stats.hits == 0
    second = restore(net, img, cache, tile=tile, tile_overlap=32)
    assert len(calls) == calls_per_pass, 'the second pass ran the prior'
    assert cache.stats.hits == calls_per_pass and cache.stats.misses == calls_per_pass
    assert cache.memory_entries == calls_per_pass and cache.stats.disk_writes == 0
    assert torch.equal(first, uncached) and torch.equal(second, uncached)


@torch.no_grad()
def test_tile_origin_is_part_of_the_key(prior, net):
    # three tiles with the same pixels: only their origin (their window of the seeded noise) tells them apart
    img = torch.full((1, 3, 64, 128), 0.5)
    f00, _ = prior.guidance(img[..., :64], origin=(0, 0))
    f32, _ = prior.guidance(img[..., :64], origin=(0, 32))
    assert (f00 - f32).abs().max() > 1e-3  # the origin changes the features
    cache = CachedGuidance(prior, KEY)
    out = restore(net, img, cache, tile=64, tile_overlap=32)
    assert cache.stats.misses == 3 and cache.stats.hits == 0
    assert torch.equal(out, restore(net, img, prior, tile=64, tile_overlap=32))


def test_a_changed_image_misses(prior):
    cache = CachedGuidance(prior, KEY)
    img = _image((64, 64))
    cache.guidance(img)
    changed = img.clone()
    changed[0, 0, 10, 10] += 1 / 255
    f_changed, _ = cache.guidance(changed)
    assert cache.stats.misses == 2 and cache.stats.hits == 0
    assert torch.equal(f_changed, prior.guidance(changed)[0])
    # the same bytes in another shape are another image
    cache.guidance(img.reshape(1, 3, 32, 128))
    assert cache.stats.misses == 3
    cache.guidance(img)
    assert cache.stats.hits == 1


def test_prior_cache_key_follows_the_configuration(tmp_path):
    weights = tmp_path / 'prior.pth'
    weights.write_bytes(b'0' * 64)
    opt = {**PRIOR, 'checkpoint': str(weights), 'random_weights': False}
    key = prior_cache_key(opt, 'cpu', torch.float32)
    assert prior_cache_key(dict(reversed(list(opt.items()))), torch.device('cpu'), 'torch.float32') == key
    others = [
        prior_cache_key({**opt, 'seed': 1}, 'cpu', torch.float32),
        prior_cache_key({**opt, 'timesteps': [0, 400]}, 'cpu', torch.float32),
        prior_cache_key(opt, 'cuda', torch.float32),
        prior_cache_key(opt, 'cpu', torch.bfloat16),
    ]
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same name and size, new weights
    others.append(prior_cache_key(opt, 'cpu', torch.float32))
    weights.write_bytes(b'0' * 65)
    others.append(prior_cache_key(opt, 'cpu', torch.float32))
    assert len({key, *others}) == len(others) + 1


def test_zero_memory_spills_to_disk_and_entries_read_back_equal(monkeypatch, prior, tmp_path):
    img = _image((64, 96))
    expected = prior.guidance(img)
    cache = CachedGuidance(prior, KEY, memory_mb=0, disk_dir=tmp_path / 'cache')
    first = cache.guidance(img)
    assert cache.memory_entries == 0 and cache.memory_bytes == 0 and cache.stats.disk_writes == 1
    assert [p.suffix for p in (tmp_path / 'cache').iterdir()] == ['.pt']  # one entry, no temporary file left
    calls = count_calls(monkeypatch, prior)
    again = cache.guidance(img)
    resumed = CachedGuidance(prior, KEY, memory_mb=0, disk_dir=tmp_path / 'cache').guidance(img)  # a new run
    assert calls == [] and cache.stats.hits == 1 and cache.stats.disk_reads == 1
    for feats in (first, again, resumed):
        assert all(torch.equal(a, b) for a, b in zip(feats, expected, strict=True))
    # another configuration shares the folder but never reads the entry
    other = CachedGuidance(prior, prior_cache_key({**PRIOR, 'seed': 1}, 'cpu', torch.float32), 0, tmp_path / 'cache')
    other.guidance(img)
    assert other.stats.misses == 1 and other.stats.hits == 0 and len(calls) == 1


def test_entries_beyond_the_budget_go_to_disk_or_are_recomputed(monkeypatch, prior, tmp_path):
    images = [_image((64, 64), seed) for seed in range(3)]
    entry_mb = sum(f.numel() * f.element_size() for f in prior.guidance(images[0])) / 2**20
    spilling = CachedGuidance(prior, KEY, memory_mb=1.5 * entry_mb, disk_dir=tmp_path)
    recomputing = CachedGuidance(prior, KEY, memory_mb=1.5 * entry_mb)
    for cache in (spilling, recomputing):
        for img in images:
            cache.guidance(img)
        assert cache.memory_entries == 1 and cache.stats.misses == 3
    assert spilling.stats.disk_writes == 2 and len(list(tmp_path.glob('*.pt'))) == 2
    calls = count_calls(monkeypatch, prior)
    for img in images:
        spilling.guidance(img)
        recomputing.guidance(img)
    assert spilling.stats.hits == 3 and spilling.stats.disk_reads == 2
    assert recomputing.stats.hits == 1 and len(calls) == 2  # without a disk, the two beyond the budget rerun


def test_fresh_noise_bypasses_the_cache(monkeypatch, prior):
    cache = CachedGuidance(prior, KEY)
    img = _image((64, 64))
    calls = count_calls(monkeypatch, prior)
    first, _ = cache.guidance(img, fresh_noise=True)
    second, _ = cache.guidance(img, fresh_noise=True)
    assert len(calls) == 2 and all(c['fresh_noise'] for c in calls)
    assert not torch.equal(first, second)
    assert cache.stats.bypassed == 2 and cache.stats.hits == cache.stats.misses == 0 and cache.memory_entries == 0


def test_writing_into_returned_features_leaves_the_cache_intact(prior):
    cache = CachedGuidance(prior, KEY)
    img = _image((64, 64))
    expected = prior.guidance(img)[0]
    cache.guidance(img)[0].zero_()
    cache.guidance(img)[0].zero_()
    assert torch.equal(cache.guidance(img)[0], expected)


def test_bad_memory_budget_is_named(prior):
    for bad in (-1, float('inf'), '2GB', True):
        with pytest.raises(ValueError, match='memory_mb'):
            CachedGuidance(prior, KEY, memory_mb=bad)


# --- DiffLI2DModel ------------------------------------------------------------------------------------------

def _validate(model, batches: list[dict], current_iter: int) -> dict[str, float]:
    data = [{**b, 'lq_path': [f'{i}.png']} for i, b in enumerate(batches)]
    loader = type('Loader', (), {'dataset': SimpleNamespace(opt={'name': 'toy'}), '__iter__': lambda self: iter(data),
                                 '__len__': lambda self: len(data)})()
    model.nondist_validation(loader, current_iter, None, save_img=False)
    return dict(model.metric_results)


def _model(tmp_path, is_train: bool, fresh_prior_noise: bool = True, **val):
    tmp_path.mkdir(exist_ok=True)
    metrics = {'psnr': {'type': 'calculate_psnr_float', 'crop_border': 0, 'test_y_channel': False}}
    opt = make_opt(tmp_path, is_train=is_train, val={'metrics': metrics, **val})
    opt['train']['fresh_prior_noise'] = fresh_prior_noise
    opt['path']['experiments_root'] = str(tmp_path / 'experiment')
    model = build_model(opt)
    torch.manual_seed(0)
    model.net_g.load_state_dict(nontrivial_weights(DiffLI2D(**{k: v for k, v in NET_G.items() if k != 'type'}))
                                .state_dict())
    return model


def _batches() -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    gts = [torch.rand(1, 3, 48, 64, generator=gen) for _ in range(2)]
    return [{'lq': 0.6 * gt + 0.35, 'gt': gt} for gt in gts]


def test_validation_with_the_cache_scores_as_without_and_runs_the_prior_once(monkeypatch, tmp_path):
    batches = _batches()
    uncached = _model(tmp_path / 'off', True, cache_prior=False)
    expected = _validate(uncached, batches, 1)
    assert uncached.validation_prior() is uncached.prior and uncached.prior_cache is None

    model = _model(tmp_path / 'on', True, fresh_prior_noise=False)  # training with seeded noise too
    calls = count_calls(monkeypatch, model.prior)
    assert _validate(model, batches, 1) == expected
    assert len(calls) == 2 and model.prior_cache.stats.misses == 2
    assert _validate(model, batches, 2) == expected
    assert len(calls) == 2, 'the second validation ran the prior'
    assert model.prior_cache.stats.hits == 2
    # training crops are new at every step: they go to the prior itself, never into the cache
    model.feed_data(batches[0])
    model.optimize_parameters(3)
    stats = model.prior_cache.stats
    assert len(calls) == 3 and not calls[-1]['fresh_noise']
    assert (stats.hits, stats.misses, stats.bypassed) == (2, 2, 0)
    assert not (tmp_path / 'on' / 'experiment' / 'prior_cache').exists()  # all within the memory budget


def test_the_cache_is_on_in_training_and_off_at_test_time_by_default(tmp_path):
    assert _model(tmp_path / 'train', True).cache_prior
    test_model = _model(tmp_path / 'test', False)  # a test run sees each image once: a cache would only cost
    assert not test_model.cache_prior and test_model.validation_prior() is test_model.prior


@pytest.mark.parametrize('is_train, root', [(True, 'experiment'), (False, '.')])
def test_validation_spills_to_the_run_folder(tmp_path, is_train, root):
    model = _model(tmp_path, is_train, cache_prior=True, prior_cache_mb=0, tile=32, tile_overlap=16)
    batches = _batches()
    first = _validate(model, batches, 1)
    files = list((tmp_path / root / 'prior_cache').glob('*.pt'))
    assert len(files) == model.prior_cache.stats.misses == 2 * 6  # 48x64 in 32-px tiles at stride 16: 2x3 each
    assert _validate(model, batches, 2) == first and model.prior_cache.stats.disk_reads == 12


@pytest.mark.parametrize('val, match', [
    ({'cache_prior': 'yes'}, 'val.cache_prior'),
    ({'cache_prior': None}, 'val.cache_prior'),
    ({'prior_cache_mb': -1}, 'val.prior_cache_mb'),
    ({'prior_cache_mb': '2GB'}, 'val.prior_cache_mb'),
    ({'prior_cache_mb': True}, 'val.prior_cache_mb'),
])
def test_bad_cache_options_fail_at_start_naming_the_key(tmp_path, val, match):
    with pytest.raises(ValueError, match=match):
        build_model(make_opt(tmp_path, val={'metrics': None, **val}))
