"""Configuration of BIG-MoE on a CLIP vision tower.

BIG-MoE: "Bypass Isolated Gating MoE for Generalized Multimodal Face Anti-Spoofing"
(Ma, Yu, Lin, Xie, Shen; ICASSP 2025, arXiv 2412.18065).
"""

from __future__ import annotations

import math

from transformers import CLIPVisionConfig, PreTrainedConfig

from .configuration_common import (
    FaceAntiSpoofingConfigMixin,
    check_fields,
    check_image_grid,
    check_layer_indices,
    check_two_labels,
    coerce_sub_config,
    is_int,
)

__all__ = ["BigMoeConfig"]

_CHOICES = {
    "block_wiring": ("preln", "reference"),
    "position_embedding_init": ("tiled", "random"),
    "adapter_init": ("default", "zero"),
}
_PROBABILITIES = ("moe_dropout", "adapter_dropout", "cpb_dropout", "cdc_theta", "modality_dropout",
                  "decision_threshold")
_POSITIVE_INTS = ("moe_num_experts", "moe_heads", "moe_experts_per_head", "moe_product_key_topk", "moe_key_dim",
                  "moe_bottleneck_dim", "cpb_prompt_dim", "eca_kernel_size")
_BOOLS = ("legacy_transpose", "prompt_residual", "modality_dropout_allow_all_missing")


