"""Generate the La-SoftMoE Hub ``config.json`` files: ``python -m modeling_bigmoe.hub_configs_lasoftmoe [--root hub_configs]``.

Two variants:

* ``la-softmoe-clip-vit-base-patch16``: the paper's model on CLIP ViT-B/16 (RGB, 4 experts x 49 slots in
  each of the 12 image blocks, expert bottleneck 64, prompt "This is an image of a {} face" with fake /
  live), with the prompt token ids of that checkpoint's ``CLIPTokenizer`` stored in the config
  (:data:`CLIP_PROMPT_INPUT_IDS`; ``--clip-tokenizer DIR`` re-tokenises with a local copy of the tokenizer
  files and fails if the stored ids differ).
* ``la-softmoe-tiny``: 32 px, patch 8 (4 x 4 grid, 17 tokens -> 4 x 4 slots), CLIP width 32 (2 layers per
  tower), projection 16, expert bottleneck 8; its vocabulary is a tiny CLIP BPE written from the prompt
  words. For tests and the demo.

Exact parameter counts with the default freezing (``tests/test_hub_configs_lasoftmoe.py`` checks them on the
meta device):

=================================  ===========  ==========  ===========
variant                            total        trainable   frozen
=================================  ===========  ==========  ===========
la-softmoe-clip-vit-base-patch16   156,185,613  6,564,877   149,620,736
la-softmoe-tiny                    47,799       5,443       42,356
=================================  ===========  ==========  ===========

Reference size, part by part:

==============================  ===========  ======================================================
part                            params       detail
==============================  ===========  ======================================================
CLIP image tower + projection   86,192,640   ViT-B/16 85,799,424 + visual projection 768 x 512 (frozen)
CLIP text tower + projection    63,428,096   63,165,952 + text projection 512 x 512 (frozen)
CLIP logit scale                1            trained
12 Soft MoEs                    6,564,876    547,073 each: slot parameters Phi 768 x 196 = 150,528,
                                             logit scale 1, experts 4 x (768 x 64 + 64 + 64 x 768 + 768)
                                             = 396,544
==============================  ===========  ======================================================

The Soft MoEs add 4.4 % to CLIP (the paper: "almost no parameters"; its expert size is not given, and
``moe_expert_dim`` is the knob: each unit of r costs 4 x (2 x 768 + 1) = 6,148 per layer). The multimodal
extension (``input_mode="multimodal"``, 589 tokens -> 4 x 147 = 588 slots) has 159,800,589 in all and
10,179,853 trainable (Phi 768 x 588 per layer, plus a 3 x 768 modality embedding).
"""

from __future__ import annotations

import os
import tempfile

from .configuration_lasoftmoe import LASOFTMOE_TEMPLATES, LaSoftMoeConfig
from .hub_configs import hub_configs_main, render_config, write_config_files

__all__ = [
    "CLIP_PROMPT_INPUT_IDS",
    "HUB_VARIANTS",
    "PARAMETER_COUNTS",
    "build_hub_configs",
    "clip_vit_base_patch16_config",
    "main",
    "render_config",
    "tiny_config",
    "write_hub_configs",
]

HUB_VARIANTS = ("la-softmoe-clip-vit-base-patch16", "la-softmoe-tiny")

# variant -> (total, trainable) with the default freezing; checked by tests/test_hub_configs_lasoftmoe.py
PARAMETER_COUNTS = {
    "la-softmoe-clip-vit-base-patch16": (156_185_613, 6_564_877),
    "la-softmoe-tiny": (47_799, 5_443),
}

# CLIP ViT-B/16 token ids (CLIPTokenizer of openai/clip-vit-base-patch16) of the paper's prompts, by template
# then class (fake, live): <start> this is an image of a fake/live face <end>, <start> a photo of a ... <end>.
# Checked against CLIP's real tokenizer, rebuilt from its BPE merge list (tests/test_clip_tokenizer.py).
CLIP_PROMPT_INPUT_IDS = {
    LASOFTMOE_TEMPLATES["acer"]: ([49406, 589, 533, 550, 2867, 539, 320, 5777, 1710, 49407],
                                  [49406, 589, 533, 550, 2867, 539, 320, 1064, 1710, 49407]),
    LASOFTMOE_TEMPLATES["auc"]: ([49406, 320, 1125, 539, 320, 5777, 1710, 49407],
                                 [49406, 320, 1125, 539, 320, 1064, 1710, 49407]),
}


