"""Push the package's checkpoints (BIG-MoE, MMDA, La-SoftMoE CLIP) to the Hugging Face Hub and pull them back,
with clear errors.

Two kinds of repository (adapter-only exists for BIG-MoE; MMDA and La-SoftMoE push full checkpoints):

* **full**: ``config.json`` (with ``auto_map`` and ``bigmoe_version``), ``model.safetensors``, the model
  code for ``trust_remote_code`` (the Hub closure), ``preprocessor_config.json``, ``README.md`` (model
  card with YAML metadata) and, for protocol-runner models, ``results.json``. Load it with
  ``BigMoeForFaceAntiSpoofing.from_pretrained(repo, revision=...)``, with
  ``AutoModel.from_pretrained(repo, trust_remote_code=True)`` where the package is not installed, or with
  :func:`load_checkpoint` (the same, plus the checks below).
* **adapter-only**: ``bigmoe_adapter_config.json`` (the full config, the base CLIP repo id *and the
  base commit it was trained on*) and ``bigmoe_adapter.safetensors`` (adapters, embeddings, head, trained
  backbone blocks), plus the processor and card. :func:`load_adapter_checkpoint` fetches the base CLIP
  from the Hub (or the cache, also with ``HF_HUB_OFFLINE=1``) and loads the adapters onto it.

Errors (:func:`load_checkpoint`, :func:`load_adapter_checkpoint`): a missing repository, revision or
file raises :class:`CheckpointNotFoundError` (a ``FileNotFoundError``) naming it; a truncated or
corrupted safetensors file, a checkpoint of another model type or kind, or a checkpoint written by a
newer ``modeling_bigmoe`` raises :class:`CheckpointError` (a ``ValueError``). Weights are read from
safetensors only; ``pytorch_model.bin`` (pickle) is refused.

Version policy: every push records the installed package version in the config (``bigmoe_version``).
Loading a checkpoint whose major.minor version is newer than the installed one is an **error**: a newer
release may have added config fields that this version would silently ignore, giving a different
model. Upgrade the package, or load with ``trust_remote_code=True`` to use the code shipped with the
checkpoint. Patch-level differences and older checkpoints load normally.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import (
    ModelCard,
    ModelCardData,
    create_branch,
    create_repo,
    hf_hub_download,
    upload_folder,
)
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from packaging.version import InvalidVersion, Version
from safetensors import safe_open
from transformers import TrainerCallback

from .adapters import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, load_bigmoe_adapters, save_bigmoe_adapters
from .configuration_bigmoe import BigMoeConfig
from .image_processing_bigmoe import BigMoeImageProcessor
from .modeling_bigmoe import BigMoeForFaceAntiSpoofing, BigMoeModel, BigMoePreTrainedModel
from .modeling_lasoftmoe import LaSoftMoeForFaceAntiSpoofing
from .modeling_mmda import MmdaForFaceAntiSpoofing

__all__ = [
    "BASE_REVISION_KEY",
    "MODEL_TYPES",
    "RESULTS_NAME",
    "VERSION_KEY",
    "CheckpointError",
    "CheckpointNotFoundError",
    "HubPushSyncCallback",
    "check_bigmoe_version",
    "check_safetensors_file",
    "enable_hub_push_sync",
    "installed_version",
    "load_adapter_checkpoint",
    "load_checkpoint",
    "model_card_for_run",
    "push_run",
]

logger = logging.getLogger(__name__)

VERSION_KEY = "bigmoe_version"
BASE_REVISION_KEY = "base_model_revision"
RESULTS_NAME = "results.json"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PROCESSOR_NAME = "preprocessor_config.json"
CARD_NAME = "README.md"
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_CLASSIFIERS = (BigMoeForFaceAntiSpoofing, MmdaForFaceAntiSpoofing, LaSoftMoeForFaceAntiSpoofing)
_ARCHITECTURES = {cls.__name__: cls for cls in (*_CLASSIFIERS, BigMoeModel)}
# model_type -> the class a checkpoint without ``architectures`` loads as
_DEFAULT_ARCHITECTURE = {cls.config_class.model_type: cls.__name__ for cls in _CLASSIFIERS}
# model_type -> display name, for the checkpoints this module pushes and pulls
MODEL_TYPES = {"bigmoe": "BIG-MoE", "mmda": "MMDA", "la_softmoe": "La-SoftMoE CLIP"}
_SHA256_HEX = frozenset("0123456789abcdef")


class CheckpointNotFoundError(FileNotFoundError):
    """A repository, revision or file of a checkpoint does not exist (or is not in the offline cache)."""


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be used: corrupted, of another model type or kind, or too new."""


