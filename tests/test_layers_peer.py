"""Leaf-layer tests for the product-key experts (PEER) and the isolated-gate adapter (IGMA)."""
import math
import threading

import pytest
import torch
import torch.nn.functional as F

from modeling_bigmoe.layers_peer import (
    BigMoeIsolatedGateAdapter,
    BigMoePEER,
    BigMoeRMSNorm,
    _cached_from_weights,
    quick_gelu,
    serial_small_ops,
)


def _brute_force(peer: BigMoePEER, gate: torch.Tensor):
    """Score every expert directly (s_x[i] + s_y[j] for all i, j) and keep the top k per head."""
    b, n, _ = gate.shape
    q = peer.to_queries(peer.norm_gate(gate)).view(b, n, 2, peer.heads, peer.key_dim)
    sx = torch.einsum("bnhe,hKe->bnhK", q[:, :, 0], peer.keys[:, :, 0])
    sy = torch.einsum("bnhe,hKe->bnhK", q[:, :, 1], peer.keys[:, :, 1])
    full = (sx.unsqueeze(-1) + sy.unsqueeze(-2)).flatten(-2)  # index = K * i + j
    return full.topk(peer.experts_per_head, dim=-1)


@pytest.mark.parametrize("heads,experts,per_head,topk", [(2, 1600, 2, 2), (3, 64, 3, 4), (1, 16, 1, 1)])
def test_product_key_selection_equals_brute_force(heads, experts, per_head, topk):
    torch.manual_seed(1)
    peer = BigMoePEER(12, gate_dim=10, heads=heads, num_experts=experts, experts_per_head=per_head,
                      product_key_topk=topk, key_dim=5)
    gate = torch.randn(3, 7, 10)
    scores, indices = peer.route(gate)
    ref_scores, ref_indices = _brute_force(peer, gate)
    torch.testing.assert_close(scores, ref_scores)
    assert torch.equal(indices.sort(-1).values, ref_indices.sort(-1).values)
    assert indices.shape == (3, 7, heads, per_head)
    assert int(indices.min()) >= 0 and int(indices.max()) < experts


def test_peer_output_matches_formula():
    torch.manual_seed(2)
    peer = BigMoePEER(6, gate_dim=4, heads=2, num_experts=9, experts_per_head=2, product_key_topk=2, key_dim=2)
    x, gate = torch.randn(2, 5, 6), torch.randn(2, 5, 4)
    out, idx, w = peer(x, gate, return_routing=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 5, 2))
    xh = peer.norm_x(x)
    expected = torch.zeros_like(x)
    for bi in range(2):
        for ni in range(5):
            for h in range(2):
                for k in range(2):
                    e = int(idx[bi, ni, h, k])
                    a = F.gelu(xh[bi, ni] @ peer.weight_down.weight[e])
                    expected[bi, ni] += w[bi, ni, h, k] * a * peer.weight_up.weight[e]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_gate_alone_decides_routing():
    """The router reads only the gate input: changing x leaves the routing unchanged."""
    torch.manual_seed(3)
    peer = BigMoePEER(6, gate_dim=4, num_experts=16, key_dim=2)
    gate = torch.randn(1, 4, 4)
    _, i1, w1 = peer(torch.randn(1, 4, 6), gate, return_routing=True)
    _, i2, w2 = peer(torch.randn(1, 4, 6), gate, return_routing=True)
    assert torch.equal(i1, i2) and torch.equal(w1, w2)


def test_rmsnorm_formula():
    norm = BigMoeRMSNorm(4)
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0]])
    torch.testing.assert_close(norm(x), torch.tensor([[0.6, 0.8, 0.0, 0.0]]) * 2.0)


@pytest.mark.parametrize("kwargs,field", [
    (dict(num_experts=50), "perfect square"),
    (dict(product_key_topk=1, experts_per_head=2), "experts_per_head"),
    (dict(dropout=1.5), "dropout"),
    (dict(heads=0), "heads"),
])
def test_peer_bad_arguments(kwargs, field):
    base = dict(gate_dim=4, num_experts=16, key_dim=2)
    base.update(kwargs)
    with pytest.raises(ValueError, match=field):
        BigMoePEER(6, **base)


