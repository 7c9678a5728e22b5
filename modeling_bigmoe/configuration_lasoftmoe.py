"""Configuration of La-SoftMoE CLIP (image and text towers, a Soft MoE beside every image-tower MLP).

La-SoftMoE CLIP: "La-SoftMoE CLIP for Unified Physical-Digital Face Attack Detection"
(Zou, Du, Zhang, Zhang, Liu, Wan, Lei; IJCB 2024, arXiv 2408.12793). The prompt templates are stored
as strings *and* as CLIP token ids, so that ``config.json`` alone rebuilds a working model without the
tokenizer files.
"""

from __future__ import annotations

from transformers import CLIPConfig, PreTrainedConfig

from .configuration_common import (
    ClipTowersConfigMixin,
    check_fields,
    check_image_grid,
    check_layer_indices,
    check_token_ids,
    check_two_labels,
    coerce_sub_config,
    is_int,
)
from .layers_softmoe import COMBINE_MODES, COMBINE_NORMS, EXPERT_ACTIVATIONS, PHI_KINDS, resolve_num_slots

__all__ = ["INPUT_MODES", "LASOFTMOE_TEMPLATES", "LaSoftMoeConfig"]

INPUT_MODES = ("rgb", "multimodal")

# the paper's prompt study: the first gave the best ACER / ACC, the second the best AUC / EER
LASOFTMOE_TEMPLATES = {
    "acer": "This is an image of a {} face",
    "auc": "A photo of a {} face",
}

_CHOICES = {
    "input_mode": INPUT_MODES,
    "moe_combine": COMBINE_MODES,
    "moe_combine_norm": COMBINE_NORMS,
    "moe_phi": PHI_KINDS,
    "moe_activation": EXPERT_ACTIVATIONS,
}
_POSITIVE_INTS = ("moe_num_experts", "moe_expert_dim")
_BOOLS = ("moe_zero_init_output", "train_logit_scale", "train_text_projection", "train_vision_tower")
_PROBABILITIES = ("moe_dropout", "decision_threshold")
_POSITIVE_NUMBERS = ("moe_scale_init", "logit_scale_max")


