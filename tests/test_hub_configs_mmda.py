"""hub_configs/mmda-*/config.json: generated, loadable, documented parameter counts (meta device), token ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPTokenizer

from modeling_bigmoe.configuration_mmda import MmdaConfig
from modeling_bigmoe.hub_configs_mmda import (
    CLIP_TEMPLATE_INPUT_IDS,
    HUB_VARIANTS,
    PARAMETER_COUNTS,
    build_hub_configs,
    render_config,
    write_hub_configs,
    write_tiny_clip_tokenizer,
)
from modeling_bigmoe.mmda_templates import LIVE_TEMPLATES, SPOOF_TEMPLATES
from modeling_bigmoe.modeling_mmda import MmdaForFaceAntiSpoofing

ROOT = Path(__file__).resolve().parent.parent / "hub_configs"


@pytest.fixture(scope="module")
def configs():
    return build_hub_configs()


@pytest.mark.parametrize("name", HUB_VARIANTS)
def test_checked_in_config_matches_generator(name, configs):
    text = (ROOT / name / "config.json").read_text()
    assert text == render_config(configs[name])
    config = MmdaConfig.from_pretrained(ROOT / name)
    assert config.to_dict() == configs[name].to_dict()
    assert len(config.spoof_templates) == 24 and len(config.live_templates) == 23
    assert config.templates_tokenized


@pytest.mark.parametrize("name", HUB_VARIANTS)
def test_parameter_counts_on_meta_device(name):
    config = MmdaConfig.from_pretrained(ROOT / name)
    with torch.device("meta"):
        model = MmdaForFaceAntiSpoofing(config)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (total, trainable) == PARAMETER_COUNTS[name]


def test_reference_count_breakdown(configs):
    """The documented reference-size breakdown (hub_configs_mmda.py docstring), part by part."""
    with torch.device("meta"):
        model = MmdaForFaceAntiSpoofing(configs["mmda-clip-vit-base-patch16"])

    def count(module):
        return sum(p.numel() for p in module.parameters())

    clip = model.clip
    assert count(clip.vision_model) + count(clip.visual_projection) == 85_799_424 + 768 * 512
    assert count(clip.text_model) + count(clip.text_projection) == 63_165_952 + 512 * 512
    moe = 512 * 7 + 4 * (512 + 512 * 2730 + 2730 + 1365 * 512 + 512) + 3 * 512
    assert moe == 8_406_696 == count(model.fusion.moe)
    assert count(model.fusion.attn) == 5 * 512 * 512 + 4 * 512 + 512
    assert count(model.fusion) == count(model.fusion.attn) + 2 * 1024 + moe + (1536 * 512 + 512) == 10_508_968
    level = 2 * 1024 + (4 * 512 * 512 + 4 * 512) + moe
    assert [count(block) for block in (*model.udsa.down, *model.udsa.up)] == [level] * 14
    assert count(model.udsa) == 14 * 9_459_368
    assert count(model.classifier) == 1024 + moe + 512 * 2 + 2 == 8_408_746
    mmda = count(model.fusion) + count(model.udsa) + count(model.classifier)
    assert count(clip) + mmda == PARAMETER_COUNTS["mmda-clip-vit-base-patch16"][0]
    frozen = count(clip.text_model) + count(clip.text_projection)
    assert PARAMETER_COUNTS["mmda-clip-vit-base-patch16"][1] == count(model) - frozen


def test_stored_clip_ids_are_consistent():
    """Without CLIP's tokenizer files: start/end tokens, and shared words map to shared ids."""
    spoof, live = CLIP_TEMPLATE_INPUT_IDS["spoof"], CLIP_TEMPLATE_INPUT_IDS["live"]
    assert (len(spoof), len(live)) == (len(SPOOF_TEMPLATES), len(LIVE_TEMPLATES))
    for ids in (*spoof, *live):
        assert ids[0] == 49406 and ids[-1] == 49407 and all(0 <= t < 49406 for t in ids[1:-1])
    # "... a fake face" / "... a real face" differ in one word; "spoof" is two BPE tokens (spo + of)
    a = spoof[SPOOF_TEMPLATES.index("This is a photo of a fake face")]
    b = live[LIVE_TEMPLATES.index("This is a photo of a real face")]
    assert len(a) == len(b) and [i for i, (x, y) in enumerate(zip(a, b)) if x != y] == [7]
    flip_spoof, flip_live = (spoof[SPOOF_TEMPLATES.index("a photo of a spoof face")],
                             live[LIVE_TEMPLATES.index("a photo of a real face")])
    assert flip_spoof[1:5] == flip_live[1:5] == [320, 1125, 539, 320]  # "a photo of a", as in CLIP's cat example
    assert len(flip_spoof) == len(flip_live) + 1
    assert CLIP_TEMPLATE_INPUT_IDS["live"][LIVE_TEMPLATES.index("This is a real face")] == [
        49406, 589, 533, 320, 1532, 1710, 49407]


# the stored ids are checked against the real CLIP tokenizer in tests/test_clip_tokenizer.py


def test_tiny_tokenizer_round_trip(tmp_path):
    texts = SPOOF_TEMPLATES + LIVE_TEMPLATES
    vocab = write_tiny_clip_tokenizer(tmp_path, texts)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    assert tokenizer.bos_token_id == vocab["<|startoftext|>"] and tokenizer.eos_token_id == vocab["<|endoftext|>"]
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        # CLIP's pre-tokeniser splits digits from letters ("3d" -> "3", "d"): compare without spaces
        assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", "")
    assert tokenizer("a photo of a face")["input_ids"][1:-1] == [vocab["a</w>"], vocab["photo</w>"], vocab["of</w>"],
                                                                 vocab["a</w>"], vocab["face</w>"]]
    with pytest.raises(ValueError, match=r"texts\[1\].*non-ASCII"):
        write_tiny_clip_tokenizer(tmp_path / "bad", ["a face", "a fa\u00e7ade"])


def test_write_hub_configs(tmp_path):
    paths = write_hub_configs(tmp_path)
    assert sorted(Path(p).parent.name for p in paths) == sorted(HUB_VARIANTS)
    for p in paths:
        assert Path(p).read_text() == (ROOT / Path(p).parent.name / "config.json").read_text()
        assert json.loads(Path(p).read_text())["model_type"] == "mmda"