def test_peer_bad_shapes():
    peer = BigMoePEER(6, gate_dim=4, num_experts=16, key_dim=2)
    with pytest.raises(ValueError, match="gate must be"):
        peer(torch.randn(2, 3, 6), torch.randn(2, 4, 4))


def test_igma_regrouping_and_formula():
    """C groups the three modalities' r-vectors per location; delta goes back per modality."""
    torch.manual_seed(4)
    m, n, hid, r, pd = 3, 4, 10, 2, 5
    adapter = BigMoeIsolatedGateAdapter(hid, num_modalities=m, bottleneck_dim=r, prompt_dim=pd,
                                        num_experts=16, key_dim=2, dropout=0.0).eval()
    x, prompt = torch.randn(2, m * n, hid), torch.randn(2, n, pd)
    delta, gate = adapter(x, prompt)
    assert gate.shape == (2, n, 2 * r) and delta.shape == x.shape
    # by hand
    c_tok = quick_gelu(adapter.down(x))  # (b, m*n, r)
    c = torch.cat([c_tok[:, i * n:(i + 1) * n] for i in range(m)], dim=-1)  # (b, n, m*r)
    g = torch.cat([quick_gelu(adapter.gate_fuse(c)), quick_gelu(adapter.gate_prompt(prompt))], -1)
    torch.testing.assert_close(gate, g)
    c_out = adapter.peer(c, g)
    back = torch.cat([c_out[..., i * r:(i + 1) * r] for i in range(m)], dim=1)
    torch.testing.assert_close(delta, quick_gelu(adapter.up(back)))


def test_igma_zero_up_is_identity_and_prompt_reaches_gate_only():
    torch.manual_seed(5)
    adapter = BigMoeIsolatedGateAdapter(8, bottleneck_dim=2, prompt_dim=3, num_experts=16, key_dim=2)
    adapter.reset_parameters(zero_up=True)
    x = torch.randn(1, 12, 8)
    delta, _ = adapter(x, torch.randn(1, 4, 3))
    assert torch.count_nonzero(delta) == 0
    # the prompt changes the gate, and through the routing only, the expert output
    adapter.reset_parameters()
    adapter.eval()
    p1, p2 = torch.randn(1, 4, 3), torch.randn(1, 4, 3)
    _, g1, i1, _ = adapter(x, p1, return_routing=True)
    _, g2, i2, _ = adapter(x, p2, return_routing=True)
    assert not torch.allclose(g1[..., 2:], g2[..., 2:])
    torch.testing.assert_close(g1[..., :2], g2[..., :2])  # the fused half never sees the prompt


def test_igma_bad_shapes():
    adapter = BigMoeIsolatedGateAdapter(8, bottleneck_dim=2, prompt_dim=3, num_experts=16, key_dim=2)
    with pytest.raises(ValueError, match="prompt_tokens"):
        adapter(torch.randn(1, 12, 8), torch.randn(1, 5, 3))
    with pytest.raises(ValueError, match="hidden_states"):
        adapter(torch.randn(1, 13, 8), torch.randn(1, 4, 3))


def test_reference_parameter_count():
    """Spec §7: PEER ≈ 79 k parameters per block at the reference size."""
    adapter = BigMoeIsolatedGateAdapter(768)
    peer = sum(p.numel() for p in adapter.peer.parameters())
    assert peer == 2 * 1600 * 24 + 2 * 40 * 2 * 8 + 16 * 32 + 24 + 16  # tables, keys, queries, 2 norms
    assert math.isclose(peer, 79_000, rel_tol=0.02)


