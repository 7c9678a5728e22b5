"""La-SoftMoE CLIP model tests: tiny sizes (CLIP width 32, 2 layers per tower, projection 16), seconds each."""

from __future__ import annotations

import copy
import tempfile
import unittest
from typing import ClassVar

import torch
import torch.nn.functional as F
from common import ModelTesterMixin, assert_inputs_unchanged, clone_inputs
from safetensors.torch import load_file, save_file
from transformers import CLIPModel, CLIPTokenizer

from modeling_bigmoe.clip_utils import get_clip_embeddings, get_clip_encoder_layers
from modeling_bigmoe.configuration_lasoftmoe import LASOFTMOE_TEMPLATES, LaSoftMoeConfig
from modeling_bigmoe.hub_configs_lasoftmoe import tiny_config
from modeling_bigmoe.hub_configs_mmda import write_tiny_clip_tokenizer
from modeling_bigmoe.modeling_lasoftmoe import LaSoftMoeBlock, LaSoftMoeForFaceAntiSpoofing

NAMES = ("pixel_values", "depth_pixel_values", "ir_pixel_values")
_CONFIG_CACHE: dict = {}


def get_config(**overrides) -> LaSoftMoeConfig:
    """The tiny config with ``overrides`` (tokenised once per override set)."""
    key = repr(sorted(overrides.items()))
    if key not in _CONFIG_CACHE:
        _CONFIG_CACHE[key] = tiny_config(**overrides).to_dict()
    return LaSoftMoeConfig(**copy.deepcopy(_CONFIG_CACHE[key]))


def prepare_inputs(batch_size: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(batch_size, 3, 32, 32, generator=g) for name in NAMES}


def plain_clip_copy(model: LaSoftMoeForFaceAntiSpoofing) -> CLIPModel:
    """A plain ``CLIPModel`` holding the model's CLIP weights (``base_layer`` unwrapped, Soft MoE dropped)."""
    clip = CLIPModel(model.config.clip_config).eval()
    state = {k.replace(".base_layer.", "."): v for k, v in model.clip.state_dict().items() if ".moe_adapter." not in k}
    missing, unexpected = clip.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
    return clip


