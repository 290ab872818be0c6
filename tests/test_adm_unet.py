import math

import pytest
import torch

from difflid.priors.adm_unet_arch import ADM_PRESETS, ADMUNet, AttentionBlock, adm_flags, timestep_embedding

guided_script_util = pytest.importorskip('guided_diffusion.script_util', reason='reference: pip install -e .[dev]')

TINY = ADM_PRESETS['adm_tiny']
VARIANTS = {
    'tiny': {},
    'new_attention_order': {'use_new_attention_order': True},
    'conv_resample_no_scale_shift': {'resblock_updown': False, 'use_scale_shift_norm': False},
    'class_cond_3_channels_num_heads': {'class_cond': True, 'learn_sigma': False, 'num_head_channels': -1,
                                        'num_heads': 2},
}


def _randomised_reference(flags: dict) -> torch.nn.Module:
    """guided-diffusion's own UNet with its zero-initialised layers made non-zero, so every path counts."""
    ref = guided_script_util.create_model(**flags).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return ref


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_full_and_hspace_outputs_equal_guided_diffusion(variant):
    torch.manual_seed(0)
    flags = {**TINY, **VARIANTS[variant]}
    ref = _randomised_reference(flags)
    ours = ADMUNet(**flags).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, t = torch.randn(2, 3, 64, 96), torch.tensor([0, 500])
    y = torch.tensor([3, 999]) if flags['class_cond'] else None
    middle = []
    ref.middle_block.register_forward_hook(lambda module, inputs, output: middle.append(output))
    with torch.no_grad():
        expected = ref(x, t, y=y)
        out, h = ours(x, t, y), ours.forward_hspace(x, t, y)
    assert out.shape == (2, 6 if flags['learn_sigma'] else 3, 64, 96)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h, middle[0], rtol=1e-4, atol=1e-4)


def test_adm256_uncond_has_the_official_layout():
    with torch.device('meta'):
        ours = ADMUNet(**adm_flags('adm256_uncond'))
        ref = guided_script_util.create_model(**ADM_PRESETS['adm256_uncond'])
        encoder = ADMUNet(**adm_flags('adm256_uncond'), encoder_only=True)
    state = ours.state_dict()
    assert len(state) == 566
    assert sum(p.numel() for p in ours.parameters()) == 552_814_086
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert len(encoder.state_dict()) == 242
    assert sum(p.numel() for p in encoder.parameters()) == 210_904_064
    assert ours.hspace_channels == 1024 and ours.downsample_factor == 32
    assert state['middle_block.1.qkv.weight'].shape == (3072, 1024, 1)
    assert state['middle_block.0.emb_layers.1.weight'].shape == (2048, 1024)
    # round trip: a strict load of the full 566-tensor layout, into the full and the encoder-only model
    with torch.device('meta'):
        again = ADMUNet(**adm_flags('adm256_uncond'))
    again.load_state_dict(state, strict=True, assign=True)
    encoder.load_state_dict(state, strict=True, assign=True)


def test_forward_hspace_is_the_middle_block_of_the_full_forward():
    torch.manual_seed(0)
    net = ADMUNet(**TINY).eval()
    middle = []
    net.middle_block.register_forward_hook(lambda module, inputs, output: middle.append(output))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        net(x, 250)
        h = net.forward_hspace(x, 250)
    assert h.shape == (1, 64, 2, 2)
    torch.testing.assert_close(h, middle[0], rtol=0, atol=0)


def test_encoder_only_skips_the_decoder_and_equals_the_full_model():
    torch.manual_seed(0)
    full = ADMUNet(**TINY).eval()
    encoder = ADMUNet(**TINY, encoder_only=True).eval()
    assert not hasattr(encoder, 'output_blocks') and not hasattr(encoder, 'out')
    encoder.load_state_dict(full.state_dict(), strict=True)
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(encoder.forward_hspace(x, 500), full.forward_hspace(x, 500), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match='encoder_only'):
        encoder(x, 500)


