"""BIG-MoE on a CLIP vision tower: multimodal (RGB + IR + Depth) face anti-spoofing.

BIG-MoE: "Bypass Isolated Gating MoE for Generalized Multimodal Face Anti-Spoofing"
(Ma, Yu, Lin, Xie, Shen; ICASSP 2025, arXiv 2412.18065).

One shared, mostly frozen CLIP tower reads the token stream ``[CLS; RGB; IR; Depth]`` (early
fusion). Each adapted block carries an IGMA (product-key experts routed by an isolated gate) beside
its MLP and a convolutional prompt bypass (CPB) that turns the gate features and the current prompt
into the next block's prompt; the prompts reach only the gates.

Modality orders. The public API is (rgb, depth, ir): keyword arguments ``pixel_values``,
``depth_pixel_values``, ``ir_pixel_values`` and the ``modality_mask`` columns (1 = present).
Internally (token stream, image concatenation and the 3-bit missing-modality code) the order is
the reference's RGB, IR, Depth, with code bit0 = RGB, bit1 = IR, bit2 = Depth (1 = missing).
:data:`PUBLIC_TO_INTERNAL` is the one place that maps between them.

Parameter counts (exact; breakdown and the comparison with the spec in ``hub_configs.py``):
``bigmoe-clip-vit-base-patch16`` 89,973,587 total, 11,263,571 trainable (spec estimate ~11.6 M of ~90 M;
the dead IGMA of layer 11 and CPBs of layers 10-11 are not built); ``bigmoe-tiny`` 71,008 / 47,136.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .adapters import (
    BIGMOE_ADAPTER_TYPES,
    BigMoeBlockAdapter,
    BigMoeRouting,
    clip_block_forward,
    inject_bigmoe_adapters,
    mark_bigmoe_trainable,
    plan_bigmoe_adapters,
)
from .clip_utils import (
    clip_attention_implementation,
    get_clip_embeddings,
    get_clip_encoder_layers,
    get_clip_layernorms,
)
from .configuration_bigmoe import BigMoeConfig
from .layers_cdc import BigMoeECA, BigMoePromptGenerator, CentralDifferenceConv2d, map_to_tokens
from .layers_peer import BigMoeIsolatedGateAdapter, BigMoePEER, BigMoeRMSNorm
from .modeling_common import (
    MODALITY_ARGS,
    MODALITY_NAMES,
    FaceAntiSpoofingPreTrainedMixin,
    check_modality_inputs,
    merge_modality_mask,
    modality_presence,
    pytorch_default_init,
    stack_modalities,
)

__all__ = [
    "PUBLIC_MODALITIES",
    "INTERNAL_MODALITIES",
    "PUBLIC_TO_INTERNAL",
    "BigMoeModelOutput",
    "BigMoeFaceAntiSpoofingOutput",
    "BigMoeRouting",
    "BigMoeMultimodalEmbeddings",
    "BigMoePreTrainedModel",
    "BigMoeModel",
    "BigMoeForFaceAntiSpoofing",
    "register_bigmoe_for_remote_code",
]

PUBLIC_MODALITIES = MODALITY_NAMES  # ("rgb", "depth", "ir")
INTERNAL_MODALITIES = ("rgb", "ir", "depth")
# internal modality j is public column PUBLIC_TO_INTERNAL[j]
PUBLIC_TO_INTERNAL = tuple(PUBLIC_MODALITIES.index(name) for name in INTERNAL_MODALITIES)
_ARG_NAMES = dict(zip(MODALITY_NAMES, MODALITY_ARGS))


@dataclass
class BigMoeModelOutput(ModelOutput):
    """Output of :class:`BigMoeModel`.

    Args:
        last_hidden_state: (b, 1 + 3N, d) the stream after the last block.
        pooler_output: (b, d) the final CLS feature (after CLIP's post-LN with ``block_wiring="preln"``; the raw
            CLS with ``"reference"``).
        hidden_states: tuple of (b, 1 + 3N, d): the input of block 0 (after CLIP's pre-LN) and every block's output.
        attentions: tuple of (b, heads, 1 + 3N, 1 + 3N), one per block.
        routing: tuple of :class:`BigMoeRouting`, one per adapted block.
        modality_code: (b,) long, the 3-bit missing-modality code used (bit0 RGB, bit1 IR, bit2 Depth).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    routing: tuple[BigMoeRouting, ...] | None = None
    modality_code: torch.LongTensor | None = None


@dataclass
class BigMoeFaceAntiSpoofingOutput(ModelOutput):
    """Output of :class:`BigMoeForFaceAntiSpoofing`.

    Args:
        loss: scalar cross-entropy, when ``labels`` are given.
        logits: (b, 2) spoof/live logits; the live score is ``softmax(logits)[:, 1]``.
        hidden_states, attentions, routing, modality_code: as in :class:`BigMoeModelOutput`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    routing: tuple[BigMoeRouting, ...] | None = None
    modality_code: torch.LongTensor | None = None


class BigMoeMultimodalEmbeddings(nn.Module):
    """CLS, the position table over ``1 + m*N`` positions and (tiled init) a learned modality embedding.

    ``forward(patch_tokens)``: (b, m, N, d) -> (b, 1 + m*N, d) = [CLS; patches] + positions (+ modality emb.).
    """

    def __init__(self, hidden_size: int, *, num_modalities: int, num_patches: int, modality_embedding: bool):
        super().__init__()
        self.num_modalities = num_modalities
        self.num_patches = num_patches
        self.cls_token = nn.Parameter(torch.zeros(hidden_size))
        self.position_embedding = nn.Parameter(torch.zeros(1 + num_modalities * num_patches, hidden_size))
        self.modality_embedding = (
            nn.Parameter(torch.zeros(num_modalities, hidden_size)) if modality_embedding else None)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        b, m, n, d = patch_tokens.shape
        if self.modality_embedding is not None:
            patch_tokens = patch_tokens + self.modality_embedding[None, :, None, :].to(patch_tokens.dtype)
        cls = self.cls_token.to(patch_tokens.dtype).expand(b, 1, d)
        tokens = torch.cat([cls, patch_tokens.reshape(b, m * n, d)], dim=1)
        return tokens + self.position_embedding.to(tokens.dtype)


class BigMoePreTrainedModel(FaceAntiSpoofingPreTrainedMixin, PreTrainedModel):
    """Base class: config class, weight initialisation, ``from_clip``, trainable summary.
 ``from_pretrained``: safetensors only by default (see
    :class:`~.modeling_common.FaceAntiSpoofingPreTrainedMixin`).
    """

    config_class = BigMoeConfig
    config: BigMoeConfig
    base_model_prefix = "bigmoe"
    _no_split_modules = ["CLIPEncoderLayer", "BigMoeBlockAdapter"]

    # ------------------------------------------------------------------ initialisation
    def _is_own_init_module(self, module: nn.Module) -> bool:
        """Every BIG-MoE module, including the adapters injected into the CLIP tower, gets *our* ``_init_weights``
        (the tower's own would draw the expert tables with std 0.02); see ``initialize_weights``."""
        return isinstance(module, (*BIGMOE_ADAPTER_TYPES, BigMoePreTrainedModel))

    def _bigmoe_vision_tower(self) -> nn.Module:
        base = getattr(self, self.base_model_prefix, self)
        return base.vision_tower

    @torch.no_grad()
    def _init_weights(self, module):
        """Initialise every custom parameter (children are visited before their parents)."""
        super()._init_weights(module)
        config = self.config
        if isinstance(module, BigMoePEER):
            init.normal_(module.keys, mean=0.0, std=0.02)  # ref N(0, 0.02)
            init.normal_(module.weight_down.weight, mean=0.0, std=config.expert_init_std)
            init.normal_(module.weight_up.weight, mean=0.0, std=config.expert_init_std)
            pytorch_default_init(module.to_queries)
        elif isinstance(module, BigMoeRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, BigMoeIsolatedGateAdapter):
            for linear in (module.down, module.gate_fuse, module.gate_prompt, module.up):
                pytorch_default_init(linear)
            if config.adapter_init == "zero":
                init.zeros_(module.up.weight)
                init.zeros_(module.up.bias)
        elif isinstance(module, CentralDifferenceConv2d):
            init.kaiming_uniform_(module.weight, a=5 ** 0.5)
        elif isinstance(module, BigMoeECA):
            init.kaiming_uniform_(module.conv.weight, a=5 ** 0.5)
        elif isinstance(module, BigMoePromptGenerator):
            init.zeros_(module.modality_prompts)
            init.zeros_(module.task_prompt)
            pytorch_default_init(module.patch_proj)
        elif isinstance(module, BigMoeMultimodalEmbeddings):
            self._init_multimodal_embeddings(module)
        elif isinstance(module, BigMoeForFaceAntiSpoofing):
            init.normal_(module.classifier.weight, mean=0.0, std=config.initializer_range)
            init.zeros_(module.classifier.bias)

    def _init_multimodal_embeddings(self, module: BigMoeMultimodalEmbeddings, *, force: bool = False) -> None:
        """``"tiled"``: CLIP's class embedding, CLIP's position table tiled over the modalities, zero modality
        embedding. ``"random"`` (ref): zero CLS, N(0, initializer_range) table. ``force`` overrides loaded flags."""
        copy_, normal_, zeros_ = (
            (lambda t, o: t.copy_(o), lambda t, std: t.normal_(0.0, std), lambda t: t.zero_()) if force else
            (init.copy_, lambda t, std: init.normal_(t, mean=0.0, std=std), init.zeros_))
        if self.config.position_embedding_init == "tiled":
            clip_embeddings = get_clip_embeddings(self._bigmoe_vision_tower())
            table = clip_embeddings.position_embedding.weight
            tiled = torch.cat([table[:1], table[1:].repeat(module.num_modalities, 1)], dim=0)
            copy_(module.cls_token, clip_embeddings.class_embedding)
            copy_(module.position_embedding, tiled)
            if module.modality_embedding is not None:
                zeros_(module.modality_embedding)
        else:
            zeros_(module.cls_token)
            normal_(module.position_embedding, self.config.initializer_range)

    # ------------------------------------------------------------------ trainable parameters
    def _trainable_extras(self) -> list[nn.Module | nn.Parameter]:
        base = getattr(self, self.base_model_prefix, self)
        layers = get_clip_encoder_layers(base.vision_tower)
        k = self.config.trainable_backbone_layers
        extras = [base.embeddings]
        extras += [layer.base_layer if isinstance(layer, BigMoeBlockAdapter) else layer
                   for layer in list(layers)[len(layers) - k:]] if k else []
        if k and self.config.block_wiring == "preln":
            # CLIP's post-LN is trained with the top blocks; the reference wiring never applies it.
            extras.append(get_clip_layernorms(base.vision_tower)[1])
        head = getattr(self, "classifier", None)
        if head is not None:
            extras.append(head)
        return extras

    def mark_trainable(self) -> None:
        """Freeze all, then unfreeze (structurally) the adapters, prompt generator, CLS, position and modality
        embeddings, the last ``trainable_backbone_layers`` CLIP blocks (+ CLIP's post-LN for ``"preln"``) and the
        head. CLIP's patch convolution, pre-LN and its own class/position embeddings stay frozen."""
        mark_bigmoe_trainable(self, self._trainable_extras())

    def bigmoe_adapter_modules(self) -> dict[str, nn.Module]:
        """What the adapter-only files hold, keyed independently of CLIP's module paths."""
        base = getattr(self, self.base_model_prefix, self)
        layers = get_clip_encoder_layers(base.vision_tower)
        k = self.config.trainable_backbone_layers
        parts: dict[str, nn.Module] = {}
        for i, layer in enumerate(layers):
            if isinstance(layer, BigMoeBlockAdapter):
                parts[f"blocks.{i}.moe_adapter"] = layer.moe_adapter
                if layer.cpb is not None:
                    parts[f"blocks.{i}.cpb"] = layer.cpb
            if i >= len(layers) - k:
                parts[f"blocks.{i}.base_layer"] = layer.base_layer if isinstance(layer, BigMoeBlockAdapter) else layer
        parts["embeddings"] = base.embeddings
        if base.prompt_generator is not None:
            parts["prompt_generator"] = base.prompt_generator
        if k and self.config.block_wiring == "preln":
            parts["post_layernorm"] = get_clip_layernorms(base.vision_tower)[1]
        head = getattr(self, "classifier", None)
        if head is not None:
            parts["classifier"] = head
        return parts

    # ------------------------------------------------------------------ CLIP weights
    @classmethod
    def from_clip(cls, name_or_path: str | os.PathLike = "openai/clip-vit-base-patch16", **config_overrides):
        """Build the model around a pretrained CLIP vision tower (Hub id or local folder; a CLIPVisionModel or a
        full CLIPModel checkpoint, old ``vision_model.``-prefixed keys accepted) and apply the tiled position
        init from its table. ``config_overrides`` are ``BigMoeConfig`` fields; weights are read from safetensors only."""
        name_or_path = os.fspath(name_or_path)
        if "vision_config" in config_overrides:
            raise ValueError("from_clip: vision_config comes from the CLIP checkpoint; do not pass it")
        vision_config = CLIPVisionConfig.from_pretrained(name_or_path)
        config = BigMoeConfig(vision_config=vision_config.to_dict(), base_model_name_or_path=name_or_path,
                              **config_overrides)
        model = cls(config)
        clip, info = CLIPVisionModel.from_pretrained(name_or_path, use_safetensors=True, output_loading_info=True)
        if info["missing_keys"] or info["mismatched_keys"]:
            raise ValueError(f"from_clip: {name_or_path} lacks CLIP vision weights: missing "
                             f"{sorted(info['missing_keys'])[:8]}, mismatched {list(info['mismatched_keys'])[:8]}")
        base = getattr(model, model.base_model_prefix, model)
        ours, theirs = base.vision_tower, clip
        with torch.no_grad():
            get_clip_embeddings(ours).load_state_dict(get_clip_embeddings(theirs).state_dict())
            for mine, src in zip(get_clip_layernorms(ours), get_clip_layernorms(theirs)):
                mine.load_state_dict(src.state_dict())
            src_layers = get_clip_encoder_layers(theirs)
            for layer, src in zip(get_clip_encoder_layers(ours), src_layers, strict=True):
                target = layer.base_layer if isinstance(layer, BigMoeBlockAdapter) else layer
                target.load_state_dict(src.state_dict())
            if config.position_embedding_init == "tiled":
                model._init_multimodal_embeddings(base.embeddings, force=True)
        model.mark_trainable()
        return model


class BigMoeModel(BigMoePreTrainedModel):
    """The BIG-MoE backbone; returns the final CLS feature (``pooler_output``) and the stream.

    Forward (``block_wiring="preln"``, default), per block i: ``x <- x + Attn(LN1 x)``; ``h = LN2 x``;
    ``x <- x + MLP(h) + [0_cls; IGMA(h_patches, P_i)]``; ``P_{i+1} = CPB(gate map, P_i map)`` (``+ P_i`` with
    ``prompt_residual``); then CLIP's post-LN on CLS. ``block_wiring="reference"`` follows spec §6 step by step
    (see :func:`modeling_bigmoe.adapters.clip_block_forward`): no final LN.

    Only modules whose output can reach the loss are built: no IGMA in the last backbone layer, no CPB after the
    last IGMA, no prompt generator without any IGMA. Attention runs through CLIP's own modules with SDPA; the
    eager path is used only for a call with ``output_attentions=True``.
    """

    def __init__(self, config: BigMoeConfig):
        super().__init__(config)
        vc = config.vision_config
        self.vision_tower = CLIPVisionModel._from_config(vc, attn_implementation="sdpa")
        self.embeddings = BigMoeMultimodalEmbeddings(
            vc.hidden_size, num_modalities=config.num_modalities, num_patches=config.grid_size ** 2,
            modality_embedding=config.position_embedding_init == "tiled")
        self.adapted_layers = inject_bigmoe_adapters(self.vision_tower, config)
        igma_layers, _ = plan_bigmoe_adapters(config)
        self.prompt_generator = (
            BigMoePromptGenerator(image_size=vc.image_size, patch_size=vc.patch_size,
                                  num_modalities=config.num_modalities, num_channels=vc.num_channels,
                                  prompt_dim=config.cpb_prompt_dim, theta=config.cdc_theta)
            if igma_layers else None)
        self._dropout_generator: torch.Generator | None = None
        self.post_init()
        self.mark_trainable()

    # ------------------------------------------------------------------ inputs
    def _modality_dropout_draw(self, shape: tuple[int, int]) -> torch.Tensor:
        if self.config.modality_dropout_seed is not None:
            if self._dropout_generator is None:
                self._dropout_generator = torch.Generator().manual_seed(self.config.modality_dropout_seed)
            return torch.rand(shape, generator=self._dropout_generator)
        return torch.rand(shape)

    def prepare_modalities(self, *, pixel_values=None, depth_pixel_values=None, ir_pixel_values=None,
                           modality_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate, apply modality dropout (training only) and fill missing modalities, out of place.

        Returns ``images`` (m, b, c, H, W) in the internal order RGB, IR, Depth and ``modality_code`` (b,) long.
        """
        given = dict(zip(MODALITY_ARGS, (pixel_values, depth_pixel_values, ir_pixel_values)))
        owner = type(self).__name__
        vc = self.config.vision_config
        b = check_modality_inputs(owner, given, (vc.num_channels, vc.image_size, vc.image_size), modality_mask)
        reference = next(t for t in given.values() if t is not None)
        tensors = [given[_ARG_NAMES[name]] for name in INTERNAL_MODALITIES]
        present = modality_presence(tensors, b)
        if modality_mask is not None:
            present = merge_modality_mask(owner, present, modality_mask[:, list(PUBLIC_TO_INTERNAL)],
                                          INTERNAL_MODALITIES)
        cfg = self.config
        if self.training and cfg.modality_dropout > 0:
            keep = self._modality_dropout_draw((b, 3)) >= cfg.modality_dropout
            dropped = present & keep
            if not cfg.modality_dropout_allow_all_missing:
                rows = (~dropped.any(dim=1)) & present.any(dim=1)
                if bool(rows.any()):
                    generator = self._dropout_generator if cfg.modality_dropout_seed is not None else None
                    pick = torch.multinomial(present[rows].float(), 1, generator=generator).flatten()
                    restored = torch.zeros_like(dropped[rows])
                    restored[torch.arange(pick.numel()), pick] = True
                    dropped[rows] = restored
            present = dropped
        images = stack_modalities(tensors, present, cfg.modality_dropout_fill, reference)
        present = present.to(reference.device)
        bits = torch.tensor([1 << j for j in range(3)], device=reference.device)
        code = ((~present).long() * bits).sum(dim=1)
        return images, code

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        *,
        pixel_values: torch.Tensor | None = None,
        depth_pixel_values: torch.Tensor | None = None,
        ir_pixel_values: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_routing: bool | None = None,
        return_dict: bool | None = None,
    ) -> BigMoeModelOutput | tuple:
        """Keyword-only inputs, each (b, c, H, W), any of them may be None (filled; see ``modality_mask``).

        ``modality_mask`` (b, 3), columns (rgb, depth, ir), 1 = present. Returns :class:`BigMoeModelOutput`.
        """
        cfg = self.config
        output_hidden_states = bool(output_hidden_states)
        output_attentions = bool(output_attentions)
        output_routing = bool(output_routing)
        return_dict = cfg.return_dict if return_dict is None else return_dict
        images, code = self.prepare_modalities(pixel_values=pixel_values, depth_pixel_values=depth_pixel_values,
                                               ir_pixel_values=ir_pixel_values, modality_mask=modality_mask)
        m, b, c, height, width = images.shape
        tower = self.vision_tower
        clip_embeddings = get_clip_embeddings(tower)
        pre_layernorm, post_layernorm = get_clip_layernorms(tower)
        patch_conv = clip_embeddings.patch_embedding
        # one pass of the shared frozen patch conv over the modality-stacked batch
        patches = patch_conv(images.reshape(m * b, c, height, width).to(patch_conv.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2).reshape(m, b, -1, patches.shape[1]).transpose(0, 1)
        hidden = pre_layernorm(self.embeddings(patches))
        prompt = None
        if self.prompt_generator is not None:
            stacked = images.transpose(0, 1).reshape(b, m * c, height, width)
            prompt = map_to_tokens(self.prompt_generator(stacked, code)).to(hidden.dtype)

        all_hidden = (hidden,) if output_hidden_states else None
        all_attn = () if output_attentions else None
        all_routing = () if output_routing else None
        context = clip_attention_implementation(tower, "eager") if output_attentions else contextlib.nullcontext()
        with context:
            for layer in get_clip_encoder_layers(tower):
                if isinstance(layer, BigMoeBlockAdapter):
                    hidden, next_prompt, attn, routing = layer(
                        hidden, prompt, output_attentions=output_attentions, output_routing=output_routing)
                    if next_prompt is not None:
                        prompt = next_prompt
                    if output_routing:
                        all_routing += (routing,)
                elif getattr(layer, "gradient_checkpointing", False) and self.training and torch.is_grad_enabled():
                    # plain CLIP layers run through clip_block_forward, not their own forward: checkpoint it here
                    hidden, attn = layer._gradient_checkpointing_func(
                        functools.partial(clip_block_forward, layer, block_wiring=cfg.block_wiring,
                                          output_attentions=output_attentions), hidden)
                else:
                    hidden, attn = clip_block_forward(layer, hidden, block_wiring=cfg.block_wiring,
                                                      output_attentions=output_attentions)
                if output_hidden_states:
                    all_hidden += (hidden,)
                if output_attentions:
                    all_attn += (attn,)
        pooled = post_layernorm(hidden[:, 0]) if cfg.block_wiring == "preln" else hidden[:, 0]
        out = BigMoeModelOutput(last_hidden_state=hidden, pooler_output=pooled, hidden_states=all_hidden,
                                attentions=all_attn, routing=all_routing, modality_code=code)
        return out if return_dict else out.to_tuple()


class BigMoeForFaceAntiSpoofing(BigMoePreTrainedModel):
    """BIG-MoE with a Linear(hidden, 2) head on the final CLS; cross-entropy when ``labels`` are given.

    Labels: 0 = spoof, 1 = live; the live score is ``softmax(logits)[:, 1]``.
    """

    def __init__(self, config: BigMoeConfig):
        super().__init__(config)
        self.bigmoe = BigMoeModel(config)
        self.classifier = nn.Linear(config.vision_config.hidden_size, config.num_labels)
        self.post_init()
        self.mark_trainable()

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
        output_routing: bool | None = None,
        return_dict: bool | None = None,
    ) -> BigMoeFaceAntiSpoofingOutput | tuple:
        """See :meth:`BigMoeModel.forward`; ``labels`` (b,) long in {0, 1} adds the cross-entropy ``loss``."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.bigmoe(pixel_values=pixel_values, depth_pixel_values=depth_pixel_values,
                              ir_pixel_values=ir_pixel_values, modality_mask=modality_mask,
                              output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                              output_routing=output_routing, return_dict=True)
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            if labels.shape != (logits.shape[0],):
                raise ValueError(f"BigMoeForFaceAntiSpoofing: labels must have shape ({logits.shape[0]},), "
                                 f"got {tuple(labels.shape)}")
            loss = F.cross_entropy(logits.float(), labels.to(logits.device).long())
        out = BigMoeFaceAntiSpoofingOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                           attentions=outputs.attentions, routing=outputs.routing,
                                           modality_code=outputs.modality_code)
        return out if return_dict else out.to_tuple()


def register_bigmoe_for_remote_code() -> None:
    """Make ``save_pretrained`` write ``auto_map`` and copy the code (Hub closure) next to the weights.

    ``AutoModel`` maps to :class:`BigMoeForFaceAntiSpoofing`, so ``AutoModel.from_pretrained(repo,
    trust_remote_code=True)`` returns the classifier with its head.
    """
    BigMoeConfig.register_for_auto_class()
    BigMoeForFaceAntiSpoofing.register_for_auto_class("AutoModel")
