"""MMDA model tests: tiny sizes (CLIP width 32, projection 16, U-DSA depth 7), seconds each."""

from __future__ import annotations

import contextlib
import tempfile
import unittest

import pytest
import torch
import torch.nn.functional as F
from common import ModelTesterMixin, assert_inputs_unchanged, clone_inputs
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from modeling_bigmoe.configuration_mmda import MmdaConfig
from modeling_bigmoe.hub_configs_mmda import tiny_config, write_tiny_clip_tokenizer
from modeling_bigmoe.layers_attention import reorganise_by_domain
from modeling_bigmoe.layers_stmoe import MmdaSTMoE
from modeling_bigmoe.mmda_templates import LIVE_TEMPLATES, SPOOF_TEMPLATES
from modeling_bigmoe.modeling_mmda import MmdaForFaceAntiSpoofing

NAMES = ("pixel_values", "depth_pixel_values", "ir_pixel_values")
MMDA_PREFIXES = ("fusion.", "udsa.", "classifier.")


class MmdaModelTester:
    """Tiny defaults: image 32, patch 8, CLIP width 32 (2 layers, 2 heads), projection 16, U-DSA depth 7,
    MoE 2 GEGLU + 1 constant expert, the tiny BPE of the 24 + 23 templates."""

    adapter_key_markers = MMDA_PREFIXES
    grad_overrides = {"md2a_dropout": 0.0}
    _cache: dict = {}

    def get_config(self, **overrides) -> MmdaConfig:
        key = repr(sorted(overrides.items()))
        if key not in self._cache:  # tokenizing once per override set keeps the tests fast
            self._cache[key] = tiny_config(**overrides).to_dict()
        return MmdaConfig(**self._cache[key])

    def prepare_inputs(self, batch_size: int, seed: int = 0) -> dict:
        g = torch.Generator().manual_seed(seed)
        return {name: torch.randn(batch_size, 3, 32, 32, generator=g) for name in NAMES}


@contextlib.contextmanager
def record_routing(model):
    """Count, per MoE (by module name), the tokens dispatched to each expert during the ``with`` block."""
    counts: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name):
        def record(module, args, output):
            dispatched = module.route(args[0].detach())["dispatch"].sum(dim=(0, 1))
            counts[name] = counts.get(name, 0) + dispatched
        return record

    for name, module in model.named_modules():
        if isinstance(module, MmdaSTMoE):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def check_gradients(test, model, routed, moved, rows=None):
    """``moved(name, p)`` must hold for every trainable parameter except the experts no token reached (and the
    unrouted rows of ``constant_experts``), and must not hold for frozen parameters and unrouted experts."""
    rows = rows or (lambda name, p, row: p.grad is not None and float(p.grad[row].abs().sum()) > 0)
    n_experts = sum(int(c.numel()) for c in routed.values())
    n_routed = sum(int((c > 0).sum()) for c in routed.values())
    test.assertEqual(len(routed), 16)  # fusion, 14 U-DSA levels, classifier
    test.assertGreater(n_routed, 0.7 * n_experts)  # most experts are reached: the check is not vacuous
    for name, p in model.named_parameters():
        if not p.requires_grad:
            test.assertFalse(moved(name, p), f"frozen {name} moved")
            continue
        moe, _, rest = name.partition(".moe.")
        if rest.startswith("experts."):
            expert = int(rest.split(".")[1])
            test.assertEqual(moved(name, p), bool(routed[moe + ".moe"][expert] > 0), name)
        elif rest == "constant_experts":
            first_constant = routed[moe + ".moe"].numel() - p.shape[0]
            for row in range(p.shape[0]):
                test.assertEqual(rows(name, p, row), bool(routed[moe + ".moe"][first_constant + row] > 0),
                                 f"{name}[{row}]")
        else:
            test.assertTrue(moved(name, p), name)


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


class MmdaModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MmdaForFaceAntiSpoofing,)
    model_tester = MmdaModelTester()
    invalid_config_values = (
        ("md2a_heads", 3), ("udsa_heads", 5), ("udsa_depth", 0), ("md2a_dropout", 1.5), ("moe_threshold", -0.1),
        ("label_smoothing_mode", "sum"), ("freeze_text", "yes"), ("vision_lora_rank", -1),
        ("moe_num_experts", 0), ("moe_capacity_factor_eval", 0), ("spoof_templates", []),
        ("live_templates", []), ("live_templates", ["a real face", ""]), ("moe_hidden_dim", 0),
        ("vision_lora_target_modules", []), ("logit_scale_max", -1.0), ("double_residual", 1),
    )

    # The mixin's gradient checks expect a gradient on every trainable parameter. MMDA's MoEs route each
    # token to 1-2 of their 3 experts (top-2 with the second-expert threshold); at initialisation similar
    # tokens share their choice, so an expert may receive no token in a batch and then rightly gets no
    # gradient. These overrides record the routing and demand a gradient exactly where a token went.
    def test_backward_grads(self):
        """Every trainable parameter gets a non-zero gradient (experts: iff routed); frozen ones get none."""
        model = MmdaForFaceAntiSpoofing(self.model_tester.get_config(**self.model_tester.grad_overrides)).train()
        with record_routing(model) as routed:
            self._loss(model, self.model_tester.prepare_inputs(8)).backward()
        check_gradients(self, model, routed, lambda name, p: p.grad is not None and float(p.grad.abs().sum()) > 0)

    def test_only_adapters_updated(self):
        """Three Adam steps change every trainable parameter (experts: iff routed); frozen ones stay identical."""
        model = MmdaForFaceAntiSpoofing(self.model_tester.get_config(**self.model_tester.grad_overrides)).train()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        inputs = self.model_tester.prepare_inputs(8)
        with record_routing(model) as routed:
            for _ in range(3):
                optimizer.zero_grad()
                self._loss(model, inputs).backward()
                optimizer.step()
        check_gradients(self, model, routed, lambda name, p: not torch.equal(before[name], p.detach()),
                        rows=lambda name, p, row: not torch.equal(before[name][row], p.detach()[row]))

    def test_create_and_check_model(self):
        model = MmdaForFaceAntiSpoofing(self.model_tester.get_config()).eval()
        labels = torch.tensor([0, 1, 1])
        out = model(**self.model_tester.prepare_inputs(3), labels=labels)
        self.assertEqual(out.logits.shape, (3, 2))
        self.assertEqual(out.alignment_logits.shape, (3, 15, 2))
        self.assertEqual(out.image_embeds.shape, (3, 3, 16))
        self.assertEqual(model.config.id2label, {0: "spoof", 1: "live"})
        # eval loss = aux + CE(classifier) + the 15 alignment CEs, all with proper label smoothing 0.1
        expected = out.aux_loss + F.cross_entropy(out.logits, labels, label_smoothing=0.1)
        for level in range(15):
            expected = expected + F.cross_entropy(out.alignment_logits[:, level], labels, label_smoothing=0.1)
        torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-5)
        self.assertIsNone(model(**self.model_tester.prepare_inputs(3)).loss)

    def test_embeddings_and_level0_alignment_by_hand(self):
        """X is CLIP's image embedding of each modality alone; the text embeddings are CLIP's of each template
        alone (unpadded); level 0 is s * max_j cos(v0, t_j) computed with loops."""
        model = MmdaForFaceAntiSpoofing(self.model_tester.get_config()).eval()
        inputs = self.model_tester.prepare_inputs(2)
        clip = model.clip
        with torch.no_grad():
            out = model(**inputs)
            for j, name in enumerate(NAMES):
                torch.testing.assert_close(out.image_embeds[:, j], clip.get_image_features(inputs[name]).pooler_output)
            spoof, live = model.template_text_embeds()
            cfg = model.config
            for ids, embeds in ((cfg.spoof_template_input_ids, spoof), (cfg.live_template_input_ids, live)):
                for i, seq in enumerate(ids):
                    alone = clip.get_text_features(torch.tensor([seq])).pooler_output[0]
                    torch.testing.assert_close(embeds[i], alone, rtol=1e-5, atol=1e-5)
            v0, _ = model.fusion(out.image_embeds)
            s = min(clip.logit_scale.exp().item(), 100.0)
            for b in range(2):
                for cls, texts in enumerate((spoof, live)):
                    best = max(float(F.cosine_similarity(v0[b], t, dim=0)) for t in texts)
                    self.assertAlmostEqual(out.alignment_logits[b, 0, cls].item(), s * best, places=4)

    def test_training_loss_adds_text_anchors(self):
        config = self.model_tester.get_config(md2a_dropout=0.0)
        model = MmdaForFaceAntiSpoofing(config).train()
        inputs, labels = self.model_tester.prepare_inputs(3), torch.tensor([0, 1, 0])
        torch.manual_seed(0)
        out = model(**inputs, labels=labels)
        spoof, live = model.template_text_embeds()
        with torch.no_grad():
            ce_s, ce_l, _ = model.classifier.text_anchor_loss(spoof, live)  # its aux is in out.aux_loss
        expected = out.aux_loss + ce_s + ce_l + F.cross_entropy(out.logits, labels, label_smoothing=0.1)
        expected = expected + sum(F.cross_entropy(out.alignment_logits[:, lv], labels, label_smoothing=0.1)
                                  for lv in range(15))
        torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-5)
        # the reference's unnormalised smoothing gives a different value
        ref = MmdaForFaceAntiSpoofing(MmdaConfig(**dict(config.to_dict(), label_smoothing_mode="reference")))
        ref.load_state_dict(model.state_dict())
        self.assertFalse(torch.allclose(ref.train()(**inputs, labels=labels).loss, out.loss))

    def test_text_cache(self):
        model = MmdaForFaceAntiSpoofing(self.model_tester.get_config()).eval()
        first = model.template_text_embeds()
        self.assertIs(model.template_text_embeds()[0], first[0])  # cached while the text tower is frozen
        self.assertFalse(any("cache" in k or "template" in k for k in model.state_dict()))
        with torch.no_grad():  # editing the text weights invalidates the cache
            model.clip.text_projection.weight.mul_(2.0)
        second = model.template_text_embeds()
        torch.testing.assert_close(second[0], 2.0 * first[0])
        # a trainable text tower is run every time and gets gradients through the templates
        trainable = MmdaForFaceAntiSpoofing(self.model_tester.get_config(freeze_text=False)).train()
        out = trainable(**self.model_tester.prepare_inputs(2), labels=torch.tensor([0, 1]))
        self.assertIsNot(trainable.template_text_embeds()[0], trainable.template_text_embeds()[0])
        out.loss.backward()
        self.assertGreater(float(trainable.clip.text_model.embeddings.token_embedding.weight.grad.abs().sum()), 0.0)

    def test_domain_labels(self):
        model = MmdaForFaceAntiSpoofing(self.model_tester.get_config()).eval()
        inputs = self.model_tester.prepare_inputs(4)
        with torch.no_grad():
            plain = model(**inputs).logits
            own = model(**inputs, domain_labels=torch.arange(4)).logits  # every sample its own domain: X_dom = X
            grouped = model(**inputs, domain_labels=torch.tensor([0, 0, 1, 1])).logits
            names = model(**inputs, domain_labels=["C", "C", "W", "W"]).logits
            torch.testing.assert_close(own, plain)
            torch.testing.assert_close(names, grouped)
            self.assertTrue(torch.equal(grouped[[0, 2]], plain[[0, 2]]))  # first of each domain keeps X_dom = X
            self.assertFalse(torch.allclose(grouped[[1, 3]], plain[[1, 3]]))
            # by hand: sample 1 subtracts the map of sample 0
            x = model(**inputs).image_embeds
            x_dom = reorganise_by_domain(x, torch.tensor([0, 0, 1, 1]))
            self.assertTrue(torch.equal(x_dom[1], x[0]))
            ignored = MmdaForFaceAntiSpoofing(self.model_tester.get_config(use_domain_labels=False)).eval()
            ignored.load_state_dict(model.state_dict())
            torch.testing.assert_close(ignored(**inputs, domain_labels=torch.tensor([0, 0, 1, 1])).logits, plain)

    def test_freezing_options(self):
        tester = self.model_tester
        default = MmdaForFaceAntiSpoofing(tester.get_config())
        names = _trainable(default)
        self.assertFalse(any(n.startswith(("clip.text_model.", "clip.text_projection.")) for n in names))
        self.assertTrue(any(n.startswith("clip.vision_model.") for n in names))
        self.assertIn("clip.visual_projection.weight", names)
        self.assertIn("clip.logit_scale", names)
        mmda = {n for n, _ in default.named_parameters() if n.startswith(MMDA_PREFIXES)}
        self.assertTrue(mmda <= names)
        frozen = MmdaForFaceAntiSpoofing(tester.get_config(freeze_vision=True, freeze_logit_scale=True))
        self.assertEqual(_trainable(frozen), mmda)
        everything = MmdaForFaceAntiSpoofing(tester.get_config(freeze_text=False))
        self.assertEqual(_trainable(everything), {n for n, _ in everything.named_parameters()})

    def test_lora_trains_only_lora_and_mmda(self):
        config = self.model_tester.get_config(vision_lora_rank=4, freeze_logit_scale=True, md2a_dropout=0.0)
        model = MmdaForFaceAntiSpoofing(config).train()
        lora = {n for n, _ in model.named_parameters() if ".lora_" in n}
        self.assertEqual(len(lora), 2 * 2 * 2)  # 2 layers x (q_proj, v_proj) x (A, B)
        mmda = {n for n, _ in model.named_parameters() if n.startswith(MMDA_PREFIXES)}
        self.assertEqual(_trainable(model), lora | mmda)
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                self.assertEqual(float(p.abs().sum()), 0.0, name)  # LoRA starts as a no-op
        # at init the LoRA model equals the plain model with the same weights
        plain = MmdaForFaceAntiSpoofing(self.model_tester.get_config(md2a_dropout=0.0)).eval()
        plain.load_clip_state_dict(  # CLIP keys without peft's base_layer / lora_ parts
            {k.replace(".base_layer", ""): v for k, v in model.clip.state_dict().items() if ".lora_" not in k})
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith(MMDA_PREFIXES)},
                              strict=False)
        inputs = self.model_tester.prepare_inputs(3)
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(model(**inputs).logits, plain(**inputs).logits)
        model.train()
        with record_routing(model) as routed:
            model(**self.model_tester.prepare_inputs(8), labels=torch.arange(8) % 2).loss.backward()
        # LoRA's A gets an exactly zero gradient while B = 0 (dL/dA = B^T ...); B gets a non-zero one
        check_gradients(self, model, routed, lambda name, p: p.grad is not None and (
            ".lora_A." in name or float(p.grad.abs().sum()) > 0))
        for name in lora:
            grad = model.get_parameter(name).grad
            self.assertEqual(float(grad.abs().sum()) > 0, ".lora_B." in name, name)

    def test_lora_save_load_and_missing_lora_keys(self):
        model = MmdaForFaceAntiSpoofing(self.model_tester.get_config(vision_lora_rank=2)).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".lora_B." in name:
                    p.normal_()
        inputs = self.model_tester.prepare_inputs(2)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            reloaded, info = MmdaForFaceAntiSpoofing.from_pretrained(tmp, output_loading_info=True)
            self.assertEqual(len(info["missing_keys"]) + len(info["unexpected_keys"]), 0)
            with torch.no_grad():
                torch.testing.assert_close(reloaded.eval()(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
            self.assertEqual(_trainable(reloaded), _trainable(model))
            # a checkpoint without the LoRA tensors: A Kaiming-uniform, B zero (CLIP's init would draw B ~ N(0, 0.02))
            path = f"{tmp}/model.safetensors"
            state = load_file(path)
            save_file({k: v for k, v in state.items() if ".lora_" not in k}, path, metadata={"format": "pt"})
            fresh, info = MmdaForFaceAntiSpoofing.from_pretrained(tmp, output_loading_info=True)
        self.assertEqual(len(info["missing_keys"]), 8)
        for name, p in fresh.named_parameters():
            if ".lora_B." in name:
                self.assertEqual(float(p.abs().sum()), 0.0, name)
            if ".lora_A." in name:
                bound = 1.0 / p.shape[1] ** 0.5  # kaiming_uniform(a=sqrt(5)) on fan_in 32
                self.assertTrue(0 < float(p.abs().max()) <= bound, name)

    def test_init_distributions(self):
        model = MmdaForFaceAntiSpoofing(self.model_tester.get_config(udsa_depth=1, md2a_depth=0))
        attn = model.fusion.attn
        self.assertAlmostEqual(attn.lambda_init, 0.2, places=6)  # 0.8 - 0.6 exp(0)
        vecs = torch.cat([attn.lambda_q1, attn.lambda_k1, attn.lambda_q2, attn.lambda_k2])
        self.assertAlmostEqual(vecs.std().item(), 0.1, delta=0.03)
        mha = model.udsa.down[0].attn
        self.assertEqual(float((mha.in_proj_bias.abs().sum() + mha.out_proj.bias.abs().sum()).detach()), 0.0)
        bound = (6.0 / (48 + 16)) ** 0.5  # xavier_uniform on the (3d, d) in-projection, d = 16
        self.assertLessEqual(float(mha.in_proj_weight.abs().max()), bound + 1e-6)
        self.assertGreater(float(mha.in_proj_weight.abs().max()), 0.9 * bound)  # 768 draws fill the range
        head = model.classifier.head
        self.assertLessEqual(float(head.weight.abs().max()), 1.0 / 4.0 + 1e-6)  # PyTorch default: 1/sqrt(16)
        self.assertEqual(model.fusion.moe.constant_experts.shape, (1, 16))

    def test_hidden_states_and_attentions(self):
        model = MmdaForFaceAntiSpoofing(self.model_tester.get_config()).eval()
        inputs = self.model_tester.prepare_inputs(2)
        with torch.no_grad():
            plain = model(**inputs)
            out = model(**inputs, output_hidden_states=True, output_attentions=True)
            rgb = model.clip.vision_model(inputs["pixel_values"], output_hidden_states=True)
        self.assertEqual(len(out.hidden_states), 3)
        self.assertEqual(out.hidden_states[0].shape, (2, 3, 17, 32))
        torch.testing.assert_close(out.hidden_states[2][:, 0], rgb.hidden_states[2])
        self.assertEqual(len(out.attentions), 2)
        for attn in out.attentions:
            self.assertEqual(attn.shape, (2, 3, 2, 17, 17))
            torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 2, 17))
        torch.testing.assert_close(plain.logits, out.logits, rtol=1e-5, atol=1e-5)  # SDPA == eager
        self.assertEqual(model.clip.vision_model.config._attn_implementation, "sdpa")  # restored
        self.assertIsNone(plain.hidden_states)
        self.assertIsNone(plain.attentions)

    def test_return_dict_false_and_trainer_keys(self):
        model = MmdaForFaceAntiSpoofing(self.model_tester.get_config()).eval()
        inputs = self.model_tester.prepare_inputs(2)
        out = model(**inputs, labels=torch.tensor([0, 1]), return_dict=False)
        self.assertIsInstance(out, tuple)
        torch.testing.assert_close(out[1], model(**inputs).logits)
        self.assertTrue({"alignment_logits", "aux_loss", "image_embeds"} <= set(model.config.keys_to_ignore_at_inference))

    def test_activation_checkpointing(self):
        config = self.model_tester.get_config(md2a_dropout=0.0)
        model = MmdaForFaceAntiSpoofing(config).train()
        inputs, labels = self.model_tester.prepare_inputs(2), torch.tensor([0, 1])
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        model.activation_checkpointing_enable()
        loss_ckpt = model(**inputs, labels=labels).loss
        loss_ckpt.backward()
        torch.testing.assert_close(loss_ckpt, loss)
        for name, grad in grads.items():
            torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-4, atol=1e-6, msg=name)

    def test_print_trainable_parameters(self):
        model = MmdaForFaceAntiSpoofing(self.model_tester.get_config())
        total = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.assertEqual(model.trainable_parameter_summary()[:2], (n_train, total))
        self.assertIn(f"trainable params: {n_train:,d} || all params: {total:,d}",
                      model.trainable_parameter_summary()[2])


