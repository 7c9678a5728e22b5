"""MMDA on a CLIP model: multimodal (RGB + Depth + IR) face anti-spoofing guided by text.

MMDA: "Multimodal Denoising and Alignment" (Ma, Lin, Yu, Liu, Yuan, Xie, Shen; arXiv 2505.09484),
later retitled "Purify then Guide". MD2A is the differential attention of the Differential
Transformer (Ye et al., arXiv 2410.05258) with a domain-side map; the MoEs follow ST-MoE (Zoph et al.).

Forward, per batch (shape letters: b batch, m = 3 modalities, d = CLIP's projection dim, L levels)::

    X      = CLIP image embeddings of RGB, Depth, IR           (b, m, d)   one shared image tower
    t_c    = CLIP text embeddings of the class-c templates      (T_c, d)    cached while the tower is frozen
    v0     = Fusion(X, X_dom)                                   (b, d)      MD2A + MoE, X_dom by domain labels
    levels = U-DSA(v0; t_spoof, t_live)                         L = 2 * udsa_depth + 1 paired levels
    alignment_logits[:, l] = s * [max_j cos(v_l, t_spoof_j), max_j cos(v_l, t_live_j)]     (b, L, 2)
    logits = Classifier(v'_0)                                   (b, 2)      index 1 = live

Loss (when ``labels`` are given): the sum of all MoE auxiliary losses, the classifier CE, the L
alignment CEs and, in training, the two text-anchor CEs (the classifier applied to the template
embeddings with soft targets); all weights 1.

Parameter counts (exact; ``hub_configs_mmda.py`` has the breakdown): ``mmda-clip-vit-base-patch16``
300,969,603 in all (CLIP 149,620,737 + MMDA 151,348,866, of which 134.5 M in its 16 MoEs), 237,541,507
trainable with the default freezing (text tower frozen); ``mmda-tiny`` 135,415 / 108,589.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import CLIPModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, is_peft_available

from .clip_utils import clip_attention_implementation
from .configuration_mmda import MmdaConfig
from .layers_attention import MmdaDifferentialAttention, MmdaRMSNorm
from .layers_mmda import (
    MmdaClassifier,
    MmdaFusionBlock,
    MmdaUDSA,
    mmda_loss,
    rs2_alignment_logits_all_levels,
)
from .layers_stmoe import MmdaSTMoE
from .modeling_common import (
    MODALITY_ARGS,
    MODALITY_NAMES,
    FaceAntiSpoofingPreTrainedMixin,
    check_binary_labels,
    check_modality_inputs,
    copy_clip_state_dict,
    from_full_clip,
    frozen_text_cache_key,
    merge_modality_mask,
    modality_presence,
    pad_token_ids,
    pytorch_default_init,
    stack_modalities,
)

__all__ = [
    "MMDA_MODALITIES",
    "MmdaFaceAntiSpoofingOutput",
    "MmdaForFaceAntiSpoofing",
    "MmdaPreTrainedModel",
    "register_mmda_for_remote_code",
]

# order of the modality axis everywhere (X rows, modality_mask columns): RGB, Depth, IR
MMDA_MODALITIES = MODALITY_NAMES  # ("rgb", "depth", "ir")


@dataclass
class MmdaFaceAntiSpoofingOutput(ModelOutput):
    """Output of :class:`MmdaForFaceAntiSpoofing`.

    Args:
        loss: scalar summed loss, when ``labels`` are given.
        logits: (b, 2) classifier logits (0 spoof, 1 live); the live score is ``softmax(logits)[:, 1]``.
        alignment_logits: (b, L, 2) RS2 logits of the L = ``2 * udsa_depth + 1`` levels ``[v0, v1..vD, v'_{D-1}..v'_0]``.
        aux_loss: scalar, the sum of the MoE auxiliary losses (already weighted) of this forward.
        image_embeds: (b, 3, d) CLIP image embeddings of RGB, Depth, IR (the MMDA input ``X``).
        hidden_states: tuple of (b, 3, n, hidden) image-tower states (embeddings output and every layer).
        attentions: tuple of (b, 3, heads, n, n) image-tower attention maps, one per layer.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    alignment_logits: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def _is_lora_layer(module: nn.Module) -> bool:
    """A peft LoRA wrapper (``base_layer`` plus ``lora_A`` / ``lora_B`` dicts), detected without importing peft."""
    return (isinstance(getattr(module, "lora_A", None), nn.ModuleDict)
            and isinstance(getattr(module, "lora_B", None), nn.ModuleDict))


