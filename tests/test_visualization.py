"""Visualisation API and the ``explain`` CLI: hand-computed maps, brute-force checks on the tiny model, PNGs."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_bigmoe.adapters import BigMoeBlockAdapter, BigMoeRouting
from modeling_bigmoe.clip_utils import get_clip_encoder_layers
from modeling_bigmoe.hub_configs import tiny_config
from modeling_bigmoe.image_processing_bigmoe import BigMoeImageProcessor
from modeling_bigmoe.layers_cdc import map_to_tokens
from modeling_bigmoe.modeling_bigmoe import BigMoeForFaceAntiSpoofing
from modeling_bigmoe.visualization import (
    ExpertUsage,
    add_explain_parser,
    cls_attention_maps,
    expert_cluster,
    explain_capture,
    explain_inputs,
    prompt_magnitude,
    render_expert_usage,
    render_inputs,
    render_routing,
    routing_top_cluster,
    routing_top_score,
    save_figure,
    soft_moe_maps,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = BigMoeForFaceAntiSpoofing(tiny_config(decision_threshold=0.45)).eval()
    return model, BigMoeImageProcessor(size=32)


def _capture(seed: int = 0, size: int = 40):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (size, size, 3), dtype=np.uint8), rng.integers(0, 256, (size, size), dtype=np.uint8),
            rng.integers(0, 256, (size, size), dtype=np.uint8))


# ---------------------------------------------------------------- pure map functions, hand-computed


def _hand_routing():
    # b=1, grid 2 (N=4), heads 2, k 2, 16 experts (K = 4 sub-keys: cluster = id // 4)
    weights = torch.tensor([[[[0.7, 0.3], [0.6, 0.4]],
                             [[0.5, 0.5], [0.9, 0.1]],
                             [[0.2, 0.8], [0.55, 0.45]],
                             [[0.5, 0.5], [0.5, 0.5]]]])
    indices = torch.tensor([[[[5, 1], [12, 3]],
                             [[0, 15], [9, 2]],
                             [[4, 14], [7, 6]],
                             [[11, 10], [13, 8]]]])
    return BigMoeRouting(0, indices, weights)


def test_top_score_and_cluster_hand_computed():
    routing = _hand_routing()
    score = routing_top_score(routing, 2)
    # mean over heads of each head's largest weight
    np.testing.assert_allclose(score, [[[(0.7 + 0.6) / 2, (0.5 + 0.9) / 2], [(0.8 + 0.55) / 2, 0.5]]], atol=1e-6)
    cluster = routing_top_cluster(routing, 2, 16)
    # top experts: 5 (w .7), 9 (w .9), 14 (w .8), 11 (tie: first head, first kept) -> clusters 1, 2, 3, 2
    np.testing.assert_array_equal(cluster, [[[1, 2], [3, 2]]])
    np.testing.assert_array_equal(expert_cluster(np.array([0, 39, 40, 1599]), 1600), [0, 0, 1, 39])
    with pytest.raises(ValueError, match="perfect square"):
        expert_cluster(np.array([0]), 15)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        expert_cluster(np.array([16]), 16)
    with pytest.raises(ValueError, match="grid 3 needs 9"):
        routing_top_score(routing, 3)


def test_prompt_magnitude_and_cls_attention_hand_computed():
    tokens = torch.zeros(1, 4, 2)
    tokens[0, :, 0] = torch.tensor([3.0, 0.0, 1.0, 6.0])
    tokens[0, :, 1] = torch.tensor([4.0, 0.0, 0.0, 8.0])
    np.testing.assert_allclose(prompt_magnitude(tokens, 2), [[[5.0, 0.0], [1.0, 10.0]]])
    with pytest.raises(ValueError, match=r"\(b, 4, c\)"):
        prompt_magnitude(torch.zeros(1, 5, 2), 2)

    # grid 1, stream [CLS, rgb, ir, depth]; two heads, CLS rows given, other rows irrelevant
    attn = torch.zeros(1, 2, 4, 4)
    attn[0, 0, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4])  # rgb .2, ir .3, depth .4
    attn[0, 1, 0] = torch.tensor([0.3, 0.4, 0.1, 0.2])  # rgb .4, ir .1, depth .2
    maps = cls_attention_maps(attn, 1)
    # public order rgb, depth, ir
    np.testing.assert_allclose(maps.reshape(3), [0.3, 0.3, 0.2], atol=1e-7)
    with pytest.raises(ValueError, match="attention must be"):
        cls_attention_maps(torch.zeros(1, 2, 5, 5), 1)


def test_expert_usage_counts_and_entropy():
    usage = ExpertUsage(4, [0, 2])
    r0 = BigMoeRouting(0, torch.tensor([[[[0, 0]], [[1, 1]]]]), torch.full((1, 2, 1, 2), 0.5))
    r2 = BigMoeRouting(2, torch.tensor([[[[0, 1]], [[2, 3]]]]), torch.full((1, 2, 1, 2), 0.5))
    usage.update([r0, r2])
    np.testing.assert_array_equal(usage.counts, [[2, 2, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(usage.fired, [2, 4])
    np.testing.assert_allclose(usage.entropy_bits, [1.0, 2.0])
    np.testing.assert_allclose(usage.normalized_entropy, [0.5, 1.0])
    usage.update([r0, BigMoeRouting(2, torch.tensor([[[[3, 3]], [[3, 3]]]]), torch.full((1, 2, 1, 2), 0.5))])
    # block 2 counts 1, 1, 1, 5 of 8
    p = np.array([1, 1, 1, 5]) / 8
    np.testing.assert_allclose(usage.entropy_bits[1], -(p * np.log2(p)).sum())
    assert usage.samples == 2
    summary = usage.summary()
    assert summary["blocks"][0] == {"layer": 0, "fired": 2, "entropy_bits": 1.0, "normalized_entropy": 0.5}
    with pytest.raises(ValueError, match=r"covers layers \[0\], the counter \[0, 2\]"):
        usage.update([r0])
    with pytest.raises(ValueError, match="outside"):
        usage.update([r0, BigMoeRouting(2, torch.tensor([[[[4, 0]], [[0, 0]]]]), torch.ones(1, 2, 1, 2))])
    with pytest.raises(ValueError, match="distinct"):
        ExpertUsage(4, [1, 1])


# ---------------------------------------------------------------- the tiny model, brute force


def test_explain_inputs_matches_brute_force(tiny):
    model, processor = tiny
    rgb, depth, _ir = _capture()
    enc = processor([rgb], depth_images=[depth], ir_images=[None], return_tensors="pt")
    exp = explain_inputs(model, pixel_values=enc["pixel_values"], depth_pixel_values=enc["depth_pixel_values"],
                         ir_pixel_values=enc["ir_pixel_values"], modality_mask=enc["modality_mask"], attentions=True)
    backbone = model.bigmoe
    adapters = [layer for layer in get_clip_encoder_layers(backbone.vision_tower)
                if isinstance(layer, BigMoeBlockAdapter)]
    assert [b.layer_idx for b in exp.blocks] == [a.layer_idx for a in adapters] == [0, 1]
    assert all(not a._forward_pre_hooks for a in adapters), "hooks must be removed"
    assert exp.modalities == [["rgb", "depth"]]
    with torch.no_grad():
        out = model(pixel_values=enc["pixel_values"], depth_pixel_values=enc["depth_pixel_values"],
                    ir_pixel_values=enc["ir_pixel_values"], modality_mask=enc["modality_mask"],
                    output_routing=True, output_attentions=True, output_hidden_states=True)
        # block 0's prompt: the prompt generator's output, recomputed by hand
        images, code = backbone.prepare_modalities(
            pixel_values=enc["pixel_values"], depth_pixel_values=enc["depth_pixel_values"],
            ir_pixel_values=enc["ir_pixel_values"], modality_mask=enc["modality_mask"])
        m, b, c, h, w = images.shape
        prompt0 = map_to_tokens(backbone.prompt_generator(images.transpose(0, 1).reshape(b, m * c, h, w), code))
        # block 1's prompt: block 0 run by hand on its input
        prompt1 = adapters[0](out.hidden_states[0], prompt0)[1]
    np.testing.assert_allclose(exp.live_scores, out.logits.softmax(-1)[:, 1].numpy(), rtol=1e-6)
    np.testing.assert_allclose(exp.blocks[0].prompt_magnitude[0].reshape(-1),
                               prompt0[0].norm(dim=-1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(exp.blocks[1].prompt_magnitude[0].reshape(-1),
                               prompt1[0].norm(dim=-1).numpy(), rtol=1e-5)
    assert exp.blocks[1].prompt_magnitude.max() > 0
    grid, k = 4, 4
    for block, routing in zip(exp.blocks, out.routing, strict=True):
        w_, i_ = routing.weights[0], routing.indices[0]  # (N, heads, k)
        for n in range(grid * grid):
            expected_score = float(np.mean([float(w_[n, hh].max()) for hh in range(w_.shape[1])]))
            assert block.top_score[0, n // grid, n % grid] == pytest.approx(expected_score, abs=1e-6)
            best = max((float(w_[n, hh, kk]), -(hh * 2 + kk), int(i_[n, hh, kk]))
                        for hh in range(w_.shape[1]) for kk in range(w_.shape[2]))
            assert block.top_cluster[0, n // grid, n % grid] == best[2] // k
        attn = out.attentions[block.layer_idx][0].mean(0)[0]  # CLS row, (1 + 3N,)
        # stream order rgb, ir, depth; maps are rgb, depth, ir
        np.testing.assert_allclose(block.cls_attention[0, 0].reshape(-1), attn[1:17].numpy(), rtol=1e-5)
        np.testing.assert_allclose(block.cls_attention[0, 1].reshape(-1), attn[33:49].numpy(), rtol=1e-5)
        np.testing.assert_allclose(block.cls_attention[0, 2].reshape(-1), attn[17:33].numpy(), rtol=1e-5)
        assert block.cls_attention[0].sum() == pytest.approx(1.0 - float(attn[0]), abs=1e-5)
    # routing/prompt maps do not depend on whether attentions were asked for
    plain = explain_inputs(model, pixel_values=enc["pixel_values"], depth_pixel_values=enc["depth_pixel_values"],
                           modality_mask=enc["modality_mask"])
    assert plain.blocks[0].cls_attention is None
    np.testing.assert_allclose(plain.blocks[1].top_score, exp.blocks[1].top_score, atol=1e-5)


def test_explain_capture_figures_and_usage(tiny, tmp_path):
    model, processor = tiny
    rgb, depth, ir = _capture(1)
    exp = explain_capture(model, processor, rgb, depth, ir, attentions=True)
    assert exp.modalities == [["rgb", "depth", "ir"]]
    assert exp.images["rgb"].shape == (1, 32, 32, 3)
    # the display image is the processor's 0..1 tensor: the resized RGB
    raw = processor([rgb], return_tensors="pt", do_normalize=False)["pixel_values"][0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(exp.images["rgb"][0], raw, atol=1e-6)
    summary = exp.summary()
    assert summary["decision"] == ("live" if summary["live_score"] >= 0.45 else "spoof")
    assert summary["threshold"] == pytest.approx(0.45)
    assert len(summary["blocks"]) == 2 and set(summary["blocks"][0]["cls_attention_share"]) == {"rgb", "depth", "ir"}
    inputs_png = save_figure(render_inputs(exp), tmp_path / "inputs.png")
    routing_png = save_figure(render_routing(exp), tmp_path / "routing.png")
    with Image.open(inputs_png) as im:
        assert im.size == (750, 300) and im.mode == "RGB"
    with Image.open(routing_png) as im:
        assert im.size == (round(2.3 * 6 * 100), round((2.1 * 2 + 0.5) * 100))
    usage = ExpertUsage.for_model(model)
    batches = [processor([r], depth_images=[d], ir_images=[i], return_tensors="pt")
               for r, d, i in (_capture(s) for s in range(3))]
    usage.add_batches(model, batches)
    # every token chooses heads * experts_per_head experts per block: 3 captures x 16 tokens x 2 x 2
    assert usage.counts.sum(axis=1).tolist() == [3 * 16 * 4] * 2
    assert usage.samples == 3 and 1 <= usage.fired.min() <= usage.fired.max() <= 16
    assert 0 < usage.normalized_entropy.min() <= usage.normalized_entropy.max() <= 1
    usage_png = save_figure(render_expert_usage(usage), tmp_path / "usage.png")
    assert usage_png.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs.png", "routing.png", "usage.png"]
    with pytest.raises(ValueError, match="sample must be in"):
        render_routing(exp, sample=1)
    with pytest.raises(ValueError, match="rgb is required"):
        explain_capture(model, processor, None, depth)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        save_figure(np.zeros((4, 4)), tmp_path / "bad.png")


def test_unknown_model_type_rejected():
    class Other(torch.nn.Module):
        config = type("C", (), {"model_type": "clip"})()

    with pytest.raises(ValueError, match="model_type 'clip' is not supported"):
        explain_inputs(Other(), pixel_values=torch.zeros(1, 3, 32, 32))
    Other.config.model_type = "mmda"
    with pytest.raises(ValueError, match="'mmda' is not supported here; PEER routing"):
        ExpertUsage.for_model(Other())


# ---------------------------------------------------------------- CLI


def _parser():
    parser = argparse.ArgumentParser(prog="bigmoe-fas")
    add_explain_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_explain_cli(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    captures = tmp_path / "caps"
    captures.mkdir()
    for s in range(2):
        rgb, depth, ir = _capture(s)
        Image.fromarray(rgb).save(captures / f"c{s}_rgb.png")
        Image.fromarray(depth).save(captures / f"c{s}_depth.png")
        Image.fromarray(ir).save(captures / f"c{s}_ir.png")
    out = tmp_path / "out"
    args = _parser().parse_args(["explain", str(tmp_path / "model"), str(captures), "--out", str(out),
                                 "--capture", "c1", "--attention", "--usage", str(captures)])
    assert args.func(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["inputs.png", "routing.png", "summary.json", "usage.png"]
    summary = json.loads((out / "summary.json").read_text())
    direct = explain_capture(model, processor, str(captures / "c1_rgb.png"), str(captures / "c1_depth.png"),
                             str(captures / "c1_ir.png"))
    assert summary["capture"]["name"] == "c1"
    assert summary["live_score"] == pytest.approx(float(direct.live_scores[0]), abs=1e-6)
    assert summary["expert_usage"]["samples"] == 2
    assert sum(b["fired"] for b in summary["expert_usage"]["blocks"]) > 0
    # a single RGB file with --depth; the synthetic usage set
    args = _parser().parse_args(["explain", str(tmp_path / "model"), str(captures / "c0_rgb.png"),
                                 "--depth", str(captures / "c0_depth.png"), "--out", str(tmp_path / "o2"),
                                 "--usage-synthetic", "4", "--batch-size", "3"])
    assert args.func(args) == 0
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert summary["modalities"] == ["rgb", "depth"] and summary["expert_usage"]["samples"] == 4
    assert math.isclose(sum(1 for _ in (tmp_path / "o2").iterdir()), 4)
    # errors
    bad = _parser().parse_args(["explain", str(tmp_path / "nope"), str(captures), "--out", str(tmp_path / "o3")])
    with pytest.raises(FileNotFoundError, match="nope"):
        bad.func(bad)
    bad = _parser().parse_args(["explain", str(tmp_path / "model"), str(captures), "--capture", "zz",
                                "--out", str(tmp_path / "o3")])
    with pytest.raises(ValueError, match="no capture named 'zz'"):
        bad.func(bad)
    bad = _parser().parse_args(["explain", str(tmp_path / "model"), str(captures / "c0_rgb.png"),
                                "--ir", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o3")])
    with pytest.raises(FileNotFoundError, match="--ir file"):
        bad.func(bad)
    assert not (tmp_path / "o3").exists()


# ---------------------------------------------------------------- La-SoftMoE slots and MMDA levels


def test_soft_moe_maps_hand_computed():
    # grid 1, one modality: tokens [CLS, patch]; 4 slots, 2 experts (slots 0-1 expert 0, 2-3 expert 1)
    combine = torch.tensor([[[0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]]])
    dispatch = torch.tensor([[[0.5, 0.75, 0.0, 1.0], [0.5, 0.25, 1.0, 0.0]]])
    top, share, mass = soft_moe_maps(dispatch, combine, 2, 1)
    assert top.shape == (1, 1, 1, 1) and int(top[0, 0, 0, 0]) == 1
    assert share[0, 0, 0, 0] == pytest.approx(0.7)
    assert mass[0, 0, 0, 0] == pytest.approx(1.75)
    with pytest.raises(ValueError, match="do not split over 3 experts"):
        soft_moe_maps(dispatch, combine, 3, 1)
    with pytest.raises(ValueError, match=r"\(b, 4, s\)"):
        soft_moe_maps(dispatch, combine, 2, 1, num_modalities=3)


@pytest.mark.parametrize("input_mode", ["rgb", "multimodal"])
def test_lasoftmoe_slot_maps_brute_force(input_mode):
    from modeling_bigmoe.hub_configs_lasoftmoe import tiny_config as lasoftmoe_tiny
    from modeling_bigmoe.layers_softmoe import LaSoftMoeLayer
    from modeling_bigmoe.modeling_lasoftmoe import LaSoftMoeForFaceAntiSpoofing

    model = LaSoftMoeForFaceAntiSpoofing(lasoftmoe_tiny(input_mode=input_mode)).eval()
    processor = BigMoeImageProcessor(size=32)
    rgb, depth, _ = _capture(2)
    layers = [m for m in model.modules() if isinstance(m, LaSoftMoeLayer)]
    seen = {}
    handles = [layer.register_forward_hook(lambda mod, args, out, i=i: seen.__setitem__(i, args[0]))
               for i, layer in enumerate(layers)]
    exp = explain_capture(model, processor, rgb, depth, None)
    for handle in handles:
        handle.remove()
    assert all(not layer._forward_pre_hooks for layer in layers), "hooks must be removed"
    stream = ("rgb", "depth", "ir") if input_mode == "multimodal" else ("rgb",)
    assert exp.model_type == "la_softmoe" and exp.stream_modalities == stream
    assert exp.modalities == [["rgb", "depth"] if input_mode == "multimodal" else ["rgb"]]
    assert len(exp.slot_blocks) == len(layers) == 2 and exp.grid == 4
    e = model.config.moe_num_experts
    with torch.no_grad():
        for i, (block, layer) in enumerate(zip(exp.slot_blocks, layers, strict=True)):
            logits = layer.logits(seen[i])
            dispatch = logits.softmax(dim=1)[0]
            combine = layer.combine_weights(logits)[0]
            s = combine.shape[-1]
            for m in range(len(stream)):
                for n in range(16):
                    token = 1 + m * 16 + n
                    sums = [float(combine[token, x * (s // e):(x + 1) * (s // e)].sum()) for x in range(e)]
                    r, c = divmod(n, 4)
                    assert block.top_expert[0, m, r, c] == int(np.argmax(sums))
                    assert block.top_share[0, m, r, c] == pytest.approx(max(sums), abs=1e-5)
                    assert block.read_mass[0, m, r, c] == pytest.approx(float(dispatch[token].sum()), abs=1e-5)
            # every slot's dispatch sums to 1 over the tokens: patches + CLS = s
            assert block.read_mass[0].sum() + float(dispatch[0].sum()) == pytest.approx(s, abs=1e-4)
    summary = exp.summary()
    assert [sum(b["expert_patch_counts"]) for b in summary["slot_blocks"]] == [16 * len(stream)] * 2
    image = render_routing(exp)
    assert image.shape == (round((2.1 * 2 + 0.5) * 100), round(2.3 * 3 * len(stream) * 100), 3)


def test_mmda_alignment_levels():
    from modeling_bigmoe.hub_configs_mmda import tiny_config as mmda_tiny
    from modeling_bigmoe.modeling_mmda import MmdaForFaceAntiSpoofing

    model = MmdaForFaceAntiSpoofing(mmda_tiny(decision_threshold=0.3)).eval()
    processor = BigMoeImageProcessor(size=32)
    rgb, _, ir = _capture(3)
    exp = explain_capture(model, processor, rgb, None, ir)
    enc = processor([rgb], ir_images=[ir], return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=enc["pixel_values"], depth_pixel_values=enc["depth_pixel_values"],
                    ir_pixel_values=enc["ir_pixel_values"], modality_mask=enc["modality_mask"])
    levels = out.alignment_logits.softmax(-1)[0, :, 1].numpy()
    assert exp.alignment_live.shape == (1, 2 * model.config.udsa_depth + 1)
    np.testing.assert_allclose(exp.alignment_live[0], levels, rtol=1e-5)
    assert exp.live_scores[0] == pytest.approx(float(out.logits.softmax(-1)[0, 1]), abs=1e-6)
    assert exp.modalities == [["rgb", "ir"]] and exp.threshold == pytest.approx(0.3)
    summary = exp.summary()
    assert summary["model_type"] == "mmda" and len(summary["alignment_live"]) == levels.size
    assert render_routing(exp).shape[2] == 3 and render_inputs(exp).shape == (300, 750, 3)


def test_explain_cli_mmda_and_usage_refused(tmp_path):
    from modeling_bigmoe.hub_configs_mmda import tiny_config as mmda_tiny
    from modeling_bigmoe.modeling_mmda import MmdaForFaceAntiSpoofing

    MmdaForFaceAntiSpoofing(mmda_tiny()).save_pretrained(tmp_path / "mmda")
    BigMoeImageProcessor(size=32).save_pretrained(tmp_path / "mmda")
    rgb, depth, ir = _capture(4)
    for name, array in (("rgb", rgb), ("depth", depth), ("ir", ir)):
        Image.fromarray(array).save(tmp_path / f"x_{name}.png")
    files = [str(tmp_path / "x_rgb.png"), "--depth", str(tmp_path / "x_depth.png"), "--ir", str(tmp_path / "x_ir.png")]
    bad = _parser().parse_args(["explain", str(tmp_path / "mmda"), *files, "--out", str(tmp_path / "o1"),
                                "--usage-synthetic", "4"])
    with pytest.raises(ValueError, match="only BIG-MoE models have; .* is a 'mmda' model .*alignment levels"):
        bad.func(bad)
    assert not (tmp_path / "o1").exists()  # refused before anything is written
    args = _parser().parse_args(["explain", str(tmp_path / "mmda"), *files, "--out", str(tmp_path / "o2")])
    assert args.func(args) == 0
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert summary["model_type"] == "mmda" and len(summary["alignment_live"]) == 15
    assert (tmp_path / "o2" / "routing.png").read_bytes()[:4] == b"\x89PNG"
