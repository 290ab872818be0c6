import math

import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch.overrides import TorchFunctionMode

from difflid.archs.difflid_arch import ContentIntegration, DiffLI2D, HazeAwareEnhancement

TINY = dict(num_feat=8, width_mult=(1, 2, 4, 8), num_enc_blocks=(1, 1, 1), num_heads=(1, 2, 2, 4), h_channels=16)


def _count(net):
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def trained_like(net, scale=0.05):
    """Move every weight off its initial value (W_O and the SFT layers start at the identity)."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * scale)
    return net


def test_blocks_start_as_the_identity():
    torch.manual_seed(0)
    net = DiffLI2D(**TINY)
    feat, h = torch.randn(1, 8, 8, 8), torch.randn(1, 16, 2, 2)
    block = net.encoders[0][0]
    torch.testing.assert_close(block.cim(feat, h), feat)
    hae = block.hae(feat, h)
    assert not torch.allclose(hae, feat)  # the channel gate is active: F_o = σ(...)·F' + F'
    torch.testing.assert_close(block.hae(feat, h + 5), hae)  # but h_t2 has no effect until trained


def test_default_configuration_has_the_papers_parameter_count():
    assert ARCH_REGISTRY.get('DiffLI2D') is DiffLI2D
    assert _count(DiffLI2D()) == pytest.approx(8.63e6, rel=0.03)


@pytest.mark.parametrize('config', [TINY, {}], ids=['tiny', 'default'])
def test_new_network_returns_its_input_then_learns(config):
    torch.manual_seed(0)
    net = DiffLI2D(**config)
    c_h = net.h_channels
    x, target = torch.rand(2, 3, 40, 40), torch.rand(2, 3, 40, 40)
    h1, h2 = torch.randn(2, c_h, 2, 2), torch.randn(2, c_h, 2, 2)
    assert (net(x, h1, h2) - x).abs().max() == 0  # the zero head: the network learns a residual from the identity
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    block = net.encoders[0][0]
    for step in range(3):
        optimizer.zero_grad()
        y = net(x, h1, h2)
        if step == 1:  # the first step moved the head off zero
            assert (y - x).abs().mean() > 1e-4
        (y - target).abs().mean().backward()
        optimizer.step()
    # from the second step on, gradients pass the head and reach the blocks
    assert block.cim.to_out.weight.grad.abs().sum() > 0
    assert block.hae.to_gamma.weight.grad.abs().sum() > 0


@pytest.mark.parametrize('ablation', [{'cim': 'self'}, {'hae': 'self'}, {'cim': 'self', 'hae': 'self'}])
def test_ablations_keep_a_similar_parameter_count(ablation):
    assert _count(DiffLI2D(**ablation)) == pytest.approx(_count(DiffLI2D()), rel=0.01)
    net = DiffLI2D(**TINY, **ablation)
    x = torch.rand(1, 3, 40, 40)
    assert net(x, torch.randn(1, 16, 2, 2), torch.randn(1, 16, 2, 2)).shape == x.shape


# (width, h_channels, heads): the tiny test nets, the quickstart net and the default net, level by level
_LEVELS = [(8, 16, 1), (16, 16, 2), (32, 16, 2), (64, 16, 4), (8, 64, 1), (16, 64, 1), (64, 64, 4), (128, 64, 4),
           (64, 1024, 1), (128, 1024, 2), (256, 1024, 4), (512, 1024, 8)]


@pytest.mark.parametrize('width, h_channels, heads', _LEVELS)
def test_stand_ins_match_the_replaced_modules_parameter_count(width, h_channels, heads):
    block = DiffLI2D(num_feat=width, width_mult=(1,), num_enc_blocks=(), num_heads=(heads,), h_channels=h_channels,
                     h_stride=32, cim='self', hae='self').middle[0]
    cim, hae = ContentIntegration(width, h_channels, heads), HazeAwareEnhancement(width, h_channels)
    assert _count(block.cim) == pytest.approx(_count(cim), rel=0.01)
    assert _count(block.hae) == pytest.approx(_count(hae), rel=0.01)


# element-wise non-linearities that neither CIM nor HAE has (HAE's sigmoid gate and softmax attention are allowed)
_FOREIGN_NONLINEARITIES = {'gelu', 'relu', 'relu_', 'silu', 'elu', 'selu', 'celu', 'leaky_relu', 'prelu', 'rrelu',
                           'mish', 'hardswish', 'hardsigmoid', 'hardtanh', 'relu6', 'softplus', 'softsign', 'tanh',
                           'tanhshrink', 'logsigmoid', 'glu', 'threshold', 'gelu_', 'silu_', 'tanh_'}


class _CalledFunctions(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, '__name__', str(func)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('kind', ['cim', 'hae'])
def test_stand_ins_add_no_foreign_nonlinearity(kind):
    torch.manual_seed(0)
    net = trained_like(DiffLI2D(**TINY, **{'cim': 'self', 'hae': 'self'}))
    stand_in = getattr(net.encoders[1][0], kind)
    activations = [type(m).__name__ for m in stand_in.modules()
                   if type(m).__module__ == 'torch.nn.modules.activation' and not isinstance(m, torch.nn.Softmax)]
    assert not activations, f'the {kind} stand-in has activation layers {activations}'
    feat = torch.randn(1, 16, 8, 8)
    with _CalledFunctions() as called:
        out = stand_in(feat, None)
    assert out.shape == feat.shape and not torch.allclose(out, feat)
    foreign = called.names & _FOREIGN_NONLINEARITIES
    assert not foreign, f'the {kind} stand-in calls {sorted(foreign)}'
    if kind == 'cim':  # CIM has no gate either
        assert 'sigmoid' not in called.names


@pytest.mark.parametrize('hw', [(97, 131), (32, 32), (8, 70)])
def test_any_image_size(hw):
    net = DiffLI2D(**TINY)
    hs = (1, 16, math.ceil(hw[0] / 32), math.ceil(hw[1] / 32))
    x = torch.rand(2, 3, *hw)
    assert net(x, torch.randn(2, *hs[1:]), torch.randn(2, *hs[1:])).shape == x.shape


@pytest.mark.parametrize('ablation', [{}, {'cim': 'self', 'hae': 'self'}])
def test_every_parameter_gets_a_gradient(ablation):
    torch.manual_seed(0)
    net = trained_like(DiffLI2D(**TINY, **ablation))
    net(torch.rand(2, 3, 64, 64), torch.randn(2, 16, 2, 2), torch.randn(2, 16, 2, 2)).square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, f'no gradient reached {missing}'


def test_output_depends_on_both_h_features():
    torch.manual_seed(0)
    net = trained_like(DiffLI2D(**TINY)).eval()
    x, h1, h2 = torch.rand(1, 3, 64, 64), torch.randn(1, 16, 2, 2), torch.randn(1, 16, 2, 2)
    with torch.no_grad():
        ref = net(x, h1, h2)
        assert not torch.allclose(net(x, h1 + 1, h2), ref)
        assert not torch.allclose(net(x, h1, h2 + 1), ref)


def test_cim_equals_multi_head_cross_attention_written_out():
    torch.manual_seed(0)
    cim = trained_like(ContentIntegration(num_feat=8, h_channels=16, num_heads=2))
    feat, h = torch.randn(1, 8, 5, 6), torch.randn(1, 16, 2, 3)
    hp = torch.einsum('oc,bchw->bohw', cim.proj_h.weight[..., 0, 0], h) + cim.proj_h.bias[:, None, None]

    def conv1x1(layer, x):
        return torch.einsum('oc,bnc->bno', layer.weight[..., 0, 0], x) + layer.bias

    q = conv1x1(cim.to_q, feat.flatten(2).transpose(1, 2))  # (1, 30, 8): one query per feature position
    k = conv1x1(cim.to_k, hp.flatten(2).transpose(1, 2))  # (1, 6, 8): keys only at the h positions
    v = conv1x1(cim.to_v, hp.flatten(2).transpose(1, 2))
    heads = []
    for i in range(2):
        sl = slice(4 * i, 4 * i + 4)
        attn = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(4), dim=-1)
        heads.append(attn @ v[..., sl])
    out = conv1x1(cim.to_out, torch.cat(heads, -1))
    expected = feat + out.transpose(1, 2).reshape(1, 8, 5, 6)
    torch.testing.assert_close(cim(feat, h), expected, rtol=1e-5, atol=1e-5)


def test_cim_queries_are_per_position():
    torch.manual_seed(0)
    cim = trained_like(ContentIntegration(num_feat=8, h_channels=16, num_heads=2))
    feat, h = torch.randn(1, 8, 6, 6), torch.randn(1, 16, 2, 2)
    poked = feat.clone()
    poked[..., 2, 3] += 1
    changed = (cim(poked, h) - cim(feat, h)).abs().sum(1)[0] > 1e-6
    assert changed[2, 3] and changed.sum() == 1


def test_hae_equals_sft_and_channel_gate_written_out():
    torch.manual_seed(0)
    hae = trained_like(HazeAwareEnhancement(num_feat=8, h_channels=16))
    feat, h = torch.randn(2, 8, 8, 8), torch.randn(2, 16, 2, 2)
    h_up = torch.nn.functional.interpolate(h, size=(8, 8), mode='bilinear', align_corners=False)  # h first, then W
    gamma = torch.nn.functional.conv2d(h_up, hae.to_gamma.weight, hae.to_gamma.bias)
    beta = torch.nn.functional.conv2d(h_up, hae.to_beta.weight, hae.to_beta.bias)
    modulated = gamma * feat + beta  # Eq. 7
    gate = torch.sigmoid(modulated.mean((2, 3)) @ hae.gate.weight.T + hae.gate.bias)  # Eq. 8
    torch.testing.assert_close(hae(feat, h), gate[..., None, None] * modulated + feat, rtol=1e-5, atol=1e-5)


def test_wrong_h_size_is_explained():
    net = DiffLI2D(**TINY)
    with pytest.raises(ValueError, match=r'h_t1 is \(4, 4\).*expected \(2, 2\)'):
        net(torch.rand(1, 3, 64, 64), torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 2))


@pytest.mark.parametrize('kwargs, match', [
    ({'cim': 'mlp'}, "cim='mlp'"),
    ({'num_enc_blocks': (1, 1)}, 'num_enc_blocks needs 3'),
    ({'num_heads': (3, 2, 4, 8)}, 'not divisible by its num_heads 3'),
])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffLI2D(**{**TINY, **kwargs})


_CIM_MEMORY = """
import resource, torch
from difflid.archs.difflid_arch import ContentIntegration
torch.set_grad_enabled(False)
cim = ContentIntegration(num_feat=8, h_channels=16, num_heads=1)
feat, h = torch.randn(1, 8, 1024, 1024), torch.randn(1, 16, 32, 32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cim(feat, h)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20)
"""


@pytest.mark.slow
def test_cim_never_materialises_the_attention_matrix():
    import subprocess
    import sys

    # 1M queries x 1024 keys: the attention matrix alone would be 4 GiB
    out = subprocess.run([sys.executable, '-c', _CIM_MEMORY], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.split()[-1]) < 1.0  # GiB of extra peak memory
