"""La-SoftMoE CLIP: face anti-spoofing by CLIP with a Soft MoE beside every image-tower MLP.

La-SoftMoE CLIP: "La-SoftMoE CLIP for Unified Physical-Digital Face Attack Detection"
(Zou, Du, Zhang, Zhang, Liu, Wan, Lei; IJCB 2024, arXiv 2408.12793). Soft MoE after Puigcerver et
al. (ICLR 2024); the layer itself is :class:`~.layers_softmoe.LaSoftMoeLayer`.

Forward (shape letters: b batch, n tokens, d tower width, p projection dim, c = 2 classes, t templates)::

    x      = [CLS; RGB patches] + positions                    (b, 1 + N, d)    input_mode="rgb" (paper)
           | [CLS; RGB; Depth; IR] + tiled positions + modality embedding      (b, 1 + 3N, d)  "multimodal"
    x      = pre-LN(x); per block:  x <- x + Attn(LN1 x);  h = LN2 x;  x <- x + MLP(h) + SoftMoE(h)
    v      = visual_projection(post-LN(x[:, 0]))               (b, p)
    t_c    = normalise(mean_t normalise(text_projection(TextTower(prompt[c][t]))))          (c, p)
    logits = min(exp(logit_scale), logit_scale_max) * normalise(v) . t_c^T                  (b, c)

Index 0 is spoof ("fake"), 1 is live; the live score is ``softmax(logits)[:, 1]``. With the experts'
output projections at zero (the default init) the logits are exactly CLIP's zero-shot logits.

Missing modalities (multimodal mode) are filled with ``missing_modality_fill``; no token mask is applied
(the Soft MoE layer has none; static shapes; as BIG-MoE and MMDA). The paper trains with Adam at lr 1e-6
and cross-entropy over the prompt logits (the loss here).

Parameter counts (exact; breakdown in ``hub_configs_lasoftmoe.py``): ``la-softmoe-clip-vit-base-patch16``
156,185,613 in all, 6,564,877 trainable (12 Soft MoEs of 547,073 + the logit scale);
``la-softmoe-tiny`` 47,799 / 5,443.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .clip_utils import (
    clip_attention_implementation,
    clip_layer_parts,
    get_clip_embeddings,
    get_clip_encoder_layers,
    get_clip_layernorms,
    run_clip_attention,
)
from .configuration_lasoftmoe import LaSoftMoeConfig
from .layers_softmoe import LaSoftMoeExperts, LaSoftMoeFeatureMap, LaSoftMoeLayer
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
    stack_modalities,
)

__all__ = [
    "LASOFTMOE_MODALITIES",
    "LaSoftMoeBlock",
    "LaSoftMoeFaceAntiSpoofingOutput",
    "LaSoftMoeForFaceAntiSpoofing",
    "LaSoftMoeMultimodalEmbeddings",
    "LaSoftMoePreTrainedModel",
    "inject_lasoftmoe_layers",
    "register_lasoftmoe_for_remote_code",
]

# order of the modality axis everywhere (token stream, modality_mask columns): RGB, Depth, IR
LASOFTMOE_MODALITIES = MODALITY_NAMES  # ("rgb", "depth", "ir")


@dataclass
class LaSoftMoeFaceAntiSpoofingOutput(ModelOutput):
    """Output of :class:`LaSoftMoeForFaceAntiSpoofing`.

    Args:
        loss: scalar cross-entropy over the prompt logits, when ``labels`` are given.
        logits: (b, 2) prompt logits (0 spoof, 1 live); the live score is ``softmax(logits)[:, 1]``.
        image_embeds: (b, p) unit-norm image embeddings.
        text_embeds: (2, p) unit-norm class embeddings (the templates of each class ensembled).
        hidden_states: tuple of (b, n, d): the input of block 0 (after CLIP's pre-LN) and every block's output.
        attentions: tuple of (b, heads, n, n), one per block.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class LaSoftMoeBlock(GradientCheckpointingLayer):
    """A CLIP encoder layer (``base_layer``) with a Soft MoE (``moe_adapter``) in parallel with its MLP.

    ``forward(hidden_states)`` (b, n, d): ``x <- x + Attn(LN1 x)``; ``h = LN2 x``; ``x <- x + MLP(h) + SoftMoE(h)``
    over all tokens (CLS included); returns ``(hidden_states, attn_weights or None)``.
    """

    def __init__(self, base_layer: nn.Module, config: LaSoftMoeConfig, layer_idx: int):
        super().__init__()
        self.base_layer = base_layer
        self.layer_idx = layer_idx
        self.moe_adapter = LaSoftMoeLayer(
            config.vision_config.hidden_size,
            num_experts=config.moe_num_experts,
            num_slots=config.resolved_num_slots,
            expert_dim=config.moe_expert_dim,
            combine=config.moe_combine,
            combine_norm=config.moe_combine_norm,
            phi=config.moe_phi,
            scale_init=config.moe_scale_init,
            activation=config.moe_activation,
            dropout=config.moe_dropout,
            zero_init_output=config.moe_zero_init_output,
        )

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        """``hidden_states`` (b, n, d) -> ``(hidden_states, attn_weights)``."""
        layer_norm1, self_attn, layer_norm2, mlp = clip_layer_parts(self.base_layer)
        attn_out, attn_weights = run_clip_attention(self_attn, layer_norm1(hidden_states))
        x = hidden_states + attn_out
        h = layer_norm2(x)
        return x + mlp(h) + self.moe_adapter(h), (attn_weights if output_attentions else None)


def inject_lasoftmoe_layers(vision_tower: nn.Module, config: LaSoftMoeConfig) -> list[str]:
    """Wrap each layer of ``config.resolved_moe_layers`` in a :class:`LaSoftMoeBlock` (PEFT-style, in place).

    Returns the targeted names ``layers.{i}``; raises ``ValueError`` if the tower's depth disagrees with the
    config or a layer is already wrapped.
    """
    layers = get_clip_encoder_layers(vision_tower)
    if len(layers) != config.vision_config.num_hidden_layers:
        raise ValueError(f"inject_lasoftmoe_layers: the tower has {len(layers)} layers, "
                         f"config.clip_config.vision_config says {config.vision_config.num_hidden_layers}")
    targeted = []
    for i in config.resolved_moe_layers:
        if isinstance(layers[i], LaSoftMoeBlock):
            raise ValueError(f"inject_lasoftmoe_layers: layer {i} already holds a LaSoftMoeBlock")  # noqa: TRY004
        layers[i] = LaSoftMoeBlock(layers[i], config, i)
        targeted.append(f"layers.{i}")
    if len(targeted) != len(config.resolved_moe_layers):
        raise ValueError(f"inject_lasoftmoe_layers: wrapped {len(targeted)} layers, "
                         f"planned {len(config.resolved_moe_layers)}")
    return targeted


class LaSoftMoeMultimodalEmbeddings(nn.Module):
    """The early-fusion token stream ``[CLS; RGB; Depth; IR]`` on top of CLIP's own embeddings.

    CLIP's patch convolution, class embedding and position table are shared (the table tiled over the
    modalities); the only new tensor is ``modality_embedding`` (m, d), zero-initialised, so each
    modality's tokens start exactly as CLIP's RGB tokens would.
    """

    def __init__(self, hidden_size: int, *, num_modalities: int):
        super().__init__()
        self.num_modalities = num_modalities
        self.modality_embedding = nn.Parameter(torch.zeros(num_modalities, hidden_size))

    def forward(self, clip_embeddings: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``images`` (m, b, c, H, W) -> tokens (b, 1 + m*N, d), before CLIP's pre-LN."""
        m, b, c, height, width = images.shape
        if m != self.num_modalities:
            raise ValueError(f"LaSoftMoeMultimodalEmbeddings: expected {self.num_modalities} modalities, got {m}")
        conv = clip_embeddings.patch_embedding
        patches = conv(images.reshape(m * b, c, height, width).to(conv.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)  # (m*b, N, d)
        table = clip_embeddings.position_embedding.weight  # (1 + N, d)
        n, d = patches.shape[1], patches.shape[2]
        if table.shape[0] != 1 + n:
            raise ValueError(f"LaSoftMoeMultimodalEmbeddings: {n} patches per image, CLIP's position table has "
                             f"{table.shape[0] - 1}")
        patches = patches.view(m, b, n, d) + table[1:] + self.modality_embedding.to(patches.dtype)[:, None, None, :]
        patches = patches.transpose(0, 1).reshape(b, m * n, d)
        cls = (clip_embeddings.class_embedding + table[0]).to(patches.dtype).expand(b, 1, d)
        return torch.cat([cls, patches], dim=1)


_LASOFTMOE_TYPES = (LaSoftMoeLayer, LaSoftMoeExperts, LaSoftMoeFeatureMap, LaSoftMoeMultimodalEmbeddings)


class LaSoftMoePreTrainedModel(FaceAntiSpoofingPreTrainedMixin, PreTrainedModel):
    """Base class: config class, weight initialisation, freezing, ``from_clip``.
 The shared
    :class:`~.modeling_common.FaceAntiSpoofingPreTrainedMixin` loads safetensors only by default.
    """

    config_class = LaSoftMoeConfig
    config: LaSoftMoeConfig
    base_model_prefix = "la_softmoe"
    _no_split_modules = ["CLIPEncoderLayer", "LaSoftMoeBlock", "CLIPTextEmbeddings", "CLIPVisionEmbeddings"]

    # ------------------------------------------------------------------ initialisation
    def _is_own_init_module(self, module: nn.Module) -> bool:
        """The Soft MoE layers injected into the CLIP image tower and the modality embedding get *our*
        ``_init_weights`` (CLIP's would leave their raw parameters unset); CLIP's own modules keep CLIP's init."""
        return isinstance(module, (*_LASOFTMOE_TYPES, LaSoftMoePreTrainedModel))

    @torch.no_grad()
    def _init_weights(self, module):
        """The Soft MoE's own init (Phi ~ N(0, 1/d), scale, experts, kernel) through ``transformers.initialization``
        helpers, which skip tensors loaded from a checkpoint; the modality embedding at zero."""
        if isinstance(module, LaSoftMoeLayer):
            init.normal_(module.slot_weight, mean=0.0, std=module.dim ** -0.5)
            init.constant_(module.scale, module.scale_init)
        elif isinstance(module, LaSoftMoeExperts):
            bound_in = module.dim ** -0.5
            init.uniform_(module.w_in, -bound_in, bound_in)
            init.uniform_(module.b_in, -bound_in, bound_in)
            if module.zero_init_output:
                init.zeros_(module.w_out)
                init.zeros_(module.b_out)
            else:
                bound_out = module.expert_dim ** -0.5
                init.uniform_(module.w_out, -bound_out, bound_out)
                init.uniform_(module.b_out, -bound_out, bound_out)
        elif isinstance(module, LaSoftMoeFeatureMap):
            if module.kind == "learnable":
                init.ones_(module.weight)
                init.zeros_(module.bias)
        elif isinstance(module, LaSoftMoeMultimodalEmbeddings):
            init.zeros_(module.modality_embedding)

    # ------------------------------------------------------------------ trainable parameters
    def mark_trainable(self) -> None:
        """Config-driven freezing: everything frozen except the Soft MoE layers, the modality embedding (multimodal
        mode), CLIP's logit scale (``train_logit_scale``), its text projection (``train_text_projection``) and, with
        ``train_vision_tower``, the whole image tower and visual projection. The text tower is always frozen."""
        cfg = self.config
        clip = self.clip
        self.requires_grad_(False)
        for module in self.modules():
            if isinstance(module, (LaSoftMoeLayer, LaSoftMoeMultimodalEmbeddings)):
                module.requires_grad_(True)
        clip.logit_scale.requires_grad_(cfg.train_logit_scale)
        clip.text_projection.requires_grad_(cfg.train_text_projection)
        if cfg.train_vision_tower:
            clip.vision_model.requires_grad_(True)
            clip.visual_projection.requires_grad_(True)

    # ------------------------------------------------------------------ CLIP weights
    @classmethod
    def from_clip(cls, name_or_path: str | os.PathLike = "openai/clip-vit-base-patch16", *, tokenizer=None,
                  **config_overrides):
        """Build La-SoftMoE CLIP around a pretrained CLIP (Hub id or local folder holding a full ``CLIPModel``
        checkpoint in safetensors and its tokenizer files) and tokenise the prompts with its ``CLIPTokenizer``.

        Args:
            name_or_path: the CLIP checkpoint (default ``openai/clip-vit-base-patch16``).
            tokenizer: a tokenizer to use instead of ``CLIPTokenizer.from_pretrained(name_or_path)``.
            config_overrides: :class:`LaSoftMoeConfig` fields (``clip_config`` comes from the checkpoint).
        """
        return from_full_clip(cls, name_or_path, tokenizer, config_overrides, "tokenize_prompts")

    @torch.no_grad()
    def load_clip_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy a ``CLIPModel`` state dict into ``self.clip``; wrapped image layers receive it in ``base_layer``.

        Raises ``ValueError`` naming the keys when a CLIP tensor has no place (or another shape) or one of our CLIP
        tensors stays unset.
        """

        def wrapped_layer(key: str) -> str:
            parts = key.split(".")
            if "layers" not in parts:
                return key
            at = parts.index("layers") + 2
            return ".".join(parts[:at] + ["base_layer"] + parts[at:])

        copy_clip_state_dict(self.clip, state_dict, wrapped_layer, ".moe_adapter.")
        self._text_cache = None


class LaSoftMoeForFaceAntiSpoofing(LaSoftMoePreTrainedModel):
    """La-SoftMoE CLIP: CLIP image and text towers, a Soft MoE beside every image MLP, prompt classification.

    Inputs are keyword-only, as the package's other models: ``pixel_values`` (RGB), ``depth_pixel_values``,
    ``ir_pixel_values`` (each (b, c, H, W)), ``modality_mask`` (b, 3) with columns (rgb, depth, ir), 1 = present,
    and ``labels`` (b,) in {0 spoof, 1 live}.

    * ``input_mode="rgb"`` (paper): ``pixel_values`` is required; depth and IR are validated and ignored. A sample
      whose mask marks RGB missing gets ``missing_modality_fill`` pixels.
    * ``input_mode="multimodal"``: any modality may be None or masked (filled with ``missing_modality_fill``);
      at least one must be present per sample.

    The prompt token ids come from the config (``prompt_input_ids``); the frozen text tower's pooled outputs are
    cached outside the state dict (keyed by device, dtype, ids and the weights' version counters) and the
    (optionally trainable) text projection is applied on every call.
    """

    def __init__(self, config: LaSoftMoeConfig):
        super().__init__(config)
        self.clip = CLIPModel._from_config(config.clip_config)
        self.moe_layer_names = inject_lasoftmoe_layers(self.clip.vision_model, config)
        self.embeddings = (
            LaSoftMoeMultimodalEmbeddings(config.vision_config.hidden_size, num_modalities=config.num_modalities)
            if config.input_mode == "multimodal" else None)
        self._text_cache = None
        self._ids_cache = None
        self.post_init()
        self.mark_trainable()

    # ------------------------------------------------------------------ inputs
    def prepare_modalities(self, *, pixel_values=None, depth_pixel_values=None, ir_pixel_values=None,
                           modality_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate and fill missing modalities, out of place.

        Returns ``images`` (m, b, c, H, W) (m = 1: RGB; m = 3: RGB, Depth, IR) and ``present`` (b, m) bool.
        """
        given = dict(zip(MODALITY_ARGS, (pixel_values, depth_pixel_values, ir_pixel_values)))
        owner = type(self).__name__
        cfg = self.config
        vc = cfg.vision_config
        used = MODALITY_ARGS if cfg.input_mode == "multimodal" else MODALITY_ARGS[:1]
        required = ("pixel_values", "input_mode='rgb' needs pixel_values (RGB)") if cfg.input_mode == "rgb" else None
        b = check_modality_inputs(owner, given, (vc.num_channels, vc.image_size, vc.image_size), modality_mask,
                                  required=required, finite_args=used)
        present = modality_presence(list(given.values()), b)
        if modality_mask is not None:
            present = merge_modality_mask(owner, present, modality_mask, LASOFTMOE_MODALITIES)
        present = present[:, :len(used)]
        reference = next(t for t in given.values() if t is not None)
        images = stack_modalities([given[arg] for arg in used], present, cfg.missing_modality_fill, reference)
        return images, present.to(reference.device)

    # ------------------------------------------------------------------ text side
    def _prompt_ids(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ``(input_ids, attention_mask)`` of all prompts, (c * t, L) class-major, cached per device."""
        cfg = self.config
        if not cfg.prompts_tokenized:
            raise ValueError("LaSoftMoeConfig.prompt_input_ids is not set: build the model with "
                             "LaSoftMoeForFaceAntiSpoofing.from_clip(...) or call "
                             "config.tokenize_prompts(CLIPTokenizer.from_pretrained(...)) before building it")
        key = (str(device), tuple(tuple(tuple(seq) for seq in row) for row in cfg.prompt_input_ids))
        if self._ids_cache is not None and self._ids_cache[0] == key:
            return self._ids_cache[1]
        ids, mask = pad_token_ids([seq for row in cfg.prompt_input_ids for seq in row],
                                  cfg.clip_config.text_config.eos_token_id)
        out = (ids.to(device), mask.to(device))
        self._ids_cache = (key, out)
        return out

    def _pooled_prompts(self) -> torch.Tensor:
        """The text tower's pooled output of every prompt, (c * t, text hidden), before the text projection.

        Cached while no text-tower parameter requires a gradient (a plain attribute, not in the state dict), keyed
        by device, dtype, mode, prompt ids and the version counters of the text weights.
        """
        text_model = self.clip.text_model
        params = list(text_model.parameters())
        device = self.clip.logit_scale.device
        ids, mask = self._prompt_ids(device)
        if any(p.requires_grad for p in params):
            return text_model(input_ids=ids, attention_mask=mask).pooler_output
        key = frozen_text_cache_key(device, text_model, self._ids_cache[0], params)
        if self._text_cache is not None and self._text_cache[0] == key:
            return self._text_cache[1]
        with torch.no_grad():
            pooled = text_model(input_ids=ids, attention_mask=mask).pooler_output
        self._text_cache = (key, pooled)
        return pooled

    def class_text_embeds(self) -> torch.Tensor:
        """Unit class embeddings (2, p): per class the mean of its templates' unit text embeddings, renormalised."""
        cfg = self.config
        projected = self.clip.text_projection(self._pooled_prompts())
        per_prompt = F.normalize(projected, dim=-1).view(len(cfg.class_names), len(cfg.prompt_templates), -1)
        return F.normalize(per_prompt.mean(dim=1), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        """``s = min(exp(logit_scale), logit_scale_max)`` (CLIP's clamp at 100)."""
        return self.clip.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    # ------------------------------------------------------------------ image side
    def image_features(self, images: torch.Tensor, *, output_hidden_states: bool = False,
                       output_attentions: bool = False):
        """``images`` (m, b, c, H, W) from :meth:`prepare_modalities` -> ``(image_embeds (b, p), hidden, attn)``.

        ``image_embeds`` is ``visual_projection(post-LN(CLS))``, not normalised.
        """
        vision = self.clip.vision_model
        clip_embeddings = get_clip_embeddings(vision)
        pre_layernorm, post_layernorm = get_clip_layernorms(vision)
        if self.embeddings is None:
            tokens = clip_embeddings(images[0].to(clip_embeddings.patch_embedding.weight.dtype))
        else:
            tokens = self.embeddings(clip_embeddings, images)
        hidden = pre_layernorm(tokens)
        all_hidden = (hidden,) if output_hidden_states else None
        all_attn = () if output_attentions else None
        context = clip_attention_implementation(vision, "eager") if output_attentions else contextlib.nullcontext()
        with context:
            for layer in get_clip_encoder_layers(vision):
                if isinstance(layer, LaSoftMoeBlock):
                    hidden, attn = layer(hidden, output_attentions=output_attentions)
                else:
                    layer_norm1, self_attn, layer_norm2, mlp = clip_layer_parts(layer)
                    attn_out, attn = run_clip_attention(self_attn, layer_norm1(hidden))
                    hidden = hidden + attn_out
                    hidden = hidden + mlp(layer_norm2(hidden))
                if output_hidden_states:
                    all_hidden += (hidden,)
                if output_attentions:
                    all_attn += (attn,)
        image_embeds = self.clip.visual_projection(post_layernorm(hidden[:, 0]))
        return image_embeds, all_hidden, all_attn

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        *,
        pixel_values: torch.Tensor | None = None,
        depth_pixel_values: torch.Tensor | None = None,
        ir_pixel_values: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> LaSoftMoeFaceAntiSpoofingOutput | tuple:
        """See the class docstring; returns :class:`LaSoftMoeFaceAntiSpoofingOutput` (loss only with ``labels``)."""
        cfg = self.config
        return_dict = cfg.return_dict if return_dict is None else return_dict
        images, _ = self.prepare_modalities(pixel_values=pixel_values, depth_pixel_values=depth_pixel_values,
                                            ir_pixel_values=ir_pixel_values, modality_mask=modality_mask)
        b = images.shape[1]
        if labels is not None:
            check_binary_labels(type(self).__name__, labels, b)
        text_embeds = self.class_text_embeds()
        image_embeds, hidden, attn = self.image_features(images, output_hidden_states=bool(output_hidden_states),
                                                         output_attentions=bool(output_attentions))
        image_embeds = F.normalize(image_embeds, dim=-1)
        logits = self.logit_scale() * image_embeds @ text_embeds.to(image_embeds.dtype).t()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels.to(logits.device).long())
        out = LaSoftMoeFaceAntiSpoofingOutput(loss=loss, logits=logits, image_embeds=image_embeds,
                                              text_embeds=text_embeds, hidden_states=hidden, attentions=attn)
        return out if return_dict else out.to_tuple()


def register_lasoftmoe_for_remote_code() -> None:
    """Make ``save_pretrained`` write ``auto_map`` and copy the code (Hub closure) next to the weights.

    ``AutoModel`` maps to :class:`LaSoftMoeForFaceAntiSpoofing`, so ``AutoModel.from_pretrained(repo,
    trust_remote_code=True)`` returns the classifier.
    """
    LaSoftMoeConfig.register_for_auto_class()
    LaSoftMoeForFaceAntiSpoofing.register_for_auto_class("AutoModel")
