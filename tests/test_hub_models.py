"""Push and pull BIG-MoE checkpoints against the local Hub server (modeling_bigmoe.hub, issue 6 items 2, 3, 5)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from hub_fixtures import local_hub_module  # noqa: F401  (pytest fixture)
from huggingface_hub import (
    ModelCard,
    constants,
    create_repo,
    hf_hub_download,
    list_repo_commits,
    list_repo_files,
    upload_file,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, CLIPVisionModel

from modeling_bigmoe import BigMoeConfig, BigMoeForFaceAntiSpoofing, register_bigmoe_for_remote_code
from modeling_bigmoe.adapters import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME
from modeling_bigmoe.hub import (
    BASE_REVISION_KEY,
    VERSION_KEY,
    CheckpointError,
    CheckpointNotFoundError,
    check_bigmoe_version,
    check_safetensors_file,
    enable_hub_push_sync,
    installed_version,
    load_adapter_checkpoint,
    load_checkpoint,
    push_run,
)
from modeling_bigmoe.image_processing_bigmoe import BigMoeImageProcessor
from modeling_bigmoe.testing.local_hub import LFS_THRESHOLD

CLOSURE = {"configuration_bigmoe.py", "modeling_bigmoe.py", "layers_peer.py", "layers_cdc.py", "adapters.py",
           "clip_utils.py"}
VISION = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 3, "num_attention_heads": 4,
          "image_size": 32, "patch_size": 8}
# 250^2 experts: the two IGMAs' expert tables hold 2 * 62500 * 12 * 2 floats = 12 MB, so both the full and the
# adapter-only safetensors exceed the Hub's 10 MiB LFS size threshold.
BIG = {"moe_num_experts": 62500, "moe_bottleneck_dim": 4, "moe_key_dim": 4, "cpb_prompt_dim": 8,
       "adapter_init": "default", "decision_threshold": 0.37}
SMALL = {"moe_num_experts": 16, "moe_bottleneck_dim": 4, "moe_key_dim": 4, "cpb_prompt_dim": 8,
         "adapter_init": "default"}
RESULTS = {"rows": [{"model": "bigmoe-tiny", "fold": "CPW->S", "hter": 0.12345, "auc": 0.875}],
           "datasets": ["mmdg/casia-surf"]}


def _inputs(seed: int = 0, batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(batch, 3, 32, 32, generator=g)
            for k in ("pixel_values", "depth_pixel_values", "ir_pixel_values")}


def _logits(model, **extra) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**_inputs(), **extra).logits


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Move every trainable tensor off its init so that a wrong or missing tensor changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def hub(local_hub_module):  # noqa: F811 (the fixture)
    return local_hub_module


@pytest.fixture(scope="module")
def tiny_clip(hub):
    """A random tiny CLIP vision tower on the Hub as ``user/tiny-clip``; returns its first commit sha."""
    torch.manual_seed(1)
    CLIPVisionModel(CLIPVisionConfig(**VISION)).push_to_hub("tiny-clip")
    return list_repo_commits("user/tiny-clip")[0].commit_id


@pytest.fixture(scope="module")
def run_dir(tiny_clip, tmp_path_factory):
    """A protocol-runner-like fold folder: ``model/`` (weights, config, processor) and ``results.json`` beside it."""
    torch.manual_seed(2)
    model = BigMoeForFaceAntiSpoofing.from_clip("user/tiny-clip", **BIG)
    _perturb(model, 3)
    root = tmp_path_factory.mktemp("run")
    model.save_pretrained(root / "model")
    BigMoeImageProcessor(size=32, normalization="fas127").save_pretrained(root / "model")
    (root / "results.json").write_text(json.dumps(RESULTS))
    return root, _logits(model)


# --------------------------------------------------------------------------- full checkpoints
def test_push_full_and_pull_identical_logits(hub, run_dir):
    root, expected = run_dir
    commit = push_run(root, "bigmoe-full", commit_message="first push")
    assert commit.oid == list_repo_commits("user/bigmoe-full")[0].commit_id
    files = set(list_repo_files("user/bigmoe-full"))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "results.json"} <= files
    assert CLOSURE <= files and not {ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME} & files
    weights = hf_hub_download("user/bigmoe-full", "model.safetensors")
    assert os.path.getsize(weights) > LFS_THRESHOLD
    assert any(m == "PUT" and p.startswith("/lfs-upload/") for m, p in hub.requests)  # went through LFS
    config = json.loads(Path(hf_hub_download("user/bigmoe-full", "config.json")).read_text())
    assert config[VERSION_KEY] == installed_version()
    assert config["auto_map"]["AutoModel"] == "modeling_bigmoe.BigMoeForFaceAntiSpoofing"
    assert config["decision_threshold"] == 0.37
    # registration for the push did not leak into the classes
    assert BigMoeConfig._auto_class is None and BigMoeForFaceAntiSpoofing._auto_class is None

    card = ModelCard.load("user/bigmoe-full")
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    assert card.data.base_model == "user/tiny-clip" and card.data.datasets == ["mmdg/casia-surf"]
    assert {"face-anti-spoofing", "bigmoe"} <= set(card.data.tags) and "hter" in card.data.metrics
    assert "| bigmoe-tiny | CPW->S | 12.35 | 87.50 |" in card.text  # hter 0.12345 -> 12.35 %
    assert BigMoeImageProcessor.from_pretrained("user/bigmoe-full").normalization == "fas127"

    pulled = BigMoeForFaceAntiSpoofing.from_pretrained("user/bigmoe-full")
    assert torch.equal(_logits(pulled), expected)
    checked = load_checkpoint("user/bigmoe-full")
    assert not checked.training and torch.equal(_logits(checked), expected)


def test_existing_trainer_card_is_kept_and_completed(hub, tmp_path):
    model = BigMoeForFaceAntiSpoofing(BigMoeConfig(vision_config=VISION, **SMALL))
    model.save_pretrained(tmp_path)
    (tmp_path / "README.md").write_text("---\nlicense: mit\ntags:\n- mine\n---\n# Trained by the runner\n\nbody\n")
    push_run(tmp_path, "bigmoe-card", datasets=["org/frames"])
    card = ModelCard.load("user/bigmoe-card")
    assert card.data.license == "mit"  # the trainer's value wins
    assert card.data.tags[0] == "mine" and "face-anti-spoofing" in card.data.tags
    assert card.data.datasets == ["org/frames"] and card.data.library_name == "transformers"
    assert card.text.startswith("# Trained by the runner")
    # no processor in the folder: the default one for the model's image size was pushed
    processor = BigMoeImageProcessor.from_pretrained("user/bigmoe-card")
    assert processor.size == {"height": 32, "width": 32} and processor.normalization == "clip"


def test_revision_branch_push_and_pin(hub, tmp_path):
    first = BigMoeForFaceAntiSpoofing(BigMoeConfig(vision_config=VISION, **SMALL))
    first.save_pretrained(tmp_path / "a")
    push_run(tmp_path / "a", "bigmoe-revs")
    second = BigMoeForFaceAntiSpoofing(BigMoeConfig(vision_config=VISION, **SMALL))
    _perturb(second, 5)
    second.save_pretrained(tmp_path / "b")
    push_run(tmp_path / "b", "bigmoe-revs", revision="dev")
    main = BigMoeForFaceAntiSpoofing.from_pretrained("user/bigmoe-revs")
    dev = BigMoeForFaceAntiSpoofing.from_pretrained("user/bigmoe-revs", revision="dev")
    assert torch.equal(_logits(main), _logits(first)) and torch.equal(_logits(dev), _logits(second))
    assert not torch.equal(_logits(main), _logits(dev))
    with pytest.raises(CheckpointNotFoundError, match="revision 'nope' not found"):
        load_checkpoint("user/bigmoe-revs", revision="nope")


_SUBPROCESS = """
import importlib.util, sys
sys.path.append(sys.argv[1])  # site-packages without .pth files: the editable install stays invisible
assert importlib.util.find_spec("modeling_bigmoe") is None, "the package is importable"
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[2], trust_remote_code=True).eval()
assert type(model).__name__ == "BigMoeForFaceAntiSpoofing", type(model)
assert model.__class__.__module__.startswith("transformers_modules"), model.__class__.__module__
with torch.no_grad():
    logits = model(**load_file(sys.argv[3])).logits
