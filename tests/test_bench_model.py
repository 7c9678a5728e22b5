"""Smoke test of ``benchmarks/bench_model.py`` at tiny size, in-process, so the script cannot rot."""

from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_model.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    printed = capsys.readouterr().out
    assert "bigmoe/clip train/b2" in printed and "speed-up bf16" in printed


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
