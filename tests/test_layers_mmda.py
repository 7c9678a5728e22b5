"""Tests for the MMDA blocks: fusion, U-DSA, RS2 alignment, classifier, loss, and the templates."""
import math

import pytest
import torch
import torch.nn.functional as F

from modeling_bigmoe.layers_mmda import (
    MmdaClassifier,
    MmdaFusionBlock,
    MmdaRefineBlock,
    MmdaUDSA,
    mmda_loss,
    rs2_alignment_logits,
    rs2_alignment_logits_all_levels,
    smooth_labels,
    soft_cross_entropy,
    text_anchor_targets,
)
from modeling_bigmoe.mmda_templates import (
    FLIP_LIVE_TEMPLATES,
    FLIP_SPOOF_TEMPLATES,
    LIVE_TEMPLATES,
    SPOOF_TEMPLATES,
    default_templates,
)

D = 16
MOE = dict(num_experts=3, num_constant_experts=2)


def _assert_all_grads(module):
    for name, p in module.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, name


# --- fusion -------------------------------------------------------------------------------


@pytest.mark.parametrize("double_residual", [True, False])
def test_fusion_block_formula(double_residual):
    torch.manual_seed(0)
    block = MmdaFusionBlock(D, heads=2, double_residual=double_residual, moe_kwargs=MOE).eval()
    x = torch.randn(4, 3, D)
    labels = torch.tensor([1, 0, 1, 0])
    v0, aux = block(x, labels)
    x_dom = x[[0, 1, 0, 1]]
    x1 = x + block.attn(block.norm(x), block.norm(x_dom))
    x2, aux_ref = block.moe(block.norm2(x1))
    fused = (x + x1 + x2) if double_residual else (x1 + x2)
    torch.testing.assert_close(v0, fused.reshape(4, 3 * D) @ block.proj.weight.T + block.proj.bias)
    torch.testing.assert_close(aux, aux_ref)
    assert v0.shape == (4, D)


def test_fusion_without_labels_uses_x_as_x_dom():
    torch.manual_seed(1)
    block = MmdaFusionBlock(D, heads=2, moe_kwargs=MOE).eval()
    x = torch.randn(3, 3, D)
    torch.testing.assert_close(block(x)[0], block(x, torch.arange(3))[0])
    # with one shared domain, every sample's X_dom is sample 0: the outputs change
    assert not torch.allclose(block(x)[0][1:], block(x, [5, 5, 5])[0][1:])
    torch.testing.assert_close(block(x)[0][0], block(x, [5, 5, 5])[0][0])


def test_fusion_gradients_and_bad_input():
    torch.manual_seed(2)
    block = MmdaFusionBlock(D, heads=2, moe_kwargs={**MOE, "capacity_factor_train": 10.0}).train()
    v0, aux = block(torch.randn(16, 3, D), torch.randint(0, 3, (16,)))
    ((v0 * torch.randn_like(v0)).sum() + aux).backward()
    _assert_all_grads(block)
    with pytest.raises(ValueError, match=r"x must be \(b, 3, 16\), got \(2, 2, 16\)"):
        block(torch.randn(2, 2, D))


# --- U-DSA --------------------------------------------------------------------------------


def test_refine_block_formula_single_token():
    """With one token per row, own-set attention is out_proj(v_proj(LN(x)))."""
    torch.manual_seed(3)
    block = MmdaRefineBlock(D, heads=2, moe_kwargs=MOE).eval()
    x = torch.randn(5, 1, D)
    out, aux = block(x)
    h = block.norm(x)
    wv, bv = block.attn.in_proj_weight[2 * D:], block.attn.in_proj_bias[2 * D:]
    attn = (h @ wv.T + bv) @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    x1 = x + attn
    x2, _ = block.moe(block.norm2(x1))
    torch.testing.assert_close(out, x + x1 + x2, rtol=1e-5, atol=1e-5)
    block.double_residual = False
    torch.testing.assert_close(block(x)[0], x1 + x2, rtol=1e-5, atol=1e-5)


def test_refine_block_batch_attention_is_reference_layout():
    """batch_attention=True equals a non-batch_first MHA fed the (b, n, d) tensor as (seq, batch, d)."""
    torch.manual_seed(4)
    block = MmdaRefineBlock(D, heads=2, batch_attention=True, moe_kwargs=MOE).eval()
    ref_mha = torch.nn.MultiheadAttention(D, 2)  # batch_first=False, as the reference
    ref_mha.load_state_dict(block.attn.state_dict())
    x = torch.randn(4, 1, D)
    h = block.norm(x)
    x1 = x + ref_mha(h, h, h, need_weights=False)[0]
    expected = x + x1 + block.moe(block.norm2(x1))[0]
    torch.testing.assert_close(block(x)[0], expected, rtol=1e-5, atol=1e-5)


