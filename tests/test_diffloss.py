import copy
import shutil
import subprocess
import sys

import pytest
import torch
from basicsr.losses import build_loss
from basicsr.models import build_model
from torch import nn
from torch.nn import functional as F

from difflid.losses.diffloss_loss import DiffLoss
from difflid.priors.adm_unet_arch import ADMUNet
from difflid.utils.padding import pad_to_multiple
from tests.conftest import REPO_ROOT, write_pairs
from tests.test_difflid_model import make_opt

TINY = dict(unet='adm_tiny', random_weights=True)


def _restorer():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 3, 3, padding=1))


def _pair():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 32, 32, generator=gen), torch.rand(2, 3, 32, 32, generator=gen)


@pytest.mark.parametrize('weights', [{'eps_weight': 1.0, 'h_weight': 0}, {'eps_weight': 0, 'h_weight': 1.0}])
def test_each_term_alone_trains_the_network_and_never_the_unet(weights):
    loss = DiffLoss(**TINY, **weights)
    assert isinstance(loss.prior.unet, ADMUNet) and loss.prior.unet.encoder_only == (weights['eps_weight'] == 0)
    unet_before = copy.deepcopy(loss.prior.unet.state_dict())
    net = _restorer()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    lq, gt = _pair()
    l_eps, l_h = loss(net(lq), gt)
    assert (l_eps is None) == (weights['eps_weight'] == 0) and (l_h is None) == (weights['h_weight'] == 0)
    (l_eps if l_eps is not None else l_h).backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, f'no gradient reached {missing}'
    optimizer.step()
    assert all(p.grad is None and not p.requires_grad for p in loss.prior.unet.parameters())
    torch.testing.assert_close(loss.prior.unet.state_dict(), unet_before, rtol=0, atol=0)


def test_zero_when_restored_equals_gt():
    loss = DiffLoss(**TINY)
    _, gt = _pair()
    l_eps, l_h = loss(gt.clone(), gt)
    assert l_eps.item() == 0 and l_h.item() == 0


