"""BigMoeConfig: defaults, round trip, validation."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig, CLIPVisionConfig

from modeling_bigmoe import BigMoeConfig

REFERENCE_DEFAULTS = {
    "moe_num_experts": 1600, "moe_heads": 2, "moe_experts_per_head": 2, "moe_product_key_topk": 2, "moe_key_dim": 8,
    "moe_bottleneck_dim": 8, "moe_dropout": 0.0, "adapter_dropout": 0.1, "cpb_prompt_dim": 64, "cdc_theta": 0.7,
    "eca_kernel_size": 3, "cpb_dropout": 0.1, "adapter_layers": None, "block_wiring": "preln",
    "legacy_transpose": False, "position_embedding_init": "tiled", "adapter_init": "zero", "prompt_residual": False,
    "modality_dropout": 0.3, "modality_dropout_fill": 0.0, "modality_dropout_allow_all_missing": True,
    "modality_dropout_seed": None, "trainable_backbone_layers": 1, "expert_init_std": 1.0,
    "initializer_range": 0.02, "decision_threshold": 0.5, "base_model_name_or_path": "openai/clip-vit-base-patch16",
}


def test_defaults():
    config = BigMoeConfig()
    for key, value in REFERENCE_DEFAULTS.items():
        assert getattr(config, key) == value, key
    vc = config.vision_config
    assert isinstance(vc, CLIPVisionConfig)
    assert (vc.hidden_size, vc.num_hidden_layers, vc.image_size, vc.patch_size) == (768, 12, 224, 16)
    assert config.grid_size == 14 and config.gate_dim == 16 and config.num_modalities == 3
    assert config.id2label == {0: "spoof", 1: "live"} and config.label2id == {"spoof": 0, "live": 1}
    assert config.model_type == "bigmoe"
    assert config.keys_to_ignore_at_inference[:3] == ["hidden_states", "attentions", "routing"]
    assert config.resolved_adapter_layers == list(range(12))


def test_roundtrip_and_autoconfig(tmp_path):
    config = BigMoeConfig(adapter_layers=[3, 1], block_wiring="reference", modality_dropout_seed=7,
                          vision_config={"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 4,
                                         "image_size": 64, "patch_size": 16})
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["vision_config"]["hidden_size"] == 64 and data["model_type"] == "bigmoe"
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, BigMoeConfig)
    strip = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert strip(reloaded.to_dict()) == strip(config.to_dict())
    assert reloaded.resolved_adapter_layers == [1, 3] and reloaded.grid_size == 4


@pytest.mark.parametrize("field, value", [
    ("moe_num_experts", 1000), ("moe_num_experts", 0), ("moe_key_dim", 6), ("moe_bottleneck_dim", 0),
    ("adapter_layers", [12]), ("adapter_layers", [1, 1]), ("moe_dropout", -0.5), ("adapter_dropout", 1.01),
    ("cpb_dropout", 3), ("modality_dropout", 2.0), ("cdc_theta", -1), ("decision_threshold", 7),
    ("block_wiring", "post"), ("position_embedding_init", "learned"), ("adapter_init", "xavier"),
    ("trainable_backbone_layers", 13), ("trainable_backbone_layers", -1), ("eca_kernel_size", 2),
    ("modality_dropout_seed", 1.5), ("modality_dropout_fill", float("nan")), ("expert_init_std", 0),
    ("prompt_residual", 1), ("moe_heads", "2"),
])
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        BigMoeConfig(**{field: value})


def test_invalid_vision_geometry_and_from_dict(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        BigMoeConfig(vision_config={"image_size": 100, "patch_size": 16})
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bigmoe", "moe_num_experts": 15}))
    with pytest.raises(ValueError, match="moe_num_experts"):
        BigMoeConfig.from_pretrained(tmp_path)
