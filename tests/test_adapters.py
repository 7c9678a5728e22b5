"""Adapter injection, trainable marking and adapter-only files."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from torch import nn

from modeling_bigmoe import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    BigMoeBlockAdapter,
    BigMoeConfig,
    BigMoeForFaceAntiSpoofing,
    bigmoe_adapter_state_dict,
    get_clip_encoder_layers,
    inject_bigmoe_adapters,
    load_bigmoe_adapters,
    save_bigmoe_adapters,
)
from modeling_bigmoe.adapters import plan_bigmoe_adapters

VISION = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 3, "num_attention_heads": 4,
          "image_size": 32, "patch_size": 8}


def _config(**overrides):
    kwargs = dict(vision_config=dict(VISION), moe_num_experts=16, moe_bottleneck_dim=4, moe_key_dim=4,
                  cpb_prompt_dim=8, modality_dropout=0.0)
    kwargs.update(overrides)
    return BigMoeConfig(**kwargs)


def _inputs(b=2):
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(b, 3, 32, 32, generator=g) for k in ("pixel_values", "depth_pixel_values", "ir_pixel_values")}


def test_plan_and_injection_names():
    assert plan_bigmoe_adapters(_config()) == ([0, 1], [0])
    cfg12 = BigMoeConfig()
    assert plan_bigmoe_adapters(cfg12) == (list(range(11)), list(range(10)))
    assert plan_bigmoe_adapters(_config(adapter_layers=[1, 2])) == ([1], [])
    model = BigMoeForFaceAntiSpoofing(_config())
    assert model.bigmoe.adapted_layers == ["layers.0", "layers.1"]
    with pytest.raises(ValueError, match="already holds"):
        inject_bigmoe_adapters(model.bigmoe.vision_tower, model.config)


def test_adapter_keys_independent_of_clip_layout():
    model = BigMoeForFaceAntiSpoofing(_config())
    keys = set(bigmoe_adapter_state_dict(model))
    assert all(k.split(".")[0] in {"blocks", "embeddings", "prompt_generator", "post_layernorm", "classifier"}
               for k in keys)
    assert "blocks.0.moe_adapter.peer.keys" in keys and "blocks.0.cpb.out_conv.weight" in keys
    assert "blocks.2.base_layer.mlp.fc1.weight" in keys and not any(k.startswith("blocks.1.base_layer") for k in keys)

    # the 5.0-5.5 layout: the transformer under `.vision_model`
    class OldLayout(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.vision_model = inner

    old = OldLayout(model.bigmoe.vision_tower)
    assert get_clip_encoder_layers(old) is get_clip_encoder_layers(model.bigmoe.vision_tower)
    model.bigmoe.vision_tower = old  # adapter keys do not change
    assert set(bigmoe_adapter_state_dict(model)) == keys


def test_adapter_tensors_are_the_trainable_ones():
    model = BigMoeForFaceAntiSpoofing(_config())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(t.numel() for t in bigmoe_adapter_state_dict(model).values()) == trainable


def test_adapter_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = BigMoeForFaceAntiSpoofing(_config(adapter_init="default")).train()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(**_inputs(), labels=torch.tensor([0, 1])).loss.backward()
        optimizer.step()
    model.eval()
    paths = save_bigmoe_adapters(model, tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted([ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME])
    assert not (tmp_path / "adapter_config.json").exists() and not (tmp_path / "adapter_model.safetensors").exists()
    meta = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    assert meta["format"] == "bigmoe-adapter" and meta["config"]["model_type"] == "bigmoe"
    with safe_open(paths[1], "pt") as handle:
        assert handle.metadata() == {"format": "pt"}

    other = BigMoeForFaceAntiSpoofing(_config(adapter_init="default"))
    other.load_state_dict(initial)
    other.eval()
    with torch.no_grad():
        trained = model(**_inputs()).logits
        assert not torch.equal(other(**_inputs()).logits, trained)
        load_bigmoe_adapters(other, tmp_path)
        assert torch.equal(other(**_inputs()).logits, trained)


def test_adapter_load_errors(tmp_path):
    model = BigMoeForFaceAntiSpoofing(_config())
    with pytest.raises(FileNotFoundError, match=ADAPTER_CONFIG_NAME):
        load_bigmoe_adapters(model, tmp_path)
    save_bigmoe_adapters(model, tmp_path)
    bigger = BigMoeForFaceAntiSpoofing(_config(cpb_prompt_dim=16))
    with pytest.raises(ValueError, match="shape mismatch"):
        load_bigmoe_adapters(bigger, tmp_path)
    fewer = BigMoeForFaceAntiSpoofing(_config(adapter_layers=[0, 2]))
    with pytest.raises(ValueError, match="unexpected keys"):
        load_bigmoe_adapters(fewer, tmp_path)


def test_no_peft_names_defined():
    for name in ("load_adapter", "add_adapter", "set_adapter", "enable_adapters", "disable_adapters",
                 "active_adapters", "get_adapter_state_dict", "delete_adapter"):
        for cls in (BigMoeForFaceAntiSpoofing, BigMoeBlockAdapter):
            assert name not in cls.__dict__
            assert not any(name in klass.__dict__ for klass in cls.__mro__ if klass.__module__.startswith("modeling_bigmoe"))


def test_save_pretrained_writes_no_peft_files(tmp_path):
    model = BigMoeForFaceAntiSpoofing(_config())
    model.save_pretrained(tmp_path)
    save_bigmoe_adapters(model, tmp_path / "adapters")
    names = {p.name for p in tmp_path.rglob("*")}
    assert "adapter_config.json" not in names and "adapter_model.safetensors" not in names
