"""Smoke test of ``benchmarks/bench_model.py`` at tiny size, in-process, so the script cannot rot."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch
from common import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_model.py"


def _load():
    return load_script("benchmarks/bench_model.py", "bench_model")


def test_bench_model_quick_runs_and_reports(capsys):
    bench = _load()
    threads = torch.get_num_threads()
    try:
        result = bench.main(["--quick", "--repeats", "1", "--warmup", "0", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert set(result["median"]) == {case[0] for case in bench.CASES}
    for case, t in result["times"].items():
        assert len(t["wall"]) == 1 and t["wall"][0] > 0
        assert result["median"][case]["wall"] == statistics.median(t["wall"])
    eval_b4 = result["median"]["bigmoe/eval/b4"]["wall"] / result["median"]["clip/eval/b4"]["wall"]
    assert result["ratios"]["bigmoe/clip eval/b4"]["wall"] == pytest.approx(eval_b4)
    # bf16 logits at tiny size: within bf16 rounding of the fp32 ones, and not identical to them
    assert 0.0 < result["logit_diff"]["bf16_max_abs_diff"] < 0.05
    assert 0.0 < result["logit_diff"]["autocast_max_abs_diff"] < 0.05
    la_b1 = result["median"]["lasoftmoe/eval/b1"]["cpu"] / result["median"]["la_clip/eval/b1"]["cpu"]
    assert result["ratios"]["lasoftmoe/la_clip eval/b1"]["cpu"] == pytest.approx(la_b1)
    assert "lasoftmoe/la_clip train/b2" not in result["ratios"]  # no train case in the La-SoftMoE line
    printed = capsys.readouterr().out
    assert "bigmoe/clip train/b2" in printed and "speed-up bf16" in printed
    assert "lasoftmoe/la_clip eval/b4" in printed


def test_bench_model_only_lasoftmoe(capsys):
    bench = _load()
    threads = torch.get_num_threads()
    try:
        result = bench.main(["--quick", "--only", "lasoftmoe", "--repeats", "2", "--warmup", "0", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert set(result["median"]) == {"lasoftmoe/eval/b1", "la_clip/eval/b1", "lasoftmoe/eval/b4", "la_clip/eval/b4"}
    assert set(result["ratios"]) == {"lasoftmoe/la_clip eval/b1", "lasoftmoe/la_clip eval/b4"}
    assert result["logit_diff"] == {}
    # RGB only: the La-SoftMoE cases get no depth / IR tensors
    assert [c for c in bench.select_cases("lasoftmoe")] == [c for c in bench.CASES if c[1] in ("lasoftmoe", "la_clip")]
    with pytest.raises(ValueError, match="only must be"):
        bench.select_cases("mmda")
    out = bench.child_main("la_clip/eval/b4", quick=True)
    assert out["peak_mib"] >= out["rss_built_mib"] > 0


def test_bench_model_lasoftmoe_bare_tower_is_the_same_clip():
    """``la_clip`` is the La-SoftMoE model without its Soft MoEs: with La-SoftMoE's zero-initialised expert outputs
    and the bare model's weights copied in, the logits agree; a non-zero expert output changes them."""
    bench = _load()
    full, bare = bench.build_model("lasoftmoe", quick=True), bench.build_model("la_clip", quick=True)
    n_layers = full.config.vision_config.num_hidden_layers
    assert bare.moe_layer_names == [] and full.moe_layer_names == [f"layers.{i}" for i in range(n_layers)]
    state = {}
    for key, value in bare.state_dict().items():
        for i in range(n_layers):
            key = key.replace(f"vision_model.encoder.layers.{i}.", f"vision_model.encoder.layers.{i}.base_layer.")
        state[key] = value
    missing, unexpected = full.load_state_dict(state, strict=False)
    assert unexpected == [] and missing and all(".moe_adapter." in k for k in missing)
    bench_inputs = bench.make_inputs(full.config, 3, seed=0, names=bench.MODEL_INPUTS["lasoftmoe"])
    assert list(bench_inputs) == ["pixel_values"]
    full.eval(), bare.eval()
    with torch.inference_mode():
        ref = bare(**bench_inputs).logits
        torch.testing.assert_close(full(**bench_inputs).logits, ref, rtol=0, atol=1e-5)
    with torch.no_grad():
        for p in full.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with torch.inference_mode():
        assert (full(**bench_inputs).logits - ref).abs().max() > 1e-3
    reference = bench.build_config("lasoftmoe", quick=False)
    bare_reference = bench.build_config("la_clip", quick=False)
    vc = reference.vision_config
    assert (vc.hidden_size, vc.num_hidden_layers, vc.image_size, vc.patch_size) == (768, 12, 224, 16)
    assert reference.resolved_moe_layers == list(range(12)) and bare_reference.resolved_moe_layers == []
    assert (reference.moe_num_experts, reference.resolved_num_slots) == (4, 196)


def test_bench_model_child_reports_memory():
    bench = _load()
    out = bench.child_main("bigmoe/eval/b1", quick=True)
    assert out["case"] == "bigmoe/eval/b1"
    assert out["peak_mib"] >= out["rss_built_mib"] > 0
    with pytest.raises(ValueError, match="unknown case"):
        bench.child_main("nope", quick=True)


def test_bench_model_configs_are_bigmoe_and_bare_clip():
    bench = _load()
    clip = bench.BigMoeForFaceAntiSpoofing(bench.build_config("clip", quick=True))
    assert clip.bigmoe.prompt_generator is None
    assert clip.bigmoe.adapted_layers == []
    full = bench.build_config("bigmoe", quick=False)
    assert (full.vision_config.hidden_size, full.vision_config.num_hidden_layers, full.grid_size) == (768, 12, 14)
    with pytest.raises(ValueError, match="name must be"):
        bench.build_config("vit", quick=True)