# --------------------------------------------------------------------------- versions
def installed_version() -> str:
    """The installed ``modeling_bigmoe`` version (``modeling_bigmoe.__version__``)."""
    from . import __version__

    return __version__


def _parse_version(value: Any, source: str) -> Version:
    try:
        return Version(str(value))
    except InvalidVersion as err:
        raise CheckpointError(f"{source}: {VERSION_KEY} {value!r} is not a version number") from err


def check_bigmoe_version(saved: str | None, *, source: str, installed: str | None = None) -> None:
    """Raise :class:`CheckpointError` if ``saved`` (the checkpoint's ``bigmoe_version``) has a newer
    major.minor than ``installed`` (default: the installed package). ``None`` (a checkpoint saved without
    a version, e.g. by ``save_pretrained`` alone) passes. ``source`` names the file in the message."""
    if saved is None:
        return
    installed = installed_version() if installed is None else installed
    have, want = _parse_version(installed, "installed modeling_bigmoe"), _parse_version(saved, source)
    if (want.major, want.minor) > (have.major, have.minor):
        raise CheckpointError(
            f"{source} was written by modeling_bigmoe {saved}, newer than the installed {installed}: it may use "
            "config fields this version would silently ignore. Upgrade (pip install -U modeling_bigmoe) or load "
            "it with AutoModel.from_pretrained(..., trust_remote_code=True) to use the code shipped with it.")


# --------------------------------------------------------------------------- file checks
def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_safetensors_file(path: str | os.PathLike, *, source: str | None = None) -> list[str]:
    """Check that ``path`` is a complete, readable safetensors file; returns its tensor names.

    Reads the header and every tensor (no pickle). A file in the Hugging Face cache whose blob is named
    by its sha256 (LFS files) is also hashed and compared, which catches corruption after download.
    Raises :class:`CheckpointNotFoundError` if it does not exist and :class:`CheckpointError` (naming
    ``source`` or the path) if it is truncated or corrupted.
    """
    path = os.fspath(path)
    name = source or path
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"{name}: safetensors file {path} not found")
    blob = os.path.realpath(path)
    blob_name = os.path.basename(blob)
    if len(blob_name) == 64 and set(blob_name) <= _SHA256_HEX:
        actual = _sha256(blob)
        if actual != blob_name:
            raise CheckpointError(
                f"{name}: the cached file {blob} is corrupted (sha256 {actual}, expected {blob_name}); "
                "delete it from the cache and download it again (force_download=True)")
    try:
        with safe_open(path, framework="pt") as handle:
            keys = list(handle.keys())
            for key in keys:
                handle.get_tensor(key)
    except Exception as err:  # safetensors raises its own SafetensorError (no public base class)
        raise CheckpointError(
            f"{name}: {os.path.basename(path)} ({os.path.getsize(path)} bytes) is truncated or corrupted: {err}; "
            "push or download it again") from err
    return keys


# --------------------------------------------------------------------------- resolving files
def _describe(repo: str, revision: str | None) -> str:
    return f"{repo!r}" + (f" at revision {revision!r}" if revision else "")


