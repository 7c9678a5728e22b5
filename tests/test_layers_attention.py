"""Leaf-layer tests for MD2A (differential attention), its RMSNorm and the batch reorganisation."""
import math

import pytest
import torch

from modeling_bigmoe.layers_attention import (
    MmdaDifferentialAttention,
    MmdaRMSNorm,
    lambda_init_fn,
    reorganise_by_domain,
)


def _hand_attention(x, wq, wk, wv, heads, scale):
    """Ordinary multi-head attention written out per sample and head: (b, n, d) -> (b, n, d)."""
    b, n, d = x.shape
    e = d // heads
    out = torch.zeros(b, n, d)
    for bi in range(b):
        q, k, v = x[bi] @ wq.T, x[bi] @ wk.T, x[bi] @ wv.T
        for h in range(heads):
            sl = slice(h * e, (h + 1) * e)
            a = torch.softmax(q[:, sl] @ k[:, sl].T * scale, dim=-1)
            out[bi, :, sl] = a @ v[:, sl]
    return out


def _hand_attn_map(x, wq, wk, heads, scale):
    b, n, d = x.shape
    e = d // heads
    maps = torch.zeros(b, heads, n, n)
    for bi in range(b):
        q, k = x[bi] @ wq.T, x[bi] @ wk.T
        for h in range(heads):
            sl = slice(h * e, (h + 1) * e)
            maps[bi, h] = torch.softmax(q[:, sl] @ k[:, sl].T * scale, dim=-1)
    return maps


def _hand_rmsnorm(x, weight, eps):
    return x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + eps) * weight


def test_lambda_init_values():
    assert lambda_init_fn(12) == pytest.approx(0.8 - 0.6 * math.exp(-3.6))
    assert lambda_init_fn(12) == pytest.approx(0.783606, abs=1e-6)
    assert lambda_init_fn(0) == pytest.approx(0.2)
    attn = MmdaDifferentialAttention(16, heads=2)
    assert attn.lambda_init == pytest.approx(0.783606, abs=1e-6)
    depth3 = MmdaDifferentialAttention(16, heads=2, depth=3)
    assert depth3.lambda_init == pytest.approx(0.8 - 0.6 * math.exp(-0.9))
    assert MmdaDifferentialAttention(16, heads=2, lambda_init=0.5).lambda_init == 0.5


def test_lambda_reparameterisation_formula():
    attn = MmdaDifferentialAttention(4, heads=2)
    with torch.no_grad():
        attn.lambda_q1.copy_(torch.tensor([0.5, 1.0, 0.0, 0.0]))
        attn.lambda_k1.copy_(torch.tensor([0.4, -0.1, 3.0, 0.0]))  # dot 0.1
        attn.lambda_q2.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0]))
        attn.lambda_k2.copy_(torch.tensor([-0.1, -0.1, -0.1, 0.0]))  # dot -0.3
    expected = math.exp(0.1) - math.exp(-0.3) + attn.lambda_init
    assert attn.lambda_full().item() == pytest.approx(expected, rel=1e-6)


def test_lambda_vectors_init_std():
    torch.manual_seed(0)
    attn = MmdaDifferentialAttention(512, heads=16)
    for vec in (attn.lambda_q1, attn.lambda_k1, attn.lambda_q2, attn.lambda_k2):
        assert vec.shape == (512,)
        assert vec.std().item() == pytest.approx(0.1, rel=0.15)
        assert abs(vec.mean().item()) < 0.02


def test_lambda_zero_is_ordinary_attention_then_rmsnorm_scaled():
    torch.manual_seed(1)
    d, heads = 16, 2
    attn = MmdaDifferentialAttention(d, heads=heads).eval()
    li = attn.lambda_init
    with torch.no_grad():
        # exp(log(1 - li)) - exp(0) + li = 0
        attn.lambda_q1.zero_()
        attn.lambda_q1[0] = math.log(1 - li)
        attn.lambda_k1.zero_()
        attn.lambda_k1[0] = 1.0
        attn.lambda_q2.zero_()
        attn.lambda_k2.zero_()
        attn.norm.weight.copy_(torch.rand(d) + 0.5)
    assert abs(attn.lambda_full().item()) < 1e-6
    x, x_dom = torch.randn(3, 3, d), torch.randn(3, 3, d)
    plain = _hand_attention(x, attn.to_q.weight, attn.to_k.weight, attn.to_v.weight, heads, 1 / math.sqrt(d))
    expected = _hand_rmsnorm(plain, attn.norm.weight, attn.norm.eps) * (1 - li)
    torch.testing.assert_close(attn(x, x_dom), expected, rtol=1e-5, atol=1e-5)


