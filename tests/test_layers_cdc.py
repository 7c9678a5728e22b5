"""Leaf-layer tests for central-difference convolution, ECA, the prompt bypass and the prompt generator."""
import pytest
import torch
import torch.nn.functional as F

from modeling_bigmoe.layers_cdc import (
    BigMoeConvPromptBypass,
    BigMoeECA,
    BigMoePromptGenerator,
    CentralDifferenceConv2d,
    map_to_tokens,
    tokens_to_map,
)
from modeling_bigmoe.layers_peer import quick_gelu


def test_cdc_theta_zero_is_plain_conv():
    cdc = CentralDifferenceConv2d(4, 5, theta=0.0)
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(cdc(x), F.conv2d(x, cdc.weight, padding=1))


@pytest.mark.parametrize("theta", [0.3, 0.7, 1.0])
@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (5, 1, 2), (1, 1, 0)])
def test_cdc_equals_formula(theta, kernel, stride, padding):
    cdc = CentralDifferenceConv2d(3, 4, kernel_size=kernel, stride=stride, padding=padding, theta=theta)
    x = torch.randn(2, 3, 11, 11)
    plain = F.conv2d(x, cdc.weight, stride=stride, padding=padding)
    diff = F.conv2d(x, cdc.weight.sum((2, 3), keepdim=True), stride=stride)
    torch.testing.assert_close(cdc(x), plain - theta * diff, rtol=1e-5, atol=1e-5)


def test_cdc_on_constant_image_is_scaled_by_one_minus_theta():
    """Away from the border a constant input sees (1 - theta) * sum(W)."""
    cdc = CentralDifferenceConv2d(1, 1, theta=0.7)
    y = cdc(torch.ones(1, 1, 6, 6))
    torch.testing.assert_close(y[..., 1:-1, 1:-1], torch.full((1, 1, 4, 4), 0.3 * float(cdc.weight.sum())))


def test_cdc_bad_input():
    with pytest.raises(ValueError, match="theta"):
        CentralDifferenceConv2d(1, 1, theta=1.5)
    with pytest.raises(ValueError, match="padding"):
        CentralDifferenceConv2d(1, 1, kernel_size=3, padding=0)
    with pytest.raises(ValueError, match="expected"):
        CentralDifferenceConv2d(3, 1)(torch.randn(1, 2, 4, 4))


def test_token_map_round_trip_and_legacy_transpose():
    g = 4
    tokens = torch.randn(2, g * g, 3)
    fmap = tokens_to_map(tokens, g)
    assert torch.equal(map_to_tokens(fmap), tokens)
    # row-major: token (row i, col j) lands at map[:, :, i, j]
    assert torch.equal(fmap[0, :, 1, 2], tokens[0, 1 * g + 2])
    legacy = tokens_to_map(tokens, g, legacy_transpose=True)
    assert torch.equal(legacy, fmap.transpose(2, 3))
    once = map_to_tokens(legacy)
    assert not torch.equal(once, tokens)
    assert torch.equal(map_to_tokens(tokens_to_map(once, g, legacy_transpose=True)), tokens)
    with pytest.raises(ValueError, match="tokens"):
        tokens_to_map(torch.randn(1, 15, 3), 4)


def test_eca_formula():
    eca = BigMoeECA(3)
    x = torch.randn(2, 6, 4, 4)
    pooled = x.mean((2, 3))
    w = eca.conv.weight.view(3)
    padded = F.pad(pooled, (1, 1))
    attn = torch.sigmoid(w[0] * padded[:, :-2] + w[1] * padded[:, 1:-1] + w[2] * padded[:, 2:])
    torch.testing.assert_close(eca(x), x * attn[:, :, None, None])


def test_cpb_formula():
    torch.manual_seed(0)
    cpb = BigMoeConvPromptBypass(gate_dim=4, prompt_dim=6, dropout=0.0)
    gm, pm = torch.randn(2, 4, 3, 3), torch.randn(2, 6, 3, 3)
    g = quick_gelu(cpb.gate_conv(gm))
    p = quick_gelu(cpb.prompt_conv(pm))
    expected = quick_gelu(cpb.out_conv(cpb.eca(torch.cat([p, g], 1))))
    torch.testing.assert_close(cpb(gm, pm), expected)
    assert cpb(gm, pm).shape == (2, 6, 3, 3)


def test_prompt_generator_picks_modality_prompt_per_sample():
    torch.manual_seed(0)
    gen = BigMoePromptGenerator(image_size=16, patch_size=8, prompt_dim=5)
    with torch.no_grad():
        gen.modality_prompts.copy_(torch.arange(8.0).view(8, 1, 1, 1).expand_as(gen.modality_prompts))
    images = torch.randn(3, 9, 16, 16)
    codes = torch.tensor([0, 5, 7])
    out = gen(images, codes)
    assert out.shape == (3, 5, 2, 2)
    for i, code in enumerate(codes.tolist()):
        p_c = quick_gelu(gen.image_cdc(images[i:i + 1]))
        p_m = torch.full((1, 3, 16, 16), float(code))
        ref = gen.patch_proj(torch.cat([p_c, p_m, gen.task_prompt], 1))
        torch.testing.assert_close(out[i:i + 1], ref)


def test_prompt_generator_bad_input():
    gen = BigMoePromptGenerator(image_size=16, patch_size=8)
    with pytest.raises(ValueError, match="images"):
        gen(torch.randn(1, 6, 16, 16), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="modality_code"):
        gen(torch.randn(2, 9, 16, 16), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple"):
        BigMoePromptGenerator(image_size=20, patch_size=8)


def test_reference_parameter_counts():
    """Spec §7: CPB ≈ 120 k per block; prompt generator ≈ 1.50 M."""
    cpb = sum(p.numel() for p in BigMoeConvPromptBypass().parameters())
    assert cpb == 16 * 64 * 9 + 64 * 64 * 9 + 128 * 64 * 9 + 3
    gen = sum(p.numel() for p in BigMoePromptGenerator().parameters())
    assert gen == 9 * 3 * 9 + 9 * 3 * 224 * 224 + 9 * 64 * 256 + 64
    assert abs(gen - 1.50e6) / 1.5e6 < 0.03


def test_small_map_conv2d_matches_conv2d():
    """Batch-1 float32 maps go to oneDNN without autograd (same values to float rounding); with autograd, for
    larger batches and under autocast it is F.conv2d itself."""
    from modeling_bigmoe.layers_cdc import _small_map_conv2d

    torch.manual_seed(14)
    x, w = torch.randn(1, 80, 14, 14), torch.randn(128, 80, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(_small_map_conv2d(x, w, 1), F.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-4)
        xb = torch.randn(2, 80, 14, 14)
        assert torch.equal(_small_map_conv2d(xb, w, 1), F.conv2d(xb, w, padding=1))
    wg = w.clone().requires_grad_(True)
    y = _small_map_conv2d(x, wg, 1)
    assert y.grad_fn is not None
    assert torch.equal(y.detach(), F.conv2d(x, w, padding=1))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert _small_map_conv2d(x, w, 1).dtype == torch.bfloat16