def test_udsa_levels_and_structure():
    torch.manual_seed(5)
    udsa = MmdaUDSA(D, heads=2, moe_kwargs=MOE).eval()
    visual, spoof, live = torch.randn(3, D), torch.randn(5, D), torch.randn(4, D)
    out = udsa(visual, [spoof, live])
    assert udsa.num_levels == 15
    assert len(out.visual_levels) == 15 and len(out.text_levels) == 15
    for v, (ts, tl) in zip(out.visual_levels, out.text_levels):
        assert v.shape == (3, D) and ts.shape == (5, D) and tl.shape == (4, D)
    vl, tlv = out.visual_levels, out.text_levels
    torch.testing.assert_close(vl[0], visual)
    torch.testing.assert_close(tlv[0][0], spoof)
    # down path: the same level module maps image and text
    for k in range(1, 8):
        torch.testing.assert_close(vl[k], udsa.down[k - 1](vl[k - 1].unsqueeze(1))[0].squeeze(1))
        torch.testing.assert_close(tlv[k][0], udsa.down[k - 1](tlv[k - 1][0].unsqueeze(1))[0].squeeze(1))
        torch.testing.assert_close(tlv[k][1], udsa.down[k - 1](tlv[k - 1][1].unsqueeze(1))[0].squeeze(1))
    # up path: level 7 + i holds v'_{7-i} = Remap_{7-i}(v'_{8-i}) + v_{7-i}, paired with t_{7-i}
    prev = vl[7]
    for i in range(1, 8):
        target = 7 - i
        expected = udsa.up[target](prev.unsqueeze(1))[0].squeeze(1) + vl[target]
        torch.testing.assert_close(vl[7 + i], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tlv[7 + i][0], tlv[target][0])
        prev = vl[7 + i]
    # aux: the sum of every MoE call (7 down x 3 inputs + 7 up x 1)
    total = sum(udsa.down[k](t.unsqueeze(1))[1]
                for k in range(7) for t in (vl[k], tlv[k][0], tlv[k][1]))
    total = total + sum(udsa.up[7 - i](vl[7 + i - 1].unsqueeze(1))[1] for i in range(1, 8))
    torch.testing.assert_close(out.aux_loss, total, rtol=1e-5, atol=1e-6)