class MissingModalityAndBadInputTest(unittest.TestCase):
    tester = MmdaModelTester()

    def setUp(self):
        self.model = MmdaForFaceAntiSpoofing(self.tester.get_config(missing_modality_fill=0.5)).eval()
        self.inputs = self.tester.prepare_inputs(2)

    def test_missing_modality(self):
        inputs = self.inputs
        before = clone_inputs(inputs)
        with torch.no_grad():
            for mask in ((1, 1, 1), (0, 1, 1), (1, 0, 1), (1, 1, 0), (1, 0, 0), (0, 0, 1)):
                mask_t = torch.tensor([mask, mask])
                out = self.model(**inputs, modality_mask=mask_t)
                self.assertTrue(bool(torch.isfinite(out.logits).all()))
                as_none = {k: (v if mask[NAMES.index(k)] else None) for k, v in inputs.items()}
                torch.testing.assert_close(self.model(**as_none).logits, out.logits)
                filled = {k: (v if mask[NAMES.index(k)] else torch.full_like(v, 0.5)) for k, v in inputs.items()}
                torch.testing.assert_close(self.model(**filled).logits, out.logits)
            # a zeroed modality with its mask column at 0 (fill 0): finite and equal to passing zeros
            zero_model = MmdaForFaceAntiSpoofing(self.tester.get_config()).eval()
            zeroed = dict(inputs, depth_pixel_values=torch.zeros_like(inputs["depth_pixel_values"]))
            out = zero_model(**zeroed, modality_mask=torch.tensor([[1, 0, 1], [1, 0, 1]]))
            self.assertTrue(bool(torch.isfinite(out.logits).all()))
            torch.testing.assert_close(out.logits, zero_model(**dict(inputs, depth_pixel_values=None)).logits)
        assert_inputs_unchanged(self, before, inputs)

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
        self._raises(r"all modalities missing.*\[1\]", modality_mask=torch.tensor([[1, 1, 1], [0, 0, 0]]))
        self._raises(r"modality_mask marks \['depth'\]", depth_pixel_values=None, modality_mask=torch.ones(2, 3))
        self._raises("0/1", modality_mask=torch.full((2, 3), 2))
        nan = self.inputs["pixel_values"].clone()
        nan[0, 0, 0, 0] = float("nan")
        self._raises(r"pixel_values.*NaN/inf", pixel_values=nan)
        self._raises(r"labels.*\(2,\).*\(1, 2\)", labels=torch.tensor([[0, 1]]))
        self._raises(r"labels must be 0 \(spoof\) or 1 \(live\).*\[0, 2\]", labels=torch.tensor([0, 2]))
        self._raises(r"domain_labels has 3 entries.*batch 2", domain_labels=torch.tensor([0, 1, 2]))
        self._raises(r"domain_labels must be a 1-D integer tensor", domain_labels=torch.tensor([0.0, 1.0]))

    def test_untokenized_templates(self):
        config = MmdaConfig(**dict(self.tester.get_config().to_dict(), spoof_template_input_ids=None,
                                   live_template_input_ids=None))
        model = MmdaForFaceAntiSpoofing(config).eval()  # builds (e.g. on the meta device) but cannot run
        with pytest.raises(ValueError, match="spoof_template_input_ids"):
            model(**self.inputs)
        with pytest.raises(ValueError, match="both set or both None"):
            tc = config.clip_config.text_config
            MmdaConfig(**dict(config.to_dict(), spoof_template_input_ids=[[tc.bos_token_id, tc.eos_token_id]] * 24))

    def test_bad_templates(self):
        base = self.tester.get_config().to_dict()
        with pytest.raises(ValueError, match=r"MmdaConfig.spoof_templates must be a non-empty list"):
            MmdaConfig(**dict(base, spoof_templates=[], spoof_template_input_ids=None, live_template_input_ids=None))
        with pytest.raises(ValueError, match=r"MmdaConfig.live_template_input_ids must hold one id list per entry "
                                             r"of live_templates \(24\), got 23"):
            MmdaConfig(**dict(base, live_templates=LIVE_TEMPLATES + ["This is a face of a live person"]))
        ids = [list(s) for s in base["spoof_template_input_ids"]]
        long_ids = ids[:1] + [[ids[0][0]] + [ids[0][1]] * 40 + [ids[0][-1]]] + ids[2:]
        with pytest.raises(ValueError, match=r"spoof_template_input_ids\[1\].*42 tokens.*context of 32"):
            MmdaConfig(**dict(base, spoof_template_input_ids=long_ids))
        bad_vocab = ids[:1] + [[ids[0][0], 10_000, ids[0][-1]]] + ids[2:]
        with pytest.raises(ValueError, match=r"spoof_template_input_ids\[1\] holds ids outside"):
            MmdaConfig(**dict(base, spoof_template_input_ids=bad_vocab))
        no_eos = ids[:1] + [ids[1][:-1]] + ids[2:]
        with pytest.raises(ValueError, match=r"spoof_template_input_ids\[1\] lacks the end token"):
            MmdaConfig(**dict(base, spoof_template_input_ids=no_eos))
        # tokenising a template longer than the text context names the template
        long_text = "This is a photo of a " + "very " * 40 + "fake face"
        with pytest.raises(ValueError, match=r"MmdaConfig.spoof_templates\[24\] .* more than the text tower's "
                                             r"context of 32"):
            tiny_config(spoof_templates=SPOOF_TEMPLATES + [long_text])


