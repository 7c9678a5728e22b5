"""Protocol runner: benchmark -> folds -> one trained model per (fold, model) -> honest results.

:func:`run_protocol` builds the folds of MMDG Protocol 1, 2 or 3 (``protocols.py``) on any
benchmark ``DatasetDict`` (the embedded synthetic one or the real MMDG lists), trains each
requested model on each fold with :func:`modeling_bigmoe.training.run_fold`, and writes per
run ``results.json``, ``results.md``, ``roc_det.png`` and a model card, plus a protocol-level
``summary.json`` / ``summary.md`` (each fold and the mean ± std over folds and seeds).

Protocol 2 trains each Protocol-1 fold once and tests it with every missing-modality setting
(Depth, IR, Depth + IR missing), as the benchmark prescribes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .metrics import format_results_table, summarize_rows
from .protocols import Fold, build_fold, protocol1_folds, protocol2_settings, protocol3_folds
from .training import atomic_write_text, check_output_dir, fas_training_arguments, run_fold, summary_row, write_json

logger = logging.getLogger(__name__)

__all__ = ["MODEL_CHOICES", "ModelSpec", "benchmark_domains", "model_spec", "protocol_folds_for", "run_protocol", "summarise",
           "write_protocol_summary"]

MODEL_CHOICES = ("bigmoe", "baseline", "mmda", "la_softmoe")


@dataclass
class ModelSpec:
    """How to build one model of the comparison.

    Args:
        name: row label in the tables ("bigmoe", "baseline", ...).
        build: ``build(seed) -> PreTrainedModel``.
        image_size: the model's input size (the image processor resizes to it).
        training_overrides: ``TrainingArguments`` fields this model wants (e.g. its learning rate).
        uses_domain_labels: the model takes ``domain_labels`` in training (MMDA's MD2A batch reorganisation):
            the training collator then adds them; evaluation never does (the target domain is unknown).
    """

    name: str
    build: Callable[[int], Any]
    image_size: int
    training_overrides: dict = field(default_factory=dict)
    uses_domain_labels: bool = False


def _bigmoe_spec(name: str, *, config_path: str | None, from_clip: str | None, overrides: dict,
                 baseline: bool) -> ModelSpec:
    """BIG-MoE (or the adapter-free baseline on the same tower and token stream)."""
    from .configuration_bigmoe import BigMoeConfig
    from .hub_configs import tiny_config
    from .modeling_bigmoe import BigMoeForFaceAntiSpoofing

    extra = dict(overrides)
    if baseline:
        extra["adapter_layers"] = []  # the same CLIP tower and token stream, a linear head, no adapters/prompts
    if from_clip:
        from transformers import CLIPVisionConfig

        image_size = CLIPVisionConfig.from_pretrained(from_clip).image_size

        def build(seed: int):
            torch.manual_seed(seed)
            return BigMoeForFaceAntiSpoofing.from_clip(from_clip, **extra)

        return ModelSpec(name=name, build=build, image_size=image_size)
    if config_path:
        config_dict = BigMoeConfig.from_pretrained(config_path).to_dict()
        config_dict.update(extra)
        config = BigMoeConfig(**config_dict)  # validates the overrides too
    else:
        config = tiny_config(**extra)

    def build(seed: int):
        torch.manual_seed(seed)
        return BigMoeForFaceAntiSpoofing(config)

    return ModelSpec(name=name, build=build, image_size=config.vision_config.image_size)


def _clip_pair_spec(name: str, *, model_type: str, config_path: str | None, from_clip: str | None,
                    overrides: dict) -> ModelSpec:
    """MMDA or La-SoftMoE CLIP: CLIP image + text towers, token ids of the text templates in the config."""
    if model_type == "mmda":
        from .configuration_mmda import MmdaConfig as config_class
        from .hub_configs_mmda import tiny_config
        from .modeling_mmda import MmdaForFaceAntiSpoofing as model_class
    else:
        from .configuration_lasoftmoe import LaSoftMoeConfig as config_class
        from .hub_configs_lasoftmoe import tiny_config
        from .modeling_lasoftmoe import LaSoftMoeForFaceAntiSpoofing as model_class

    if from_clip:
        from transformers import CLIPConfig

        image_size = CLIPConfig.from_pretrained(from_clip).vision_config.image_size
        domains = model_type == "mmda" and config_class(**overrides).use_domain_labels

        def build(seed: int):
            torch.manual_seed(seed)
            return model_class.from_clip(from_clip, **overrides)

        return ModelSpec(name=name, build=build, image_size=image_size, uses_domain_labels=domains)
    # a nested clip_config override is merged into the base one (so the tiny text tower and its ids stay)
    clip_override = overrides.pop("clip_config", None)
    if config_path:
        config = config_class(**{**config_class.from_pretrained(config_path).to_dict(), **overrides})
    else:
        config = tiny_config(**overrides)
    if clip_override:
        if not isinstance(clip_override, dict):
            raise ValueError(f"clip_config override must be a dict, got {type(clip_override).__name__}")
        merged = _deep_update(config.clip_config.to_dict(), clip_override)
        config = config_class(**{**config.to_dict(), "clip_config": merged})

    def build(seed: int):
        torch.manual_seed(seed)
        return model_class(config)

    return ModelSpec(name=name, build=build, image_size=config.vision_config.image_size,
                     uses_domain_labels=model_type == "mmda" and bool(config.use_domain_labels))


def _deep_update(base: dict, update: dict) -> dict:
    """``base`` updated by ``update``, nested dicts merged key by key."""
    out = dict(base)
    for key, value in update.items():
        out[key] = _deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def model_spec(model_type: str, *, config_path: str | None = None, from_clip: str | None = None,
               overrides: dict | None = None, name: str | None = None) -> ModelSpec:
    """A :class:`ModelSpec` for ``model_type`` in :data:`MODEL_CHOICES`.

    Without ``config_path`` / ``from_clip`` the tiny variant is used (random-init tower: the demo).
    ``overrides`` are config fields (validated by the config class).
    """
    overrides = dict(overrides or {})
    if model_type in ("bigmoe", "baseline"):
        return _bigmoe_spec(name or model_type, config_path=config_path, from_clip=from_clip, overrides=overrides,
                            baseline=model_type == "baseline")
    if model_type in ("mmda", "la_softmoe"):
        return _clip_pair_spec(name or model_type, model_type=model_type, config_path=config_path,
                               from_clip=from_clip, overrides=overrides)
    raise ValueError(f"unknown model type {model_type!r}; choose one of {', '.join(MODEL_CHOICES)}")


def protocol_folds_for(protocol: str | int, domains: Sequence[str], *, targets: Sequence[str] | None = None,
                       pairs: Sequence[tuple[str, str]] | None = None) -> list[Fold]:
    """The training folds of a protocol. Protocol 2 trains the Protocol-1 folds (tested without modalities)."""
    key = str(protocol).upper().lstrip("P")
    if key in ("1", "2"):
        folds = protocol1_folds(tuple(domains))
        if targets:
            unknown = sorted(set(targets) - set(domains))
            if unknown:
                raise ValueError(f"targets {unknown} are not among the benchmark's domains {list(domains)}")
            folds = [f for f in folds if set(f.targets) <= set(targets)]
        return folds
    if key == "3":
        return protocol3_folds(pairs) if pairs else protocol3_folds()
    raise ValueError(f"unknown protocol {protocol!r}; choose P1, P2 or P3")


def benchmark_domains(benchmark) -> list[str]:
    """The sorted ``domain`` values found in any split of a benchmark ``DatasetDict``."""
    return sorted(set().union(*(set(split.with_format(None).unique("domain")) for split in benchmark.values())))


def _check_domains(benchmark, folds: Sequence[Fold]) -> None:
    available = set(benchmark_domains(benchmark))
    for fold in folds:
        unknown = sorted(set(fold.domains) - available)
        if unknown:
            raise ValueError(f"fold {fold.name}: unknown domain(s) {unknown}; the benchmark has {sorted(available)}")


def run_protocol(
    benchmark,
    *,
    protocol: str | int = "P1",
    models: Sequence[ModelSpec],
    output_dir: str | os.PathLike = "runs/protocol1",
    seeds: Sequence[int] = (42,),
    targets: Sequence[str] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    normalization: str = "clip",
    augment: bool = True,
    training: dict | None = None,
    per_video: bool = True,
    progress: bool = True,
    write_summary: bool = True,
) -> dict[str, Any]:
    """Run a protocol end to end and write the per-run and summary results.

    Args:
        benchmark: a ``DatasetDict`` (train / validation / test, ``domain`` column).
        protocol: "P1" (leave one domain out), "P2" (P1 training, tested with Depth, IR and
            Depth + IR missing) or "P3" (limited sources).
        models: the models to compare (:func:`model_spec`).
        output_dir: where every run and the summary go (created; must be writable).
        seeds: training seeds; the summary gives the mean and std over folds and seeds.
        targets: restrict P1/P2 to these target domains.
        pairs: P3 (sources, targets) pairs such as ``[("CW", "PS")]``.
        normalization: the image processor's normalisation ("clip" or "fas127").
        augment: train-time augmentation (shared flip, noise, brightness, channel add, gamma).
        training: ``TrainingArguments`` overrides (epochs, batch size, learning rate, ...).
        per_video: also report video-level metrics (mean score per video).
        write_summary: write ``summary.json`` / ``summary.md`` / ``summary.png`` (off for one part of a run
            split over processes: the caller summarises the parts with :func:`write_protocol_summary`).
    """
    from .augmentation import FasAugmentation
    from .data import FasCollator
    from .image_processing_bigmoe import BigMoeImageProcessor

    output_dir = check_output_dir(output_dir)
    if not models:
        raise ValueError("run_protocol: no model to train (models is empty)")
    domains = benchmark_domains(benchmark)
    folds = protocol_folds_for(protocol, domains, targets=targets, pairs=pairs)
    _check_domains(benchmark, folds)
    p2 = str(protocol).upper().lstrip("P") == "2"
    test_settings: list[tuple[str, tuple[str, ...]]] = [("all", ())]
    if p2:
        test_settings = [("w/o " + "+".join("D" if m == "depth" else "IR" for m in s), tuple(s))
                         for s in protocol2_settings()]
    # validate every fold before any training starts
    fold_splits = {fold.name: build_fold(benchmark, fold) for fold in folds}
    attack_names = None

    results: list[dict] = []
    for fold in folds:
        splits = fold_splits[fold.name]
        for spec in models:
            processor = BigMoeImageProcessor(size=spec.image_size, normalization=normalization)
            base = FasCollator.from_dataset(processor, splits, with_video_vocabulary=False)
            attack_names = base.attack_type_names
            train_collator = FasCollator(processor, FasAugmentation(seed=0) if augment else None,
                                         attack_type_names=attack_names,
                                         domain_names=fold.sources if spec.uses_domain_labels else None)
            test_collators = {name: FasCollator(processor, drop_modalities=drop, attack_type_names=attack_names)
                              for name, drop in test_settings}
            for seed in seeds:
                run_dir = output_dir / fold.alias / spec.name / f"seed{seed}"
                overrides = dict(training or {})
                overrides.update(spec.training_overrides)
                overrides.setdefault("disable_tqdm", not progress)
                args = fas_training_arguments(run_dir, seed=seed, **overrides)
                print(f"== {protocol} {fold.name} | {spec.name} | seed {seed} -> {run_dir}", flush=True)
                result = run_fold(
                    splits, model_init=lambda spec=spec, seed=seed: spec.build(seed),
                    train_collator=train_collator, eval_collator=base, test_collators=test_collators,
                    attack_type_names=attack_names, training_args=args, fold_name=fold.name,
                    model_name=spec.name, per_video=per_video, processor=processor,
                )
                result["seed"] = seed
                results.append(result)

    summary = summarise(results, protocol=str(protocol), test_settings=[n for n, _ in test_settings])
    if write_summary:
        write_protocol_summary(summary, output_dir)
    return summary


def write_protocol_summary(summary: dict[str, Any], output_dir: str | os.PathLike) -> dict[str, Any]:
    """Write ``summary.json``, ``summary.md`` and ``summary.png`` of a :func:`summarise` result."""
    output_dir = Path(output_dir)
    write_json(output_dir / "summary.json", summary)
    atomic_write_text(output_dir / "summary.md", summary["markdown"])
    summary_plot(summary["rows"], output_dir / "summary.png", title=f"{summary['protocol']}: target-domain test")
    return summary


def summary_plot(rows: Sequence[dict], path: str | os.PathLike, *, title: str = "") -> Path:
    """Grouped bars per fold: AUC and honest HTER of every model (the picture beside the table)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    folds = list(dict.fromkeys(r["fold"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig = Figure(figsize=(max(6.0, 1.6 * len(folds) * max(1, len(models)) / 2 + 2), 3.6))
    axes = fig.subplots(1, 2)
    width = 0.8 / max(1, len(models))
    x = np.arange(len(folds))
    for ax, key, label in ((axes[0], "auc", "AUC % (higher is better)"),
                           (axes[1], "hter", "HTER % at source-val threshold (lower is better)")):
        for i, model in enumerate(models):
            values = []
            for fold in folds:
                picked = [r[key] for r in rows if r["model"] == model and r["fold"] == fold and r.get(key) is not None]
                values.append(100 * float(np.mean(picked)) if picked else np.nan)
            ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, label=model)
        ax.set_xticks(x, folds, rotation=20, fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].axhline(50, color="grey", lw=0.8, ls="--")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(models), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


def summarise(results: Sequence[dict], *, protocol: str, test_settings: Sequence[str]) -> dict[str, Any]:
    """Per-run rows and, per model (and test setting), the mean ± std over folds and seeds."""
    rows, blocks = [], []
    for setting in test_settings:
        setting_rows = []
        for r in results:
            setting_rows.append(summary_row(r, setting=setting))
        rows.extend(setting_rows)
        title = f"### {protocol} — target test, all modalities" if setting == "all" else \
            f"### {protocol} — target test {setting}"
        table_rows = []
        for model in dict.fromkeys(r["model"] for r in setting_rows):
            mine = [r for r in setting_rows if r["model"] == model]
            table_rows.extend(mine)
            mean, std = summarize_rows(mine, label_key="fold", label="mean")
            mean["model"], std["model"] = model, model
            table_rows.extend([mean, std])
        blocks.append(title + "\n\n" + format_results_table(table_rows))
    note = ("HTER / ACER / APCER / BPCER use the threshold fixed on the source domains' validation split; "
            "HTER (oracle) uses the target test set's own EER threshold, as published papers do, "
            "and is for comparison only.")
    markdown = "\n\n".join(blocks) + "\n\n" + note + "\n"
    return {"protocol": protocol, "runs": list(results), "rows": rows, "markdown": markdown}