class LaSoftMoeConfig(ClipTowersConfigMixin, PreTrainedConfig):
    r"""Configuration of [`LaSoftMoeForFaceAntiSpoofing`].

    Defaults follow the paper (spec ``method-la-softmoe.md``) on CLIP ViT-B/16: RGB input, a Soft MoE with
    4 experts x 49 slots (= the 196 patches at 224/16) beside the MLP of each of the 12 image blocks,
    classification against text prompts. Every field is validated at construction (also by
    ``from_pretrained``); an invalid value raises ``ValueError`` naming the field.

    Args:
        clip_config (`CLIPConfig` or `dict`, *optional*):
            The CLIP model, image and text towers (default: ViT-B/16, i.e. ``CLIPConfig`` with
            ``vision_config.patch_size=16``; text 512 wide, context 77, vocabulary 49,408).
        input_mode (`str`, defaults to ``"rgb"``): ``"rgb"`` = the paper's setting, CLIP's own token stream
            ``[CLS; RGB patches]`` (depth / IR inputs are accepted and ignored); ``"multimodal"`` = the BIG-MoE
            early-fusion stream ``[CLS; RGB; Depth; IR]`` (order RGB, Depth, IR) with CLIP's position table
            tiled over the modalities plus a learned, zero-initialised modality embedding (ours).
        moe_num_experts (`int`, defaults to 4): experts per Soft MoE (paper).
        moe_num_slots (`int`, *optional*): slots per Soft MoE, a multiple of ``moe_num_experts``. ``None`` scales
            the slots with the token count: ``e * max(1, tokens // e)``, i.e. 4 x 49 = 196 for RGB at 224/16
            (197 tokens) and 4 x 147 = 588 for the multimodal stream (589 tokens). More slots than tokens is
            allowed: each slot then averages the few tokens it sees (dispatch and combine still sum to 1).
        moe_expert_dim (`int`, defaults to 64): bottleneck width of each expert ``d -> r -> d`` (the paper only
            says almost no parameters are added).
        moe_combine (`str`, defaults to ``"linear"``): ``"linear"`` = La-SoftMoE's linear-attention combine;
            ``"softmax"`` = plain Soft MoE.
        moe_combine_norm (`str`, defaults to ``"instance"``): ``"instance"`` normalises each slot's logits across the
            tokens before the combine; ``"none"`` does not (reconstruction).
        moe_phi (`str`, defaults to ``"elu1"``): kernel of the linear combine: ``"elu1"``, ``"relu"`` or
            ``"learnable"`` (reconstruction).
        moe_scale_init (`float`, defaults to 1.0): initial learnable logit scale of the Soft MoE (Soft MoE).
        moe_activation (`str`, defaults to ``"gelu"``): expert non-linearity, ``"gelu"`` or ``"quick_gelu"``.
        moe_dropout (`float`, defaults to 0.0): dropout on the experts' hidden activations.
        moe_zero_init_output (`bool`, defaults to `True`): zero-initialise each expert's output projection, so the
            model starts as the pretrained CLIP.
        moe_layers (`list[int]`, *optional*): image-tower layers that get a Soft MoE; ``None`` = all (paper).
        prompt_templates (`list[str]`, defaults to ``["This is an image of a {} face"]``): prompt templates, each
            with one ``{}`` filled with every class name. Several templates are ensembled as in CLIP's
            zero-shot recipe (mean of the unit text embeddings per class, renormalised). The paper's two
            templates are in ``LASOFTMOE_TEMPLATES`` (``"acer"``: best ACER / ACC, ``"auc"``: best AUC / EER).
        class_names (`list[str]`, defaults to ``["fake", "live"]``): the words of class 0 (spoof) and 1 (live).
        prompt_input_ids (`list[list[list[int]]]`, *optional*): CLIP token ids (start and end tokens, unpadded) of
            every prompt, indexed ``[class][template]``; set by :meth:`tokenize_prompts` or
            ``LaSoftMoeForFaceAntiSpoofing.from_clip``. ``None`` builds the model but forward raises until set.
        train_logit_scale (`bool`, defaults to `True`): train CLIP's logit scale.
        train_text_projection (`bool`, defaults to `False`): train CLIP's text projection (the text tower itself
            stays frozen and its outputs are cached).
        train_vision_tower (`bool`, defaults to `False`): also train the whole image tower and visual projection
            (the paper's lr of 1e-6 may hint at full fine-tuning; not stated).
        logit_scale_max (`float`, defaults to 100.0): ``s = min(exp(logit_scale), logit_scale_max)`` (CLIP's clamp).
        missing_modality_fill (`float`, defaults to 0.0): pixel value of a missing modality (multimodal mode, and
            RGB marked missing by ``modality_mask``).
        decision_threshold (`float`, defaults to 0.5): live-score threshold; training stores the source-validation
            threshold here.
        base_model_name_or_path (`str`, defaults to ``"openai/clip-vit-base-patch16"``): the CLIP checkpoint the
            towers and the prompt ids come from (for model cards; never downloaded at construction).

    Example:

    ```python
    >>> from modeling_bigmoe.configuration_lasoftmoe import LaSoftMoeConfig
    >>> from modeling_bigmoe.hub_configs_lasoftmoe import tiny_config
    >>> config = tiny_config()   # 32 px, CLIP width 32, projection 16, prompt ids of a tiny tokenizer
    >>> config.moe_num_experts, config.resolved_num_slots
    (4, 16)
    ```
    """

    model_type = "la_softmoe"
    sub_configs_defaults = {"clip_config": CLIPConfig}
    keys_to_ignore_at_inference = ["image_embeds", "text_embeds", "hidden_states", "attentions"]

    def __init__(
        self,
        clip_config: CLIPConfig | dict | None = None,
        input_mode: str = "rgb",
        moe_num_experts: int = 4,
        moe_num_slots: int | None = None,
        moe_expert_dim: int = 64,
        moe_combine: str = "linear",
        moe_combine_norm: str = "instance",
        moe_phi: str = "elu1",
        moe_scale_init: float = 1.0,
        moe_activation: str = "gelu",
        moe_dropout: float = 0.0,
        moe_zero_init_output: bool = True,
        moe_layers: list[int] | None = None,
        prompt_templates: list[str] | None = None,
        class_names: list[str] | None = None,
        prompt_input_ids: list[list[list[int]]] | None = None,
        train_logit_scale: bool = True,
        train_text_projection: bool = False,
        train_vision_tower: bool = False,
        logit_scale_max: float = 100.0,
        missing_modality_fill: float = 0.0,
        decision_threshold: float = 0.5,
        base_model_name_or_path: str = "openai/clip-vit-base-patch16",
        **kwargs,
    ):
        self.clip_config = coerce_sub_config("LaSoftMoeConfig.clip_config", clip_config, CLIPConfig,
                                             {"vision_config": {"patch_size": 16}})
        self.input_mode = input_mode
        self.moe_num_experts = moe_num_experts
        self.moe_num_slots = moe_num_slots
        self.moe_expert_dim = moe_expert_dim
        self.moe_combine = moe_combine
        self.moe_combine_norm = moe_combine_norm
        self.moe_phi = moe_phi
        self.moe_scale_init = moe_scale_init
        self.moe_activation = moe_activation
        self.moe_dropout = moe_dropout
        self.moe_zero_init_output = moe_zero_init_output
        self.moe_layers = None if moe_layers is None else list(moe_layers)
        self.prompt_templates = ([LASOFTMOE_TEMPLATES["acer"]] if prompt_templates is None
                                 else list(prompt_templates) if isinstance(prompt_templates, (list, tuple))
                                 else prompt_templates)
        self.class_names = (["fake", "live"] if class_names is None
                            else list(class_names) if isinstance(class_names, (list, tuple)) else class_names)
        self.prompt_input_ids = prompt_input_ids
        self.train_logit_scale = train_logit_scale
        self.train_text_projection = train_text_projection
        self.train_vision_tower = train_vision_tower
        self.logit_scale_max = logit_scale_max
        self.missing_modality_fill = missing_modality_fill
        self.decision_threshold = decision_threshold
        self.base_model_name_or_path = base_model_name_or_path
        self._finish_init(kwargs)

    # ------------------------------------------------------------------ derived values
    @property
    def num_modalities(self) -> int:
        """Modalities in the image token stream: 1 (``"rgb"``) or 3 (``"multimodal"``: RGB, Depth, IR)."""
        return 3 if self.input_mode == "multimodal" else 1

    @property
    def grid_size(self) -> int:
        """Patch grid side ``image_size // patch_size``."""
        return int(self.vision_config.image_size) // int(self.vision_config.patch_size)

    @property
    def num_tokens(self) -> int:
        """Tokens of the image stream: ``1 + num_modalities * grid_size**2``."""
        return 1 + self.num_modalities * self.grid_size ** 2

    @property
    def resolved_num_slots(self) -> int:
        """Slots per Soft MoE: ``moe_num_slots`` or ``e * max(1, num_tokens // e)``."""
        return resolve_num_slots(self.moe_num_experts, num_slots=self.moe_num_slots, num_tokens=self.num_tokens)

    @property
    def resolved_moe_layers(self) -> list[int]:
        """Sorted indices of the image-tower layers with a Soft MoE (``moe_layers`` or every layer)."""
        n = self.vision_config.num_hidden_layers
        return list(range(n)) if self.moe_layers is None else sorted(self.moe_layers)

    @property
    def prompts(self) -> list[list[str]]:
        """The filled prompt sentences, ``[class][template]``."""
        return [[template.format(name) for template in self.prompt_templates] for name in self.class_names]

    @property
    def prompts_tokenized(self) -> bool:
        """Whether ``prompt_input_ids`` is set."""
        return self.prompt_input_ids is not None

    # ------------------------------------------------------------------ prompts
    def tokenize_prompts(self, tokenizer) -> None:
        """Set ``prompt_input_ids`` from the current templates and class names.

        ``tokenizer`` is the CLIP checkpoint's ``CLIPTokenizer`` (start and end tokens added, no truncation).
        A prompt longer than the text tower's context raises ``ValueError`` naming it.
        """
        self._check_prompt_strings()
        ids = []
        for c, sentences in enumerate(self.prompts):
            encoded = tokenizer(sentences, add_special_tokens=True, truncation=False)["input_ids"]
            ids.append([[int(t) for t in seq] for seq in encoded])
            for t, seq in enumerate(ids[-1]):
                if len(seq) > self.text_context_length:
                    raise ValueError(
                        f"LaSoftMoeConfig: prompt [{c}][{t}] ({sentences[t]!r}) is {len(seq)} tokens long, more than "
                        f"the text tower's context of {self.text_context_length} "
                        "(clip_config.text_config.max_position_embeddings)")
        self.prompt_input_ids = ids
        self.validate_architecture()

    def _check_prompt_strings(self) -> None:
        templates = self.prompt_templates
        if not isinstance(templates, list) or not templates:
            raise ValueError(f"LaSoftMoeConfig.prompt_templates must be a non-empty list of strings, got {templates!r}")
        for i, template in enumerate(templates):
            if not isinstance(template, str) or template.count("{}") != 1 or not template.replace("{}", "").strip():
                raise ValueError(f"LaSoftMoeConfig.prompt_templates[{i}] must be a string with exactly one '{{}}' "
                                 f"(where the class name goes), got {template!r}")
            if template.replace("{}", "").count("{") or template.replace("{}", "").count("}"):
                raise ValueError(f"LaSoftMoeConfig.prompt_templates[{i}] has stray braces: {template!r}")
        names = self.class_names
        if (not isinstance(names, list) or len(names) != 2
                or not all(isinstance(n, str) and n.strip() and "{" not in n and "}" not in n for n in names)):
            raise ValueError(f"LaSoftMoeConfig.class_names must be two non-empty words (class 0 spoof, class 1 live), "
                             f"got {names!r}")

    def _check_prompt_ids(self) -> None:
        ids = self.prompt_input_ids
        if ids is None:
            return
        n_classes, n_templates = len(self.class_names), len(self.prompt_templates)
        if (not isinstance(ids, (list, tuple)) or len(ids) != n_classes
                or not all(isinstance(row, (list, tuple)) and len(row) == n_templates for row in ids)):
            shape = ([len(row) if isinstance(row, (list, tuple)) else type(row).__name__ for row in ids]
                     if isinstance(ids, (list, tuple)) else type(ids).__name__)
            raise ValueError(f"LaSoftMoeConfig.prompt_input_ids must be [class][template] = {n_classes} x {n_templates} "
                             f"id lists, got lengths {shape}; call config.tokenize_prompts(tokenizer) after editing "
                             "prompt_templates or class_names")
        for c, row in enumerate(ids):
            for t, seq in enumerate(row):
                check_token_ids(f"LaSoftMoeConfig.prompt_input_ids[{c}][{t}]", seq, self.clip_config.text_config,
                                self.text_context_length, self.prompts[c][t])

    # ------------------------------------------------------------------ validation
    def validate_architecture(self) -> None:
        """Raise ``ValueError`` naming the field for any value the model cannot be built with."""
        vc = self.vision_config
        check_image_grid("LaSoftMoeConfig.clip_config.vision_config", vc)
        check_fields(self, "LaSoftMoeConfig", choices=_CHOICES, positive_ints=_POSITIVE_INTS)
        slots = self.moe_num_slots
        if slots is not None:
            if not is_int(slots) or slots <= 0:
                raise ValueError(f"LaSoftMoeConfig.moe_num_slots must be None or a positive int, got {slots!r}")
            if slots % self.moe_num_experts:
                raise ValueError(f"LaSoftMoeConfig.moe_num_slots ({slots}) must be divisible by moe_num_experts "
                                 f"({self.moe_num_experts})")
        check_fields(self, "LaSoftMoeConfig", bools=_BOOLS, probabilities=_PROBABILITIES,
                     positive_numbers=_POSITIVE_NUMBERS, finite_numbers=("missing_modality_fill",))
        check_layer_indices("LaSoftMoeConfig.moe_layers", self.moe_layers, vc.num_hidden_layers)
        self._check_prompt_strings()
        self._check_prompt_ids()
        check_two_labels("LaSoftMoeConfig", self.id2label)