class MmdaPreTrainedModel(FaceAntiSpoofingPreTrainedMixin, PreTrainedModel):
    """Base class: config class, weight initialisation, freezing, ``from_clip``.
 ``from_pretrained`` reads safetensors only unless
    ``use_safetensors=False`` (:class:`~.modeling_common.FaceAntiSpoofingPreTrainedMixin`).
    """

    config_class = MmdaConfig
    config: MmdaConfig
    base_model_prefix = "mmda"
    _no_split_modules = ["CLIPEncoderLayer", "CLIPTextEmbeddings", "CLIPVisionEmbeddings", "MmdaFusionBlock",
                         "MmdaRefineBlock", "MmdaClassifier"]

    # ------------------------------------------------------------------ initialisation
    def _wrapped_base_layer(self, module: nn.Module) -> nn.Module | None:
        """A LoRA layer injected into the image tower gets our init (CLIP's would draw LoRA's B with std 0.02
        instead of zeros); its base layer keeps CLIP's. CLIP's modules get CLIP's init, MMDA's modules ours."""
        return module.base_layer if _is_lora_layer(module) else None

    @torch.no_grad()
    def _init_weights(self, module):
        """PyTorch's defaults for the MMDA modules (as the reference), LoRA's (A Kaiming, B zero) for LoRA layers."""
        if _is_lora_layer(module):
            for linear in module.lora_A.values():
                init.kaiming_uniform_(linear.weight, a=5 ** 0.5)
            for linear in module.lora_B.values():
                init.zeros_(linear.weight)
            return
        if isinstance(module, nn.MultiheadAttention):
            # torch's own MHA init; out_proj.weight was set by the Linear rule (children come first)
            init.xavier_uniform_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)
            init.zeros_(module.out_proj.bias)
        elif isinstance(module, nn.Linear):
            pytorch_default_init(module)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, MmdaRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, MmdaDifferentialAttention):
            for vec in (module.lambda_q1, module.lambda_k1, module.lambda_q2, module.lambda_k2):
                init.normal_(vec, mean=0.0, std=module.lambda_std)
        elif isinstance(module, MmdaSTMoE):
            init.normal_(module.constant_experts, mean=0.0, std=module.constant_init_std)

    # ------------------------------------------------------------------ trainable parameters
    def mark_trainable(self) -> None:
        """Config-driven freezing: the MMDA modules always train; the image tower (+ visual projection) unless
        ``freeze_vision`` or LoRA (then only the LoRA matrices); the text tower (+ text projection) unless
        ``freeze_text``; CLIP's logit scale unless ``freeze_logit_scale``."""
        cfg = self.config
        clip = self.clip
        lora = cfg.vision_lora_rank > 0
        for p in self.parameters():
            p.requires_grad_(True)
        if cfg.freeze_vision or lora:
            for p in (*clip.vision_model.parameters(), *clip.visual_projection.parameters()):
                p.requires_grad_(False)
        if lora:
            for module in clip.vision_model.modules():
                if _is_lora_layer(module):
                    for p in (*module.lora_A.parameters(), *module.lora_B.parameters()):
                        p.requires_grad_(True)
        if cfg.freeze_text:
            for p in (*clip.text_model.parameters(), *clip.text_projection.parameters()):
                p.requires_grad_(False)
        clip.logit_scale.requires_grad_(not cfg.freeze_logit_scale)

    # ------------------------------------------------------------------ CLIP weights
    @classmethod
    def from_clip(cls, name_or_path: str | os.PathLike = "openai/clip-vit-base-patch16", *, tokenizer=None,
                  **config_overrides):
        """Build MMDA around a pretrained CLIP (Hub id or local folder holding a full ``CLIPModel`` checkpoint in
        safetensors and its tokenizer files) and tokenise the templates with that checkpoint's ``CLIPTokenizer``.

        Args:
            name_or_path: the CLIP checkpoint (default ``openai/clip-vit-base-patch16``).
            tokenizer: a tokenizer to use instead of loading ``CLIPTokenizer`` from ``name_or_path``.
            config_overrides: :class:`MmdaConfig` fields (``clip_config`` comes from the checkpoint).
        """
        return from_full_clip(cls, name_or_path, tokenizer, config_overrides, "tokenize_templates")

    @torch.no_grad()
    def load_clip_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy a ``CLIPModel`` state dict into ``self.clip``; LoRA-wrapped layers receive it in ``base_layer``.

        Raises ``ValueError`` naming the keys when a CLIP tensor has no place or a non-LoRA tensor stays unset.
        """

        def lora_base(key: str) -> str:
            head, _, leaf = key.rpartition(".")
            return f"{head}.base_layer.{leaf}"

        copy_clip_state_dict(self.clip, state_dict, lora_base, ".lora_")
        self._text_cache = None


class MmdaForFaceAntiSpoofing(MmdaPreTrainedModel):
    """MMDA: CLIP image and text towers, MD2A fusion, U-DSA, RS2 alignment and an MoE classifier.

    Inputs are keyword-only, as BIG-MoE's: ``pixel_values`` (RGB), ``depth_pixel_values``, ``ir_pixel_values``
    (each (b, c, H, W); any may be None: filled with ``missing_modality_fill``), ``modality_mask`` (b, 3) with
    columns (rgb, depth, ir), 1 = present, ``labels`` (b,) in {0 spoof, 1 live}, and ``domain_labels`` (b,)
    (ints, or a list of hashable labels) for MD2A's batch reorganisation. Without domain labels
    ``X_dom = X`` (each sample is its own domain).

    The template token ids come from the config (``spoof_template_input_ids``, ``live_template_input_ids``);
    with a frozen text tower their embeddings are computed once per device, dtype and weight version and
    cached outside the state dict.
    """

    def __init__(self, config: MmdaConfig):
        super().__init__(config)
        width = config.hidden_size
        self.clip = CLIPModel._from_config(config.clip_config)
        if config.vision_lora_rank > 0:
            self._inject_vision_lora()
        moe = config.moe_kwargs()
        self.fusion = MmdaFusionBlock(width, num_modalities=config.num_modalities, heads=config.md2a_heads,
                                      depth=config.md2a_depth, attn_dropout=config.md2a_dropout,
                                      double_residual=config.double_residual, moe_kwargs=moe)
        self.udsa = MmdaUDSA(width, depth=config.udsa_depth, heads=config.udsa_heads,
                             batch_attention=config.udsa_batch_attention, double_residual=config.double_residual,
                             text_up_path=config.udsa_text_up_path, moe_kwargs=moe)
        self.classifier = MmdaClassifier(width, num_labels=config.num_labels, text_target=config.text_anchor_target,
                                         prenorm=config.classifier_prenorm, moe_kwargs=moe)
        self._text_cache = None
        self._ids_cache = None
        self.post_init()
        self.mark_trainable()

    def _inject_vision_lora(self) -> None:
        """LoRA on the image tower's ``vision_lora_target_modules`` through peft (imported only here)."""
        cfg = self.config
        if is_peft_available():
            from peft import LoraConfig, inject_adapter_in_model
        else:
            raise ValueError("MmdaConfig.vision_lora_rank > 0 needs the `peft` package (pip install peft)")
        lora_config = LoraConfig(r=cfg.vision_lora_rank, lora_alpha=cfg.vision_lora_alpha,
                                 lora_dropout=cfg.vision_lora_dropout,
                                 target_modules=list(cfg.vision_lora_target_modules))
        try:
            inject_adapter_in_model(lora_config, self.clip.vision_model)
        except ValueError as err:
            raise ValueError(f"MmdaConfig.vision_lora_target_modules {cfg.vision_lora_target_modules!r}: {err}") from err

    # ------------------------------------------------------------------ inputs
    def prepare_modalities(self, *, pixel_values=None, depth_pixel_values=None, ir_pixel_values=None,
                           modality_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate and fill missing modalities, out of place.

        Returns ``images`` (3, b, c, H, W) in the order RGB, Depth, IR and ``present`` (b, 3) bool.
        """
        given = dict(zip(MODALITY_ARGS, (pixel_values, depth_pixel_values, ir_pixel_values)))
        owner = type(self).__name__
        vc = self.config.clip_config.vision_config
        b = check_modality_inputs(owner, given, (vc.num_channels, vc.image_size, vc.image_size), modality_mask)
        present = modality_presence(list(given.values()), b)
        if modality_mask is not None:
            present = merge_modality_mask(owner, present, modality_mask, MMDA_MODALITIES)
        reference = next(t for t in given.values() if t is not None)
        images = stack_modalities(list(given.values()), present, self.config.missing_modality_fill, reference)
        return images, present.to(reference.device)

    # ------------------------------------------------------------------ text side
    def _template_ids(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Padded ``(input_ids, attention_mask)`` per class (spoof, live), cached per device and id content."""
        cfg = self.config
        if not cfg.templates_tokenized:
            raise ValueError("MmdaConfig.spoof_template_input_ids / live_template_input_ids are not set: build the "
                             "model with MmdaForFaceAntiSpoofing.from_clip(...) or call "
                             "config.tokenize_templates(CLIPTokenizer.from_pretrained(...)) before building it")
        key = (str(device), tuple(map(tuple, cfg.spoof_template_input_ids)),
               tuple(map(tuple, cfg.live_template_input_ids)))
        if self._ids_cache is not None and self._ids_cache[0] == key:
            return self._ids_cache[1]
        eos = cfg.clip_config.text_config.eos_token_id
        out = []
        for seqs in (cfg.spoof_template_input_ids, cfg.live_template_input_ids):
            ids, mask = pad_token_ids(seqs, eos)
            out.append((ids.to(device), mask.to(device)))
        self._ids_cache = (key, out)
        return out

    def _text_parameters(self) -> list[nn.Parameter]:
        return [*self.clip.text_model.parameters(), *self.clip.text_projection.parameters()]

    def template_text_embeds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP text embeddings of the spoof (T_s, d) and live (T_l, d) templates.

        While no text-tower parameter requires a gradient the result is cached (a plain attribute, not in the
        state dict), keyed by device, dtype, mode, template ids and the version counters of the text weights, so
        loading or editing the weights recomputes it. A trainable text tower is run on every call.
        """
        params = self._text_parameters()
        device = self.clip.logit_scale.device
        ids = self._template_ids(device)
        trainable = any(p.requires_grad for p in params)
        if trainable:
            return tuple(self.clip.get_text_features(input_ids=i, attention_mask=m).pooler_output for i, m in ids)
        key = frozen_text_cache_key(device, self.clip.text_model, self._ids_cache[0], params)
        if self._text_cache is not None and self._text_cache[0] == key:
            return self._text_cache[1]
        with torch.no_grad():
            embeds = tuple(self.clip.get_text_features(input_ids=i, attention_mask=m).pooler_output for i, m in ids)
        self._text_cache = (key, embeds)
        return embeds

    def logit_scale(self) -> torch.Tensor:
        """RS2's multiplier ``s = min(exp(logit_scale), logit_scale_max)`` (CLIP's clamp at 100)."""
        return self.clip.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        *,
        pixel_values: torch.Tensor | None = None,
        depth_pixel_values: torch.Tensor | None = None,
        ir_pixel_values: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        domain_labels: torch.Tensor | list | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> MmdaFaceAntiSpoofingOutput | tuple:
        """See the class docstring; returns :class:`MmdaFaceAntiSpoofingOutput` (loss only with ``labels``)."""
        cfg = self.config
        return_dict = cfg.return_dict if return_dict is None else return_dict
        output_hidden_states = bool(output_hidden_states)
        output_attentions = bool(output_attentions)
        images, _ = self.prepare_modalities(pixel_values=pixel_values, depth_pixel_values=depth_pixel_values,
                                            ir_pixel_values=ir_pixel_values, modality_mask=modality_mask)
        m, b, c, height, width = images.shape
        if labels is not None:
            check_binary_labels(type(self).__name__, labels, b)
        text_spoof, text_live = self.template_text_embeds()

        # 1. one image-tower pass over the modality-stacked batch: X (b, m, d)
        vision = self.clip.vision_model
        context = clip_attention_implementation(vision, "eager") if output_attentions else contextlib.nullcontext()
        with context:
            vis = self.clip.get_image_features(pixel_values=images.reshape(m * b, c, height, width),
                                               output_hidden_states=output_hidden_states,
                                               output_attentions=output_attentions)
        x = vis.pooler_output.view(m, b, -1).transpose(0, 1)

        # 2. MD2A fusion (X_dom from the domain labels, X_dom = X without them), 3. U-DSA, 4. RS2, 5. classifier
        domains = domain_labels if cfg.use_domain_labels else None
        v0, aux_fusion = self.fusion(x.to(self.fusion.proj.weight.dtype), domains)
        texts = [text_spoof.to(v0.dtype), text_live.to(v0.dtype)]
        udsa = self.udsa(v0, texts)
        scale = self.logit_scale()
        alignment = torch.stack(rs2_alignment_logits_all_levels(udsa.visual_levels, udsa.text_levels, scale), dim=1)
        logits, aux_cls = self.classifier(udsa.visual_levels[-1])
        aux = aux_fusion + udsa.aux_loss + aux_cls

        loss = None
        if labels is not None:
            anchors = ()
            if self.training:  # the text-anchor CEs are a training term (spec §5)
                ce_spoof, ce_live, aux_text = self.classifier.text_anchor_loss(*udsa.text_levels[-1])
                anchors = (ce_spoof, ce_live)
                aux = aux + aux_text
            loss, _ = mmda_loss(logits.float(), list(alignment.float().unbind(1)), labels.to(logits.device).long(),
                                text_anchor_losses=anchors, aux_losses=aux,
                                label_smoothing=cfg.label_smoothing, label_smoothing_mode=cfg.label_smoothing_mode)

        hidden = attn = None
        if output_hidden_states:
            hidden = tuple(h.view(m, b, *h.shape[1:]).transpose(0, 1) for h in vis.hidden_states)
        if output_attentions:
            attn = tuple(a.view(m, b, *a.shape[1:]).transpose(0, 1) for a in vis.attentions)
        out = MmdaFaceAntiSpoofingOutput(loss=loss, logits=logits, alignment_logits=alignment, aux_loss=aux,
                                         image_embeds=x, hidden_states=hidden, attentions=attn)
        return out if return_dict else out.to_tuple()


def register_mmda_for_remote_code() -> None:
    """Make ``save_pretrained`` write ``auto_map`` and copy the code (Hub closure) next to the weights.

    ``AutoModel`` maps to :class:`MmdaForFaceAntiSpoofing`, so ``AutoModel.from_pretrained(repo,
    trust_remote_code=True)`` returns the classifier with its head.
    """
    MmdaConfig.register_for_auto_class()
    MmdaForFaceAntiSpoofing.register_for_auto_class("AutoModel")
