"""Leaf-layer tests for the ST-MoE-style top-2 MoE with GEGLU and constant experts."""
import math

import pytest
import torch
import torch.nn.functional as F

from modeling_bigmoe.layers_stmoe import (
    MmdaGEGLU,
    MmdaGEGLUExpert,
    MmdaSTMoE,
    balance_loss,
    expert_capacity,
    router_z_loss,
)

TINY = dict(num_experts=3, num_constant_experts=2)


def _identity_router_moe(**kwargs) -> MmdaSTMoE:
    """dim = E = 5 with an identity router: a token's features *are* its router logits."""
    moe = MmdaSTMoE(5, expert_hidden_dim=7, **{**TINY, **kwargs})
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(5))
    return moe


def _brute_force(moe: MmdaSTMoE, x: torch.Tensor, combine: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x)
    for bi in range(x.shape[0]):
        for ni in range(x.shape[1]):
            for e in range(moe.total_experts):
                w = combine[bi, ni, e]
                if w == 0:
                    continue
                if e < moe.num_experts:
                    out[bi, ni] += w * moe.experts[e](x[bi, ni].unsqueeze(0))[0]
                else:
                    out[bi, ni] += w * moe.constant_experts[e - moe.num_experts]
    return out


def test_default_sizes_match_reference():
    moe = MmdaSTMoE(512)
    assert moe.num_experts == 4 and moe.num_constant_experts == 3 and moe.total_experts == 7
    assert moe.expert_hidden_dim == 1365
    assert moe.experts[0].proj_in.weight.shape == (2 * 1365, 512)
    assert moe.experts[0].proj_out.weight.shape == (512, 1365)
    assert moe.constant_experts.shape == (3, 512)
    assert (moe.threshold, moe.capacity_factor_train, moe.capacity_factor_eval) == (0.2, 1.25, 2.0)
    assert (moe.balance_loss_coef, moe.router_z_loss_coef) == (1e-2, 1e-3)


def test_geglu_and_expert_formula():
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    expected = torch.tensor([[1.0, -2.0]]) * F.gelu(torch.tensor([[0.5, 3.0]]))
    torch.testing.assert_close(MmdaGEGLU()(x), expected)
    torch.manual_seed(0)
    expert = MmdaGEGLUExpert(6, 5)
    x = torch.randn(4, 6)
    h = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-5)
    h = h @ expert.proj_in.weight.T + expert.proj_in.bias
    h = h[:, :5] * F.gelu(h[:, 5:])
    torch.testing.assert_close(expert(x), h @ expert.proj_out.weight.T + expert.proj_out.bias)


def test_output_matches_brute_force_and_at_most_two_experts():
    torch.manual_seed(1)
    moe = MmdaSTMoE(16, **TINY, capacity_factor_eval=5.0).eval()
    x = torch.randn(3, 6, 16)
    out, aux, r = moe(x, return_routing=True)
    assert r["capacity"] == 6  # min(6, ceil(5 * 6 / 5)): every token fits
    assert r["dispatch"].sum(-1).le(2).all()
    assert r["dispatch"].sum(-1).ge(1).all()
    assert int(r["dropped"]) == 0
    # the first choice is always dispatched here, the second one only when its weight passes 0.2
    assert r["dispatch"].gather(-1, r["top_index"][..., :1]).all()
    second = r["dispatch"].gather(-1, r["top_index"][..., 1:]).squeeze(-1)
    assert torch.equal(second, r["top_weight"][..., 1] >= 0.2)
    torch.testing.assert_close(out, _brute_force(moe, x, r["combine"]), rtol=1e-5, atol=1e-6)
    assert out.shape == x.shape and aux.dim() == 0


