"""Configuration of MMDA on a CLIP model (image and text towers).

MMDA: "Multimodal Denoising and Alignment" (Ma, Lin, Yu, Liu, Yuan, Xie, Shen; arXiv 2505.09484),
later retitled "Purify then Guide". The text templates are stored in the config as strings *and* as
CLIP token ids, so that ``config.json`` alone rebuilds a working model without the tokenizer files.
"""

from __future__ import annotations

from transformers import CLIPConfig, PreTrainedConfig

from .configuration_common import (
    ClipTowersConfigMixin,
    check_fields,
    check_token_ids,
    check_two_labels,
    coerce_sub_config,
    is_int,
)
from .mmda_templates import default_templates

__all__ = ["LABEL_SMOOTHING_MODES", "MmdaConfig"]

LABEL_SMOOTHING_MODES = ("proper", "reference")
_BOOLS = ("freeze_vision", "freeze_text", "freeze_logit_scale", "use_domain_labels", "double_residual",
          "udsa_batch_attention", "udsa_text_up_path", "classifier_prenorm")
_POSITIVE_INTS = ("md2a_heads", "udsa_depth", "udsa_heads")
_NON_NEGATIVE_INTS = ("md2a_depth", "moe_num_experts", "moe_num_constant_experts", "moe_min_capacity",
                      "vision_lora_rank")
_PROBABILITIES = ("md2a_dropout", "moe_threshold", "label_smoothing", "text_anchor_target", "vision_lora_dropout",
                  "decision_threshold")
_POSITIVE_NUMBERS = ("moe_capacity_factor_train", "moe_capacity_factor_eval", "moe_constant_init_std",
                     "logit_scale_max", "vision_lora_alpha")
_NON_NEGATIVE_NUMBERS = ("moe_balance_loss_coef", "moe_router_z_loss_coef")


