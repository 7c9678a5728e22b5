"""Leaf-layer tests for the Soft MoE layer with the linear-attention combine (La-SoftMoE)."""
import math

import pytest
import torch
import torch.nn.functional as F

from modeling_bigmoe.layers_softmoe import (
    LaSoftMoeExperts,
    LaSoftMoeFeatureMap,
    LaSoftMoeLayer,
    instance_norm_over_tokens,
    resolve_num_slots,
)

ALL_COMBINES = [("softmax", "none", "elu1"), ("softmax", "instance", "elu1"),
                ("linear", "none", "elu1"), ("linear", "instance", "elu1"),
                ("linear", "none", "relu"), ("linear", "instance", "relu"),
                ("linear", "none", "learnable"), ("linear", "instance", "learnable")]


def _layer(combine="linear", combine_norm="instance", phi="elu1", **kw):
    base = {"num_experts": 3, "slots_per_expert": 2, "expert_dim": 5, "combine": combine, "combine_norm": combine_norm,
                "phi": phi, "zero_init_output": False}
    base.update(kw)
    return LaSoftMoeLayer(8, **base)


def _reference_soft_moe(layer: LaSoftMoeLayer, x: torch.Tensor) -> torch.Tensor:
    """Soft MoE as in Puigcerver et al., Algorithm 1/2, written with loops over batch, slots and tokens."""
    b, n, _d = x.shape
    s, p = layer.num_slots, layer.slots_per_expert
    ex = layer.experts
    y = torch.zeros_like(x)
    for bi in range(b):
        xs = x[bi]
        x_hat = xs / xs.norm(dim=1, keepdim=True)
        phi_hat = layer.slot_weight / layer.slot_weight.norm(dim=0, keepdim=True)
        logits = layer.scale * (x_hat @ phi_hat)  # (n, s)
        slot_out = []
        for j in range(s):
            w = torch.exp(logits[:, j]) / torch.exp(logits[:, j]).sum()  # softmax over tokens
            slot_in = (w[:, None] * xs).sum(0)
            k = j // p
            h = F.gelu(slot_in @ ex.w_in[k] + ex.b_in[k])
            slot_out.append(h @ ex.w_out[k] + ex.b_out[k])
        slot_out = torch.stack(slot_out)  # (s, d)
        for i in range(n):
            c = torch.exp(logits[i]) / torch.exp(logits[i]).sum()  # softmax over slots
            y[bi, i] = (c[:, None] * slot_out).sum(0)
    return y


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize("combine,combine_norm,phi", ALL_COMBINES)
def test_dispatch_and_combine_weights_sum_to_one(combine, combine_norm, phi):
    torch.manual_seed(1)
    layer = _layer(combine, combine_norm, phi, scale_init=4.0)
    if layer.feature_map is not None and phi == "learnable":
        with torch.no_grad():  # away from the identity start
            layer.feature_map.weight.uniform_(0.5, 2.0)
            layer.feature_map.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 7, 8)
    y, dispatch, comb = layer(x, return_weights=True)
    assert y.shape == (2, 7, 8) and dispatch.shape == (2, 7, 6) and comb.shape == (2, 7, 6)
    torch.testing.assert_close(dispatch.sum(dim=1), torch.ones(2, 6))  # over tokens, per slot
    torch.testing.assert_close(comb.sum(dim=2), torch.ones(2, 7))  # over slots, per token
    assert bool((dispatch > 0).all()) and bool((comb > 0).all())


def test_relu_kernel_token_with_all_negative_logits_gets_uniform_weights():
    layer = _layer("linear", "none", "relu")
    logits = -torch.rand(1, 3, 6) - 0.1  # every logit negative
    torch.testing.assert_close(layer.combine_weights(logits), torch.full((1, 3, 6), 1 / 6))


def test_softmax_combine_without_norm_equals_plain_soft_moe():
    torch.manual_seed(2)
    layer = _layer("softmax", "none", scale_init=3.0)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(layer(x), _reference_soft_moe(layer, x), rtol=1e-5, atol=1e-6)