def test_serial_small_ops_sets_one_thread_and_restores():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with serial_small_ops():
            assert torch.get_num_threads() == 1
            with serial_small_ops():  # nested: stays at 1, restores nothing early
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with serial_small_ops(enabled=False):
            assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="boom"):
            with serial_small_ops():
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 2  # restored on error
        # off the main thread it leaves the process-wide count alone (worker threads of a server)
        seen = []

        def worker():
            with serial_small_ops():
                seen.append(torch.get_num_threads())

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert seen == [2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def _small_igma(seed: int) -> BigMoeIsolatedGateAdapter:
    torch.manual_seed(seed)
    return BigMoeIsolatedGateAdapter(10, num_modalities=3, bottleneck_dim=2, prompt_dim=5, num_experts=16, key_dim=2,
                                     dropout=0.0).eval()


def test_igma_accumulate_into_matches_delta():
    """No grad: the fused silu path adds the same delta (1e-6) and returns the target; routing and gate unchanged."""
    adapter = _small_igma(11)
    x, prompt, base = torch.randn(2, 12, 10), torch.randn(2, 4, 5), torch.randn(2, 12, 10)
    with torch.no_grad():
        delta, gate, idx, w = adapter(x, prompt, return_routing=True)
        target = base.clone()
        out, gate2, idx2, w2 = adapter(x, prompt, return_routing=True, accumulate_into=target)
    assert out is target
    torch.testing.assert_close(target, base + delta, rtol=1e-6, atol=1e-6)
    assert torch.equal(gate, gate2) and torch.equal(idx, idx2) and torch.equal(w, w2)
    # the scaled up-projection is cached and follows an in-place weight update
    with torch.no_grad():
        adapter.up.weight.mul_(2.0)
        delta = adapter(x, prompt)[0]
        target = base.clone()
        adapter(x, prompt, accumulate_into=target)
    torch.testing.assert_close(target, base + delta, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="accumulate_into"):
        adapter(x, prompt, accumulate_into=torch.zeros(2, 11, 10))


def test_igma_accumulate_into_with_autograd_is_the_plain_sum():
    """With autograd the target gets exactly ``quick_gelu(up(.))`` added; values and gradients as ``base + delta``."""
    adapter = _small_igma(12)
    x, prompt = torch.randn(2, 12, 10), torch.randn(2, 4, 5)
    base = torch.randn(2, 13, 10, requires_grad=True)
    ref = base * 1.0
    ref = torch.cat([ref[:, :1], ref[:, 1:] + adapter(x, prompt)[0]], dim=1)
    (ref ** 2).sum().backward()
    grads = [p.grad.clone() for p in adapter.parameters()] + [base.grad.clone()]
    adapter.zero_grad()
    base.grad = None
    stream = base * 1.0
    adapter(x, prompt, accumulate_into=stream[:, 1:])
    assert torch.equal(stream, ref)
    (stream ** 2).sum().backward()
    for got, want in zip([p.grad for p in adapter.parameters()] + [base.grad], grads):
        torch.testing.assert_close(got, want)



def test_weight_cache_with_inference_tensors():
    # a plain tensor made in torch.inference_mode has no version counter: the cache must build afresh, uncached
    owner = torch.nn.Module()
    calls = []

    def build():
        calls.append(1)
        return weight * 2

    with torch.inference_mode():
        weight = torch.ones(3)
    for _ in range(2):
        torch.testing.assert_close(_cached_from_weights(owner, "_c", (weight,), build), torch.full((3,), 2.0))
    assert len(calls) == 2 and "_c" not in owner.__dict__
    normal = torch.ones(3)
    weight = normal
    _cached_from_weights(owner, "_c", (weight,), build)
    _cached_from_weights(owner, "_c", (weight,), build)
    assert len(calls) == 3 and "_c" in owner.__dict__  # an ordinary tensor is cached
    weight.mul_(3)  # an in-place update bumps the version: rebuilt
    torch.testing.assert_close(_cached_from_weights(owner, "_c", (weight,), build), torch.full((3,), 6.0))
    assert len(calls) == 4