def tiny_config(**overrides) -> LaSoftMoeConfig:
    """The tiny variant (tests, demo): CLIP width 32, 2 layers per tower, 32 px, patch 8, projection 16,
    4 experts x derived slots, expert bottleneck 8; the prompt ids come from a tiny BPE of the prompt words.

    ``overrides`` are :class:`LaSoftMoeConfig` fields (``prompt_templates`` / ``class_names`` are tokenised
    too, unless ``prompt_input_ids`` is given).
    """
    from transformers import CLIPTokenizer

    from .hub_configs_mmda import write_tiny_clip_tokenizer

    probe = LaSoftMoeConfig(clip_config={"projection_dim": 16},
                            **{k: overrides[k] for k in ("prompt_templates", "class_names") if k in overrides})
    sentences = [s for row in probe.prompts for s in row]
    # the paper's two templates always go into the vocabulary, so a template switch keeps whole-word tokens
    sentences += [t.format(n) for t in LASOFTMOE_TEMPLATES.values() for n in ("fake", "live")]
    with tempfile.TemporaryDirectory() as tmp:
        vocab = write_tiny_clip_tokenizer(tmp, sentences)
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
             "projection_dim": 16}
    kwargs = {
        "clip_config": {
            "vision_config": {**tower, "image_size": 32, "patch_size": 8},
            "text_config": {**tower, "vocab_size": len(vocab), "max_position_embeddings": 16,
                            "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
                            "pad_token_id": vocab["<|endoftext|>"]},
            "projection_dim": 16,
        },
        "moe_num_experts": 4,
        "moe_expert_dim": 8,
        "base_model_name_or_path": "none (random tiny CLIP, tiny BPE from the prompts)",
    }
    kwargs.update(overrides)
    config = LaSoftMoeConfig(**kwargs)
    if "prompt_input_ids" not in overrides:
        config.tokenize_prompts(tokenizer)
    return config


def clip_vit_base_patch16_config(tokenizer=None, **overrides) -> LaSoftMoeConfig:
    """The paper's variant; ``tokenizer`` (CLIP ViT-B/16's) re-tokenises and must reproduce the stored ids."""
    config = LaSoftMoeConfig(**overrides)
    if all(t in CLIP_PROMPT_INPUT_IDS for t in config.prompt_templates) and config.class_names == ["fake", "live"]:
        config.prompt_input_ids = [[list(CLIP_PROMPT_INPUT_IDS[t][c]) for t in config.prompt_templates]
                                   for c in range(2)]
        config.validate_architecture()
    if tokenizer is not None:
        stored = config.prompt_input_ids
        config.tokenize_prompts(tokenizer)
        if stored is not None and config.prompt_input_ids != stored:
            raise ValueError(f"clip_vit_base_patch16_config: the tokenizer's ids {config.prompt_input_ids} differ "
                             f"from CLIP_PROMPT_INPUT_IDS {stored}")
    return config


def build_hub_configs(tokenizer=None) -> dict[str, LaSoftMoeConfig]:
    """The configs of :data:`HUB_VARIANTS`."""
    return {
        "la-softmoe-clip-vit-base-patch16": clip_vit_base_patch16_config(tokenizer),
        "la-softmoe-tiny": tiny_config(),
    }


def write_hub_configs(root: str | os.PathLike = "hub_configs", tokenizer=None) -> list[str]:
    """Write ``{root}/{variant}/config.json`` for every variant (atomically); returns the paths."""
    return write_config_files(root, build_hub_configs(tokenizer))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    return hub_configs_main(
        __doc__, write_hub_configs, argv,
        tokenizer_help="folder with CLIP ViT-B/16's tokenizer files: check the stored prompt ids")


if __name__ == "__main__":
    raise SystemExit(main())