class BigMoeConfig(FaceAntiSpoofingConfigMixin, PreTrainedConfig):
    r"""Configuration of [`BigMoeModel`] and [`BigMoeForFaceAntiSpoofing`].

    Defaults reproduce the reference model (spec ``method-bigmoe.md``) on a CLIP ViT-B/16 tower.
    Every field is validated at construction (also when loading with ``from_pretrained``);
    an invalid value raises ``ValueError`` naming the field.

    Args:
        vision_config (`CLIPVisionConfig` or `dict`, *optional*):
            The CLIP vision tower (defaults to ViT-B/16: hidden 768, 12 layers, 224 px, patch 16).
            ``image_size`` must be a multiple of ``patch_size``; the grid ``image_size // patch_size``
            is derived, never stored.
        moe_num_experts (`int`, defaults to 1600): PEER experts per adapter; a perfect square (ref 40^2).
        moe_heads (`int`, defaults to 2): PEER routing heads, summed (ref).
        moe_experts_per_head (`int`, defaults to 2): experts kept per head and token (ref).
        moe_product_key_topk (`int`, defaults to 2): sub-keys kept per product-key half (ref).
        moe_key_dim (`int`, defaults to 8): query half / sub-key size; must divide the gate dim
            ``2 * moe_bottleneck_dim`` (ref 8 = 16 / 2).
        moe_bottleneck_dim (`int`, defaults to 8): IGMA bottleneck r; the expert dim is 3r, the gate dim 2r.
        moe_dropout (`float`, defaults to 0.0): dropout on the weighted expert activations (ref).
        adapter_dropout (`float`, defaults to 0.1): dropout before the IGMA up-projection (ref).
        cpb_prompt_dim (`int`, defaults to 64): prompt token size (ref).
        cdc_theta (`float`, defaults to 0.7): central-difference weight of every CDC, in [0, 1] (ref).
        eca_kernel_size (`int`, defaults to 3): ECA Conv1d kernel, positive and odd (ref).
        cpb_dropout (`float`, defaults to 0.1): dropout inside the prompt bypass (ref).
        adapter_layers (`list[int]`, *optional*): backbone layers that get an adapter; ``None`` = all (ref).
            Adapters whose output cannot reach the loss are not built (see ``BigMoeModel``).
        block_wiring (`str`, defaults to ``"preln"``): ``"preln"`` = standard CLIP pre-LN block with IGMA
            parallel to the MLP and CLIP's post-LN on CLS; ``"reference"`` = the reference code's wiring
            (spec §6; stream replaced by LN1, patches counted twice, CLS three times, no final LN).
        legacy_transpose (`bool`, defaults to `False`): reproduce the reference's grid-flipping
            token<->map reshape in the prompt bypass (ref: `True`).
        position_embedding_init (`str`, defaults to ``"tiled"``): ``"tiled"`` = CLIP's class embedding and
            position table tiled over the modalities plus a zero-init modality embedding; ``"random"`` =
            new N(0, initializer_range) table over ``1 + 3N`` positions and a zero CLS (ref).
        adapter_init (`str`, defaults to ``"zero"``): ``"zero"`` zero-inits the IGMA up-projection so the
            adapted tower starts as CLIP; ``"default"`` = PyTorch default init (ref).
        prompt_residual (`bool`, defaults to `False`): add ``P_i`` to the bypass output (ref: no residual).
        modality_dropout (`float`, defaults to 0.3): per (sample, modality) drop probability, training only.
        modality_dropout_fill (`float`, defaults to 0.0): value written into a dropped or missing modality.
        modality_dropout_allow_all_missing (`bool`, defaults to `True`): if `False`, a sample whose every
            modality was dropped keeps one of its present modalities (chosen at random).
        modality_dropout_seed (`int`, *optional*): seeds a private generator for modality dropout.
        trainable_backbone_layers (`int`, defaults to 1): the last k CLIP layers are trained (ref 1).
        expert_init_std (`float`, defaults to 1.0): std of the PEER expert tables (ref N(0, 1)).
        initializer_range (`float`, defaults to 0.02): std of new tables (keys, random position table, head).
        decision_threshold (`float`, defaults to 0.5): live-score threshold; training stores the
            source-validation threshold here.
        base_model_name_or_path (`str`, defaults to ``"openai/clip-vit-base-patch16"``): the CLIP checkpoint
            the tower comes from (for model cards; never downloaded at construction).

    Example:

    ```python
    >>> from modeling_bigmoe import BigMoeConfig, BigMoeForFaceAntiSpoofing
    >>> config = BigMoeConfig(vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    ...                                      "intermediate_size": 37, "image_size": 32, "patch_size": 8},
    ...                       moe_num_experts=16, moe_bottleneck_dim=4, moe_key_dim=4)
    >>> model = BigMoeForFaceAntiSpoofing(config)
    ```
    """

    model_type = "bigmoe"
    sub_configs_defaults = {"vision_config": CLIPVisionConfig}
    # ``modality_code`` is a diagnostic output; Trainer's predictions stay the logits alone
    keys_to_ignore_at_inference = ["hidden_states", "attentions", "routing", "modality_code"]

    def __init__(
        self,
        vision_config: CLIPVisionConfig | dict | None = None,
        moe_num_experts: int = 1600,
        moe_heads: int = 2,
        moe_experts_per_head: int = 2,
        moe_product_key_topk: int = 2,
        moe_key_dim: int = 8,
        moe_bottleneck_dim: int = 8,
        moe_dropout: float = 0.0,
        adapter_dropout: float = 0.1,
        cpb_prompt_dim: int = 64,
        cdc_theta: float = 0.7,
        eca_kernel_size: int = 3,
        cpb_dropout: float = 0.1,
        adapter_layers: list[int] | None = None,
        block_wiring: str = "preln",
        legacy_transpose: bool = False,
        position_embedding_init: str = "tiled",
        adapter_init: str = "zero",
        prompt_residual: bool = False,
        modality_dropout: float = 0.3,
        modality_dropout_fill: float = 0.0,
        modality_dropout_allow_all_missing: bool = True,
        modality_dropout_seed: int | None = None,
        trainable_backbone_layers: int = 1,
        expert_init_std: float = 1.0,
        initializer_range: float = 0.02,
        decision_threshold: float = 0.5,
        base_model_name_or_path: str = "openai/clip-vit-base-patch16",
        **kwargs,
    ):
        self.vision_config = coerce_sub_config("BigMoeConfig.vision_config", vision_config, CLIPVisionConfig,
                                               {"patch_size": 16})
        self.moe_num_experts = moe_num_experts
        self.moe_heads = moe_heads
        self.moe_experts_per_head = moe_experts_per_head
        self.moe_product_key_topk = moe_product_key_topk
        self.moe_key_dim = moe_key_dim
        self.moe_bottleneck_dim = moe_bottleneck_dim
        self.moe_dropout = moe_dropout
        self.adapter_dropout = adapter_dropout
        self.cpb_prompt_dim = cpb_prompt_dim
        self.cdc_theta = cdc_theta
        self.eca_kernel_size = eca_kernel_size
        self.cpb_dropout = cpb_dropout
        self.adapter_layers = None if adapter_layers is None else list(adapter_layers)
        self.block_wiring = block_wiring
        self.legacy_transpose = legacy_transpose
        self.position_embedding_init = position_embedding_init
        self.adapter_init = adapter_init
        self.prompt_residual = prompt_residual
        self.modality_dropout = modality_dropout
        self.modality_dropout_fill = modality_dropout_fill
        self.modality_dropout_allow_all_missing = modality_dropout_allow_all_missing
        self.modality_dropout_seed = modality_dropout_seed
        self.trainable_backbone_layers = trainable_backbone_layers
        self.expert_init_std = expert_init_std
        self.initializer_range = initializer_range
        self.decision_threshold = decision_threshold
        self.base_model_name_or_path = base_model_name_or_path
        self._finish_init(kwargs)

    # ------------------------------------------------------------------ derived values
    @property
    def num_modalities(self) -> int:
        """Modalities in the token stream (RGB, IR, Depth)."""
        return 3

    @property
    def gate_dim(self) -> int:
        """Isolated gate size ``2 * moe_bottleneck_dim``."""
        return 2 * self.moe_bottleneck_dim

    @property
    def grid_size(self) -> int:
        """Patch grid side ``image_size // patch_size``."""
        return int(self.vision_config.image_size) // int(self.vision_config.patch_size)

    @property
    def resolved_adapter_layers(self) -> list[int]:
        """Sorted adapter layer indices (``adapter_layers`` or every layer)."""
        n = self.vision_config.num_hidden_layers
        return list(range(n)) if self.adapter_layers is None else sorted(self.adapter_layers)

    # ------------------------------------------------------------------ validation
    def validate_architecture(self) -> None:
        """Raise ``ValueError`` naming the field for any value the model cannot be built with."""
        vc = self.vision_config
        check_image_grid("BigMoeConfig.vision_config", vc)
        check_fields(self, "BigMoeConfig", positive_ints=_POSITIVE_INTS)
        root = math.isqrt(self.moe_num_experts)
        if root * root != self.moe_num_experts:
            raise ValueError(f"BigMoeConfig.moe_num_experts must be a perfect square, got {self.moe_num_experts}")
        if self.gate_dim % self.moe_key_dim:
            raise ValueError(f"BigMoeConfig.moe_key_dim ({self.moe_key_dim}) must divide the gate dim "
                             f"2 * moe_bottleneck_dim = {self.gate_dim}")
        if self.moe_product_key_topk > root:
            raise ValueError(f"BigMoeConfig.moe_product_key_topk ({self.moe_product_key_topk}) exceeds the "
                             f"sub-keys per half sqrt(moe_num_experts) = {root}")
        if self.moe_experts_per_head > self.moe_product_key_topk ** 2:
            raise ValueError(f"BigMoeConfig.moe_experts_per_head ({self.moe_experts_per_head}) exceeds "
                             f"moe_product_key_topk**2 = {self.moe_product_key_topk ** 2}")
        if self.eca_kernel_size % 2 == 0:
            raise ValueError(f"BigMoeConfig.eca_kernel_size must be odd, got {self.eca_kernel_size}")
        check_fields(self, "BigMoeConfig", probabilities=_PROBABILITIES, choices=_CHOICES, bools=_BOOLS,
                     positive_numbers=("expert_init_std", "initializer_range"),
                     finite_numbers=("modality_dropout_fill",))
        seed = self.modality_dropout_seed
        if seed is not None and (not is_int(seed) or seed < 0):
            raise ValueError(f"BigMoeConfig.modality_dropout_seed must be None or an int >= 0, got {seed!r}")
        n_layers = vc.num_hidden_layers
        check_layer_indices("BigMoeConfig.adapter_layers", self.adapter_layers, n_layers)
        tbl = self.trainable_backbone_layers
        if not is_int(tbl) or not 0 <= tbl <= n_layers:
            raise ValueError(f"BigMoeConfig.trainable_backbone_layers must be an int in [0, {n_layers}], got {tbl!r}")
        check_two_labels("BigMoeConfig", self.id2label)