def test_linear_combine_with_instance_norm_matches_formula_by_hand():
    torch.manual_seed(3)
    layer = _layer("linear", "instance", "elu1", scale_init=2.0)
    x = torch.randn(1, 4, 8)
    _, _, comb = layer(x, return_weights=True)
    logits = layer.logits(x)[0]  # (n, s)
    n, s = logits.shape
    expected = torch.empty(n, s)
    for j in range(s):
        col = logits[:, j]
        mean = sum(col.tolist()) / n
        var = sum((v - mean) ** 2 for v in col.tolist()) / n  # biased, as InstanceNorm
        for i in range(n):
            z = (col[i].item() - mean) / math.sqrt(var + 1e-5)
            expected[i, j] = (z + 1.0) if z > 0 else math.exp(z)  # ELU(z) + 1
    expected = expected / expected.sum(dim=1, keepdim=True)
    torch.testing.assert_close(comb[0], expected, rtol=1e-5, atol=1e-6)


def test_instance_norm_equals_torch_instancenorm():
    logits = torch.randn(2, 9, 4)
    ref = torch.nn.InstanceNorm1d(4)(logits.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(instance_norm_over_tokens(logits), ref)


def test_feature_map_values():
    z = torch.tensor([-1.0, 0.0, 2.0])
    torch.testing.assert_close(LaSoftMoeFeatureMap("elu1", num_slots=3)(z),
                               torch.tensor([math.exp(-1.0), 1.0, 3.0]))
    torch.testing.assert_close(LaSoftMoeFeatureMap("relu", num_slots=3, eps=1e-6)(z),
                               torch.tensor([1e-6, 1e-6, 2.0 + 1e-6]))
    learn = LaSoftMoeFeatureMap("learnable", num_slots=3)
    torch.testing.assert_close(learn(z), LaSoftMoeFeatureMap("elu1", num_slots=3)(z))  # starts as elu1
    with torch.no_grad():
        learn.weight.copy_(torch.tensor([2.0, 1.0, 0.5]))
        learn.bias.copy_(torch.tensor([0.0, 1.0, -2.0]))
    torch.testing.assert_close(learn(z), torch.tensor([math.exp(-2.0), 2.0, math.exp(-1.0)]))


def test_learnable_scale_changes_sharpness():
    torch.manual_seed(4)
    x = torch.randn(1, 10, 8)

    def entropies(scale):
        layer = _layer("softmax", "none", scale_init=1.0)
        with torch.no_grad():
            layer.scale.fill_(scale)
        _, dispatch, comb = layer(x, return_weights=True)
        h_disp = -(dispatch * dispatch.log()).sum(1).mean()
        h_comb = -(comb * comb.log()).sum(2).mean()
        return h_disp.item(), h_comb.item()

    torch.manual_seed(5)
    soft = entropies(1.0)
    torch.manual_seed(5)
    sharp = entropies(20.0)
    assert sharp[0] < soft[0] - 0.5 and sharp[1] < soft[1] - 0.5
    assert soft[0] > 0.9 * math.log(10)  # scale 1: cosine logits in [-1, 1], dispatch near uniform
    # the scale only multiplies the logits: scale 2 gives the logits of scale 1, doubled
    layer = _layer("softmax", "none", scale_init=1.0)
    l1 = layer.logits(x).detach()
    with torch.no_grad():
        layer.scale.fill_(2.0)
    torch.testing.assert_close(layer.logits(x), 2 * l1)
    assert float(l1.abs().max()) <= 1.0 + 1e-6


# ---------------------------------------------------------------- experts and init


def test_zero_initialised_experts_give_exactly_zero():
    torch.manual_seed(6)
    for combine, combine_norm, phi in ALL_COMBINES:
        layer = LaSoftMoeLayer(8, num_experts=2, slots_per_expert=3, expert_dim=4, combine=combine,
                               combine_norm=combine_norm, phi=phi)
        y = layer(torch.randn(2, 5, 8))
        assert torch.equal(y, torch.zeros_like(y))


def test_batched_experts_equal_per_expert_loop():
    torch.manual_seed(7)
    ex = LaSoftMoeExperts(6, num_experts=3, expert_dim=4, activation="quick_gelu", zero_init_output=False)
    slots = torch.randn(2, 3, 5, 6)
    out = ex(slots)
    for k in range(3):
        h = slots[:, k] @ ex.w_in[k] + ex.b_in[k]
        ref = (h * torch.sigmoid(1.702 * h)) @ ex.w_out[k] + ex.b_out[k]
        torch.testing.assert_close(out[:, k], ref)


@pytest.mark.parametrize("combine,combine_norm,phi", [("softmax", "none", "elu1"), ("linear", "instance", "elu1"),
                                                      ("linear", "none", "learnable"),
                                                      ("linear", "instance", "relu")])
def test_gradients_reach_every_parameter_after_one_step(combine, combine_norm, phi):
    torch.manual_seed(8)
    layer = LaSoftMoeLayer(8, num_experts=2, slots_per_expert=3, expert_dim=4, combine=combine,
                           combine_norm=combine_norm, phi=phi, scale_init=2.0)
    x, target = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    loss = F.mse_loss(layer(x), target)
    loss.backward()
    # at the zero start only the output side learns
    assert float(layer.experts.w_out.grad.abs().sum()) > 0 and float(layer.experts.w_in.grad.abs().sum()) == 0
    opt.step()
    opt.zero_grad()
    F.mse_loss(layer(x), target).backward()
    names = [name for name, _ in layer.named_parameters()]
    expected = {"slot_weight", "scale", "experts.w_in", "experts.b_in", "experts.w_out", "experts.b_out"}
    if phi == "learnable":
        expected |= {"feature_map.weight", "feature_map.bias"}
    assert set(names) == expected
    for name, param in layer.named_parameters():
        assert param.grad is not None and float(param.grad.abs().sum()) > 0, name


# ---------------------------------------------------------------- slot counts


def test_slot_count_rules():
    assert LaSoftMoeLayer(16).num_slots == 196 and LaSoftMoeLayer(16).slots_per_expert == 49  # paper default
    assert resolve_num_slots(4, slots_per_expert=10) == 40
    assert resolve_num_slots(4, num_slots=12) == 12
    assert resolve_num_slots(4, num_slots=12, slots_per_expert=3) == 12
    assert resolve_num_slots(4, num_tokens=197) == 196  # RGB CLIP-B/16 at 224, CLS included
    assert resolve_num_slots(4, num_tokens=1 + 3 * 196) == 588  # multimodal early fusion: 3x the slots
    assert resolve_num_slots(4, num_tokens=3) == 4  # at least one slot per expert
    assert resolve_num_slots(4, slots_per_expert=2, num_tokens=197) == 8  # an explicit count wins
    layer = LaSoftMoeLayer(8, num_experts=4, num_tokens=1 + 3 * 4, expert_dim=2)
    assert layer.num_slots == 12 and layer.slot_weight.shape == (8, 12)


def test_fewer_tokens_than_slots_is_allowed():
    torch.manual_seed(9)
    layer = _layer("linear", "instance", "elu1", num_experts=2, slots_per_expert=5)  # 10 slots
    x = torch.randn(2, 3, 8)
    y, dispatch, comb = layer(x, return_weights=True)
    assert y.shape == (2, 3, 8) and bool(torch.isfinite(y).all())
    torch.testing.assert_close(dispatch.sum(1), torch.ones(2, 10))
    torch.testing.assert_close(comb.sum(2), torch.ones(2, 3))
    # a single token: every slot takes it whole, and the instance norm leaves uniform combine weights
    _y1, d1, c1 = layer(x[:, :1], return_weights=True)
    torch.testing.assert_close(d1, torch.ones(2, 1, 10))
    torch.testing.assert_close(c1, torch.full((2, 1, 10), 0.1))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs,field", [
    ({"num_slots": 10}, "num_slots"),
    ({"num_slots": 12, "slots_per_expert": 4}, "disagrees"),
    ({"combine": "attention"}, "combine must be one of \\('softmax', 'linear'\\)"),
    ({"combine_norm": "layer"}, "combine_norm must be one of \\('none', 'instance'\\)"),
    ({"phi": "exp"}, "phi must be one of \\('elu1', 'relu', 'learnable'\\)"),
    ({"activation": "silu"}, "activation"),
    ({"num_experts": 0}, "num_experts"),
    ({"slots_per_expert": 0}, "slots_per_expert"),
    ({"num_tokens": -3}, "num_tokens"),
    ({"scale_init": 0.0}, "scale_init"),
    ({"dropout": 2.0}, "dropout"),
])
def test_bad_arguments(kwargs, field):
    base = {"num_experts": 4, "expert_dim": 4}
    base.update(kwargs)
    with pytest.raises(ValueError, match=field):
        LaSoftMoeLayer(8, **base)


def test_bad_input_shape():
    layer = _layer()
    with pytest.raises(ValueError, match=r"x must be \(b, n>0, 8\), got \(2, 5, 7\)"):
        layer(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="x must be"):
        layer(torch.randn(5, 8))


def test_bfloat16_close_to_float32():
    torch.manual_seed(10)
    layer = _layer("linear", "instance", "elu1", scale_init=3.0)
    x = torch.randn(2, 6, 8)
    ref = layer(x)
    out = layer.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
