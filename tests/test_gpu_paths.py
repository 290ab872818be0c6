"""The prior's fast GPU paths, checked on the CPU: dtype 'auto' (bf16 on CUDA) and its accuracy, channels_last,
torch.compile. What needs a GPU to run (speed, flash attention) is tools/benchmark.py's job."""
import copy

import pytest
import torch
from basicsr.archs import build_network

from difflid.archs.difflid_arch import DiffLI2D
from difflid.priors.hspace_arch import HSpaceExtractor
from difflid.utils.precision import resolve_channels_last, resolve_dtype
from tests.conftest import hazy_astronaut, nontrivial_weights

TINY = dict(unet='adm_tiny', random_weights=True)
CPU, CUDA = torch.device('cpu'), torch.device('cuda')

# bf16 vs fp32 prior features, measured with random weights on a 64×64 (adm256_uncond) or 128×128 (adm_tiny) crop
# of the hazy astronaut: relative L2 error of h 1.1 % / 1.0 % at t = 0 / 500 (adm256_uncond), 1.3 % / 2.1 %
# (adm_tiny). A DiffLI2D with non-trivial weights guided by either gives outputs 56.3 dB (adm256_uncond, default
# width) and 55.9 dB (adm_tiny, width 16) apart, where fresh noise instead of the seeded one moves them to 40.1 dB
# and 23.2 dB: bf16 changes the output 40-5000x less (squared error) than the noise draw does. The documented
# tolerance (docs/prior.md, Precision) is the pair of bounds below.
BF16_MAX_RELATIVE_L2 = 0.03
BF16_MIN_OUTPUT_PSNR = 50.0


def _input_spy(module: torch.nn.Module) -> list[torch.Tensor]:
    seen = []
    module.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    return seen


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a - b).square().mean()))


def _relative_l2(a: torch.Tensor, reference: torch.Tensor) -> float:
    return float((a - reference).norm() / reference.norm())


def test_auto_resolves_by_device():
    assert resolve_dtype('auto', CPU) == torch.float32
    assert resolve_dtype('auto', CUDA) == torch.bfloat16  # no GPU needed to ask
    assert resolve_dtype('auto', 'cuda:1') == torch.bfloat16
    assert resolve_dtype('fp16', CPU) == torch.float16 and resolve_dtype('fp32', CUDA) == torch.float32
    with pytest.raises(ValueError, match="'auto', 'fp32', 'bf16', 'fp16'"):
        resolve_dtype('fp8', CPU)


def test_auto_is_fp32_on_a_gpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (7, 0))  # V100: bf16 autocast fails
    assert resolve_dtype('auto', CUDA) == torch.float32
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (9, 0))
    assert resolve_dtype('auto', CUDA) == torch.bfloat16


def test_auto_is_the_default_and_runs_fp32_on_cpu():
    prior = HSpaceExtractor(**TINY)
    conv = _input_spy(prior.unet.input_blocks[1][0].in_layers[2])  # a conv inside the first ResBlock
    feats = prior(torch.rand(1, 3, 32, 32))
    assert prior.precision == 'auto' and prior.dtype == torch.float32
    assert [x.dtype for x in conv] == [torch.float32] and feats[0].dtype == torch.float32


@pytest.mark.parametrize('dtype', ['auto', 'fp32'])
def test_auto_and_fp32_leave_an_enclosing_autocast_in_force(dtype):
    prior = HSpaceExtractor(**TINY, dtype=dtype)
    conv = _input_spy(prior.unet.input_blocks[1][0].in_layers[2])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        feats = prior(torch.rand(1, 3, 32, 32))
    assert [x.dtype for x in conv] == [torch.bfloat16] and feats[0].dtype == torch.float32