def test_tiny_model_overfits_16_samples():
    tester = MmdaModelTester()
    torch.manual_seed(0)
    model = MmdaForFaceAntiSpoofing(tester.get_config(md2a_dropout=0.0)).train()
    inputs = tester.prepare_inputs(16, seed=1)  # pure noise: the labels can only be memorised
    labels = torch.tensor([0, 1] * 8)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(40):
        out = model(**inputs, labels=labels)
        first = out.loss.item() if first is None else first
        if (out.logits.argmax(-1) == labels).all() and (out.alignment_logits[:, -1].argmax(-1) == labels).all():
            break
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    assert out.loss.item() < first
    assert (out.logits.argmax(-1) == labels).all(), out.logits
    assert (out.alignment_logits[:, -1].argmax(-1) == labels).all()


def _tiny_clip_folder(tmp) -> CLIPModel:
    """A random tiny CLIPModel and its tiny tokenizer files in ``tmp`` (nothing downloaded)."""
    vocab = write_tiny_clip_tokenizer(tmp, SPOOF_TEMPLATES + LIVE_TEMPLATES)
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(vision_config=dict(tower, image_size=32, patch_size=8),
                        text_config=dict(tower, vocab_size=len(vocab), max_position_embeddings=32,
                                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                                         pad_token_id=vocab["<|endoftext|>"]),
                        projection_dim=16)
    clip = CLIPModel(config).eval()
    clip.save_pretrained(tmp)
    return clip