class MmdaConfig(ClipTowersConfigMixin, PreTrainedConfig):
    r"""Configuration of [`MmdaForFaceAntiSpoofing`].

    Defaults reproduce the MMDA reference (spec ``method-mmda.md``) on CLIP ViT-B/16. The MMDA width
    is CLIP's ``projection_dim`` (512), derived and never stored. Every field is validated at
    construction (also by ``from_pretrained``); an invalid value raises ``ValueError`` naming the field.

    Training settings of the reference (the training code's business, listed for completeness):
    AdamW, lr 5e-6, weight decay 5e-5, no scheduler, effective batch 24 (3 x 8 accumulation),
    300 epochs, seed 42; resize 224, ``(x - 127.5) / 128`` for every modality (not CLIP's mean/std),
    horizontal flip only.

    Args:
        clip_config (`CLIPConfig` or `dict`, *optional*):
            The CLIP model, image and text towers (default: ViT-B/16, i.e. ``CLIPConfig`` with
            ``vision_config.patch_size=16``; text 512 wide, context 77, vocabulary 49,408).
        spoof_templates (`list[str]`, *optional*): sentences of class 0 (default: the 24 of
            ``mmda_templates.SPOOF_TEMPLATES``, FLIP's six included). Must not be empty.
        live_templates (`list[str]`, *optional*): sentences of class 1 (default: the 23 of
            ``mmda_templates.LIVE_TEMPLATES``). Must not be empty.
        spoof_template_input_ids (`list[list[int]]`, *optional*): CLIP token ids of ``spoof_templates``
            (with start and end tokens, unpadded), set by :meth:`tokenize_templates` or
            ``MmdaForFaceAntiSpoofing.from_clip``. ``None`` builds the model but forward raises until set.
        live_template_input_ids (`list[list[int]]`, *optional*): the same for ``live_templates``.
        freeze_vision (`bool`, defaults to `False`): freeze the image tower and its projection.
            (The reference trains the whole CLIP; its freeze flag was broken.)
        freeze_text (`bool`, defaults to `True`): freeze the text tower and its projection (the paper's
            figure); the template embeddings are then computed once and cached (not in the state dict).
        freeze_logit_scale (`bool`, defaults to `False`): freeze CLIP's logit scale ``s`` (ref: trained).
        vision_lora_rank (`int`, defaults to 0): LoRA rank on the image tower through ``peft`` (0 = off). With
            LoRA the image tower's own weights and projection are frozen whatever ``freeze_vision`` says and
            only the LoRA matrices train (a cheaper option than full fine-tuning; ours).
        vision_lora_alpha (`float`, defaults to 16): LoRA alpha (the update is scaled by alpha / rank).
        vision_lora_dropout (`float`, defaults to 0.0): dropout on the LoRA input.
        vision_lora_target_modules (`list[str]`, defaults to ``["q_proj", "v_proj"]``): module names of the
            image tower that get LoRA (peft's suffix matching).
        md2a_heads (`int`, defaults to 16): MD2A heads (ref).
        md2a_depth (`int`, defaults to 12): depth fed to lambda_init = 0.8 - 0.6 exp(-0.3 depth) (ref, ~0.784).
        md2a_dropout (`float`, defaults to 0.1): MD2A attention dropout (ref).
        use_domain_labels (`bool`, defaults to `True`): use ``domain_labels`` for MD2A's batch reorganisation
            when they are passed to forward. A batch without domain labels (or ``False`` here) uses
            ``X_dom = X``: the subtracted map then comes from the sample itself.
        double_residual (`bool`, defaults to `True`): the reference's doubled residual ``x = X + x1 + x2`` in the
            fusion block and every U-DSA level (ref: `True`; `False` gives ``x1 + x2``). It grows the
            activations by about 2x per level, which is why ``classifier_prenorm`` exists.
        udsa_depth (`int`, defaults to 7): U-DSA depth; ``2 * udsa_depth + 1`` alignment levels (ref 7, 15 levels).
        udsa_heads (`int`, defaults to 16): MHA heads of each U-DSA level (ref).
        udsa_batch_attention (`bool`, defaults to `False`): the reference's MHA without ``batch_first`` attends
            across the batch (and across templates); ``False`` (ours) attends within a sample.
        udsa_text_up_path (`bool`, defaults to `False`): also run the text through the up path (ours; the spec
            pairs up-path outputs with the down-path text).
        classifier_prenorm (`bool`, defaults to `True`): a LayerNorm before the classifier's MoE (ours). With the
            doubled residuals the last up-path output is ~2.4e4 times larger than ``v0`` and the router reads it
            unnormalised: measured at width 512, random init, CLIP-sized inputs, the classifier's router z-loss is
            6e7 (6e4 after its 1e-3 weight) without the norm and 4.0 with it. `False` is the spec's plain
            ``Linear(MoE(x))``.
        moe_num_experts (`int`, defaults to 4): GEGLU experts per MoE (ref).
        moe_num_constant_experts (`int`, defaults to 3): constant experts per MoE (ref).
        moe_hidden_dim (`int`, *optional*): GEGLU hidden width; ``None`` = ``int(width * 8 / 3)`` (ref 1365).
        moe_threshold (`float`, defaults to 0.2): second-expert threshold (ref).
        moe_capacity_factor_train (`float`, defaults to 1.25): capacity factor in training (ref).
        moe_capacity_factor_eval (`float`, defaults to 2.0): capacity factor in evaluation (ref).
        moe_min_capacity (`int`, defaults to 4): floor on the slots per expert and group (ours).
        moe_balance_loss_coef (`float`, defaults to 1e-2): balance-loss weight (ref).
        moe_router_z_loss_coef (`float`, defaults to 1e-3): router z-loss weight (ref).
        moe_constant_init_std (`float`, defaults to 0.02): std of the constant experts at initialisation (ours).
        label_smoothing (`float`, defaults to 0.1): smoothing of the classifier and alignment targets (ref 0.1).
        label_smoothing_mode (`str`, defaults to ``"proper"``): ``"proper"`` = ``(1 - eps) onehot + eps / 2``;
            ``"reference"`` = the reference's unnormalised ``(1 - eps) onehot + eps``.
        text_anchor_target (`float`, defaults to 0.9): weight of the true class in the text-anchor soft targets (ref).
        logit_scale_max (`float`, defaults to 100.0): ``s = min(exp(logit_scale), logit_scale_max)`` (CLIP's clamp).
        missing_modality_fill (`float`, defaults to 0.0): value of a missing modality's pixels.
        decision_threshold (`float`, defaults to 0.5): live-score threshold; training stores the source-validation
            threshold here.
        base_model_name_or_path (`str`, defaults to ``"openai/clip-vit-base-patch16"``): the CLIP checkpoint the towers
            and the template token ids come from (for model cards; never downloaded at construction).

    Example:

    ```python
    >>> from modeling_bigmoe import MmdaConfig, MmdaForFaceAntiSpoofing
    >>> from modeling_bigmoe.hub_configs_mmda import tiny_config
    >>> config = tiny_config()   # 32 px, CLIP width 32, projection 16, template ids included
    >>> model = MmdaForFaceAntiSpoofing(config)
    ```
    """

    model_type = "mmda"
    sub_configs_defaults = {"clip_config": CLIPConfig}
    keys_to_ignore_at_inference = ["alignment_logits", "aux_loss", "image_embeds", "hidden_states", "attentions"]

    def __init__(
        self,
        clip_config: CLIPConfig | dict | None = None,
        spoof_templates: list[str] | None = None,
        live_templates: list[str] | None = None,
        spoof_template_input_ids: list[list[int]] | None = None,
        live_template_input_ids: list[list[int]] | None = None,
        freeze_vision: bool = False,
        freeze_text: bool = True,
        freeze_logit_scale: bool = False,
        vision_lora_rank: int = 0,
        vision_lora_alpha: float = 16,
        vision_lora_dropout: float = 0.0,
        vision_lora_target_modules: list[str] | None = None,
        md2a_heads: int = 16,
        md2a_depth: int = 12,
        md2a_dropout: float = 0.1,
        use_domain_labels: bool = True,
        double_residual: bool = True,
        udsa_depth: int = 7,
        udsa_heads: int = 16,
        udsa_batch_attention: bool = False,
        udsa_text_up_path: bool = False,
        classifier_prenorm: bool = True,
        moe_num_experts: int = 4,
        moe_num_constant_experts: int = 3,
        moe_hidden_dim: int | None = None,
        moe_threshold: float = 0.2,
        moe_capacity_factor_train: float = 1.25,
        moe_capacity_factor_eval: float = 2.0,
        moe_min_capacity: int = 4,
        moe_balance_loss_coef: float = 1e-2,
        moe_router_z_loss_coef: float = 1e-3,
        moe_constant_init_std: float = 0.02,
        label_smoothing: float = 0.1,
        label_smoothing_mode: str = "proper",
        text_anchor_target: float = 0.9,
        logit_scale_max: float = 100.0,
        missing_modality_fill: float = 0.0,
        decision_threshold: float = 0.5,
        base_model_name_or_path: str = "openai/clip-vit-base-patch16",
        **kwargs,
    ):
        self.clip_config = coerce_sub_config("MmdaConfig.clip_config", clip_config, CLIPConfig,
                                             {"vision_config": {"patch_size": 16}})
        spoof_default, live_default = default_templates()
        self.spoof_templates = spoof_default if spoof_templates is None else spoof_templates
        self.live_templates = live_default if live_templates is None else live_templates
        self.spoof_template_input_ids = spoof_template_input_ids
        self.live_template_input_ids = live_template_input_ids
        self.freeze_vision = freeze_vision
        self.freeze_text = freeze_text
        self.freeze_logit_scale = freeze_logit_scale
        self.vision_lora_rank = vision_lora_rank
        self.vision_lora_alpha = vision_lora_alpha
        self.vision_lora_dropout = vision_lora_dropout
        self.vision_lora_target_modules = (["q_proj", "v_proj"] if vision_lora_target_modules is None
                                           else vision_lora_target_modules)
        self.md2a_heads = md2a_heads
        self.md2a_depth = md2a_depth
        self.md2a_dropout = md2a_dropout
        self.use_domain_labels = use_domain_labels
        self.double_residual = double_residual
        self.udsa_depth = udsa_depth
        self.udsa_heads = udsa_heads
        self.udsa_batch_attention = udsa_batch_attention
        self.udsa_text_up_path = udsa_text_up_path
        self.classifier_prenorm = classifier_prenorm
        self.moe_num_experts = moe_num_experts
        self.moe_num_constant_experts = moe_num_constant_experts
        self.moe_hidden_dim = moe_hidden_dim
        self.moe_threshold = moe_threshold
        self.moe_capacity_factor_train = moe_capacity_factor_train
        self.moe_capacity_factor_eval = moe_capacity_factor_eval
        self.moe_min_capacity = moe_min_capacity
        self.moe_balance_loss_coef = moe_balance_loss_coef
        self.moe_router_z_loss_coef = moe_router_z_loss_coef
        self.moe_constant_init_std = moe_constant_init_std
        self.label_smoothing = label_smoothing
        self.label_smoothing_mode = label_smoothing_mode
        self.text_anchor_target = text_anchor_target
        self.logit_scale_max = logit_scale_max
        self.missing_modality_fill = missing_modality_fill
        self.decision_threshold = decision_threshold
        self.base_model_name_or_path = base_model_name_or_path
        self._finish_init(kwargs)

    # ------------------------------------------------------------------ derived values
    @property
    def hidden_size(self) -> int:
        """MMDA width = CLIP's ``projection_dim`` (the size of CLIP's image and text embeddings)."""
        return int(self.clip_config.projection_dim)

    @property
    def num_modalities(self) -> int:
        """Modalities encoded by the image tower (RGB, Depth, IR)."""
        return 3

    @property
    def num_alignment_levels(self) -> int:
        """RS2 levels: ``v0``, the down path and the up path, ``2 * udsa_depth + 1``."""
        return 2 * self.udsa_depth + 1

    def moe_kwargs(self) -> dict:
        """Keyword arguments of every :class:`MmdaSTMoE` built from this config."""
        return {
            "num_experts": self.moe_num_experts,
            "num_constant_experts": self.moe_num_constant_experts,
            "expert_hidden_dim": self.moe_hidden_dim,
            "threshold": self.moe_threshold,
            "capacity_factor_train": self.moe_capacity_factor_train,
            "capacity_factor_eval": self.moe_capacity_factor_eval,
            "min_expert_capacity": self.moe_min_capacity,
            "balance_loss_coef": self.moe_balance_loss_coef,
            "router_z_loss_coef": self.moe_router_z_loss_coef,
            "constant_init_std": self.moe_constant_init_std,
        }

    # ------------------------------------------------------------------ templates
    def tokenize_templates(self, tokenizer) -> None:
        """Set ``spoof_template_input_ids`` and ``live_template_input_ids`` from the current templates.

        ``tokenizer`` is the CLIP checkpoint's ``CLIPTokenizer`` (start and end tokens added, no
        truncation). A template longer than the text tower's context raises ``ValueError`` naming it.
        """
        ids = {}
        for field in ("spoof_templates", "live_templates"):
            self._check_template_strings(field)
            encoded = tokenizer(list(getattr(self, field)), add_special_tokens=True, truncation=False)["input_ids"]
            ids[field] = [[int(t) for t in seq] for seq in encoded]
            for i, seq in enumerate(ids[field]):
                if len(seq) > self.text_context_length:
                    raise ValueError(
                        f"MmdaConfig.{field}[{i}] ({getattr(self, field)[i]!r}) is {len(seq)} tokens long, more than "
                        f"the text tower's context of {self.text_context_length} "
                        f"(clip_config.text_config.max_position_embeddings)")
        self.spoof_template_input_ids = ids["spoof_templates"]
        self.live_template_input_ids = ids["live_templates"]
        self.validate_architecture()

    @property
    def templates_tokenized(self) -> bool:
        """Whether both template id lists are set."""
        return self.spoof_template_input_ids is not None and self.live_template_input_ids is not None

    def _check_template_strings(self, field: str) -> None:
        value = getattr(self, field)
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"MmdaConfig.{field} must be a non-empty list of sentences, got {value!r}")
        bad = [i for i, t in enumerate(value) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise ValueError(f"MmdaConfig.{field} entries {bad} are not non-empty strings")

    def _check_template_ids(self, field: str, text_field: str) -> None:
        ids = getattr(self, field)
        if ids is None:
            return
        n_text = len(getattr(self, text_field))
        if not isinstance(ids, (list, tuple)) or len(ids) != n_text:
            raise ValueError(f"MmdaConfig.{field} must hold one id list per entry of {text_field} ({n_text}), got "
                             f"{len(ids) if isinstance(ids, (list, tuple)) else type(ids).__name__}; "
                             f"call config.tokenize_templates(tokenizer) after editing the templates")
        texts = getattr(self, text_field)
        for i, seq in enumerate(ids):
            check_token_ids(f"MmdaConfig.{field}[{i}]", seq, self.clip_config.text_config, self.text_context_length,
                            texts[i])

    # ------------------------------------------------------------------ validation
    def validate_architecture(self) -> None:
        """Raise ``ValueError`` naming the field for any value the model cannot be built with."""
        width = self.clip_config.projection_dim
        if not is_int(width) or width <= 0:
            raise ValueError(f"MmdaConfig.clip_config.projection_dim must be a positive int, got {width!r}")
        check_fields(self, "MmdaConfig", bools=_BOOLS, positive_ints=_POSITIVE_INTS,
                     non_negative_ints=_NON_NEGATIVE_INTS)
        for name in ("md2a_heads", "udsa_heads"):
            if width % getattr(self, name):
                raise ValueError(f"MmdaConfig.{name} ({getattr(self, name)}) must divide the MMDA width "
                                 f"clip_config.projection_dim = {width}")
        if self.moe_num_experts + self.moe_num_constant_experts < 2:
            raise ValueError(f"MmdaConfig.moe_num_experts + moe_num_constant_experts must be >= 2 (top-2 routing), "
                             f"got {self.moe_num_experts} + {self.moe_num_constant_experts}")
        if self.moe_hidden_dim is not None and (not is_int(self.moe_hidden_dim) or self.moe_hidden_dim <= 0):
            raise ValueError(f"MmdaConfig.moe_hidden_dim must be None or a positive int, got {self.moe_hidden_dim!r}")
        check_fields(self, "MmdaConfig", probabilities=_PROBABILITIES, positive_numbers=_POSITIVE_NUMBERS,
                     non_negative_numbers=_NON_NEGATIVE_NUMBERS, finite_numbers=("missing_modality_fill",),
                     choices={"label_smoothing_mode": LABEL_SMOOTHING_MODES})
        targets = self.vision_lora_target_modules
        if not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"MmdaConfig.vision_lora_target_modules must be a non-empty list of module names, "
                             f"got {targets!r}")
        self._check_template_strings("spoof_templates")
        self._check_template_strings("live_templates")
        self._check_template_ids("spoof_template_input_ids", "spoof_templates")
        self._check_template_ids("live_template_input_ids", "live_templates")
        if (self.spoof_template_input_ids is None) != (self.live_template_input_ids is None):
            raise ValueError("MmdaConfig.spoof_template_input_ids and live_template_input_ids must be both set or "
                             "both None; call config.tokenize_templates(tokenizer)")
        check_two_labels("MmdaConfig", self.id2label)
