"""Generate the MMDA Hub ``config.json`` files: ``python -m modeling_bigmoe.hub_configs_mmda [--root hub_configs]``.

Two variants:

* ``mmda-clip-vit-base-patch16``: the reference MMDA on CLIP ViT-B/16 (every spec default), with the
  template token ids of that checkpoint's ``CLIPTokenizer`` stored in the config
  (:data:`CLIP_TEMPLATE_INPUT_IDS`; ``--clip-tokenizer DIR`` re-tokenises with a local copy of the
  tokenizer files and fails if the stored ids differ).
* ``mmda-tiny``: 32 px images, patch 8, CLIP width 32 (2 layers each tower), projection 16, U-DSA depth 7,
  MoE 2 GEGLU + 1 constant expert; its vocabulary is a tiny CLIP BPE learnt on the templates by
  :func:`write_tiny_clip_tokenizer` (every template word one token). For tests and the demo.

Exact parameter counts with the default freezing (text tower frozen; ``tests/test_hub_configs_mmda.py``
checks them on the meta device):

===========================  ===========  ===========  ===========
variant                      total        trainable    frozen
===========================  ===========  ===========  ===========
mmda-clip-vit-base-patch16   300,969,603  237,541,507  63,428,096
mmda-tiny                    135,415      108,589      26,826
===========================  ===========  ===========  ===========

Reference size, part by part:

==============================  ===========  ======================================================
part                            params       detail
==============================  ===========  ======================================================
CLIP image tower + projection   86,192,640   ViT-B/16 85,799,424 + visual projection 768 x 512
CLIP text tower + projection    63,428,096   63,165,952 + text projection 512 x 512 (frozen)
CLIP logit scale                1
MD2A fusion block               10,508,968   MD2A 1,313,280 (5 maps 512 x 512, 4 lambda vectors,
                                             RMSNorm), 2 LayerNorms 2,048, MoE 8,406,696,
                                             Linear 1536 -> 512 786,944
U-DSA, 7 down + 7 up levels     132,431,152  14 x 9,459,368: 2 LayerNorms 2,048, MHA 1,050,624,
                                             MoE 8,406,696
classifier                      8,408,746    LayerNorm 1,024 (prenorm), MoE 8,406,696, Linear 512 -> 2
==============================  ===========  ======================================================

One MoE at width 512: router 512 x 7 = 3,584, four GEGLU experts of 2,100,394 (RMSNorm 512, Linear
512 -> 2730, Linear 1365 -> 512) and three constant 512-vectors: 8,406,696. The 16 MoEs (fusion,
14 U-DSA levels, classifier) hold 134.5 M of MMDA's 151.3 M parameters.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable

from .configuration_mmda import MmdaConfig
from .hub_configs import atomic_write_text, hub_configs_main, render_config, write_config_files
from .mmda_templates import default_templates

__all__ = [
    "CLIP_TEMPLATE_INPUT_IDS",
    "HUB_VARIANTS",
    "PARAMETER_COUNTS",
    "build_hub_configs",
    "clip_vit_base_patch16_config",
    "main",
    "render_config",
    "tiny_config",
    "write_hub_configs",
    "write_tiny_clip_tokenizer",
]

HUB_VARIANTS = ("mmda-clip-vit-base-patch16", "mmda-tiny")

# variant -> (total, trainable) with the default freezing; checked by tests/test_hub_configs_mmda.py
PARAMETER_COUNTS = {
    "mmda-clip-vit-base-patch16": (300_969_603, 237_541_507),
    "mmda-tiny": (135_415, 108_589),
}

# CLIP ViT-B/16 token ids of the default templates (CLIPTokenizer of openai/clip-vit-base-patch16)
CLIP_TEMPLATE_INPUT_IDS = {
    "spoof": [
        [49406, 589, 533, 550, 6228, 539, 320, 1261, 539, 1710, 49407],
        [49406, 589, 533, 550, 6228, 539, 550, 3815, 1710, 49407],
        [49406, 589, 533, 783, 320, 1532, 1710, 49407],
        [49406, 589, 533, 829, 320, 1261, 539, 1710, 1606, 789, 49407],
        [49406, 320, 1125, 539, 320, 1261, 539, 1710, 49407],
        [49406, 320, 17851, 620, 8506, 531, 655, 320, 1261, 539, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 1261, 539, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 550, 3815, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 7978, 594, 1219, 42431, 2867, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 5777, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 1710, 515, 3432, 525, 320, 3750, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 1710, 5603, 638, 320, 274, 323, 8306, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 2802, 8306, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 7978, 1125, 539, 320, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 1710, 8506, 525, 320, 1951, 3750, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 44242, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 28105, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 4594, 3815, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 29816, 3987, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 3032, 268, 620, 1125, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 28221, 8306, 1710, 49407],
        [49406, 589, 533, 320, 1261, 539, 1710, 49407],
        [49406, 589, 533, 550, 3815, 1710, 49407],
        [49406, 589, 533, 320, 5777, 1710, 49407],
    ],
    "live": [
        [49406, 589, 533, 550, 6228, 539, 320, 1532, 1710, 49407],
        [49406, 589, 533, 320, 1871, 24074, 654, 1710, 49407],
        [49406, 589, 533, 320, 1532, 1710, 49407],
        [49406, 589, 533, 829, 320, 1532, 1710, 1606, 789, 49407],
        [49406, 320, 1125, 539, 320, 1532, 1710, 49407],
        [49406, 589, 533, 783, 320, 1261, 539, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 1532, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 550, 10369, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 12184, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 1064, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 1871, 24074, 654, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 2815, 2533, 568, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 3288, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 1532, 2751, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 1710, 8020, 9701, 638, 518, 3934, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 1710, 593, 1532, 3575, 49407],
        [49406, 589, 533, 320, 1125, 539, 550, 569, 25201, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 1710, 682, 533, 783, 550, 3815, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 2328, 1710, 49407],
        [49406, 589, 533, 550, 10369, 1710, 49407],
        [49406, 589, 533, 320, 12184, 1710, 49407],
        [49406, 589, 533, 320, 1064, 1710, 49407],
        [49406, 589, 533, 320, 1125, 539, 320, 12184, 1064, 2533, 49407],
    ],
}

_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def write_tiny_clip_tokenizer(directory: str | os.PathLike, texts: Iterable[str]) -> dict[str, int]:
    """Write a tiny CLIP BPE (``vocab.json``, ``merges.txt``) that ``CLIPTokenizer.from_pretrained`` reads.

    A plain BPE (Sennrich et al.) is learnt on the words of ``texts`` as CLIP's own normaliser and
    pre-tokeniser split them, with CLIP's ``</w>`` word suffix: the most frequent adjacent pair is
    merged (ties: the smallest pair) until every word is one token, so the result is deterministic
    and every template word is one token. The vocabulary holds the printable ASCII characters (plain
    and with ``</w>``), the merge results, then the start and end tokens (last, as in CLIP).
    Returns the vocabulary.
    """
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer().backend_tokenizer  # CLIP's normaliser and pre-tokeniser
    words: dict[tuple[str, ...], int] = {}
    for i, text in enumerate(texts):
        bad = sorted({c for c in text if not ("!" <= c <= "~" or c.isspace())})
        if bad:
            raise ValueError(f"write_tiny_clip_tokenizer: texts[{i}] ({text!r}) has non-ASCII characters {bad}")
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)):
            symbols = (*word[:-1], word[-1] + "</w>")
            words[symbols] = words.get(symbols, 0) + 1
    alphabet = [chr(c) for c in range(33, 127)]
    vocab = {token: i for i, token in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: dict[tuple[str, str], int] = {}
        for symbols, freq in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] = pairs.get(pair, 0) + freq
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        merged: dict[tuple[str, ...], int] = {}
        for symbols, freq in words.items():
            out, i = [], 0
            while i < len(symbols):
                if symbols[i:i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + freq
        words = merged
    for token in (_BOS, _EOS):
        vocab.setdefault(token, len(vocab))
    os.makedirs(directory, exist_ok=True)
    directory = os.fspath(directory)
    atomic_write_text(os.path.join(directory, "vocab.json"), json.dumps(vocab, ensure_ascii=True) + "\n")
    atomic_write_text(os.path.join(directory, "merges.txt"),
                      "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return vocab


def tiny_config(**overrides) -> MmdaConfig:
    """The tiny variant (tests, demo): CLIP width 32, 2 layers per tower, 32 px, patch 8, projection 16,
    U-DSA depth 7, MoE 2 GEGLU + 1 constant expert; the template ids come from the tiny tokenizer."""
    from transformers import CLIPTokenizer

    spoof_default, live_default = default_templates()
    spoof = overrides.get("spoof_templates", spoof_default)
    live = overrides.get("live_templates", live_default)
    with tempfile.TemporaryDirectory() as tmp:
        vocab = write_tiny_clip_tokenizer(tmp, [*(spoof or []), *(live or [])])
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
             "projection_dim": 16}
    kwargs = dict(
        clip_config={
            "vision_config": dict(tower, image_size=32, patch_size=8),
            "text_config": dict(tower, vocab_size=len(vocab), max_position_embeddings=32,
                                bos_token_id=vocab[_BOS], eos_token_id=vocab[_EOS], pad_token_id=vocab[_EOS]),
            "projection_dim": 16,
        },
        md2a_heads=2, udsa_heads=2, udsa_depth=7, moe_num_experts=2, moe_num_constant_experts=1,
        base_model_name_or_path="none (random tiny CLIP, tiny BPE from the templates)",
    )
    kwargs.update(overrides)
    config = MmdaConfig(**kwargs)
    if "spoof_template_input_ids" not in overrides:
        config.tokenize_templates(tokenizer)
    return config


def clip_vit_base_patch16_config(tokenizer=None) -> MmdaConfig:
    """The reference variant; ``tokenizer`` (CLIP ViT-B/16's) re-tokenises and must reproduce the stored ids."""
    config = MmdaConfig(spoof_template_input_ids=CLIP_TEMPLATE_INPUT_IDS["spoof"],
                        live_template_input_ids=CLIP_TEMPLATE_INPUT_IDS["live"])
    if tokenizer is not None:
        stored = (config.spoof_template_input_ids, config.live_template_input_ids)
        config.tokenize_templates(tokenizer)
        if (config.spoof_template_input_ids, config.live_template_input_ids) != stored:
            raise ValueError("clip_vit_base_patch16_config: the tokenizer's ids differ from CLIP_TEMPLATE_INPUT_IDS")
    return config


def build_hub_configs(tokenizer=None) -> dict[str, MmdaConfig]:
    """The configs of :data:`HUB_VARIANTS`."""
    return {
        "mmda-clip-vit-base-patch16": clip_vit_base_patch16_config(tokenizer),
        "mmda-tiny": tiny_config(),
    }


def write_hub_configs(root: str | os.PathLike = "hub_configs", tokenizer=None) -> list[str]:
    """Write ``{root}/{variant}/config.json`` for every variant (atomically); returns the paths."""
    return write_config_files(root, build_hub_configs(tokenizer))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    return hub_configs_main(
        __doc__, write_hub_configs, argv,
        tokenizer_help="folder with CLIP ViT-B/16's tokenizer files: check the stored template ids")


if __name__ == "__main__":
    raise SystemExit(main())