def test_second_expert_threshold_hand_case():
    moe = _identity_router_moe(min_expert_capacity=4).eval()
    probs = torch.tensor([[0.50, 0.30, 0.10, 0.05, 0.05],   # w2 = 0.3 / 0.8 = 0.375 -> used
                          [0.70, 0.15, 0.05, 0.05, 0.05],   # w2 = 0.15 / 0.85 = 0.176 -> not used
                          [0.05, 0.05, 0.40, 0.10, 0.40]])  # tie for first: w2 = 0.5 -> used
    _, _, r = moe(probs.log().unsqueeze(0), return_routing=True)
    w = r["top_weight"][0]
    torch.testing.assert_close(w[:2], torch.tensor([[0.5 / 0.8, 0.3 / 0.8], [0.7 / 0.85, 0.15 / 0.85]]))
    assert r["dispatch"][0].sum(-1).tolist() == [2, 1, 2]
    torch.testing.assert_close(r["combine"][0, 0], torch.tensor([0.625, 0.375, 0.0, 0.0, 0.0]))
    # the skipped second expert's weight is not moved onto the first one
    torch.testing.assert_close(r["combine"][0, 1], torch.tensor([0.7 / 0.85, 0.0, 0.0, 0.0, 0.0]))


def test_capacity_drops_tokens_beyond_it():
    # 8 tokens of one group all choose expert 0 first; second choices fall below the threshold
    logits = torch.tensor([4.0, 0.0, 0.0, 0.0, 0.0]).expand(1, 8, 5).clone()
    moe = _identity_router_moe(min_expert_capacity=0).train()
    assert expert_capacity(8, 5, 1.25, 0) == 2  # ceil(1.25 * 8 / 5)
    out, _, r = moe(logits, return_routing=True)
    assert r["capacity"] == 2
    assert int(r["dropped"]) == 6
    assert r["dispatch"][0, :, 0].tolist() == [True, True] + [False] * 6
    assert torch.equal(out[0, 2:], torch.zeros(6, 5))  # dropped tokens get no expert output
    w1 = r["top_weight"][0, 0, 0]
    torch.testing.assert_close(out[0, :2], w1 * moe.experts[0](logits[0, :2]))
    # eval: capacity factor 2.0 -> ceil(2 * 8 / 5) = 4 slots, 4 dropped
    moe.eval()
    _, _, r = moe(logits, return_routing=True)
    assert (r["capacity"], int(r["dropped"])) == (4, 4)
    # groups are independent: a second group gets its own slots
    _, _, r = moe(logits.expand(2, 8, 5), return_routing=True)
    assert int(r["dropped"]) == 8 and r["dispatch"][:, :4, 0].all()


def test_first_choices_fill_capacity_before_second_choices():
    # token 0 wants expert 1 second; tokens 1, 2 want expert 1 first; capacity 2
    probs = torch.tensor([[0.55, 0.35, 0.04, 0.03, 0.03],
                          [0.05, 0.80, 0.05, 0.05, 0.05],
                          [0.05, 0.80, 0.05, 0.05, 0.05]])
    moe = _identity_router_moe(min_expert_capacity=0, capacity_factor_eval=2.0).eval()
    _, _, r = moe(probs.log().unsqueeze(0), return_routing=True)
    assert r["capacity"] == 2
    d = r["dispatch"][0]
    assert d[1, 1] and d[2, 1] and not d[0, 1]  # token 0's second choice lost its slot
    assert d[0, 0]
    assert int(r["dropped"]) == 1


def test_expert_capacity_formula():
    assert expert_capacity(100, 7, 1.25) == math.ceil(125 / 7)  # 18
    assert expert_capacity(100, 7, 2.0) == 29
    assert expert_capacity(3, 7, 1.25) == 3  # the floor of 4 is capped by the group size
    assert expert_capacity(10, 7, 1.25, min_capacity=4) == 4
    with pytest.raises(ValueError, match="capacity_factor"):
        expert_capacity(10, 7, 0.0)


