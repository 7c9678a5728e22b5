"""Argument dataclasses of the ``bigmoe-fas`` subcommands (parsed with ``transformers.HfArgumentParser``).

Every subcommand also reads its arguments from one YAML or JSON file:
``bigmoe-fas protocol my_run.yaml`` (keys = the option names below, without dashes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["ModelArguments", "DataArguments", "FoldArguments", "ProtocolArguments", "EvaluateArguments",
           "PredictArguments", "parse_overrides", "split_list"]


def split_list(text: str | None) -> list[str]:
    """``"C,P, S"`` -> ``["C", "P", "S"]``; ``None``/empty -> ``[]``."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def parse_overrides(text: str | None, *, field_name: str = "model_overrides") -> dict:
    """A JSON object of config overrides, e.g. ``'{"moe_num_experts": 64}'``."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--{field_name} must be a JSON object, e.g. '{{\"moe_num_experts\": 64}}': {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"--{field_name} must be a JSON object, got {type(value).__name__}")
    return value


@dataclass
class ModelArguments:
    """Which model to build (or load)."""

    model: Literal["bigmoe", "baseline", "mmda", "la_softmoe"] = field(
        default="bigmoe", metadata={"help": "model type: bigmoe, baseline (same tower, linear head, no adapters), "
                                            "mmda or la_softmoe"})
    config: str | None = field(
        default=None, metadata={"help": "config.json folder or Hub id (e.g. hub_configs/bigmoe-tiny); default: tiny"})
    from_clip: str | None = field(
        default=None, metadata={"help": "start from CLIP weights: Hub id (openai/clip-vit-base-patch16) or folder"})
    model_overrides: str | None = field(
        default=None, metadata={"help": "JSON object of config fields to override, e.g. '{\"cdc_theta\": 0.5}'"})


@dataclass
class DataArguments:
    """Which benchmark: the embedded synthetic one, or the real MMDG lists."""

    dataset: Literal["synthetic", "mmdg"] = field(default="synthetic", metadata={"help": "synthetic or mmdg"})
    data_root: str | None = field(default=None, metadata={"help": "mmdg: root folder of the images"})
    list_dir: str | None = field(default=None, metadata={"help": "mmdg: folder of {C,P,S,W}-{train,val,test}.txt"})
    domains: str = field(default="C,P,S,W", metadata={"help": "comma-separated domains"})
    samples_per_domain: int = field(default=600, metadata={"help": "synthetic: rows per domain"})
    synthetic_size: int = field(default=64, metadata={"help": "synthetic: image side in pixels"})
    synthetic_seed: int = field(default=0, metadata={"help": "synthetic: generator seed"})
    normalization: Literal["clip", "fas127"] = field(
        default="clip", metadata={"help": "clip (CLIP mean/std) or fas127 ((x - 127.5) / 128)"})
    validate: Literal["error", "skip", "off"] = field(
        default="error", metadata={"help": "mmdg: missing/unreadable files -> error, skip them, or no check"})


@dataclass
class FoldArguments:
    """The fold of ``train``: sources -> targets (e.g. ``--sources C,P,S --targets W``)."""

    sources: str = field(default="C,P,S", metadata={"help": "source domains (train + validation)"})
    targets: str = field(default="W", metadata={"help": "target domains (test only)"})
    no_augment: bool = field(default=False, metadata={"help": "disable train-time augmentation"})


@dataclass
class ProtocolArguments:
    """A protocol run: every fold x model x seed, then a summary table."""

    protocol: Literal["P1", "P2", "P3"] = field(default="P1", metadata={"help": "P1, P2 or P3"})
    models: str = field(default="bigmoe,baseline", metadata={"help": "comma-separated model types"})
    targets: str | None = field(default=None, metadata={"help": "P1/P2: only these target domains"})
    pairs: str | None = field(default=None, metadata={"help": "P3: e.g. 'CW-PS,PS-CW' (sources-targets)"})
    seeds: str = field(default="42", metadata={"help": "comma-separated training seeds"})
    output_dir: str = field(default="runs/protocol", metadata={"help": "where the runs and the summary go"})
    epochs: float = field(default=15, metadata={"help": "training epochs per run"})
    batch_size: int = field(default=32, metadata={"help": "per-device train batch size"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=5e-5, metadata={"help": "AdamW weight decay"})
    no_augment: bool = field(default=False, metadata={"help": "disable train-time augmentation"})
    no_progress: bool = field(default=False, metadata={"help": "hide the progress bars"})


@dataclass
class EvaluateArguments:
    """Evaluate a trained model on a benchmark split with its stored (source-validation) threshold."""

    model_path: str = field(default=None, metadata={"help": "saved model folder or Hub id"})
    split: Literal["train", "validation", "test"] = field(default="test", metadata={"help": "split to score"})
    targets: str | None = field(default=None, metadata={"help": "domains to score (default: all)"})
    missing: str | None = field(default=None, metadata={"help": "modalities to drop, e.g. 'depth,ir'"})
    output: str | None = field(default=None, metadata={"help": "write the metrics here as JSON"})
    batch_size: int = field(default=64, metadata={"help": "batch size"})


@dataclass
class PredictArguments:
    """Score captures in a folder (RGB with optional Depth / IR) and write a CSV."""

    model_path: str = field(default=None, metadata={"help": "saved model folder or Hub id"})
    inputs: str = field(default=None, metadata={"help": "folder: <name>_rgb.*, <name>_depth.*, <name>_ir.* "
                                                        "or rgb/, depth/, ir/ subfolders with matching names"})
    output: str = field(default="predictions.csv", metadata={"help": "CSV to write"})
    threshold: float | None = field(default=None, metadata={"help": "override the stored decision threshold"})
    batch_size: int = field(default=16, metadata={"help": "batch size"})