def test_encoder_only_load_still_checks_encoder_keys():
    full_state = ADMUNet(**TINY).state_dict()
    encoder = ADMUNet(**TINY, encoder_only=True)
    missing = {k: v for k, v in full_state.items() if k != 'middle_block.1.qkv.weight'}
    with pytest.raises(RuntimeError, match='middle_block.1.qkv.weight'):
        encoder.load_state_dict(missing)
    with pytest.raises(RuntimeError, match='label_emb.weight'):
        encoder.load_state_dict({**full_state, 'label_emb.weight': torch.zeros(1000, 128)})


def test_sdpa_attention_equals_the_legacy_formulation():
    torch.manual_seed(0)
    block = AttentionBlock(64, num_head_channels=16)
    x = torch.randn(2, 64, 5, 7)
    b, c, t, heads, d = 2, 64, 35, 4, 16
    # guided-diffusion's legacy QKV attention, written out: heads split before q/k/v, q and k scaled by d^-1/4
    qkv = block.qkv(block.norm(x.reshape(b, c, t)))
    q, k, v = qkv.reshape(b * heads, 3 * d, t).split(d, dim=1)
    scale = 1 / math.sqrt(math.sqrt(d))
    weight = torch.softmax(torch.einsum('bct,bcs->bts', q * scale, k * scale), dim=-1)
    attended = torch.einsum('bts,bcs->bct', weight, v).reshape(b, c, t)
    expected = (x.reshape(b, c, t) + block.proj_out(attended)).reshape(x.shape)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_timestep_embedding_is_cosine_first():
    t = torch.tensor([0, 1, 500])
    emb = timestep_embedding(t, 8)
    freqs = [10000 ** (-i / 4) for i in range(4)]
    expected = torch.tensor([[math.cos(s * f) for f in freqs] + [math.sin(s * f) for f in freqs] for s in (0, 1, 500)])
    torch.testing.assert_close(emb, expected)


def test_integer_timestep_changes_the_features():
    torch.manual_seed(0)
    net = ADMUNet(**TINY, encoder_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        h0, h500, h0_again = net.forward_hspace(x, 0), net.forward_hspace(x, 500), net.forward_hspace(x, 0)
    assert not torch.allclose(h0, h500, atol=1e-3)
    torch.testing.assert_close(h0, h0_again, rtol=0, atol=0)


def test_gradient_checkpointing_works_with_frozen_parameters():
    torch.manual_seed(0)
    plain = ADMUNet(**TINY).eval().requires_grad_(False)
    ckpt = ADMUNet(**TINY, use_checkpoint=True).eval().requires_grad_(False)
    ckpt.load_state_dict(plain.state_dict())
    grads = []
    for net in (plain, ckpt):
        x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
        (net(x, 100).square().mean() + net.forward_hspace(x, 100).mean()).backward()
        grads.append(x.grad)
    scale = float(grads[0].abs().max())
    assert scale > 0
    # multi-threaded reductions may sum in another order in the recomputation: agree to 1e-4 of the largest
    # gradient (a branch missing from the recomputation would differ by O(1) of it)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-4 * scale)
    assert all(p.grad is None for p in ckpt.parameters())


def test_bf16_autocast_stays_close_to_fp32():
    torch.manual_seed(0)
    net = ADMUNet(**TINY, encoder_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = net.forward_hspace(x, 500)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = net.forward_hspace(x, 500).float()
    assert ((low - ref).norm() / ref.norm()) < 3e-2


def test_use_fp16_runs_in_half_precision_and_returns_the_input_dtype():
    torch.manual_seed(0)
    ref = ADMUNet(**TINY).eval()
    half = ADMUNet(**TINY, use_fp16=True).eval()
    half.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, out = ref(x, 10), half(x, 10)
    assert out.dtype == torch.float32 and half.forward_hspace(x, 10).dtype == torch.float32
    assert 0 < ((out - expected).norm() / expected.norm()) < 1e-2  # fp16 rounding, nothing worse


def test_full_forward_rejects_sizes_it_cannot_decode():
    net = ADMUNet(**TINY).eval()
    with pytest.raises(ValueError, match='divisible by 32'):
        net(torch.randn(1, 3, 40, 64), 0)


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match='adm256_uncond'):
        adm_flags('adm512')
