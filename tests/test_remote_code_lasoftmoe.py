"""Remote-code round trip: save with auto_map + code, load with AutoModel(trust_remote_code=True) elsewhere."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file, save_file

from modeling_bigmoe.configuration_lasoftmoe import LaSoftMoeConfig
from modeling_bigmoe.hub_configs_lasoftmoe import tiny_config
from modeling_bigmoe.modeling_lasoftmoe import (
    LaSoftMoeForFaceAntiSpoofing,
    register_lasoftmoe_for_remote_code,
)

CLOSURE = {"configuration_lasoftmoe.py", "modeling_lasoftmoe.py", "layers_softmoe.py", "layers_peer.py",
           "clip_utils.py", "modeling_common.py", "configuration_common.py"}


def test_remote_code_roundtrip(tmp_path):
    config = tiny_config(input_mode="multimodal", moe_zero_init_output=False, moe_phi="learnable")
    model = LaSoftMoeForFaceAntiSpoofing(config).eval()
    save_dir = tmp_path / "ckpt"
    try:
        register_lasoftmoe_for_remote_code()
        model.save_pretrained(save_dir)
    finally:
        LaSoftMoeConfig._auto_class = None
        LaSoftMoeForFaceAntiSpoofing._auto_class = None
    assert CLOSURE <= set(os.listdir(save_dir))
    saved = json.loads((save_dir / "config.json").read_text())
    assert saved["auto_map"]["AutoModel"] == "modeling_lasoftmoe.LaSoftMoeForFaceAntiSpoofing"
    assert saved["auto_map"]["AutoConfig"] == "configuration_lasoftmoe.LaSoftMoeConfig"
    assert saved["prompt_input_ids"] == config.prompt_input_ids  # no tokenizer files needed
    for name in CLOSURE:  # the Hub closure imports siblings relatively, never the package by name
        text = (save_dir / name).read_text()
        assert not re.search(r"^\s*(import|from)\s+modeling_bigmoe\b", text, re.MULTILINE), name

    g = torch.Generator().manual_seed(0)
    inputs = {k: torch.randn(2, 3, 32, 32, generator=g) for k in ("pixel_values", "depth_pixel_values", "ir_pixel_values")}
    inputs["modality_mask"] = torch.tensor([[1, 1, 1], [1, 0, 1]])
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    with torch.no_grad():
        expected = model(**inputs).logits

    script = textwrap.dedent(f"""
        import sys
        sys.modules["modeling_bigmoe"] = None  # the package may be installed (editable): make it unimportable
        import torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(save_dir)!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "LaSoftMoeForFaceAntiSpoofing", type(model)
        assert model.__class__.__module__.startswith("transformers_modules."), model.__class__.__module__
        trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
        assert all(".moe_adapter." in n for n in trainable if n not in
                   ("clip.logit_scale", "embeddings.modality_embedding")), trainable
        inputs = load_file({str(tmp_path / "inputs.safetensors")!r})
        with torch.no_grad():
            logits = model(**inputs).logits
        save_file({{"logits": logits.contiguous()}}, {str(tmp_path / "logits.safetensors")!r})
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run([sys.executable, "-I", "-c", script], check=False, cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    logits = load_file(str(tmp_path / "logits.safetensors"))["logits"]
    assert torch.equal(logits, expected)
