"""Remote-code round trip: save with auto_map + code, load with AutoModel(trust_remote_code=True) elsewhere."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sysconfig
import sys
import textwrap

import torch
from safetensors.torch import load_file, save_file

from modeling_bigmoe import BigMoeConfig, BigMoeForFaceAntiSpoofing, register_bigmoe_for_remote_code

CLOSURE = {"configuration_bigmoe.py", "modeling_bigmoe.py", "layers_peer.py", "layers_cdc.py", "adapters.py",
           "clip_utils.py", "modeling_common.py", "configuration_common.py"}


def test_remote_code_roundtrip(tmp_path):
    config = BigMoeConfig(vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 3,
                                         "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
                          moe_num_experts=16, moe_bottleneck_dim=4, moe_key_dim=4, cpb_prompt_dim=8,
                          adapter_init="default")
    model = BigMoeForFaceAntiSpoofing(config).eval()
    save_dir = tmp_path / "ckpt"
    try:
        register_bigmoe_for_remote_code()
        model.save_pretrained(save_dir)
    finally:
        BigMoeConfig._auto_class = None
        BigMoeForFaceAntiSpoofing._auto_class = None
    assert CLOSURE <= set(os.listdir(save_dir))
    auto_map = json.loads((save_dir / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_bigmoe.BigMoeForFaceAntiSpoofing"
    for name in CLOSURE:  # the Hub closure imports siblings relatively, never the package by name
        text = (save_dir / name).read_text()
        assert not re.search(r"^\s*(import|from)\s+modeling_bigmoe\b", text, re.M), name

    g = torch.Generator().manual_seed(0)
    inputs = {k: torch.randn(2, 3, 32, 32, generator=g) for k in ("pixel_values", "depth_pixel_values", "ir_pixel_values")}
    inputs["ir_pixel_values"] = inputs["ir_pixel_values"].contiguous()
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    with torch.no_grad():
        expected = model(**inputs).logits

    script = textwrap.dedent(f"""
        import importlib.util, sys
        sys.path.append({sysconfig.get_paths()["purelib"]!r})  # site-packages without .pth: no editable install
        assert importlib.util.find_spec("modeling_bigmoe") is None, "package importable"
        import torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(save_dir)!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "BigMoeForFaceAntiSpoofing", type(model)
        assert not model.__class__.__module__.startswith("modeling_bigmoe"), model.__class__.__module__
        inputs = load_file({str(tmp_path / "inputs.safetensors")!r})
        with torch.no_grad():
            logits = model(**inputs).logits
        save_file({{"logits": logits.contiguous()}}, {str(tmp_path / "logits.safetensors")!r})
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run([sys.executable, "-I", "-S", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    logits = load_file(str(tmp_path / "logits.safetensors"))["logits"]
    assert torch.equal(logits, expected)
