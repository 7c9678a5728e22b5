"""hub_configs/*/config.json: generated, loadable, documented parameter counts (meta device)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modeling_bigmoe import BigMoeConfig, BigMoeForFaceAntiSpoofing
from modeling_bigmoe.hub_configs import HUB_VARIANTS, PARAMETER_COUNTS, build_hub_configs, render_config, write_hub_configs

ROOT = Path(__file__).resolve().parent.parent / "hub_configs"


@pytest.mark.parametrize("name", HUB_VARIANTS)
def test_checked_in_config_matches_generator(name):
    text = (ROOT / name / "config.json").read_text()
    assert text == render_config(build_hub_configs()[name])
    config = BigMoeConfig.from_pretrained(ROOT / name)
    assert config.to_dict()["moe_num_experts"] == json.loads(text)["moe_num_experts"]


@pytest.mark.parametrize("name", HUB_VARIANTS)
def test_parameter_counts_on_meta_device(name):
    config = BigMoeConfig.from_pretrained(ROOT / name)
    with torch.device("meta"):
        model = BigMoeForFaceAntiSpoofing(config)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (total, trainable) == PARAMETER_COUNTS[name]


def test_reference_count_breakdown():
    """The documented reference-size breakdown (hub_configs.py docstring), part by part."""
    with torch.device("meta"):
        model = BigMoeForFaceAntiSpoofing(build_hub_configs()["bigmoe-clip-vit-base-patch16"])
    parts = {}
    for key, module in model.bigmoe_adapter_modules().items():
        kind = key.split(".")[2] if key.startswith("blocks.") else key
        parts[kind] = parts.get(kind, 0) + sum(p.numel() for p in module.parameters())
    assert parts == {"moe_adapter": 11 * 92_416, "cpb": 10 * 119_811, "base_layer": 7_087_872,
                     "embeddings": 768 + 589 * 768 + 3 * 768, "prompt_generator": 1_502_515,
                     "post_layernorm": 1_536, "classifier": 1_538}
    assert sum(parts.values()) == PARAMETER_COUNTS["bigmoe-clip-vit-base-patch16"][1]


def test_write_hub_configs(tmp_path):
    paths = write_hub_configs(tmp_path)
    assert sorted(Path(p).parent.name for p in paths) == sorted(HUB_VARIANTS)
    for p in paths:
        assert Path(p).read_text() == (ROOT / Path(p).parent.name / "config.json").read_text()
