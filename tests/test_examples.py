"""The example scripts (examples/*.py), the accelerate configs and the scale-out claims of docs/scaling.md."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from common import load_script
from hub_fixtures import local_hub  # noqa: F401  (pytest fixture)
from PIL import Image
from safetensors.torch import load_file
from test_data_readers import build_tree

from modeling_bigmoe import BigMoeForFaceAntiSpoofing, BigMoeImageProcessor
from modeling_bigmoe.data import FasCollator, load_mmdg_benchmark
from modeling_bigmoe.hub import load_checkpoint, push_run
from modeling_bigmoe.hub_configs import tiny_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TINY_CONFIG = str(ROOT / "hub_configs" / "bigmoe-tiny")
BIN = os.path.dirname(sys.executable)


def _example(name: str):
    """Import examples/<name>.py as a module (registered in sys.modules: its dataclasses need it)."""
    return load_script(f"examples/{name}.py", f"example_{name}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mmdg_tree(tmp_path):
    root, lists = tmp_path / "data", tmp_path / "lists"
    build_tree(str(root), str(lists))
    return str(root), str(lists)


def _auc_brute_force(labels, scores) -> float:
    """P(score of a live sample > score of a spoof sample), ties count 1/2: every pair compared."""
    live = [s for s, y in zip(scores, labels) if y == 1]
    spoof = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum((a > b) + 0.5 * (a == b) for a in live for b in spoof)
    return wins / (len(live) * len(spoof))


def _score_rows(model, processor, rows) -> np.ndarray:
    collator = FasCollator(processor, attack_type_names=["live", "spoof"])
    batch = collator(rows)
    with torch.no_grad():
        logits = model(pixel_values=batch["pixel_values"], depth_pixel_values=batch["depth_pixel_values"],
                       ir_pixel_values=batch["ir_pixel_values"], modality_mask=batch["modality_mask"]).logits
    return logits.double().softmax(-1)[:, 1].numpy()


# ------------------------------------------------------------------------------------------ train_mmdg.py
def test_train_mmdg_recipe_defaults_and_overrides():
    train_mmdg = _example("train_mmdg")
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser((train_mmdg.MmdgArguments, TrainingArguments))
    parser.set_defaults(**train_mmdg.REFERENCE_RECIPE)
    given = train_mmdg.training_overrides(parser, ["--data_root", "d", "--list_dir", "l"])
    assert given == {**train_mmdg.REFERENCE_RECIPE}  # nothing else: the package's FAS defaults stay in charge
    assert (given["learning_rate"], given["weight_decay"], given["num_train_epochs"]) == (5e-6, 5e-5, 300)
    assert (given["lr_scheduler_type"], given["per_device_train_batch_size"]) == ("constant", 24)
    given = train_mmdg.training_overrides(parser, ["--data_root", "d", "--learning_rate", "1e-4", "--bf16",
                                                  "--activation_checkpointing", "--gradient_accumulation_steps", "3"])
    assert given["learning_rate"] == 1e-4 and given["bf16"] is True and given["activation_checkpointing"] is True
    assert given["gradient_accumulation_steps"] == 3 and given["num_train_epochs"] == 300


def test_train_mmdg_needs_data_and_rejects_seed():
    train_mmdg = _example("train_mmdg")
    with pytest.raises(ValueError, match="--data_root and --list_dir"):
        train_mmdg.main(["--list_dir", "x"])
    with pytest.raises(ValueError, match="--seeds"):
        train_mmdg.main(["--data_root", "x", "--list_dir", "y", "--seed", "7"])


def test_train_mmdg_on_fixture_tree(mmdg_tree, tmp_path, capsys):
    root, lists = mmdg_tree
    out = tmp_path / "run"
    summary = _example("train_mmdg").main([
        "--data_root", root, "--list_dir", lists, "--targets", "W", "--config", TINY_CONFIG,
        "--output_dir", str(out), "--num_train_epochs", "2", "--per_device_train_batch_size", "4",
        "--max_steps", "4", "--learning_rate", "1e-3", "--dataloader_num_workers", "0", "--disable_tqdm", "true",
        "--use_cpu"])
    assert [r["fold"] for r in summary["rows"]] == ["CPS→W"]
    run = out / "CPS-W" / "bigmoe" / "seed42"
    result = json.loads((run / "results.json").read_text())
    # build_tree: one live + one spoof frame per domain and split; sources C, P, S; target W
    assert (result["n_train"], result["n_validation"], result["n_test"]) == (6, 6, 2)
    assert result["final_step"] == 4
    assert "| bigmoe | CPS→W |" in capsys.readouterr().out
    # the recipe's constant learning rate (no scheduler), overridden to 1e-3, at every logged epoch
    state = json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())
    rates = [e["learning_rate"] for e in state["log_history"] if "learning_rate" in e]
    assert rates and all(r == pytest.approx(1e-3) for r in rates)
    # the saved model carries the source-validation threshold, and the test AUC is reproduced pair by pair
    model = BigMoeForFaceAntiSpoofing.from_pretrained(run / "model").eval()
    assert model.config.decision_threshold == pytest.approx(result["threshold_source_val"])
    processor = BigMoeImageProcessor.from_pretrained(run / "model")
    test = load_mmdg_benchmark(root, lists, ["W"], progress=False)["test"]
    rows = [test[i] for i in range(len(test))]
    scores = _score_rows(model, processor, rows)
    labels = [r["label"] for r in rows]
    assert result["tests"]["all"]["frame"]["auc"] == pytest.approx(_auc_brute_force(labels, scores), abs=1e-9)
    hter = 0.5 * (np.mean([s < result["threshold_source_val"] for s, y in zip(scores, labels) if y == 1])
                  + np.mean([s >= result["threshold_source_val"] for s, y in zip(scores, labels) if y == 0]))
    assert result["tests"]["all"]["frame"]["hter"] == pytest.approx(hter)


# ------------------------------------------------------------------------------------------ predict_folder.py
def _png(path: Path, rng, channels: int) -> None:
    arr = rng.integers(0, 256, (40, 40, channels), dtype=np.uint8)
    Image.fromarray(arr[..., 0] if channels == 1 else arr).save(path)


def test_predict_folder_csv_matches_the_model(tmp_path):
    torch.manual_seed(0)
    model = BigMoeForFaceAntiSpoofing(tiny_config(adapter_init="default", modality_dropout=0.0)).eval()
    processor = BigMoeImageProcessor(size=32)
    folder = tmp_path / "captures"
    folder.mkdir()
    rng = np.random.default_rng(0)
    layout = {"a": ("rgb", "depth", "ir"), "b": ("rgb",), "c": ("rgb", "depth"), "d": ("rgb", "ir"),
              "e": ("rgb", "depth", "ir")}
    for name, modalities in layout.items():
        for m in modalities:
            _png(folder / f"{name}_{m}.png", rng, 3 if m == "rgb" else 1)
    (folder / "notes.txt").write_text("not an image")
    # expected scores, one capture at a time, straight from the model
    expected = {}
    with torch.no_grad():
        for name, modalities in layout.items():
            files = {m: [str(folder / f"{name}_{m}.png")] if m in modalities else None for m in ("rgb", "depth", "ir")}
            enc = processor(files["rgb"], depth_images=files["depth"], ir_images=files["ir"], return_tensors="pt")
            expected[name] = float(model(**enc).logits.double().softmax(-1)[0, 1])
    threshold = float(np.median(list(expected.values())))  # some captures on each side
    model.config.decision_threshold = threshold
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")

    out = tmp_path / "out" / "scores.csv"
    _example("predict_folder").main(["--model", str(tmp_path / "model"), "--inputs", str(folder),
                                     "--output", str(out), "--batch_size", "2"])
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["name", "rgb", "depth", "ir", "live_score", "decision", "threshold", "modalities"]
    assert [r["name"] for r in rows] == sorted(layout)
    for r in rows:
        assert float(r["live_score"]) == pytest.approx(expected[r["name"]], abs=2e-6)
        assert r["decision"] == ("live" if float(r["live_score"]) >= threshold else "spoof")
        assert float(r["threshold"]) == pytest.approx(threshold, abs=1e-6)
        assert r["modalities"] == "+".join(layout[r["name"]])
        assert bool(r["depth"]) == ("depth" in layout[r["name"]]) and bool(r["ir"]) == ("ir" in layout[r["name"]])
    assert {r["decision"] for r in rows} == {"live", "spoof"}

    # --threshold overrides the stored one: 0 accepts every capture, 1 rejects all but a score of exactly 1
    _example("predict_folder").main(["--model", str(tmp_path / "model"), "--inputs", str(folder),
                                     "--output", str(out), "--threshold", "0"])
    with open(out, newline="") as handle:
        assert {r["decision"] for r in csv.DictReader(handle)} == {"live"}


def test_predict_folder_bad_input(tmp_path):
    predict_folder = _example("predict_folder")
    (tmp_path / "x_depth.png").parent.mkdir(exist_ok=True)
    _png(tmp_path / "x_depth.png", np.random.default_rng(1), 1)
    with pytest.raises(ValueError, match="without an RGB image"):
        predict_folder.main(["--model", "unused", "--inputs", str(tmp_path)])
    with pytest.raises(ValueError, match="does not exist"):
        predict_folder.main(["--model", "unused", "--inputs", str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="--model and --inputs"):
        predict_folder.main(["--inputs", str(tmp_path)])


# ------------------------------------------------------------------------------------------ finetune_from_hub.py
def test_finetune_from_local_hub_and_push_back(local_hub, mmdg_tree, tmp_path):  # noqa: F811 (fixture)
    root, lists = mmdg_tree
    torch.manual_seed(3)
    model = BigMoeForFaceAntiSpoofing(tiny_config(adapter_init="default"))
    model.save_pretrained(tmp_path / "start")
    BigMoeImageProcessor(size=32, normalization="fas127").save_pretrained(tmp_path / "start")
    push_run(tmp_path / "start", "bigmoe-start")
    start = load_file(tmp_path / "start" / "model.safetensors")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    out = tmp_path / "ft"
    summary = _example("finetune_from_hub").main([
        "--model_id", "user/bigmoe-start", "--dataset", "mmdg", "--data_root", root, "--list_dir", lists,
        "--targets", "W", "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "4",
        "--learning_rate", "1e-2", "--disable_tqdm", "true", "--use_cpu", "--push_to", "user/bigmoe-ft"])
    (run,) = summary["runs"]
    model_dir = Path(run["paths"]["model"])
    assert model_dir == out / "CPS-W" / "finetuned" / "seed42" / "model" and run["final_step"] == 3
    # the checkpoint's own processor (fas127) was used and saved with the fine-tuned model
    assert BigMoeImageProcessor.from_pretrained(model_dir).normalization == "fas127"
    tuned = load_file(model_dir / "model.safetensors")
    assert set(tuned) == set(start)
    changed = {k for k in start if not torch.equal(start[k], tuned[k])}
    assert changed and changed <= trainable  # frozen CLIP weights bit-identical, trained ones moved
    # the pushed repository holds exactly the fine-tuned weights and the source-validation threshold
    pulled = load_checkpoint("user/bigmoe-ft")
    assert pulled.config.decision_threshold == pytest.approx(run["threshold_source_val"])
    assert all(torch.equal(p, tuned[n]) for n, p in pulled.state_dict().items() if n in tuned)


def test_finetune_missing_checkpoint(local_hub, tmp_path):  # noqa: F811 (fixture)
    from modeling_bigmoe.hub import CheckpointNotFoundError

    with pytest.raises(CheckpointNotFoundError, match="user/nope"):
        _example("finetune_from_hub").main(["--model_id", "user/nope", "--output_dir", str(tmp_path)])


# ------------------------------------------------------------------------------------------ scale-out
def test_accelerate_configs_parse_and_name_real_classes():
    from accelerate.commands.config.config_args import ClusterConfig
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer  # noqa: F401  (exists)

    from modeling_bigmoe import adapters

    folder = EXAMPLES / "accelerate"
    ddp = ClusterConfig.from_yaml_file(folder / "ddp_multi_gpu.yaml")
    assert (ddp.distributed_type.value, ddp.mixed_precision) == ("MULTI_GPU", "bf16")
    fsdp = ClusterConfig.from_yaml_file(folder / "fsdp.yaml")
    wrap = fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")
    assert wrap == ["BigMoeBlockAdapter"] and hasattr(adapters, wrap[0])  # never CLIPEncoderLayer (see test below)
    assert fsdp.fsdp_config["fsdp_version"] == 2 and fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    ds = ClusterConfig.from_yaml_file(folder / "deepspeed_zero2.yaml")
    ds_json = json.loads((ROOT / ds.deepspeed_config["deepspeed_config_file"]).read_text())
    assert ds_json["zero_optimization"]["stage"] == 2 and ds_json["bf16"]["enabled"] == "auto"
    for path in folder.glob("*.yaml"):
        assert yaml.safe_load(path.read_text())["compute_environment"] == "LOCAL_MACHINE"


def test_every_trainable_parameter_is_used_under_modality_dropout():
    """The basis of --ddp_find_unused_parameters false: whatever modality dropout draws (none, some, all
    three dropped), every trainable parameter is in the autograd graph, and no frozen one gets a gradient."""
    g = torch.Generator().manual_seed(0)
    inputs = {k: torch.randn(4, 3, 32, 32, generator=g) for k in ("pixel_values", "depth_pixel_values",
                                                                  "ir_pixel_values")}
    for p_drop in (0.0, 0.3, 1.0):
        torch.manual_seed(1)
        model = BigMoeForFaceAntiSpoofing(tiny_config(modality_dropout=p_drop, modality_dropout_seed=5)).train()
        out = model(**inputs, labels=torch.tensor([0, 1, 0, 1]))
        out.loss.backward()
        if p_drop == 1.0:
            assert out.modality_code.tolist() == [7, 7, 7, 7]  # every modality dropped
        if p_drop == 0.0:
            assert out.modality_code.tolist() == [0, 0, 0, 0]
        unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        frozen_with_grad = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
        assert unused == [] and frozen_with_grad == []


FSDP_SCRIPT = r'''
import os, sys, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers.models.clip.modeling_clip import CLIPEncoderLayer
from modeling_bigmoe import BigMoeForFaceAntiSpoofing
from modeling_bigmoe.adapters import BigMoeBlockAdapter
from modeling_bigmoe.hub_configs import tiny_config
dist.init_process_group("gloo")
report = open(f"{sys.argv[1]}/rank{dist.get_rank()}.txt", "w")
g = torch.Generator().manual_seed(1)
x = {k: torch.randn(2, 3, 32, 32, generator=g) for k in ("pixel_values", "depth_pixel_values", "ir_pixel_values")}
for name, classes in (("adapter", (BigMoeBlockAdapter,)), ("adapter+clip", (BigMoeBlockAdapter, CLIPEncoderLayer))):
    torch.manual_seed(0)
    model = BigMoeForFaceAntiSpoofing(tiny_config(adapter_init="default", modality_dropout=0.0))
    for module in reversed(list(model.modules())):  # children first, as accelerate wraps
        if isinstance(module, classes):
            fully_shard(module)
    fully_shard(model)
    try:
        loss = model(**x, labels=torch.tensor([0, 1])).loss
        loss.backward()
        report.write(f"{name} rank {dist.get_rank()} ok {float(loss):.8f}\n")
    except Exception as exc:
        report.write(f"{name} rank {dist.get_rank()} fail {type(exc).__name__}\n")
report.close()
# the failing configuration leaves gloo's threads in a broken state, and tearing the group down then aborts the
# process now and then ("terminate called without an active exception"): leave without the teardown
os._exit(0)
'''


@pytest.mark.skipif(shutil.which("torchrun", path=BIN) is None, reason="torchrun is installed with torch")
def test_fsdp2_wrap_rule_adapter_blocks_only(tmp_path):
    """fsdp.yaml wraps BigMoeBlockAdapter only: wrapping CLIPEncoderLayer too breaks the forward (its shards are
    never gathered, since the model calls the block's sub-modules itself). 2 CPU processes, gloo."""
    script = tmp_path / "fsdp_check.py"
    script.write_text(FSDP_SCRIPT)
    cmd = [shutil.which("torchrun", path=BIN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), str(tmp_path)]
    result = subprocess.run(cmd, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = (tmp_path / "rank0.txt").read_text() + (tmp_path / "rank1.txt").read_text()
    lines = re.findall(r"^(\S+) rank (\d) (ok|fail) (\S+)$", report, flags=re.MULTILINE)
    good = [loss for name, _, status, loss in lines if name == "adapter" and status == "ok"]
    torch.manual_seed(0)
    reference = BigMoeForFaceAntiSpoofing(tiny_config(adapter_init="default", modality_dropout=0.0))
    g = torch.Generator().manual_seed(1)
    x = {k: torch.randn(2, 3, 32, 32, generator=g) for k in ("pixel_values", "depth_pixel_values",
                                                             "ir_pixel_values")}
    with torch.no_grad():
        expected = float(reference(**x, labels=torch.tensor([0, 1])).loss)
    assert len(good) == 2 and all(float(v) == pytest.approx(expected, abs=1e-5) for v in good), report
    assert sorted(status for name, _, status, _ in lines if name == "adapter+clip") == ["fail", "fail"]


@pytest.mark.skipif(shutil.which("accelerate", path=BIN) is None, reason="accelerate is a dependency")
def test_accelerate_launch_two_cpu_processes_without_unused_parameter_search(tmp_path):
    """`accelerate launch --config_file <2-process config> -m modeling_bigmoe.cli train`, BIG-MoE (modality
    dropout on), DDP over gloo with find_unused_parameters=False: both replicas end identical."""
    config = tmp_path / "two_cpu.yaml"
    # MULTI_GPU + the script's --use_cpu: accelerate's torchrun launcher with gloo (use_cpu: true in the config
    # would pick accelerate's single-process launcher, which needs mpirun for several CPU processes)
    config.write_text(yaml.safe_dump({
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU", "num_machines": 1,
        "machine_rank": 0, "num_processes": 2, "main_process_ip": "127.0.0.1", "main_process_port": _free_port(),
        "mixed_precision": "no", "use_cpu": False, "rdzv_backend": "static", "same_network": True, "debug": False}))
    out = tmp_path / "run"
    cmd = [shutil.which("accelerate", path=BIN), "launch", "--config_file", str(config), "-m", "modeling_bigmoe.cli",
           "train", "--model", "bigmoe", "--samples_per_domain", "24", "--synthetic_size", "32", "--domains",
           "C,S,W", "--sources", "C,S", "--targets", "W", "--output_dir", str(out), "--max_steps", "6",
           "--use_cpu", "--ddp_backend", "gloo", "--ddp_find_unused_parameters", "false",
           "--per_device_train_batch_size", "4", "--eval_strategy", "steps", "--eval_steps", "3",
           "--save_strategy", "steps", "--save_steps", "6", "--report_to", "none", "--disable_tqdm", "true"]
    env = {**os.environ, "BIGMOE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    lines = re.findall(r"rank (\d): final step (\d+) weights checksum (\S+)", result.stdout)
    assert sorted(rank for rank, _, _ in lines) == ["0", "1"], result.stdout[-2000:]
    assert {step for _, step, _ in lines} == {"6"}
    assert len({checksum for _, _, checksum in lines}) == 1
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-6"]
    assert (out / "model" / "model.safetensors").is_file() and (out / "results.json").is_file()
