"""MMDA remote-code round trip: save with auto_map + code, load with AutoModel(trust_remote_code=True) in a
fresh interpreter where this package is not importable; peft is imported only for a LoRA model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file, save_file

from modeling_bigmoe.configuration_mmda import MmdaConfig
from modeling_bigmoe.hub_configs_mmda import tiny_config
from modeling_bigmoe.modeling_mmda import MmdaForFaceAntiSpoofing, register_mmda_for_remote_code

CLOSURE = {"configuration_mmda.py", "modeling_mmda.py", "layers_mmda.py", "layers_attention.py", "layers_stmoe.py",
           "mmda_templates.py", "clip_utils.py", "modeling_common.py", "configuration_common.py"}


def _save(model, path):
    try:
        register_mmda_for_remote_code()
        model.save_pretrained(path)
    finally:
        MmdaConfig._auto_class = None
        MmdaForFaceAntiSpoofing._auto_class = None


def test_remote_code_roundtrip(tmp_path):
    plain = MmdaForFaceAntiSpoofing(tiny_config()).eval()
    lora = MmdaForFaceAntiSpoofing(tiny_config(vision_lora_rank=2)).eval()
    with torch.no_grad():  # a LoRA update that is not a no-op
        for name, p in lora.named_parameters():
            if ".lora_B." in name:
                p.normal_()
    _save(plain, tmp_path / "plain")
    _save(lora, tmp_path / "lora")
    files = set(os.listdir(tmp_path / "plain"))
    assert CLOSURE <= files and "adapter_config.json" not in files
    assert not {"modeling_bigmoe.py", "adapters.py", "training.py", "hub_configs_mmda.py"} & files
    auto_map = json.loads((tmp_path / "plain" / "config.json").read_text())["auto_map"]
    assert auto_map == {"AutoConfig": "configuration_mmda.MmdaConfig",
                        "AutoModel": "modeling_mmda.MmdaForFaceAntiSpoofing"}
    for name in CLOSURE:  # siblings are imported relatively, never the package by name; peft only under a guard
        text = (tmp_path / "plain" / name).read_text()
        assert not re.search(r"^\s*(import|from)\s+modeling_bigmoe\b", text, re.MULTILINE), name
        assert not re.search(r"^(import|from)\s+peft\b", text, re.MULTILINE), name

    g = torch.Generator().manual_seed(0)
    inputs = {k: torch.randn(2, 3, 32, 32, generator=g) for k in ("pixel_values", "depth_pixel_values",
                                                                   "ir_pixel_values")}
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    with torch.no_grad():
        expected = {"plain": plain(**inputs).logits, "lora": lora(**inputs).logits}

    script = textwrap.dedent(f"""
        import sys
        import torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoModel
        inputs = load_file({str(tmp_path / "inputs.safetensors")!r})
        out = {{}}
        model = AutoModel.from_pretrained({str(tmp_path / "plain")!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "MmdaForFaceAntiSpoofing", type(model)
        assert not model.__class__.__module__.startswith("modeling_bigmoe"), model.__class__.__module__
        # the copied code runs on its own: our package (possibly installed here) is never imported
        assert "modeling_bigmoe" not in sys.modules, "the remote code imported modeling_bigmoe"
        assert "peft" not in sys.modules, "peft imported for a model without LoRA"
        with torch.no_grad():
            out["plain"] = model(**inputs).logits
        model = AutoModel.from_pretrained({str(tmp_path / "lora")!r}, trust_remote_code=True).eval()
        assert any(".lora_A." in n for n, _ in model.named_parameters())
        with torch.no_grad():
            out["lora"] = model(**inputs).logits
        save_file({{k: v.contiguous() for k, v in out.items()}}, {str(tmp_path / "logits.safetensors")!r})
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    logits = load_file(str(tmp_path / "logits.safetensors"))
    for key, value in expected.items():  # another process: summation order may differ in the last bit
        torch.testing.assert_close(logits[key], value, rtol=1e-5, atol=1e-6, msg=key)