def _fetch(repo_or_dir: str, filename: str, *, revision: str | None, token: str | bool | None = None,
           what: str = "checkpoint", required: bool = True) -> str | None:
    """Local path of ``filename`` in a folder or a Hub repository (downloaded or from the cache).

    Missing repository / revision / file -> :class:`CheckpointNotFoundError` naming it (``None`` for a
    missing file when not ``required``).
    """
    if os.path.isdir(repo_or_dir):
        path = os.path.join(repo_or_dir, filename)
        if os.path.isfile(path):
            return path
        if not required:
            return None
        raise CheckpointNotFoundError(f"{what} folder {repo_or_dir} has no {filename}")
    where = _describe(repo_or_dir, revision)
    try:
        return hf_hub_download(repo_or_dir, filename, revision=revision, token=token)
    except RevisionNotFoundError as err:
        raise CheckpointNotFoundError(f"{what} {repo_or_dir!r}: revision {revision!r} not found "
                                      "(no such branch, tag or commit)") from err
    except RepositoryNotFoundError as err:
        raise CheckpointNotFoundError(
            f"{what} {repo_or_dir!r} not found on {hf_constants.ENDPOINT} (nor a local folder); check the name, "
            "or log in if it is private") from err
    except LocalEntryNotFoundError as err:
        raise CheckpointNotFoundError(
            f"{what} {where}: {filename} is not in the local cache and the Hub cannot be reached "
            f"(HF_HUB_OFFLINE={int(bool(hf_constants.HF_HUB_OFFLINE))}); download it once while online") from err
    except EntryNotFoundError as err:
        if not required:
            return None
        raise CheckpointNotFoundError(f"{what} {where} has no file {filename}") from err
    except HFValidationError as err:
        raise CheckpointNotFoundError(f"{what} {repo_or_dir!r} is neither a local folder nor a valid Hub repo "
                                      f"id: {err}") from err


def _read_json(path: str, source: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{source}: cannot read JSON ({err})") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(data).__name__}")
    return data


def _check_model_type(config: dict, source: str, allowed: Sequence[str] = tuple(MODEL_TYPES)) -> str:
    model_type = config.get("model_type")
    if model_type not in allowed:
        names = ", ".join(f"{MODEL_TYPES[t]} ({t!r})" for t in allowed)
        raise CheckpointError(
            f"{source} is a checkpoint of model type {model_type!r}, not {names}; "
            "load it with its own class (e.g. transformers.AutoModel)")
    return model_type


# --------------------------------------------------------------------------- pulling
def load_checkpoint(repo_or_dir: str | os.PathLike, *, revision: str | None = None,
                    token: str | bool | None = None, **from_pretrained_kwargs) -> BigMoePreTrainedModel:
    """Load a full checkpoint (Hub repo id or folder) after checking it; returns the model in eval mode.

    The class comes from ``config.architectures`` (:class:`BigMoeForFaceAntiSpoofing`, :class:`BigMoeModel`,
    :class:`MmdaForFaceAntiSpoofing` or :class:`LaSoftMoeForFaceAntiSpoofing`; by default the classifier of the
    config's ``model_type``). Before ``from_pretrained`` runs, checks that ``config.json`` is one of
    the package's model types (:data:`MODEL_TYPES`), that the
    checkpoint is not newer than the installed package (see the module doc), and that every safetensors file
    is complete (and, in the cache, matches its sha256). Raises :class:`CheckpointNotFoundError` or
    :class:`CheckpointError` naming the repository, revision and file.
    """
    repo_or_dir = os.fspath(repo_or_dir)
    where = _describe(repo_or_dir, revision)
    config_path = _fetch(repo_or_dir, CONFIG_NAME, revision=revision, token=token, required=False)
    if config_path is None:
        if _fetch(repo_or_dir, ADAPTER_CONFIG_NAME, revision=revision, token=token, required=False):
            raise CheckpointError(f"{where} is an adapter-only BIG-MoE checkpoint (it has {ADAPTER_CONFIG_NAME}, "
                                  "no config.json); load it with load_adapter_checkpoint()")
        raise CheckpointNotFoundError(f"checkpoint {where} has no {CONFIG_NAME}")
    config = _read_json(config_path, f"{where} {CONFIG_NAME}")
    model_type = _check_model_type(config, where)
    check_bigmoe_version(config.get(VERSION_KEY), source=f"{where} {CONFIG_NAME}")
    architectures = config.get("architectures") or [_DEFAULT_ARCHITECTURE[model_type]]
    model_class = _ARCHITECTURES.get(architectures[0])
    if model_class is None or model_class.config_class.model_type != model_type:
        raise CheckpointError(f"{where} {CONFIG_NAME}: architectures {architectures} is not one of "
                              f"{sorted(n for n, c in _ARCHITECTURES.items() if c.config_class.model_type == model_type)}"
                              f" (model type {model_type!r})")
    weights = _fetch(repo_or_dir, WEIGHTS_NAME, revision=revision, token=token, required=False)
    if weights is not None:
        shards = [weights]
    else:
        index = _fetch(repo_or_dir, WEIGHTS_INDEX_NAME, revision=revision, token=token, required=False)
        if index is None:
            pickled = [n for n in PICKLE_WEIGHTS
                       if _fetch(repo_or_dir, n, revision=revision, token=token, required=False)]
            hint = (f"; it only has {pickled[0]}, a pickle file, which is never loaded (convert it to "
                    "safetensors)") if pickled else ""
            raise CheckpointNotFoundError(f"checkpoint {where} has no {WEIGHTS_NAME}{hint}")
        names = sorted(set(_read_json(index, f"{where} {WEIGHTS_INDEX_NAME}").get("weight_map", {}).values()))
        shards = [_fetch(repo_or_dir, n, revision=revision, token=token) for n in names]
    for shard in shards:
        check_safetensors_file(shard, source=f"{where} {os.path.basename(shard)}")
    from_pretrained_kwargs.setdefault("use_safetensors", True)
    model = model_class.from_pretrained(repo_or_dir, revision=revision, token=token, **from_pretrained_kwargs)
    return model.eval()


_VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                  "patch_size", "num_channels")


def load_adapter_checkpoint(repo_or_dir: str | os.PathLike, *, revision: str | None = None,
                            base_revision: str | None = None,
                            token: str | bool | None = None) -> BigMoeForFaceAntiSpoofing:
    """Rebuild a :class:`BigMoeForFaceAntiSpoofing` from an adapter-only checkpoint; returns it in eval mode.

    Reads ``bigmoe_adapter_config.json`` (from a folder or a Hub repo at ``revision``), fetches the base CLIP
    it names from the Hub or the cache (at ``base_revision``, default the commit recorded at push time) and
    builds the model with :meth:`BigMoeForFaceAntiSpoofing.from_clip` and the saved BIG-MoE fields, then loads
    the adapter tensors. Works with ``HF_HUB_OFFLINE=1`` once both repositories are cached.

    Raises :class:`CheckpointNotFoundError` (repository, revision or file missing, also for the base) and
    :class:`CheckpointError` (corrupted file, another model type, a full checkpoint, a too-new version, or a
    base whose architecture differs from the one the adapters were trained on).
    """
    repo_or_dir = os.fspath(repo_or_dir)
    where = _describe(repo_or_dir, revision)
    meta_path = _fetch(repo_or_dir, ADAPTER_CONFIG_NAME, revision=revision, token=token, what="adapter checkpoint",
                       required=False)
    if meta_path is None:
        config_path = _fetch(repo_or_dir, CONFIG_NAME, revision=revision, token=token, required=False)
        if config_path is not None:
            _check_model_type(_read_json(config_path, f"{where} {CONFIG_NAME}"), where, allowed=("bigmoe",))
            raise CheckpointError(f"{where} is a full checkpoint (config.json, no {ADAPTER_CONFIG_NAME}); load it "
                                  "with load_checkpoint() or BigMoeForFaceAntiSpoofing.from_pretrained()")
        raise CheckpointNotFoundError(f"adapter checkpoint {where} has no {ADAPTER_CONFIG_NAME}")
    source = f"{where} {ADAPTER_CONFIG_NAME}"
    meta = _read_json(meta_path, source)
    if meta.get("format") != "bigmoe-adapter":
        raise CheckpointError(f"{source}: format {meta.get('format')!r}, expected 'bigmoe-adapter'")
    saved_config = meta.get("config")
    if not isinstance(saved_config, dict):
        raise CheckpointError(f"{source}: field 'config' is missing or not an object")
    _check_model_type(saved_config, where, allowed=("bigmoe",))
    check_bigmoe_version(saved_config.get(VERSION_KEY), source=source)
    weights_path = _fetch(repo_or_dir, ADAPTER_WEIGHTS_NAME, revision=revision, token=token,
                          what="adapter checkpoint")
    check_safetensors_file(weights_path, source=f"{where} {ADAPTER_WEIGHTS_NAME}")

    base = meta.get("base_model_name_or_path") or saved_config.get("base_model_name_or_path")
    if not base:
        raise CheckpointError(f"{source}: field 'base_model_name_or_path' is missing")
    base_rev = base_revision if base_revision is not None else meta.get(BASE_REVISION_KEY)
    base_dir = _base_snapshot(base, base_rev, token=token, source=source)
    base_config = _read_json(os.path.join(base_dir, CONFIG_NAME), f"base {_describe(base, base_rev)} {CONFIG_NAME}")
    base_vision = base_config.get("vision_config", base_config)
    saved_vision = saved_config.get("vision_config") or {}
    diffs = [f"{k}: adapters {saved_vision.get(k)} vs base {base_vision.get(k)}" for k in _VISION_FIELDS
             if k in saved_vision and k in base_vision and saved_vision[k] != base_vision[k]]
    if diffs:
        raise CheckpointError(f"{source}: base {_describe(base, base_rev)} is not the CLIP the adapters were trained "
                              f"on ({'; '.join(diffs)})")
    accepted = set(inspect.signature(BigMoeConfig.__init__).parameters) - {
        "self", "kwargs", "vision_config", "base_model_name_or_path"}
    overrides = {k: v for k, v in saved_config.items() if k in accepted}
    for key in ("id2label", "label2id"):
        if saved_config.get(key) is not None:
            overrides[key] = saved_config[key]
    model = BigMoeForFaceAntiSpoofing.from_clip(base_dir, **overrides)
    model.config.base_model_name_or_path = base
    setattr(model.config, BASE_REVISION_KEY, base_rev)
    setattr(model.config, VERSION_KEY, saved_config.get(VERSION_KEY))
    load_bigmoe_adapters(model, os.path.dirname(meta_path))
    return model.eval()