def test_differential_attention_matches_brute_force():
    torch.manual_seed(2)
    d, heads = 16, 2
    attn = MmdaDifferentialAttention(d, heads=heads).eval()
    x, x_dom = torch.randn(2, 3, d), torch.randn(2, 3, d)
    scale = 1 / math.sqrt(d)  # whole width, not head_dim
    lam = attn.lambda_full().item()
    a1 = _hand_attn_map(x, attn.to_q.weight, attn.to_k.weight, heads, scale)
    a2 = _hand_attn_map(x_dom, attn.to_q_dom.weight, attn.to_k_dom.weight, heads, scale)
    diff = a1 - lam * a2
    v = x @ attn.to_v.weight.T
    e = d // heads
    out = torch.zeros(2, 3, d)
    for h in range(heads):
        out[..., h * e:(h + 1) * e] = diff[:, h] @ v[..., h * e:(h + 1) * e]
    expected = _hand_rmsnorm(out, attn.norm.weight, attn.norm.eps) * (1 - attn.lambda_init)
    got, got_map = attn(x, x_dom, return_attention=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_map, diff, rtol=1e-5, atol=1e-6)
    # without x_dom the domain map is computed from x itself
    torch.testing.assert_close(attn(x), attn(x, x))


def test_attention_dropout_active_in_training_only():
    torch.manual_seed(3)
    attn = MmdaDifferentialAttention(16, heads=2, dropout=0.5)
    x = torch.randn(2, 3, 16)
    attn.train()
    assert not torch.allclose(attn(x), attn(x))
    attn.eval()
    torch.testing.assert_close(attn(x), attn(x))


def test_rmsnorm_values():
    norm = MmdaRMSNorm(4, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 1.0, 0.5]))
    x = torch.tensor([[1.0, -1.0, 3.0, 1.0]])  # mean square 3
    expected = x / math.sqrt(3 + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    with pytest.raises(ValueError, match="last dim must be 4"):
        norm(torch.randn(2, 5))


def test_reorganise_without_labels_is_identity():
    x = torch.randn(4, 3, 8)
    assert reorganise_by_domain(x, None) is x


def test_reorganise_picks_first_same_domain_sample():
    x = torch.arange(5.0).view(5, 1, 1).expand(5, 3, 2).clone()
    labels = torch.tensor([2, 0, 2, 1, 0])
    got = reorganise_by_domain(x, labels)
    assert got[:, 0, 0].tolist() == [0.0, 1.0, 0.0, 3.0, 1.0]
    torch.testing.assert_close(got, x[[0, 1, 0, 3, 1]])
    # hashable labels (dataset names) work the same way
    got_str = reorganise_by_domain(x, ["C", "P", "C", "S", "P"])
    torch.testing.assert_close(got_str, got)
    # all distinct domains: every sample is its own first
    torch.testing.assert_close(reorganise_by_domain(x, torch.arange(5)), x)


def test_reorganise_gradient_flows_to_source_sample():
    x = torch.randn(3, 2, 4, requires_grad=True)
    reorganise_by_domain(x, torch.tensor([7, 7, 7])).sum().backward()
    assert torch.equal(x.grad[0], torch.full((2, 4), 3.0))
    assert torch.equal(x.grad[1:], torch.zeros(2, 2, 4))


def test_reorganise_bad_labels():
    x = torch.randn(3, 2, 4)
    with pytest.raises(ValueError, match="domain_labels has 2 entries but x has batch 3"):
        reorganise_by_domain(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="1-D integer tensor"):
        reorganise_by_domain(x, torch.tensor([0.0, 1.0, 2.0]))


def test_gradients_reach_every_parameter():
    torch.manual_seed(4)
    attn = MmdaDifferentialAttention(16, heads=2)
    x, x_dom = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    (attn(x, x_dom) * torch.randn(2, 3, 16)).sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None, name
        assert float(p.grad.abs().sum()) > 0, name


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"heads \(3\) must divide dim \(16\)"):
        MmdaDifferentialAttention(16, heads=3)
    with pytest.raises(ValueError, match="dropout"):
        MmdaDifferentialAttention(16, heads=2, dropout=1.5)
    attn = MmdaDifferentialAttention(16, heads=2)
    with pytest.raises(ValueError, match=r"x must be \(b, n, 16\)"):
        attn(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="x_dom must have x's shape"):
        attn(torch.randn(2, 3, 16), torch.randn(2, 4, 16))
    with pytest.raises(ValueError, match="depth"):
        lambda_init_fn(-1)
