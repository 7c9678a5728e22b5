"""Training through Trainer: honest threshold/model selection, results files, resume after a kill, errors."""
import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_bigmoe.metrics import select_threshold
from modeling_bigmoe.protocols import Fold, build_fold
from modeling_bigmoe.runner import model_spec, run_protocol
from modeling_bigmoe.synthetic import load_synthetic_benchmark
from modeling_bigmoe.training import (
    FasMetrics,
    last_complete_checkpoint,
    live_scores,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    cache = tmp_path_factory.mktemp("synthetic-cache")
    return load_synthetic_benchmark(("C", "W", "S"), samples_per_domain=36, size=32, seed=3, cache_dir=cache,
                                    progress=False)


def test_live_scores_and_metrics_callback():
    logits = np.array([[0.0, 0.0], [0.0, np.log(3.0)], [2.0, 0.0]])
    np.testing.assert_allclose(live_scores(logits), [0.5, 0.75, 1 / (1 + np.exp(2.0))])
    with pytest.raises(ValueError, match="logits"):
        live_scores(np.zeros((3, 3)))
    from transformers import EvalPrediction

    labels = np.array([1, 1, 0, 0])
    logits = np.array([[0, 2.0], [0, 1.0], [0, -1.0], [0, 1.5]])
    attack = np.array([0, 0, 1, 2])
    m = FasMetrics(["live", "print", "replay"], threshold=0.6)(EvalPrediction(logits, (labels, attack, attack)))
    # scores: .881 .731 .269 .818; at 0.6 the replay (0.818) is accepted, the print rejected
    assert m["apcer_replay"] == 1.0 and m["apcer_print"] == 0.0 and m["bpcer"] == 0.0
    assert m["threshold"] == 0.6 and "oracle_hter" in m


def test_last_complete_checkpoint_skips_partial(tmp_path):
    assert last_complete_checkpoint(tmp_path / "nothing") is None
    good = tmp_path / "checkpoint-4"
    good.mkdir()
    (good / "model.safetensors").write_bytes(b"x")
    (good / "trainer_state.json").write_text("{}")
    partial = tmp_path / "checkpoint-8"  # killed while saving: no trainer state yet
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"x")
    truncated = tmp_path / "checkpoint-12"
    truncated.mkdir()
    (truncated / "model.safetensors").write_bytes(b"x")
    (truncated / "trainer_state.json").write_text('{"global_step": 1')
    assert last_complete_checkpoint(tmp_path) == str(good)