def _base_snapshot(base: str, revision: str | None, *, token, source: str) -> str:
    """Folder holding the base CLIP's config and safetensors weights (local folder, or Hub snapshot)."""
    if os.path.isdir(base):
        return base
    config_path = _fetch(base, CONFIG_NAME, revision=revision, token=token, what=f"base model (named in {source})")
    folder = os.path.dirname(config_path)
    weights = _fetch(base, WEIGHTS_NAME, revision=revision, token=token, what=f"base model (named in {source})",
                     required=False)
    if weights is None:
        raise CheckpointNotFoundError(f"base model {_describe(base, revision)} (named in {source}) has no "
                                      f"{WEIGHTS_NAME}; pickle weights are never loaded")
    check_safetensors_file(weights, source=f"base model {_describe(base, revision)} {WEIGHTS_NAME}")
    return folder


# --------------------------------------------------------------------------- model card
def _results_table(results: dict, source: str) -> str:
    from .metrics import format_results_table

    if isinstance(results.get("markdown"), str):
        return results["markdown"].strip()
    if isinstance(results.get("rows"), list) and results["rows"]:
        return format_results_table(results["rows"])
    if isinstance(results.get("tests"), dict) and results["tests"]:
        from .training import summary_row

        return format_results_table([summary_row(results, s) for s in results["tests"]])
    raise ValueError(f"{source}: expected a protocol-runner result ('tests'), a summary ('rows') or 'markdown'; "
                     f"got keys {sorted(results)}")


def _card_metadata(config, *, adapter_only: bool, base_model: str | None, datasets: Sequence[str] | None,
                   has_results: bool) -> dict[str, Any]:
    tags = ["face-anti-spoofing", "presentation-attack-detection", "multimodal",
            getattr(config, "model_type", "bigmoe").replace("_", "-")]
    if adapter_only:
        tags.append("bigmoe-adapter")
    meta: dict[str, Any] = {
        "license": "apache-2.0",
        "library_name": "transformers",
        "pipeline_tag": "image-classification",
        "tags": tags,
        "base_model": base_model or getattr(config, "base_model_name_or_path", None),
        "metrics": ["hter", "auc", "acer", "apcer", "bpcer"] if has_results else ["hter", "auc"],
    }
    if datasets:
        meta["datasets"] = list(datasets)
    return meta