def test_t_and_noise_are_shared_and_the_value_matches_separate_passes(monkeypatch):
    loss = DiffLoss(**TINY, eps_weight=1e-3, h_weight=1e-6, t_range=(100, 900))
    restored, gt = _pair()
    restored.requires_grad_(True)
    seen = []
    original = loss.prior.unet.forward_with_hspace

    def spy(x, t):
        seen.append((x, t, torch.is_grad_enabled()))
        return original(x, t)

    monkeypatch.setattr(loss.prior.unet, 'forward_with_hspace', spy)
    torch.manual_seed(5)
    l_eps, l_h = loss(restored, gt)
    (gt_t, t_gt, gt_graph), (restored_t, t, restored_graph) = seen
    assert not gt_graph and restored_graph  # the target branch builds no autograd graph
    assert torch.equal(t, t_gt) and ((100 <= t) & (t <= 900)).all()
    scale = loss.alphas_cumprod[t].sqrt().float()[:, None, None, None]
    torch.testing.assert_close(restored_t - gt_t, scale * 2 * (restored - gt), rtol=1e-4, atol=1e-5)  # ε cancels
    # independently: redraw the same t and ε, run the two branches separately
    torch.manual_seed(5)
    t2 = torch.randint(100, 901, (2,))
    eps = torch.randn(2, 3, 32, 32)
    a = loss.alphas_cumprod[t2].float()[:, None, None, None]
    with torch.no_grad():
        outs = [original(a.sqrt() * (2 * img - 1) + (1 - a).sqrt() * eps, t2) for img in (restored, gt)]
    torch.testing.assert_close(l_eps, 1e-3 * F.mse_loss(outs[0][0][:, :3], outs[1][0][:, :3]), rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(l_h, 1e-6 * F.mse_loss(outs[0][1], outs[1][1]), rtol=1e-4, atol=1e-12)


def test_padding_is_excluded_from_both_terms():
    # 45 x 70 pads to 64 x 96: ε̂ is compared on the 45 x 70 image only; h cells (32 px) are weighted by the
    # share of the image they cover: rows 1 and 13/32, columns 1, 1 and 6/32. Computed here by hand.
    loss = DiffLoss(**TINY, eps_weight=1.0, h_weight=1.0)
    gen = torch.Generator().manual_seed(2)
    restored, gt = torch.rand(1, 3, 45, 70, generator=gen), torch.rand(1, 3, 45, 70, generator=gen)
    torch.manual_seed(4)
    l_eps, l_h = loss(restored, gt)
    torch.manual_seed(4)
    t = torch.randint(0, 1000, (1,))
    eps = torch.randn(1, 3, 64, 96)
    a = loss.alphas_cumprod[t].float()[:, None, None, None]
    unet = loss.prior.unet
    with torch.no_grad():
        outs = [unet.forward_with_hspace(a.sqrt() * (2 * pad_to_multiple(img, 32) - 1) + (1 - a).sqrt() * eps, t)
                for img in (restored, gt)]
    eps_diff = (outs[0][0][:, :3] - outs[1][0][:, :3])[..., :45, :70]
    torch.testing.assert_close(l_eps, eps_diff.square().mean(), rtol=1e-4, atol=1e-9)
    cell = (outs[0][1] - outs[1][1]).square().mean(dim=(0, 1))
    weight = torch.tensor([1, 13 / 32])[:, None] * torch.tensor([1, 1, 6 / 32])[None]
    torch.testing.assert_close(l_h, (cell * weight).sum() / weight.sum(), rtol=1e-4, atol=1e-12)
    assert not torch.isclose(l_h, cell.mean(), rtol=1e-3)  # the padded border would have counted fully


def _saved_bytes(fn) -> int:
    """Bytes of the distinct tensors that autograd keeps for the backward pass while ``fn`` runs."""
    seen = {}

    def pack(tensor):
        seen[(tensor.untyped_storage().data_ptr(), tensor.dtype)] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(seen.values())


def test_the_target_branch_keeps_no_activations():
    # What backward needs is the restored branch's activations; the GT branch is a constant target. The
    # reference: one graph-building pass of the restored images alone through the same UNet.
    loss = DiffLoss(**TINY, eps_weight=1.0, h_weight=1.0)
    restored, gt = _pair()
    restored.requires_grad_(True)
    t = torch.tensor([10, 700])
    kept = _saved_bytes(lambda: loss(restored, gt))
    one_branch = _saved_bytes(lambda: loss.prior.unet.forward_with_hspace(restored * 2 - 1, t))
    assert kept < 1.1 * one_branch, f'DiffLoss keeps {kept / one_branch:.2f}x the activations of one branch'


def test_an_enclosing_autocast_reaches_the_unet():
    loss = DiffLoss(**TINY)  # dtype fp32: it must not switch the caller's bf16 autocast off
    dtypes = []
    loss.prior.unet.input_blocks[0][0].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    restored, gt = _pair()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        l_eps, l_h = loss(restored, gt)
    assert dtypes == [torch.bfloat16, torch.bfloat16] and l_eps.dtype == l_h.dtype == torch.float32


def test_gradient_checkpointing_gives_the_same_gradient():
    grads = []
    for use_checkpoint in (False, True):
        net = _restorer()
        lq, gt = _pair()
        torch.manual_seed(3)
        l_eps, l_h = DiffLoss(**TINY, eps_weight=1.0, h_weight=1.0, use_checkpoint=use_checkpoint)(net(lq), gt)
        (l_eps + l_h).backward()
        grads.append(net[0].weight.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize('kwargs, match', [
    ({'eps_weight': 0, 'h_weight': 0}, 'not both 0'),
    ({'t_range': (500, 1000)}, 't_range'),
    ({'dtype': 'fp16'}, 'dtype'),
])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffLoss(**TINY, **kwargs)
    with pytest.raises(ValueError, match='checkpoint'):
        DiffLoss()


def test_registered_and_built_from_options():
    loss = build_loss({'type': 'DiffLoss', **TINY, 'h_weight': 0})
    assert isinstance(loss, DiffLoss) and loss.prior.unet.encoder_only is False


def test_difflid_model_shares_its_prior_with_diffloss(tmp_path):
    opt = make_opt(tmp_path)
    opt['train']['diff_opt'] = {'type': 'DiffLoss', **TINY, 'eps_weight': 1e-3, 'h_weight': 1e-6}
    model = build_model(opt)
    assert model.cri_diff.prior.unet is model.prior.unet and not model.prior.unet.encoder_only
    gen = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 3, 32, 32, generator=gen)
    model.feed_data({'lq': gt * 0.6 + 0.3, 'gt': gt})
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_pix', 'l_diff_eps', 'l_diff_h'}
    assert all(p.grad is None for p in model.prior.parameters())
    opt = make_opt(tmp_path)
    opt['train']['diff_opt'] = {'type': 'DiffLoss', **TINY, 'init_seed': 7}  # other weights: its own UNet
    model = build_model(opt)
    assert model.cri_diff.prior.unet is not model.prior.unet and model.prior.unet.encoder_only
    opt['train']['diff_opt'] = {'type': 'DiffLoss', **TINY, 'eps_wieght': 1}
    with pytest.raises(KeyError, match='eps_wieght'):
        build_model(opt)


EXAMPLE = """
_base_: {base}
name: {name}
network_prior: {{unet: adm_tiny, checkpoint: ~, random_weights: true}}
network_g: {network_g}
datasets:
  _delete_: true
  train: {{name: toy, type: PairedImageDataset, dataroot_gt: {data}/gt, dataroot_lq: {data}/lq, filename_tmpl: '{{}}',
          io_backend: {{type: disk}}, gt_size: 32, use_hflip: true, use_rot: false, num_worker_per_gpu: 0,
          batch_size_per_gpu: 2, dataset_enlarge_ratio: 1, prefetch_mode: ~}}
  val: {{name: toy_val, type: PairedImageDataset, dataroot_gt: {data}/gt, dataroot_lq: {data}/lq,
        io_backend: {{type: disk}}}}
num_gpu: 0
train:
  total_iter: 3
  diff_opt: {{unet: adm_tiny, checkpoint: ~, random_weights: true, dtype: fp32}}
val: {{val_freq: 3}}
logger: {{print_freq: 1, save_checkpoint_freq: 3, use_tb_logger: false}}
"""


@pytest.mark.slow
@pytest.mark.parametrize('example, network_g, shared', [
    ('dehaze_its_diffloss', '{h_channels: 64, num_feat: 8, num_heads: [1, 2, 2, 4]}', True),
    ('dense_haze_edsr_diffloss', '{num_feat: 8, num_block: 1}', False),
])
def test_example_options_train_three_iterations(tmp_path, example, network_g, shared):
    shutil.copytree(REPO_ROOT / 'tools', tmp_path / 'tools')
    write_pairs(tmp_path / 'data', 3, size=(40, 48))
    text = EXAMPLE.format(base=REPO_ROOT / 'options' / f'{example}.yml', name=example, network_g=network_g,
                          data=tmp_path / 'data')
    if not shared:  # the EDSR file has no prior block to override
        text = text.replace('network_prior: {unet: adm_tiny, checkpoint: ~, random_weights: true}\n', '')
    (tmp_path / 'run.yml').write_text(text)
    proc = subprocess.run([sys.executable, 'tools/train.py', '-opt', 'run.yml'], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = ''.join(p.read_text() for p in (tmp_path / 'experiments' / example).glob('train_*.log'))
    assert 'l_diff_eps' in log and 'l_diff_h' in log and 'iter:       3' in log
    assert ("DiffLoss uses the frozen prior's network" in log) == shared