def clip_zero_shot_logits(clip: CLIPModel, config: LaSoftMoeConfig, pixel_values: torch.Tensor) -> torch.Tensor:
    """CLIP's zero-shot recipe written out: one unpadded text pass per prompt, unit embeddings, the templates of a
    class averaged and renormalised, cosine x exp(logit_scale)."""
    with torch.no_grad():
        image = F.normalize(clip.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
        classes = []
        for row in config.prompt_input_ids:
            per_template = [F.normalize(clip.get_text_features(input_ids=torch.tensor([ids])).pooler_output[0], dim=-1)
                            for ids in row]
            classes.append(F.normalize(torch.stack(per_template).mean(0), dim=-1))
        return clip.logit_scale.exp() * image @ torch.stack(classes).t()


class LaSoftMoeModelTester:
    """Tiny defaults: image 32, patch 8 (17 tokens, 4 x 4 slots), CLIP width 32, projection 16, expert dim 8."""

    adapter_key_markers = ("moe_adapter",)
    # gradients upstream of a zero-initialised expert output are exactly zero: test with non-zero outputs
    grad_overrides: ClassVar[dict] = {"moe_zero_init_output": False}
    mode_overrides: ClassVar[dict] = {}

    def get_config(self, **overrides) -> LaSoftMoeConfig:
        return get_config(**{**self.mode_overrides, **overrides})

    def prepare_inputs(self, batch_size: int, seed: int = 0) -> dict:
        return prepare_inputs(batch_size, seed)


class MultimodalTester(LaSoftMoeModelTester):
    adapter_key_markers = ("moe_adapter", "embeddings.modality_embedding")
    mode_overrides: ClassVar[dict] = {"input_mode": "multimodal"}


class _SharedChecks:
    """Checks run in both input modes."""

    def _loss(self, model, inputs):
        batch = inputs["pixel_values"].shape[0]
        return model(**inputs, labels=torch.arange(batch) % 2).loss

    # ------------------------------------------------------------------ Soft MoE weights at model level
    def test_dispatch_and_combine_weights_on_the_model_stream(self):
        for combine in ("softmax", "linear"):
            with self.subTest(combine=combine):
                model = LaSoftMoeForFaceAntiSpoofing(self.model_tester.get_config(moe_combine=combine)).eval()
                seen: list[torch.Tensor] = []
                moe = get_clip_encoder_layers(model.clip.vision_model)[1].moe_adapter
                handle = moe.register_forward_hook(lambda mod, args, out, store=seen: store.append(args[0].detach()))
                with torch.no_grad():
                    model(**self.model_tester.prepare_inputs(3))
                    handle.remove()
                    _, dispatch, combine_w = moe(seen[0], return_weights=True)
                tokens = model.config.num_tokens
                self.assertEqual(dispatch.shape, (3, tokens, model.config.resolved_num_slots))
                torch.testing.assert_close(dispatch.sum(1), torch.ones(3, dispatch.shape[2]))  # over tokens
                torch.testing.assert_close(combine_w.sum(2), torch.ones(3, tokens))  # over slots
                self.assertTrue(bool((dispatch > 0).all() and (combine_w > 0).all()))

    def test_more_slots_than_tokens_is_allowed(self):
        config = self.model_tester.get_config(moe_num_slots=40)  # 17 (or 49) tokens, 40 slots
        model = LaSoftMoeForFaceAntiSpoofing(config).eval()
        moe = get_clip_encoder_layers(model.clip.vision_model)[0].moe_adapter
        self.assertEqual((moe.num_slots, moe.slots_per_expert), (40, 10))
        out = model(**self.model_tester.prepare_inputs(2))
        self.assertTrue(bool(torch.isfinite(out.logits).all()))
        x = torch.randn(2, 5, 32)
        _, dispatch, combine = moe(x, return_weights=True)
        torch.testing.assert_close(dispatch.sum(1), torch.ones(2, 40))
        torch.testing.assert_close(combine.sum(2), torch.ones(2, 5))

    def test_save_load_keeps_nonzero_moe_weights(self):
        """Loaded Soft MoE tensors are not re-initialised (the mixin's round trip has zero expert outputs)."""
        model = LaSoftMoeForFaceAntiSpoofing(self.model_tester.get_config(moe_zero_init_output=False,
                                                                          moe_phi="learnable")).eval()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("feature_map.weight"):
                    param.uniform_(0.5, 1.5)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            reloaded = LaSoftMoeForFaceAntiSpoofing.from_pretrained(tmp).eval()
        for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
            self.assertTrue(torch.equal(a, b), name)
        inputs = self.model_tester.prepare_inputs(2)
        with torch.no_grad():
            self.assertTrue(torch.equal(model(**inputs).logits, reloaded(**inputs).logits))

    def test_missing_moe_keys_get_our_init(self):
        """``from_pretrained`` on a checkpoint without the Soft MoE keys: Phi ~ N(0, 1/d), scale, zero outputs."""
        config = self.model_tester.get_config(moe_scale_init=2.5, moe_num_slots=400)
        with tempfile.TemporaryDirectory() as tmp:
            LaSoftMoeForFaceAntiSpoofing(config).save_pretrained(tmp)
            path = f"{tmp}/model.safetensors"
            save_file({k: v for k, v in load_file(path).items() if ".moe_adapter." not in k}, path,
                      metadata={"format": "pt"})
            model, info = LaSoftMoeForFaceAntiSpoofing.from_pretrained(tmp, output_loading_info=True)
        self.assertEqual(len(info["missing_keys"]), 2 * 6)
        for layer in get_clip_encoder_layers(model.clip.vision_model):
            moe = layer.moe_adapter
            self.assertAlmostEqual(moe.slot_weight.std().item(), 32 ** -0.5, delta=0.01)  # 12,800 draws
            self.assertEqual(moe.scale.item(), 2.5)
            self.assertEqual(float(moe.experts.w_out.detach().abs().sum() + moe.experts.b_out.detach().abs().sum()), 0.0)
            self.assertLessEqual(float(moe.experts.w_in.detach().abs().max()), 32 ** -0.5)
            self.assertGreater(float(moe.experts.w_in.detach().abs().max()), 0.9 * 32 ** -0.5)


class LaSoftMoeModelTest(_SharedChecks, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (LaSoftMoeForFaceAntiSpoofing,)
    model_tester = LaSoftMoeModelTester()
    invalid_config_values = (
        ("input_mode", "rgbd"), ("moe_combine", "max"), ("moe_combine_norm", "batch"), ("moe_phi", "tanh"),
        ("moe_activation", "relu"), ("moe_num_slots", 18), ("moe_num_slots", 0), ("moe_num_experts", 0),
        ("moe_expert_dim", 2.5), ("moe_scale_init", 0.0), ("moe_dropout", 1.5), ("moe_layers", [0, 2]),
        ("moe_layers", [1, 1]), ("train_text_projection", "yes"), ("logit_scale_max", -1.0),
        ("prompt_templates", []), ("prompt_templates", ["no slot here"]), ("prompt_templates", ["a {} {} face"]),
        ("prompt_templates", "A photo of a {} face"), ("class_names", ["fake"]), ("class_names", ["fake", ""]),
        ("missing_modality_fill", float("nan")), ("decision_threshold", 2),
    )

    # ------------------------------------------------------------------ structure and freezing
    def test_create_and_check_model(self):
        config = self.model_tester.get_config()
        model = LaSoftMoeForFaceAntiSpoofing(config).eval()
        out = model(**self.model_tester.prepare_inputs(2), labels=torch.tensor([0, 1]))
        self.assertEqual(out.logits.shape, (2, 2))
        self.assertAlmostEqual(out.loss.item(), F.cross_entropy(out.logits, torch.tensor([0, 1])).item(), places=6)
        self.assertEqual(model.config.id2label, {0: "spoof", 1: "live"})
        self.assertEqual(config.prompts, [["This is an image of a fake face"], ["This is an image of a live face"]])
        layers = get_clip_encoder_layers(model.clip.vision_model)
        self.assertTrue(all(isinstance(layer, LaSoftMoeBlock) for layer in layers))
        self.assertEqual(model.moe_layer_names, ["layers.0", "layers.1"])
        moe = layers[0].moe_adapter
        self.assertEqual((moe.num_experts, moe.slots_per_expert, moe.experts.expert_dim), (4, 4, 8))  # 17 tokens
        self.assertEqual((moe.combine, moe.combine_norm, moe.phi), ("linear", "instance", "elu1"))
        only_first = LaSoftMoeForFaceAntiSpoofing(self.model_tester.get_config(moe_layers=[1]))
        kinds = [type(layer).__name__ for layer in get_clip_encoder_layers(only_first.clip.vision_model)]
        self.assertEqual(kinds, ["CLIPEncoderLayer", "LaSoftMoeBlock"])

    def test_trainable_sets(self):
        def trainable(**overrides):
            model = LaSoftMoeForFaceAntiSpoofing(self.model_tester.get_config(**overrides))
            return {n for n, p in model.named_parameters() if p.requires_grad}, model

        names, model = trainable()
        moe_names = {n for n, _ in model.named_parameters() if ".moe_adapter." in n}
        self.assertEqual(len(moe_names), 2 * 6)  # Phi, scale, w_in, b_in, w_out, b_out per layer
        self.assertEqual(names, moe_names | {"clip.logit_scale"})
        names, _ = trainable(train_logit_scale=False, train_text_projection=True)
        self.assertEqual(names, moe_names | {"clip.text_projection.weight"})
        names, model = trainable(train_vision_tower=True)
        vision = {n for n, _ in model.named_parameters() if n.startswith(("clip.vision_model.", "clip.visual_projection"))}
        self.assertEqual(names, vision | {"clip.logit_scale"})
        self.assertFalse(any(n.startswith("clip.text_model.") for n in names))

    # ------------------------------------------------------------------ CLIP equivalence and wiring
    def test_zero_init_equals_clip_zero_shot(self):
        """With zero-initialised expert outputs the logits are CLIP's zero-shot logits (one and two templates)."""
        for templates in ([LASOFTMOE_TEMPLATES["acer"]], list(LASOFTMOE_TEMPLATES.values())):
            with self.subTest(templates=templates):
                config = get_config(prompt_templates=templates)
                model = LaSoftMoeForFaceAntiSpoofing(config).eval()
                clip = plain_clip_copy(model)
                rgb = prepare_inputs(4)["pixel_values"]
                with torch.no_grad():
                    logits = model(pixel_values=rgb).logits
                torch.testing.assert_close(logits, clip_zero_shot_logits(clip, config, rgb), rtol=1e-5, atol=1e-5)
                self.assertGreater(float((logits[:, 0] - logits[:, 1]).abs().max()), 1e-4)  # not trivially equal

    def test_block_matches_hand_computation(self):
        model = LaSoftMoeForFaceAntiSpoofing(get_config(moe_zero_init_output=False)).eval()
        with torch.no_grad():
            out = model(**prepare_inputs(2), output_hidden_states=True)
            layer = get_clip_encoder_layers(model.clip.vision_model)[0]
            base, x = layer.base_layer, out.hidden_states[0]
            b, n, d, heads = x.shape[0], x.shape[1], x.shape[2], 4
            attn = base.self_attn
            t = base.layer_norm1(x)
            q, k, v = (proj(t).view(b, n, heads, d // heads).transpose(1, 2)
                       for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
            w = (q @ k.transpose(-1, -2) / (d // heads) ** 0.5).softmax(-1)
            x = x + attn.out_proj((w @ v).transpose(1, 2).reshape(b, n, d))
            h = base.layer_norm2(x)
            expected = x + base.mlp(h) + layer.moe_adapter(h)
            moe_part = layer.moe_adapter(h)
        torch.testing.assert_close(out.hidden_states[1], expected, rtol=1e-5, atol=1e-5)
        self.assertGreater(float(moe_part.abs().max()), 1e-3)  # the Soft MoE contributes
        self.assertGreater(float(moe_part[:, 0].abs().max()), 1e-4)  # CLS included

    def test_attentions_hidden_states_and_tuple_output(self):
        model = LaSoftMoeForFaceAntiSpoofing(get_config()).eval()
        inputs = prepare_inputs(2)
        with torch.no_grad():
            plain = model(**inputs)
            out = model(**inputs, output_attentions=True, output_hidden_states=True)
            as_tuple = model(**inputs, return_dict=False)
        self.assertEqual(len(out.attentions), 2)
        for attn in out.attentions:
            self.assertEqual(attn.shape, (2, 4, 17, 17))
            torch.testing.assert_close(attn.sum(-1), torch.ones(2, 4, 17))
        self.assertEqual(len(out.hidden_states), 3)
        torch.testing.assert_close(plain.logits, out.logits, rtol=1e-5, atol=1e-5)  # SDPA == eager
        self.assertEqual(model.clip.vision_model.config._attn_implementation, "sdpa")  # restored
        self.assertIsNone(plain.attentions)
        torch.testing.assert_close(as_tuple[0], plain.logits)
        torch.testing.assert_close(plain.image_embeds.norm(dim=-1), torch.ones(2))
        torch.testing.assert_close(plain.text_embeds.norm(dim=-1), torch.ones(2))

    def test_gradient_checkpointing_same_loss_and_grads(self):
        config = get_config(moe_zero_init_output=False)
        torch.manual_seed(3)
        model = LaSoftMoeForFaceAntiSpoofing(config).train()
        reference = copy.deepcopy(model)
        model.activation_checkpointing_enable()
        inputs = prepare_inputs(3)
        losses = []
        for m in (reference, model):
            loss = self._loss(m, inputs)
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1])
        for (name, p_ref), (_, p) in zip(reference.named_parameters(), model.named_parameters(), strict=True):
            if p_ref.requires_grad:
                torch.testing.assert_close(p.grad, p_ref.grad, msg=name)

    # ------------------------------------------------------------------ text side
    def test_text_cache_and_trainable_text_projection(self):
        model = LaSoftMoeForFaceAntiSpoofing(get_config(train_text_projection=True)).train()
        first = model.class_text_embeds()
        cached = model._text_cache[1]
        self.assertIs(model._pooled_prompts(), cached)  # frozen tower: no second text pass
        self.assertFalse(cached.requires_grad)
        loss = self._loss(model, prepare_inputs(2))
        loss.backward()
        self.assertGreater(float(model.clip.text_projection.weight.grad.abs().sum()), 0.0)
        self.assertTrue(all(p.grad is None for p in model.clip.text_model.parameters()))
        with torch.no_grad():  # editing the text weights invalidates the cache
            model.clip.text_model.final_layer_norm.bias.add_(0.5)
        self.assertFalse(torch.equal(model.class_text_embeds(), first))

    def test_editing_templates_needs_retokenising(self):
        config = get_config()
        config.prompt_templates = list(LASOFTMOE_TEMPLATES.values())
        with self.assertRaisesRegex(ValueError, "prompt_input_ids must be .*2 x 2"):
            config.validate_architecture()
        with tempfile.TemporaryDirectory() as tmp:
            write_tiny_clip_tokenizer(tmp, [s for row in config.prompts for s in row])
            config.tokenize_prompts(CLIPTokenizer.from_pretrained(tmp))
        self.assertEqual([len(row) for row in config.prompt_input_ids], [2, 2])
        untokenised = get_config().to_dict()
        untokenised["prompt_input_ids"] = None
        model = LaSoftMoeForFaceAntiSpoofing(LaSoftMoeConfig(**untokenised))
        with self.assertRaisesRegex(ValueError, "prompt_input_ids is not set"):
            model(pixel_values=torch.zeros(1, 3, 32, 32))
        bad = get_config().to_dict()
        bad["prompt_input_ids"][0][0] = [1, 2, 3]  # no end token
        with self.assertRaisesRegex(ValueError, r"prompt_input_ids\[0\]\[0\].*end token"):
            LaSoftMoeConfig(**bad)
        bad["prompt_input_ids"][0][0] = [10_000]
        with self.assertRaisesRegex(ValueError, "outside"):
            LaSoftMoeConfig(**bad)

    # ------------------------------------------------------------------ learning
    def test_tiny_model_overfits_16_samples(self):
        torch.manual_seed(0)
        model = LaSoftMoeForFaceAntiSpoofing(get_config()).train()
        g = torch.Generator().manual_seed(1)
        images = torch.randn(16, 3, 32, 32, generator=g)
        labels = torch.tensor([0, 1] * 8)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-2)
        first = None
        for _ in range(80):  # ~20 steps reach a loss of 0.05 (Soft MoE + logit scale trained, CLIP frozen)
            optimizer.zero_grad()
            loss = model(pixel_values=images, labels=labels).loss
            first = loss.item() if first is None else first
            if loss.item() < 0.02:
                break
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            out = model(pixel_values=images, labels=labels)
        self.assertEqual(out.logits.argmax(-1).tolist(), labels.tolist())
        self.assertLess(out.loss.item(), 0.1 * first)


class LaSoftMoeMultimodalTest(_SharedChecks, ModelTesterMixin, unittest.TestCase):
    """The same checks on the early-fusion stream [CLS; RGB; Depth; IR] (49 tokens, 4 x 12 slots)."""

    all_model_classes = (LaSoftMoeForFaceAntiSpoofing,)
    model_tester = MultimodalTester()
    invalid_config_values = (("input_mode", "rgbd"), ("moe_num_slots", 50))

    def test_create_and_check_model(self):
        config = self.model_tester.get_config()
        self.assertEqual((config.num_tokens, config.resolved_num_slots), (49, 48))
        model = LaSoftMoeForFaceAntiSpoofing(config).eval()
        moe = get_clip_encoder_layers(model.clip.vision_model)[0].moe_adapter
        self.assertEqual((moe.num_experts, moe.slots_per_expert), (4, 12))
        out = model(**self.model_tester.prepare_inputs(2), output_hidden_states=True)
        self.assertEqual(out.logits.shape, (2, 2))
        self.assertEqual(out.hidden_states[0].shape, (2, 49, 32))
        self.assertEqual(float(model.embeddings.modality_embedding.detach().abs().sum()), 0.0)

    def test_trainable_sets(self):
        model = LaSoftMoeForFaceAntiSpoofing(self.model_tester.get_config())
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        moe_names = {n for n, _ in model.named_parameters() if ".moe_adapter." in n}
        self.assertEqual(names, moe_names | {"clip.logit_scale", "embeddings.modality_embedding"})

    def test_token_stream_order_and_positions(self):
        model = LaSoftMoeForFaceAntiSpoofing(self.model_tester.get_config()).eval()
        with torch.no_grad():
            model.embeddings.modality_embedding.normal_()
            inputs = prepare_inputs(2)
            images, _ = model.prepare_modalities(**inputs)
            emb = get_clip_embeddings(model.clip.vision_model)
            tokens = model.embeddings(emb, images)
            table = emb.position_embedding.weight
            torch.testing.assert_close(tokens[:, 0], (emb.class_embedding + table[0]).expand(2, -1))
            for j, name in enumerate(NAMES):  # RGB, Depth, IR
                patches = emb.patch_embedding(inputs[name]).flatten(2).transpose(1, 2)
                expected = patches + table[1:] + model.embeddings.modality_embedding[j]
                torch.testing.assert_close(tokens[:, 1 + 16 * j: 17 + 16 * j], expected)

    def test_missing_modalities(self):
        model = LaSoftMoeForFaceAntiSpoofing(self.model_tester.get_config(missing_modality_fill=0.5)).eval()
        inputs = prepare_inputs(2)
        before = clone_inputs(inputs)
        with torch.no_grad():
            for mask in ((1, 1, 1), (1, 0, 0), (0, 1, 1), (0, 0, 1)):
                mask_t = torch.tensor([mask, mask])
                out = model(**inputs, modality_mask=mask_t)
                self.assertTrue(bool(torch.isfinite(out.logits).all()))
                as_none = {k: (v if mask[NAMES.index(k)] else None) for k, v in inputs.items()}
                torch.testing.assert_close(model(**as_none).logits, out.logits)
                filled = {k: (v if mask[NAMES.index(k)] else torch.full_like(v, 0.5)) for k, v in inputs.items()}
                torch.testing.assert_close(model(**filled).logits, out.logits)
            per_sample = model(**inputs, modality_mask=torch.tensor([[1, 1, 1], [1, 0, 0]])).logits
            torch.testing.assert_close(per_sample[0], model(**inputs).logits[0])
        assert_inputs_unchanged(self, before, inputs)


class LaSoftMoeBadInputTest(unittest.TestCase):
    def test_bad_inputs_raise_with_names(self):
        model = LaSoftMoeForFaceAntiSpoofing(get_config()).eval()
        x = torch.randn(2, 3, 32, 32)
        cases = [
            ({"depth_pixel_values": x}, "input_mode='rgb' needs pixel_values"),
            ({}, "all modalities are missing"),
            ({"pixel_values": torch.randn(2, 3, 16, 16)}, r"pixel_values must have shape \(batch, 3, 32, 32\), got"),
            ({"pixel_values": x.long()}, "pixel_values must be a float tensor"),
            ({"pixel_values": x, "depth_pixel_values": torch.randn(3, 3, 32, 32)}, "batch sizes differ"),
            ({"pixel_values": x.clone().index_fill_(0, torch.tensor([0]), float("nan"))}, "NaN/inf"),
            ({"pixel_values": x, "modality_mask": torch.ones(2, 2)}, r"modality_mask must have shape \(2, 3\)"),
            ({"pixel_values": x, "modality_mask": torch.full((2, 3), 2)}, "only 0/1"),
            ({"pixel_values": x, "modality_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}, r"\['depth'\] present"),
            ({"pixel_values": x, "modality_mask": torch.tensor([[1, 0, 0], [0, 0, 0]])}, r"missing for samples \[1\]"),
            ({"pixel_values": x, "labels": torch.tensor([0, 2])}, "labels must be 0"),
            ({"pixel_values": x, "labels": torch.tensor([0.0, 1.0])}, "labels must be an integer tensor"),
            ({"pixel_values": x, "labels": torch.tensor([0, 1, 1])}, r"shape \(2,\)"),
        ]
        for kwargs, pattern in cases:
            with self.subTest(pattern=pattern), self.assertRaisesRegex(ValueError, pattern):
                model(**kwargs)

    def test_rgb_mode_ignores_depth_and_ir(self):
        model = LaSoftMoeForFaceAntiSpoofing(get_config()).eval()
        inputs = prepare_inputs(2)
        with torch.no_grad():
            full = model(**inputs).logits
            rgb = model(pixel_values=inputs["pixel_values"]).logits
            masked = model(**inputs, modality_mask=torch.tensor([[1, 1, 1], [0, 1, 1]])).logits
            filled = model(pixel_values=torch.stack([inputs["pixel_values"][0], torch.zeros(3, 32, 32)])).logits
        torch.testing.assert_close(full, rgb)
        torch.testing.assert_close(masked, filled)  # RGB marked missing: the fill value

    def test_config_errors_name_the_field(self):
        with self.assertRaisesRegex(ValueError, r"moe_num_slots \(10\) must be divisible by moe_num_experts \(4\)"):
            get_config(moe_num_slots=10)
        with self.assertRaisesRegex(ValueError, "input_mode must be one of"):
            get_config(input_mode="depth")
        with self.assertRaisesRegex(ValueError, "clip_config must be a CLIPConfig or a dict"):
            LaSoftMoeConfig(clip_config=3)
        with self.assertRaisesRegex(ValueError, "image_size .* must be a multiple of patch_size"):
            LaSoftMoeConfig(clip_config={"vision_config": {"image_size": 30, "patch_size": 8}})


class LaSoftMoeFromClipTest(unittest.TestCase):
    def test_from_clip_loads_both_towers_and_tokenises(self):
        config = get_config()
        source = CLIPModel(config.clip_config).eval()
        with torch.no_grad():
            source.logit_scale.fill_(2.0)
        with tempfile.TemporaryDirectory() as tmp:
            source.save_pretrained(tmp)
            write_tiny_clip_tokenizer(tmp, [s for t in LASOFTMOE_TEMPLATES.values() for s in
                                            (t.format("fake"), t.format("live"))])
            model = LaSoftMoeForFaceAntiSpoofing.from_clip(tmp, prompt_templates=[LASOFTMOE_TEMPLATES["auc"]],
                                                           moe_expert_dim=8)
            tokenizer = CLIPTokenizer.from_pretrained(tmp)
        self.assertEqual(model.config.prompt_input_ids,
                         [[tokenizer("A photo of a fake face")["input_ids"]], [tokenizer("A photo of a live face")["input_ids"]]])
        self.assertEqual(model.config.base_model_name_or_path, tmp)
        self.assertEqual({n for n, p in model.named_parameters() if p.requires_grad} - {"clip.logit_scale"},
                         {n for n, _ in model.named_parameters() if ".moe_adapter." in n})
        rgb = prepare_inputs(3)["pixel_values"]
        with torch.no_grad():
            logits = model(pixel_values=rgb).logits
        torch.testing.assert_close(logits, clip_zero_shot_logits(source, model.config, rgb), rtol=1e-5, atol=1e-5)
        with self.assertRaisesRegex(ValueError, "clip_config comes from the CLIP checkpoint"):
            LaSoftMoeForFaceAntiSpoofing.from_clip(tmp, clip_config={})