def _describe_model(config) -> str:
    """One sentence on the architecture, for the model card."""
    vc = config.vision_config
    tower = (f"{vc.num_hidden_layers} layers, hidden {vc.hidden_size}, {vc.image_size} px, patch {vc.patch_size}")
    model_type = getattr(config, "model_type", "bigmoe")
    if model_type == "mmda":
        return (f"MMDA (multimodal denoising and alignment, arXiv 2505.09484) face anti-spoofing on CLIP image and "
                f"text towers (image tower: {tower}): MD2A differential attention fusion, U-shaped dual-space "
                f"adaptation (depth {config.udsa_depth}) and alignment to {len(config.spoof_template_input_ids)} spoof "
                f"/ {len(config.live_template_input_ids)} live text templates.")
    if model_type == "la_softmoe":
        return (f"La-SoftMoE CLIP (arXiv 2408.12793) face anti-spoofing: Soft MoE ({config.moe_num_experts} experts, "
                f"{config.moe_combine} combine) in the blocks of a CLIP image tower ({tower}), classification "
                f"against CLIP text prompts; input mode {config.input_mode!r}.")
    return ("BIG-MoE (Bypass Isolated Gating MoE, arXiv 2412.18065) multimodal face anti-spoofing on a CLIP vision "
            f"tower ({tower}; {config.moe_num_experts} experts).")


def model_card_for_run(repo_id: str, config, *, adapter_only: bool = False, base_model: str | None = None,
                       base_revision: str | None = None, datasets: Sequence[str] | None = None,
                       results: dict | None = None, existing: str | None = None) -> ModelCard:
    """The model card pushed with a checkpoint: ``existing`` (a trainer-written README text) with any missing
    metadata filled in, or a new card; includes the results table when ``results`` (results.json) is given."""
    meta = _card_metadata(config, adapter_only=adapter_only, base_model=base_model, datasets=datasets,
                          has_results=results is not None)
    table = _results_table(results, RESULTS_NAME) if results is not None else None
    if existing is not None:
        card = ModelCard(existing)
        for key, value in meta.items():
            current = getattr(card.data, key, None)
            if key == "tags":
                card.data.tags = list(dict.fromkeys([*(current or []), *value]))
            elif current in (None, [], "") and value:
                setattr(card.data, key, value)
        if table is not None and table not in card.text:
            card.text = card.text.rstrip() + "\n\n## Results\n\n" + table + "\n"
        return card
    threshold = float(getattr(config, "decision_threshold", 0.5))
    lines = [
        f"# {repo_id}",
        "",
        (f"{_describe_model(config)} Inputs: RGB with optional Depth and IR. Output: spoof/live logits; live "
         f"score = softmax[:, 1]; decision threshold {threshold:.4f} (`config.decision_threshold`)."),
        "",
        "## Usage",
        "",
    ]
    if adapter_only:
        lines += [
            (f"Adapter-only checkpoint: the frozen CLIP weights come from `{meta['base_model']}`"
             + (f" at commit `{base_revision}`" if base_revision else "") + "."),
            "",
            "```python",
            "from modeling_bigmoe.hub import load_adapter_checkpoint",
            f'model = load_adapter_checkpoint("{repo_id}")',
            "```",
        ]
    else:
        lines += [
            "```python",
            "from transformers import pipeline",
            "import modeling_bigmoe  # registers the 'face-anti-spoofing' pipeline",
            f'fas = pipeline("face-anti-spoofing", model="{repo_id}")',
            'fas("rgb.png", depth="depth.png", ir="ir.png")  # {"live_score": ..., "label": ..., ...}',
            "```",
            "",
            "Without the package: `AutoModel.from_pretrained(repo, trust_remote_code=True)` (pin `revision`).",
        ]
    if table is not None:
        lines += ["", "## Results", "", table]
    if not datasets:
        lines += ["", "Training data: not recorded."]
    body = "\n".join(lines) + "\n"
    return ModelCard(f"---\n{ModelCardData(**meta).to_yaml()}\n---\n\n{body}")