def test_udsa_text_up_path_option():
    torch.manual_seed(6)
    udsa = MmdaUDSA(D, depth=2, heads=2, text_up_path=True, moe_kwargs=MOE).eval()
    out = udsa(torch.randn(2, D), [torch.randn(3, D), torch.randn(3, D)])
    assert len(out.visual_levels) == 5
    t = out.text_levels
    expected = udsa.up[1](t[2][0].unsqueeze(1))[0].squeeze(1) + t[1][0]
    torch.testing.assert_close(t[3][0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_attention", [False, True])
def test_udsa_batch_attention_switch(batch_attention):
    torch.manual_seed(7)
    udsa = MmdaUDSA(D, depth=2, heads=2, batch_attention=batch_attention, moe_kwargs=MOE).eval()
    a = torch.randn(3, D)
    b = a.clone()
    b[1:] = torch.randn(2, D)  # same sample 0, different batch mates
    texts = [torch.randn(4, D), torch.randn(4, D)]
    out_a = udsa(a, texts).visual_levels[-1][0]
    out_b = udsa(b, texts).visual_levels[-1][0]
    if batch_attention:
        assert not torch.allclose(out_a, out_b, atol=1e-4)
    else:
        torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-6)


def test_udsa_gradients_reach_every_parameter():
    torch.manual_seed(8)
    udsa = MmdaUDSA(D, depth=2, heads=2, moe_kwargs={**MOE, "capacity_factor_train": 10.0}).train()
    visual = torch.randn(8, D)
    texts = [torch.randn(6, D), torch.randn(6, D)]
    out = udsa(visual, texts)
    loss = out.aux_loss + sum((v * torch.randn_like(v)).sum() for v in out.visual_levels)
    loss = loss + sum((t * torch.randn_like(t)).sum() for level in out.text_levels for t in level)
    loss.backward()
    _assert_all_grads(udsa)


def test_udsa_bad_input():
    udsa = MmdaUDSA(D, depth=1, heads=2, moe_kwargs=MOE)
    with pytest.raises(ValueError, match=r"visual must be \(b, 16\)"):
        udsa(torch.randn(2, 1, D))
    with pytest.raises(ValueError, match=r"texts\[1\] must be \(T, 16\), got \(3, 8\)"):
        udsa(torch.randn(2, D), [torch.randn(3, D), torch.randn(3, 8)])
    with pytest.raises(ValueError, match=r"heads \(3\) must divide dim \(16\)"):
        MmdaRefineBlock(D, heads=3)


# --- RS2 ----------------------------------------------------------------------------------


def test_rs2_nearest_template_hand_case():
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    spoof = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    live = torch.tensor([[2.0, 0.0], [-1.0, 0.0]])
    logits = rs2_alignment_logits(v, spoof, live, 100.0)
    # sample 0: spoof max(cos45, cos90) = 1/sqrt2, live max(1, -1) = 1
    # sample 1: spoof max(1/sqrt2, 1) = 1, live max(0, 0) = 0
    expected = torch.tensor([[100 / math.sqrt(2), 100.0], [100.0, 0.0]])
    torch.testing.assert_close(logits, expected)
    # a tensor scale works (CLIP's logit_scale.exp()) and gradients reach it
    s = torch.tensor(math.log(100.0), requires_grad=True)
    rs2_alignment_logits(v, spoof, live, s.exp()).sum().backward()
    assert s.grad is not None


def test_rs2_differs_from_mean_prompt():
    v = torch.tensor([[1.0, 0.0]])
    spoof = torch.tensor([[1.0, 0.0], [-1.0, 0.1]])  # mean ~ (0, 0.05): cos 0 with v
    live = torch.tensor([[0.0, 1.0]])
    logits = rs2_alignment_logits(v, spoof, live, 1.0)
    torch.testing.assert_close(logits, torch.tensor([[1.0, 0.0]]))


def test_rs2_all_levels_with_udsa():
    torch.manual_seed(9)
    udsa = MmdaUDSA(D, depth=7, heads=2, moe_kwargs=MOE).eval()
    out = udsa(torch.randn(2, D), [torch.randn(5, D), torch.randn(4, D)])
    levels = rs2_alignment_logits_all_levels(out.visual_levels, out.text_levels, 100.0)
    assert len(levels) == 15
    for logit, v, (ts, tl) in zip(levels, out.visual_levels, out.text_levels):
        cos_s = F.cosine_similarity(v.unsqueeze(1), ts.unsqueeze(0), dim=-1).max(-1).values
        cos_l = F.cosine_similarity(v.unsqueeze(1), tl.unsqueeze(0), dim=-1).max(-1).values
        torch.testing.assert_close(logit, 100 * torch.stack([cos_s, cos_l], -1), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="15 visual levels but 14 text levels"):
        rs2_alignment_logits_all_levels(out.visual_levels, out.text_levels[:-1], 100.0)
    with pytest.raises(ValueError, match="live_text_embeds must be"):
        rs2_alignment_logits(torch.randn(2, D), torch.randn(3, D), torch.randn(0, D), 1.0)


# --- classifier, targets, loss ------------------------------------------------------------


def test_text_anchor_targets():
    torch.testing.assert_close(text_anchor_targets(3, 0), torch.tensor([[0.9, 0.1]] * 3))
    torch.testing.assert_close(text_anchor_targets(2, 1), torch.tensor([[0.1, 0.9]] * 2))


def test_classifier_and_text_anchor_loss():
    torch.manual_seed(10)
    clf = MmdaClassifier(D, moe_kwargs=MOE).eval()
    x = torch.randn(4, D)
    logits, aux = clf(x)
    h, aux_ref = clf.moe(x.unsqueeze(1))
    torch.testing.assert_close(logits, h.squeeze(1) @ clf.head.weight.T + clf.head.bias)
    torch.testing.assert_close(aux, aux_ref)
    spoof, live = torch.randn(5, D), torch.randn(4, D)
    ce_s, ce_l, aux_t = clf.text_anchor_loss(spoof, live)
    ls = clf(spoof)[0].log_softmax(-1)
    ll = clf(live)[0].log_softmax(-1)
    torch.testing.assert_close(ce_s, -(0.9 * ls[:, 0] + 0.1 * ls[:, 1]).mean())
    torch.testing.assert_close(ce_l, -(0.1 * ll[:, 0] + 0.9 * ll[:, 1]).mean())
    torch.testing.assert_close(aux_t, clf(spoof)[1] + clf(live)[1])


def test_classifier_prenorm_switch_bounds_router_logits():
    torch.manual_seed(13)
    x = torch.randn(4, D)
    plain = MmdaClassifier(D, moe_kwargs=MOE).eval()
    normed = MmdaClassifier(D, prenorm=True, moe_kwargs=MOE).eval()
    normed.load_state_dict(plain.state_dict(), strict=False)
    h, _ = normed.moe(F.layer_norm(x, (D,)).unsqueeze(1))
    torch.testing.assert_close(normed(x)[0], normed.head(h.squeeze(1)))
    # a 1000x larger input: the plain router's z-loss grows ~1e6x, the pre-normed one is unchanged
    with torch.no_grad():
        z_big = plain.moe((1000 * x).unsqueeze(1), return_routing=True)[2]["z_loss"]
        z_small = plain.moe(x.unsqueeze(1), return_routing=True)[2]["z_loss"]
    assert float(z_big) > 1e3 * float(z_small)
    torch.testing.assert_close(normed(1000 * x)[1], normed(x)[1], rtol=1e-4, atol=1e-6)


def test_classifier_gradients():
    torch.manual_seed(11)
    clf = MmdaClassifier(D, prenorm=True, moe_kwargs={**MOE, "capacity_factor_train": 10.0}).train()
    logits, aux = clf(torch.randn(16, D))
    ce_s, ce_l, aux_t = clf.text_anchor_loss(torch.randn(6, D), torch.randn(6, D))
    (F.cross_entropy(logits, torch.randint(0, 2, (16,))) + aux + ce_s + ce_l + aux_t).backward()
    _assert_all_grads(clf)


def test_label_smoothing_modes():
    labels = torch.tensor([0, 1])
    proper = smooth_labels(labels, 2, 0.1, "proper")
    torch.testing.assert_close(proper, torch.tensor([[0.95, 0.05], [0.05, 0.95]]))
    reference = smooth_labels(labels, 2, 0.1, "reference")
    torch.testing.assert_close(reference, torch.tensor([[1.0, 0.1], [0.1, 1.0]]))
    # proper smoothing is torch's label_smoothing
    logits = torch.randn(6, 2)
    y = torch.randint(0, 2, (6,))
    torch.testing.assert_close(soft_cross_entropy(logits, smooth_labels(y, 2, 0.1)),
                               F.cross_entropy(logits, y, label_smoothing=0.1))
    with pytest.raises(ValueError, match="mode must be one of"):
        smooth_labels(labels, 2, 0.1, "ref")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        smooth_labels(torch.tensor([0, 2]), 2, 0.1)


def test_mmda_loss_sums_all_terms():
    torch.manual_seed(12)
    logits = torch.randn(4, 2)
    align = [torch.randn(4, 2) for _ in range(15)]
    y = torch.tensor([0, 1, 1, 0])
    text = [torch.tensor(0.3), torch.tensor(0.2)]
    aux = [torch.tensor(0.01), torch.tensor(0.02)]
    loss, terms = mmda_loss(logits, align, y, text_anchor_losses=text, aux_losses=aux)
    expected = (F.cross_entropy(logits, y, label_smoothing=0.1)
                + sum(F.cross_entropy(a, y, label_smoothing=0.1) for a in align) + 0.5 + 0.03)
    torch.testing.assert_close(loss, expected)
    assert len(terms["alignment_per_level"]) == 15
    torch.testing.assert_close(terms["aux"], torch.tensor(0.03))
    # the reference's unnormalised target: -(1.0 log p_y + 0.1 log p_other)
    loss_ref, _ = mmda_loss(logits, [], y, label_smoothing_mode="reference")
    lp = logits.log_softmax(-1)
    onehot = F.one_hot(y, 2).float()
    torch.testing.assert_close(loss_ref, -((onehot + 0.1 * (1 - onehot)) * lp).sum(-1).mean())
    with pytest.raises(ValueError, match=r"alignment_logits\[1\] must be \(4, 2\)"):
        mmda_loss(logits, [logits, torch.randn(3, 2)], y)


# --- templates ----------------------------------------------------------------------------


def test_templates():
    spoof, live = default_templates()
    assert len(spoof) == 24 and len(live) == 23
    assert len(set(spoof)) == 24 and len(set(live)) == 23
    assert not set(spoof) & set(live)
    assert set(FLIP_SPOOF_TEMPLATES) <= set(SPOOF_TEMPLATES) and len(FLIP_SPOOF_TEMPLATES) == 6
    assert set(FLIP_LIVE_TEMPLATES) <= set(LIVE_TEMPLATES) and len(FLIP_LIVE_TEMPLATES) == 6
    for s in ("This is a photo of a spoof face", "This is a photo of an attack face",
              "This is a photo of a printed adversarial image face", "a printout shown to be a spoof face"):
        assert s in spoof
    for s in ("This is a photo of a real face", "This is a photo of an authentic face",
              "This is a photo of a genuine face", "This is a bonafide face", "This is not a spoof face"):
        assert s in live
    spoof.append("x")  # copies: the module lists stay untouched
    assert len(SPOOF_TEMPLATES) == 24