def test_balance_loss_formula_hand_cases():
    e = 5
    # uniform routing: f_e = P_e = 1/E -> E * E * (1/E^2) = 1
    uniform = torch.full((10, e), 1 / e)
    assert float(balance_loss(uniform, torch.arange(10) % e)) == pytest.approx(1.0)
    # collapse onto expert 0 with probability 1 -> E
    collapsed = F.one_hot(torch.zeros(10, dtype=torch.long), e).float()
    assert float(balance_loss(collapsed, torch.zeros(10, dtype=torch.long))) == pytest.approx(5.0)
    # hand case, 4 tokens, 2 experts: f = [3/4, 1/4], P = [0.6, 0.4] -> 2 * (0.45 + 0.1) = 1.1
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    assert float(balance_loss(probs, torch.tensor([0, 0, 0, 1]))) == pytest.approx(1.1)
    # any imbalance with consistent probabilities costs more than uniform routing
    peaked = torch.tensor([[0.7, 0.3], [0.7, 0.3]])
    assert float(balance_loss(peaked, torch.tensor([0, 0]))) == pytest.approx(1.4)


def test_module_reports_balance_and_z_loss_and_weights_them():
    torch.manual_seed(2)
    moe = MmdaSTMoE(16, **TINY)
    x = torch.randn(4, 3, 16)
    _, aux, r = moe(x, return_routing=True)
    logits = x @ moe.router.weight.T
    probs = logits.softmax(-1)
    f = F.one_hot(probs.argmax(-1), 5).float().mean((0, 1))
    expected_balance = 5 * (f * probs.mean((0, 1))).sum()
    expected_z = torch.logsumexp(logits, -1).pow(2).mean()
    torch.testing.assert_close(r["balance_loss"], expected_balance)
    torch.testing.assert_close(r["z_loss"], expected_z)
    torch.testing.assert_close(aux, 1e-2 * expected_balance + 1e-3 * expected_z)


def test_router_z_loss_formula():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    lse1 = 3 + math.log(1 + math.exp(-1) + math.exp(-2))
    lse2 = math.log(3)
    assert float(router_z_loss(logits)) == pytest.approx((lse1 ** 2 + lse2 ** 2) / 2, rel=1e-6)


def test_constant_expert_outputs_its_vector():
    moe = _identity_router_moe().eval()
    with torch.no_grad():
        moe.constant_experts.copy_(torch.arange(10.0).view(2, 5))
    # top-1 is constant expert 1 (index 4), second expert below threshold
    probs = torch.tensor([[0.04, 0.04, 0.04, 0.08, 0.80]])
    out, _, r = moe(probs.log().unsqueeze(0), return_routing=True)
    w1 = 0.80 / 0.88
    torch.testing.assert_close(r["combine"][0, 0], torch.tensor([0, 0, 0, 0, w1]))
    torch.testing.assert_close(out[0, 0], w1 * torch.arange(5.0, 10.0))
    # a token sent to both constant experts gets their weighted vectors, no compute involved
    probs = torch.tensor([[0.02, 0.02, 0.02, 0.44, 0.50]])
    out = moe(probs.log().unsqueeze(0))[0]
    torch.testing.assert_close(out[0, 0], (0.44 * torch.arange(5.0) + 0.50 * torch.arange(5.0, 10.0)) / 0.94)


def test_gradients_reach_every_parameter():
    torch.manual_seed(3)
    moe = MmdaSTMoE(16, **TINY, capacity_factor_train=10.0).train()
    x = torch.randn(4, 16, 16)
    out, aux, r = moe(x, return_routing=True)
    assert r["dispatch"].sum((0, 1)).gt(0).all()  # every expert got tokens
    ((out * torch.randn_like(out)).sum() + aux).backward()
    for name, p in moe.named_parameters():
        assert p.grad is not None, name
        assert float(p.grad.abs().sum()) > 0, name


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 2 experts"):
        MmdaSTMoE(16, num_experts=1, num_constant_experts=0)
    with pytest.raises(ValueError, match="threshold"):
        MmdaSTMoE(16, threshold=1.5)
    with pytest.raises(ValueError, match="capacity_factor_eval"):
        MmdaSTMoE(16, capacity_factor_eval=0)
    moe = MmdaSTMoE(16, **TINY)
    with pytest.raises(ValueError, match=r"x must be \(b, n, 16\), got \(4, 16\)"):
        moe(torch.randn(4, 16))
    with pytest.raises(ValueError, match="top1_index must have shape"):
        balance_loss(torch.rand(3, 5), torch.zeros(4, dtype=torch.long))