# --------------------------------------------------------------------------- pushing
def _run_model_dir(run_dir: Path) -> tuple[Path, bool]:
    """``(folder, is_adapter_folder)`` for a RUN_DIR: a saved model, an adapter folder, or a runner output."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"push_run: run_dir {run_dir} is not a folder")
    if (run_dir / CONFIG_NAME).is_file():
        return run_dir, False
    if (run_dir / ADAPTER_CONFIG_NAME).is_file():
        return run_dir, True
    if (run_dir / "model" / CONFIG_NAME).is_file():
        return run_dir / "model", False
    raise FileNotFoundError(f"push_run: {run_dir} holds neither {CONFIG_NAME} (a saved model), {ADAPTER_CONFIG_NAME} "
                            f"(adapters) nor model/{CONFIG_NAME} (a protocol-runner output)")


def _resolve_base_revision(base: str, token) -> str | None:
    """The current commit of the base CLIP repository, to pin it (``None`` if it cannot be resolved)."""
    from huggingface_hub import HfApi

    try:
        return HfApi(endpoint=hf_constants.ENDPOINT).model_info(base, token=token).sha
    except (OSError, ValueError) as err:  # offline, private, or not on the Hub: the card says the revision is unknown
        logger.warning("push_run: cannot resolve the commit of base model %r (%s); the adapter checkpoint will "
                       "follow its default branch", base, err)
        return None


class _AutoClassRegistration:
    """Register the config and model classes for auto classes for one save, then restore the old state."""

    def __init__(self, model_class: type):
        self.model_class = model_class

    def __enter__(self):
        config_class = self.model_class.config_class
        self.saved = (config_class._auto_class, self.model_class._auto_class)
        config_class.register_for_auto_class()
        self.model_class.register_for_auto_class("AutoModel")
        return self

    def __exit__(self, *exc):
        self.model_class.config_class._auto_class, self.model_class._auto_class = self.saved
        return False


def push_run(run_dir: str | os.PathLike, repo_id: str, *, adapter_only: bool = False, private: bool = False,
             revision: str | None = None, commit_message: str | None = None, base_model: str | None = None,
             base_revision: str | None = None, datasets: Sequence[str] | None = None,
             token: str | bool | None = None) -> str:
    """Push a saved model folder (BIG-MoE, MMDA or La-SoftMoE) to the Hub; returns the commit URL (a
    ``CommitInfo``, ``.oid`` = sha). Adapter-only pushes are for BIG-MoE.

    ``run_dir``: a ``save_pretrained`` folder (``config.json`` + ``model.safetensors``, optionally
    ``preprocessor_config.json``, a trainer-written ``README.md`` and ``results.json`` inside or next to it),
    a protocol-runner fold folder holding ``model/``, or a :func:`save_bigmoe_adapters` folder.

    Full push: weights (safetensors), ``config.json`` with ``auto_map`` and ``bigmoe_version``, the code for
    ``trust_remote_code``, the processor (a default one for the model's image size if the folder has none),
    the model card (YAML metadata: license, library_name, tags, base_model, datasets, metrics; the results table
    when ``results.json`` exists) and ``results.json``. ``adapter_only=True`` pushes
    ``bigmoe_adapter_config.json`` + ``bigmoe_adapter.safetensors`` instead of the weights and code, recording
    the base CLIP (``base_model``, default ``config.base_model_name_or_path``) and its commit (``base_revision``,
    default: resolved on the Hub now). Files of the other kind left in the repository are deleted in the same
    commit. ``revision``: target branch (created from main if missing). ``private`` applies when the repository
    is created.
    """
    run_dir = Path(os.fspath(run_dir))
    model_dir, is_adapter_dir = _run_model_dir(run_dir)
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise ValueError(f"push_run: repo_id must be a non-empty string, got {repo_id!r}")
    adapter_only = adapter_only or is_adapter_dir
    if is_adapter_dir:
        meta = _read_json(str(model_dir / ADAPTER_CONFIG_NAME), str(model_dir / ADAPTER_CONFIG_NAME))
        model = load_adapter_checkpoint(str(model_dir), base_revision=base_revision or meta.get(BASE_REVISION_KEY),
                                        token=token)
        base_revision = base_revision or meta.get(BASE_REVISION_KEY)
    else:
        config = _read_json(str(model_dir / CONFIG_NAME), str(model_dir / CONFIG_NAME))
        _check_model_type(config, str(model_dir))
        model = load_checkpoint(str(model_dir))
    config = model.config
    setattr(config, VERSION_KEY, installed_version())

    results_path = next((p for p in (model_dir / RESULTS_NAME, model_dir.parent / RESULTS_NAME) if p.is_file()), None)
    results = _read_json(str(results_path), str(results_path)) if results_path is not None else None
    if datasets is None and results is not None and isinstance(results.get("datasets"), list):
        datasets = [str(d) for d in results["datasets"]]
    existing_card = (model_dir / CARD_NAME).read_text(encoding="utf-8") if (model_dir / CARD_NAME).is_file() else None

    with tempfile.TemporaryDirectory(prefix="bigmoe-push-") as stage_name:
        stage = Path(stage_name)
        if adapter_only:
            if not isinstance(model, BigMoeForFaceAntiSpoofing):
                raise ValueError(f"push_run: adapter-only push needs a BigMoeForFaceAntiSpoofing, got "
                                 f"{type(model).__name__}")
            base_model = base_model or config.base_model_name_or_path
            if not base_model or os.path.isdir(base_model):
                raise ValueError(
                    f"push_run: adapter-only push needs the base CLIP as a Hub repo id, but "
                    f"config.base_model_name_or_path is {base_model!r} (a local folder or empty); pass base_model=")
            config.base_model_name_or_path = base_model
            if base_revision is None:
                base_revision = _resolve_base_revision(base_model, token)
            save_bigmoe_adapters(model, stage)
            meta_path = stage / ADAPTER_CONFIG_NAME
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            meta[BASE_REVISION_KEY] = base_revision
            meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
            delete_patterns = [CONFIG_NAME, "model*.safetensors", WEIGHTS_INDEX_NAME, "*.py"]
        else:
            with _AutoClassRegistration(type(model)):
                model.save_pretrained(stage)
            delete_patterns = [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]
        if (model_dir / PROCESSOR_NAME).is_file():
            BigMoeImageProcessor.from_pretrained(str(model_dir)).save_pretrained(stage)
        else:
            logger.warning("push_run: %s has no %s; pushing the default processor (CLIP normalisation, %d px)",
                           model_dir, PROCESSOR_NAME, config.vision_config.image_size)
            BigMoeImageProcessor(size=config.vision_config.image_size).save_pretrained(stage)
        if results_path is not None:
            shutil.copyfile(results_path, stage / RESULTS_NAME)
        card = model_card_for_run(repo_id, config, adapter_only=adapter_only, base_model=base_model,
                                  base_revision=base_revision, datasets=datasets, results=results,
                                  existing=existing_card)
        (stage / CARD_NAME).write_text(str(card), encoding="utf-8")

        repo = create_repo(repo_id, private=private, exist_ok=True, token=token).repo_id
        if revision and revision != "main":
            create_branch(repo, branch=revision, exist_ok=True, token=token)
        kind = "adapter-only" if adapter_only else "full"
        commit = upload_folder(repo_id=repo, folder_path=str(stage), revision=revision, token=token,
                               commit_message=commit_message or
                               f"Upload {MODEL_TYPES[config.model_type]} ({kind}) from {run_dir.name}",
                               delete_patterns=delete_patterns)
    return commit


# --------------------------------------------------------------------------- Trainer pushes
class HubPushSyncCallback(TrainerCallback):
    """Make ``Trainer(push_to_hub=True, hub_strategy="every_save")`` push every checkpoint of our models whole.

    1. The Trainer uploads ``output_dir`` in a background thread, skips a push while the previous one runs, and
       copies the next checkpoint's weights over ``output_dir`` at the next save (a save during a running upload
       changes the bytes under the client; the Hub then rejects the LFS object's sha256). This callback waits for
       the push after each save and at the end of training, so each checkpoint is pushed once, completely.
    2. The Trainer copies only config and weights from the checkpoint folder to ``output_dir``; this callback
       also copies the model code (``*.py``, written when the classes are registered for auto classes, see
       ``register_bigmoe_for_remote_code``), so ``trust_remote_code`` works on every pushed checkpoint.

    Create it with :func:`enable_hub_push_sync`.
    """

    def __init__(self, trainer=None):
        self.trainer = trainer

    def _wait(self) -> None:
        job = getattr(self.trainer, "push_in_progress", None)
        if job is not None:
            job.wait_until_done()

    def on_push_begin(self, args, state, control, **kwargs):
        """Copy the code files of the checkpoint being pushed next to its weights in ``output_dir``."""
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            for source in checkpoint.glob("*.py"):
                shutil.copyfile(source, Path(args.output_dir) / source.name)

    def on_save(self, args, state, control, **kwargs):
        """Block until the push started by this save has finished."""
        self._wait()

    def on_train_end(self, args, state, control, **kwargs):
        """Block until the last push has finished."""
        self._wait()


def enable_hub_push_sync(trainer) -> HubPushSyncCallback:
    """Add a :class:`HubPushSyncCallback` bound to ``trainer``; returns it."""
    callback = HubPushSyncCallback(trainer)
    trainer.add_callback(callback)
    return callback