@pytest.mark.parametrize("lora", [0, 4])
def test_from_clip(tmp_path, lora):
    clip = _tiny_clip_folder(tmp_path)
    model = MmdaForFaceAntiSpoofing.from_clip(tmp_path, md2a_heads=2, udsa_heads=2, moe_num_experts=2,
                                              moe_num_constant_experts=1, vision_lora_rank=lora).eval()
    assert model.config.base_model_name_or_path == str(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    assert model.config.spoof_template_input_ids == tokenizer(SPOOF_TEMPLATES)["input_ids"]
    assert model.config.live_template_input_ids == tokenizer(LIVE_TEMPLATES)["input_ids"]
    inputs = MmdaModelTester().prepare_inputs(2)
    with torch.no_grad():
        out = model(**inputs)
        for j, name in enumerate(NAMES):  # LoRA starts as a no-op: the embeddings are CLIP's
            torch.testing.assert_close(out.image_embeds[:, j], clip.get_image_features(inputs[name]).pooler_output,
                                       rtol=1e-5, atol=1e-5)
        spoof, _ = model.template_text_embeds()
        ids = torch.tensor(tokenizer(SPOOF_TEMPLATES[:1])["input_ids"])
        torch.testing.assert_close(spoof[0], clip.get_text_features(ids).pooler_output[0], rtol=1e-5, atol=1e-5)
    trainable = _trainable(model)
    assert not any(n.startswith("clip.text_model.") for n in trainable)
    assert any(".lora_" in n for n in trainable) == bool(lora)


def test_from_clip_rejects_vision_only_checkpoint(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    write_tiny_clip_tokenizer(tmp_path, SPOOF_TEMPLATES + LIVE_TEMPLATES)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                     num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(tmp_path)
    with pytest.raises(ValueError):
        MmdaForFaceAntiSpoofing.from_clip(tmp_path)


if __name__ == "__main__":
    unittest.main()
