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
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, PreTrainedModel
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
LASOFTMOE_MODALITIES = ("rgb", "depth", "ir")
_ARG_NAMES = ("pixel_values", "depth_pixel_values", "ir_pixel_values")


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


class LaSoftMoePreTrainedModel(PreTrainedModel):
    """Base class: config class, weight initialisation, freezing, ``from_clip``."""

    config_class = LaSoftMoeConfig
    config: LaSoftMoeConfig
    base_model_prefix = "la_softmoe"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["CLIPEncoderLayer", "LaSoftMoeBlock", "CLIPTextEmbeddings", "CLIPVisionEmbeddings"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def initialize_weights(self):
        """Like ``PreTrainedModel.initialize_weights``, but the Soft MoE layers injected into the CLIP image tower and
        the modality embedding get *our* ``_init_weights`` (CLIP's would leave their raw parameters unset), while
        CLIP's own modules keep CLIP's init. Tensors already loaded from a checkpoint are left alone."""

        def own(module: nn.Module, is_custom_code: bool = False) -> None:
            if getattr(module, "_is_hf_initialized", False):
                return
            self._init_weights(module)
            module._is_hf_initialized = True

        is_custom = bool(getattr(self, "is_custom_code", lambda: False)())

        def visit(module: nn.Module, fn) -> None:
            for child in module.children():
                if isinstance(child, (*_LASOFTMOE_TYPES, LaSoftMoePreTrainedModel)):
                    visit(child, own)
                elif isinstance(child, PreTrainedModel):
                    visit(child, child._initialize_weights)
                else:
                    visit(child, fn)
            fn(module, is_custom)

        visit(self, own)

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

    def trainable_parameter_summary(self) -> tuple[int, int, str]:
        """``(trainable, total, text)`` with PEFT's ``print_trainable_parameters`` format."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        pct = 100.0 * trainable / total if total else 0.0
        return trainable, total, f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {pct:.4f}"

    def print_trainable_parameters(self) -> None:
        """Print ``trainable params: ... || all params: ... || trainable%: ...``."""
        print(self.trainable_parameter_summary()[2])

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, then the config-driven freezing (loading resets ``requires_grad``)."""
        result = super().from_pretrained(*args, **kwargs)
        model = result[0] if isinstance(result, tuple) else result
        model.mark_trainable()
        return result

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
        name_or_path = os.fspath(name_or_path)
        if "clip_config" in config_overrides:
            raise ValueError("from_clip: clip_config comes from the CLIP checkpoint; do not pass it")
        clip_config = CLIPConfig.from_pretrained(name_or_path)
        if tokenizer is None:
            tokenizer = CLIPTokenizer.from_pretrained(name_or_path)
        config = LaSoftMoeConfig(clip_config=clip_config.to_dict(), base_model_name_or_path=name_or_path,
                                 **config_overrides)
        config.tokenize_prompts(tokenizer)
        model = cls(config)
        source, info = CLIPModel.from_pretrained(name_or_path, use_safetensors=True, output_loading_info=True)
        if info["missing_keys"] or info["mismatched_keys"]:
            raise ValueError(f"from_clip: {name_or_path} is not a full CLIP (image + text) checkpoint: missing "
                             f"{sorted(info['missing_keys'])[:8]}, mismatched {list(info['mismatched_keys'])[:8]}")
        model.load_clip_state_dict(source.state_dict())
        model.mark_trainable()
        return model

    @torch.no_grad()
    def load_clip_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy a ``CLIPModel`` state dict into ``self.clip``; wrapped image layers receive it in ``base_layer``.

        Raises ``ValueError`` naming the keys when a CLIP tensor has no place (or another shape) or one of our CLIP
        tensors stays unset.
        """
        ours = self.clip.state_dict()
        filled, unplaced = set(), []
        for key, value in state_dict.items():
            target = key
            if target not in ours:
                parts = key.split(".")
                if "layers" in parts:
                    at = parts.index("layers") + 2
                    target = ".".join(parts[:at] + ["base_layer"] + parts[at:])
            if target not in ours or ours[target].shape != value.shape:
                unplaced.append(f"{key} {tuple(value.shape)}")
                continue
            ours[target].copy_(value)
            filled.add(target)
        unset = sorted(k for k in ours if k not in filled and ".moe_adapter." not in k and not k.endswith("position_ids"))
        if unplaced or unset:
            raise ValueError(f"load_clip_state_dict: CLIP keys without a place {unplaced[:8]}, "
                             f"our CLIP keys left unset {unset[:8]}")
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
        given = dict(zip(_ARG_NAMES, (pixel_values, depth_pixel_values, ir_pixel_values)))
        name = type(self).__name__
        cfg = self.config
        vc = cfg.vision_config
        expected = (vc.num_channels, vc.image_size, vc.image_size)
        shapes = {arg: (None if t is None else tuple(t.shape)) for arg, t in given.items()}
        present_args = [arg for arg, t in given.items() if t is not None]
        if not present_args:
            raise ValueError(f"{name}: all modalities are missing (pixel_values, depth_pixel_values and "
                             "ir_pixel_values are all None)")
        if cfg.input_mode == "rgb" and pixel_values is None:
            raise ValueError(f"{name}: input_mode='rgb' needs pixel_values (RGB); got {shapes}")
        for arg in present_args:
            tensor = given[arg]
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                raise ValueError(f"{name}: {arg} must be a float tensor, got {type(tensor).__name__} "
                                 f"{getattr(tensor, 'dtype', '')}")
            if tensor.dim() != 4 or tuple(tensor.shape[1:]) != expected:
                raise ValueError(f"{name}: {arg} must have shape (batch, {expected[0]}, {expected[1]}, "
                                 f"{expected[2]}), got {tuple(tensor.shape)}")
        batch_sizes = {given[arg].shape[0] for arg in present_args}
        if len(batch_sizes) != 1:
            raise ValueError(f"{name}: batch sizes differ between modalities: {shapes}")
        b = batch_sizes.pop()
        used = _ARG_NAMES if cfg.input_mode == "multimodal" else _ARG_NAMES[:1]
        for arg in present_args:
            if arg not in used:
                continue
            finite = torch.isfinite(given[arg])
            if not bool(finite.all()):
                raise ValueError(f"{name}: {arg} (shape {tuple(given[arg].shape)}) holds "
                                 f"{int((~finite).sum())} NaN/inf values")
        present = torch.tensor([[given[arg] is not None for arg in _ARG_NAMES]] * b, dtype=torch.bool).view(b, 3)
        if modality_mask is not None:
            if not isinstance(modality_mask, torch.Tensor) or tuple(modality_mask.shape) != (b, 3):
                raise ValueError(f"{name}: modality_mask must have shape ({b}, 3) (columns rgb, depth, ir), "
                                 f"got {tuple(getattr(modality_mask, 'shape', ()))}; inputs {shapes}")
            values = modality_mask.detach().to("cpu")
            if not bool(((values == 0) | (values == 1)).all()):
                raise ValueError(f"{name}: modality_mask must hold only 0/1 (or bools), got {values.tolist()}")
            mask = values.bool()
            claimed = mask & ~present
            if bool(claimed.any()):
                cols = [LASOFTMOE_MODALITIES[j] for j in range(3) if bool(claimed[:, j].any())]
                raise ValueError(f"{name}: modality_mask marks {cols} present but the tensors are None")
            empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"{name}: modality_mask marks all modalities missing for samples {empty}")
            present = mask
        present = present[:, :len(used)]
        reference = given[present_args[0]]
        present = present.to(reference.device)
        fill = torch.tensor(cfg.missing_modality_fill, device=reference.device, dtype=reference.dtype)
        images = torch.stack([
            torch.where(present[:, j, None, None, None], given[arg], fill) if given[arg] is not None
            else fill.expand_as(reference)
            for j, arg in enumerate(used)])
        return images, present

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
        eos = cfg.clip_config.text_config.eos_token_id
        pad = eos if isinstance(eos, int) else 0  # CLIP pools at the first end token (or the largest id): safe
        seqs = [seq for row in cfg.prompt_input_ids for seq in row]
        length = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), length), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
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
        key = (str(device), text_model.training, torch.is_inference_mode_enabled(), self._ids_cache[0],
               tuple((id(p), p._version, p.dtype) for p in params))
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
        name = type(self).__name__
        return_dict = cfg.return_dict if return_dict is None else return_dict
        images, _ = self.prepare_modalities(pixel_values=pixel_values, depth_pixel_values=depth_pixel_values,
                                            ir_pixel_values=ir_pixel_values, modality_mask=modality_mask)
        b = images.shape[1]
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.shape != (b,) or labels.is_floating_point():
                raise ValueError(f"{name}: labels must be an integer tensor of shape ({b},), got "
                                 f"{getattr(labels, 'dtype', type(labels).__name__)} "
                                 f"{tuple(getattr(labels, 'shape', ()))}")
            if b and (int(labels.min()) < 0 or int(labels.max()) > 1):
                raise ValueError(f"{name}: labels must be 0 (spoof) or 1 (live), got {labels.tolist()}")
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