def test_protocol_run_end_to_end(bench, tmp_path):
    models = [model_spec("bigmoe"), model_spec("baseline")]
    summary = run_protocol(bench, protocol="P1", models=models, output_dir=tmp_path, targets=["W"],
                           training=dict(num_train_epochs=2, per_device_train_batch_size=16,
                                         per_device_eval_batch_size=64, learning_rate=1e-3),
                           progress=False)
    assert {r["model"] for r in summary["runs"]} == {"bigmoe", "baseline"}
    run = next(r for r in summary["runs"] if r["model"] == "bigmoe")
    run_dir = tmp_path / "CS-W" / "bigmoe" / "seed42"
    assert json.loads((run_dir / "results.json").read_text())["fold"] == "CS→W"
    assert (run_dir / "roc_det.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "summary.png").is_file() and "(oracle)" in (tmp_path / "summary.md").read_text()
    card = (run_dir / "model" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card
    # the stored threshold is the EER point of the SOURCE validation split, recomputed here
    from modeling_bigmoe import BigMoeForFaceAntiSpoofing
    from modeling_bigmoe.data import FasCollator
    from modeling_bigmoe.image_processing_bigmoe import BigMoeImageProcessor

    model = BigMoeForFaceAntiSpoofing.from_pretrained(run_dir / "model").eval()
    assert model.config.decision_threshold == pytest.approx(run["threshold_source_val"])
    processor = BigMoeImageProcessor.from_pretrained(run_dir / "model")
    val = build_fold(bench, Fold(("C", "S"), ("W",)))["validation"]
    collator = FasCollator.from_dataset(processor, val, with_video_vocabulary=False)
    batch = collator([val[i] for i in range(len(val))])
    with torch.no_grad():
        out = model(pixel_values=batch["pixel_values"], depth_pixel_values=batch["depth_pixel_values"],
                    ir_pixel_values=batch["ir_pixel_values"], modality_mask=batch["modality_mask"])
    expected = select_threshold(batch["labels"].numpy(), live_scores(out.logits), method="eer")
    assert run["threshold_source_val"] == pytest.approx(expected, abs=1e-6)
    m = run["tests"]["all"]["frame"]
    assert 0.0 <= m["hter"] <= 1.0 and m["oracle_hter"] <= m["hter"] + 1e-9  # the oracle is never worse


def test_mmda_gets_domain_labels_in_training_only(bench, tmp_path):
    spec = model_spec("mmda", overrides={"clip_config": {"vision_config": {"image_size": 16, "patch_size": 8}}})
    assert spec.uses_domain_labels and spec.image_size == 16
    assert not model_spec("mmda", overrides={"use_domain_labels": False}).uses_domain_labels
    assert not model_spec("bigmoe").uses_domain_labels and not model_spec("la_softmoe").uses_domain_labels
    seen = []

    def build(seed):
        model = original_build(seed)
        # the merged clip_config keeps the tiny text tower (and its template ids) and takes the new vision size
        assert model.config.vision_config.image_size == 16 and model.config.clip_config.text_config.vocab_size > 10
        forward = model.forward

        @functools.wraps(forward)  # the Trainer reads the forward's signature
        def spy(**kwargs):
            domains = kwargs.get("domain_labels")
            seen.append((model.training, None if domains is None else domains.tolist()))
            return forward(**kwargs)

        model.forward = spy
        return model

    original_build, spec.build = spec.build, build
    run_protocol(bench, protocol="P1", models=[spec], output_dir=tmp_path, targets=["W"],
                 training=dict(num_train_epochs=1, per_device_train_batch_size=16, per_device_eval_batch_size=64),
                 progress=False)
    train_calls = [d for training, d in seen if training]
    eval_calls = [d for training, d in seen if not training]
    assert train_calls and all(d is not None for d in train_calls)
    assert {v for d in train_calls for v in d} == {0, 1}  # the sources C, S -> 0, 1
    assert eval_calls and all(d is None for d in eval_calls)  # validation and the target test: no domain labels


def test_protocol_bad_input(bench, tmp_path):
    with pytest.raises(ValueError, match="unknown model type"):
        model_spec("resnet")
    with pytest.raises(ValueError, match="not among"):
        run_protocol(bench, models=[model_spec("baseline")], output_dir=tmp_path, targets=["Q"])
    with pytest.raises(ValueError, match="unknown domain"):
        run_protocol(bench, protocol="P3", models=[model_spec("baseline")], output_dir=tmp_path,
                     pairs=[("CW", "PS")])
    with pytest.raises(ValueError, match="moe_num_experts"):
        model_spec("bigmoe", overrides={"moe_num_experts": 15})
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(ValueError, match="not writable"):
        run_protocol(bench, models=[model_spec("baseline")], output_dir=blocked / "run")


def test_cli_errors_are_clear(tmp_path):
    from modeling_bigmoe.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"protocol": "P1", "no_such_field": 1}))
    assert main(["protocol", str(bad)]) == 2
    assert main(["predict", "--model_path", str(tmp_path), "--inputs", str(tmp_path / "missing")]) == 2


