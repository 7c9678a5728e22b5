"""hub_configs/la-softmoe-*/config.json: generated, loadable, documented parameter counts (meta device)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modeling_bigmoe.configuration_lasoftmoe import LASOFTMOE_TEMPLATES, LaSoftMoeConfig
from modeling_bigmoe.hub_configs_lasoftmoe import (
    CLIP_PROMPT_INPUT_IDS,
    HUB_VARIANTS,
    PARAMETER_COUNTS,
    build_hub_configs,
    clip_vit_base_patch16_config,
    render_config,
    write_hub_configs,
)
from modeling_bigmoe.modeling_lasoftmoe import LaSoftMoeForFaceAntiSpoofing

ROOT = Path(__file__).resolve().parent.parent / "hub_configs"


@pytest.fixture(scope="module")
def generated():
    return build_hub_configs()


@pytest.mark.parametrize("name", HUB_VARIANTS)
def test_checked_in_config_matches_generator(name, generated):
    text = (ROOT / name / "config.json").read_text()
    assert text == render_config(generated[name])
    config = LaSoftMoeConfig.from_pretrained(ROOT / name)
    assert config.prompt_input_ids == json.loads(text)["prompt_input_ids"]
    assert config.model_type == "la_softmoe"


@pytest.mark.parametrize("name", HUB_VARIANTS)
def test_parameter_counts_on_meta_device(name):
    config = LaSoftMoeConfig.from_pretrained(ROOT / name)
    with torch.device("meta"):
        model = LaSoftMoeForFaceAntiSpoofing(config)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (total, trainable) == PARAMETER_COUNTS[name]


def test_reference_config_and_breakdown(generated):
    """The paper's shape (12 blocks, 4 experts x 49 slots, 197 tokens) and the documented breakdown."""
    config = generated["la-softmoe-clip-vit-base-patch16"]
    assert (config.num_tokens, config.resolved_num_slots, config.moe_num_experts) == (197, 196, 4)
    assert config.prompts == [["This is an image of a fake face"], ["This is an image of a live face"]]
    with torch.device("meta"):
        model = LaSoftMoeForFaceAntiSpoofing(config)
    clip = model.clip
    moe = [n for n, _ in model.named_parameters() if ".moe_adapter." in n]
    assert len({n.split(".moe_adapter.")[0] for n in moe}) == 12
    counts = {
        "vision": sum(p.numel() for n, p in clip.vision_model.named_parameters() if ".moe_adapter." not in n)
        + clip.visual_projection.weight.numel(),
        "text": sum(p.numel() for p in clip.text_model.parameters()) + clip.text_projection.weight.numel(),
        "moe": sum(p.numel() for n, p in model.named_parameters() if ".moe_adapter." in n),
    }
    assert counts == {"vision": 86_192_640, "text": 63_428_096, "moe": 12 * 547_073}
    assert 547_073 == 768 * 196 + 1 + 4 * (768 * 64 + 64 + 64 * 768 + 768)
    multimodal = LaSoftMoeConfig(**{**config.to_dict(), "input_mode": "multimodal"})
    assert (multimodal.num_tokens, multimodal.resolved_num_slots) == (589, 588)
    with torch.device("meta"):
        mm = LaSoftMoeForFaceAntiSpoofing(multimodal)
    assert (sum(p.numel() for p in mm.parameters()),
            sum(p.numel() for p in mm.parameters() if p.requires_grad)) == (159_800_589, 10_179_853)


def test_stored_clip_ids_follow_the_templates():
    both = clip_vit_base_patch16_config(prompt_templates=list(LASOFTMOE_TEMPLATES.values()))
    assert both.prompt_input_ids == [
        [CLIP_PROMPT_INPUT_IDS[LASOFTMOE_TEMPLATES["acer"]][0], CLIP_PROMPT_INPUT_IDS[LASOFTMOE_TEMPLATES["auc"]][0]],
        [CLIP_PROMPT_INPUT_IDS[LASOFTMOE_TEMPLATES["acer"]][1], CLIP_PROMPT_INPUT_IDS[LASOFTMOE_TEMPLATES["auc"]][1]],
    ]
    # "a photo of a" is CLIP's well-known [320, 1125, 539, 320]; the classes differ only in one word
    assert CLIP_PROMPT_INPUT_IDS[LASOFTMOE_TEMPLATES["auc"]][0][1:5] == [320, 1125, 539, 320]
    for fake, live in CLIP_PROMPT_INPUT_IDS.values():
        assert fake[0] == live[0] == 49406 and fake[-1] == live[-1] == 49407
        assert sum(a != b for a, b in zip(fake, live, strict=True)) == 1
    custom = clip_vit_base_patch16_config(prompt_templates=["a {} face"])
    assert custom.prompt_input_ids is None  # unknown template: needs the real tokenizer


def test_write_hub_configs(tmp_path):
    paths = write_hub_configs(tmp_path)
    assert sorted(Path(p).parent.name for p in paths) == sorted(HUB_VARIANTS)
    for p in paths:
        assert Path(p).read_text() == (ROOT / Path(p).parent.name / "config.json").read_text()