save_file({"logits": logits.contiguous()}, sys.argv[4])
"""


def test_remote_code_in_a_process_without_the_package_then_offline(hub, run_dir, tmp_path):
    _, expected = run_dir
    save_file(_inputs(), str(tmp_path / "inputs.safetensors"))
    site = sysconfig.get_paths()["purelib"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HUB_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_CACHE=str(tmp_path / "hf_cache"))
    for step, extra in (("online", {}), ("offline", {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"})):
        out = tmp_path / f"logits-{step}.safetensors"
        result = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _SUBPROCESS, site, "user/bigmoe-full",
             str(tmp_path / "inputs.safetensors"), str(out)],
            check=False, cwd=tmp_path, env={**env, **extra}, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{step}: {result.stderr[-3000:]}"
        assert torch.equal(load_file(str(out))["logits"], expected), step


# --------------------------------------------------------------------------- adapter-only checkpoints
def test_push_adapter_only_and_pull_onto_hub_base(hub, run_dir, tiny_clip):
    root, expected = run_dir
    push_run(root / "model", "bigmoe-adapter", adapter_only=True)
    files = set(list_repo_files("user/bigmoe-adapter"))
    assert {ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, "preprocessor_config.json", "README.md"} <= files
    assert not {"config.json", "model.safetensors"} & files and not any(f.endswith(".py") for f in files)
    meta = json.loads(Path(hf_hub_download("user/bigmoe-adapter", ADAPTER_CONFIG_NAME)).read_text())
    assert meta["base_model_name_or_path"] == "user/tiny-clip" and meta[BASE_REVISION_KEY] == tiny_clip
    assert meta["config"][VERSION_KEY] == installed_version()
    weights = hf_hub_download("user/bigmoe-adapter", ADAPTER_WEIGHTS_NAME)
    assert os.path.getsize(weights) > LFS_THRESHOLD
    sha = os.path.basename(os.path.realpath(weights))  # cache blobs of LFS files are named by their sha256
    assert ("PUT", f"/lfs-upload/{sha}") in hub.requests
    card = ModelCard.load("user/bigmoe-adapter")
    assert card.data.base_model == "user/tiny-clip" and "bigmoe-adapter" in card.data.tags

    model = load_adapter_checkpoint("user/bigmoe-adapter")
    assert model.config.base_model_name_or_path == "user/tiny-clip" and model.config.decision_threshold == 0.37
    assert torch.equal(_logits(model), expected)

    # The base moves on: the recorded commit keeps the adapters on the CLIP they were trained with.
    torch.manual_seed(7)
    CLIPVisionModel(CLIPVisionConfig(**VISION)).push_to_hub("tiny-clip")
    assert list_repo_commits("user/tiny-clip")[0].commit_id != tiny_clip
    assert torch.equal(_logits(load_adapter_checkpoint("user/bigmoe-adapter")), expected)
    moved = load_adapter_checkpoint("user/bigmoe-adapter", base_revision="main")
    assert not torch.allclose(_logits(moved), expected)


def test_offline_reload_from_cache(hub, run_dir, monkeypatch):
    _, expected = run_dir
    n_requests = len(hub.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert torch.equal(_logits(BigMoeForFaceAntiSpoofing.from_pretrained("user/bigmoe-full")), expected)
    assert torch.equal(_logits(load_checkpoint("user/bigmoe-full")), expected)
    assert torch.equal(_logits(load_adapter_checkpoint("user/bigmoe-adapter")), expected)
    assert len(hub.requests) == n_requests  # nothing went to the server
    with pytest.raises(CheckpointNotFoundError, match="not in the local cache"):
        load_checkpoint("user/never-downloaded")


# --------------------------------------------------------------------------- Trainer
def test_trainer_every_save_pushes_two_checkpoints(hub, tmp_path):
    from transformers import Trainer, TrainingArguments

    model = BigMoeForFaceAntiSpoofing(BigMoeConfig(vision_config=VISION, **SMALL, modality_dropout=0.0))
    g = torch.Generator().manual_seed(0)
    data = [{"pixel_values": torch.randn(3, 32, 32, generator=g), "ir_pixel_values": torch.randn(3, 32, 32, generator=g),
             "labels": i % 2} for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), push_to_hub=True, hub_strategy="every_save",
                             hub_model_id="bigmoe-trainer", use_cpu=True, report_to="none", max_steps=4,
                             save_steps=2, save_strategy="steps", per_device_train_batch_size=4, learning_rate=5e-2,
                             disable_tqdm=True, logging_strategy="no")
    try:
        register_bigmoe_for_remote_code()
        trainer = Trainer(model=model, args=args, train_dataset=data)
        enable_hub_push_sync(trainer)
        trainer.train()
    finally:
        BigMoeConfig._auto_class = None
        BigMoeForFaceAntiSpoofing._auto_class = None
    assert all(job.exception() is None for job in trainer.push_in_progress.jobs)
    commits = list_repo_commits("user/bigmoe-trainer")
    assert [c.title for c in commits] == ["Training in progress, step 4", "Training in progress, step 2",
                                          "initial commit"]
    assert {"config.json", "model.safetensors"} | CLOSURE <= set(list_repo_files("user/bigmoe-trainer"))
    final = load_checkpoint("user/bigmoe-trainer")
    step2 = load_checkpoint("user/bigmoe-trainer", revision=commits[1].commit_id)
    trained = trainer.model.state_dict()
    for name, value in final.state_dict().items():
        assert torch.equal(value, trained[name].cpu()), name
    assert not torch.equal(step2.classifier.weight, final.classifier.weight)


# --------------------------------------------------------------------------- errors
def test_missing_repo_revision_and_file(hub, tiny_clip):
    with pytest.raises(CheckpointNotFoundError, match="'user/nope' not found"):
        load_checkpoint("user/nope")
    with pytest.raises(CheckpointNotFoundError, match="'user/nope' not found"):
        load_adapter_checkpoint("user/nope")
    with pytest.raises(CheckpointNotFoundError, match="revision 'v9' not found"):
        load_adapter_checkpoint("user/bigmoe-adapter", revision="v9")
    repo = create_repo("bigmoe-nofile").repo_id
    config = BigMoeConfig(vision_config=VISION, **SMALL)
    upload_file(path_or_fileobj=config.to_json_string().encode(), path_in_repo="config.json", repo_id=repo)
    with pytest.raises(CheckpointNotFoundError, match="has no model.safetensors$"):
        load_checkpoint(repo)
    upload_file(path_or_fileobj=b"\x80\x02pickle", path_in_repo="pytorch_model.bin", repo_id=repo)
    with pytest.raises(CheckpointNotFoundError, match="pytorch_model.bin, a pickle file, which is never loaded"):
        load_checkpoint(repo)

def test_push_run_bad_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        push_run(tmp_path / "missing", "x")
    with pytest.raises(FileNotFoundError, match="holds neither config.json"):
        push_run(tmp_path, "x")


def test_truncated_and_corrupted_safetensors(hub, tmp_path):
    model = BigMoeForFaceAntiSpoofing(BigMoeConfig(vision_config=VISION, **SMALL))
    model.save_pretrained(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    repo = create_repo("bigmoe-truncated").repo_id
    upload_file(path_or_fileobj=str(tmp_path / "config.json"), path_in_repo="config.json", repo_id=repo)
    upload_file(path_or_fileobj=data[: len(data) - 1000], path_in_repo="model.safetensors", repo_id=repo)
    with pytest.raises(CheckpointError, match=r"'user/bigmoe-truncated' model.safetensors: .* truncated or corrupted"):
        load_checkpoint(repo)
    # A complete upload, then a byte flipped in the cached blob: the sha256 (the blob's name) catches it.
    good = create_repo("bigmoe-cached").repo_id
    upload_file(path_or_fileobj=str(tmp_path / "config.json"), path_in_repo="config.json", repo_id=good)
    upload_file(path_or_fileobj=data, path_in_repo="model.safetensors", repo_id=good)
    assert torch.equal(_logits(load_checkpoint(good)), _logits(model))
    blob = os.path.realpath(hf_hub_download(good, "model.safetensors"))
    with open(blob, "r+b") as handle:
        handle.seek(len(data) - 10)
        byte = handle.read(1)
        handle.seek(len(data) - 10)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CheckpointError, match="cached file .* is corrupted"):
        load_checkpoint(good)
    # a local file: header and every tensor are read
    (tmp_path / "bad.safetensors").write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="bad.safetensors .*100 bytes.* truncated or corrupted"):
        check_safetensors_file(tmp_path / "bad.safetensors")
    assert len(check_safetensors_file(tmp_path / "model.safetensors")) == len(model.state_dict())


def test_checkpoint_of_another_type_or_kind(hub, tiny_clip):
    with pytest.raises(CheckpointError, match="model type 'clip_vision_model', not BIG-MoE"):
        load_checkpoint("user/tiny-clip")
    with pytest.raises(CheckpointError, match="model type 'clip_vision_model', not BIG-MoE"):
        load_adapter_checkpoint("user/tiny-clip")
    with pytest.raises(CheckpointError, match="adapter-only BIG-MoE checkpoint"):
        load_checkpoint("user/bigmoe-adapter")
    with pytest.raises(CheckpointError, match="is a full checkpoint"):
        load_adapter_checkpoint("user/bigmoe-full")


def test_newer_config_version_is_refused(tmp_path):
    model = BigMoeForFaceAntiSpoofing(BigMoeConfig(vision_config=VISION, **SMALL))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    major, minor, _ = (int(x) for x in installed_version().split("."))
    for version, ok in ((f"{major}.{minor}.99", True), (f"{major}.{minor + 1}.0", False),
                        (f"{major + 1}.0.0", False), (None, True)):
        config[VERSION_KEY] = version
        (tmp_path / "config.json").write_text(json.dumps(config))
        if ok:
            assert torch.equal(_logits(load_checkpoint(tmp_path)), _logits(model))
        else:
            with pytest.raises(CheckpointError, match=f"modeling_bigmoe {version}, newer than the installed"):
                load_checkpoint(tmp_path)
    check_bigmoe_version("0.9.9", source="x", installed="0.9.0")
    check_bigmoe_version("0.8.0", source="x", installed="0.9.0")
    with pytest.raises(CheckpointError, match="x was written by modeling_bigmoe 1.0.0"):
        check_bigmoe_version("1.0.0", source="x", installed="0.9.3")
    with pytest.raises(CheckpointError, match="'soon' is not a version number"):
        check_bigmoe_version("soon", source="x")


def test_adapters_on_a_different_base_are_refused(tmp_path):
    base = tmp_path / "clip"
    CLIPVisionModel(CLIPVisionConfig(**VISION)).save_pretrained(base)
    model = BigMoeForFaceAntiSpoofing.from_clip(str(base), **SMALL)
    from modeling_bigmoe import save_bigmoe_adapters

    save_bigmoe_adapters(model, tmp_path / "adapters")
    assert torch.equal(_logits(load_adapter_checkpoint(tmp_path / "adapters")), _logits(model))
    with pytest.raises(ValueError, match="needs the base CLIP as a Hub repo id"):
        push_run(tmp_path / "adapters", "bigmoe-local-base", adapter_only=True)
    other = tmp_path / "other"
    CLIPVisionModel(CLIPVisionConfig(**{**VISION, "intermediate_size": 41})).save_pretrained(other)
    meta = json.loads((tmp_path / "adapters" / ADAPTER_CONFIG_NAME).read_text())
    meta["base_model_name_or_path"] = str(other)
    (tmp_path / "adapters" / ADAPTER_CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="intermediate_size: adapters 37 vs base 41"):
        load_adapter_checkpoint(tmp_path / "adapters")


def test_card_from_a_protocol_runner_result():
    from modeling_bigmoe.hub import model_card_for_run
    from modeling_bigmoe.training import model_card

    config = BigMoeConfig(vision_config=VISION, **SMALL, decision_threshold=0.25)
    frame = {"hter": 0.1, "oracle_hter": 0.05, "auc": 0.95, "acer": 0.1, "apcer_max": 0.2, "bpcer": 0.0,
             "tpr_at_fpr_1e-2": 0.5}
    result = {"fold": "C@P->S", "model": "bigmoe-tiny", "threshold_source_val": 0.25, "n_train": 8,
              "n_validation": 4, "n_test": 4, "train_seconds": 1.0, "tests": {"all": {"frame": frame}}}
    row = "| bigmoe-tiny | C@P->S | 10.00 | 5.00 | 95.00 | 10.00 | 20.00 | 0.00 | 50.00 |"
    fresh = model_card_for_run("user/x", config, results=result, datasets=["org/d"])
    assert row in fresh.text and "decision threshold 0.2500" in fresh.text
    assert fresh.data.datasets == ["org/d"] and fresh.data.base_model == "openai/clip-vit-base-patch16"
    kept = model_card_for_run("user/x", config, results=result, datasets=["org/d"], existing=model_card(result, config))
    assert kept.text.count(row) == 1  # the runner's card already has the table: not added twice
    assert kept.data.datasets == ["org/d"] and kept.data.library_name == "transformers"
    with pytest.raises(ValueError, match="results.json: expected a protocol-runner result"):
        model_card_for_run("user/x", config, results={"hter": 0.1})


# --------------------------------------------------------------------------- MMDA and La-SoftMoE
@pytest.mark.parametrize("model_type", ["mmda", "la_softmoe"])
def test_mmda_and_lasoftmoe_push_pull_and_remote_code(hub, tmp_path, model_type):
    from transformers import AutoModel

    from modeling_bigmoe.hub_configs_lasoftmoe import tiny_config as lasoftmoe_tiny
    from modeling_bigmoe.hub_configs_mmda import tiny_config as mmda_tiny
    from modeling_bigmoe.modeling_lasoftmoe import LaSoftMoeForFaceAntiSpoofing
    from modeling_bigmoe.modeling_mmda import MmdaForFaceAntiSpoofing

    model_class, config = {"mmda": (MmdaForFaceAntiSpoofing, mmda_tiny()),
                           "la_softmoe": (LaSoftMoeForFaceAntiSpoofing, lasoftmoe_tiny(input_mode="multimodal"))}[
        model_type]
    config.decision_threshold = 0.41
    torch.manual_seed(5)
    model = model_class(config)
    _perturb(model, 6)
    expected = _logits(model)
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "results.json").write_text(json.dumps(RESULTS))
    repo = f"{model_type}-full"
    push_run(tmp_path, repo)
    files = set(list_repo_files(f"user/{repo}"))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "results.json",
            f"modeling_{model_type.replace('_', '')}.py"} <= files
    assert model_class._auto_class is None and model_class.config_class._auto_class is None  # no leak
    card = ModelCard.load(f"user/{repo}")
    assert model_type.replace("_", "-") in card.data.tags and "bigmoe" not in card.data.tags
    assert {"mmda": "MMDA (multimodal denoising", "la_softmoe": "La-SoftMoE CLIP (arXiv"}[model_type] in card.text
    assert "decision threshold 0.4100" in card.text
    pulled = load_checkpoint(f"user/{repo}")
    assert type(pulled) is model_class and not pulled.training
    assert torch.equal(_logits(pulled), expected)
    # (the code shipped in the repo runs in a process without the package in tests/test_remote_code_*.py)
    auto = AutoModel.from_pretrained(f"user/{repo}", trust_remote_code=True)
    assert torch.equal(_logits(auto), expected)
    # the face-anti-spoofing pipeline pulls it through AutoModelForImageClassification
    import numpy as np
    from PIL import Image
    from transformers import pipeline

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    depth, ir = rgb.convert("L"), rgb.rotate(90).convert("L")
    result = pipeline("face-anti-spoofing", model=f"user/{repo}")(rgb, depth=depth, ir=ir)
    inputs = BigMoeImageProcessor.from_pretrained(f"user/{repo}")(images=[rgb], depth_images=[depth],
                                                                  ir_images=[ir], return_tensors="pt")
    with torch.no_grad():
        live = pulled(**inputs).logits.softmax(-1)[0, 1].item()
    assert result["live_score"] == pytest.approx(live, abs=1e-6) and result["threshold"] == pytest.approx(0.41)
    # adapter-only checkpoints are a BIG-MoE format
    with pytest.raises(ValueError, match=f"adapter-only push needs a BigMoeForFaceAntiSpoofing, got "
                                         f"{model_class.__name__}"):
        push_run(tmp_path, f"{repo}-adapter", adapter_only=True)
    with pytest.raises(CheckpointError, match=f"model type '{model_type}', not BIG-MoE \\('bigmoe'\\);"):
        load_adapter_checkpoint(f"user/{repo}")