KILL_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from transformers import TrainerCallback
    from modeling_bigmoe.synthetic import load_synthetic_benchmark
    from modeling_bigmoe.protocols import Fold, build_fold
    from modeling_bigmoe.runner import model_spec
    from modeling_bigmoe.data import FasCollator
    from modeling_bigmoe.image_processing_bigmoe import BigMoeImageProcessor
    from modeling_bigmoe.training import fas_training_arguments, run_fold

    out, cache, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    bench = load_synthetic_benchmark(("C", "W", "S"), samples_per_domain=36, size=32, seed=3, cache_dir=cache,
                                     progress=False)
    splits = build_fold(bench, Fold(("C", "S"), ("W",)))

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if kill_at and state.global_step >= kill_at:
                os._exit(17)  # a hard kill right after a checkpoint

    spec = model_spec("baseline")
    proc = BigMoeImageProcessor(size=spec.image_size)
    col = FasCollator.from_dataset(proc, splits, with_video_vocabulary=False)
    args = fas_training_arguments(out, num_train_epochs=3, per_device_train_batch_size=16, save_strategy="steps",
                                  save_steps=2, eval_strategy="steps", eval_steps=2, disable_tqdm=True)
    r = run_fold(splits, model_init=lambda: spec.build(0), train_collator=col, eval_collator=col,
                 attack_type_names=col.attack_type_names, training_args=args, fold_name="CS-W",
                 model_name="baseline", callbacks=[Kill()])
    print("FINAL_STEP", r["final_step"])
""")


def test_killed_run_resumes_to_the_same_final_step(bench, tmp_path):
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), str(cache), "2"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 17, first.stderr[-2000:]
    assert last_complete_checkpoint(tmp_path / "run").endswith("checkpoint-2")
    second = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), str(cache), "0"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    # an uninterrupted run ends at epochs x ceil(train rows / batch) steps: so must the resumed one
    n_train = len(build_fold(bench, Fold(("C", "S"), ("W",)))["train"])
    expected = 3 * -(-n_train // 16)
    assert f"FINAL_STEP {expected}" in second.stdout.splitlines()
    assert "resuming" in second.stderr and "checkpoint-2" in second.stderr


def test_demo_model_specs():
    from modeling_bigmoe.cli import DEMO_MODELS, DEMO_TRAINING_OVERRIDES, demo_model_spec

    assert DEMO_MODELS == ("bigmoe", "baseline", "mmda", "la_softmoe")
    specs = {name: demo_model_spec(name) for name in DEMO_MODELS}
    assert specs["bigmoe"].image_size == specs["baseline"].image_size == 64
    assert specs["mmda"].uses_domain_labels and not specs["la_softmoe"].uses_domain_labels
    la = specs["la_softmoe"].build(0)
    assert la.config.input_mode == "multimodal" and la.config.train_vision_tower
    assert all(p.requires_grad for p in la.clip.vision_model.parameters())
    baseline = specs["baseline"].build(0)
    assert baseline.config.adapter_layers == [] and baseline.config.vision_config.hidden_size == 64
    for name in DEMO_MODELS:
        assert specs[name].training_overrides == DEMO_TRAINING_OVERRIDES.get(name, {})
        assert "num_train_epochs" not in demo_model_spec(name, epochs=1).training_overrides  # --epochs wins
    with pytest.raises(ValueError, match="demo model 'resnet' is not one of bigmoe, baseline, mmda, la_softmoe"):
        demo_model_spec("resnet")


def test_demo_in_two_worker_processes_matches_one_process(tmp_path, monkeypatch, capsys):
    from modeling_bigmoe.cli import main

    monkeypatch.setenv("BIGMOE_CACHE", str(tmp_path / "cache"))
    common = ["demo", "--samples-per-domain", "40", "--epochs", "1", "--models", "baseline,la_softmoe",
              "--no-progress"]
    assert main([*common, "--jobs", "1", "--output-dir", str(tmp_path / "one")]) == 0
    assert main([*common, "--jobs", "2", "--output-dir", str(tmp_path / "two")]) == 0
    out = capsys.readouterr().out
    assert "(2 worker processes x 1 thread)" in out and out.count("done ") == 8
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert [(r["fold"], r["model"]) for r in two["rows"]] == [(r["fold"], r["model"]) for r in one["rows"]]
    assert len(one["rows"]) == 8 and {r["model"] for r in one["rows"]} == {"baseline", "la_softmoe"}
    for a, b in zip(one["rows"], two["rows"]):
        assert a["auc"] == pytest.approx(b["auc"], abs=1e-9) and a["hter"] == pytest.approx(b["hter"], abs=1e-9)
    assert two["markdown"] == one["markdown"]
    assert (tmp_path / "two" / "summary.png").is_file()
    assert (tmp_path / "two" / "CSW-P" / "la_softmoe" / "seed42" / "results.json").is_file()
