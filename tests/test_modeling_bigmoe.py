"""BIG-MoE model tests: tiny sizes, seconds each."""

from __future__ import annotations

import unittest

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

from modeling_bigmoe import (
    BigMoeBlockAdapter,
    BigMoeConfig,
    BigMoeForFaceAntiSpoofing,
    BigMoeModel,
    get_clip_encoder_layers,
)
from modeling_bigmoe.clip_utils import get_clip_embeddings, get_clip_layernorms
from modeling_bigmoe.layers_cdc import map_to_tokens

from common import ModelTesterMixin, assert_inputs_unchanged, clone_inputs

VISION = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 3, "num_attention_heads": 4,
          "image_size": 32, "patch_size": 8}


class BigMoeModelTester:
    """Tiny defaults: image 32, patch 8 (4x4 grid), hidden 32, 3 layers, 4 heads, 16 experts, bottleneck 4."""

    adapter_key_markers = ("moe_adapter", "cpb", "prompt_generator", "bigmoe.embeddings", "classifier")
    # gradients upstream of a zero-initialised up-projection are exactly zero: test with the PyTorch init
    grad_overrides = {"adapter_init": "default", "modality_dropout": 0.0}

    def get_config(self, **overrides) -> BigMoeConfig:
        kwargs = dict(vision_config=dict(VISION), moe_num_experts=16, moe_bottleneck_dim=4, moe_key_dim=4,
                      cpb_prompt_dim=8)
        kwargs.update(overrides)
        return BigMoeConfig(**kwargs)

    def prepare_inputs(self, batch_size: int, seed: int = 0) -> dict:
        g = torch.Generator().manual_seed(seed)
        return {name: torch.randn(batch_size, 3, 32, 32, generator=g)
                for name in ("pixel_values", "depth_pixel_values", "ir_pixel_values")}


class BigMoeModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (BigMoeForFaceAntiSpoofing, BigMoeModel)
    model_tester = BigMoeModelTester()
    invalid_config_values = (
        ("moe_num_experts", 15), ("moe_key_dim", 3), ("adapter_layers", [0, 3]), ("adapter_layers", [-1]),
        ("moe_dropout", 1.5), ("modality_dropout", -0.1), ("adapter_dropout", 2), ("cdc_theta", 1.2),
        ("block_wiring", "postln"), ("position_embedding_init", "sinusoid"), ("adapter_init", "ones"),
        ("trainable_backbone_layers", 4), ("trainable_backbone_layers", -1), ("eca_kernel_size", 4),
        ("modality_dropout_seed", "x"), ("moe_product_key_topk", 5), ("moe_experts_per_head", 5),
        ("legacy_transpose", "yes"), ("decision_threshold", 1.1),
    )

    def test_create_and_check_model(self):
        model = BigMoeForFaceAntiSpoofing(self.model_tester.get_config()).eval()
        out = model(**self.model_tester.prepare_inputs(2), labels=torch.tensor([0, 1]))
        self.assertEqual(out.logits.shape, (2, 2))
        self.assertEqual(out.loss.shape, ())
        self.assertAlmostEqual(out.loss.item(), F.cross_entropy(out.logits, torch.tensor([0, 1])).item(), places=6)
        self.assertEqual(model.config.id2label, {0: "spoof", 1: "live"})
        # IGMA in layers 0-1 (not the last), CPB only in layer 0 (its prompt feeds layer 1)
        layers = get_clip_encoder_layers(model.bigmoe.vision_tower)
        self.assertEqual([isinstance(layer, BigMoeBlockAdapter) for layer in layers], [True, True, False])
        self.assertIsNotNone(layers[0].cpb)
        self.assertIsNone(layers[1].cpb)

    def test_expert_tables_use_configured_std(self):
        for std in (1.0, 0.25):
            config = self.model_tester.get_config(moe_num_experts=400, moe_bottleneck_dim=8, moe_key_dim=8,
                                                  expert_init_std=std)
            model = BigMoeForFaceAntiSpoofing(config)
            peer = get_clip_encoder_layers(model.bigmoe.vision_tower)[0].moe_adapter.peer
            for table in (peer.weight_down.weight, peer.weight_up.weight):
                self.assertAlmostEqual(table.std().item(), std, delta=0.05 * std)  # 9600 draws
            self.assertAlmostEqual(peer.keys.std().item(), 0.02, delta=0.004)
            up = get_clip_encoder_layers(model.bigmoe.vision_tower)[0].moe_adapter.up
            self.assertEqual(float(up.weight.abs().sum() + up.bias.abs().sum()), 0.0)  # adapter_init="zero"
            prompts = model.bigmoe.prompt_generator
            self.assertEqual(float(prompts.modality_prompts.abs().sum() + prompts.task_prompt.abs().sum()), 0.0)

    def test_tiled_position_init_and_zero_adapter_start(self):
        model = BigMoeForFaceAntiSpoofing(self.model_tester.get_config())
        clip = get_clip_embeddings(model.bigmoe.vision_tower)
        emb = model.bigmoe.embeddings
        table = clip.position_embedding.weight
        self.assertTrue(torch.equal(emb.cls_token, clip.class_embedding))
        self.assertTrue(torch.equal(emb.position_embedding[0], table[0]))
        for j in range(3):
            self.assertTrue(torch.equal(emb.position_embedding[1 + 16 * j: 17 + 16 * j], table[1:]))
        self.assertEqual(float(emb.modality_embedding.abs().sum()), 0.0)
        random = BigMoeForFaceAntiSpoofing(self.model_tester.get_config(position_embedding_init="random"))
        self.assertIsNone(random.bigmoe.embeddings.modality_embedding)
        self.assertEqual(float(random.bigmoe.embeddings.cls_token.abs().sum()), 0.0)
        self.assertAlmostEqual(random.bigmoe.embeddings.position_embedding.std().item(), 0.02, delta=0.004)

    def test_zero_init_matches_plain_clip_on_rgb_only_stream(self):
        """With adapter_init="zero", tiled init and one modality's tokens, the CLS equals CLIP's own pooled output
        when the other modalities' tokens are removed: checks the pre-LN wiring and the patch embedding."""
        config = self.model_tester.get_config()
        model = BigMoeModel(config).eval()
        clip = CLIPVisionModel(CLIPVisionConfig(**VISION)).eval()
        clip.load_state_dict({k: v for k, v in model.vision_tower.state_dict().items()
                              if "moe_adapter" not in k and "cpb" not in k and ".base_layer" not in k}
                             | {k.replace(".base_layer", ""): v for k, v in model.vision_tower.state_dict().items()
                                if ".base_layer" in k})
        rgb = torch.randn(2, 3, 32, 32)
        # run our block loop on [CLS; RGB tokens] only
        emb = get_clip_embeddings(model.vision_tower)
        tokens = emb.patch_embedding(rgb).flatten(2).transpose(1, 2)
        x = torch.cat([model.embeddings.cls_token.expand(2, 1, 32), tokens], 1) + model.embeddings.position_embedding[:17]
        pre, post = get_clip_layernorms(model.vision_tower)
        x = pre(x)
        from modeling_bigmoe.adapters import clip_block_forward
        for layer in get_clip_encoder_layers(model.vision_tower):
            base = layer.base_layer if isinstance(layer, BigMoeBlockAdapter) else layer
            x, _ = clip_block_forward(base, x)
        with torch.no_grad():
            expected = clip(pixel_values=rgb).pooler_output
        torch.testing.assert_close(post(x[:, 0]), expected, rtol=1e-5, atol=1e-5)

    def _hand_block(self, model, layer, x, prompt, wiring):
        """Step-by-step block with hand-written attention (softmax(q k^T / sqrt(d)) v)."""
        base = layer.base_layer
        attn = base.self_attn
        heads, b, n, d = 4, x.shape[0], x.shape[1], x.shape[2]

        def attention(t):
            q, k, v = (proj(t).view(b, n, heads, d // heads).transpose(1, 2)
                       for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
            w = (q @ k.transpose(-1, -2) / (d // heads) ** 0.5).softmax(-1)
            return attn.out_proj((w @ v).transpose(1, 2).reshape(b, n, d))

        igma = layer.moe_adapter
        if wiring == "preln":
            x = x + attention(base.layer_norm1(x))
            h = base.layer_norm2(x)
            z = igma(h[:, 1:], prompt)[0]
            return x + base.mlp(h) + torch.cat([torch.zeros_like(z[:, :1]), z], 1)
        x = base.layer_norm1(x)                      # the stream is replaced by the LN1 output
        x = x + attention(x)                         # residual on the LN output
        h = base.layer_norm2(x)
        z = igma(h[:, 1:], prompt)[0]
        a = x + torch.cat([x[:, :1], z], 1)          # the adapter returns x + Z, CLS passed through
        return x + base.mlp(h) + a                   # patches twice, CLS three times

    def test_block_wiring_matches_hand_computation(self):
        for wiring in ("preln", "reference"):
            with self.subTest(wiring=wiring):
                model = BigMoeModel(self.model_tester.get_config(block_wiring=wiring, adapter_init="default")).eval()
                inputs = self.model_tester.prepare_inputs(2)
                with torch.no_grad():
                    out = model(**inputs, output_hidden_states=True)
                    images, code = model.prepare_modalities(**inputs)
                    stacked = images.transpose(0, 1).reshape(2, 9, 32, 32)
                    prompt = map_to_tokens(model.prompt_generator(stacked, code))
                    layer0 = get_clip_encoder_layers(model.vision_tower)[0]
                    expected = self._hand_block(model, layer0, out.hidden_states[0], prompt, wiring)
                torch.testing.assert_close(out.hidden_states[1], expected, rtol=1e-5, atol=1e-5)
                _, post = get_clip_layernorms(model.vision_tower)
                final_cls = out.last_hidden_state[:, 0]
                torch.testing.assert_close(out.pooler_output, post(final_cls) if wiring == "preln" else final_cls)

    def test_routing_outputs(self):
        model = BigMoeForFaceAntiSpoofing(self.model_tester.get_config()).eval()
        out = model(**self.model_tester.prepare_inputs(2), output_routing=True)
        self.assertEqual([r.layer_idx for r in out.routing], [0, 1])
        for routing in out.routing:
            self.assertEqual(routing.indices.shape, (2, 16, 2, 2))
            self.assertTrue(bool(((routing.indices >= 0) & (routing.indices < 16)).all()))
            torch.testing.assert_close(routing.weights.sum(-1), torch.ones(2, 16, 2))
            # the two experts kept by a head are distinct
            self.assertTrue(bool((routing.indices[..., 0] != routing.indices[..., 1]).all()))

    def test_attentions(self):
        model = BigMoeForFaceAntiSpoofing(self.model_tester.get_config()).eval()
        inputs = self.model_tester.prepare_inputs(2)
        with torch.no_grad():
            plain = model(**inputs)
            out = model(**inputs, output_attentions=True, output_hidden_states=True)
        self.assertEqual(len(out.attentions), 3)
        for attn in out.attentions:
            self.assertEqual(attn.shape, (2, 4, 49, 49))
            torch.testing.assert_close(attn.sum(-1), torch.ones(2, 4, 49))
        self.assertEqual(len(out.hidden_states), 4)
        torch.testing.assert_close(plain.logits, out.logits, rtol=1e-5, atol=1e-5)  # SDPA == eager
        self.assertEqual(model.bigmoe.vision_tower.config._attn_implementation, "sdpa")  # restored
        self.assertIsNone(plain.attentions)

    def test_return_dict_false(self):
        model = BigMoeForFaceAntiSpoofing(self.model_tester.get_config()).eval()
        inputs = self.model_tester.prepare_inputs(2)
        out = model(**inputs, labels=torch.tensor([0, 1]), return_dict=False)
        self.assertIsInstance(out, tuple)
        torch.testing.assert_close(out[1], model(**inputs).logits)


class MissingModalityTest(unittest.TestCase):
    tester = BigMoeModelTester()

    def test_missing_modality_codes_and_fill(self):
        model = BigMoeForFaceAntiSpoofing(self.tester.get_config(modality_dropout_fill=0.5)).eval()
        inputs = self.tester.prepare_inputs(2)
        before = clone_inputs(inputs)
        cases = {  # public mask (rgb, depth, ir) -> internal code (bit0 RGB, bit1 IR, bit2 Depth)
            (1, 1, 1): 0, (0, 1, 1): 1, (1, 1, 0): 2, (1, 0, 1): 4, (1, 0, 0): 6, (0, 0, 1): 5, (0, 1, 0): 3,
        }
        with torch.no_grad():
            for mask, code in cases.items():
                mask_t = torch.tensor([mask, mask])
                out = model(**inputs, modality_mask=mask_t)
                self.assertEqual(out.modality_code.tolist(), [code, code])
                self.assertTrue(bool(torch.isfinite(out.logits).all()))
                # the same as passing None for the missing ones
                as_none = {k: (v if mask[("pixel_values", "depth_pixel_values", "ir_pixel_values").index(k)]
                               else None) for k, v in inputs.items()}
                torch.testing.assert_close(model(**as_none).logits, out.logits)
                # and as passing the fill value explicitly with the mask
                images, _ = model.bigmoe.prepare_modalities(**inputs, modality_mask=mask_t)
                for j, name in enumerate(("pixel_values", "ir_pixel_values", "depth_pixel_values")):
                    expected = inputs[name] if not (code >> j) & 1 else torch.full_like(inputs[name], 0.5)
                    self.assertTrue(torch.equal(images[j], expected))
        assert_inputs_unchanged(self, before, inputs)
        # per-sample mask
        out = model(**inputs, modality_mask=torch.tensor([[1, 1, 1], [1, 0, 0]]))
        self.assertEqual(out.modality_code.tolist(), [0, 6])

    def test_modality_dropout_seeded_vectorised_out_of_place(self):
        config = self.tester.get_config(modality_dropout=0.3, modality_dropout_seed=123, modality_dropout_fill=-1.0)
        model_a, model_b = BigMoeModel(config).train(), BigMoeModel(config).train()
        inputs = self.tester.prepare_inputs(2000)
        before = clone_inputs(inputs)
        images, code_a = model_a.prepare_modalities(**inputs)
        _, code_b = model_b.prepare_modalities(**inputs)
        self.assertTrue(torch.equal(code_a, code_b))  # same seed, same draws
        _, code_a2 = model_a.prepare_modalities(**inputs)
        self.assertFalse(torch.equal(code_a, code_a2))  # the generator advances
        assert_inputs_unchanged(self, before, inputs)
        bits = torch.stack([(code_a >> j) & 1 for j in range(3)], 1).float()
        rate = bits.mean(0)
        self.assertTrue(bool(((rate > 0.26) & (rate < 0.34)).all()), rate)
        self.assertGreater(int((code_a == 7).sum()), 0)  # allowed by default
        for j, name in enumerate(("pixel_values", "ir_pixel_values", "depth_pixel_values")):
            dropped = bits[:, j].bool()
            self.assertTrue(bool((images[j][dropped] == -1.0).all()))
            self.assertTrue(torch.equal(images[j][~dropped], inputs[name][~dropped]))
        # eval: no dropout
        model_a.eval()
        self.assertEqual(int(model_a.prepare_modalities(**inputs)[1].sum()), 0)

    def test_modality_dropout_forbid_all_missing(self):
        config = self.tester.get_config(modality_dropout=0.9, modality_dropout_seed=0,
                                        modality_dropout_allow_all_missing=False)
        model = BigMoeModel(config).train()
        inputs = self.tester.prepare_inputs(500)
        _, code = model.prepare_modalities(**inputs)
        self.assertEqual(int((code == 7).sum()), 0)
        self.assertGreater(int((code == 6).sum() + (code == 5).sum() + (code == 3).sum()), 300)
        # a sample with only RGB given keeps RGB
        _, code = model.prepare_modalities(pixel_values=inputs["pixel_values"])
        self.assertTrue(bool((code == 6).all()))


class BadInputTest(unittest.TestCase):
    tester = BigMoeModelTester()

    def setUp(self):
        self.model = BigMoeForFaceAntiSpoofing(self.tester.get_config()).eval()
        self.inputs = self.tester.prepare_inputs(2)

    def _raises(self, pattern, **overrides):
        inputs = dict(self.inputs, **overrides)
        before = clone_inputs(inputs)
        with pytest.raises(ValueError, match=pattern):
            self.model(**inputs)
        assert_inputs_unchanged(self, before, inputs)

    def test_bad_inputs(self):
        self._raises(r"depth_pixel_values.*\(2, 3, 16, 16\)", depth_pixel_values=torch.randn(2, 3, 16, 16))
        self._raises(r"ir_pixel_values.*\(2, 1, 32, 32\)", ir_pixel_values=torch.randn(2, 1, 32, 32))
        self._raises(r"batch sizes differ.*\(3, 3, 32, 32\)", pixel_values=torch.randn(3, 3, 32, 32))
        self._raises("all modalities are missing", pixel_values=None, depth_pixel_values=None, ir_pixel_values=None)
        self._raises(r"modality_mask.*\(2, 3\).*\(2, 2\)", modality_mask=torch.ones(2, 2))
        self._raises(r"modality_mask.*all modalities missing.*\[1\]",
                     modality_mask=torch.tensor([[1, 1, 1], [0, 0, 0]]))
        nan = self.inputs["pixel_values"].clone()
        nan[0, 0, 0, 0] = float("nan")
        self._raises(r"pixel_values.*NaN/inf", pixel_values=nan)
        inf = self.inputs["ir_pixel_values"].clone()
        inf[1, 2, 3, 4] = float("inf")
        self._raises(r"ir_pixel_values.*\(2, 3, 32, 32\).*NaN/inf", ir_pixel_values=inf)
        self._raises("modality_mask marks", depth_pixel_values=None, modality_mask=torch.ones(2, 3))
        with pytest.raises(ValueError, match="labels"):
            self.model(**self.inputs, labels=torch.tensor([[0, 1]]))


def test_tiny_model_overfits_16_samples():
    tester = BigMoeModelTester()
    torch.manual_seed(0)
    config = tester.get_config(modality_dropout=0.0, adapter_dropout=0.0, cpb_dropout=0.0)
    model = BigMoeForFaceAntiSpoofing(config).train()
    inputs = tester.prepare_inputs(16, seed=1)
    labels = torch.tensor([0, 1] * 8)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(100):
        loss = model(**inputs, labels=labels).loss
        if loss.item() < 0.05:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert model(**inputs, labels=labels).loss.item() < 0.1


def _tiny_clip_folder(tmp, kind):
    vision = CLIPVisionConfig(**VISION)
    if kind == "vision":
        model = CLIPVisionModel(vision)
        model.save_pretrained(tmp)
        return model
    full = CLIPModel(CLIPConfig(vision_config=vision.to_dict(),
                                text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                                             "num_attention_heads": 4, "vocab_size": 99}))
    full.save_pretrained(tmp)
    clip = CLIPVisionModel(vision)
    clip.load_state_dict({k[len("vision_model."):]: v for k, v in full.state_dict().items()
                          if k.startswith("vision_model.")})
    return clip


@pytest.mark.parametrize("kind", ["vision", "full", "prefixed"])
def test_from_clip(tmp_path, kind):
    clip = _tiny_clip_folder(tmp_path, "full" if kind == "full" else "vision")
    if kind == "prefixed":  # pre-5.6 CLIPVisionModel keys: "vision_model."-prefixed
        path = tmp_path / "model.safetensors"
        state = load_file(path)
        save_file({f"vision_model.{k}": v for k, v in state.items()}, path, metadata={"format": "pt"})
    model = BigMoeForFaceAntiSpoofing.from_clip(tmp_path, moe_num_experts=16, moe_bottleneck_dim=4, moe_key_dim=4,
                                                cpb_prompt_dim=8).eval()
    assert model.config.base_model_name_or_path == str(tmp_path)
    ours = get_clip_encoder_layers(model.bigmoe.vision_tower)
    theirs = get_clip_encoder_layers(clip)
    for layer, src in zip(ours, theirs):
        base = layer.base_layer if isinstance(layer, BigMoeBlockAdapter) else layer
        for (name, p), (_, q) in zip(base.state_dict().items(), src.state_dict().items()):
            assert torch.equal(p, q), name
    table = get_clip_embeddings(clip).position_embedding.weight
    emb = model.bigmoe.embeddings
    assert torch.equal(emb.cls_token, get_clip_embeddings(clip).class_embedding)
    assert torch.equal(emb.position_embedding[1 + 32: 49], table[1:])
    assert torch.equal(get_clip_layernorms(model.bigmoe.vision_tower)[1].weight, get_clip_layernorms(clip)[1].weight)
    # the frozen / trainable split survives
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "classifier.weight" in trainable and not any("patch_embedding" in n for n in trainable)
    with torch.no_grad():
        assert torch.isfinite(model(**BigMoeModelTester().prepare_inputs(2)).logits).all()


def test_trainable_set_and_summary(capsys):
    model = BigMoeForFaceAntiSpoofing(BigMoeModelTester().get_config())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(".layers.2." in n for n in trainable)  # last block (trainable_backbone_layers=1)
    assert not any(".layers.1.base_layer" in n for n in trainable)
    assert all(("moe_adapter" in n or "cpb" in n) for n in trainable if ".layers.0." in n or ".layers.1." in n)
    assert any("post_layernorm" in n for n in trainable) and any("pre_layrnorm" in n for n in frozen)
    for name in ("bigmoe.embeddings.cls_token", "bigmoe.embeddings.position_embedding",
                 "bigmoe.embeddings.modality_embedding", "classifier.weight",
                 "bigmoe.prompt_generator.modality_prompts"):
        assert name in trainable
    model.print_trainable_parameters()
    total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert f"trainable params: {n_train:,d} || all params: {total:,d}" in capsys.readouterr().out
    # reference wiring never applies CLIP's post-LN: it stays frozen (it would get no gradient)
    ref = BigMoeForFaceAntiSpoofing(BigMoeModelTester().get_config(block_wiring="reference"))
    assert not any("post_layernorm" in n for n, p in ref.named_parameters() if p.requires_grad)
    # trainable_backbone_layers=0 leaves all CLIP blocks frozen
    zero = BigMoeForFaceAntiSpoofing(BigMoeModelTester().get_config(trainable_backbone_layers=0))
    assert not any("base_layer" in n or ".layers.2." in n for n, p in zero.named_parameters() if p.requires_grad)


def test_reference_wiring_and_legacy_transpose_train():
    tester = BigMoeModelTester()
    config = tester.get_config(block_wiring="reference", legacy_transpose=True, prompt_residual=True,
                               adapter_init="default", modality_dropout=0.0, adapter_layers=[0, 1, 2],
                               vision_config=dict(VISION, num_hidden_layers=4))
    model = BigMoeForFaceAntiSpoofing(config).train()
    out = model(**tester.prepare_inputs(2), labels=torch.tensor([0, 1]))
    out.loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    # legacy transpose changes the result (grid flipped between blocks)
    model.eval()
    flipped = BigMoeForFaceAntiSpoofing(config.__class__(**dict(config.to_dict(), legacy_transpose=False)))
    flipped.load_state_dict(model.state_dict())
    flipped.eval()
    with torch.no_grad():
        inputs = tester.prepare_inputs(2)
        assert not torch.allclose(model(**inputs).logits, flipped(**inputs).logits)


def test_adapter_layers_subset_builds_only_live_modules():
    config = BigMoeModelTester().get_config(adapter_layers=[2, 0], vision_config=dict(VISION, num_hidden_layers=4))
    model = BigMoeModel(config)
    layers = get_clip_encoder_layers(model.vision_tower)
    assert [type(layer).__name__ for layer in layers] == [
        "BigMoeBlockAdapter", "CLIPEncoderLayer", "BigMoeBlockAdapter", "CLIPEncoderLayer"]
    assert layers[0].cpb is not None and layers[2].cpb is None
    none = BigMoeModel(BigMoeModelTester().get_config(adapter_layers=[2]))  # only the last layer: all dead
    assert none.prompt_generator is None and none.adapted_layers == []


@pytest.mark.parametrize("wiring", ["preln", "reference"])
def test_activation_checkpointing_same_loss_and_grads(wiring):
    """Checkpointing on and off: same loss and gradients (dropouts active), and every block is recomputed."""
    tester = BigMoeModelTester()
    config = tester.get_config(block_wiring=wiring, adapter_init="default", modality_dropout=0.3,
                               adapter_dropout=0.5, cpb_dropout=0.5)
    model = BigMoeForFaceAntiSpoofing(config).train()
    inputs, labels = tester.prepare_inputs(3), torch.tensor([0, 1, 1])
    layers = get_clip_encoder_layers(model.bigmoe.vision_tower)
    calls = [0] * len(layers)
    for i, layer in enumerate(layers):
        norm = layer.base_layer.layer_norm1 if isinstance(layer, BigMoeBlockAdapter) else layer.layer_norm1
        norm.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))

    def run():
        model.zero_grad(set_to_none=True)
        calls[:] = [0] * len(layers)
        torch.manual_seed(7)
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    loss_off, grads_off = run()
    assert calls == [1] * len(layers)
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    loss_on, grads_on = run()
    assert calls == [2] * len(layers)  # forward + recomputation in backward, adapted and plain layers alike
    torch.testing.assert_close(loss_on, loss_off, rtol=0, atol=0)
    assert grads_on.keys() == grads_off.keys() and len(grads_on) > 0
    for name in grads_off:
        torch.testing.assert_close(grads_on[name], grads_off[name], rtol=1e-5, atol=1e-7, msg=name)
    model.activation_checkpointing_disable()
    assert run()[0] == loss_off and calls == [1] * len(layers)


def test_inference_caches_match_autograd_path_and_follow_updates():
    """Eval under no_grad uses cached folded kernels and prompt projections: equal to the autograd path,
    rebuilt after an in-place weight update, a dtype change, and usable again in a later autograd forward."""
    tester = BigMoeModelTester()
    model = BigMoeForFaceAntiSpoofing(tester.get_config(adapter_init="default")).eval()
    inputs = tester.prepare_inputs(3)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0]])

    def logits(grad: bool):
        with torch.set_grad_enabled(grad):
            return model(**inputs, modality_mask=mask).logits.detach()

    with torch.inference_mode():
        cached = model(**inputs, modality_mask=mask).logits
    torch.testing.assert_close(cached, logits(True), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits(False), logits(True), rtol=1e-5, atol=1e-6)
    generator = model.bigmoe.prompt_generator
    cpb = get_clip_encoder_layers(model.bigmoe.vision_tower)[0].cpb
    with torch.no_grad():  # an optimizer-like in-place update of every weight the caches depend on
        for p in (generator.modality_prompts, generator.task_prompt, generator.patch_proj.weight,
                  generator.image_cdc.weight, cpb.gate_conv.weight, cpb.prompt_conv.weight, cpb.out_conv.weight):
            p.add_(torch.randn_like(p) * 0.5)
    updated = logits(False)
    assert not torch.allclose(updated, cached)
    torch.testing.assert_close(updated, logits(True), rtol=1e-5, atol=1e-6)
    # frozen prompt generator in training: cached tensors built under inference mode must not break backward
    generator.requires_grad_(False)
    with torch.inference_mode():
        model(**inputs, modality_mask=mask)
    model.train()
    model.config.modality_dropout = 0.0
    model(**inputs, labels=torch.tensor([0, 1, 0])).loss.backward()
    model.eval()
    model.to(torch.float64)
    with torch.no_grad():
        double = model(**{k: v.double() for k, v in inputs.items()}, modality_mask=mask).logits
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), updated, rtol=1e-4, atol=1e-5)


def test_finite_check_handles_overflowing_sums():
    """The input check sums first; finite inputs whose sum overflows still pass, one NaN or inf still fails."""
    model = BigMoeModel(BigMoeModelTester().get_config()).eval()
    inputs = BigMoeModelTester().prepare_inputs(2)
    huge = dict(inputs, pixel_values=torch.full((2, 3, 32, 32), 3e38))
    assert torch.isinf(huge["pixel_values"].sum())
    model.prepare_modalities(**huge)  # accepted: every element is finite
    for bad in (float("nan"), float("inf")):
        broken = huge["pixel_values"].clone()
        broken[1, 2, 3, 4] = bad
        with pytest.raises(ValueError, match="pixel_values .* holds 1 NaN/inf"):
            model.prepare_modalities(**dict(inputs, pixel_values=broken))


if __name__ == "__main__":
    unittest.main()