@pytest.mark.parametrize('unet, size, num_feat', [('adm_tiny', 128, 16), ('adm256_uncond', 64, 64)])
def test_bf16_features_are_within_the_documented_tolerance_of_fp32(unet, size, num_feat):
    prior = HSpaceExtractor(unet=unet, random_weights=True, dtype='fp32')
    img = hazy_astronaut(size, size)
    fp32 = prior(img)
    fresh = prior(img, fresh_noise=True)
    prior.precision = 'bf16'  # the same weights, so only the precision differs
    conv = _input_spy(prior.unet.input_blocks[1][0].in_layers[2])
    bf16 = prior(img)
    assert [x.dtype for x in conv] == [torch.bfloat16]
    for t in (0, 500):
        error = _relative_l2(bf16[t], fp32[t])
        assert 1e-4 < error < BF16_MAX_RELATIVE_L2, f't={t}: relative L2 error {error:.4f}'
    torch.manual_seed(0)
    net = nontrivial_weights(DiffLI2D(num_feat=num_feat, h_channels=prior.feature_channels))
    with torch.no_grad():
        out32, out16, out_fresh = (net(img, f[0], f[500]) for f in (fp32, bf16, fresh))
    assert _psnr(out_fresh, out32) < 45  # the test can see h: other features change the output
    assert _psnr(out16, out32) > BF16_MIN_OUTPUT_PSNR
    assert (out16 - out32).square().mean() < 0.1 * (out_fresh - out32).square().mean()


def test_channels_last_resolves_by_device():
    assert resolve_channels_last(None, CUDA) and not resolve_channels_last(None, CPU)
    assert resolve_channels_last(True, CPU) and not resolve_channels_last(False, CUDA)


def test_channels_last_reaches_the_unet_and_keeps_the_features():
    img = hazy_astronaut(96, 160)
    plain = HSpaceExtractor(**TINY, channels_last=False)
    # through the registry, as a network_prior block of an option file gives it
    fast = build_network({'type': 'HSpaceExtractor', **TINY, 'channels_last': True})
    conv = fast.unet.input_blocks[1][0].in_layers[2]
    seen = _input_spy(conv)
    expected, feats = plain(img), fast(img)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    for t in (0, 500):
        assert feats[t].is_contiguous()  # callers get the usual layout
        torch.testing.assert_close(feats[t], expected[t], rtol=1e-4, atol=1e-4)
    fast.channels_last = False  # switching off converts the weights back
    fast(img)
    assert conv.weight.is_contiguous() and seen[-1].is_contiguous()


def test_channels_last_default_is_off_on_cpu():
    prior = HSpaceExtractor(**TINY)
    conv = prior.unet.input_blocks[1][0].in_layers[2]
    seen = _input_spy(conv)
    prior(torch.rand(1, 3, 64, 64))
    assert prior.channels_last is None and conv.weight.is_contiguous() and seen[0].is_contiguous()


@pytest.mark.parametrize('option, value, match', [
    ('channels_last', 'yes', 'channels_last must be true, false or ~'),
    ('compile', 'true', 'compile must be true or false'),
    ('dtype', 'fp8', "dtype must be one of \\['auto'"),
])
def test_bad_options_are_named(option, value, match):
    with pytest.raises(ValueError, match=match):
        HSpaceExtractor(**TINY, **{option: value})


@pytest.mark.slow  # inductor compiles C++ on the CPU: 2 min on a 2-core machine without a warm cache
def test_compiled_features_equal_eager_ones_and_follow_a_copys_weights():
    from torch._dynamo.utils import counters

    counters.clear()
    img = torch.rand(1, 3, 64, 96)
    eager = HSpaceExtractor(**TINY)
    compiled = HSpaceExtractor(**TINY, compile=True)
    expected, feats = eager(img), compiled(img)
    assert counters['stats']['unique_graphs'] >= 1  # torch.compile did run
    for t in (0, 500):
        torch.testing.assert_close(feats[t], expected[t], rtol=1e-4, atol=1e-4)
    copied = copy.deepcopy(compiled)
    with torch.no_grad():
        for p in copied.unet.parameters():
            p.mul_(1.1)
    eager_copy = copy.deepcopy(copied)
    eager_copy.compile_features = False
    changed, reference = copied(img), eager_copy(img)
    for t in (0, 500):
        torch.testing.assert_close(changed[t], reference[t], rtol=1e-4, atol=1e-4)
        assert (changed[t] - feats[t]).abs().max() > 1e-2  # the copy runs its own weights, not the original's
